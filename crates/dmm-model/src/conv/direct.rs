//! Direct convolution for the stem: three input channels and a 7×7 kernel, where unfolding
//! (im2col) writes 147 rows per output position and the product behind it is as thin as the
//! trunk's width (8 output channels at `mini`'s). The unfold was half of the stem's time and
//! the stem the slowest convolution against PyTorch's (2.5× at `mini`'s shapes).
//!
//! Neither pass unfolds; each keeps an 8 × 8 block of sums in eight registers:
//! - forward: `Y[co][y][x] = Σ_t W[co][t] · X[t at (y, x)]`, eight output positions by eight
//!   channels, over every tap `t = (c, i, j)`: a register of eight channels per position, each
//!   input value broadcast into all eight;
//! - weight gradient: `∂W[co][t] = Σ_(y, x) ∂Y[co][y][x] · X[t at (y, x)]`, eight channels by
//!   eight taps (consecutive kernel columns, contiguous in the input row), over every output
//!   position: a register of eight taps per channel, each `∂Y` value broadcast into all eight,
//!   with `∂Y` rearranged position-major once per image.
//!
//! The image is copied once into a zero-bordered plane per channel, wide enough that every block
//! reads inside it, so the loops need no bounds of their own. The input gradient, which the stem
//! does not need, stays on the unfolded path. Sums run in another order than the product's, so
//! results match the unfolded path to rounding; tests check both against a loop reference in
//! f64.

use rayon::prelude::*;

use super::{sum_over_groups, Epilogue, Geometry};
use crate::simd::{multiversion, Real};

/// Output channels per block: one AVX2 register of f32.
const LANES: usize = 8;

/// Output positions per forward block, and kernel columns per weight-gradient block.
const BLOCK: usize = 8;

/// Which convolutions take this path: few input channels (an image's), a kernel of at least 3×3,
/// and one or two blocks of output channels. With more channels the product behind the unfold is
/// wide enough to be faster (the stem at width 32 was as fast both ways, at width 64 the
/// unfolded path was 15% faster; docs/benchmarks.md).
pub(super) fn applies(g: &Geometry) -> bool {
    g.c_in <= 4 && g.kh * g.kw >= 9 && g.c_out.is_multiple_of(LANES) && g.c_out <= 2 * LANES
}

/// The zero-bordered copy of one image: `c_in` planes of `rows × cols`, the image at
/// `(padding, padding)`.
#[derive(Clone, Copy)]
struct Padded {
    rows: usize,
    cols: usize,
}

impl Padded {
    fn new(g: &Geometry) -> Self {
        let (p, s) = (g.padding, g.stride);
        // The forward reads whole blocks of positions (past `ow` in the last one), the weight
        // gradient whole blocks of kernel columns (past `kw` in the last one).
        let forward = g.ow.div_ceil(BLOCK) * BLOCK * s + g.kw;
        let gradient = g.ow * s + g.kw.div_ceil(BLOCK) * BLOCK;
        Self { rows: g.h + 2 * p, cols: (g.w + 2 * p).max(forward).max(gradient) }
    }

    fn plane(&self) -> usize {
        self.rows * self.cols
    }

    /// Image `x` `[c_in, h, w]` bordered with zeros.
    fn copy<T: Real>(&self, g: &Geometry, x: &[T]) -> Vec<T> {
        let mut out = vec![T::zero(); g.c_in * self.plane()];
        for (src, dst) in x.chunks(g.h * g.w).zip(out.chunks_mut(self.plane())) {
            for (row, dst) in src.chunks(g.w).zip(dst[g.padding * self.cols..].chunks_mut(self.cols)) {
                dst[g.padding..g.padding + g.w].copy_from_slice(row);
            }
        }
        out
    }

    /// Where tap `t = (c, i, j)` reads, relative to its output position's corner.
    fn taps(&self, g: &Geometry) -> Vec<usize> {
        (0..g.k()).map(|t| (t / (g.kh * g.kw)) * self.plane() + (t / g.kw % g.kh) * self.cols + t % g.kw).collect()
    }
}

multiversion! {
    /// One image's output `y` `[c_out, oh·ow]` from its bordered copy `xp` and the weight `wb`
    /// in channel blocks, `[c_out / LANES][k][LANES]`.
    fn forward_image<T: Real>(g: &Geometry, pad: Padded, offsets: &[usize], xp: &[T], wb: &[T], y: &mut [T]) {
        let (l, s, k) = (g.l(), g.stride, g.k());
        for (cb, w) in wb.chunks_exact(k * LANES).enumerate() {
            let w = w.as_chunks::<LANES>().0;
            for oy in 0..g.oh {
                for x0 in (0..g.ow).step_by(BLOCK) {
                    let corner = oy * s * pad.cols + x0 * s;
                    // The stride as a constant where it is the trunk's, so the block's reads need
                    // no bounds checks and its sums stay in registers.
                    let acc = match s {
                        1 => forward_block::<T, 1>(xp, corner, 1, w, offsets),
                        2 => forward_block::<T, 2>(xp, corner, 2, w, offsets),
                        _ => forward_block::<T, 0>(xp, corner, s, w, offsets),
                    };
                    let n = BLOCK.min(g.ow - x0);
                    for lane in 0..LANES {
                        let row = &mut y[(cb * LANES + lane) * l + oy * g.ow + x0..][..n];
                        for (d, acc) in row.iter_mut().zip(&acc) {
                            *d = acc[lane];
                        }
                    }
                }
            }
        }
    }
}

