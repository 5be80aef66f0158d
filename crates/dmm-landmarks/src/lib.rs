//! `dmm-landmarks`: the 68 facial landmarks of dlib (HOG frontal face detector, upsample 1, largest
//! face, then `shape_predictor_68_face_landmarks.dat`) that DMM-CNN's auxiliary task learns
//! (paper §3.2.3), written to the landmark CSV of `dmm-data`.
//!
//! The detector binds the system dlib through a small C++ shim (`src/shim.cpp`) behind the `dlib`
//! feature, so the default build needs no system library. The precompute driver ([`precompute`])
//! is independent of dlib: it takes any detector, runs it in parallel, skips images already done,
//! and rewrites the CSV atomically after every chunk, so an interrupted run resumes where it
//! stopped. Images where no face is found are listed in `<csv>.noface` and left out of the CSV.
//!
//! Parity with Python's dlib is tested in `tests/parity.rs` (with the feature).
#![warn(missing_docs)]

#[cfg(feature = "dlib")]
mod dlib;


#[cfg(feature = "dlib")]
pub use dlib::{decode_like_pil, decode_oriented_like_pil, Dlib};
pub mod precompute;
pub use precompute::{collect_images, precompute, Options, Summary};

use std::path::PathBuf;

/// Decodes an image for the detector: as Python's pipeline does with the `dlib` feature (JPEGs
/// through libjpeg-turbo, see `decode_like_pil`), else with dmm-data's decoder.
pub fn decode(path: &std::path::Path) -> Result<image::RgbImage> {
    #[cfg(feature = "dlib")]
    return decode_like_pil(path);
    #[cfg(not(feature = "dlib"))]
    return Ok(dmm_data::pipeline::decode(path)?);
}

/// Where Debian's libdlib-data puts the 68-point model.
pub const DEFAULT_PREDICTOR: &str = "/usr/share/dlib/shape_predictor_68_face_landmarks.dat";

/// Points of dlib's public model.
pub const N_POINTS: usize = 68;

/// Landmarks of the largest detected face.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// `[x0, y0, …, x67, y67]` in pixels of the image given.
    pub points: Vec<f32>,
    /// Detection box `[left, top, right, bottom]`.
    pub bbox: [f32; 4],
    /// Faces the detector found (the largest is used).
    pub n_faces: usize,
}

/// Errors of landmark detection and precompute.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// dlib failed (model file unreadable, internal error).
    #[error("dlib: {0}")]
    Dlib(String),
    /// Reading or writing data files failed.
    #[error(transparent)]
    Data(#[from] dmm_data::Error),
    /// A file or folder could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
