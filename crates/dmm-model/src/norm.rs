//! Batch normalization over `[n, c, h, w]` with PyTorch's semantics (biased batch variance in the
//! output, unbiased in the running variance, momentum 0.1, eps 1e-5), as one fused op in training:
//! one pass for the statistics, one for the output, and a closed-form backward
//! (dx = γ·σ⁻¹/N · (N·dy − Σdy − x̂·Σ(dy·x̂)), dγ = Σ dy·x̂, dβ = Σ dy) instead of the dozen
//! differentiable elementwise passes, transposes and copies of candle's `BatchNorm`. Variable names
//! are torchvision's (`weight`, `bias`, `running_mean`, `running_var`).
//!
//! With `relu`, the activation that follows every batch norm but the last of a block is part of
//! the same op: the output is clamped in place and the backward masks `dy` by the output's sign,
//! saving candle's four-pass ReLU gradient. In eval mode the layer is the per-channel affine map
//! [`BatchNorm2d::eval_affine`], which the convolution before it applies as it writes
//! ([`crate::conv::conv2d_affine`]).
//!
//! Checked against finite differences (`tests/gradients.rs`) and the PyTorch fixtures
//! (`tests/parity.rs`, train-mode output and running statistics).

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, Var, WithDType};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use crate::gemm::written_vec;
use crate::pool::contiguous;
use crate::simd::multiversion;
#[cfg(feature = "cuda")]
use {
    crate::cuda::{self, float_dispatch},
    candle_core::CudaStorage,
};

/// PyTorch's defaults.
const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// A 2-D batch-norm layer.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
}

impl BatchNorm2d {
    /// The layer for `c` channels, variables under `vb`.
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        let running_mean = vb.get_with_hints(c, "running_mean", Init::Const(0.))?;
        let running_var = vb.get_with_hints(c, "running_var", Init::Const(1.))?;
        Ok(Self {
            weight: vb.get_with_hints(c, "weight", Init::Const(1.))?,
            bias: vb.get_with_hints(c, "bias", Init::Const(0.))?,
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
        })
    }

    /// Training mode normalizes with the batch statistics and updates the running ones; eval mode
    /// uses the running statistics.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_inner(xs, train, false)
    }

    /// `relu(self.forward_t(xs, train))`, as one op.
    pub fn forward_relu_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_inner(xs, train, true)
    }

    /// Eval mode as `y = scale·x + shift` per channel: `scale = γ/√(running_var + ε)`,
    /// `shift = β − running_mean·scale`.
    pub fn eval_affine(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        let f64s = |t: &Tensor| t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>();
        let (g, b) = (f64s(&self.weight)?, f64s(&self.bias)?);
        let (rm, rv) = (f64s(self.running_mean.as_tensor())?, f64s(self.running_var.as_tensor())?);
        let scale: Vec<f64> = g.iter().zip(&rv).map(|(g, v)| g / (v + EPS).sqrt()).collect();
        let shift = b.iter().zip(&rm).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        Ok((scale, shift))
    }

    fn forward_inner(&self, xs: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        if xs.rank() != 4 || xs.dim(1)? != c {
            candle_core::bail!("batch norm: expected [n, {c}, h, w], got {:?}", xs.dims())
        }
        if !train {
            let (scale, shift) = self.eval_affine()?;
            let dev = xs.device();
            let scale = Tensor::new(scale, dev)?.to_dtype(xs.dtype())?.reshape((1, c, 1, 1))?;
            let shift = Tensor::new(shift, dev)?.to_dtype(xs.dtype())?.reshape((1, c, 1, 1))?;
            let ys = xs.broadcast_mul(&scale)?.broadcast_add(&shift)?;
            return if relu { ys.relu() } else { Ok(ys) };
        }
        let stats: BatchStats = Arc::new(Mutex::new(None));
        let ys = xs.contiguous()?.apply_op3(&self.weight, &self.bias, BnTrain { stats: stats.clone(), relu })?;
        let (mean, var) = stats.lock().expect("stats lock").clone().expect("the forward filled the statistics");
        let (n, _, h, w) = xs.dims4()?;
        let count = (n * h * w) as f64;
        let unbiased = if count > 1.0 { count / (count - 1.0) } else { 1.0 };
        let dev = xs.device();
        let rm = ((self.running_mean.as_tensor() * (1.0 - MOMENTUM))? + (Tensor::new(mean, dev)?.to_dtype(xs.dtype())? * MOMENTUM)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - MOMENTUM))? + (Tensor::new(var, dev)?.to_dtype(xs.dtype())? * (MOMENTUM * unbiased))?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(ys)
    }
}

