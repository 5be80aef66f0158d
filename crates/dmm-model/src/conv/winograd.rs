//! Winograd F(4×4, 3×3) for the 3×3, stride-1, padding-1 convolutions (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016; interpolation points 0, ±1, ±2, ∞).
//!
//! Each 4×4 output tile is `Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A` for the 6×6 input tile `d` it reads.
//! Summed over input channels, the products `⊙` become 36 matrix products, one per point `ξ`
//! of the 6×6 transform domain: `M_ξ = U_ξ · V_ξ` with `U_ξ` `[c_out, c_in]` (the transformed
//! filters) and `V_ξ` `[c_in, tiles]` (the transformed input tiles). That is 36 multiply-adds per
//! 16 outputs per channel pair instead of 144: four times fewer.
//!
//! The transforms are separable (a 1-D transform along each axis), and every pass runs over rows
//! of tiles, contiguous in memory, so they vectorize:
//! - filters: `U` `[c_out][36][c_in]`, one output channel's block at a time (`U_ξ` is a strided
//!   view);
//! - input: each image row a tile row reads is split into its four column phases (`x mod 4`),
//!   so that the transform along the tile's columns reads contiguous runs; then the transform
//!   along the tile's rows runs over all tiles of the group at once, into `V` `[c_in][36][tiles]`;
//! - products: `M` `[36][c_out][tiles]`, one gemm per point;
//! - output: `M` transformed back along both axes over all tiles of an image, the eval-mode
//!   epilogue applied, and each output row interleaved from its four column phases (clipped at
//!   the right and bottom edges).
//!
//! The input gradient of such a convolution is the same convolution of `∂Y` with the filters
//! transposed and turned by 180°, so it runs through the same path. The weight gradient is the
//! adjoint of the same steps: `∂M = A ∂Y Aᵀ` per tile, `∂U_ξ = Σ ∂M_ξ · V_ξᵀ` over the tiles,
//! then `∂W = Gᵀ ∂U G`.
//!
//! In exact arithmetic this is the convolution; in floating point it rounds differently (the
//! transforms multiply by up to 8 and divide by 24), about ten times the error of the direct
//! sum in f32. Tests check it against the im2col path in f64 (to 1e-12) and in f32, and the trunk
//! against the PyTorch fixtures.

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::WithDType;
use gemm::Parallelism;
use rayon::prelude::*;

use super::{affine_in_place, sum_over_groups, Epilogue, Geometry};
use crate::gemm::{matmul, matmul_uninit, written_vec, Mat};
use crate::simd::multiversion;

/// Points of the transform domain, 6×6.
pub(super) const POINTS: usize = 36;

/// Tiles per product the image groups aim for (see `Geometry::group_size`).
const GROUP_TILES: usize = 64;


multiversion! {
    /// `Bᵀ d`: six rows of `len` into six rows (row `r` at `dst[r·ds..]`).
    fn input_1d<T: WithDType>(d: [&[T]; 6], dst: &mut [T], ds: usize, len: usize) {
        let [d0, d1, d2, d3, d4, d5] = d.map(|r| &r[..len]);
        let (c2, c4, c5) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(5.0));
        let [o0, o1, o2, o3, o4, o5] = rows_at_mut(dst, ds, len);
        for i in 0..len {
            let (a, b, c, d, e, f) = (d0[i], d1[i], d2[i], d3[i], d4[i], d5[i]);
            o0[i] = c4 * a - c5 * c + e;
            o1[i] = e + d - c4 * (b + c);
            o2[i] = e - d + c4 * (b - c);
            o3[i] = e - c + c2 * (d - b);
            o4[i] = e - c - c2 * (d - b);
            o5[i] = c4 * b - c5 * d + f;
        }
    }
}

multiversion! {
    /// `Aᵀ m`: six rows into four.
    fn output_1d<T: WithDType>(m: [&[T]; 6], dst: &mut [T], ds: usize, len: usize) {
        let [m0, m1, m2, m3, m4, m5] = m.map(|r| &r[..len]);
        let (c2, c4, c8) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
        let [o0, o1, o2, o3] = rows_at_mut(dst, ds, len);
        for i in 0..len {
            let (p1, q1, p2, q2) = (m1[i] + m2[i], m1[i] - m2[i], m3[i] + m4[i], m3[i] - m4[i]);
            o0[i] = m0[i] + p1 + p2;
            o1[i] = q1 + c2 * q2;
            o2[i] = p1 + c4 * p2;
            o3[i] = q1 + c8 * q2 + m5[i];
        }
    }
}

