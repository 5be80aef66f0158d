//! Batch normalization over `[n, c, h, w]` with PyTorch's semantics (biased batch variance in the
//! output, unbiased in the running variance, momentum 0.1, eps 1e-5), as one fused op in training:
//! one pass for the statistics, one for the output, and a closed-form backward
//! (dx = γ·σ⁻¹/N · (N·dy − Σdy − x̂·Σ(dy·x̂)), dγ = Σ dy·x̂, dβ = Σ dy) instead of the dozen
//! differentiable elementwise passes, transposes and copies of candle's `BatchNorm`. Variable names
//! are torchvision's (`weight`, `bias`, `running_mean`, `running_var`).
//!
//! Checked against finite differences (`tests/gradients.rs`) and the PyTorch fixtures
//! (`tests/parity.rs`, train-mode output and running statistics).

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, Var, WithDType};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use crate::pool::contiguous;

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
        let c = self.weight.dim(0)?;
        if xs.rank() != 4 || xs.dim(1)? != c {
            candle_core::bail!("batch norm: expected [n, {c}, h, w], got {:?}", xs.dims())
        }
        if !train {
            let scale = (&self.weight / (self.running_var.as_detached_tensor() + EPS)?.sqrt()?)?;
            let shift = (&self.bias - (self.running_mean.as_detached_tensor() * &scale)?)?;
            return xs.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?.broadcast_add(&shift.reshape((1, c, 1, 1))?);
        }
        let stats: BatchStats = Arc::new(Mutex::new(None));
        let ys = xs.contiguous()?.apply_op3(&self.weight, &self.bias, BnTrain { stats: stats.clone() })?;
        let (mean, var) = stats.lock().expect("stats lock").take().expect("the forward filled the statistics");
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
            let (mut s, mut s2) = (0f64, 0f64);
            for b in 0..n {
                for &v in &xs[(b * c + ch) * hw..(b * c + ch + 1) * hw] {
                    let v = v.to_f64();
                    s += v;
                    s2 += v * v;
                }
            }
            let m = (n * hw) as f64;
            let mean = s / m;
            (mean, (s2 / m - mean * mean).max(0.0))
        })
        .collect()
}

/// Per-channel batch mean and biased variance, handed from the op to the running-stats update.
type BatchStats = Arc<Mutex<Option<(Vec<f64>, Vec<f64>)>>>;

/// Training-mode forward `(x, γ, β) → y`; leaves the batch statistics for the running update.
struct BnTrain {
    stats: BatchStats,
}

fn forward<T: WithDType>(xs: &[T], g: &[T], b: &[T], dims: (usize, usize, usize)) -> (Vec<T>, Vec<(f64, f64)>) {
    let (n, c, hw) = dims;
    let stats = channel_stats(xs, n, c, hw);
    let coef: Vec<(f64, f64)> = stats
        .iter()
        .enumerate()
        .map(|(ch, &(mean, var))| {
            let scale = g[ch].to_f64() / (var + EPS).sqrt();
            (scale, b[ch].to_f64() - mean * scale)
        })
        .collect();
    let mut out = vec![T::zero(); xs.len()];
    out.par_chunks_mut(hw).zip(xs.par_chunks(hw)).enumerate().for_each(|(i, (o, x))| {
        let (scale, shift) = coef[i % c];
        for (o, &x) in o.iter_mut().zip(x) {
            *o = T::from_f64(x.to_f64() * scale + shift);
        }
    });
    (out, stats)
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
                let (o, s) = forward(contiguous(x, l1, "batch norm: inputs")?, contiguous(g, l2, "batch norm: inputs")?, contiguous(b, l3, "batch norm: inputs")?, dims);
                (CpuStorage::F32(o), s)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => {
                let (o, s) = forward(contiguous(x, l1, "batch norm: inputs")?, contiguous(g, l2, "batch norm: inputs")?, contiguous(b, l3, "batch norm: inputs")?, dims);
                (CpuStorage::F64(o), s)
            }
            _ => candle_core::bail!("batch norm: unsupported or mixed dtypes ({:?})", s1.dtype()),
        };
        *self.stats.lock().expect("stats lock") = Some(stats.into_iter().unzip());
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, g: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let packed = x.contiguous()?.apply_op3_no_bwd(g, &grad.contiguous()?, &BnTrainBackward)?;
        let len = n * c * h * w;
        let dx = packed.narrow(0, 0, len)?.reshape((n, c, h, w))?;
        let dg = packed.narrow(0, len, c)?;
        let db = packed.narrow(0, len + c, c)?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

/// `(x, γ, dy) → [dx (n·c·h·w), dγ (c), dβ (c)]` packed in one vector.
struct BnTrainBackward;

fn backward<T: WithDType>(xs: &[T], g: &[T], dy: &[T], (n, c, hw): (usize, usize, usize)) -> Vec<T> {
    let stats = channel_stats(xs, n, c, hw);
    let m = (n * hw) as f64;
    // Per channel: Σdy and Σdy·x̂.
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mean, var) = stats[ch];
            let inv = 1.0 / (var + EPS).sqrt();
            let (mut sdy, mut sdyx) = (0f64, 0f64);
            for b in 0..n {
                let r = (b * c + ch) * hw..(b * c + ch + 1) * hw;
                for (&x, &d) in xs[r.clone()].iter().zip(&dy[r]) {
                    let d = d.to_f64();
                    sdy += d;
                    sdyx += d * (x.to_f64() - mean) * inv;
                }
            }
            (sdy, sdyx)
        })
        .collect();
    let mut out = vec![T::zero(); xs.len() + 2 * c];
    let (dx, rest) = out.split_at_mut(xs.len());
    dx.par_chunks_mut(hw).zip(xs.par_chunks(hw)).zip(dy.par_chunks(hw)).enumerate().for_each(|(i, ((o, x), d))| {
        let ch = i % c;
        let (mean, var) = stats[ch];
        let inv = 1.0 / (var + EPS).sqrt();
        let (sdy, sdyx) = sums[ch];
        let k = g[ch].to_f64() * inv / m;
        for ((o, &x), &d) in o.iter_mut().zip(x).zip(d) {
            let xhat = (x.to_f64() - mean) * inv;
            *o = T::from_f64(k * (m * d.to_f64() - sdy - xhat * sdyx));
        }
    });
    for ch in 0..c {
        rest[ch] = T::from_f64(sums[ch].1);
        rest[c + ch] = T::from_f64(sums[ch].0);
    }
    out
}

impl CustomOp3 for BnTrainBackward {
    fn name(&self) -> &'static str {
        "batch-norm-train-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let dims = (n, c, h * w);
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(d)) => CpuStorage::F32(backward(contiguous(x, l1, "batch norm: inputs")?, contiguous(g, l2, "batch norm: inputs")?, contiguous(d, l3, "batch norm: inputs")?, dims)),
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(d)) => CpuStorage::F64(backward(contiguous(x, l1, "batch norm: inputs")?, contiguous(g, l2, "batch norm: inputs")?, contiguous(d, l3, "batch norm: inputs")?, dims)),
            _ => candle_core::bail!("batch norm backward: unsupported or mixed dtypes"),
        };
        Ok((out, Shape::from(n * c * h * w + 2 * c)))
    }
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
        Ok(())
    }
}
