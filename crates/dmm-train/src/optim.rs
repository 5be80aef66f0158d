//! SGD with momentum and weight decay on candle variables (the rule of
//! [`dmm_policy::SgdConfig::step_reference`], checked against it below), with momentum buffers
//! that checkpoints save and restore.
//!
//! The update runs in place, one pass over each variable and its momentum buffer together:
//! written as tensor arithmetic it took six passes and five fresh buffers per variable, and the
//! subjective branch's first layer alone holds 58.7 M weights at width 64. The buffers live outside
//! candle (a candle op can write only one tensor) and become tensors only for checkpoints.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp2, Layout, Shape, Tensor, Var, WithDType};
use rayon::prelude::*;
use candle_nn::VarMap;
use dmm_policy::SgdConfig;

use crate::Result;

/// The optimizer: configuration plus one momentum buffer per trained variable.
pub struct Sgd {
    config: SgdConfig,
    params: Vec<(String, Var)>,
    velocity: BTreeMap<String, Velocity>,
}

/// A momentum buffer, in its variable's dtype and element order: host memory for a CPU
/// variable, a tensor on the variable's device otherwise.
#[derive(Debug, Clone)]
enum Velocity {
    F32(Vec<f32>),
    F64(Vec<f64>),
    OnDevice(Tensor),
}

impl Velocity {
    /// A zero buffer for the variable `p`.
    fn zeros(p: &Tensor) -> Result<Self> {
        Ok(match p.dtype() {
            _ if !p.device().is_cpu() => Self::OnDevice(p.zeros_like()?),
            DType::F64 => Self::F64(vec![0.0; p.elem_count()]),
            _ => Self::F32(vec![0.0; p.elem_count()]),
        })
    }

    /// The buffer of `t`'s values, for the variable `p`.
    fn from_tensor(t: &Tensor, p: &Tensor) -> Result<Self> {
        if !p.device().is_cpu() {
            return Ok(Self::OnDevice(t.to_dtype(p.dtype())?.to_device(p.device())?.reshape(p.shape())?));
        }
        let t = t.flatten_all()?;
        Ok(match p.dtype() {
            DType::F64 => Self::F64(t.to_dtype(DType::F64)?.to_vec1()?),
            _ => Self::F32(t.to_dtype(DType::F32)?.to_vec1()?),
        })
    }
}

/// The momentum step as tensor arithmetic, for variables off the CPU (the in-place kernels are
/// CPU code): returns the new variable and buffer, `v ← m·v + s·g + λ·p`, `p ← p − η·v`.
fn momentum_tensors(p: &Tensor, g: &Tensor, v: &Tensor, lr: f64, momentum: f64, scale: f64, weight_decay: f64) -> Result<(Tensor, Tensor)> {
    let v = ((v * momentum)? + (g * scale)?)?;
    let v = if weight_decay != 0.0 { (v + (p * weight_decay)?)? } else { v };
    Ok(((p - (&v * lr)?)?, v))
}

/// Whether a variable is trained (batch-norm running statistics are not).
pub fn is_trainable(name: &str) -> bool {
    !name.contains("running_mean") && !name.contains("running_var")
}

