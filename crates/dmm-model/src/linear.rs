//! Fully connected layers as one graph node: `y = x·Wᵀ + b` with the weight gradient `∂Yᵀ·x`
//! computed straight into W's `[out, in]` layout. candle's `Linear` multiplies by the view `Wᵀ`,
//! so its weight gradient comes back transposed and is copied element by element into place;
//! for the subjective branch's first layer (28,672 × 2,048 at width 64) that copy cost more than
//! the layer's products. The variables are still candle-nn's `Linear` (names, init, checkpoints).
//!
//! A batch of a few rows against a large weight (the subjective branch's first layer: 58.7 M
//! weights, 235 MB in f32, for 8 images) is bound by reading the weight once; gemm packs it first
//! and so reads it about twice over. There the forward and the input gradient run through
//! [`thin_forward`] and [`thin_input_grad`], which stream the weight once, in blocks, against the
//! few rows held in the first-level cache.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_nn::Linear;

use rayon::prelude::*;

use crate::gemm::{all_threads, binary_kernel, expect_dims, matmul_uninit, written_vec, Mat};
use crate::simd::{multiversion, Real};

/// Batches of at most this many rows against weights of at least [`THIN_WEIGHTS`] elements take
/// the streaming kernels.
const THIN_ROWS: usize = 16;

/// See [`THIN_ROWS`]: the heads' 2,048 → 1,024 layers (2 M weights) stream too (3.0 → 0.4 ms
/// forward at batch 8); their last layers (140 k weights and fewer) stay on gemm.
const THIN_WEIGHTS: usize = 1 << 20;

/// Columns of the weight per block: a block of every batch row (16 · 1,024 · 4 bytes at most in
/// f32) stays in the first-level cache while the weight's rows stream past it.
const BLOCK: usize = 1024;

/// Weight rows per parallel task in [`thin_forward`].
const ROWS_PER_TASK: usize = 64;

multiversion! {
    /// `out[r] += Σ_i w[i]·x[r·stride + i]` for the eight rows `r < 8` of `x`, each `w.len()`
    /// long: every element of `w` is loaded once for the eight rows, whose 8 × 8 lane sums stay
    /// in registers. Meanwhile `next`, the weight segment the caller reads after `w`, is
    /// prefetched: the hardware prefetcher alone left the loads of `w` waiting on memory (the
    /// 58.7 M-weight layer at 10.7 GB/s; prefetching, 21–22 → 14.5 ms).
    fn dot8<T: Real>(w: &[T], next: &[T], x: &[T], stride: usize, out: &mut [T]) {
        let n = w.len();
        let rows: [&[T]; 8] = std::array::from_fn(|r| &x[r * stride..r * stride + n]);
        let mut acc = [[T::zero(); 8]; 8];
        let (groups, tail) = w.as_chunks::<8>();
        for (g, wv) in groups.iter().enumerate() {
            #[cfg(target_arch = "x86_64")]
            if g % 2 == 0 {
                // One cache line of the next row's segment per two groups (eight f32 each).
                let line = next.as_ptr().wrapping_add(g * 8).cast::<i8>();
                // SAFETY: a prefetch only hints the cache; it never faults, wherever it points.
                unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line) };
            }
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let xv = &row[g * 8..g * 8 + 8];
                for l in 0..8 {
                    acc[l] = wv[l].fma(xv[l], acc[l]);
                }
            }
        }
        for ((o, acc), row) in out.iter_mut().zip(&acc).zip(&rows) {
            let mut s = T::zero();
            for v in acc {
                s += *v;
            }
            for (i, &wv) in tail.iter().enumerate() {
                s = wv.fma(row[groups.len() * 8 + i], s);
            }
            *o += s;
        }
    }
}

multiversion! {
    /// `y += Σ_k p[k]·w[k]` over four rows `w[k]` of `y`'s length: `y` is loaded and stored once
    /// for the four.
    fn axpy4<T: Real>(y: &mut [T], p: [T; 4], w: [&[T]; 4]) {
        let n = y.len();
        let [a, b, c, d] = w.map(|w| &w[..n]);
        for i in 0..n {
            y[i] = p[3].fma(d[i], p[2].fma(c[i], p[1].fma(b[i], p[0].fma(a[i], y[i]))));
        }
    }
}

/// `x·Wᵀ` `[b, n_out]` for `x` `[b, n_in]` and `w` `[n_out, n_in]`: weight rows in parallel tasks,
/// each walking the columns block by block, every weight row against eight `x` rows at a time.
fn thin_forward<T: Real>(x: &[T], w: &[T], Dense { b, n_in, n_out }: Dense) -> Vec<T> {
    // `x` with zero rows up to a multiple of eight; yᵀ `[n_out, b8]`, then transposed (b·n_out
    // elements: nothing beside the weight's).
    let b8 = b.div_ceil(8) * 8;
    let mut xp = x.to_vec();
    xp.resize(b8 * n_in, T::zero());
    let mut yt = vec![T::zero(); n_out * b8];
    yt.par_chunks_mut(ROWS_PER_TASK * b8).enumerate().for_each(|(task, yt)| {
        let first = task * ROWS_PER_TASK;
        for c0 in (0..n_in).step_by(BLOCK) {
            let cols = c0..(c0 + BLOCK).min(n_in);
            for (r, out) in yt.chunks_mut(b8).enumerate() {
                let wr = &w[(first + r) * n_in..][cols.clone()];
                let next = w.get((first + r + 1) * n_in + c0..).unwrap_or(wr);
                for (g, out) in out.chunks_mut(8).enumerate() {
                    dot8(wr, next, &xp[g * 8 * n_in + c0..], n_in, out);
                }
            }
        }
    });
    (0..b * n_out).map(|i| yt[(i % n_out) * b8 + i / n_out]).collect()
}

