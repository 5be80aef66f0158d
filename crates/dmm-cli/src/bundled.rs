//! The model built into `dmm`, so that `dmm predict photo.jpg` answers without `--model`:
//! DMM-CNN at width 16, trained by `cargo xtask bundle-model` on CelebA images and stored in
//! half precision. Its card, with the data, the command and the test accuracy, is
//! `models/README.md`.

use std::path::Path;

/// The model's name, as `dmm predict` reports it.
pub const NAME: &str = "dmm-cnn-celeba-w16";

/// Where the model lives in the repository (and how errors name it).
pub const PATH: &str = "models/dmm-cnn-celeba-w16.safetensors";

/// The checkpoint's bytes.
pub static BYTES: &[u8] = include_bytes!("../../../models/dmm-cnn-celeba-w16.safetensors");

/// Loads the built-in model.
pub fn load(device: &candle_core::Device) -> dmm_model::Result<dmm_model::checkpoint::Checkpoint> {
    dmm_model::checkpoint::load_bytes(BYTES, Path::new(PATH), device)
}
