//! Stochastic gradient descent with momentum and weight decay, in PyTorch's formulation:
//!
//! g ← ∇ + wd · p;  v ← μ · v + g (v = g on the first step);  p ← p − lr · v.
//!
//! candle-nn's SGD has neither momentum nor weight decay. `dmm-train` applies this rule to candle
//! tensors (so it runs on any device) and checks itself against [`SgdConfig::step_reference`].
//! The paper gives lr 0.001 and SGD; momentum 0.9 and weight decay 5e-4 are our choices.

/// Hyper-parameters of SGD.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// Initial learning rate (the schedule changes the running one).
    pub lr: f64,
    /// Momentum μ (0 disables).
    pub momentum: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
}

impl SgdConfig {
    /// The paper's optimizer with our momentum and weight decay.
    pub fn paper() -> Self {
        Self { lr: 1e-3, momentum: 0.9, weight_decay: 5e-4 }
    }

    /// One update of `param` in place with learning rate `lr`; `velocity` is `None` before the
    /// first step and holds the momentum buffer afterwards.
    pub fn step_reference(&self, lr: f64, param: &mut [f32], grad: &[f32], velocity: &mut Option<Vec<f32>>) {
        assert_eq!(param.len(), grad.len(), "parameter and gradient lengths");
        let g: Vec<f32> = param.iter().zip(grad).map(|(&p, &d)| d + self.weight_decay as f32 * p).collect();
        let v = match velocity.take() {
            Some(mut v) if self.momentum != 0.0 => {
                for (vi, gi) in v.iter_mut().zip(&g) {
                    *vi = self.momentum as f32 * *vi + gi;
                }
                v
            }
            _ => g,
        };
        for (p, vi) in param.iter_mut().zip(&v) {
            *p -= lr as f32 * vi;
        }
        *velocity = Some(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_by_hand() {
        let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.5 };
        let mut p = vec![1.0f32];
        let mut v = None;
        // g = 2 + 0.5·1 = 2.5; v = 2.5; p = 1 − 0.25 = 0.75.
        cfg.step_reference(0.1, &mut p, &[2.0], &mut v);
        assert_eq!((p[0], v.as_ref().unwrap()[0]), (0.75, 2.5));
        // g = 2 + 0.375 = 2.375; v = 2.25 + 2.375 = 4.625; p = 0.75 − 0.4625 = 0.2875.
        cfg.step_reference(0.1, &mut p, &[2.0], &mut v);
        assert!((p[0] - 0.2875).abs() < 1e-6 && (v.unwrap()[0] - 4.625).abs() < 1e-6);
    }
}
