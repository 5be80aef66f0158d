//! `dmm-policy`: the training policies of DMM-CNN as plain arithmetic on per-attribute vectors.
//!
//! - [`weighting`]: loss weights λ — uniform (UW), Dynamic Weight Average (DWA, Liu et al. 2019),
//!   Adaptive Weighting (AW, reconstructed from He et al. 2017) and the paper's dynamic weights
//!   (DW, Eq. 4) — behind one trait, [`weighting::WeightScheme`].
//! - [`thresholds`]: the adaptive decision thresholds τ of Eq. 6.
//! - [`schedule`]: the learning-rate plateau schedule.
//! - [`sgd`]: the SGD-with-momentum-and-weight-decay update rule (PyTorch's), as reference math.
//!
//! Invariant: this crate never depends on candle or on any other dmm crate; it works on `&[f64]`
//! and `&[f32]`, and every state is a serde value that checkpoints store. Tests pin each rule on
//! hand-computed values.
#![warn(missing_docs)]

pub mod schedule;
pub mod sgd;
pub mod thresholds;
pub mod weighting;

pub use schedule::Plateau;
pub use sgd::SgdConfig;
pub use thresholds::AdaptiveThresholds;
pub use weighting::{Scheme, WeightScheme, Weighting};