/// Per-channel mean and biased variance of a contiguous `[n, c, hw]` buffer, in f64.
fn channel_stats<T: WithDType>(xs: &[T], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (s, s2) = channel_sums(xs, (n, c, hw), ch);
            let m = (n * hw) as f64;
            let mean = s / m;
            (mean, (s2 / m - mean * mean).max(0.0))
        })
        .collect()
}

/// Accumulator lanes of the sums: element `i` of a plane goes to lane `i mod LANES`, the tail
/// after the last full group straight to the total. Independent lanes let the loop run in
/// vector registers; one running sum would chain every addition to the last.
const LANES: usize = 8;

multiversion! {
    /// `(Σx, Σx²)` of channel `ch` over the `n` planes of a contiguous `[n, c, hw]` buffer, in
    /// f64, plane by plane. One call per channel, with one scratch run: on the small maps of the
    /// last stages (12–42 elements a plane), zeroing a run per plane cost more than the sums.
    fn channel_sums<T: WithDType>(xs: &[T], dims: (usize, usize, usize), ch: usize) -> (f64, f64) {
        let (n, c, hw) = dims;
        let mut wide = [0f64; WIDEN];
        let (mut s, mut s2) = (0f64, 0f64);
        for b in 0..n {
            let (ps, ps2) = plane_sums(&xs[(b * c + ch) * hw..(b * c + ch + 1) * hw], &mut wide);
            s += ps;
            s2 += ps2;
        }
        (s, s2)
    }
}

/// `(Σx, Σx²)` of one plane, in f64, widened through `wide`.
#[inline(always)]
fn plane_sums<T: WithDType>(x: &[T], wide: &mut [f64; WIDEN]) -> (f64, f64) {
    let (mut a, mut b) = ([0f64; LANES], [0f64; LANES]);
    let (groups, tail) = x.as_chunks::<LANES>();
    for run in groups.chunks(WIDEN / LANES) {
        // Widened a run at a time, then each sum in its own loop: written as one loop, the
        // conversions stay scalar and the vectorizer pairs a[j] with b[j] (two-wide).
        let wide = &mut wide[..run.len() * LANES];
        for (w, v) in wide.iter_mut().zip(run.as_flattened()) {
            *w = v.to_f64();
        }
        let wide = wide.as_chunks::<LANES>().0;
        for g in wide {
            for j in 0..LANES {
                a[j] += g[j];
            }
        }
        for g in wide {
            for j in 0..LANES {
                b[j] += g[j] * g[j];
            }
        }
    }
    let (mut s, mut s2) = (a.iter().sum::<f64>(), b.iter().sum::<f64>());
    for v in tail {
        let v = v.to_f64();
        s += v;
        s2 += v * v;
    }
    (s, s2)
}

/// Elements per widened run in [`plane_sums`] and [`plane_grad_sums`] (a multiple of
/// [`LANES`]).
const WIDEN: usize = 256;

/// Elements per task of the elementwise passes, whole planes at a time: the small maps of the
/// last stages (12–42 elements) would otherwise pay a call and a dispatch per plane.
const RUN: usize = 4096;

/// Planes per task of the elementwise passes for planes of `hw` elements.
fn planes_per_run(hw: usize) -> usize {
    (RUN / hw.max(1)).max(1)
}

multiversion! {
    /// `out = x·scale + shift` plane by plane, clamped at 0 with `relu`: `out` and `x` are whole
    /// planes of `hw` elements, the first of them plane `first` of the batch, whose channel is
    /// its index mod `coef.len()`, `coef[ch] = [scale, shift]`.
    fn planes_affine<T: WithDType>(out: &mut [MaybeUninit<T>], x: &[T], hw: usize, first: usize, coef: &[[T; 2]], relu: bool) {
        let zero = T::zero();
        for (j, (out, x)) in out.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
            let [scale, shift] = coef[(first + j) % coef.len()];
            if relu {
                for (o, &x) in out.iter_mut().zip(x) {
                    let y = x * scale + shift;
                    o.write(if y < zero { zero } else { y });
                }
            } else {
                for (o, &x) in out.iter_mut().zip(x) {
                    o.write(x * scale + shift);
                }
            }
        }
    }
}