impl Sgd {
    /// An optimizer over the trainable variables of `varmap`, in name order.
    pub fn new(varmap: &VarMap, config: SgdConfig) -> Self {
        let mut params: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .filter(|(k, _)| is_trainable(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self { config, params, velocity: BTreeMap::new() }
    }

    /// The global L2 norm of the gradients of the trained variables.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0f64;
        for (_, var) in &self.params {
            if let Some(g) = grads.get(var.as_tensor()) {
                sum += if g.device().is_cpu() { g.apply_op1_no_bwd(&SumSquares)? } else { g.to_dtype(DType::F64)?.sqr()?.sum_all()? }.to_scalar::<f64>()?;
            }
        }
        Ok(sum.sqrt())
    }

    /// One step with learning rate `lr`; variables without a gradient are left alone. With
    /// `clip`, gradients are scaled down so their global norm is at most `clip` first.
    pub fn step(&mut self, grads: &GradStore, lr: f64, clip: Option<f64>) -> Result<()> {
        let SgdConfig { momentum, weight_decay, .. } = self.config;
        let scale = match clip {
            Some(max) => {
                let norm = self.grad_norm(grads)?;
                if norm > max { max / norm } else { 1.0 }
            }
            None => 1.0,
        };
        for (name, var) in &self.params {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let (grad, param) = (grad.contiguous()?, var.as_tensor());
            if momentum == 0.0 {
                if param.device().is_cpu() {
                    param.inplace_op2(&grad, &Descend { lr, scale, weight_decay })?;
                } else {
                    var.set(&((param * (1.0 - lr * weight_decay))? - (grad * (lr * scale))?)?)?;
                }
                continue;
            }
            // A fresh buffer starts at zero, so the first step moves along the gradient itself.
            let v = match self.velocity.remove(name) {
                Some(v) => v,
                None => Velocity::zeros(param)?,
            };
            if let Velocity::OnDevice(v) = &v {
                let (p, v) = momentum_tensors(param, &grad, v, lr, momentum, scale, weight_decay)?;
                var.set(&p)?;
                self.velocity.insert(name.clone(), Velocity::OnDevice(v));
                continue;
            }
            let op = Momentum { velocity: Mutex::new(v), lr, momentum, scale, weight_decay };
            param.inplace_op2(&grad, &op)?;
            self.velocity.insert(name.clone(), op.velocity.into_inner().expect("velocity lock"));
        }
        Ok(())
    }

    /// The momentum buffers, by variable name (for checkpoints).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(self.velocity.len());
        for (name, var) in &self.params {
            let (shape, dev) = (var.shape(), var.device());
            let t = match self.velocity.get(name) {
                Some(Velocity::F32(v)) => Tensor::from_slice(v, shape, dev)?,
                Some(Velocity::F64(v)) => Tensor::from_slice(v, shape, dev)?,
                Some(Velocity::OnDevice(v)) => v.clone(),
                None => continue,
            };
            out.push((format!("velocity.{name}"), t));
        }
        Ok(out)
    }

    /// Restores buffers saved by [`Sgd::state`], in each variable's dtype; unknown names are
    /// ignored, and a buffer whose size differs from its variable's is an error.
    pub fn load_state(&mut self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.params {
            if let Some(v) = tensors.get(&format!("velocity.{name}")) {
                if v.elem_count() != var.elem_count() {
                    return Err(candle_core::Error::Msg(format!("momentum buffer {name}: {:?} for a variable of {:?}", v.dims(), var.dims())).into());
                }
                self.velocity.insert(name.clone(), Velocity::from_tensor(v, var.as_tensor())?);
            }
        }
        Ok(())
    }
}

/// Elements per parallel chunk of the update kernels.
const CHUNK: usize = 1 << 16;

/// The mutable contiguous elements of an in-place operand.
fn slice_mut<'a, T>(data: &'a mut [T], layout: &Layout, what: &str) -> candle_core::Result<&'a mut [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&mut data[a..b]),
        None => candle_core::bail!("{what}: operand must be contiguous"),
    }
}

fn slice<'a, T>(data: &'a [T], layout: &Layout, len: usize, what: &str) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) if b - a == len => Ok(&data[a..b]),
        Some(_) => candle_core::bail!("{what}: operands differ in size"),
        None => candle_core::bail!("{what}: operand must be contiguous"),
    }
}

/// One momentum step, in place on the variable `p` from its gradient `g`, updating the buffer
/// `v` in the same pass: `v ← m·v + s·g + λ·p`, then `p ← p − η·v`.
struct Momentum {
    velocity: Mutex<Velocity>,
    lr: f64,
    momentum: f64,
    scale: f64,
    weight_decay: f64,
}

