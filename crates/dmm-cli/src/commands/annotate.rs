//! `dmm predict --annotate`: the photo with its predicted landmarks drawn and the positive
//! attributes listed beside it, as a PNG. Text uses the public-domain 8×8 bitmap font of the
//! `font8x8` crate, so no font file is needed.

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

const SCALE: u32 = 2;
const LINE: u32 = 8 * SCALE + 4;
const PANEL: u32 = 20 * 8 * SCALE + 16;

/// The annotated picture: `img` enlarged to at least 436 pixels tall, `points` (`[x0, y0, …]` in
/// `img` pixels) as dots, and `lines` of text in a white panel on the right.
pub fn render(img: &RgbImage, points: Option<&[f32]>, lines: &[String]) -> RgbImage {
    let zoom = (436.0 / img.height().max(1) as f64).clamp(1.0, 8.0);
    let (w, h) = ((img.width() as f64 * zoom).round() as u32, (img.height() as f64 * zoom).round() as u32);
    let photo = image::imageops::resize(img, w.max(1), h.max(1), image::imageops::FilterType::Triangle);
    let height = h.max(16 + LINE * lines.len() as u32);
    let mut canvas = RgbImage::from_pixel(w + PANEL, height, Rgb([255, 255, 255]));
    image::imageops::replace(&mut canvas, &photo, 0, 0);
    if let Some(points) = points {
        let r = (zoom.round() as i64).clamp(2, 4);
        for p in points.chunks_exact(2) {
            // Pixel centres: x_zoomed = (x + ½)·zoom − ½.
            let (x, y) = (((p[0] as f64 + 0.5) * zoom - 0.5).round() as i64, ((p[1] as f64 + 0.5) * zoom - 0.5).round() as i64);
            dot(&mut canvas, x, y, r + 1, Rgb([0, 0, 0]), w);
            dot(&mut canvas, x, y, r, Rgb([0, 230, 60]), w);
        }
    }
    for (i, line) in lines.iter().enumerate() {
        text(&mut canvas, w + 8, 8 + i as u32 * LINE, line, if i == 0 { Rgb([0, 0, 0]) } else { Rgb([20, 60, 160]) });
    }
    canvas
}

/// A filled disc clipped to the photo (x < `max_x`).
fn dot(img: &mut RgbImage, cx: i64, cy: i64, r: i64, color: Rgb<u8>, max_x: u32) {
    for y in cy - r..=cy + r {
        for x in cx - r..=cx + r {
            if (x - cx).pow(2) + (y - cy).pow(2) <= r * r && x >= 0 && y >= 0 && (x as u32) < max_x && (y as u32) < img.height() {
                img.put_pixel(x as u32, y as u32, color);
            }
        }
    }
}

/// Draws `s` with its top-left corner at `(x, y)`; characters without a glyph show as `?`.
fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, color: Rgb<u8>) {
    for (k, ch) in s.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(ch).or_else(|| font8x8::BASIC_FONTS.get('?')).unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        let (px, py) = (x + (k as u32 * 8 + col) * SCALE + dx, y + row as u32 * SCALE + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, color);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_dots_and_text_where_asked() {
        let img = RgbImage::from_pixel(100, 218, Rgb([128, 128, 128]));
        let out = render(&img, Some(&[50.0, 100.0]), &["AB".into(), "Male".into()]);
        // 218 px tall → zoom 2: photo 200×436, then the panel.
        assert_eq!((out.width(), out.height()), (200 + PANEL, 436));
        let (x, y) = ((50.5 * 2.0 - 0.5f64).round() as u32, (100.5 * 2.0 - 0.5f64).round() as u32);
        assert_eq!(*out.get_pixel(x, y), Rgb([0, 230, 60]), "landmark dot");
        assert_eq!(*out.get_pixel(10, 10), Rgb([128, 128, 128]), "photo elsewhere");
        let inked = |x0: u32, y0: u32| (0..16).flat_map(|dy| (0..16).map(move |dx| (x0 + dx, y0 + dy))).filter(|&(x, y)| *out.get_pixel(x, y) != Rgb([255, 255, 255])).count();
        assert!(inked(208, 8) > 20, "first glyph drawn");
        assert_eq!(inked(208 + 16 * 10, 8), 0, "nothing past the text");
    }
}