multiversion! {
    /// `(Σd, Σd·(x − mean))` of channel `ch` over the `n` planes of contiguous `[n, c, hw]`
    /// buffers `[x, dy, y]`, in f64, plane by plane, `d` as in [`plane_grad_sums`]; one scratch
    /// for all, as in [`channel_sums`].
    fn channel_grad_sums<T: WithDType>(bufs: [&[T]; 3], dims: (usize, usize, usize), ch: usize, mean: f64, relu: bool) -> (f64, f64) {
        let ([xs, dy, ys], (n, c, hw)) = (bufs, dims);
        let mut wide = ([0f64; WIDEN], [0f64; WIDEN]);
        let (mut sdy, mut sdyx) = (0f64, 0f64);
        for b in 0..n {
            let p = (b * c + ch) * hw..(b * c + ch + 1) * hw;
            let (s, sx) = plane_grad_sums(&xs[p.clone()], &dy[p.clone()], &ys[p], mean, relu, &mut wide);
            sdy += s;
            sdyx += sx;
        }
        (sdy, sdyx)
    }
}

/// `(Σd, Σd·(x − mean))` of one plane in f64, where `d` is `dy`, or 0 where `relu` and the
/// forward's output `y` is not positive; widened through `wide`.
#[inline(always)]
fn plane_grad_sums<T: WithDType>(x: &[T], dy: &[T], y: &[T], mean: f64, relu: bool, wide: &mut ([f64; WIDEN], [f64; WIDEN])) -> (f64, f64) {
    let zero = T::zero();
    let (mut a, mut b) = ([0f64; LANES], [0f64; LANES]);
    let (wd, wx) = wide;
    let full = x.len() / LANES * LANES;
    for start in (0..full).step_by(WIDEN) {
        // Widened a run at a time, then each sum in its own loop, as in `plane_sums`.
        let len = WIDEN.min(full - start);
        let (wd, wx) = (&mut wd[..len], &mut wx[..len]);
        for ((w, &dy), &y) in wd.iter_mut().zip(&dy[start..start + len]).zip(&y[start..start + len]) {
            *w = (if relu & (y <= zero) { zero } else { dy }).to_f64();
        }
        for (w, &x) in wx.iter_mut().zip(&x[start..start + len]) {
            *w = x.to_f64() - mean;
        }
        let (wd, wx) = (wd.as_chunks::<LANES>().0, wx.as_chunks::<LANES>().0);
        for d in wd {
            for j in 0..LANES {
                a[j] += d[j];
            }
        }
        for (d, c) in wd.iter().zip(wx) {
            for j in 0..LANES {
                b[j] += d[j] * c[j];
            }
        }
    }
    let (mut s, mut sx) = (a.iter().sum::<f64>(), b.iter().sum::<f64>());
    for i in full..x.len() {
        let d = (if relu & (y[i] <= zero) { zero } else { dy[i] }).to_f64();
        s += d;
        sx += d * (x[i].to_f64() - mean);
    }
    (s, sx)
}

multiversion! {
    /// `dx = a·d + b·(x − mean) + c0` plane by plane, `d` as in [`plane_grad_sums`]: `out`, `x`,
    /// `dy` and `y` are whole planes of `hw` elements from plane `first` of the batch on, whose
    /// channel is its index mod `coef.len()`, `coef[ch] = [a, b, c0, mean]`.
    fn planes_grad<T: WithDType>(out: &mut [MaybeUninit<T>], bufs: [&[T]; 3], hw: usize, first: usize, coef: &[[T; 4]], relu: bool) {
        let [x, dy, y] = bufs;
        let zero = T::zero();
        let planes = out.chunks_mut(hw).zip(x.chunks(hw)).zip(dy.chunks(hw)).zip(y.chunks(hw));
        for (j, (((out, x), dy), y)) in planes.enumerate() {
            let [a, b, c0, mean] = coef[(first + j) % coef.len()];
            for (((o, &x), &dy), &y) in out.iter_mut().zip(x).zip(dy).zip(y) {
                let d = if relu & (y <= zero) { zero } else { dy };
                o.write(a * d + b * (x - mean) + c0);
            }
        }
    }
}