multiversion! {
    /// `G g`: three rows into six.
    fn filter_1d<T: WithDType>(g: [&[T]; 3], dst: &mut [T], ds: usize, len: usize) {
        let [g0, g1, g2] = g.map(|r| &r[..len]);
        let (quarter, sixth, twelfth, c24) = (T::from_f64(0.25), T::from_f64(1.0 / 6.0), T::from_f64(1.0 / 12.0), T::from_f64(1.0 / 24.0));
        let [o0, o1, o2, o3, o4, o5] = rows_at_mut(dst, ds, len);
        for i in 0..len {
            let (a, b, c) = (g0[i], g1[i], g2[i]);
            let (ac6, ac24) = ((a + c) * sixth, a * c24 + c * sixth);
            o0[i] = a * quarter;
            o1[i] = T::zero() - ac6 - b * sixth;
            o2[i] = b * sixth - ac6;
            o3[i] = ac24 + b * twelfth;
            o4[i] = ac24 - b * twelfth;
            o5[i] = c;
        }
    }
}

multiversion! {
    /// `A v`, the adjoint of [`output_1d`]: four rows into six.
    fn grad_output_1d<T: WithDType>(v: [&[T]; 4], dst: &mut [T], ds: usize, len: usize) {
        let [v0, v1, v2, v3] = v.map(|r| &r[..len]);
        let (c2, c4, c8) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
        let [o0, o1, o2, o3, o4, o5] = rows_at_mut(dst, ds, len);
        for i in 0..len {
            let (a, b, c, d) = (v0[i], v1[i], v2[i], v3[i]);
            let (even, odd) = (a + c, b + d);
            let (even4, odd2) = (a + c4 * c, c2 * b + c8 * d);
            o0[i] = a;
            o1[i] = even + odd;
            o2[i] = even - odd;
            o3[i] = even4 + odd2;
            o4[i] = even4 - odd2;
            o5[i] = d;
        }
    }
}

multiversion! {
    /// `Gᵀ u`, the adjoint of [`filter_1d`]: six rows into three.
    fn filter_grad_1d<T: WithDType>(u: [&[T]; 6], dst: &mut [T], ds: usize, len: usize) {
        let [u0, u1, u2, u3, u4, u5] = u.map(|r| &r[..len]);
        let (quarter, sixth, twelfth, c24) = (T::from_f64(0.25), T::from_f64(1.0 / 6.0), T::from_f64(1.0 / 12.0), T::from_f64(1.0 / 24.0));
        let [o0, o1, o2] = rows_at_mut(dst, ds, len);
        for i in 0..len {
            let (s12, d12, s34, d34) = (u1[i] + u2[i], u2[i] - u1[i], u3[i] + u4[i], u3[i] - u4[i]);
            o0[i] = u0[i] * quarter - s12 * sixth + s34 * c24;
            o1[i] = d12 * sixth + d34 * twelfth;
            o2[i] = (s34 - s12) * sixth + u5[i];
        }
    }
}

multiversion! {
    /// Splits `src` (a multiple of 4 long) into its four phases: `dst[q·n + t] = src[4t + q]`.
    fn deinterleave4<T: WithDType>(src: &[T], dst: &mut [T], n: usize) {
        let (p0, rest) = dst.split_at_mut(n);
        let (p1, rest) = rest.split_at_mut(n);
        let (p2, p3) = rest.split_at_mut(n);
        for ((((quad, a), b), c), d) in src.chunks_exact(4).zip(p0).zip(p1).zip(p2).zip(p3) {
            (*a, *b, *c, *d) = (quad[0], quad[1], quad[2], quad[3]);
        }
    }
}

