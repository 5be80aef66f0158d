//! Evaluation metrics: per-attribute confusion counts (accuracy, balanced accuracy, the FP/FN
//! counts Eq. 6 needs), per-attribute mean squared error (Eq. 2 on the evaluation set), the
//! landmark loss (Eq. 1) and normalized mean error (NME, by inter-ocular distance), and the
//! collapse diagnostics: how much each output varies across images, and which hidden units of
//! the heads are dead (zero for every image).

use dmm_data::N_ATTRS;

/// Accumulated results of one pass over an evaluation set.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// Images evaluated (V).
    pub n: u64,
    /// Per-attribute true positives, false positives, true negatives, false negatives.
    pub tp: Vec<u64>,
    /// False positives per attribute.
    pub fp: Vec<u64>,
    /// True negatives per attribute.
    pub tn: Vec<u64>,
    /// False negatives per attribute.
    pub fn_: Vec<u64>,
    /// Per-attribute sums of squared errors (divide by `n` for Eq. 2).
    pub sq_err: Vec<f64>,
    /// Images with landmarks.
    pub n_landmarks: u64,
    /// Sum over those images of ‖ŷ − y‖² in normalized coordinates (Eq. 1 numerator).
    pub landmark_sq_err: f64,
    /// Sum over those images of the per-image NME.
    pub nme_sum: f64,
    /// Sum over images of the squared per-image accuracy (fraction of its 40 labels right), for
    /// the standard error of the mean accuracy.
    #[serde(default)]
    pub image_accuracy_sq_sum: f64,
    /// Per-attribute sums of the scores and of their squares (the spread across images).
    #[serde(default)]
    pub score_sum: Vec<f64>,
    /// Per-attribute sums of squared scores.
    #[serde(default)]
    pub score_sq_sum: Vec<f64>,
    /// Sums of each landmark output and of its square, over every image evaluated.
    #[serde(default)]
    pub landmark_out_sum: Vec<f64>,
    /// Sums of each landmark output's square.
    #[serde(default)]
    pub landmark_out_sq_sum: Vec<f64>,
    /// Each hidden FC layer of the heads with, per unit, the images on which it was positive.
    #[serde(default)]
    pub hidden: Vec<UnitActivity>,
}

/// How often each unit of one hidden layer fired.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UnitActivity {
    /// The layer's variable prefix, e.g. `objective.fc1`.
    pub layer: String,
    /// Per unit, the images on which its post-ReLU activation was positive.
    pub active: Vec<u64>,
}

/// The collapse diagnostics of one head over an evaluation set.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadHealth {
    /// The head's variable prefix: `objective`, `subjective`, `attributes` or `landmarks`.
    pub head: String,
    /// Mean over the head's outputs of their standard deviation across images.
    pub spread: f64,
    /// Per hidden layer, the fraction of units that were zero for every image (dead).
    pub dead: Vec<(String, f64)>,
    /// The outputs no longer depend on the image: `spread` is below the head's floor
    /// ([`COLLAPSED_SPREAD`], or [`COLLAPSED_LANDMARK_SPREAD`] for landmarks), a hidden layer is
    /// entirely dead, or every attribute of the head gives the same label to every image.
    pub collapsed: bool,
}

/// An attribute head whose scores vary across images by less than this (targets are ±1) predicts
/// the same label for every image: it has collapsed to the label priors.
pub const COLLAPSED_SPREAD: f64 = 0.02;
/// The same floor for the landmark head, in normalized coordinates (the points of aligned crops
/// vary by about 0.02–0.05 across faces).
pub const COLLAPSED_LANDMARK_SPREAD: f64 = 1e-3;

