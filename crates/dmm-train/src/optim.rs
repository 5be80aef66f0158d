//! SGD with momentum and weight decay on candle variables (the rule of
//! [`dmm_policy::SgdConfig::step_reference`], checked against it below), with momentum buffers
//! that checkpoints save and restore.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
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
                sum += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
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
            // Detached: a buffer that kept its autograd history would chain every step's graph to
            // the previous one and grow without bound.
            let mut g = grad.detach();
            if scale != 1.0 {
                g = (g * scale)?;
            }
            if weight_decay != 0.0 {
                g = (g + (var.as_tensor().detach() * weight_decay)?)?;
            }
            if momentum != 0.0 {
                g = match self.velocity.get(name) {
                    Some(v) => ((v * momentum)? + g)?,
                    None => g,
                };
                self.velocity.insert(name.clone(), g.clone());
            }
            var.set(&(var.as_tensor().detach() - (g * lr)?)?)?;
        }
        Ok(())
    }

    /// The momentum buffers, by variable name (for checkpoints).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.velocity.iter().map(|(k, v)| (format!("velocity.{k}"), v.clone())).collect()
    }

    /// Restores buffers saved by [`Sgd::state`]; unknown names are ignored.
    pub fn load_state(&mut self, tensors: &std::collections::HashMap<String, Tensor>) {
        for (name, _) in &self.params {
            if let Some(v) = tensors.get(&format!("velocity.{name}")) {
                self.velocity.insert(name.clone(), v.clone());
            }
        }
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