multiversion! {
    /// The inverse: `dst[4t + q] = src[q][t]`.
    fn interleave4<T: WithDType>(src: [&[T]; 4], dst: &mut [T]) {
        let [s0, s1, s2, s3] = src;
        for ((((quad, &a), &b), &c), &d) in dst.chunks_exact_mut(4).zip(s0).zip(s1).zip(s2).zip(s3) {
            quad.copy_from_slice(&[a, b, c, d]);
        }
    }
}

/// Copies `src` into memory not yet written.
fn write_into<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v);
    }
}

/// `N` rows of `src` at stride `ss`, each running to the end of `src`.
fn rows_at<T, const N: usize>(src: &[T], ss: usize) -> [&[T]; N] {
    std::array::from_fn(|r| &src[r * ss..])
}

/// The 1-D transforms' `N` destination rows: `len` elements at each multiple of `ds` in `dst`.
/// (Inlined, so the kernels still see every row's length.)
#[inline(always)]
fn rows_at_mut<T, const N: usize>(dst: &mut [T], ds: usize, len: usize) -> [&mut [T]; N] {
    let mut rows = dst.chunks_mut(ds).map(|r| &mut r[..len]);
    std::array::from_fn(|_| rows.next().expect("a destination row for every output of the transform"))
}

/// Tiles per image below which the im2col path is faster: on small maps the transformed
/// filters, four times the weights and built on every call, cost more than the products save.
/// Measured with `cargo bench -p dmm-model --bench conv_layers` (2 threads, batch 8): 14×14 maps
/// (16 tiles) gain in the eval forward (256 channels: 6.2 → 4.4 ms) and in training; 7×7 maps
/// (4 tiles) lose in training (256 channels at 112×112 input: 7.1 → 11.3 ms).
const MIN_TILES: usize = 12;

/// Which convolutions take this path: 3×3, stride 1, padding 1, on maps of at least
/// [`MIN_TILES`] tiles.
pub(super) fn applies(g: &Geometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.padding == 1 && g.oh.div_ceil(4) * g.ow.div_ceil(4) >= MIN_TILES
}

/// Which convolutions take this path when their transformed filters are at hand (eval mode with
/// [`super::winograd_filters`]): 3×3, stride 1, padding 1, where the tiles' multiply-adds (36 per
/// 16 outputs, padding included) are at most half the direct 9 per output: `8·tiles ≤ oh·ow`
/// (7×7 maps, 4 tiles, qualify; 2×2 maps do not).
pub(super) fn applies_prepared(g: &Geometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.padding == 1 && 8 * g.oh.div_ceil(4) * g.ow.div_ceil(4) <= g.l()
}

/// The tiling of one convolution: `ty × tx` tiles of 4×4 outputs per image, `group` images per
/// product.
#[derive(Clone, Copy)]
struct Tiles {
    g: Geometry,
    ty: usize,
    tx: usize,
    group: usize,
}

impl Tiles {
    fn new(g: &Geometry) -> Self {
        let (ty, tx) = (g.oh.div_ceil(4), g.ow.div_ceil(4));
        // The image groups are chosen as the im2col path's, with tiles for output positions.
        let tiles = Geometry { oh: ty, ow: tx, ..*g };
        Self { g: *g, ty, tx, group: tiles.group_size(rayon::current_num_threads(), GROUP_TILES) }
    }

    /// Tiles per image.
    fn per_image(&self) -> usize {
        self.ty * self.tx
    }
}

