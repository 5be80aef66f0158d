//! `dmm-data`: everything between the files on disk and a batch of `f32` tensors.
//!
//! This crate owns the CelebA and LFWA readers ([`celeba`], [`lfwa`]), the landmark CSV
//! ([`landmarks`]), the image pipeline ([`pipeline`]) and the batch loader ([`loader`]). It sits
//! just above `dmm-core` (the attribute list and grouping, the generator, atomic writes, which it
//! re-exports): it knows nothing about candle, models or training, and hands out plain `Vec<f32>`
//! buffers in `[b, c, h, w]` order.
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
pub mod celeba;
mod dataset;
mod error;
pub mod landmarks;
pub mod lfwa;
pub mod loader;
pub mod pipeline;
mod text;

pub use dmm_core::{attrs, fsutil, AttributeGroups, SplitMix64, CELEBA_ATTRIBUTES, N_ATTRS};
pub use dataset::{Dataset, DatasetKind, Presence, Sample, Split, LANDMARKS_CSV};
pub use error::{Error, Result};
pub use landmarks::{LandmarkTable, Landmarks};
pub use loader::{Batch, Loader, LoaderConfig};
pub use pipeline::{Normalization, Transform};
