//! Convolution as one graph node whose forward and both gradients are matrix products, image by
//! image: `Y_b = W · cols(x_b)`, `∂W = Σ_b ∂Y_b · cols(x_b)ᵀ`, `∂x_b = fold(Wᵀ · ∂Y_b)`, where `cols`
//! unfolds one image into `[c_in·kh·kw, oh·ow]` (a 1×1, stride-1 convolution reads the image
//! itself) and `fold` is its adjoint. The products go straight to the `gemm` crate candle itself
//! uses, writing NCHW in place, so there are no layout copies and no graph nodes in between: each
//! node costs candle's backward a zero-filled buffer and an add, and the unfolded columns, 9× the
//! input for a 3×3 kernel, are rebuilt in the weight gradient instead of kept (PyTorch's memory
//! habit). On small maps several images share a product, their columns side by side
//! (`Geometry::group_size`); a batch at least as large as the thread count runs one image (or
//! group) per thread, smaller ones let the product use the threads.
//!
//! The 3×3, stride-1 convolutions on maps of at least a dozen 4×4 tiles run their forward and
//! both gradients through Winograd F(4×4, 3×3) instead ([`winograd`]: four times fewer
//! multiply-adds). The stem of a narrow trunk (three input channels, 8 or 16 output channels) runs
//! its forward and weight gradient through direct loops ([`direct`]): no unfolded columns.
//!
//! candle's own conv2d backward runs the input gradient through a direct `conv_transpose2d` loop
//! several times slower than the forward, and gets `output_padding` wrong for strided convs whose
//! axes leave different remainders. Numbers equal candle's conv2d (tested against it and a loop
//! reference in f64, and through the trunk against the PyTorch fixtures); layout rules are
//! PyTorch's (no ceil mode, zero padding).

use std::any::Any;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::gemm::{all_threads, binary_kernel, expect_dims, matmul, matmul_uninit, written_vec, Mat};
use crate::simd::{multiversion, Real};

mod direct;
mod winograd;
#[cfg(feature = "cuda")]
use {
    crate::cuda::{self, float_dispatch},
    candle_core::backend::BackendStorage,
    candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView},
    candle_core::{CudaDevice, CudaStorage},
};

/// `xs` `[n, c_in, h, w]` convolved with `weight` `[c_out, c_in, kh, kw]`, square `stride` and
/// `padding`, no bias, differentiable in both arguments.
///
/// # Shapes
/// `[n, c_in, h, w] → [n, c_out, ⌊(h + 2p − kh)/s⌋ + 1, ⌊(w + 2p − kw)/s⌋ + 1]`
pub fn conv2d(xs: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let g = Geometry::new(xs, weight, stride, padding)?;
    xs.contiguous()?.apply_op2(&weight.contiguous()?, Conv2d { g, epilogue: None })
}

/// Eval mode's convolution + batch norm (+ ReLU): `y = scale·conv(x, w) + shift` per output
/// channel, clamped at 0 with `relu`, applied to each image's product while it is still in
/// cache: the batch norm folded into the convolution. No backward (training normalizes with
/// batch statistics).
pub fn conv2d_affine(xs: &Tensor, weight: &Tensor, stride: usize, padding: usize, scale: Vec<f64>, shift: Vec<f64>, relu: bool) -> candle_core::Result<Tensor> {
    let g = Geometry::new(xs, weight, stride, padding)?;
    let epilogue = Epilogue::new(scale, shift, relu, g.c_out, "conv2d_affine")?;
    xs.contiguous()?.apply_op2(&weight.contiguous()?, Conv2d { g, epilogue: Some(epilogue) })
}

/// Eval mode's last convolution of a bottleneck block with the block's end fused in:
/// `relu(scale·conv(x, w) + shift + residual)` per output channel, applied to each image's
/// product while it is still in cache, instead of a batch-norm pass and an add + ReLU pass over
/// the whole output. CPU only, no backward (the trunk uses it in eval mode on the CPU).
///
/// # Shapes
/// `residual` has the output's shape.
pub fn conv2d_affine_add_relu(xs: &Tensor, weight: &Tensor, stride: usize, padding: usize, scale: Vec<f64>, shift: Vec<f64>, residual: &Tensor) -> candle_core::Result<Tensor> {
    let g = Geometry::new(xs, weight, stride, padding)?;
    let epilogue = Epilogue::new(scale, shift, true, g.c_out, "conv2d_affine_add_relu")?;
    if residual.dims() != g.output_dims() {
        candle_core::bail!("conv2d_affine_add_relu: residual {:?} is not the output's {:?}", residual.dims(), g.output_dims())
    }
    let op = Conv2dResidual { g, epilogue };
    xs.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, &residual.contiguous()?, &op)
}

/// The Winograd-transformed filters of a 3×3 `weight` `[c_out, c_in, 3, 3]`, `[c_out, 36, c_in]`,
/// for [`conv2d_affine_winograd`]: transformed once for many eval-mode calls instead of on every
/// call. `None` off the CPU or for other kernel sizes.
pub fn winograd_filters(weight: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (_, _, kh, kw) = weight.dims4()?;
    if !weight.device().is_cpu() || (kh, kw) != (3, 3) {
        return Ok(None);
    }
    Ok(Some(weight.contiguous()?.apply_op1_no_bwd(&WinogradFilters)?))
}

/// `weight → transformed filters` of [`winograd_filters`].
struct WinogradFilters;

impl candle_core::CustomOp1 for WinogradFilters {
    fn name(&self) -> &'static str {
        "winograd-filters"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use crate::pool::contiguous;
        let (c_out, c_in, _, _) = layout.shape().dims4()?;
        let u = match storage {
            CpuStorage::F32(w) => CpuStorage::F32(winograd::filters(contiguous(w, layout, self.name())?, c_out, c_in, false)),
            CpuStorage::F64(w) => CpuStorage::F64(winograd::filters(contiguous(w, layout, self.name())?, c_out, c_in, false)),
            s => candle_core::bail!("{}: unsupported dtype {:?}", self.name(), candle_core::backend::BackendStorage::dtype(s)),
        };
        Ok((u, Shape::from((c_out, winograd::POINTS, c_in))))
    }
}

/// [`conv2d_affine`] of a 3×3, stride-1, padding-1 convolution given also its
/// [`winograd_filters`]: through Winograd with those filters wherever that saves work (down to
/// the 7×7 maps of the trunk's last stage, below the threshold that rebuilding the filters on
/// every call sets), else through the weight. No backward.
pub fn conv2d_affine_winograd(xs: &Tensor, weight: &Tensor, filters: &Tensor, scale: Vec<f64>, shift: Vec<f64>, relu: bool) -> candle_core::Result<Tensor> {
    let g = Geometry::new(xs, weight, 1, 1)?;
    if !winograd::applies_prepared(&g) {
        return conv2d_affine(xs, weight, 1, 1, scale, shift, relu);
    }
    if filters.dims() != [g.c_out, winograd::POINTS, g.c_in] {
        candle_core::bail!("conv2d_affine_winograd: filters {:?} are not those of weight {:?}", filters.dims(), weight.dims())
    }
    let op = Conv2dWinograd { g, epilogue: Epilogue::new(scale, shift, relu, g.c_out, "conv2d_affine_winograd")? };
    xs.contiguous()?.apply_op2_no_bwd(&filters.contiguous()?, &op)
}

/// The per-channel map [`conv2d_affine`] applies to the product.
struct Epilogue {
    scale: Vec<f64>,
    shift: Vec<f64>,
    relu: bool,
}

impl Epilogue {
    /// The map for `c_out` channels, or an error naming `op` when the lengths do not fit.
    fn new(scale: Vec<f64>, shift: Vec<f64>, relu: bool, c_out: usize, op: &str) -> candle_core::Result<Self> {
        if scale.len() != c_out || shift.len() != c_out {
            candle_core::bail!("{op}: {} scales and {} shifts for {c_out} channels", scale.len(), shift.len())
        }
        Ok(Self { scale, shift, relu })
    }

    /// Applies the map to one image's output `[c_out, l]`.
    fn apply<T: WithDType>(&self, y: &mut [T], l: usize) {
        for ((row, &a), &b) in y.chunks_mut(l).zip(&self.scale).zip(&self.shift) {
            affine_in_place(row, T::from_f64(a), T::from_f64(b), self.relu);
        }
    }

    /// The same with `residual` (the image's `[c_out, l]`) added before the ReLU.
    fn apply_residual<T: WithDType>(&self, y: &mut [T], l: usize, residual: &[T]) {
        for (((row, r), &a), &b) in y.chunks_mut(l).zip(residual.chunks(l)).zip(&self.scale).zip(&self.shift) {
            affine_add_in_place(row, r, T::from_f64(a), T::from_f64(b), self.relu);
        }
    }
}

