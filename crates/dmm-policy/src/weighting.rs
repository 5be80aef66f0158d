//! Per-attribute loss weights λ for the joint loss L = Σ_j λ_j L_j + β L_FLD (paper Eq. 3), and the
//! four schemes of the paper's Table 2 behind one trait, [`WeightScheme`].
//!
//! - **UW**: λ_j = 1.
//! - **DW** (the paper's, Eq. 4): after evaluation t on the whole validation set,
//!   λ_j(t) = |(L_j(t) − L_j(t−1)) / L_j(t−1)|; λ = 1 until two evaluations exist, and λ_j = 0 if
//!   L_j(t−1) = 0. The raw values are small (a few percent), which shrinks the loss scale; the
//!   optional `rescale` multiplies λ by J / Σλ so the weights sum to J (off in the `paper` preset).
//! - **DWA** (Liu et al. 2019): from the per-attribute mean training losses L̄ of the last two
//!   epochs, w_k = L̄_k(e−1) / L̄_k(e−2) and λ_k = J · exp(w_k / T) / Σ_i exp(w_i / T), T = 2;
//!   λ = 1 for the first two epochs.
//! - **AW** (He et al. 2017; their paper is summarised only as "the validation loss and the mean
//!   validation loss trend in a batch", so this is our reconstruction): every iteration the
//!   per-attribute losses v_j of a 10-image validation batch update a smoothed loss
//!   s_j ← α s_j + (1 − α) v_j (α = 0.9, s = v at the start); the trend is r_j = s_j(new) / s_j(old)
//!   and the mean trend r̄ = mean_j r_j; then λ_j = J · (s_j r_j / r̄) / Σ_i (s_i r_i / r̄). Attributes
//!   with a high validation loss whose loss falls slower than average get more weight.

/// The operations a weighting scheme reacts to. Each hook has a no-op default.
pub trait WeightScheme {
    /// Current λ, one per attribute.
    fn weights(&self) -> &[f64];
    /// Per-attribute losses of one training batch (DWA accumulates them).
    fn on_train_batch(&mut self, _losses: &[f64]) {}
    /// End of a training epoch (DWA updates here).
    fn on_epoch_end(&mut self) {}
    /// Per-attribute mean losses of a full evaluation (every P iterations; DW updates here).
    fn on_evaluation(&mut self, _losses: &[f64]) {}
    /// Whether the trainer must compute a small validation batch every iteration.
    fn needs_validation_batch(&self) -> bool {
        false
    }
    /// Per-attribute losses of that small validation batch (AW updates here).
    fn on_validation_batch(&mut self, _losses: &[f64]) {}
}

/// Which scheme to use, with its parameters (the configuration; [`Weighting`] is the state).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "scheme", rename_all = "lowercase")]
pub enum Scheme {
    /// Uniform weights.
    Uw,
    /// Dynamic Weight Average with temperature T.
    Dwa {
        /// Softmax temperature (2 in Liu et al.).
        temperature: f64,
    },
    /// Adaptive Weighting from a small validation batch each iteration.
    Aw {
        /// Images in the per-iteration validation batch (10 in He et al.).
        batch: usize,
        /// Smoothing α of the validation losses.
        smoothing: f64,
    },
    /// The paper's dynamic weights (Eq. 4).
    Dw {
        /// Rescale λ to sum to J.
        rescale: bool,
    },
}

impl Scheme {
    /// The table name: UW, DWA, AW or DW.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Uw => "UW",
            Scheme::Dwa { .. } => "DWA",
            Scheme::Aw { .. } => "AW",
            Scheme::Dw { .. } => "DW",
        }
    }

    /// DWA with Liu et al.'s T = 2.
    pub fn dwa() -> Self {
        Scheme::Dwa { temperature: 2.0 }
    }

    /// AW with a 10-image batch and α = 0.9.
    pub fn aw() -> Self {
        Scheme::Aw { batch: 10, smoothing: 0.9 }
    }
}

