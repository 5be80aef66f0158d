//! The image pipeline: decode (JPEG/PNG, by content, not extension), greyscale → RGB, optional
//! resize, optional horizontal flip, normalization, CHW `f32`. Landmarks follow every geometric
//! change: a resize scales them about pixel centres, a flip maps `x → W − 1 − x` and permutes the
//! points so that index `i` still names the same facial part (left eye stays "left eye").
//!
//! Random choices (whether to flip) are made by the caller ([`crate::loader`]) so this stays a pure
//! function of its inputs.

use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;

pub use dmm_core::Normalization;

use crate::{Error, Result};

/// What to do to a decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Transform {
    /// Resize to `(height, width)` with bilinear filtering over pixel centres, antialiased when
    /// shrinking (the filter widened by the scale factor, as PyTorch's `antialias=True` and
    /// Pillow's BILINEAR; `tests/resize.rs`); `None` keeps the stored size (SPP takes any size, so
    /// CelebA's 218×178 crops are fed natively).
    pub size: Option<(usize, usize)>,
    /// Pixel normalization.
    pub normalization: Normalization,
}

/// A transformed image ready for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `[3, height, width]` normalized pixels.
    pub chw: Vec<f32>,
    /// Output height.
    pub height: usize,
    /// Output width.
    pub width: usize,
    /// Landmarks in output pixel coordinates, if given.
    pub landmarks: Option<Vec<f32>>,
}

/// Decodes an image file to 8-bit RGB. The format is detected from the content, so a text file
/// named `.jpg` is reported as such; truncated files are errors, never half-grey images.
pub fn decode(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(path, &bytes)
}

/// [`decode`] for bytes already in memory; `path` is only used in errors.
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<RgbImage> {
    let decoder = open_decoder(path, bytes)?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(|cause| Error::Image { path: path.to_path_buf(), cause })?;
    Ok(img.into_rgb8())
}

/// Checks `bytes` as [`decode_bytes`] would (format by content, a JPEG's end marker, the decoded
/// size) without decoding them, and returns their format: another decoder may then take the file
/// (dmm-landmarks decodes JPEGs with libjpeg-turbo, as Python's pipeline does).
pub fn check(path: &Path, bytes: &[u8]) -> Result<image::ImageFormat> {
    let format = check_format(path, bytes)?;
    open_decoder(path, bytes)?;
    Ok(format)
}

/// The EXIF orientation of an image in memory (checked as [`check`] does), for pixels decoded by
/// another decoder.
pub fn orientation(path: &Path, bytes: &[u8]) -> Result<image::metadata::Orientation> {
    use image::ImageDecoder;
    open_decoder(path, bytes)?.orientation().map_err(|cause| Error::Image { path: path.to_path_buf(), cause })
}

/// [`decode`] for photos: also applies the EXIF orientation (a phone picture stored sideways
/// with "rotate 90°" in its metadata comes out upright). Training reads CelebA and LFW, which carry
/// no orientation, through [`decode`] so the stored pixels and their landmark CSV agree.
pub fn decode_oriented(path: &Path) -> Result<RgbImage> {
    use image::ImageDecoder;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let image_err = |cause| Error::Image { path: path.to_path_buf(), cause };
    let mut decoder = open_decoder(path, &bytes)?;
    let orientation = decoder.orientation().map_err(image_err)?;
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(image_err)?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// The most bytes a decoded image may take (the `image` crate's own default allocation limit):
/// a 50-megapixel photo at 16 bits per channel fits; a small file whose header claims 60000×60000
/// pixels is refused before anything is allocated.
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

/// A decoder for `bytes` whose header has been read and whose decoded size is within
/// [`MAX_DECODED_BYTES`] (and not empty).
fn open_decoder<'a>(path: &Path, bytes: &'a [u8]) -> Result<impl image::ImageDecoder + 'a> {
    use image::ImageDecoder;
    let format = check_format(path, bytes)?;
    let decoder = image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_decoder()
        .map_err(|cause| Error::Image { path: path.to_path_buf(), cause })?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::invalid(path, format!("image of {w}×{h} pixels has nothing to decode")));
    }
    let needed = decoder.total_bytes();
    if needed > MAX_DECODED_BYTES {
        return Err(Error::invalid(
            path,
            format!(
                "image of {w}×{h} pixels would take {} MiB decoded, more than the limit of {} MiB; shrink it first",
                needed >> 20,
                MAX_DECODED_BYTES >> 20
            ),
        ));
    }
    Ok(decoder)
}