/// The transformed filters `U` `[c_out][36][c_in]` of `wt` `[c_out, c_in, 3, 3]`; with
/// `adjoint`, those of the input gradient's filters (`[c_in, c_out, 3, 3]`, each turned by 180°),
/// `[c_in][36][c_out]`.
pub(super) fn filters<T: WithDType>(wt: &[T], c_out: usize, c_in: usize, adjoint: bool) -> Vec<T> {
    let (rows, cols) = if adjoint { (c_in, c_out) } else { (c_out, c_in) };
    let block = |o: usize, dst: &mut [MaybeUninit<T>], buf: &mut Vec<T>| {
        // The nine taps `[9][cols]`, then `G g` along the kernel's columns (rows (j, ξy) of the
        // second part), then along its rows: (ξy, ξx) at (ξy·6 + ξx)·cols.
        buf.resize(63 * cols, T::zero());
        let (taps, rest) = buf.split_at_mut(9 * cols);
        let (half, full) = rest.split_at_mut(18 * cols);
        for (q, row) in taps.chunks_mut(cols).enumerate() {
            if adjoint {
                for (k, t) in row.iter_mut().enumerate() {
                    *t = wt[(k * c_in + o) * 9 + 8 - q];
                }
            } else {
                for (t, w) in row.iter_mut().zip(wt[o * c_in * 9..(o + 1) * c_in * 9].iter().skip(q).step_by(9)) {
                    *t = *w;
                }
            }
        }
        for j in 0..3 {
            filter_1d(rows_at(&taps[j * cols..], 3 * cols), &mut half[j * 6 * cols..], cols, cols);
        }
        for yi in 0..6 {
            filter_1d(rows_at(&half[yi * cols..], 6 * cols), &mut full[yi * 6 * cols..], cols, cols);
        }
        write_into(dst, full);
    };
    let fill = |out: &mut [MaybeUninit<T>]| out.par_chunks_mut(POINTS * cols).enumerate().for_each_init(Vec::new, |buf, (o, dst)| block(o, dst, buf));
    // SAFETY: every output channel's block of 36·cols is written in full by `block`.
    unsafe { written_vec(rows * POINTS * cols, fill) }
}

/// One worker's buffers: the transformed input tiles `V` and the products `M`.
struct Buffers<T> {
    v: Vec<T>,
    m: Vec<MaybeUninit<T>>,
    /// `∂M` in the weight gradient.
    dm: Vec<T>,
}

impl<T> Default for Buffers<T> {
    fn default() -> Self {
        Self { v: Vec::new(), m: Vec::new(), dm: Vec::new() }
    }
}

/// Runs `f(index, chunk, scratch)` over `data` cut in `chunk`s: on rayon's threads with
/// `parallel`, else in order.
fn chunks<T: Send, S: Default, F>(parallel: bool, data: &mut [T], chunk: usize, f: F)
where
    F: Fn(usize, &mut [T], &mut S) + Sync + Send,
{
    if parallel {
        data.par_chunks_mut(chunk).enumerate().for_each_init(S::default, |s, (i, c)| f(i, c, s));
    } else {
        let mut s = S::default();
        data.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c, &mut s));
    }
}

impl Tiles {
    /// `V` `[c_in][36][g·t]` of `images` of `x`.
    fn transform_input<T: WithDType>(&self, x: &[T], images: Range<usize>, v: &mut Vec<T>, parallel: bool) {
        let (t, tx, gt) = (self.per_image(), self.tx, images.len() * self.per_image());
        let (h, w, plane, image) = (self.g.h, self.g.w, self.g.h * self.g.w, self.g.image());
        let padded = 4 * (tx + 1);
        v.resize(self.g.c_in * POINTS * gt, T::zero());
        chunks(parallel, v, POINTS * gt, |c, v, buf: &mut Vec<T>| {
            // One image row padded (a zero before it, zeros after), its four phases, and the
            // tiles transformed along their columns: rows (i, ξx) at (i·6 + ξx)·gt.
            buf.resize(padded * 2 + POINTS * gt, T::zero());
            let (row, rest) = buf.split_at_mut(padded);
            let (phases, half) = rest.split_at_mut(padded);
            for (bi, b) in images.clone().enumerate() {
                let src = &x[b * image + c * plane..b * image + (c + 1) * plane];
                for ty in 0..self.ty {
                    for i in 0..6 {
                        let dst = &mut half[i * 6 * gt + bi * t + ty * tx..];
                        let Some(r) = (4 * ty + i).checked_sub(1).filter(|&r| r < h) else {
                            for xi in 0..6 {
                                dst[xi * gt..xi * gt + tx].fill(T::zero());
                            }
                            continue;
                        };
                        row[1..=w].copy_from_slice(&src[r * w..(r + 1) * w]);
                        deinterleave4(row, phases, tx + 1);
                        let p = |q: usize, shift: usize| &phases[q * (tx + 1) + shift..];
                        input_1d([p(0, 0), p(1, 0), p(2, 0), p(3, 0), p(0, 1), p(1, 1)], dst, gt, tx);
                    }
                }
            }
            for xi in 0..6 {
                input_1d(rows_at(&half[xi * gt..], 6 * gt), &mut v[xi * gt..], 6 * gt, gt);
            }
        });
    }