/// The state of any scheme: what checkpoints store.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Weighting {
    /// The scheme and its parameters.
    pub scheme: Scheme,
    /// Current λ.
    pub lambda: Vec<f64>,
    /// DW: the previous evaluation's losses. AW: the smoothed validation losses.
    pub previous: Option<Vec<f64>>,
    /// DWA: sums of the current epoch's batch losses, and the batch count.
    pub epoch_sum: Vec<f64>,
    /// DWA: batches in `epoch_sum`.
    pub epoch_batches: u64,
    /// DWA: mean losses of the last two epochs, oldest first.
    pub epoch_means: Vec<Vec<f64>>,
}

impl Weighting {
    /// A scheme over `n_attrs` attributes with λ = 1.
    pub fn new(scheme: Scheme, n_attrs: usize) -> Self {
        Self {
            scheme,
            lambda: vec![1.0; n_attrs],
            previous: None,
            epoch_sum: vec![0.0; n_attrs],
            epoch_batches: 0,
            epoch_means: Vec::new(),
        }
    }

    fn check(&self, losses: &[f64]) {
        assert_eq!(losses.len(), self.lambda.len(), "one loss per attribute");
    }
}

impl WeightScheme for Weighting {
    fn weights(&self) -> &[f64] {
        &self.lambda
    }

    fn on_train_batch(&mut self, losses: &[f64]) {
        if let Scheme::Dwa { .. } = self.scheme {
            self.check(losses);
            for (s, l) in self.epoch_sum.iter_mut().zip(losses) {
                *s += l;
            }
            self.epoch_batches += 1;
        }
    }

    fn on_epoch_end(&mut self) {
        let Scheme::Dwa { temperature } = self.scheme else { return };
        if self.epoch_batches == 0 {
            return;
        }
        let n = self.epoch_batches as f64;
        self.epoch_means.push(self.epoch_sum.iter().map(|s| s / n).collect());
        if self.epoch_means.len() > 2 {
            self.epoch_means.remove(0);
        }
        self.epoch_sum.iter_mut().for_each(|s| *s = 0.0);
        self.epoch_batches = 0;
        if let [older, newer] = &self.epoch_means[..] {
            let j = self.lambda.len() as f64;
            let e: Vec<f64> = newer
                .iter()
                .zip(older)
                .map(|(a, b)| if *b > 0.0 { a / b } else { 1.0 })
                .map(|w| (w / temperature).exp())
                .collect();
            let total: f64 = e.iter().sum();
            self.lambda = e.iter().map(|x| j * x / total).collect();
        }
    }

    fn on_evaluation(&mut self, losses: &[f64]) {
        let Scheme::Dw { rescale } = self.scheme else { return };
        self.check(losses);
        if let Some(prev) = &self.previous {
            self.lambda = losses
                .iter()
                .zip(prev)
                .map(|(l, p)| if *p > 0.0 { ((l - p) / p).abs() } else { 0.0 })
                .collect();
            let total: f64 = self.lambda.iter().sum();
            if rescale && total > 0.0 {
                let j = self.lambda.len() as f64;
                self.lambda.iter_mut().for_each(|x| *x *= j / total);
            }
        }
        self.previous = Some(losses.to_vec());
    }

    fn needs_validation_batch(&self) -> bool {
        matches!(self.scheme, Scheme::Aw { .. })
    }

