//! Face alignment for in-the-wild photos: a similarity transform (rotation, uniform scale,
//! translation) fitted by least squares from detected landmarks to the mean landmark positions of
//! CelebA's aligned 178×218 crops, and a bilinear warp that cuts such a crop out of any photo. The
//! model then sees a face framed the way its training images were.
//!
//! The template is not typed in: it is the mean of dlib's 68 points over the faces of the
//! bundled `data/celeba/landmarks.csv` (aligned CelebA crops), computed when first asked for.

use std::sync::OnceLock;

use image::RgbImage;

/// Height and width of CelebA's aligned crops.
pub const CELEBA_CROP: (u32, u32) = (218, 178);

const BUNDLED_LANDMARKS: &str = include_str!("../../../data/celeba/landmarks.csv");

/// Mean `[x0, y0, …]` of dlib's 68 points on CelebA's aligned crops (pixels of a 178×218 crop).
pub fn celeba_template() -> &'static [f32] {
    static TEMPLATE: OnceLock<Vec<f32>> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let mut sum = vec![0f64; 136];
        let mut n = 0usize;
        for line in BUNDLED_LANDMARKS.lines().skip(1) {
            let values: Vec<f64> = line.split(',').skip(1).filter_map(|v| v.trim().parse().ok()).collect();
            if values.len() == sum.len() {
                sum.iter_mut().zip(&values).for_each(|(s, v)| *s += v);
                n += 1;
            }
        }
        assert!(n > 0, "the bundled landmarks.csv holds 68-point rows");
        sum.iter().map(|s| (s / n as f64) as f32).collect()
    })
}

/// `p ↦ (a·x − b·y + tx, b·x + a·y + ty)`: rotation by atan2(b, a), scale √(a² + b²).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    /// scale · cos θ.
    pub a: f64,
    /// scale · sin θ.
    pub b: f64,
    /// x translation.
    pub tx: f64,
    /// y translation.
    pub ty: f64,
}

impl Similarity {
    /// The least-squares similarity taking the points `src` to `dst` (both `[x0, y0, …]`, same
    /// length, at least two distinct points). `None` when `src` is degenerate.
    pub fn fit(src: &[f32], dst: &[f32]) -> Option<Self> {
        assert_eq!(src.len(), dst.len());
        let n = (src.len() / 2) as f64;
        let mean = |v: &[f32], o: usize| v.iter().skip(o).step_by(2).map(|&x| x as f64).sum::<f64>() / n;
        let (sx, sy, dx, dy) = (mean(src, 0), mean(src, 1), mean(dst, 0), mean(dst, 1));
        let (mut num_a, mut num_b, mut den) = (0.0, 0.0, 0.0);
        for (p, q) in src.chunks_exact(2).zip(dst.chunks_exact(2)) {
            let (x, y) = (p[0] as f64 - sx, p[1] as f64 - sy);
            let (u, v) = (q[0] as f64 - dx, q[1] as f64 - dy);
            num_a += x * u + y * v;
            num_b += x * v - y * u;
            den += x * x + y * y;
        }
        if den < 1e-9 {
            return None;
        }
        let (a, b) = (num_a / den, num_b / den);
        Some(Self { a, b, tx: dx - (a * sx - b * sy), ty: dy - (b * sx + a * sy) })
    }

    /// Maps one point.
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        (self.a * x - self.b * y + self.tx, self.b * x + self.a * y + self.ty)
    }

    /// The inverse transform.
    pub fn inverse(&self) -> Self {
        let d = self.a * self.a + self.b * self.b;
        let (a, b) = (self.a / d, -self.b / d);
        Self { a, b, tx: -(a * self.tx - b * self.ty), ty: -(b * self.tx + a * self.ty) }
    }

    /// Maps `[x0, y0, …]`.
    pub fn apply_points(&self, points: &[f32]) -> Vec<f32> {
        points.chunks_exact(2).flat_map(|p| {
            let (x, y) = self.apply(p[0] as f64, p[1] as f64);
            [x as f32, y as f32]
        }).collect()
    }
}

/// The `(height, width)` crop whose pixel `(x, y)` shows `img` at `to_crop⁻¹(x, y)` (bilinear;
/// black outside the photo).
pub fn warp(img: &RgbImage, to_crop: &Similarity, (h, w): (u32, u32)) -> RgbImage {
    let inv = to_crop.inverse();
    let (iw, ih) = (img.width() as i64, img.height() as i64);
    let px = |x: i64, y: i64, c: usize| -> f64 {
        if x < 0 || y < 0 || x >= iw || y >= ih { 0.0 } else { img.get_pixel(x as u32, y as u32)[c] as f64 }
    };
    RgbImage::from_fn(w, h, |x, y| {
        let (sx, sy) = inv.apply(x as f64, y as f64);
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        image::Rgb(std::array::from_fn(|c| {
            let v = px(x0, y0, c) * (1.0 - fx) * (1.0 - fy)
                + px(x0 + 1, y0, c) * fx * (1.0 - fy)
                + px(x0, y0 + 1, c) * (1.0 - fx) * fy
                + px(x0 + 1, y0 + 1, c) * fx * fy;
            v.round().clamp(0.0, 255.0) as u8
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_a_known_similarity_and_inverts() {
        let t = Similarity { a: 0.8, b: 0.6, tx: 10.0, ty: -4.0 }; // scale 1, 36.87°
        let src = [0.0f32, 0.0, 10.0, 0.0, 0.0, 5.0, 7.0, 3.0];
        let dst = t.apply_points(&src);
        let fit = Similarity::fit(&src, &dst).unwrap();
        for (got, want) in [(fit.a, 0.8), (fit.b, 0.6), (fit.tx, 10.0), (fit.ty, -4.0)] {
            assert!((got - want).abs() < 1e-6, "{fit:?}"); // dst is f32
        }
        let back = fit.inverse().apply_points(&dst);
        assert!(back.iter().zip(&src).all(|(a, b)| (a - b).abs() < 1e-5));
        assert!(Similarity::fit(&[1.0, 1.0, 1.0, 1.0], &[0.0, 0.0, 1.0, 1.0]).is_none());
    }

    #[test]
    fn template_is_a_face_in_the_crop() {
        let t = celeba_template();
        assert_eq!(t.len(), 136);
        // Outer eye corners (36, 45) level and left of/right of the nose tip (30), chin (8) lowest.
        let (l, r, nose, chin) = ((t[72], t[73]), (t[90], t[91]), (t[60], t[61]), (t[16], t[17]));
        assert!(l.0 < nose.0 && nose.0 < r.0 && (l.1 - r.1).abs() < 3.0 && chin.1 > nose.1);
        assert!(t.iter().step_by(2).all(|&x| (0.0..178.0).contains(&x)));
    }

    #[test]
    fn warp_by_a_shift_moves_pixels() {
        let img = RgbImage::from_fn(8, 6, |x, y| image::Rgb([(10 * x) as u8, (10 * y) as u8, 7]));
        let shift = Similarity { a: 1.0, b: 0.0, tx: -2.0, ty: -1.0 };
        let crop = warp(&img, &shift, (4, 5));
        assert_eq!(crop.get_pixel(0, 0).0, [20, 10, 7]);
        assert_eq!(crop.get_pixel(4, 3).0, [60, 40, 7]);
        let out = warp(&img, &Similarity { a: 1.0, b: 0.0, tx: 100.0, ty: 0.0 }, (2, 2));
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0], "outside the photo is black");
    }
}