multiversion! {
    /// `y ← y·a + b + r`, clamped at 0 with `relu`.
    fn affine_add_in_place<T: WithDType>(y: &mut [T], r: &[T], a: T, b: T, relu: bool) {
        let zero = T::zero();
        for (v, &r) in y.iter_mut().zip(r) {
            let t = *v * a + b + r;
            *v = if relu && t < zero { zero } else { t };
        }
    }
}

multiversion! {
    /// `y ← y·a + b`, clamped at 0 with `relu`.
    fn affine_in_place<T: WithDType>(y: &mut [T], a: T, b: T, relu: bool) {
        let zero = T::zero();
        if relu {
            for v in y {
                let t = *v * a + b;
                *v = if t < zero { zero } else { t };
            }
        } else {
            for v in y {
                *v = *v * a + b;
            }
        }
    }
}

multiversion! {
    /// `dst += src`, element by element.
    fn add_into<T: WithDType>(dst: &mut [T], src: &[T]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d += v;
        }
    }
}

multiversion! {
    /// `dst[i] = src[i·s]`. Stride 2 (every strided convolution of the trunk) reads pairs, which
    /// the compiler vectorizes; `step_by` with a stride known only at run time it does not.
    fn gather_strided<T: WithDType>(dst: &mut [T], src: &[T], s: usize) {
        if let (2, Some((last, init))) = (s, dst.split_last_mut()) {
            for (d, pair) in init.iter_mut().zip(src.chunks_exact(2)) {
                *d = pair[0];
            }
            // The last element's pair may end past `src`.
            *last = src[2 * init.len()];
            return;
        }
        for (d, &v) in dst.iter_mut().zip(src.iter().step_by(s)) {
            *d = v;
        }
    }
}

multiversion! {
    /// `dst[i·s] += src[i]`, stride 2 by pairs as in [`gather_strided`].
    fn scatter_add_strided<T: WithDType>(dst: &mut [T], src: &[T], s: usize) {
        if let (2, Some((last, init))) = (s, src.split_last()) {
            for (pair, &v) in dst.chunks_exact_mut(2).zip(init) {
                pair[0] += v;
            }
            dst[2 * init.len()] += *last;
            return;
        }
        for (d, &v) in dst.iter_mut().step_by(s).zip(src) {
            *d += v;
        }
    }
}

/// Every size of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
    oh: usize,
    ow: usize,
    /// Images per product in the gradients ([`Self::group_size`]).
    group: usize,
    /// Images per product in the forward.
    forward_group: usize,
    /// Forward and both gradients through Winograd F(4×4, 3×3): set where [`winograd::applies`]
    /// (3×3, stride 1, padding 1, maps of enough tiles).
    winograd: bool,
    /// Forward and weight gradient through the direct loops of [`direct`]: set where
    /// [`direct::applies`] (the stem) and Winograd does not.
    direct: bool,
}

/// Where one row of the unfolded columns reads from: input channel `c`, kernel position `(i, j)`,
/// and the output columns `x0..x1` whose input column lies inside the image.
#[derive(Debug, Clone, Copy)]
struct Tap {
    c: usize,
    i: usize,
    j: usize,
    x0: usize,
    x1: usize,
}

impl Geometry {
    fn new(xs: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> candle_core::Result<Self> {
        let (n, c_in, h, w) = xs.dims4()?;
        let (c_out, wc_in, kh, kw) = weight.dims4()?;
        if wc_in != c_in || stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
            candle_core::bail!("conv2d: input {:?}, weight {:?}, stride {stride}, padding {padding} do not fit", xs.dims(), weight.dims())
        }
        let (oh, ow) = ((h + 2 * padding - kh) / stride + 1, (w + 2 * padding - kw) / stride + 1);
        let g = Self { n, c_in, h, w, c_out, kh, kw, stride, padding, oh, ow, group: 1, forward_group: 1, winograd: false, direct: false };
        let threads = rayon::current_num_threads();
        Ok(Self {
            group: g.group_size(threads, GROUP_COLUMNS),
            forward_group: g.group_size(threads, FORWARD_GROUP_COLUMNS),
            winograd: winograd::applies(&g),
            direct: direct::applies(&g) && !winograd::applies(&g),
            ..g
        })
    }

    /// Rows of the unfolded columns, `c_in·kh·kw`.
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Output positions per image, `oh·ow`.
    fn l(&self) -> usize {
        self.oh * self.ow
    }

    fn image(&self) -> usize {
        self.c_in * self.h * self.w
    }

    fn output(&self) -> usize {
        self.c_out * self.l()
    }

    /// 1×1, stride 1, no padding: the image is its own column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// The input row read by output row `y` at kernel row `i`, if inside the image.
    fn src_row(&self, y: usize, i: usize) -> Option<usize> {
        let v = (y * self.stride + i) as isize - self.padding as isize;
        (v >= 0 && (v as usize) < self.h).then_some(v as usize)
    }