/// The `BLOCK` output positions from `corner` on, `LANES` channels each: stride `S`, or `s` when
/// `S` is 0.
#[inline(always)]
fn forward_block<T: Real, const S: usize>(xp: &[T], corner: usize, s: usize, w: &[[T; LANES]], offsets: &[usize]) -> [[T; LANES]; BLOCK] {
    let s = if S == 0 { s } else { S };
    let mut acc = [[T::zero(); LANES]; BLOCK];
    for (wv, &off) in w.iter().zip(offsets) {
        let src = &xp[corner + off..][..BLOCK * s];
        for (q, acc) in acc.iter_mut().enumerate() {
            let xv = src[q * s];
            for lane in 0..LANES {
                acc[lane] = wv[lane].fma(xv, acc[lane]);
            }
        }
    }
    acc
}

multiversion! {
    /// Adds one image's weight gradient into `dw` `[c_out, k]`, from its bordered copy `xp` and
    /// its `∂Y` in channel blocks, position-major: `[c_out / LANES][oh·ow][LANES]`.
    fn weight_grad_image<T: Real>(g: &Geometry, pad: Padded, xp: &[T], dyt: &[T], dw: &mut [T]) {
        let (l, s, k) = (g.l(), g.stride, g.k());
        let span = g.ow * s + BLOCK;
        for (cb, dy) in dyt.chunks_exact(l * LANES).enumerate() {
            let dy = dy.as_chunks::<LANES>().0;
            for (c, i) in (0..g.c_in).flat_map(|c| (0..g.kh).map(move |i| (c, i))) {
                for j0 in (0..g.kw).step_by(BLOCK) {
                    // `acc[lane][jj]`: channel `lane`, kernel column `j0 + jj`.
                    let mut acc = [[T::zero(); BLOCK]; LANES];
                    for (oy, dy) in dy.chunks_exact(g.ow).enumerate() {
                        let row = &xp[c * pad.plane() + (oy * s + i) * pad.cols + j0..][..span];
                        match s {
                            1 => gradient_row::<T, 1>(&mut acc, row, 1, dy),
                            2 => gradient_row::<T, 2>(&mut acc, row, 2, dy),
                            _ => gradient_row::<T, 0>(&mut acc, row, s, dy),
                        }
                    }
                    let taps = BLOCK.min(g.kw - j0);
                    for (lane, acc) in acc.iter().enumerate() {
                        let dst = &mut dw[(cb * LANES + lane) * k + (c * g.kh + i) * g.kw + j0..][..taps];
                        for (d, &v) in dst.iter_mut().zip(acc) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds one output row's terms into `acc[lane][jj]`: `∂Y` at each position `x` (`dy[x]`, its
/// `LANES` channels) times the `BLOCK` inputs from `row[x·s]` on; stride `S`, or `s` when `S` is 0.
#[inline(always)]
fn gradient_row<T: Real, const S: usize>(acc: &mut [[T; BLOCK]; LANES], row: &[T], s: usize, dy: &[[T; LANES]]) {
    let s = if S == 0 { s } else { S };
    for (x, dv) in dy.iter().enumerate() {
        let src = &row[x * s..][..BLOCK];
        for (acc, &d) in acc.iter_mut().zip(dv) {
            for jj in 0..BLOCK {
                acc[jj] = d.fma(src[jj], acc[jj]);
            }
        }
    }
}

/// `w` `[rows, cols]` (a weight `[c_out, k]`, or one image's `∂Y` `[c_out, oh·ow]`) rearranged
/// into blocks of `LANES` rows, `[rows / LANES][cols][LANES]`.
fn blocked<T: Real>(w: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(rows * cols);
    for block in w.chunks_exact(LANES * cols) {
        for t in 0..cols {
            out.extend((0..LANES).map(|lane| block[lane * cols + t]));
        }
    }
    out
}

/// The forward of a convolution [`applies`] to: image by image, in parallel when the batch fills
/// the threads, the epilogue applied to each image.
pub(super) fn forward<T: Real>(g: &Geometry, x: &[T], wt: &[T], epilogue: Option<&Epilogue>) -> Vec<T> {
    let (pad, wb) = (Padded::new(g), blocked(wt, g.c_out, g.k()));
    let offsets = pad.taps(g);
    let image = |(b, y): (usize, &mut [T])| {
        let xp = pad.copy(g, &x[b * g.image()..(b + 1) * g.image()]);
        forward_image(g, pad, &offsets, &xp, &wb, y);
        if let Some(e) = epilogue {
            e.apply(y, g.l());
        }
    };
    let mut out = vec![T::zero(); g.n * g.output()];
    if rayon::current_num_threads() > 1 && g.n > 1 {
        out.par_chunks_mut(g.output()).enumerate().for_each(image);
    } else {
        out.chunks_mut(g.output()).enumerate().for_each(image);
    }
    out
}

/// The weight gradient of a convolution [`applies`] to: one partial sum per thread, image by
/// image.
pub(super) fn weight_grad<T: Real>(g: &Geometry, x: &[T], dy: &[T]) -> Vec<T> {
    let pad = Padded::new(g);
    let size = g.c_out * g.k();
    let add = |dw: &mut Vec<T>, images: std::ops::Range<usize>, _: &mut (), _| {
        if dw.is_empty() {
            dw.resize(size, T::zero());
        }
        for b in images {
            let xp = pad.copy(g, &x[b * g.image()..(b + 1) * g.image()]);
            let dyt = blocked(&dy[b * g.output()..(b + 1) * g.output()], g.c_out, g.l());
            weight_grad_image(g, pad, &xp, &dyt, dw);
        }
    };
    let dw = sum_over_groups(g.n, 1, add);
    if dw.is_empty() { vec![T::zero(); size] } else { dw }
}