impl Momentum {
    fn run<T: WithDType>(&self, p: &mut [T], g: &[T], v: &mut [T]) {
        let (m, s, wd, lr) = (T::from_f64(self.momentum), T::from_f64(self.scale), T::from_f64(self.weight_decay), T::from_f64(self.lr));
        p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(v.par_chunks_mut(CHUNK)).for_each(|((p, g), v)| {
            for ((p, &g), v) in p.iter_mut().zip(g).zip(v) {
                *v = m * *v + s * g + wd * *p;
                *p -= lr * *v;
            }
        });
    }

    /// [`Self::run`] on the operands' contiguous elements, after checking that the sizes agree.
    fn run_checked<T: WithDType>(&self, p: &mut [T], lp: &Layout, g: &[T], lg: &Layout, v: &mut [T]) -> candle_core::Result<()> {
        let name = "sgd-momentum";
        let p = slice_mut(p, lp, name)?;
        let g = slice(g, lg, p.len(), name)?;
        if v.len() != p.len() {
            candle_core::bail!("{name}: momentum buffer of {} for {} elements", v.len(), p.len())
        }
        self.run(p, g, v);
        Ok(())
    }
}

impl InplaceOp2 for Momentum {
    fn name(&self) -> &'static str {
        "sgd-momentum"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, lp: &Layout, g: &CpuStorage, lg: &Layout) -> candle_core::Result<()> {
        let name = self.name();
        let mut v = self.velocity.lock().expect("velocity lock");
        match (p, g, &mut *v) {
            (CpuStorage::F32(p), CpuStorage::F32(g), Velocity::F32(v)) => self.run_checked(p, lp, g, lg, v)?,
            (CpuStorage::F64(p), CpuStorage::F64(g), Velocity::F64(v)) => self.run_checked(p, lp, g, lg, v)?,
            _ => candle_core::bail!("{name}: variable, gradient and buffer must all be f32 or all f64"),
        }
        Ok(())
    }
}

/// `p ← p − η·(s·d + λ·p)`, in place on the variable `p`, along the direction `d`.
struct Descend {
    lr: f64,
    scale: f64,
    weight_decay: f64,
}

impl Descend {
    fn run<T: WithDType>(&self, p: &mut [T], d: &[T]) {
        let (keep, step) = (T::from_f64(1.0 - self.lr * self.weight_decay), T::from_f64(self.lr * self.scale));
        p.par_chunks_mut(CHUNK).zip(d.par_chunks(CHUNK)).for_each(|(p, d)| {
            for (p, &d) in p.iter_mut().zip(d) {
                *p = keep * *p - step * d;
            }
        });
    }
}

impl InplaceOp2 for Descend {
    fn name(&self) -> &'static str {
        "sgd-descend"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, lp: &Layout, d: &CpuStorage, ld: &Layout) -> candle_core::Result<()> {
        let name = self.name();
        match (p, d) {
            (CpuStorage::F32(p), CpuStorage::F32(d)) => {
                let p = slice_mut(p, lp, name)?;
                self.run(p, slice(d, ld, p.len(), name)?)
            }
            (CpuStorage::F64(p), CpuStorage::F64(d)) => {
                let p = slice_mut(p, lp, name)?;
                self.run(p, slice(d, ld, p.len(), name)?)
            }
            _ => candle_core::bail!("{name}: operands must both be f32 or both f64"),
        }
        Ok(())
    }
}

/// `Σ x²` in f64, as a scalar tensor.
struct SumSquares;