    /// `M_ξ = U_ξ · V_ξ` for every point, `M` `[36][c_out][g·t]`.
    fn products<'m, T: WithDType>(&self, u: &[T], v: &[T], gt: usize, m: &'m mut Vec<MaybeUninit<T>>, parallel: bool) -> &'m [T] {
        let (c_in, c_out) = (self.g.c_in, self.g.c_out);
        let size = c_out * gt;
        m.resize_with(POINTS * size, MaybeUninit::uninit);
        let m = &mut m[..];
        chunks(parallel, m, size, |xi, dst, _: &mut ()| {
            let u = Mat::strided(&u[xi * c_in..], c_out, c_in, POINTS * c_in);
            let v = Mat::strided(&v[xi * gt..], c_in, gt, POINTS * gt);
            matmul_uninit(dst, u, v, Parallelism::None);
        });
        // SAFETY: each point's product wrote all `size` elements of its chunk.
        unsafe { &*(m as *mut [MaybeUninit<T>] as *const [T]) }
    }

    /// Output plane `i` `[oh, ow]` of the group from `M`: image `i / c_out` of the group, channel
    /// `i mod c_out`.
    fn transform_output<T: WithDType>(&self, m: &[T], gt: usize, i: usize, plane: &mut [MaybeUninit<T>], buf: &mut Vec<T>, epilogue: Option<&Epilogue>) {
        let (t, c_out, tx, w) = (self.per_image(), self.g.c_out, self.tx, self.g.ow);
        let (b, k) = (i / c_out, i % c_out);
        // Along ξx: rows (ξy, ox) at (ξy·4 + ox)·t; along ξy: (oy, ox) at (oy·4 + ox)·t; then
        // one output row at a time, interleaved from its four column phases.
        buf.resize(40 * t + 4 * tx, T::zero());
        let (half, rest) = buf.split_at_mut(24 * t);
        let (full, row) = rest.split_at_mut(16 * t);
        for yi in 0..6 {
            output_1d(rows_at(&m[(yi * 6 * c_out + k) * gt + b * t..], c_out * gt), &mut half[yi * 4 * t..], t, t);
        }
        for ox in 0..4 {
            output_1d(rows_at(&half[ox * t..], 4 * t), &mut full[ox * t..], 4 * t, t);
        }
        if let Some(e) = epilogue {
            affine_in_place(full, T::from_f64(e.scale[k]), T::from_f64(e.shift[k]), e.relu);
        }
        for (y, dst) in plane.chunks_mut(w).enumerate() {
            let (ty, oy) = (y / 4, y % 4);
            interleave4(std::array::from_fn(|ox| &full[(oy * 4 + ox) * t + ty * tx..][..tx]), row);
            write_into(dst, &row[..w]);
        }
    }

    /// The convolution of `x` with the transformed filters `u`, then the epilogue.
    fn convolve<T: WithDType>(&self, x: &[T], u: &[T], epilogue: Option<&Epilogue>) -> Vec<T> {
        let (g, plane) = (&self.g, self.g.l());
        let fill = |out: &mut [MaybeUninit<T>]| {
            g.per_group(out, g.output(), self.group, |images, y, s: &mut Buffers<T>, par| {
                let (parallel, gt) = (!matches!(par, Parallelism::None), images.len() * self.per_image());
                self.transform_input(x, images, &mut s.v, parallel);
                let products = self.products(u, &s.v, gt, &mut s.m, parallel);
                let each = |i: usize, plane: &mut [MaybeUninit<T>], buf: &mut Vec<T>| self.transform_output(products, gt, i, plane, buf, epilogue);
                chunks(parallel, y, plane, each);
            })
        };
        // SAFETY: every plane of every image is written by `transform_output`, row by row.
        unsafe { written_vec(g.n * g.output(), fill) }
    }
}