impl Default for Evaluation {
    fn default() -> Self {
        Self {
            n: 0,
            tp: vec![0; N_ATTRS],
            fp: vec![0; N_ATTRS],
            tn: vec![0; N_ATTRS],
            fn_: vec![0; N_ATTRS],
            sq_err: vec![0.0; N_ATTRS],
            n_landmarks: 0,
            landmark_sq_err: 0.0,
            nme_sum: 0.0,
            image_accuracy_sq_sum: 0.0,
            score_sum: vec![0.0; N_ATTRS],
            score_sq_sum: vec![0.0; N_ATTRS],
            landmark_out_sum: Vec::new(),
            landmark_out_sq_sum: Vec::new(),
            hidden: Vec::new(),
        }
    }
}

impl Evaluation {
    /// Adds a batch: `scores` and `targets` are `[b, 40]` row-major, targets ±1, thresholds τ.
    pub fn add_attributes(&mut self, scores: &[f32], targets: &[f32], tau: &[f64]) {
        assert_eq!(scores.len(), targets.len());
        for (s_row, t_row) in scores.chunks_exact(N_ATTRS).zip(targets.chunks_exact(N_ATTRS)) {
            self.n += 1;
            let mut right = 0usize;
            for j in 0..N_ATTRS {
                let (s, t) = (s_row[j] as f64, t_row[j] as f64);
                self.sq_err[j] += (s - t) * (s - t);
                if let (Some(sum), Some(sq)) = (self.score_sum.get_mut(j), self.score_sq_sum.get_mut(j)) {
                    *sum += s;
                    *sq += s * s;
                }
                let predicted = s > tau[j];
                right += (predicted == (t > 0.0)) as usize;
                match (predicted, t > 0.0) {
                    (true, true) => self.tp[j] += 1,
                    (true, false) => self.fp[j] += 1,
                    (false, false) => self.tn[j] += 1,
                    (false, true) => self.fn_[j] += 1,
                }
            }
            self.image_accuracy_sq_sum += (right as f64 / N_ATTRS as f64).powi(2);
        }
    }

    /// Standard error of the mean accuracy over images: the sample standard deviation of the
    /// per-image accuracies divided by √n (labels of one face are correlated, so this is wider
    /// than a binomial error over n·40 labels). `None` below two images.
    pub fn mean_accuracy_se(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        let mean = mean_of(&self.accuracies());
        let var = ((self.image_accuracy_sq_sum - n * mean * mean) / (n - 1.0)).max(0.0);
        Some((var / n).sqrt())
    }

    /// Adds landmark predictions and targets (`[b, 2T]`, normalized by image width/height) with
    /// the presence mask; `(h, w)` converts back to pixels for the NME.
    pub fn add_landmarks(&mut self, pred: &[f32], target: &[f32], mask: &[f32], n_points: usize, (h, w): (usize, usize)) {
        let d = 2 * n_points;
        for ((p, t), &m) in pred.chunks_exact(d).zip(target.chunks_exact(d)).zip(mask) {
            if m == 0.0 {
                continue;
            }
            self.n_landmarks += 1;
            self.landmark_sq_err += p.iter().zip(t).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
            self.nme_sum += nme(p, t, n_points, (h, w));
        }
    }

    /// Adds the landmark head's raw outputs (`[b, 2T]` row-major) for their spread across images,
    /// whether or not the images have landmark targets.
    pub fn add_landmark_outputs(&mut self, outputs: &[f32], d: usize) {
        if self.landmark_out_sum.len() != d {
            self.landmark_out_sum = vec![0.0; d];
            self.landmark_out_sq_sum = vec![0.0; d];
        }
        for row in outputs.chunks_exact(d) {
            for (k, &v) in row.iter().enumerate() {
                self.landmark_out_sum[k] += v as f64;
                self.landmark_out_sq_sum[k] += (v as f64).powi(2);
            }
        }
    }

    /// Adds a batch of one hidden layer's post-ReLU activations (`[b, units]` row-major).
    pub fn add_hidden(&mut self, layer: &str, activations: &[f32], units: usize) {
        let pos = match self.hidden.iter().position(|h| h.layer == layer) {
            Some(pos) => pos,
            None => {
                self.hidden.push(UnitActivity { layer: layer.to_string(), active: vec![0; units] });
                self.hidden.len() - 1
            }
        };
        let active = &mut self.hidden[pos].active;
        for row in activations.chunks_exact(units) {
            for (count, &a) in active.iter_mut().zip(row) {
                *count += (a > 0.0) as u64;
            }
        }
    }

