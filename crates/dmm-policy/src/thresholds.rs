//! Adaptive thresholds (paper §3.3, Eq. 6): after each evaluation on the V validation images,
//!
//! τ_j(t) = τ_j(t−1) + γ · l · (N_FP,j − N_FN,j) / V,
//!
//! with γ = 0.01, l the current epoch (1-based) and τ(0) = 0. More false positives than false
//! negatives raise the threshold; the epoch factor makes later corrections larger. An attribute is
//! predicted present when its output exceeds τ_j (Eq. 5).

/// The thresholds τ and their update rule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdaptiveThresholds {
    /// γ of Eq. 6.
    pub gamma: f64,
    /// Current τ, one per attribute.
    pub tau: Vec<f64>,
}

impl AdaptiveThresholds {
    /// The paper's γ.
    pub const PAPER_GAMMA: f64 = 0.01;

    /// `n_attrs` thresholds at 0.
    pub fn new(n_attrs: usize, gamma: f64) -> Self {
        Self { gamma, tau: vec![0.0; n_attrs] }
    }

    /// Applies Eq. 6 with the false-positive and false-negative counts of one evaluation over
    /// `v` images during 1-based `epoch`.
    ///
    /// # Panics
    /// When the count vectors do not have one entry per attribute or `v` is 0.
    pub fn update(&mut self, false_pos: &[u64], false_neg: &[u64], v: u64, epoch: u64) {
        assert_eq!(false_pos.len(), self.tau.len(), "false positives per attribute");
        assert_eq!(false_neg.len(), self.tau.len(), "false negatives per attribute");
        assert!(v > 0, "the evaluation set is empty");
        let step = self.gamma * epoch as f64 / v as f64;
        for ((t, &fp), &fn_) in self.tau.iter_mut().zip(false_pos).zip(false_neg) {
            *t += step * (fp as f64 - fn_ as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq6_by_hand() {
        let mut t = AdaptiveThresholds::new(3, 0.01);
        // Epoch 1, V = 100: (30 − 10)/100 · 0.01 = 0.002; (0 − 50)/100 · 0.01 = −0.005; 0.
        t.update(&[30, 0, 7], &[10, 50, 7], 100, 1);
        assert_eq!(t.tau, [0.002, -0.005, 0.0]);
        // Epoch 3 doubles… triples the step: 0.002 + 0.01·3·(20 − 0)/100 = 0.008.
        t.update(&[20, 0, 0], &[0, 0, 0], 100, 3);
        assert!((t.tau[0] - 0.008).abs() < 1e-15);
        assert_eq!(t.tau[1], -0.005);
    }
}