/// Per-channel batch mean and biased variance, handed from the op to the running-stats update
/// and kept for the backward.
type BatchStats = Arc<Mutex<Option<MeanVar>>>;

/// Per-channel means and biased variances.
type MeanVar = (Vec<f64>, Vec<f64>);

/// Training-mode forward `(x, γ, β) → y`, clamped at 0 with `relu`; leaves the batch statistics
/// for the running update.
struct BnTrain {
    stats: BatchStats,
    relu: bool,
}

fn forward<T: WithDType>(xs: &[T], g: &[T], b: &[T], dims: (usize, usize, usize), relu: bool) -> (Vec<T>, Vec<(f64, f64)>) {
    let (n, c, hw) = dims;
    let stats = channel_stats(xs, n, c, hw);
    let coef: Vec<[T; 2]> = stats
        .iter()
        .enumerate()
        .map(|(ch, &(mean, var))| {
            let scale = g[ch].to_f64() / (var + EPS).sqrt();
            [scale, b[ch].to_f64() - mean * scale].map(T::from_f64)
        })
        .collect();
    let run = planes_per_run(hw);
    let fill = |out: &mut [MaybeUninit<T>]| {
        out.par_chunks_mut(run * hw).zip(xs.par_chunks(run * hw)).enumerate().for_each(|(i, (o, x))| {
            planes_affine(o, x, hw, i * run, &coef, relu);
        })
    };
    // SAFETY: the chunks cover the vector and every element of each is written.
    (unsafe { written_vec(xs.len(), fill) }, stats)
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let dims = (n, c, h * w);
        let (out, stats) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(b)) => {
                let (o, s) = forward(contiguous(x, l1, "batch norm: inputs")?, contiguous(g, l2, "batch norm: inputs")?, contiguous(b, l3, "batch norm: inputs")?, dims, self.relu);
                (CpuStorage::F32(o), s)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => {
                let (o, s) = forward(contiguous(x, l1, "batch norm: inputs")?, contiguous(g, l2, "batch norm: inputs")?, contiguous(b, l3, "batch norm: inputs")?, dims, self.relu);
                (CpuStorage::F64(o), s)
            }
            _ => candle_core::bail!("batch norm: unsupported or mixed dtypes ({:?})", s1.dtype()),
        };
        *self.stats.lock().expect("stats lock") = Some(stats.into_iter().unzip());
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, s3: &CudaStorage, l3: &Layout) -> Result<(CudaStorage, Shape)> {
        let (out, stats) = float_dispatch!("batch norm", s1.dtype(), |T| cuda_forward::<T>(self.relu, (s1, l1), (s2, l2), (s3, l3))?);
        *self.stats.lock().expect("stats lock") = Some(stats);
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, g: &Tensor, _b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let gamma = g.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let (mean, var) = self.stats.lock().expect("stats lock").clone().expect("the forward filled the statistics");
        let op = BnTrainBackward { gamma, stats: mean.into_iter().zip(var).collect(), relu: self.relu };
        let packed = x.contiguous()?.apply_op3_no_bwd(&grad.contiguous()?, &res.contiguous()?, &op)?;
        let len = n * c * h * w;
        let dx = packed.narrow(0, 0, len)?.reshape((n, c, h, w))?;
        let dg = packed.narrow(0, len, c)?;
        let db = packed.narrow(0, len + c, c)?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

/// `(x, dy, y) → [dx (n·c·h·w), dγ (c), dβ (c)]` packed in one vector; `y`, the forward's output,
/// masks `dy` when the op included the ReLU.
struct BnTrainBackward {
    gamma: Vec<f64>,
    /// The forward's per-channel mean and biased variance.
    stats: Vec<(f64, f64)>,
    relu: bool,
}

fn backward<T: WithDType>(xs: &[T], dy: &[T], ys: &[T], op: &BnTrainBackward, (n, c, hw): (usize, usize, usize)) -> Vec<T> {
    let stats = &op.stats;
    let m = (n * hw) as f64;
    // Per channel: Σd and Σd·(x − mean), d the gradient reaching the normalization: dy, or dy
    // where the ReLU let the output through.
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| channel_grad_sums([xs, dy, ys], (n, c, hw), ch, stats[ch].0, op.relu))
        .collect();
    let fill = |out: &mut [MaybeUninit<T>]| {
        let (dx, rest) = out.split_at_mut(xs.len());
        let coef: Vec<[T; 4]> = (0..c)
            .map(|ch| {
                let (mean, var) = stats[ch];
                let inv = 1.0 / (var + EPS).sqrt();
                let (sdy, sdyx) = sums[ch];
                // dx = k·(m·d − Σd − x̂·Σd·x̂) with x̂ = (x − mean)·inv and Σd·x̂ = inv·sdyx, as
                // a·d + b·(x − mean) + c0 in the element type.
                let k = op.gamma[ch] * inv / m;
                [k * m, -k * inv * inv * sdyx, -k * sdy, mean].map(T::from_f64)
            })
            .collect();
        let run = planes_per_run(hw);
        dx.par_chunks_mut(run * hw).enumerate().for_each(|(i, o)| {
            let p = i * run * hw..i * run * hw + o.len();
            planes_grad(o, [&xs[p.clone()], &dy[p.clone()], &ys[p]], hw, i * run, &coef, op.relu);
        });
        for ch in 0..c {
            let inv = 1.0 / (stats[ch].1 + EPS).sqrt();
            rest[ch].write(T::from_f64(sums[ch].1 * inv));
            rest[c + ch].write(T::from_f64(sums[ch].0));
        }
    };
    // SAFETY: dx is covered by the chunks, each written in full, and the 2·c sums follow.
    unsafe { written_vec(xs.len() + 2 * c, fill) }
}