    /// Per-attribute standard deviation of the scores across the images evaluated.
    pub fn output_spreads(&self) -> Vec<f64> {
        spreads(&self.score_sum, &self.score_sq_sum, self.n)
    }

    /// The collapse diagnostics of each head: `heads` names each attribute head with the CelebA
    /// indices of its outputs ([`dmm_model::DmmModel::attribute_heads`]); the landmark head is
    /// added when its outputs were recorded.
    pub fn head_health(&self, heads: &[(&str, Vec<usize>)]) -> Vec<HeadHealth> {
        let per_attr = self.output_spreads();
        // An attribute whose label is the same for every image (all predicted one way).
        let one_label = |j: usize| {
            let positive = self.tp[j] + self.fp[j];
            positive == 0 || positive == self.n
        };
        let mut named: Vec<(String, f64, f64, bool)> = heads
            .iter()
            .map(|(name, attrs)| {
                let spread = attrs.iter().filter_map(|&j| per_attr.get(j)).sum::<f64>() / attrs.len().max(1) as f64;
                (name.to_string(), spread, COLLAPSED_SPREAD, attrs.iter().all(|&j| one_label(j)))
            })
            .collect();
        if !self.landmark_out_sum.is_empty() {
            let lm = spreads(&self.landmark_out_sum, &self.landmark_out_sq_sum, self.n);
            named.push(("landmarks".into(), mean_of(&lm), COLLAPSED_LANDMARK_SPREAD, false));
        }
        named
            .into_iter()
            .map(|(head, spread, floor, constant_labels)| {
                let prefix = format!("{head}.");
                let dead: Vec<(String, f64)> = self
                    .hidden
                    .iter()
                    .filter(|h| h.layer.starts_with(&prefix))
                    .map(|h| (h.layer.clone(), h.active.iter().filter(|&&c| c == 0).count() as f64 / h.active.len().max(1) as f64))
                    .collect();
                let collapsed = self.n > 1 && (spread < floor || constant_labels || dead.iter().any(|(_, f)| *f >= 1.0));
                HeadHealth { head, spread, dead, collapsed }
            })
            .collect()
    }

    /// Per-attribute accuracy.
    pub fn accuracies(&self) -> Vec<f64> {
        (0..N_ATTRS).map(|j| (self.tp[j] + self.tn[j]) as f64 / self.n.max(1) as f64).collect()
    }

    /// Per-attribute balanced accuracy ½(TPR + TNR); the recall of the one class present when the
    /// other is absent.
    pub fn balanced_accuracies(&self) -> Vec<f64> {
        (0..N_ATTRS)
            .map(|j| {
                let (pos, neg) = (self.tp[j] + self.fn_[j], self.tn[j] + self.fp[j]);
                let tpr = (pos > 0).then(|| self.tp[j] as f64 / pos as f64);
                let tnr = (neg > 0).then(|| self.tn[j] as f64 / neg as f64);
                match (tpr, tnr) {
                    (Some(a), Some(b)) => (a + b) / 2.0,
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => 0.0,
                }
            })
            .collect()
    }

    /// Per-attribute MSE (Eq. 2 over the evaluation set).
    pub fn attribute_losses(&self) -> Vec<f64> {
        self.sq_err.iter().map(|s| s / self.n.max(1) as f64).collect()
    }

    /// Mean over attributes of the per-attribute MSE (what the LR schedule watches).
    pub fn mean_attribute_loss(&self) -> f64 {
        self.attribute_losses().iter().sum::<f64>() / N_ATTRS as f64
    }

    /// Eq. 1 over the images with landmarks (`None` when none had any).
    pub fn landmark_loss(&self) -> Option<f64> {
        (self.n_landmarks > 0).then(|| self.landmark_sq_err / self.n_landmarks as f64)
    }

