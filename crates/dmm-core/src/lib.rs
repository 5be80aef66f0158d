//! The vocabulary every dmm crate shares, at the bottom of the workspace so that data and model
//! stand side by side and neither imports the other (docs/architecture.md):
//!
//! - [`attrs`]: the 40 CelebA attributes in their order and their objective/subjective grouping;
//! - [`Normalization`]: the pixel normalization a network was trained with;
//! - [`SplitMix64`]: the fully specified generator behind shuffles, flips and initialisation;
//! - [`fsutil::write_atomic`]: how every crate writes a file.
//!
//! It depends on nothing heavier than serde.

pub mod attrs;
pub mod fsutil;
mod rng;

pub use attrs::{AttributeGroups, GroupsError, CELEBA_ATTRIBUTES, N_ATTRS};
pub use rng::{mix, SplitMix64};

/// Per-channel mean and standard deviation applied after scaling pixels to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Subtracted from each RGB channel.
    pub mean: [f32; 3],
    /// Each RGB channel is divided by this.
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet statistics, as used by torchvision's pretrained ResNets.
    pub const IMAGENET: Normalization = Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
}

impl Default for Normalization {
    fn default() -> Self {
        Self::IMAGENET
    }
}