impl CustomOp3 for BnTrainBackward {
    fn name(&self) -> &'static str {
        "batch-norm-train-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let dims = (n, c, h * w);
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(d), CpuStorage::F32(y)) => CpuStorage::F32(backward(contiguous(x, l1, "batch norm: inputs")?, contiguous(d, l2, "batch norm: inputs")?, contiguous(y, l3, "batch norm: inputs")?, self, dims)),
            (CpuStorage::F64(x), CpuStorage::F64(d), CpuStorage::F64(y)) => CpuStorage::F64(backward(contiguous(x, l1, "batch norm: inputs")?, contiguous(d, l2, "batch norm: inputs")?, contiguous(y, l3, "batch norm: inputs")?, self, dims)),
            _ => candle_core::bail!("batch norm backward: unsupported or mixed dtypes"),
        };
        Ok((out, Shape::from(n * c * h * w + 2 * c)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, s3: &CudaStorage, l3: &Layout) -> Result<(CudaStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let out = float_dispatch!("batch norm backward", s1.dtype(), |T| cuda_backward::<T>(self, (s1, l1), (s2, l2), (s3, l3))?);
        Ok((out, Shape::from(n * c * h * w + 2 * c)))
    }
}

/// The GPU forward's host step, from the kernel's per-channel sums `[Σx (c), Σx² (c)]` over `m`
/// elements each: the batch statistics and the apply kernel's `[scale (c), shift (c)]`, by the
/// formulas of [`channel_stats`] and [`forward`].
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn forward_coefficients(sums: &[f64], gamma: &[f64], beta: &[f64], m: f64) -> (MeanVar, Vec<f64>) {
    let c = gamma.len();
    let (mean, var): (Vec<f64>, Vec<f64>) = (0..c)
        .map(|ch| {
            let mean = sums[ch] / m;
            (mean, (sums[c + ch] / m - mean * mean).max(0.0))
        })
        .unzip();
    let scale: Vec<f64> = (0..c).map(|ch| gamma[ch] / (var[ch] + EPS).sqrt()).collect();
    let shift = (0..c).map(|ch| beta[ch] - mean[ch] * scale[ch]);
    let coef = scale.iter().copied().chain(shift).collect();
    ((mean, var), coef)
}