/// The format of `bytes` by content; a JPEG without its end marker is refused.
fn check_format(path: &Path, bytes: &[u8]) -> Result<image::ImageFormat> {
    let format = image::guess_format(bytes).map_err(|cause| Error::Image { path: path.to_path_buf(), cause })?;
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(Error::Image {
            path: path.to_path_buf(),
            cause: image::ImageError::Decoding(image::error::DecodingError::new(
                format.into(),
                "truncated JPEG: no end-of-image marker",
            )),
        });
    }
    Ok(format)
}

/// A JPEG ends with the EOI marker `FF D9`; some writers pad after it, so look near the end.
/// zune-jpeg fills a truncated scan with grey instead of failing, so this check is what turns a
/// cut-off download into an error.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(1024)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// How landmark indices swap under a horizontal flip, for the point sets we know: dlib's 68-point
/// iBUG layout and CelebA's 5 points (left eye, right eye, nose, left mouth, right mouth).
/// `perm[i]` is the index whose mirrored point becomes point `i`.
pub fn flip_permutation(n_points: usize) -> Option<&'static [usize]> {
    match n_points {
        68 => Some(&IBUG_68_FLIP),
        5 => Some(&[1, 0, 2, 4, 3]),
        _ => None,
    }
}

/// iBUG 300-W 68-point mirror map: jaw 0–16 reversed, brows 17–21 ↔ 26–22, nose bridge 27–30
/// fixed, nostrils 31–35 reversed, eyes 36–41 ↔ 45–42/47–46, outer lips 48–54 reversed and 55–59
/// reversed, inner lips 60–64 reversed and 65–67 reversed.
const IBUG_68_FLIP: [usize; 68] = [
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, // jaw
    26, 25, 24, 23, 22, 21, 20, 19, 18, 17, // brows
    27, 28, 29, 30, // nose bridge
    35, 34, 33, 32, 31, // nostrils
    45, 44, 43, 42, 47, 46, // right-side eye ← left-side eye
    39, 38, 37, 36, 41, 40, // left-side eye ← right-side eye
    54, 53, 52, 51, 50, 49, 48, // outer upper lip
    59, 58, 57, 56, 55, // outer lower lip
    64, 63, 62, 61, 60, // inner upper lip
    67, 66, 65, // inner lower lip
];

impl Transform {
    /// Resizes (if asked), flips (if `flip`), normalizes and lays out as CHW. `landmarks` are
    /// `[x0, y0, …]` in the input's pixel coordinates and are mapped to the output's.
    ///
    /// Fails when flipping landmarks whose point count has no known mirror map.
    pub fn apply(&self, img: &RgbImage, landmarks: Option<&[f32]>, flip: bool) -> Result<Prepared> {
        let from = (img.height() as usize, img.width() as usize);
        match self.resize(img)? {
            Some(resized) => self.apply_resized(&resized, from, landmarks, flip),
            None => self.apply_resized(img, from, landmarks, flip),
        }
    }

    /// The resize step alone: `img` at the target size, or `None` when it has that size already
    /// (or no size is set).
    pub fn resize(&self, img: &RgbImage) -> Result<Option<RgbImage>> {
        match self.size {
            Some((h, w)) if (h, w) != (img.height() as usize, img.width() as usize) => {
                if h == 0 || w == 0 {
                    return Err(Error::Config(format!("resize target {h}×{w} has a zero side")));
                }
                Ok(Some(image::imageops::resize(img, w as u32, h as u32, FilterType::Triangle)))
            }
            _ => Ok(None),
        }
    }

    /// [`Self::apply`] after [`Self::resize`]: `img` has been resized from `(h0, w0)`, the size
    /// `landmarks` refer to.
    pub fn apply_resized(&self, img: &RgbImage, (h0, w0): (usize, usize), landmarks: Option<&[f32]>, flip: bool) -> Result<Prepared> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let landmarks = match landmarks {
            Some(points) => Some(self.map_points(points, (h0, w0), (h, w), flip)?),
            None => None,
        };

