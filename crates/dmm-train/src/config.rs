//! Training configuration: one serde struct with named presets (`smoke`, `mini`, `subset`,
//! `paper`); the CLI starts from a preset and overrides fields. The resolved configuration is
//! written to `config.json` in the run directory and must match on `--resume`.

use std::path::PathBuf;

use dmm_data::{DatasetKind, Split};
use dmm_model::Variant;
use dmm_policy::{Scheme, SgdConfig};

use crate::{Error, Result};

/// Everything that decides a training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// The preset this started from.
    pub preset: String,
    /// Dataset layout.
    pub dataset: DatasetKind,
    /// Dataset root.
    pub root: PathBuf,
    /// Which of Table 1's variants.
    pub variant: Variant,
    /// Trunk width (64 = ResNet-50).
    pub width: usize,
    /// Resize to `(height, width)`; `None` feeds the stored size (218×178 for CelebA).
    pub input_size: Option<(usize, usize)>,
    /// Images per training batch.
    pub batch_size: usize,
    /// Training epochs.
    pub epochs: usize,
    /// P of Algorithm 1: evaluate (and update τ, λ) every this many iterations.
    pub eval_every: usize,
    /// Optimizer hyper-parameters.
    pub sgd: SgdConfig,
    /// Clip the global gradient norm to this (not in the paper; `None` in the `paper` preset).
    pub grad_clip: Option<f64>,
    /// Evaluations without improvement before the learning rate is multiplied by 0.1.
    pub plateau_patience: usize,
    /// β of Eq. 3 (weight of the landmark loss).
    pub beta: f64,
    /// γ of Eq. 6.
    pub gamma: f64,
    /// Loss weighting; `None` follows the variant (DW for variants with dynamic weights, else UW).
    pub weighting: Option<Scheme>,
    /// Rescale DW's λ to sum to J (ignored by other schemes); on in every preset.
    pub rescale_dw: bool,
    /// Seed of initialisation, shuffling and flips.
    pub seed: u64,
    /// Use at most this many training images (the first in list order).
    pub max_train: Option<usize>,
    /// Use at most this many images in each evaluation.
    pub max_eval: Option<usize>,
    /// The split the τ/λ evaluations run on: `val` for CelebA; LFWA has none, so `train`.
    pub eval_split: Split,
    /// Landmark CSV (`None`: `landmarks.csv` in the dataset root, if present).
    pub landmarks: Option<PathBuf>,
    /// ImageNet trunk weights (file or hf://…) to start from.
    pub backbone: Option<String>,
    /// A dmm checkpoint to start from (fine-tuning, e.g. LFWA from CelebA).
    pub init: Option<PathBuf>,
}

/// The largest input side `--size` accepts.
pub const MAX_SIDE: usize = 1024;

/// The trunk the `mini` preset starts from, relative to the repository root: the Baseline at
/// width 8, 96×80, trained by dmm from scratch on 9,000 CelebA train images (`cargo xtask
/// mini-backbone`, which remakes it; `data/pretrained/README.md` has its card). Its images are
/// disjoint from the bundled sample's test split (CelebA's partitions split identities).
pub const MINI_BACKBONE: &str = "data/pretrained/celeba-baseline-w8.safetensors";