/// `∂Y·W` `[b, n_in]` for `dy` `[b, n_out]`: column blocks in parallel tasks, each adding four
/// weight rows at a time into its block of every output row.
fn thin_input_grad<T: Real>(dy: &[T], w: &[T], Dense { b, n_in, n_out }: Dense) -> Vec<T> {
    let blocks: Vec<Vec<T>> = (0..n_in.div_ceil(BLOCK))
        .into_par_iter()
        .map(|blk| {
            let cols = blk * BLOCK..((blk + 1) * BLOCK).min(n_in);
            let len = cols.len();
            let mut out = vec![T::zero(); b * len];
            let zero = vec![T::zero(); len];
            for o in (0..n_out).step_by(4) {
                // Rows past the last are zero rows with zero factors.
                let live = |k: usize| o + k < n_out;
                let rows: [&[T]; 4] = std::array::from_fn(|k| if live(k) { &w[(o + k) * n_in..][cols.clone()] } else { &zero });
                for (j, out) in out.chunks_mut(len).enumerate() {
                    let p = std::array::from_fn(|k| if live(k) { dy[j * n_out + o + k] } else { T::zero() });
                    axpy4(out, p, rows);
                }
            }
            out
        })
        .collect();
    let mut gx = Vec::with_capacity(b * n_in);
    for j in 0..b {
        for blk in &blocks {
            let len = blk.len() / b;
            gx.extend_from_slice(&blk[j * len..(j + 1) * len]);
        }
    }
    gx
}

/// `layer` applied to `xs` `[b, in] → [b, out]`, differentiable in the input, weight and bias.
pub fn forward(layer: &Linear, xs: &Tensor) -> candle_core::Result<Tensor> {
    let (b, n_in) = xs.dims2()?;
    let (n_out, w_in) = layer.weight().dims2()?;
    if w_in != n_in {
        candle_core::bail!("linear: input {:?} does not fit weight {:?}", xs.dims(), layer.weight().dims())
    }
    let ys = xs.contiguous()?.apply_op2(&layer.weight().contiguous()?, Dense { b, n_in, n_out })?;
    match layer.bias() {
        Some(bias) => ys.broadcast_add(bias),
        None => Ok(ys),
    }
}

/// Sizes of one product: a batch of `b` rows, `n_in → n_out`.
#[derive(Debug, Clone, Copy)]
struct Dense {
    b: usize,
    n_in: usize,
    n_out: usize,
}

impl Dense {
    /// Whether the streaming forward takes this product (see [`THIN_ROWS`]).
    fn thin(&self) -> bool {
        (1..=THIN_ROWS).contains(&self.b) && self.n_in * self.n_out >= THIN_WEIGHTS
    }

    /// Whether the streaming input gradient does: as [`Self::thin`], with a column block for every
    /// thread (its tasks; a 2,048-input layer has two, too few for a machine of many cores).
    fn thin_input_grad(&self) -> bool {
        self.thin() && self.n_in.div_ceil(BLOCK) >= rayon::current_num_threads()
    }
}

/// `∂Y, W → ∂x = ∂Y·W`.
struct InputGrad(Dense);

/// `∂Y, x → ∂W = ∂Yᵀ·x`.
struct WeightGrad(Dense);

