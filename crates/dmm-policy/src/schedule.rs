//! Learning-rate plateau schedule (paper §4.1: "we multiply the learning rate by 0.1 when the
//! validation loss stops decreasing"): after `patience` evaluations in a row without a relative
//! improvement of at least `threshold` over the best value, multiply the rate by `factor`
//! (PyTorch's `ReduceLROnPlateau` in `rel` mode, without cooldown). The trainer feeds it the
//! validation error rather than the loss (`dmm-train`'s `evaluation_step` says why).

/// The schedule and its state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plateau {
    /// Current learning rate.
    pub lr: f64,
    /// Multiplier applied on a plateau (0.1).
    pub factor: f64,
    /// Evaluations without improvement tolerated before reducing.
    pub patience: usize,
    /// Relative improvement that counts as one.
    pub threshold: f64,
    /// Best value so far (`None` before the first evaluation).
    pub best: Option<f64>,
    /// Evaluations since the last improvement.
    pub bad_evals: usize,
    /// Smallest rate it will reduce to.
    pub min_lr: f64,
}

impl Plateau {
    /// A schedule starting at `lr` with factor 0.1, relative threshold 1e-4.
    pub fn new(lr: f64, patience: usize) -> Self {
        Self { lr, factor: 0.1, patience, threshold: 1e-4, best: None, bad_evals: 0, min_lr: 0.0 }
    }

    /// Feeds one validation measure, lower is better (the trainer feeds the error, 1 − mean
    /// accuracy); returns the (possibly reduced) learning rate.
    pub fn step(&mut self, value: f64) -> f64 {
        match self.best {
            Some(best) if value >= best * (1.0 - self.threshold) => {
                self.bad_evals += 1;
                if self.bad_evals > self.patience {
                    self.lr = (self.lr * self.factor).max(self.min_lr);
                    self.bad_evals = 0;
                }
            }
            _ => {
                self.best = Some(value);
                self.bad_evals = 0;
            }
        }
        self.lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_after_patience_bad_evaluations() {
        let mut p = Plateau::new(0.001, 1);
        assert_eq!(p.step(1.0), 0.001); // first: best = 1.0
        assert_eq!(p.step(0.9), 0.001); // improvement
        assert_eq!(p.step(0.95), 0.001); // bad 1 (≤ patience)
        assert!((p.step(0.9) - 0.0001).abs() < 1e-18); // bad 2 > patience: × 0.1 (0.9 is not < 0.9)
        assert!((p.step(0.5) - 0.0001).abs() < 1e-18); // improvement resets
        assert_eq!(p.best, Some(0.5));
        // A tiny relative improvement below the threshold counts as none.
        let mut p = Plateau::new(1.0, 0);
        p.step(1.0);
        assert!((p.step(0.99995) - 0.1).abs() < 1e-15);
    }
}