impl Tiles {
    /// `∂M = A ∂Y Aᵀ` of every 4×4 tile of `images` of `dy` (zero past the edges), `[c_out][36][g·t]`:
    /// the gradient of the products `M` the forward back-transformed.
    fn transform_grad_output<T: WithDType>(&self, dy: &[T], images: Range<usize>, dm: &mut Vec<T>, parallel: bool) {
        let (t, tx, gt) = (self.per_image(), self.tx, images.len() * self.per_image());
        let (h, w, plane) = (self.g.oh, self.g.ow, self.g.l());
        let padded = 4 * tx;
        dm.resize(self.g.c_out * POINTS * gt, T::zero());
        chunks(parallel, dm, POINTS * gt, |k, dm, buf: &mut Vec<T>| {
            // One output row padded with zeros, its four phases, and the tiles transformed along
            // their columns: rows (oy, ξx) at (oy·6 + ξx)·gt.
            buf.resize(padded * 2 + 24 * gt, T::zero());
            let (row, rest) = buf.split_at_mut(padded);
            let (phases, half) = rest.split_at_mut(padded);
            for (bi, b) in images.clone().enumerate() {
                let src = &dy[(b * self.g.c_out + k) * plane..(b * self.g.c_out + k + 1) * plane];
                for ty in 0..self.ty {
                    for oy in 0..4 {
                        let dst = &mut half[oy * 6 * gt + bi * t + ty * tx..];
                        let y = 4 * ty + oy;
                        if y >= h {
                            for xi in 0..6 {
                                dst[xi * gt..xi * gt + tx].fill(T::zero());
                            }
                            continue;
                        }
                        row[..w].copy_from_slice(&src[y * w..(y + 1) * w]);
                        deinterleave4(row, phases, tx);
                        grad_output_1d(rows_at(phases, tx), dst, gt, tx);
                    }
                }
            }
            for xi in 0..6 {
                grad_output_1d(rows_at(&half[xi * gt..], 6 * gt), &mut dm[xi * gt..], 6 * gt, gt);
            }
        });
    }

    /// Adds `∂U_ξ = ∂M_ξ · V_ξᵀ` of `images` into `du` `[36][c_out][c_in]` (written, when empty).
    fn accumulate<T: WithDType>(&self, x: &[T], dy: &[T], images: Range<usize>, du: &mut Vec<T>, s: &mut Buffers<T>, parallel: bool) {
        let (c_in, c_out, gt) = (self.g.c_in, self.g.c_out, images.len() * self.per_image());
        self.transform_input(x, images.clone(), &mut s.v, parallel);
        self.transform_grad_output(dy, images, &mut s.dm, parallel);
        let (v, dm, size) = (&s.v, &s.dm, c_out * c_in);
        let operands = |xi: usize| (Mat::strided(&dm[xi * gt..], c_out, gt, POINTS * gt), Mat::strided(&v[xi * gt..], c_in, gt, POINTS * gt).t());
        if du.is_empty() {
            let fill = |out: &mut [MaybeUninit<T>]| {
                chunks(parallel, out, size, |xi, dst, _: &mut ()| {
                    let (a, b) = operands(xi);
                    matmul_uninit(dst, a, b, Parallelism::None);
                })
            };
            // SAFETY: each point's product writes all `size` elements of its chunk.
            *du = unsafe { written_vec(POINTS * size, fill) };
        } else {
            chunks(parallel, du, size, |xi, dst, _: &mut ()| {
                let (a, b) = operands(xi);
                matmul(dst, a, b, true, Parallelism::None);
            });
        }
    }
}