impl CustomOp2 for Dense {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dense { b, n_in, n_out } = *self;
        expect_dims(l1, &[b, n_in], "linear")?;
        expect_dims(l2, &[n_out, n_in], "linear")?;
        let out = binary_kernel!("linear", s1, l1, s2, l2, |x, w| {
            if self.thin() {
                return thin_forward(x, w, *self);
            }
            // SAFETY: the product writes all b·n_out elements.
            unsafe { written_vec(b * n_out, |y| _ = matmul_uninit(y, Mat::rows(x, b, n_in), Mat::rows(w, n_out, n_in).t(), all_threads())) }
        });
        Ok((out, Shape::from((b, n_out))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Dense { b, n_in, n_out } = *self;
        expect_dims(l1, &[b, n_in], "linear")?;
        expect_dims(l2, &[n_out, n_in], "linear")?;
        let out = crate::cuda::product("linear", (s1, l1, false), (s2, l2, true), (b, n_out, n_in))?;
        Ok((out, Shape::from((b, n_out))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = if x.track_op() { Some(grad.apply_op2_no_bwd(w, &InputGrad(*self))?) } else { None };
        let gw = if w.track_op() { Some(grad.apply_op2_no_bwd(x, &WeightGrad(*self))?) } else { None };
        Ok((gx, gw))
    }
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "linear-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dense { b, n_in, n_out } = self.0;
        expect_dims(l1, &[b, n_out], "linear-input-grad")?;
        expect_dims(l2, &[n_out, n_in], "linear-input-grad")?;
        let out = binary_kernel!("linear-input-grad", s1, l1, s2, l2, |dy, w| {
            if self.0.thin_input_grad() {
                return thin_input_grad(dy, w, self.0);
            }
            // SAFETY: the product writes all b·n_in elements.
            unsafe { written_vec(b * n_in, |gx| _ = matmul_uninit(gx, Mat::rows(dy, b, n_out), Mat::rows(w, n_out, n_in), all_threads())) }
        });
        Ok((out, Shape::from((b, n_in))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Dense { b, n_in, n_out } = self.0;
        expect_dims(l1, &[b, n_out], "linear-input-grad")?;
        expect_dims(l2, &[n_out, n_in], "linear-input-grad")?;
        let out = crate::cuda::product("linear-input-grad", (s1, l1, false), (s2, l2, false), (b, n_in, n_out))?;
        Ok((out, Shape::from((b, n_in))))
    }
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "linear-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dense { b, n_in, n_out } = self.0;
        expect_dims(l1, &[b, n_out], "linear-weight-grad")?;
        expect_dims(l2, &[b, n_in], "linear-weight-grad")?;
        let out = binary_kernel!("linear-weight-grad", s1, l1, s2, l2, |dy, x| {
            // SAFETY: the product writes all n_out·n_in elements.
            unsafe { written_vec(n_out * n_in, |gw| _ = matmul_uninit(gw, Mat::rows(dy, b, n_out).t(), Mat::rows(x, b, n_in), all_threads())) }
        });
        Ok((out, Shape::from((n_out, n_in))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Dense { b, n_in, n_out } = self.0;
        expect_dims(l1, &[b, n_out], "linear-weight-grad")?;
        expect_dims(l2, &[b, n_in], "linear-weight-grad")?;
        let out = crate::cuda::product("linear-weight-grad", (s1, l1, true), (s2, l2, false), (n_out, n_in, b))?;
        Ok((out, Shape::from((n_out, n_in))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module, Var};

    /// The streaming kernels equal gemm's products (f64): odd row counts, a last column block
    /// shorter than the others, a last task with fewer rows.
    #[test]
    fn thin_kernels_match_the_products() {
        assert!(!Dense { b: 0, n_in: 4096, n_out: 4096 }.thin(), "an empty batch stays on gemm");
        for (b, n_in, n_out) in [(1, 3000, 37), (3, 2 * BLOCK + 17, 2 * ROWS_PER_TASK + 3), (8, 100, 1), (16, BLOCK, 16)] {
            let d = Dense { b, n_in, n_out };
            let data = |n: usize, s: f64| (0..n).map(|i| (i as f64 * 0.37 + s).sin()).collect::<Vec<f64>>();
            let (x, w, dy) = (data(b * n_in, 0.0), data(n_out * n_in, 1.0), data(b * n_out, 2.0));
            let mut y = vec![0.0; b * n_out];
            crate::gemm::matmul(&mut y, Mat::rows(&x, b, n_in), Mat::rows(&w, n_out, n_in).t(), false, all_threads());
            let mut gx = vec![0.0; b * n_in];
            crate::gemm::matmul(&mut gx, Mat::rows(&dy, b, n_out), Mat::rows(&w, n_out, n_in), false, all_threads());
            let max = |a: &[f64], b: &[f64]| a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(max(&thin_forward(&x, &w, d), &y) < 1e-10, "forward {b}×{n_in}→{n_out}");
            assert!(max(&thin_input_grad(&dy, &w, d), &gx) < 1e-10, "input gradient {b}×{n_in}→{n_out}");
        }
    }

    /// Output and all three gradients equal candle's `Linear` (f64), with and without bias.
    #[test]
    fn matches_candle_linear() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for bias in [true, false] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1., (3, 5), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f64, 1., (4, 5), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f64, 1., 4, &dev)?)?;
            let layer = Linear::new(w.as_tensor().clone(), bias.then(|| b.as_tensor().clone()));
            let up = Tensor::randn(0f64, 1., (3, 4), &dev)?;
            let ours = forward(&layer, x.as_tensor())?;
            let plain = layer.forward(x.as_tensor())?;
            let go = (&ours * &up)?.sum_all()?.backward()?;
            let gp = (&plain * &up)?.sum_all()?.backward()?;
            let diff = |a: &Tensor, b: &Tensor| -> candle_core::Result<f64> { (a - b)?.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar() };
            assert!(diff(&ours, &plain)? < 1e-12);
            for v in [&x, &w] {
                assert!(diff(go.get(v).unwrap(), gp.get(v).unwrap())? < 1e-12);
                assert!(go.get(v).unwrap().is_contiguous());
            }
            assert_eq!(go.get(&b).is_some(), bias);
            if bias {
                assert!(diff(go.get(&b).unwrap(), gp.get(&b).unwrap())? < 1e-12);
            }
        }
        Ok(())
    }
}