        let n = w * h;
        let mut chw = vec![0f32; 3 * n];
        let Normalization { mean, std } = self.normalization;
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * std[c]));
        let shift: [f32; 3] = std::array::from_fn(|c| -mean[c] / std[c]);
        let raw = img.as_raw();
        let (r, rest) = chw.split_at_mut(n);
        let (g, b) = rest.split_at_mut(n);
        for y in 0..h {
            let src = &raw[3 * y * w..3 * (y + 1) * w];
            let row = y * w..(y + 1) * w;
            let (r, g, b) = (&mut r[row.clone()], &mut g[row.clone()], &mut b[row]);
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x };
                let px = &src[3 * sx..3 * sx + 3];
                r[x] = px[0] as f32 * scale[0] + shift[0];
                g[x] = px[1] as f32 * scale[1] + shift[1];
                b[x] = px[2] as f32 * scale[2] + shift[2];
            }
        }
        Ok(Prepared { chw, height: h, width: w, landmarks })
    }

    fn map_points(&self, points: &[f32], (h0, w0): (usize, usize), (h, w): (usize, usize), flip: bool) -> Result<Vec<f32>> {
        let (sx, sy) = (w as f32 / w0 as f32, h as f32 / h0 as f32);
        // Pixel centres map to pixel centres: x' = (x + ½)·W'/W − ½.
        let mut out: Vec<f32> = points
            .chunks_exact(2)
            .flat_map(|p| [(p[0] + 0.5) * sx - 0.5, (p[1] + 0.5) * sy - 0.5])
            .collect();
        if flip {
            let n_points = points.len() / 2;
            let perm = flip_permutation(n_points).ok_or_else(|| {
                Error::Config(format!("cannot flip {n_points} landmarks: no mirror map known (68 and 5 are)"))
            })?;
            let mirrored: Vec<f32> = perm
                .iter()
                .flat_map(|&src| [w as f32 - 1.0 - out[2 * src], out[2 * src + 1]])
                .collect();
            out = mirrored;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient_image(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 100]))
    }

    #[test]
    fn flip_permutations_are_involutions_that_swap_sides() {
        for n in [5, 68] {
            let p = flip_permutation(n).unwrap();
            assert_eq!(p.len(), n);
            assert!((0..n).all(|i| p[p[i]] == i), "{n}-point map is an involution");
        }
        let p = flip_permutation(68).unwrap();
        // Outer eye corners, mouth corners and jaw ends swap; nose tip and chin stay.
        assert_eq!((p[36], p[45], p[48], p[54], p[0], p[30], p[8], p[57], p[66]), (45, 36, 54, 48, 16, 30, 8, 57, 66));
        assert_eq!(flip_permutation(7), None);
    }

    #[test]
    fn normalization_matches_hand_values() {
        let img = RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 128]));
        let out = Transform::default().apply(&img, None, false).unwrap();
        let expect = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128.0 / 255.0 - 0.406) / 0.225];
        for (o, e) in out.chw.iter().zip(expect) {
            assert!((o - e).abs() < 1e-5, "{o} vs {e}");
        }
    }

    #[test]
    fn flip_mirrors_pixels_and_landmarks_consistently() {
        let img = gradient_image(6, 4);
        let t = Transform { normalization: Normalization { mean: [0.0; 3], std: [1.0; 3] }, ..Default::default() };
        // Five points, each sitting on a pixel whose red value encodes its x.
        let pts = [1.0, 1.0, 4.0, 1.0, 2.0, 2.0, 0.0, 3.0, 5.0, 3.0];
        let plain = t.apply(&img, Some(&pts), false).unwrap();
        let flipped = t.apply(&img, Some(&pts), true).unwrap();
        let red = |p: &Prepared, x: f32, y: f32| p.chw[y as usize * p.width + x as usize];
        let (lp, lf) = (plain.landmarks.clone().unwrap(), flipped.landmarks.clone().unwrap());
        assert_eq!(lp, pts);
        // Left eye ↔ right eye and left mouth ↔ right mouth swap indices; x → W − 1 − x.
        assert_eq!(lf, [1.0, 1.0, 4.0, 1.0, 3.0, 2.0, 0.0, 3.0, 5.0, 3.0]);
        // Every flipped point looks at the same image content as the original point it came from.
        let perm = flip_permutation(5).unwrap();
        for i in 0..5 {
            let j = perm[i];
            assert_eq!(red(&flipped, lf[2 * i], lf[2 * i + 1]), red(&plain, lp[2 * j], lp[2 * j + 1]));
        }
    }

    #[test]
    fn resize_scales_landmarks_about_pixel_centres() {
        let img = gradient_image(10, 20);
        let t = Transform { size: Some((10, 5)), ..Default::default() };
        let out = t.apply(&img, Some(&[0.5, 1.5, 9.5, 19.5]), false).unwrap();
        assert_eq!((out.height, out.width, out.chw.len()), (10, 5, 150));
        // (x + ½)·s − ½ with s = ½ in both directions.
        assert_eq!(out.landmarks.unwrap(), [0.0, 0.5, 4.5, 9.5]);
    }

    #[test]
    fn unknown_point_count_cannot_flip() {
        let img = gradient_image(4, 4);
        let err = Transform::default().apply(&img, Some(&[1.0; 14]), true).unwrap_err().to_string();
        assert_eq!(err, "cannot flip 7 landmarks: no mirror map known (68 and 5 are)");
    }

    #[test]
    fn decode_rejects_text_and_truncated_jpeg() {
        let dir = tempfile::tempdir().unwrap();
        let jpg = dir.path().join("ok.jpg");
        gradient_image(16, 16).save(&jpg).unwrap();
        assert_eq!(decode(&jpg).unwrap().dimensions(), (16, 16));
        let bytes = std::fs::read(&jpg).unwrap();
        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = decode(&cut).unwrap_err().to_string();
        assert!(err.contains("cut.jpg: cannot decode image"), "{err}");
        let txt = dir.path().join("text.jpg");
        std::fs::write(&txt, "hello, not an image").unwrap();
        let err = decode(&txt).unwrap_err().to_string();
        assert!(err.contains("text.jpg: cannot decode image"), "{err}");
    }

    /// A PNG whose header claims `w`×`h` RGB pixels, with one short (invalid) data chunk.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= b as u32;
                for _ in 0..8 {
                    crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
                }
            }
            !crc
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            out.extend((data.len() as u32).to_be_bytes());
            let body: Vec<u8> = kind.iter().chain(data).copied().collect();
            out.extend(&body);
            out.extend(crc32(&body).to_be_bytes());
        };
        let ihdr: Vec<u8> = w.to_be_bytes().into_iter().chain(h.to_be_bytes()).chain([8, 2, 0, 0, 0]).collect();
        chunk(b"IHDR", &ihdr);
        chunk(b"IDAT", &[0x78, 0x9c, 0x01, 0x02]);
        chunk(b"IEND", &[]);
        out
    }

    #[test]
    fn an_image_claiming_huge_dimensions_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        for (w, h) in [(60_000, 60_000), (20_000, 20_000)] {
            let p = dir.path().join(format!("{w}.png"));
            std::fs::write(&p, png_claiming(w, h)).unwrap();
            for err in [decode(&p).unwrap_err(), decode_oriented(&p).unwrap_err()] {
                let err = err.to_string();
                assert!(err.contains(&format!("{w}.png: image of {w}×{h} pixels would take")), "{err}");
                assert!(err.contains("more than the limit of 512 MiB"), "{err}");
            }
        }
        // Small claims get as far as the (broken) pixel data, and fail there.
        let p = dir.path().join("small.png");
        std::fs::write(&p, png_claiming(4, 4)).unwrap();
        assert!(decode(&p).unwrap_err().to_string().contains("small.png: cannot decode image"));
        let one = dir.path().join("one.png");
        image::RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3])).save(&one).unwrap();
        assert_eq!(decode_oriented(&one).unwrap().get_pixel(0, 0).0, [1, 2, 3]);
    }

    #[test]
    fn greyscale_png_becomes_rgb() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        image::GrayImage::from_pixel(3, 2, image::Luma([77])).save(&p).unwrap();
        let rgb = decode(&p).unwrap();
        assert_eq!(rgb.get_pixel(2, 1).0, [77, 77, 77]);
    }
}