/// `∂W = Gᵀ ∂U G` for every filter, `[c_out, c_in, 3, 3]`, from `du` `[36][c_out][c_in]`.
fn filter_grad<T: WithDType>(du: &[T], pairs: usize) -> Vec<T> {
    const PAIRS_PER_TASK: usize = 256;
    let block = |task: usize, dst: &mut [MaybeUninit<T>], buf: &mut Vec<T>| {
        let (p0, len) = (task * PAIRS_PER_TASK, dst.len() / 9);
        // The block's 36 rows, then along ξx into (ξy, j) at (ξy·3 + j)·len, then along ξy into
        // (i, j) at (i·3 + j)·len, then interleaved into the filters' [pairs][3][3].
        buf.resize(63 * len, T::zero());
        let (points, rest) = buf.split_at_mut(36 * len);
        let (half, taps) = rest.split_at_mut(18 * len);
        for (xi, row) in points.chunks_mut(len).enumerate() {
            row.copy_from_slice(&du[xi * pairs + p0..xi * pairs + p0 + len]);
        }
        for yi in 0..6 {
            filter_grad_1d(rows_at(&points[yi * 6 * len..], len), &mut half[yi * 3 * len..], len, len);
        }
        for j in 0..3 {
            filter_grad_1d(rows_at(&half[j * len..], 3 * len), &mut taps[j * len..], 3 * len, len);
        }
        for (p, d) in dst.chunks_mut(9).enumerate() {
            for (q, d) in d.iter_mut().enumerate() {
                d.write(taps[q * len + p]);
            }
        }
    };
    let fill = |out: &mut [MaybeUninit<T>]| out.par_chunks_mut(9 * PAIRS_PER_TASK).enumerate().for_each_init(Vec::new, |buf, (i, d)| block(i, d, buf));
    // SAFETY: every task writes its block of filters in full.
    unsafe { written_vec(9 * pairs, fill) }
}

/// Weight gradient: `∂U_ξ = Σ ∂M_ξ · V_ξᵀ` over the batch's tiles, one partial sum per thread,
/// then `∂W = Gᵀ ∂U G`.
pub(super) fn weight_grad<T: WithDType>(g: &Geometry, x: &[T], dy: &[T]) -> Vec<T> {
    let t = Tiles::new(g);
    let add = |du: &mut Vec<T>, images, s: &mut Buffers<T>, par| t.accumulate(x, dy, images, du, s, !matches!(par, Parallelism::None));
    let du = sum_over_groups(g.n, t.group, add);
    if du.is_empty() {
        return vec![T::zero(); 9 * g.c_out * g.c_in];
    }
    filter_grad(&du, g.c_out * g.c_in)
}

/// Forward of a convolution [`applies`] holds for.
pub(super) fn forward<T: WithDType>(g: &Geometry, x: &[T], wt: &[T], epilogue: Option<&Epilogue>) -> Vec<T> {
    let u = filters(wt, g.c_out, g.c_in, false);
    Tiles::new(g).convolve(x, &u, epilogue)
}

/// Forward with the transformed filters `u` given ([`filters`]).
pub(super) fn forward_with<T: WithDType>(g: &Geometry, x: &[T], u: &[T], epilogue: Option<&Epilogue>) -> Vec<T> {
    Tiles::new(g).convolve(x, u, epilogue)
}