/// The GPU backward's host step, from the kernel's per-channel `[Σd (c), Σd·(x − mean) (c)]` over
/// `m` elements each: the apply kernel's `[a, b, c0, mean]` (`dx = a·d + b·(x − mean) + c0`, as in
/// [`backward`]) and the packed output's tail `[dγ (c), dβ (c)]`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn backward_coefficients(sums: &[f64], op: &BnTrainBackward, m: f64) -> (Vec<f64>, Vec<f64>) {
    let c = op.stats.len();
    let mut coef = vec![0f64; 4 * c];
    let mut tail = vec![0f64; 2 * c];
    for ch in 0..c {
        let (mean, var) = op.stats[ch];
        let inv = 1.0 / (var + EPS).sqrt();
        let (sdy, sdyx) = (sums[ch], sums[c + ch]);
        let k = op.gamma[ch] * inv / m;
        coef[ch] = k * m;
        coef[c + ch] = -k * inv * inv * sdyx;
        coef[2 * c + ch] = -k * sdy;
        coef[3 * c + ch] = mean;
        tail[ch] = sdyx * inv;
        tail[c + ch] = sdy;
    }
    (coef, tail)
}

/// [`forward`] on the GPU: the per-channel sums in one block per channel (f64), the
/// coefficients on the host from the same formulas, the output in one elementwise pass.
#[cfg(feature = "cuda")]
fn cuda_forward<T: cuda::Float>(relu: bool, (s1, l1): (&CudaStorage, &Layout), g: (&CudaStorage, &Layout), b: (&CudaStorage, &Layout)) -> Result<(CudaStorage, MeanVar)> {
    let dev = &s1.device;
    let (n, c, h, w) = l1.shape().dims4()?;
    let (hw, total) = (h * w, l1.shape().elem_count());
    let x = cuda::view::<T>(s1, l1, "batch norm: inputs")?;
    let host = |(s, l): (&CudaStorage, &Layout)| -> Result<Vec<f64>> { Ok(dev.clone_dtoh(&cuda::view::<T>(s, l, "batch norm: inputs")?)?.into_iter().map(|v| v.to_f64()).collect()) };
    let (gamma, beta) = (host(g)?, host(b)?);
    let mut sums = dev.alloc_zeros::<f64>(2 * c)?;
    let (ni, ci, hwi) = (cuda::int(n)?, cuda::int(c)?, cuda::int(hw)?);
    cuda::launch!(dev, T, "bn_sums", cuda::per_channel(c); &x, &mut sums; ni, ci, hwi);
    let sums = dev.clone_dtoh(&sums)?;
    let (stats, coef) = forward_coefficients(&sums, &gamma, &beta, (n * hw) as f64);
    let coef = cuda::upload::<T>(dev, coef)?;
    let mut y = cuda::uninit::<T>(dev, total)?;
    let relu = i32::from(relu);
    cuda::launch!(dev, T, "channel_affine", cuda::grid(total); &x, &mut y, &coef; total, ci, hw, relu);
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), stats))
}

