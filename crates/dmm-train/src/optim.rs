//! SGD with momentum and weight decay on candle variables (the rule of
//! [`dmm_policy::SgdConfig::step_reference`], checked against it below), with momentum buffers
//! that checkpoints save and restore.
//!
//! The update runs in place, one pass for the momentum buffer and one for the variable: written
//! as tensor arithmetic it took six passes and five fresh buffers per variable, and the
//! subjective branch's first layer alone holds 88 M weights at width 64.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, InplaceOp2, InplaceOp3, Layout, Shape, Tensor, Var, WithDType};
use rayon::prelude::*;
use candle_nn::VarMap;
use dmm_policy::SgdConfig;

use crate::Result;

/// The optimizer: configuration plus one momentum buffer per trained variable.
pub struct Sgd {
    config: SgdConfig,
    params: Vec<(String, Var)>,
    velocity: BTreeMap<String, Tensor>,
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
                sum += g.apply_op1_no_bwd(&SumSquares)?.to_scalar::<f64>()?;
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
                param.inplace_op2(&grad, &Descend { lr, scale, weight_decay })?;
                continue;
            }
            // A fresh buffer starts at zero, so the first step moves along the gradient itself.
            let v = match self.velocity.get(name) {
                Some(v) => v.clone(),
                None => {
                    let v = param.zeros_like()?;
                    self.velocity.insert(name.clone(), v.clone());
                    v
                }
            };
            v.inplace_op3(&grad, param, &Momentum { momentum, scale, weight_decay })?;
            param.inplace_op2(&v, &Descend { lr, scale: 1.0, weight_decay: 0.0 })?;
        }
        Ok(())
    }

    /// The momentum buffers, by variable name (for checkpoints).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.velocity.iter().map(|(k, v)| (format!("velocity.{k}"), v.clone())).collect()
    }

    /// Restores buffers saved by [`Sgd::state`]; unknown names are ignored. The buffers are
    /// copied, since steps update them in place.
    pub fn load_state(&mut self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (name, _) in &self.params {
            if let Some(v) = tensors.get(&format!("velocity.{name}")) {
                self.velocity.insert(name.clone(), v.copy()?);
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

/// `v ← m·v + s·g + λ·p`, in place on the momentum buffer `v`, from the gradient `g` and the
/// variable `p`.
struct Momentum {
    momentum: f64,
    scale: f64,
    weight_decay: f64,
}

impl Momentum {
    fn run<T: WithDType>(&self, v: &mut [T], g: &[T], p: &[T]) {
        let (m, s, wd) = (T::from_f64(self.momentum), T::from_f64(self.scale), T::from_f64(self.weight_decay));
        v.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(p.par_chunks(CHUNK)).for_each(|((v, g), p)| {
            for ((v, &g), &p) in v.iter_mut().zip(g).zip(p) {
                *v = m * *v + s * g + wd * p;
            }
        });
    }
}

impl InplaceOp3 for Momentum {
    fn name(&self) -> &'static str {
        "sgd-momentum"
    }

    fn cpu_fwd(&self, v: &mut CpuStorage, lv: &Layout, g: &CpuStorage, lg: &Layout, p: &CpuStorage, lp: &Layout) -> candle_core::Result<()> {
        let name = self.name();
        match (v, g, p) {
            (CpuStorage::F32(v), CpuStorage::F32(g), CpuStorage::F32(p)) => {
                let v = slice_mut(v, lv, name)?;
                self.run(v, slice(g, lg, v.len(), name)?, slice(p, lp, v.len(), name)?)
            }
            (CpuStorage::F64(v), CpuStorage::F64(g), CpuStorage::F64(p)) => {
                let v = slice_mut(v, lv, name)?;
                self.run(v, slice(g, lg, v.len(), name)?, slice(p, lp, v.len(), name)?)
            }
            _ => candle_core::bail!("{name}: operands must all be f32 or all f64"),
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
            x.par_chunks(CHUNK).map(|c| c.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>()).sum()
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
        for _ in 0..3 {
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
        assert_eq!(sgd.state().len(), 1, "running statistics get no buffer");
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