impl TrainConfig {
    /// Preset names, in order of size.
    pub const PRESETS: [&'static str; 4] = ["smoke", "mini", "subset", "paper"];

    /// A named preset for `dataset` at `root`.
    pub fn preset(name: &str, dataset: DatasetKind, root: PathBuf) -> Result<Self> {
        let base = Self {
            preset: name.to_string(),
            dataset,
            root,
            variant: Variant::DmmCnn,
            width: 64,
            input_size: None,
            batch_size: 64,
            epochs: 15,
            eval_every: 1000,
            sgd: SgdConfig::paper(),
            grad_clip: None,
            plateau_patience: 1,
            beta: 0.5,
            gamma: dmm_policy::AdaptiveThresholds::PAPER_GAMMA,
            weighting: None,
            // Raw Eq. 4 makes Σλ the sum of the relative loss changes, which falls with them (40 →
            // 1.3 in three epochs of the paper preset on 9,000 images): the step shrinks 30-fold and
            // learning stalls. Every preset rescales λ to sum to 40 (docs/fidelity.md).
            rescale_dw: true,
            seed: 0,
            max_train: None,
            max_eval: None,
            eval_split: match dataset {
                DatasetKind::CelebA => Split::Val,
                DatasetKind::Lfwa => Split::Train,
            },
            landmarks: None,
            backbone: None,
            init: None,
        };
        let cfg = match name {
            // Seconds on a laptop: a handful of tiny iterations and two evaluations.
            "smoke" => Self {
                width: 2,
                input_size: Some((64, 52)),
                batch_size: 8,
                epochs: 1,
                eval_every: 3,
                max_train: Some(48),
                max_eval: Some(16),
                ..base
            },
            // The bundled sample on a CPU: under a minute per run on one core, so that `cargo xtask
            // reproduce --preset mini` (20 runs, two at a time on two cores) takes minutes. 280
            // images and a few hundred steps cannot train a trunk from scratch (it stays at the
            // priors), so the trunk starts from the bundled one, as the paper's starts from
            // ImageNet: see [`MINI_BACKBONE`]. LFWA fine-tunes the CelebA run's model on the 300
            // bundled LFWA train images for 6 epochs, and both evaluate on at most 60 images (LFWA
            // on its train split), so that an LFWA run costs about half a CelebA one; 60 images did
            // not move the model off the majority (docs/training.md, "What training reaches").
            "mini" => Self {
                width: 8,
                input_size: Some((96, 80)),
                batch_size: 16,
                epochs: match dataset {
                    DatasetKind::CelebA => 12,
                    DatasetKind::Lfwa => 6,
                },
                eval_every: 17,
                max_eval: Some(60),
                sgd: SgdConfig { lr: 0.00025, ..SgdConfig::paper() },
                plateau_patience: 2,
                backbone: Some(MINI_BACKBONE.into()),
                ..base
            },
            // A real CelebA subset (../shared's 9,000 train / 2,000 val) in about half an hour on
            // two cores: width 32 at half CelebA's size, an evaluation per epoch, and lr 0.00025 on
            // the summed loss of Eq. 3, i.e. 0.01 on the mean over the 40 attributes (docs/training.md,
            // "What training reaches", has the runs this was chosen from).
            "subset" => Self {
                width: 32,
                input_size: Some((109, 89)),
                batch_size: 32,
                epochs: 10,
                eval_every: 281,
                sgd: SgdConfig { lr: 0.00025, ..SgdConfig::paper() },
                ..base
            },
            // The paper's setting: full data, width 64, native size, batch 64, 15 epochs, lr 0.001.
            "paper" => base,
            other => {
                return Err(Error::Config(format!("unknown preset `{other}` (expected {})", Self::PRESETS.join(", "))))
            }
        };
        Ok(cfg)
    }

    /// The weighting scheme in force.
    pub fn scheme(&self) -> Scheme {
        self.weighting.unwrap_or(if self.variant.uses_dynamic_weights() {
            Scheme::Dw { rescale: self.rescale_dw }
        } else {
            Scheme::Uw
        })
    }

    /// Checks values that would make training meaningless (or exhaust memory).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.width == 0 || self.batch_size == 0 || self.epochs == 0 || self.eval_every == 0 {
            return bad("width, batch size, epochs and eval-every must all be at least 1");
        }
        if !self.sgd.lr.is_finite() || self.sgd.lr <= 0.0 {
            return bad("the learning rate must be a positive number");
        }
        if let Some((h, w)) = self.input_size {
            if h < 32 || w < 32 {
                return bad("input size must be at least 32×32");
            }
            // A batch at 1024×1024 already takes gigabytes of activations at the paper's width.
            if h > MAX_SIDE || w > MAX_SIDE {
                return Err(Error::Config(format!("input size must be at most {MAX_SIDE}×{MAX_SIDE} (CelebA's images are 218×178)")));
            }
        }
        if self.dataset == DatasetKind::Lfwa && self.eval_split == Split::Val {
            return bad("LFWA has no validation split: evaluate on train (the paper's choice) or test");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_follow_the_variant() {
        for name in TrainConfig::PRESETS {
            let cfg = TrainConfig::preset(name, DatasetKind::CelebA, "data/celeba".into()).unwrap();
            cfg.validate().unwrap();
            assert_eq!(cfg.scheme().name(), "DW");
        }
        let paper = TrainConfig::preset("paper", DatasetKind::CelebA, "x".into()).unwrap();
        assert_eq!((paper.width, paper.batch_size, paper.epochs, paper.sgd.lr, paper.beta), (64, 64, 15, 0.001, 0.5));
        assert_eq!(paper.scheme(), Scheme::Dw { rescale: true });
        let raw = TrainConfig { rescale_dw: false, ..paper.clone() };
        assert_eq!(raw.scheme(), Scheme::Dw { rescale: false });
        let eq = TrainConfig { variant: Variant::DmmEqAt, ..paper };
        assert_eq!(eq.scheme(), Scheme::Uw);
        assert!(TrainConfig::preset("huge", DatasetKind::CelebA, "x".into()).is_err());
        let lfwa = TrainConfig::preset("mini", DatasetKind::Lfwa, "x".into()).unwrap();
        assert_eq!((lfwa.eval_split, lfwa.epochs, lfwa.max_eval), (Split::Train, 6, Some(60)));
        let celeba = TrainConfig::preset("mini", DatasetKind::CelebA, "x".into()).unwrap();
        assert_eq!((celeba.eval_split, celeba.epochs, celeba.max_eval), (Split::Val, 12, Some(60)));
    }

    /// The trunk `mini` starts from ships in the repository, where the preset looks for it.
    #[test]
    fn the_mini_backbone_is_bundled() {
        let mini = TrainConfig::preset("mini", DatasetKind::CelebA, "data/celeba".into()).unwrap();
        assert_eq!(mini.backbone.as_deref(), Some(MINI_BACKBONE));
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert!(repo.join(MINI_BACKBONE).is_file(), "{MINI_BACKBONE} is missing: `cargo xtask mini-backbone` remakes it");
        let smoke = TrainConfig::preset("smoke", DatasetKind::CelebA, "data/celeba".into()).unwrap();
        assert_eq!(smoke.backbone, None);
    }
}