/// Input gradient: `∂x` is `∂Y` convolved with the filters transposed and turned by 180°.
pub(super) fn input_grad<T: WithDType>(g: &Geometry, dy: &[T], wt: &[T]) -> Vec<T> {
    let u = filters(wt, g.c_out, g.c_in, true);
    let adjoint = Geometry { c_in: g.c_out, c_out: g.c_in, ..*g };
    Tiles::new(&adjoint).convolve(dy, &u, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: f64) -> Vec<f64> {
        (0..n).map(|i| (i as f64 * 0.7311 + seed).sin() + 0.25 * (i as f64 * 0.1237 + 2.0 * seed).cos()).collect()
    }

    fn geometry(n: usize, c_in: usize, c_out: usize, h: usize, w: usize) -> Geometry {
        Geometry { n, c_in, h, w, c_out, kh: 3, kw: 3, stride: 1, padding: 1, oh: h, ow: w, group: 1, forward_group: 1, winograd: false, direct: false }
    }

    /// Largest `|a − b|` over the largest `|b|`.
    fn rel(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Forward (plain and with the eval epilogue) and both gradients equal the im2col path, for
    /// maps whose sizes leave partial tiles at the right and bottom, maps smaller than one tile,
    /// and every grouping of the images: one per product, uneven groups, the whole batch (whose
    /// stages then run in parallel).
    #[test]
    fn matches_the_im2col_path() {
        for (case, &(n, c_in, c_out, h, w)) in [(3, 4, 5, 16, 16), (3, 3, 2, 13, 18), (5, 2, 3, 9, 7), (2, 3, 4, 1, 2), (4, 5, 3, 21, 11)].iter().enumerate() {
            let g = geometry(n, c_in, c_out, h, w);
            let x = data(g.n * g.image(), case as f64);
            let wt = data(c_out * c_in * 9, 10.0 + case as f64);
            let dy = data(g.n * g.output(), 20.0 + case as f64);
            let e = Epilogue { scale: (0..c_out).map(|c| 0.5 + c as f64).collect(), shift: (0..c_out).map(|c| 0.1 * c as f64 - 0.2).collect(), relu: true };
            let (want, want_e, want_dx) = (g.forward(&x, &wt, None), g.forward(&x, &wt, Some(&e)), g.input_grad(&dy, &wt));
            let want_dw = g.weight_grad(&x, &dy);
            let (u, ua) = (filters(&wt, c_out, c_in, false), filters(&wt, c_out, c_in, true));
            let adjoint = Geometry { c_in: c_out, c_out: c_in, ..g };
            for group in [1, 2, n] {
                let t = Tiles { group, ..Tiles::new(&g) };
                let ta = Tiles { group, ..Tiles::new(&adjoint) };
                assert!(rel(&t.convolve(&x, &u, None), &want) < 1e-12, "forward, case {case}, group {group}");
                assert!(rel(&t.convolve(&x, &u, Some(&e)), &want_e) < 1e-12, "epilogue, case {case}, group {group}");
                assert!(rel(&ta.convolve(&dy, &ua, None), &want_dx) < 1e-12, "input gradient, case {case}, group {group}");
                let (mut du, mut s) = (Vec::new(), Buffers::default());
                for (i, parallel) in (0..n.div_ceil(group)).zip([false, true].into_iter().cycle()) {
                    t.accumulate(&x, &dy, i * group..((i + 1) * group).min(n), &mut du, &mut s, parallel);
                }
                assert!(rel(&filter_grad(&du, c_out * c_in), &want_dw) < 1e-12, "weight gradient, case {case}, group {group}");
            }
            // The entry points the op calls.
            assert!(rel(&forward(&g, &x, &wt, Some(&e)), &want_e) < 1e-12, "forward entry, case {case}");
            assert!(rel(&input_grad(&g, &dy, &wt), &want_dx) < 1e-12, "input gradient entry, case {case}");
            assert!(rel(&weight_grad(&g, &x, &dy), &want_dw) < 1e-12, "weight gradient entry, case {case}");
        }
    }

    /// In f32 the transforms round more than the direct sum, but stay within a small multiple of
    /// it: measured against the f64 result at 64 channels (the trunk's narrowest), forward and
    /// weight gradient.
    #[test]
    fn f32_rounding_stays_near_the_direct_sum() {
        let g = geometry(2, 64, 64, 28, 28);
        let x = data(g.n * g.image(), 1.0);
        let wt: Vec<f64> = data(64 * 64 * 9, 2.0).iter().map(|v| v * 0.05).collect();
        let exact = g.forward(&x, &wt, None);
        let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<_>>();
        let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
        let direct = widen(g.forward(&f32s(&x), &f32s(&wt), None));
        let winograd = widen(forward(&g, &f32s(&x), &f32s(&wt), None));
        let (d, wg) = (rel(&direct, &exact), rel(&winograd, &exact));
        eprintln!("f32 forward, max error over max |y|: direct {d:.2e}, Winograd {wg:.2e}");
        assert!(wg < 5e-5 && wg < 20.0 * d.max(1e-8), "Winograd f32 forward error {wg:.2e} against direct {d:.2e}");
        // The weight gradient sums over every position of the batch.
        let dy = data(g.n * g.output(), 3.0);
        let exact = g.weight_grad(&x, &dy);
        let direct = widen(g.weight_grad(&f32s(&x), &f32s(&dy)));
        let winograd = widen(weight_grad(&g, &f32s(&x), &f32s(&dy)));
        let (d, wg) = (rel(&direct, &exact), rel(&winograd, &exact));
        eprintln!("f32 weight gradient, max error over max |∂W|: direct {d:.2e}, Winograd {wg:.2e}");
        assert!(wg < 5e-5 && wg < 20.0 * d.max(1e-8), "Winograd f32 weight gradient error {wg:.2e} against direct {d:.2e}");
    }
}
