//! `dmm-model`: the DMM-CNN network on candle.
//!
//! This crate owns:
//! - the trainable ResNet-50 trunk ([`trunk`]);
//! - its CPU kernels on the `gemm` crate: convolutions as matrix products ([`conv`]; Winograd
//!   F(4×4, 3×3) for the 3×3 stride-1 ones on larger maps, and eval mode's block end fused into
//!   the last product), fused batch normalization + ReLU ([`norm`]), and fully connected layers
//!   whose gradients land in place, streaming a large weight once for a small batch ([`linear`]),
//!   with their elementwise loops compiled again for AVX2 and picked at run time (`simd`);
//! - the same kernels on CUDA (feature `cuda`): `kernels/dmm.cu` and cuBLAS, behind each op's
//!   `cuda_fwd`, and the device names of the command line ([`device`]);
//! - max and adaptive max pooling with a correct backward, and spatial pyramid pooling ([`pool`]);
//! - the attribute and landmark heads and the seven variants of Table 1 ([`model`], [`variant`]);
//! - weight I/O: ImageNet trunk weights from a safetensors file or the Hugging Face Hub, and full
//!   checkpoints with the metadata that prediction needs ([`weights`], [`checkpoint`]).
//!
//! It depends on `dmm-data` only for the attribute list, groups and normalization; it knows
//! nothing about losses, optimizers or training loops (`dmm-train`).
//!
//! PyTorch parity and finite-difference gradient checks are in `tests/`.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod conv;
#[cfg(feature = "cuda")]
mod cuda;
pub mod device;
#[cfg(test)]
mod emulated;
mod gemm;
pub mod init;
pub mod linear;
mod error;
pub mod model;
pub mod norm;
pub mod pool;
mod simd;
pub mod trunk;
pub mod variant;
pub mod weights;

pub use checkpoint::{Checkpoint, CheckpointMeta};
pub use device::DeviceSpec;
pub use error::{Error, Result};
pub use model::{DmmModel, DmmOutput, ModelConfig};
pub use variant::{AttributeHead, Variant};
pub use weights::{LoadReport, WeightSource};