    /// The output columns `x0..x1` whose input column `x·s − p + j` lies inside the image.
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let x0 = if j >= p { 0 } else { (p - j).div_ceil(s) };
        let x1 = if self.w + p <= j { 0 } else { (self.w + p - j).div_ceil(s) };
        let x1 = x1.min(self.ow);
        (x0.min(x1), x1)
    }

    fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }

    fn weight_dims(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.kh, self.kw]
    }

    fn output_dims(&self) -> [usize; 4] {
        [self.n, self.c_out, self.oh, self.ow]
    }

    /// Unfolds one image `[c_in, h, w]` into `cols` `[c_in·kh·kw, oh·ow]`: row `(c, i, j)`, column
    /// `(y, x)` holds the input at `(c, y·s − p + i, x·s − p + j)`, zero outside. (The ops unfold
    /// row by row, several images side by side; this whole-image form is the tests' reference.)
    #[cfg(test)]
    fn unfold<T: WithDType>(&self, x: &[T], cols: &mut Vec<T>) {
        let l = self.l();
        cols.resize(self.k() * l, T::zero());
        for (tap, row) in self.taps().iter().zip(cols.chunks_mut(l)) {
            self.unfold_row(x, tap, row);
        }
    }

    /// Where each row of the columns reads, in order: worked out once per product, not once per
    /// image (on small maps the divisions cost as much as the copy).
    fn taps(&self) -> Vec<Tap> {
        (0..self.k())
            .map(|r| {
                let (c, i, j) = (r / (self.kh * self.kw), r / self.kw % self.kh, r % self.kw);
                let (x0, x1) = self.valid_cols(j);
                Tap { c, i, j, x0, x1 }
            })
            .collect()
    }

    /// Row `tap` of one image's columns into `dst` (`oh·ow` long).
    fn unfold_row<T: WithDType>(&self, x: &[T], tap: &Tap, dst: &mut [T]) {
        let &Tap { c, i, j, x0, x1 } = tap;
        let (ow, s) = (self.ow, self.stride);
        let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
        if s == 1 && ow == self.w {
            return self.unfold_row_shifted(plane, tap, dst);
        }
        for (y, dst) in dst.chunks_mut(ow).enumerate() {
            let Some(sy) = self.src_row(y, i) else {
                dst.fill(T::zero());
                continue;
            };
            dst[..x0].fill(T::zero());
            dst[x1..].fill(T::zero());
            let src = &plane[sy * self.w..(sy + 1) * self.w];
            if s == 1 {
                dst[x0..x1].copy_from_slice(&src[x0 + j - self.padding..x1 + j - self.padding]);
            } else if x0 < x1 {
                gather_strided(&mut dst[x0..x1], &src[x0 * s + j - self.padding..], s);
            }
        }
    }

    /// [`Self::unfold_row`] for a stride-1 convolution whose output is as wide as its input (3×3
    /// with padding 1, and 1×1): output position `k = y·w + x` reads input position `k + off`,
    /// one shift for the whole plane. So the valid rows are one copy instead of a copy per output
    /// row (on 6×5 maps each of those moved 5 values), and afterwards the columns that fell outside
    /// the image, whose copied values came from the neighbouring rows, are zeroed.
    fn unfold_row_shifted<T: WithDType>(&self, plane: &[T], &Tap { i, j, x0, x1, .. }: &Tap, dst: &mut [T]) {
        let w = self.w as isize;
        let p = self.padding as isize;
        // Output rows whose input row `y + i − p` is inside the image.
        let y0 = (p - i as isize).clamp(0, self.oh as isize);
        let y1 = (self.h as isize + p - i as isize).clamp(y0, self.oh as isize);
        let (lo, hi) = (y0 * w, y1 * w);
        let off = (i as isize - p) * w + (j as isize - p);
        dst[..lo as usize].fill(T::zero());
        dst[hi as usize..].fill(T::zero());
        // Inside `lo..hi`, positions whose source lies before the plane or after it are in the
        // outside columns, zeroed below.
        let (a, b) = (lo.max(-off), hi.min(plane.len() as isize - off));
        if a < b {
            dst[a as usize..b as usize].copy_from_slice(&plane[(a + off) as usize..(b + off) as usize]);
        }
        for row in dst[lo as usize..hi as usize].chunks_mut(self.ow) {
            row[..x0].fill(T::zero());
            row[x1..].fill(T::zero());
        }
    }

    /// The adjoint of [`Self::unfold`]: adds every column entry into the input position it was
    /// read from, into `x` `[c_in, h, w]` (zero on entry).
    #[cfg(test)]
    fn fold<T: WithDType>(&self, cols: &[T], x: &mut [T]) {
        for (tap, row) in self.taps().iter().zip(cols.chunks(self.l())) {
            self.fold_row(row, tap, x);
        }
    }

    /// The adjoint of [`Self::unfold_row`]: adds row `tap` of one image's columns into `x`.
    fn fold_row<T: WithDType>(&self, row: &[T], &Tap { c, i, j, x0, x1 }: &Tap, x: &mut [T]) {
        let (ow, s) = (self.ow, self.stride);
        let plane = &mut x[c * self.h * self.w..(c + 1) * self.h * self.w];
        for (y, src) in row.chunks(ow).enumerate() {
            let Some(sy) = self.src_row(y, i) else { continue };
            let dst = &mut plane[sy * self.w..(sy + 1) * self.w];
            if s == 1 {
                add_into(&mut dst[x0 + j - self.padding..x1 + j - self.padding], &src[x0..x1]);
            } else if x0 < x1 {
                scatter_add_strided(&mut dst[x0 * s + j - self.padding..], &src[x0..x1], s);
            }
        }
    }

    /// How many images share one product, their columns side by side (`[k, g·l]`), with
    /// `threads` workers, aiming for `columns` columns. One image's product is `c_out × l` by
    /// `k`; where `l` is small (at 112×112 input, layer 4's 4×4 maps make `l = 16`) it is too
    /// thin for the gemm kernels, and the weight gradient would add `n` rank-`l` updates into a
    /// buffer of millions of weights.
    /// Images are grouped one thread's share at a time, so every thread keeps its own product,
    /// or, when even that is too thin, the whole batch goes into one product that uses every
    /// thread.
    fn group_size(&self, threads: usize, columns: usize) -> usize {
        let per_thread = self.n.div_ceil(threads.max(1));
        match columns.div_ceil(self.l()) {
            0 | 1 => 1,
            g if g <= per_thread => per_thread,
            _ => self.n,
        }
    }

    /// Runs `f(images, out_images, scratch, parallelism)` for every group of `g` images, `out`
    /// cut in `chunk`s per image: one group per thread when the groups fill the threads, else one
    /// at a time with a parallel gemm.
    fn per_group<U: Send, S: Default, F>(&self, out: &mut [U], chunk: usize, g: usize, f: F)
    where
        F: Fn(Range<usize>, &mut [U], &mut S, Parallelism) + Sync,
    {
        let images = |i: usize, o: &[U]| i * g..i * g + o.len() / chunk;
        let threads = rayon::current_num_threads();
        if threads > 1 && self.n.div_ceil(g) >= threads {
            out.par_chunks_mut(g * chunk).enumerate().for_each_init(S::default, |s, (i, o)| f(images(i, o), o, s, Parallelism::None));
        } else {
            let (par, mut s) = (all_threads(), S::default());
            out.chunks_mut(g * chunk).enumerate().for_each(|(i, o)| f(images(i, o), o, &mut s, par));
        }
    }

    /// The columns of `images` side by side, `[k, g·l]`: the image itself when it is alone and
    /// pointwise, else unfolded into `buf`.
    fn cols<'a, T: WithDType>(&self, x: &'a [T], images: Range<usize>, buf: &'a mut Vec<T>) -> &'a [T] {
        let (l, gl, image) = (self.l(), images.len() * self.l(), self.image());
        if self.pointwise() && images.len() == 1 {
            return &x[images.start * image..images.end * image];
        }
        buf.resize(self.k() * gl, T::zero());
        for (tap, row) in self.taps().iter().zip(buf.chunks_mut(gl)) {
            for (b, dst) in images.clone().zip(row.chunks_mut(l)) {
                self.unfold_row(&x[b * image..(b + 1) * image], tap, dst);
            }
        }
        buf
    }

    /// The output read as an input to a 1×1 convolution (`c_out` channels of `oh × ow`): its
    /// columns are `∂Y` side by side, `[c_out, g·l]`, to match [`Self::cols`] in the gradients.
    fn output_as_image(&self) -> Geometry {
        Geometry { c_in: self.c_out, h: self.oh, w: self.ow, kh: 1, kw: 1, stride: 1, padding: 0, ..*self }
    }

    /// Forward: `Y_b = W · cols(x_b)`, written into the NCHW output, then the epilogue if any.
    fn forward<T: Real>(&self, x: &[T], wt: &[T], epilogue: Option<&Epilogue>) -> Vec<T> {
        self.forward_residual(x, wt, epilogue, None)
    }

    /// [`Self::forward`], with `residual` `[n, c_out, oh, ow]` added by the epilogue before its
    /// ReLU.
    fn forward_residual<T: Real>(&self, x: &[T], wt: &[T], epilogue: Option<&Epilogue>, residual: Option<&[T]>) -> Vec<T> {
        if self.winograd && residual.is_none() {
            return winograd::forward(self, x, wt, epilogue);
        }
        if self.direct && residual.is_none() {
            return direct::forward(self, x, wt, epilogue);
        }
        let (k, l, size) = (self.k(), self.l(), self.output());
        let finish = |y: &mut [T], b: usize, l: usize| match (epilogue, residual) {
            (Some(e), Some(r)) => e.apply_residual(y, l, &r[b * size..(b + 1) * size]),
            (Some(e), None) => e.apply(y, l),
            (None, _) => {}
        };
        let fill = |out: &mut [MaybeUninit<T>]| {
            self.per_group(out, self.output(), self.forward_group, |images, y, s: &mut Scratch<T>, par| {
                let (alone, gl) = (images.len() == 1, images.len() * l);
                let first = images.start;
                let cols = self.cols(x, images, &mut s.cols);
                if alone {
                    let y = matmul_uninit(y, Mat::rows(wt, self.c_out, k), Mat::rows(cols, k, l), par);
                    finish(y, first, l);
                    return;
                }
                // Side by side `[c_out, g·l]`, then back to NCHW, then the epilogue image by image.
                s.side.resize(self.c_out * gl, T::zero());
                matmul(&mut s.side, Mat::rows(wt, self.c_out, k), Mat::rows(cols, k, gl), false, par);
                for (i, image) in y.chunks_mut(self.output()).enumerate() {
                    for (c, dst) in image.chunks_mut(l).enumerate() {
                        for (d, &v) in dst.iter_mut().zip(&s.side[c * gl + i * l..c * gl + (i + 1) * l]) {
                            d.write(v);
                        }
                    }
                    // SAFETY: every element of the image was written just above.
                    finish(unsafe { &mut *(image as *mut [MaybeUninit<T>] as *mut [T]) }, first + i, l);
                }
            })
        };
        // SAFETY: per_group hands each group's chunk to one product, which writes all of it
        // (directly, or side by side and then copied element by element).
        unsafe { written_vec(self.n * self.output(), fill) }
    }

    /// Input gradient: `∂x_b = fold(Wᵀ · ∂Y_b)`.
    fn input_grad<T: WithDType>(&self, dy: &[T], wt: &[T]) -> Vec<T> {
        if self.winograd {
            return winograd::input_grad(self, dy, wt);
        }
        let (k, l) = (self.k(), self.l());
        if self.pointwise() && self.group == 1 {
            let fill = |out: &mut [MaybeUninit<T>]| {
                self.per_group(out, self.image(), 1, |images, gx, _: &mut Scratch<T>, par| {
                    let dy = Mat::rows(&dy[images.start * self.output()..images.end * self.output()], self.c_out, l);
                    matmul_uninit(gx, Mat::rows(wt, self.c_out, k).t(), dy, par);
                })
            };
            // SAFETY: per_group hands each image's chunk to one product, which writes all of it.
            return unsafe { written_vec(self.n * self.image(), fill) };
        }
        let mut out = vec![T::zero(); self.n * self.image()];
        let taps = self.taps();
        self.per_group(&mut out, self.image(), self.group, |images, gx, s: &mut Scratch<T>, par| {
            let gl = images.len() * l;
            let dy = self.output_as_image().cols(dy, images, &mut s.side);
            s.cols.resize(k * gl, T::zero());
            matmul(&mut s.cols, Mat::rows(wt, self.c_out, k).t(), Mat::rows(dy, self.c_out, gl), false, par);
            for (i, gx) in gx.chunks_mut(self.image()).enumerate() {
                for (tap, row) in taps.iter().zip(s.cols.chunks(gl)) {
                    self.fold_row(&row[i * l..(i + 1) * l], tap, gx);
                }
            }
        });
        out
    }

    /// Weight gradient: `∂W = Σ_b ∂Y_b · cols(x_b)ᵀ`, one partial sum per thread.
    fn weight_grad<T: Real>(&self, x: &[T], dy: &[T]) -> Vec<T> {
        if self.winograd {
            return winograd::weight_grad(self, x, dy);
        }
        if self.direct {
            return direct::weight_grad(self, x, dy);
        }
        let (k, size, g) = (self.k(), self.c_out * self.k(), self.group);
        let add = |gw: &mut Vec<T>, images: Range<usize>, s: &mut Scratch<T>, par| {
            let gl = images.len() * self.l();
            let cols = self.cols(x, images.clone(), &mut s.cols);
            let dy = self.output_as_image().cols(dy, images, &mut s.side);
            let (dy, cols) = (Mat::rows(dy, self.c_out, gl), Mat::rows(cols, k, gl).t());
            if gw.is_empty() {
                // The first product writes every element: no zero fill of millions of weights.
                // SAFETY: matmul_uninit writes all `size` elements it is given.
                *gw = unsafe { written_vec(size, |out| _ = matmul_uninit(out, dy, cols, par)) };
            } else {
                matmul(gw, dy, cols, true, par);
            }
        };
        let gw = sum_over_groups(self.n, g, add);
        if gw.is_empty() { vec![T::zero(); size] } else { gw }
    }
}