/// [`backward`] on the GPU: the two per-channel sums in one block per channel (f64), the
/// coefficients and dγ, dβ on the host, dx in one elementwise pass.
#[cfg(feature = "cuda")]
fn cuda_backward<T: cuda::Float>(op: &BnTrainBackward, (s1, l1): (&CudaStorage, &Layout), (s2, l2): (&CudaStorage, &Layout), (s3, l3): (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    let dev = &s1.device;
    let (n, c, h, w) = l1.shape().dims4()?;
    let (hw, total) = (h * w, l1.shape().elem_count());
    let what = "batch norm backward: inputs";
    let (x, dy, y) = (cuda::view::<T>(s1, l1, what)?, cuda::view::<T>(s2, l2, what)?, cuda::view::<T>(s3, l3, what)?);
    if dy.len() != total || y.len() != total || op.stats.len() != c {
        candle_core::bail!("batch norm backward: operands do not match the forward's [{n}, {c}, {h}, {w}]")
    }
    let mean: Vec<f64> = op.stats.iter().map(|s| s.0).collect();
    let mean_dev = dev.clone_htod(&mean)?;
    let mut sums = dev.alloc_zeros::<f64>(2 * c)?;
    let (ni, ci, hwi, relu) = (cuda::int(n)?, cuda::int(c)?, cuda::int(hw)?, i32::from(op.relu));
    cuda::launch!(dev, T, "bn_backward_sums", cuda::per_channel(c); &x, &dy, &y, &mean_dev, &mut sums; ni, ci, hwi, relu);
    let sums = dev.clone_dtoh(&sums)?;
    let (coef, tail) = backward_coefficients(&sums, op, (n * hw) as f64);
    let coef = cuda::upload::<T>(dev, coef)?;
    let mut out = cuda::uninit::<T>(dev, total + 2 * c)?;
    {
        let mut dx = out.slice_mut(..total);
        cuda::launch!(dev, T, "bn_backward_apply", cuda::grid(total); &x, &dy, &y, &coef, &mut dx; total, ci, hw, relu);
    }
    let tail: Vec<T> = tail.into_iter().map(T::from_f64).collect();
    dev.memcpy_htod(&tail, &mut out.slice_mut(total..))?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// Same outputs, gradients and running statistics as candle's BatchNorm (which follows
    /// PyTorch) in f64.
    #[test]
    fn matches_candle_batch_norm() -> Result<()> {
        let dev = Device::Cpu;
        let (vm_a, vm_b) = (VarMap::new(), VarMap::new());
        let ours = BatchNorm2d::new(3, VarBuilder::from_varmap(&vm_a, DType::F64, &dev))?;
        let cfg = candle_nn::BatchNormConfig { eps: EPS, momentum: MOMENTUM, ..Default::default() };
        let theirs = candle_nn::batch_norm(3, cfg, VarBuilder::from_varmap(&vm_b, DType::F64, &dev))?;
        // Non-trivial γ and β on both.
        for vm in [&vm_a, &vm_b] {
            let data = vm.data().lock().unwrap();
            data["weight"].set(&Tensor::new(&[0.5f64, 1.5, -2.0], &dev)?)?;
            data["bias"].set(&Tensor::new(&[0.1f64, -0.3, 0.7], &dev)?)?;
        }
        let x = Var::from_tensor(&((Tensor::randn(0f64, 1., (4, 3, 5, 6), &dev)? * 3.0)? + 1.0)?)?;
        let up = Tensor::randn(0f64, 1., (4, 3, 5, 6), &dev)?;
        let (ya, yb) = (ours.forward_t(x.as_tensor(), true)?, candle_core::ModuleT::forward_t(&theirs, x.as_tensor(), true)?);
        let diff = |a: &Tensor, b: &Tensor| -> Result<f64> { (a - b)?.abs()?.max_all()?.to_scalar::<f64>() };
        assert!(diff(&ya, &yb)? < 1e-12);
        let (ga, gb) = ((ya * &up)?.sum_all()?.backward()?, (yb * &up)?.sum_all()?.backward()?);
        assert!(diff(ga.get(&x).unwrap(), gb.get(&x).unwrap())? < 1e-10, "input gradient");
        for name in ["weight", "bias"] {
            let (a, b) = (&vm_a.data().lock().unwrap()[name], &vm_b.data().lock().unwrap()[name]);
            assert!(diff(ga.get(a.as_tensor()).unwrap(), gb.get(b.as_tensor()).unwrap())? < 1e-10, "{name} gradient");
        }
        for name in ["running_mean", "running_var"] {
            let (a, b) = (vm_a.data().lock().unwrap()[name].as_tensor().clone(), vm_b.data().lock().unwrap()[name].as_tensor().clone());
            assert!(diff(&a, &b)? < 1e-12, "{name}");
        }
        // Eval mode with the updated running statistics.
        let (ea, eb) = (ours.forward_t(x.as_tensor(), false)?, candle_core::ModuleT::forward_t(&theirs, x.as_tensor(), false)?);
        assert!(diff(&ea, &eb)? < 1e-12);
        assert!(diff(&ours.forward_relu_t(x.as_tensor(), false)?, &eb.relu()?)? < 1e-12);
        // With the ReLU fused: output and every gradient equal candle's BatchNorm then ReLU.
        let (ya, yb) = (ours.forward_relu_t(x.as_tensor(), true)?, candle_core::ModuleT::forward_t(&theirs, x.as_tensor(), true)?.relu()?);
        assert!(diff(&ya, &yb)? < 1e-12);
        let (ga, gb) = ((ya * &up)?.sum_all()?.backward()?, (yb * &up)?.sum_all()?.backward()?);
        assert!(diff(ga.get(&x).unwrap(), gb.get(&x).unwrap())? < 1e-10, "input gradient through the ReLU");
        for name in ["weight", "bias"] {
            let (a, b) = (&vm_a.data().lock().unwrap()[name], &vm_b.data().lock().unwrap()[name]);
            assert!(diff(ga.get(a.as_tensor()).unwrap(), gb.get(b.as_tensor()).unwrap())? < 1e-10, "{name} gradient through the ReLU");
        }
        Ok(())
    }
}

/// The CUDA kernels of this op, compiled for the host (`crate::emulated`), with the GPU path's
/// host steps, against the CPU forward and backward.
#[cfg(test)]
mod emulated_tests {
    use super::*;
    use crate::emulated::{data, kernels, max_diff};

    type Sums = unsafe extern "C" fn(*const f64, *mut f64, i32, i32, i32);
    type Affine = unsafe extern "C" fn(*const f64, *mut f64, *const f64, usize, i32, usize, i32);
    type BackwardSums = unsafe extern "C" fn(*const f64, *const f64, *const f64, *const f64, *mut f64, i32, i32, i32, i32);
    type BackwardApply = unsafe extern "C" fn(*const f64, *const f64, *const f64, *const f64, *mut f64, usize, i32, usize, i32);

    #[test]
    fn the_gpu_forward_and_backward_are_the_cpu_ones() {
        let k = kernels();
        // SAFETY: the kernels' C signatures.
        let (sums_k, affine, bsums_k, bapply) = unsafe {
            (k.get::<Sums>("bn_sums_f64"), k.get::<Affine>("channel_affine_f64"), k.get::<BackwardSums>("bn_backward_sums_f64"), k.get::<BackwardApply>("bn_backward_apply_f64"))
        };
        let (n, c, hw) = (3, 4, 7 * 5);
        let total = n * c * hw;
        let x: Vec<f64> = data(total, 1).iter().map(|v| 3.0 * v + 1.0).collect();
        let (gamma, beta) = (vec![0.5, 1.5, -2.0, 1.0], vec![0.1, -0.3, 0.7, 0.0]);
        let dy = data(total, 2);
        for relu in [false, true] {
            let (want_y, want_stats) = forward(&x, &gamma, &beta, (n, c, hw), relu);
            // Forward: per-channel sums (one block per channel), host coefficients, apply.
            let mut sums = vec![0.0; 2 * c];
            for ch in 0..c {
                k.set_block(ch);
                // SAFETY: x holds n·c·hw elements, sums 2·c.
                unsafe { sums_k(x.as_ptr(), sums.as_mut_ptr(), n as i32, c as i32, hw as i32) };
            }
            let ((mean, var), coef) = forward_coefficients(&sums, &gamma, &beta, (n * hw) as f64);
            k.set_block(0);
            let mut y = vec![f64::NAN; total];
            // SAFETY: as above, coef 2·c.
            unsafe { affine(x.as_ptr(), y.as_mut_ptr(), coef.as_ptr(), total, c as i32, hw, i32::from(relu)) };
            assert!(max_diff(&y, &want_y) < 1e-12, "output, relu {relu}");
            let (want_mean, want_var): (Vec<f64>, Vec<f64>) = want_stats.iter().copied().unzip();
            assert!(max_diff(&mean, &want_mean) < 1e-12 && max_diff(&var, &want_var) < 1e-12, "statistics");

            // Backward: the two sums, host coefficients, apply, then dγ and dβ from the host.
            let op = BnTrainBackward { gamma: gamma.clone(), stats: mean.iter().copied().zip(var.iter().copied()).collect(), relu };
            let want = backward(&x, &dy, &y, &op, (n, c, hw));
            let mut bsums = vec![0.0; 2 * c];
            for ch in 0..c {
                k.set_block(ch);
                // SAFETY: x, dy, y hold n·c·hw elements, mean c, bsums 2·c.
                unsafe { bsums_k(x.as_ptr(), dy.as_ptr(), y.as_ptr(), mean.as_ptr(), bsums.as_mut_ptr(), n as i32, c as i32, hw as i32, i32::from(relu)) };
            }
            let (coef, tail) = backward_coefficients(&bsums, &op, (n * hw) as f64);
            k.set_block(0);
            let mut dx = vec![f64::NAN; total];
            // SAFETY: as above, coef 4·c.
            unsafe { bapply(x.as_ptr(), dy.as_ptr(), y.as_ptr(), coef.as_ptr(), dx.as_mut_ptr(), total, c as i32, hw, i32::from(relu)) };
            dx.extend(tail);
            assert!(max_diff(&dx, &want) < 1e-12, "dx, dγ, dβ, relu {relu}");
        }
    }
}
