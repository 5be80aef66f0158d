//! `dmm-data`: everything between the files on disk and a batch of `f32` tensors.
//!
//! This crate owns the CelebA and LFWA readers ([`celeba`], [`lfwa`]), the landmark CSV
//! ([`landmarks`]), the attribute list and the objective/subjective grouping ([`attrs`]), the image
//! pipeline ([`pipeline`]) and the batch loader ([`loader`]). It sits at the bottom of the workspace:
//! it knows nothing about candle, models or training, and hands out plain `Vec<f32>` buffers in
//! `[b, c, h, w]` order.
//!
//! Invariants:
//! - Attributes are always in CelebA's order ([`attrs::CELEBA_ATTRIBUTES`]); labels are `±1`.
//! - Every parse error names the file and the 1-based line ([`Error::Parse`]).
//! - A partial image folder is normal: datasets list what the label files list, and
//!   [`Dataset::presence`] reports what is on disk.
//!
//! Tests live next to each module; end-to-end checks against the bundled `data/` sample are in
//! `tests/sample.rs`.
#![warn(missing_docs)]

pub mod align;
pub mod attrs;
pub mod celeba;
mod dataset;
mod error;
pub mod fsutil;
pub mod landmarks;
pub mod lfwa;
pub mod loader;
pub mod pipeline;
mod rng;
mod text;

pub use attrs::{AttributeGroups, CELEBA_ATTRIBUTES, N_ATTRS};
pub use dataset::{Dataset, DatasetKind, Presence, Sample, Split, LANDMARKS_CSV};
pub use error::{Error, Result};
pub use landmarks::{LandmarkTable, Landmarks};
pub use loader::{Batch, Loader, LoaderConfig};
pub use pipeline::{Normalization, Transform};
pub use rng::SplitMix64;