    /// Mean NME over images with landmarks.
    pub fn nme(&self) -> Option<f64> {
        (self.n_landmarks > 0).then(|| self.nme_sum / self.n_landmarks as f64)
    }
}

/// Population standard deviations from sums and sums of squares over `n` samples.
fn spreads(sum: &[f64], sq: &[f64], n: u64) -> Vec<f64> {
    let n = n.max(1) as f64;
    sum.iter().zip(sq).map(|(s, q)| (q / n - (s / n).powi(2)).max(0.0).sqrt()).collect()
}

/// Mean of a per-attribute vector (0 for an empty one).
pub fn mean_of(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// Normalized mean error of one face: mean point-to-point distance in pixels divided by the
/// inter-ocular distance (outer eye corners 36 and 45 for 68 points, the eye centres 0 and 1 for
/// CelebA's 5), or by the diagonal of the ground-truth bounding box for other layouts.
pub fn nme(pred: &[f32], target: &[f32], n_points: usize, (h, w): (usize, usize)) -> f64 {
    let px = |v: &[f32], i: usize| (v[2 * i] as f64 * w as f64, v[2 * i + 1] as f64 * h as f64);
    let dist = |a: (f64, f64), b: (f64, f64)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
    let err = (0..n_points).map(|i| dist(px(pred, i), px(target, i))).sum::<f64>() / n_points as f64;
    let norm = match n_points {
        68 => dist(px(target, 36), px(target, 45)),
        5 => dist(px(target, 0), px(target, 1)),
        _ => {
            let xs: Vec<f64> = (0..n_points).map(|i| px(target, i).0).collect();
            let ys: Vec<f64> = (0..n_points).map(|i| px(target, i).1).collect();
            let span = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min);
            (span(&xs).powi(2) + span(&ys).powi(2)).sqrt()
        }
    };
    if norm > 0.0 { err / norm } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_counts_and_accuracies_by_hand() {
        let mut e = Evaluation::default();
        let mut tau = vec![0.0; N_ATTRS];
        tau[1] = 0.5;
        // Four images; attribute 0 targets + + − −, scores 0.9 −0.2 0.1 −0.7 → TP FN FP TN.
        // Attribute 1 targets + − − −, scores 0.4 0.6 −1 −1 with τ = 0.5 → FN FP TN TN.
        let rows = [(0.9, 1.0, 0.4, 1.0), (-0.2, 1.0, 0.6, -1.0), (0.1, -1.0, -1.0, -1.0), (-0.7, -1.0, -1.0, -1.0)];
        for (s0, t0, s1, t1) in rows {
            let mut s = vec![-1.0f32; N_ATTRS];
            let mut t = vec![-1.0f32; N_ATTRS];
            (s[0], t[0], s[1], t[1]) = (s0, t0, s1, t1);
            e.add_attributes(&s, &t, &tau);
        }
        assert_eq!((e.tp[0], e.fn_[0], e.fp[0], e.tn[0]), (1, 1, 1, 1));
        assert_eq!((e.tp[1], e.fn_[1], e.fp[1], e.tn[1]), (0, 1, 1, 2));
        assert_eq!(e.accuracies()[..2], [0.5, 0.5]);
        // Attribute 1: TPR 0/1, TNR 2/3 → 1/3.
        assert!((e.balanced_accuracies()[1] - 1.0 / 3.0).abs() < 1e-12);
        // Attribute 2: all negative and predicted negative → accuracy 1, balanced = TNR = 1.
        assert_eq!((e.accuracies()[2], e.balanced_accuracies()[2]), (1.0, 1.0));
        // MSE of attribute 0: (0.01 + 1.44 + 1.21 + 0.09) / 4.
        assert!((e.attribute_losses()[0] - 2.75 / 4.0).abs() < 1e-6);
        // Per-image accuracies: 39/40, 38/40, 39/40, 40/40 (attributes 2..40 all right).
        let a = [39.0 / 40.0, 38.0 / 40.0, 39.0 / 40.0, 1.0];
        let mean: f64 = a.iter().sum::<f64>() / 4.0;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 3.0;
        assert!((mean_of(&e.accuracies()) - mean).abs() < 1e-12);
        assert!((e.mean_accuracy_se().unwrap() - (var / 4.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn spreads_and_dead_units_by_hand() {
        let mut e = Evaluation::default();
        let tau = vec![0.0; N_ATTRS];
        // Attribute 0 scores 1 and 3 (std 1); attribute 5 scores 0.5 and 0.5 (std 0); the rest -1.
        for s0 in [1.0f32, 3.0] {
            let mut s = vec![-1.0f32; N_ATTRS];
            (s[0], s[5]) = (s0, 0.5);
            e.add_attributes(&s, &[1.0; N_ATTRS], &tau);
        }
        let spread = e.output_spreads();
        assert!((spread[0] - 1.0).abs() < 1e-12 && spread[5] == 0.0 && spread[7] == 0.0);
        // Two layers of the objective head, three units each: unit 1 never fires in fc1, all of fc2 is dead.
        e.add_hidden("objective.fc1", &[0.3, 0.0, 0.0, 0.0, 0.0, 2.0], 3);
        e.add_hidden("objective.fc2", &[0.0; 6], 3);
        e.add_hidden("subjective.fc1", &[1.0, 1.0, 1.0, 0.0, 0.0, 0.0], 3);
        let health = e.head_health(&[("objective", vec![0, 5]), ("subjective", vec![7])]);
        assert_eq!(health.len(), 2);
        // Attribute 0 (score 1 and 3 against τ = 0) is positive for both images: every attribute
        // of both heads gives one label to every image.
        let labels = e.head_health(&[("attributes", vec![0])]);
        assert!(labels[0].collapsed && labels[0].spread == 1.0, "one label for every image is a collapse");
        let mut split = e.clone();
        split.add_attributes(&[-2.0; N_ATTRS], &[1.0; N_ATTRS], &tau);
        assert!(!split.head_health(&[("attributes", vec![0])])[0].collapsed, "attribute 0 now tells images apart");
        assert!((health[0].spread - 0.5).abs() < 1e-12);
        assert_eq!(health[0].dead, [("objective.fc1".to_string(), 1.0 / 3.0), ("objective.fc2".to_string(), 1.0)]);
        assert!(health[0].collapsed, "a dead layer makes the outputs constant");
        assert_eq!(health[1].dead, [("subjective.fc1".to_string(), 0.0)]);
        assert!(health[1].collapsed, "spread 0 < {COLLAPSED_SPREAD}");
        // Landmark outputs (d = 2): x varies by 0.01 (std), y not at all; the mean spread 0.005 is healthy.
        e.add_landmark_outputs(&[0.49, 0.3, 0.51, 0.3], 2);
        let lm = &e.head_health(&[])[0];
        assert_eq!(lm.head, "landmarks");
        assert!((lm.spread - 0.005).abs() < 1e-6 && !lm.collapsed, "{lm:?}");
    }

    #[test]
    fn nme_by_hand() {
        // Five points; eyes at (0.2, 0.5) and (0.6, 0.5) of a 100×100 image: 40 px apart. Every
        // prediction off by 4 px in x → NME 0.1.
        let t = [0.2f32, 0.5, 0.6, 0.5, 0.4, 0.6, 0.3, 0.8, 0.5, 0.8];
        let p: Vec<f32> = t.chunks(2).flat_map(|q| [q[0] + 0.04, q[1]]).collect();
        assert!((nme(&p, &t, 5, (100, 100)) - 0.1).abs() < 1e-6);
        let mut e = Evaluation::default();
        e.add_landmarks(&[p.clone(), p].concat(), &[t, t].concat(), &[1.0, 0.0], 5, (100, 100));
        assert_eq!(e.n_landmarks, 1);
        assert!((e.nme().unwrap() - 0.1).abs() < 1e-6);
        assert!((e.landmark_loss().unwrap() - 5.0 * 0.0016).abs() < 1e-6);
    }
}