/// `Σ` over the groups of `g` images of a batch of `n` of what `add(partial, images, scratch,
/// parallelism)` adds into a partial sum: one partial per thread when the groups fill the threads
/// (each product on one thread), else one group after another with the threads inside the
/// products. A partial starts empty, and `add` writes it on its first call rather than adding to
/// zeros; the result is empty for an empty batch.
///
/// Thread `t` sums the `t`-th run of consecutive groups and the partials are added in thread
/// order, so the rounding, and with it a whole training run, is the same from one run to the next
/// on the same number of threads. (rayon's `fold`/`reduce` paired the groups as work-stealing
/// happened to split them: two runs of one seed parted after ten steps.)
fn sum_over_groups<T: WithDType, S: Default + Send, F>(n: usize, g: usize, add: F) -> Vec<T>
where
    F: Fn(&mut Vec<T>, Range<usize>, &mut S, Parallelism) + Sync,
{
    let groups = n.div_ceil(g);
    let images = |i: usize| i * g..((i + 1) * g).min(n);
    let threads = rayon::current_num_threads();
    if threads > 1 && groups >= threads {
        let per = groups.div_ceil(threads);
        let partials: Vec<Vec<T>> = (0..threads)
            .into_par_iter()
            .map(|t| {
                let (mut sum, mut s) = (Vec::new(), S::default());
                (t * per..((t + 1) * per).min(groups)).for_each(|i| add(&mut sum, images(i), &mut s, Parallelism::None));
                sum
            })
            .collect();
        partials.into_iter().fold(Vec::new(), |a, b| match (a.is_empty(), b.is_empty()) {
            (true, _) => b,
            (_, true) => a,
            _ => {
                let mut a = a;
                add_into(&mut a, &b);
                a
            }
        })
    } else {
        let (par, mut sum, mut s) = (all_threads(), Vec::new(), S::default());
        (0..groups).for_each(|i| add(&mut sum, images(i), &mut s, par));
        sum
    }
}

/// Columns per product the image groups of the gradients aim for (see
/// [`Geometry::group_size`]): below this, images share products. Measured on the training step
/// at 112×112 (2 threads, interleaved runs): 1 (no groups) 1.48 s, 64 and 128 1.25–1.31 s, 256
/// (groups at 14×14 too) 1.55 s.
const GROUP_COLUMNS: usize = 128;

/// The same for the forward, which gains less: at 224×224, grouping layer 4's 7×7 maps made the
/// eval forward 0.67 s against 0.63 s without (interleaved runs), so only maps under 32
/// positions (4×4 at 112×112) are grouped.
const FORWARD_GROUP_COLUMNS: usize = 32;

/// One thread's reusable buffers: unfolded columns, and a product or `∂Y` side by side. Every
/// use writes the part it reads, so the buffers outlive the call: a new `Scratch` takes the
/// thread's spare one and a dropped one becomes the spare. A convolution then neither allocates
/// its scratch again nor zero-fills it (`resize` writes only what grows): memset under the
/// convolutions was 2.6% of a `mini` run's profile, most of it this fill.
struct Scratch<T: 'static> {
    cols: Vec<T>,
    side: Vec<T>,
}

thread_local! {
    /// The spare [`Scratch`] buffers of this thread, one pair per element type (more only while
    /// a thread holds two, e.g. stealing work inside a group).
    static SPARE: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

impl<T: 'static> Default for Scratch<T> {
    fn default() -> Self {
        let spare = SPARE.with_borrow_mut(|spare| {
            let i = spare.iter().position(|b| b.is::<(Vec<T>, Vec<T>)>())?;
            spare.swap_remove(i).downcast::<(Vec<T>, Vec<T>)>().ok()
        });
        let (cols, side) = spare.map_or_else(Default::default, |pair| *pair);
        Self { cols, side }
    }
}

impl<T: 'static> Drop for Scratch<T> {
    fn drop(&mut self) {
        let pair = (std::mem::take(&mut self.cols), std::mem::take(&mut self.side));
        // A thread that is exiting has no spares left to keep them in; they are freed.
        let _ = SPARE.try_with(|spare| spare.borrow_mut().push(Box::new(pair)));
    }
}

/// The same products on the GPU, for the whole batch at once: the batch's columns are unfolded
/// in one kernel and multiplied in one cuBLAS call. The forward and the input gradient use a
/// strided batch of per-image products; the weight gradient lays the batch side by side
/// (`∂W = [∂Y_0 … ∂Y_n−1]·[cols_0 … cols_n−1]ᵀ`) so that one product sums the images.
#[cfg(feature = "cuda")]
impl Geometry {
    /// The kernel's geometry arguments after `total`.
    fn cuda_args(&self) -> candle_core::Result<[i32; 9]> {
        let v = [self.c_in, self.h, self.w, self.kh, self.kw, self.stride, self.padding, self.oh, self.ow];
        let mut out = [0; 9];
        for (o, v) in out.iter_mut().zip(v) {
            *o = cuda::int(v)?;
        }
        Ok(out)
    }

    /// Unfolds `x` with this geometry: image `b`, row `r` of its columns at
    /// `b·img_stride + r·row_stride`.
    fn cuda_unfold<T: cuda::Float>(&self, dev: &CudaDevice, x: &CudaView<T>, img_stride: usize, row_stride: usize) -> candle_core::Result<CudaSlice<T>> {
        let total = self.n * self.k() * self.l();
        let mut cols = cuda::uninit::<T>(dev, total)?;
        let [c_in, h, w, kh, kw, s, p, oh, ow] = self.cuda_args()?;
        cuda::launch!(dev, T, "im2col", cuda::grid(total); x, &mut cols; total, c_in, h, w, kh, kw, s, p, oh, ow, img_stride, row_stride);
        Ok(cols)
    }

    /// The batch's columns `[n, k, l]`, `None` when pointwise (the input is its own columns).
    fn cuda_cols<T: cuda::Float>(&self, dev: &CudaDevice, x: &CudaView<T>) -> candle_core::Result<Option<CudaSlice<T>>> {
        if self.pointwise() {
            return Ok(None);
        }
        Ok(Some(self.cuda_unfold(dev, x, self.k() * self.l(), self.l())?))
    }