    fn on_validation_batch(&mut self, losses: &[f64]) {
        let Scheme::Aw { smoothing, .. } = self.scheme else { return };
        self.check(losses);
        let Some(old) = self.previous.take() else {
            self.previous = Some(losses.to_vec());
            return;
        };
        let new: Vec<f64> = old.iter().zip(losses).map(|(s, v)| smoothing * s + (1.0 - smoothing) * v).collect();
        let trend: Vec<f64> = new.iter().zip(&old).map(|(n, o)| if *o > 0.0 { n / o } else { 1.0 }).collect();
        let mean_trend = trend.iter().sum::<f64>() / trend.len() as f64;
        let score: Vec<f64> = new.iter().zip(&trend).map(|(s, r)| s * r / mean_trend).collect();
        let total: f64 = score.iter().sum();
        if total > 0.0 {
            let j = self.lambda.len() as f64;
            self.lambda = score.iter().map(|s| j * s / total).collect();
        }
        self.previous = Some(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn uw_is_always_one() {
        let mut w = Weighting::new(Scheme::Uw, 2);
        w.on_evaluation(&[1.0, 2.0]);
        w.on_train_batch(&[1.0, 2.0]);
        w.on_epoch_end();
        assert_eq!(w.weights(), [1.0, 1.0]);
    }

    #[test]
    fn dw_eq4_by_hand() {
        let mut w = Weighting::new(Scheme::Dw { rescale: false }, 3);
        w.on_evaluation(&[0.8, 0.5, 0.0]);
        assert_eq!(w.weights(), [1.0, 1.0, 1.0], "one evaluation: λ stays 1");
        // |0.6 − 0.8| / 0.8 = 0.25; |0.55 − 0.5| / 0.5 = 0.1; previous 0 → 0.
        w.on_evaluation(&[0.6, 0.55, 0.1]);
        close(w.weights(), &[0.25, 0.1, 0.0]);
        // Next: |0.3 − 0.6| / 0.6 = 0.5; |0.55 − 0.55| = 0; |0.05 − 0.1| / 0.1 = 0.5.
        w.on_evaluation(&[0.3, 0.55, 0.05]);
        close(w.weights(), &[0.5, 0.0, 0.5]);
    }

    #[test]
    fn dw_rescaled_sums_to_j() {
        let mut w = Weighting::new(Scheme::Dw { rescale: true }, 3);
        w.on_evaluation(&[0.8, 0.5, 0.2]);
        w.on_evaluation(&[0.6, 0.55, 0.2]);
        // Raw 0.25, 0.1, 0 → × 3 / 0.35.
        close(w.weights(), &[0.75 / 0.35, 0.3 / 0.35, 0.0]);
    }

    #[test]
    fn dwa_by_hand() {
        let mut w = Weighting::new(Scheme::dwa(), 2);
        for epoch in [[1.0, 1.0], [0.5, 1.0]] {
            w.on_train_batch(&epoch);
            w.on_train_batch(&epoch.map(|x| x * 3.0)); // epoch means: 2·x
            w.on_epoch_end();
        }
        // w = (0.5, 1.0); λ = 2·exp(w/2)/Σ.
        let (a, b) = (0.25f64.exp(), 0.5f64.exp());
        close(w.weights(), &[2.0 * a / (a + b), 2.0 * b / (a + b)]);
        assert_eq!(w.epoch_batches, 0);
    }

    #[test]
    fn aw_by_hand() {
        let mut w = Weighting::new(Scheme::Aw { batch: 10, smoothing: 0.5 }, 2);
        assert!(w.needs_validation_batch());
        w.on_validation_batch(&[1.0, 1.0]);
        assert_eq!(w.weights(), [1.0, 1.0]);
        // s = (0.5·1 + 0.5·0, 0.5·1 + 0.5·1) = (0.5, 1); r = (0.5, 1); r̄ = 0.75;
        // score = (0.5·0.5/0.75, 1·1/0.75) = (1/3, 4/3); λ = 2·score/Σ = (0.4, 1.6).
        w.on_validation_batch(&[0.0, 1.0]);
        close(w.weights(), &[0.4, 1.6]);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut w = Weighting::new(Scheme::Dw { rescale: false }, 2);
        w.on_evaluation(&[0.5, 0.25]);
        let json = serde_json::to_string(&w).unwrap();
        assert!(json.contains("\"scheme\":\"dw\""), "{json}");
        let back: Weighting = serde_json::from_str(&json).unwrap();
        assert_eq!(back, w);
    }
}
