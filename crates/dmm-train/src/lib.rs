//! `dmm-train`: training and evaluating DMM-CNN.
//!
//! This crate owns the training loop of Algorithm 1 ([`trainer`]): the joint loss (Eq. 3) with
//! per-attribute weights and the masked landmark loss, SGD with momentum ([`optim`]), evaluation
//! over the whole validation set every P iterations with the τ and λ updates, the LR plateau
//! schedule, metrics ([`metrics`]), the run directory with atomic checkpoints, exact resume and
//! the JSONL log ([`run`]), and the presets ([`config`]).
//!
//! Policies themselves (Eq. 4, Eq. 6, the schedule) live in `dmm-policy`; the network in
//! `dmm-model`; data in `dmm-data`. End-to-end tests on the bundled sample are in `tests/`.
#![warn(missing_docs)]

pub mod config;
mod error;
pub mod evaluate;
pub mod metrics;
pub mod optim;
pub mod run;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Error, Result};
pub use metrics::Evaluation;
pub use run::RunDir;
pub use trainer::{joint_loss, train, JointLoss, Outcome, Profile, Record, TrainOptions, TrainState};