    fn cuda_forward<T: cuda::Float>(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, epilogue: Option<&Epilogue>) -> candle_core::Result<CudaStorage> {
        let dev = &s1.device;
        let (x, w) = (cuda::view::<T>(s1, l1, "conv2d")?, cuda::view::<T>(s2, l2, "conv2d")?);
        let (k, l) = (self.k(), self.l());
        let cols_buf = self.cuda_cols(dev, &x)?;
        let cols = match &cols_buf {
            Some(c) => c.slice(..),
            None => x.slice(..),
        };
        let total = self.n * self.output();
        let mut y = cuda::uninit::<T>(dev, total)?;
        let (a, b) = (cuda::Operand { data: &w, transposed: false, stride: 0 }, cuda::Operand { data: &cols, transposed: false, stride: k * l });
        cuda::gemm(dev, (self.n, self.c_out, l, k), a, b, &mut y.slice_mut(..), self.output(), false)?;
        if let Some(e) = epilogue {
            let coef = cuda::upload::<T>(dev, e.scale.iter().chain(&e.shift).copied())?;
            let (c, relu) = (cuda::int(self.c_out)?, i32::from(e.relu));
            cuda::launch!(dev, T, "channel_affine_inplace", cuda::grid(total); &mut y, &coef; total, c, l, relu);
        }
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }

    fn cuda_input_grad<T: cuda::Float>(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<CudaStorage> {
        let dev = &s1.device;
        let (dy, w) = (cuda::view::<T>(s1, l1, "conv2d-input-grad")?, cuda::view::<T>(s2, l2, "conv2d-input-grad")?);
        let (k, l) = (self.k(), self.l());
        let (wt, dy) = (cuda::Operand { data: &w, transposed: true, stride: 0 }, cuda::Operand { data: &dy, transposed: false, stride: self.output() });
        let total = self.n * self.image();
        let mut dx = cuda::uninit::<T>(dev, total)?;
        if self.pointwise() {
            cuda::gemm(dev, (self.n, k, l, self.c_out), wt, dy, &mut dx.slice_mut(..), self.image(), false)?;
        } else {
            let mut gcols = cuda::uninit::<T>(dev, self.n * k * l)?;
            cuda::gemm(dev, (self.n, k, l, self.c_out), wt, dy, &mut gcols.slice_mut(..), k * l, false)?;
            let [c_in, h, w, kh, kw, s, p, oh, ow] = self.cuda_args()?;
            cuda::launch!(dev, T, "col2im", cuda::grid(total); &gcols, &mut dx; total, c_in, h, w, kh, kw, s, p, oh, ow);
        }
        Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
    }

    fn cuda_weight_grad<T: cuda::Float>(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<CudaStorage> {
        let dev = &s1.device;
        let (x, dy) = (cuda::view::<T>(s1, l1, "conv2d-weight-grad")?, cuda::view::<T>(s2, l2, "conv2d-weight-grad")?);
        let (k, l, nl) = (self.k(), self.l(), self.n * self.l());
        // Columns [k, n·l], and ∂Y as [c_out, n·l]: the same unfold with a 1×1 kernel.
        let cols = self.cuda_unfold(dev, &x, l, nl)?;
        let dy = self.output_as_image().cuda_unfold(dev, &dy, l, nl)?;
        let (cols, dy) = (cols.slice(..), dy.slice(..));
        let mut gw = cuda::uninit::<T>(dev, self.c_out * k)?;
        let (a, b) = (cuda::Operand { data: &dy, transposed: false, stride: 0 }, cuda::Operand { data: &cols, transposed: true, stride: 0 });
        cuda::gemm(dev, (1, self.c_out, k, nl), a, b, &mut gw.slice_mut(..), 0, false)?;
        Ok(CudaStorage::wrap_cuda_slice(gw, dev.clone()))
    }
}

/// The convolution node: `(x, weight) → y`, with an eval-mode epilogue or differentiable.
struct Conv2d {
    g: Geometry,
    epilogue: Option<Epilogue>,
}

/// `(x, weight, residual) → y` of [`conv2d_affine_add_relu`].
struct Conv2dResidual {
    g: Geometry,
    epilogue: Epilogue,
}

impl candle_core::CustomOp3 for Conv2dResidual {
    fn name(&self) -> &'static str {
        "conv2d-affine-add-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use crate::pool::contiguous;
        let (g, name) = (&self.g, self.name());
        expect_dims(l1, &g.input_dims(), name)?;
        expect_dims(l2, &g.weight_dims(), name)?;
        expect_dims(l3, &g.output_dims(), name)?;
        let e = Some(&self.epilogue);
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(r)) => {
                CpuStorage::F32(g.forward_residual(contiguous(x, l1, name)?, contiguous(w, l2, name)?, e, Some(contiguous(r, l3, name)?)))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(r)) => {
                CpuStorage::F64(g.forward_residual(contiguous(x, l1, name)?, contiguous(w, l2, name)?, e, Some(contiguous(r, l3, name)?)))
            }
            _ => candle_core::bail!("{name}: operands must all be f32 or all f64"),
        };
        Ok((out, Shape::from(g.output_dims().to_vec())))
    }
}

/// `(x, transformed filters) → y` of [`conv2d_affine_winograd`].
struct Conv2dWinograd {
    g: Geometry,
    epilogue: Epilogue,
}

impl CustomOp2 for Conv2dWinograd {
    fn name(&self) -> &'static str {
        "conv2d-affine-winograd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.g;
        expect_dims(l1, &g.input_dims(), self.name())?;
        expect_dims(l2, &[g.c_out, winograd::POINTS, g.c_in], self.name())?;
        let out = binary_kernel!("conv2d-affine-winograd", s1, l1, s2, l2, |x, u| winograd::forward_with(g, x, u, Some(&self.epilogue)));
        Ok((out, Shape::from(g.output_dims().to_vec())))
    }
}

/// `∂Y, W → ∂x`, no graph of its own.
struct InputGrad(Geometry);