impl CustomOp1 for SumSquares {
    fn name(&self) -> &'static str {
        "sum-squares"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn sum<T: WithDType>(x: &[T]) -> f64 {
            // The chunks' sums added in order: the same total on every run.
            let chunks: Vec<f64> = x.par_chunks(CHUNK).map(|c| c.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>()).collect();
            chunks.iter().sum()
        }
        let n = l.shape().elem_count();
        let total = match s {
            CpuStorage::F32(x) => sum(slice(x, l, n, self.name())?),
            CpuStorage::F64(x) => sum(slice(x, l, n, self.name())?),
            s => candle_core::bail!("sum-squares: unsupported dtype {:?}", candle_core::backend::BackendStorage::dtype(s)),
        };
        Ok((CpuStorage::F64(vec![total]), Shape::from(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    #[test]
    fn matches_the_reference_rule_over_three_steps() -> Result<()> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let w = vb.get_with_hints(4, "w", candle_nn::Init::Randn { mean: 0., stdev: 1. })?;
        let _stat = vb.get_with_hints(4, "bn.running_mean", candle_nn::Init::Const(0.))?;
        let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.01 };
        let mut sgd = Sgd::new(&varmap, cfg);
        let mut p_ref = w.to_vec1::<f32>()?;
        let mut v_ref = None;
        let x = Tensor::new(&[1f32, -2., 3., 0.5], &Device::Cpu)?;
        for i in 0..3 {
            if i == 2 {
                // A resumed optimizer: buffers through a checkpoint's tensors.
                let saved: std::collections::HashMap<_, _> = sgd.state()?.into_iter().collect();
                sgd = Sgd::new(&varmap, cfg);
                sgd.load_state(&saved)?;
            }
            let w_now = varmap.data().lock().unwrap()["w"].as_tensor().clone();
            let loss = (w_now.sqr()? * &x)?.sum_all()?;
            let grads = loss.backward()?;
            let g = grads.get(&w_now).unwrap().to_vec1::<f32>()?;
            sgd.step(&grads, 0.1, None)?;
            cfg.step_reference(0.1, &mut p_ref, &g, &mut v_ref);
        }
        let got = varmap.data().lock().unwrap()["w"].as_tensor().to_vec1::<f32>()?;
        for (a, b) in got.iter().zip(&p_ref) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {p_ref:?}");
        }
        assert_eq!(sgd.state()?.len(), 1, "running statistics get no buffer");
        Ok(())
    }

    /// The tensor form used off the CPU follows the same reference rule (run here on the CPU).
    #[test]
    fn tensor_form_matches_the_reference_rule() -> Result<()> {
        let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.01 };
        let (mut p_ref, mut v_ref) = (vec![0.5f32, -1.0, 2.0], None);
        let mut p = Tensor::new(p_ref.as_slice(), &Device::Cpu)?;
        let mut v = p.zeros_like()?;
        for step in 0..3 {
            let g: Vec<f32> = p_ref.iter().map(|x| 2.0 * x - step as f32).collect();
            (p, v) = momentum_tensors(&p, &Tensor::new(g.as_slice(), &Device::Cpu)?, &v, 0.1, cfg.momentum, 1.0, cfg.weight_decay)?;
            cfg.step_reference(0.1, &mut p_ref, &g, &mut v_ref);
        }
        for (a, b) in p.to_vec1::<f32>()?.iter().zip(&p_ref) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod clip_tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    #[test]
    fn clipping_scales_the_step_to_the_norm() -> Result<()> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let w = vb.get_with_hints(2, "w", candle_nn::Init::Const(0.))?;
        let mut sgd = Sgd::new(&varmap, SgdConfig { lr: 1.0, momentum: 0.0, weight_decay: 0.0 });
        // loss = 3·w0 + 4·w1: gradient (3, 4), norm 5; clipped to 1 → step (0.6, 0.8).
        let loss = (w.clone() * Tensor::new(&[3f32, 4.], &Device::Cpu)?)?.sum_all()?;
        let grads = loss.backward()?;
        assert!((sgd.grad_norm(&grads)? - 5.0).abs() < 1e-6);
        sgd.step(&grads, 1.0, Some(1.0))?;
        let got = varmap.data().lock().unwrap()["w"].as_tensor().to_vec1::<f32>()?;
        assert!((got[0] + 0.6).abs() < 1e-6 && (got[1] + 0.8).abs() < 1e-6, "{got:?}");
        Ok(())
    }
}