/// `x, ∂Y → ∂W`, no graph of its own.
struct WeightGrad(Geometry);

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.g;
        expect_dims(l1, &g.input_dims(), "conv2d")?;
        expect_dims(l2, &g.weight_dims(), "conv2d")?;
        let out = binary_kernel!("conv2d", s1, l1, s2, l2, |x, w| g.forward(x, w, self.epilogue.as_ref()));
        Ok((out, Shape::from(g.output_dims().to_vec())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let g = &self.g;
        expect_dims(l1, &g.input_dims(), "conv2d")?;
        expect_dims(l2, &g.weight_dims(), "conv2d")?;
        let out = float_dispatch!("conv2d", s1.dtype(), |T| g.cuda_forward::<T>(s1, l1, s2, l2, self.epilogue.as_ref())?);
        Ok((out, Shape::from(g.output_dims().to_vec())))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if self.epilogue.is_some() {
            candle_core::bail!("conv2d_affine is eval mode's fused batch norm and has no backward")
        }
        let grad = grad.contiguous()?;
        // The image fed to the stem needs no gradient; its product would be the stem's biggest.
        let gx = if x.track_op() { Some(grad.apply_op2_no_bwd(w, &InputGrad(self.g))?) } else { None };
        let gw = if w.track_op() { Some(x.apply_op2_no_bwd(&grad, &WeightGrad(self.g))?) } else { None };
        Ok((gx, gw))
    }
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        expect_dims(l1, &g.output_dims(), "conv2d-input-grad")?;
        expect_dims(l2, &g.weight_dims(), "conv2d-input-grad")?;
        let out = binary_kernel!("conv2d-input-grad", s1, l1, s2, l2, |dy, w| g.input_grad(dy, w));
        Ok((out, Shape::from(g.input_dims().to_vec())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let g = &self.0;
        expect_dims(l1, &g.output_dims(), "conv2d-input-grad")?;
        expect_dims(l2, &g.weight_dims(), "conv2d-input-grad")?;
        let out = float_dispatch!("conv2d-input-grad", s1.dtype(), |T| g.cuda_input_grad::<T>(s1, l1, s2, l2)?);
        Ok((out, Shape::from(g.input_dims().to_vec())))
    }
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        expect_dims(l1, &g.input_dims(), "conv2d-weight-grad")?;
        expect_dims(l2, &g.output_dims(), "conv2d-weight-grad")?;
        let out = binary_kernel!("conv2d-weight-grad", s1, l1, s2, l2, |x, dy| g.weight_grad(x, dy));
        Ok((out, Shape::from(g.weight_dims().to_vec())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let g = &self.0;
        expect_dims(l1, &g.input_dims(), "conv2d-weight-grad")?;
        expect_dims(l2, &g.output_dims(), "conv2d-weight-grad")?;
        let out = float_dispatch!("conv2d-weight-grad", s1.dtype(), |T| g.cuda_weight_grad::<T>(s1, l1, s2, l2)?);
        Ok((out, Shape::from(g.weight_dims().to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    /// Forward and both gradients equal candle's conv2d, for the kernels ResNet-50 uses and the
    /// odd sizes a 218×178 input produces.
    #[test]
    fn matches_candle_conv2d_forward_and_gradients() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // Batches of 1 (one image at a time, threaded products) and 3 (images across threads).
        for &(n, c_in, c_out, k, s, p, h, w) in &[
            (3, 3, 4, 7, 2, 3, 21, 17),
            (1, 3, 4, 7, 2, 3, 21, 17),
            (3, 4, 5, 3, 1, 1, 9, 7),
            (1, 4, 5, 3, 2, 1, 10, 9),
            (3, 4, 5, 3, 2, 1, 10, 9),
            (3, 6, 3, 1, 1, 0, 5, 4),
            (1, 6, 3, 1, 1, 0, 5, 4),
            (3, 6, 3, 1, 2, 0, 7, 6),
            (3, 6, 3, 1, 2, 0, 6, 5),
            (2, 2, 3, 3, 1, 2, 2, 3),
            // Larger maps, as the trunk's early stages have.
            (3, 2, 3, 3, 1, 1, 17, 17),
            (1, 2, 3, 3, 2, 1, 33, 31),
            (2, 3, 2, 1, 1, 0, 17, 16),
            (2, 3, 2, 1, 2, 0, 33, 32),
            (1, 3, 4, 7, 2, 3, 35, 33),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1., (n, c_in, h, w), &dev)?)?;
            let wt = Var::from_tensor(&Tensor::randn(0f64, 1., (c_out, c_in, k, k), &dev)?)?;
            let ours = conv2d(x.as_tensor(), wt.as_tensor(), s, p)?;
            let plain = x.as_tensor().conv2d(wt.as_tensor(), p, s, 1, 1)?;
            assert_eq!(ours.dims(), plain.dims());
            assert!(max_diff(&ours, &plain) < 1e-12, "forward k{k} s{s}");
            // A fixed random upstream gradient; candle's backward only works where its
            // output_padding bug does not bite (equal remainders), so compare the weight gradient
            // always and the input gradient against a brute-force reference.
            let up = Tensor::randn(0f64, 1., ours.dims(), &dev)?;
            let g = (ours * &up)?.sum_all()?.backward()?;
            let (gx, gw) = (g.get(&x).unwrap(), g.get(&wt).unwrap());
            let (rx, rw) = reference_grads(x.as_tensor(), wt.as_tensor(), &up, s, p)?;
            assert!(max_diff(gx, &rx) < 1e-10, "input gradient k{k} s{s} h{h} w{w}");
            assert!(max_diff(gw, &rw) < 1e-10, "weight gradient k{k} s{s} h{h} w{w}");
        }
        Ok(())
    }

    /// Unfolding equals the definition, element by element, into a buffer holding stale values:
    /// the shifted copy of stride-1 "same" convolutions (3×3, 5×5, 1×1) on maps down to 1×1,
    /// and the row-by-row path beside it. Folding, its adjoint, equals the definition's sums on
    /// the same cases.
    #[test]
    fn unfold_and_fold_equal_their_definitions() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for &(c, k, s, p, h, w) in &[
            (2, 3, 1, 1, 6, 5),
            (2, 3, 1, 1, 1, 1),
            (2, 3, 1, 1, 2, 2),
            (2, 3, 1, 1, 1, 4),
            (1, 3, 1, 1, 3, 1),
            (2, 5, 1, 2, 4, 3),
            (2, 5, 1, 2, 7, 6),
            (3, 1, 1, 0, 3, 4),
            (2, 3, 1, 0, 5, 4),
            (2, 3, 1, 2, 3, 3),
            (2, 3, 2, 1, 7, 6),
        ] {
            let x = Tensor::randn(0f64, 1., (1, c, h, w), &dev)?;
            let wt = Tensor::zeros((1, c, k, k), DType::F64, &dev)?;
            let g = Geometry::new(&x, &wt, s, p)?;
            let xv: Vec<f64> = x.flatten_all()?.to_vec1()?;
            let mut cols = vec![f64::NAN; g.k() * g.l() + 3];
            cols.truncate(g.k() * g.l());
            g.unfold(&xv, &mut cols);
            for (r, row) in cols.chunks(g.l()).enumerate() {
                let (ci, i, j) = (r / (k * k), r / k % k, r % k);
                for (q, &got) in row.iter().enumerate() {
                    let (sy, sx) = ((q / g.ow * s + i) as isize - p as isize, (q % g.ow * s + j) as isize - p as isize);
                    let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                    let want = if inside { xv[ci * h * w + sy as usize * w + sx as usize] } else { 0.0 };
                    assert_eq!(got, want, "k{k} s{s} p{p} {h}×{w}: row {r}, column {q}");
                }
            }
            let up: Vec<f64> = Tensor::randn(0f64, 1., g.k() * g.l(), &dev)?.to_vec1()?;
            let mut want = vec![0.0; c * h * w];
            for (r, row) in up.chunks(g.l()).enumerate() {
                let (ci, i, j) = (r / (k * k), r / k % k, r % k);
                for (q, &v) in row.iter().enumerate() {
                    let (sy, sx) = ((q / g.ow * s + i) as isize - p as isize, (q % g.ow * s + j) as isize - p as isize);
                    if (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx) {
                        want[ci * h * w + sy as usize * w + sx as usize] += v;
                    }
                }
            }
            let mut got = vec![0.0; c * h * w];
            g.fold(&up, &mut got);
            for (q, (got, want)) in got.iter().zip(&want).enumerate() {
                assert!((got - want).abs() < 1e-12, "fold k{k} s{s} p{p} {h}×{w}: input {q}: {got} against {want}");
            }
        }
        Ok(())
    }

    /// The sum over image groups rounds the same way on every call: thread t adds the t-th run of
    /// groups in order and the partials are added in thread order, here on two threads with
    /// values whose sum depends on the order (f32, magnitudes 1e-3 to 1e8, both signs).
    #[test]
    fn sum_over_groups_is_the_same_on_every_call() {
        let n: usize = 37;
        let value = |i: usize, e: usize| ((i * 7919 + e * 104_729) % 1000) as f32 * 10f32.powi((i % 9) as i32 - 3) * if (i + e) % 2 == 0 { 1.0 } else { -1.0 };
        let add = |sum: &mut Vec<f32>, images: Range<usize>, _: &mut (), _: Parallelism| {
            for i in images {
                let v: Vec<f32> = (0..5).map(|e| value(i, e)).collect();
                if sum.is_empty() {
                    *sum = v;
                } else {
                    sum.iter_mut().zip(&v).for_each(|(s, v)| *s += v);
                }
            }
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for g in [1, 2, 3] {
            // The reference: the two runs of groups, each summed in order, then added.
            let groups = n.div_ceil(g);
            let per = groups.div_ceil(2);
            let mut want = Vec::new();
            let mut second = Vec::new();
            add(&mut want, 0..(per * g).min(n), &mut (), Parallelism::None);
            add(&mut second, (per * g).min(n)..n, &mut (), Parallelism::None);
            want.iter_mut().zip(&second).for_each(|(w, s)| *w += s);
            for _ in 0..50 {
                let got = pool.install(|| sum_over_groups(n, g, add));
                assert_eq!(got, want, "groups of {g}");
            }
        }
    }

    /// Every grouping of the images into products (one each, groups with a smaller last one, the
    /// whole batch) gives the loop reference's forward, epilogue and gradients.
    #[test]
    fn image_groups_change_nothing() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for &(n, c_in, c_out, k, s, p, h, w) in &[(5, 3, 4, 3, 1, 1, 9, 10), (5, 3, 4, 3, 1, 1, 4, 3), (5, 6, 3, 1, 1, 0, 4, 5), (5, 4, 5, 3, 2, 1, 9, 8), (5, 3, 2, 1, 2, 0, 7, 6)] {
            let x = Tensor::randn(0f64, 1., (n, c_in, h, w), &dev)?;
            let wt = Tensor::randn(0f64, 1., (c_out, c_in, k, k), &dev)?;
            let plain = x.conv2d(&wt, p, s, 1, 1)?;
            let up = Tensor::randn(0f64, 1., plain.dims(), &dev)?;
            let (rx, rw) = reference_grads(&x, &wt, &up, s, p)?;
            let e = Epilogue { scale: (0..c_out).map(|c| c as f64 - 1.5).collect(), shift: (0..c_out).map(|c| 0.25 * c as f64).collect(), relu: true };
            let mut mapped: Vec<f64> = plain.flatten_all()?.to_vec1()?;
            for image in mapped.chunks_mut(plain.elem_count() / n) {
                e.apply(image, plain.dim(2)? * plain.dim(3)?);
            }
            let (xv, wv, uv): (Vec<f64>, Vec<f64>, Vec<f64>) = (x.flatten_all()?.to_vec1()?, wt.flatten_all()?.to_vec1()?, up.flatten_all()?.to_vec1()?);
            let g0 = Geometry::new(&x, &wt, s, p)?;
            for group in [1, 2, 3, n] {
                let g = Geometry { group, forward_group: group, winograd: false, direct: false, ..g0 };
                let t = |v: Vec<f64>, like: &Tensor| Tensor::from_vec(v, like.dims(), &dev);
                assert!(max_diff(&t(g.forward(&xv, &wv, None), &plain)?, &plain) < 1e-12, "forward k{k} s{s} group {group}");
                assert!(max_diff(&t(g.forward(&xv, &wv, Some(&e)), &plain)?, &t(mapped.clone(), &plain)?) < 1e-12, "epilogue k{k} s{s} group {group}");
                assert!(max_diff(&t(g.input_grad(&uv, &wv), &x)?, &rx) < 1e-10, "input gradient k{k} s{s} group {group}");
                assert!(max_diff(&t(g.weight_grad(&xv, &uv), &wt)?, &rw) < 1e-10, "weight gradient k{k} s{s} group {group}");
            }
        }
        Ok(())
    }

    /// The stem's direct loops give the loop reference's forward, epilogue and weight gradient
    /// (f64): strides 1 to 3, paddings 0 to 3, kernels wider than a block of kernel columns,
    /// output rows that end in part of a block, one and several blocks of channels, one image
    /// and several (in parallel, with partial sums per thread).
    #[test]
    fn direct_stem_equals_the_reference() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for &(n, c_in, c_out, k, s, p, h, w) in &[
            (3, 3, 8, 7, 2, 3, 22, 19),
            (1, 3, 16, 7, 2, 3, 13, 30),
            (2, 1, 8, 3, 1, 1, 5, 9),
            (2, 4, 8, 9, 3, 0, 20, 17),
            (2, 2, 16, 5, 1, 2, 6, 7),
        ] {
            let x = Tensor::randn(0f64, 1., (n, c_in, h, w), &dev)?;
            let wt = Tensor::randn(0f64, 1., (c_out, c_in, k, k), &dev)?;
            let g = Geometry::new(&x, &wt, s, p)?;
            assert!(g.direct, "{c_in}→{c_out} {k}×{k}/{s} takes the direct path");
            let plain = x.conv2d(&wt, p, s, 1, 1)?;
            let up = Tensor::randn(0f64, 1., plain.dims(), &dev)?;
            let (_, rw) = reference_grads(&x, &wt, &up, s, p)?;
            let e = Epilogue { scale: (0..c_out).map(|c| c as f64 - 1.5).collect(), shift: (0..c_out).map(|c| 0.25 * c as f64).collect(), relu: true };
            let mut mapped: Vec<f64> = plain.flatten_all()?.to_vec1()?;
            for image in mapped.chunks_mut(plain.elem_count() / n) {
                e.apply(image, plain.dim(2)? * plain.dim(3)?);
            }
            let (xv, wv, uv): (Vec<f64>, Vec<f64>, Vec<f64>) = (x.flatten_all()?.to_vec1()?, wt.flatten_all()?.to_vec1()?, up.flatten_all()?.to_vec1()?);
            let t = |v: Vec<f64>, like: &Tensor| Tensor::from_vec(v, like.dims(), &dev);
            let what = format!("{n}×{c_in}×{h}×{w}, {c_out}×{k}×{k}/{s} p{p}");
            assert!(max_diff(&t(g.forward(&xv, &wv, None), &plain)?, &plain) < 1e-12, "forward {what}");
            assert!(max_diff(&t(g.forward(&xv, &wv, Some(&e)), &plain)?, &t(mapped, &plain)?) < 1e-12, "epilogue {what}");
            assert!(max_diff(&t(g.weight_grad(&xv, &uv), &wt)?, &rw) < 1e-10, "weight gradient {what}");
        }
        // Not for channels that do not fill a block, nor for more than two blocks, nor for the
        // trunk's many-channel layers.
        for (c_in, c_out, k) in [(3, 12, 7), (3, 32, 7), (8, 8, 3), (3, 8, 1)] {
            let g = Geometry::new(&Tensor::zeros((1, c_in, 9, 9), DType::F64, &dev)?, &Tensor::zeros((c_out, c_in, k, k), DType::F64, &dev)?, 2, 1)?;
            assert!(!g.direct, "{c_in}→{c_out} {k}×{k}");
        }
        Ok(())
    }

    /// The folded eval path equals the convolution followed by the per-channel map (and ReLU).
    #[test]
    fn affine_epilogue_equals_conv_then_map() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (n, h, w) in [(1, 9, 7), (3, 9, 7), (2, 40, 33)] {
            let x = Tensor::randn(0f64, 1., (n, 4, h, w), &dev)?;
            let w = Tensor::randn(0f64, 1., (5, 4, 3, 3), &dev)?;
            let (scale, shift) = (vec![0.5, -1.0, 2.0, 0.0, 1.5], vec![0.1, 0.2, -0.3, 0.4, -0.5]);
            let a = Tensor::new(scale.as_slice(), &dev)?.reshape((1, 5, 1, 1))?;
            let b = Tensor::new(shift.as_slice(), &dev)?.reshape((1, 5, 1, 1))?;
            let plain = conv2d(&x, &w, 2, 1)?.broadcast_mul(&a)?.broadcast_add(&b)?;
            for relu in [false, true] {
                let want = if relu { plain.relu()? } else { plain.clone() };
                let got = conv2d_affine(&x, &w, 2, 1, scale.clone(), shift.clone(), relu)?;
                assert!(max_diff(&got, &want) < 1e-12, "n {n} relu {relu}");
            }
        }
        Ok(())
    }

    /// With the transformed filters at hand, eval mode's 3×3 convolution equals the im2col path
    /// (f64): through Winograd on maps down to 7×7 and 3×3, through the weight on 2×2 maps.
    #[test]
    fn prepared_winograd_equals_the_plain_path() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (n, h, w, winograd) in [(3, 7, 7, true), (2, 7, 6, true), (2, 3, 3, true), (3, 2, 2, false), (2, 14, 11, true)] {
            let x = Tensor::randn(0f64, 1., (n, 6, h, w), &dev)?;
            let wt = Tensor::randn(0f64, 1., (5, 6, 3, 3), &dev)?;
            let (scale, shift) = (vec![0.5, -1.0, 2.0, 0.0, 1.5], vec![0.1, 0.2, -0.3, 0.4, -0.5]);
            assert_eq!(winograd::applies_prepared(&Geometry::new(&x, &wt, 1, 1)?), winograd, "{h}×{w}");
            let u = winograd_filters(&wt)?.expect("3×3 filters on the CPU");
            assert_eq!(u.dims(), [5, 36, 6]);
            for relu in [false, true] {
                let want = conv2d_affine(&x, &wt, 1, 1, scale.clone(), shift.clone(), relu)?;
                let got = conv2d_affine_winograd(&x, &wt, &u, scale.clone(), shift.clone(), relu)?;
                assert!(max_diff(&got, &want) < 1e-12, "{n}×{h}×{w} relu {relu}");
            }
        }
        let (x, wt) = (Tensor::zeros((1, 6, 7, 7), DType::F64, &dev)?, Tensor::zeros((5, 6, 3, 3), DType::F64, &dev)?);
        let other = winograd_filters(&Tensor::zeros((5, 4, 3, 3), DType::F64, &dev)?)?.expect("3×3");
        let err = conv2d_affine_winograd(&x, &wt, &other, vec![1.0; 5], vec![0.0; 5], false).unwrap_err().to_string();
        assert!(err.contains("are not those of weight"), "{err}");
        assert!(winograd_filters(&Tensor::zeros((5, 4, 1, 1), DType::F64, &dev)?)?.is_none());
        Ok(())
    }

    /// The block end fused into the product equals the convolution, the per-channel map, the
    /// residual and the ReLU one after another: image by image and in groups, pointwise and 3×3
    /// (which then leaves the Winograd path), through the op and in f64.
    #[test]
    fn residual_epilogue_equals_conv_map_add_relu() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for &(n, c_in, c_out, k, s, p, h, w) in &[(5, 6, 4, 1, 1, 0, 4, 5), (3, 4, 5, 1, 1, 0, 9, 8), (5, 3, 4, 3, 1, 1, 17, 16), (3, 4, 3, 1, 2, 0, 9, 7)] {
            let x = Tensor::randn(0f64, 1., (n, c_in, h, w), &dev)?;
            let wt = Tensor::randn(0f64, 1., (c_out, c_in, k, k), &dev)?;
            let plain = x.conv2d(&wt, p, s, 1, 1)?;
            let residual = Tensor::randn(0f64, 1., plain.dims(), &dev)?;
            let (scale, shift): (Vec<f64>, Vec<f64>) = ((0..c_out).map(|c| 0.5 - 0.3 * c as f64).collect(), (0..c_out).map(|c| 0.2 * c as f64 - 0.1).collect());
            let a = Tensor::new(scale.as_slice(), &dev)?.reshape((1, c_out, 1, 1))?;
            let b = Tensor::new(shift.as_slice(), &dev)?.reshape((1, c_out, 1, 1))?;
            let want = (plain.broadcast_mul(&a)?.broadcast_add(&b)? + &residual)?.relu()?;
            let got = conv2d_affine_add_relu(&x, &wt, s, p, scale.clone(), shift.clone(), &residual)?;
            assert!(max_diff(&got, &want) < 1e-12, "op, k{k} s{s}");
            let (xv, wv, rv): (Vec<f64>, Vec<f64>, Vec<f64>) = (x.flatten_all()?.to_vec1()?, wt.flatten_all()?.to_vec1()?, residual.flatten_all()?.to_vec1()?);
            let e = Epilogue { scale, shift, relu: true };
            let g0 = Geometry::new(&x, &wt, s, p)?;
            for group in [1, 2, n] {
                let g = Geometry { forward_group: group, ..g0 };
                let got = Tensor::from_vec(g.forward_residual(&xv, &wv, Some(&e), Some(&rv)), want.dims(), &dev)?;
                assert!(max_diff(&got, &want) < 1e-12, "k{k} s{s} group {group}");
            }
        }
        Ok(())
    }

    /// Gradients of Σ up·conv(x, w) by the definition, in loops.
    fn reference_grads(x: &Tensor, wt: &Tensor, up: &Tensor, s: usize, p: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let (n, ci, h, w) = x.dims4()?;
        let (co, _, k, _) = wt.dims4()?;
        let (_, _, oh, ow) = up.dims4()?;
        let xv: Vec<f64> = x.flatten_all()?.to_vec1()?;
        let wv: Vec<f64> = wt.flatten_all()?.to_vec1()?;
        let uv: Vec<f64> = up.flatten_all()?.to_vec1()?;
        let (mut gx, mut gw) = (vec![0f64; xv.len()], vec![0f64; wv.len()]);
        for b in 0..n {
            for o in 0..co {
                for y in 0..oh {
                    for xo in 0..ow {
                        let u = uv[((b * co + o) * oh + y) * ow + xo];
                        for c in 0..ci {
                            for i in 0..k {
                                for j in 0..k {
                                    let (sy, sx) = ((y * s + i) as isize - p as isize, (xo * s + j) as isize - p as isize);
                                    if sy < 0 || sx < 0 || sy as usize >= h || sx as usize >= w {
                                        continue;
                                    }
                                    let xi = ((b * ci + c) * h + sy as usize) * w + sx as usize;
                                    let wi = ((o * ci + c) * k + i) * k + j;
                                    gx[xi] += u * wv[wi];
                                    gw[wi] += u * xv[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok((Tensor::from_vec(gx, x.dims(), x.device())?, Tensor::from_vec(gw, wt.dims(), wt.device())?))
    }
}

/// The CUDA kernels of this op, compiled for the host (`crate::emulated`), against the CPU code.
#[cfg(test)]
mod emulated_tests {
    use super::*;
    use crate::emulated::{data, kernels, max_diff};

    type Im2col = unsafe extern "C" fn(*const f64, *mut f64, usize, i32, i32, i32, i32, i32, i32, i32, i32, i32, usize, usize);
    type Col2im = unsafe extern "C" fn(*const f64, *mut f64, usize, i32, i32, i32, i32, i32, i32, i32, i32, i32);
    type AffineInPlace = unsafe extern "C" fn(*mut f64, *const f64, usize, i32, usize, i32);

    fn geometry(n: usize, c_in: usize, (h, w): (usize, usize), kernel: usize, stride: usize, padding: usize) -> Geometry {
        let (oh, ow) = ((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1);
        Geometry { n, c_in, h, w, c_out: 4, kh: kernel, kw: kernel, stride, padding, oh, ow, group: 1, forward_group: 1, winograd: false, direct: false }
    }

    fn ints(g: &Geometry) -> [i32; 9] {
        [g.c_in, g.h, g.w, g.kh, g.kw, g.stride, g.padding, g.oh, g.ow].map(|v| v as i32)
    }

    /// Both column layouts equal the CPU unfold image by image, and the fold kernel equals the
    /// CPU fold, for every geometry the trunk uses (odd sizes included).
    #[test]
    fn unfold_and_fold_kernels_match_the_cpu() {
        let k = kernels();
        // SAFETY: the kernels' C signatures.
        let (im2col, col2im) = unsafe { (k.get::<Im2col>("im2col_f64"), k.get::<Col2im>("col2im_f64")) };
        let cases = [(2, 3, (9, 8), 3, 1, 1), (2, 4, (11, 10), 3, 2, 1), (2, 3, (23, 19), 7, 2, 3), (3, 5, (9, 7), 1, 2, 0), (2, 2, (5, 4), 1, 1, 0), (1, 2, (2, 3), 3, 2, 1)];
        for (seed, &(n, c_in, hw, kernel, stride, padding)) in cases.iter().enumerate() {
            let g = geometry(n, c_in, hw, kernel, stride, padding);
            let [ci, h, w, kh, kw, s, p, oh, ow] = ints(&g);
            let (kk, l, image) = (g.k(), g.l(), g.image());
            let x = data(n * image, seed as u64);
            let mut want = Vec::new();
            for b in 0..n {
                let mut buf = Vec::new();
                g.unfold(&x[b * image..(b + 1) * image], &mut buf);
                want.extend(buf);
            }
            let total = n * kk * l;
            let (mut cols, mut side_by_side) = (vec![f64::NAN; total], vec![f64::NAN; total]);
            // SAFETY: buffers of the sizes the arguments describe.
            unsafe {
                im2col(x.as_ptr(), cols.as_mut_ptr(), total, ci, h, w, kh, kw, s, p, oh, ow, kk * l, l);
                im2col(x.as_ptr(), side_by_side.as_mut_ptr(), total, ci, h, w, kh, kw, s, p, oh, ow, l, n * l);
            }
            assert_eq!(max_diff(&cols, &want), 0.0, "[n, k, l] columns, case {seed}");
            let regrouped: Vec<f64> = (0..n).flat_map(|b| (0..kk).flat_map(move |r| (0..l).map(move |q| (b, r, q)))).map(|(b, r, q)| side_by_side[r * n * l + b * l + q]).collect();
            assert_eq!(max_diff(&regrouped, &want), 0.0, "[k, n·l] columns, case {seed}");

            let gcols = data(total, 100 + seed as u64);
            let mut folded = vec![0.0; n * image];
            for b in 0..n {
                g.fold(&gcols[b * kk * l..(b + 1) * kk * l], &mut folded[b * image..(b + 1) * image]);
            }
            let mut dx = vec![f64::NAN; n * image];
            // SAFETY: as above.
            unsafe { col2im(gcols.as_ptr(), dx.as_mut_ptr(), n * image, ci, h, w, kh, kw, s, p, oh, ow) };
            assert!(max_diff(&dx, &folded) < 1e-12, "fold, case {seed}");
        }
    }

    #[test]
    fn the_epilogue_kernel_is_the_cpu_epilogue() {
        // SAFETY: the kernel's C signature.
        let affine = unsafe { kernels().get::<AffineInPlace>("channel_affine_inplace_f64") };
        let (n, c, l) = (2, 3, 10);
        let e = Epilogue { scale: vec![0.5, -1.5, 2.0], shift: vec![0.25, 0.0, -1.0], relu: true };
        let y = data(n * c * l, 9);
        let mut want = y.clone();
        for img in want.chunks_mut(c * l) {
            e.apply(img, l);
        }
        let coef: Vec<f64> = e.scale.iter().chain(&e.shift).copied().collect();
        let mut got = y.clone();
        // SAFETY: y holds n·c·l elements, coef 2·c.
        unsafe { affine(got.as_mut_ptr(), coef.as_ptr(), got.len(), c as i32, l, 1) };
        assert_eq!(max_diff(&got, &want), 0.0);
    }
}
