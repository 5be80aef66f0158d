//! The one error type of `dmm-data`. Every variant carries the file (and line, for text formats)
//! so a user can go straight to the problem.

use std::path::PathBuf;

/// Errors from reading datasets, landmark files and images.
///
/// Messages are complete on their own (the underlying error is part of the text, not a separate
/// `source()`), so `{:#}` chains print each cause once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A text file is malformed at a given line (1-based).
    #[error("{}:{line}: {msg}", path.display())]
    Parse {
        /// The file being read.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, with the offending value.
        msg: String,
    },
    /// A file could not be opened or read.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// An image could not be decoded (truncated, not an image, unsupported format).
    #[error("{}: cannot decode image: {cause}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        cause: image::ImageError,
    },
    /// An image listed by the label files is not on disk and strict mode was asked for.
    #[error("{}: image listed in {} is missing", path.display(), listed_in.display())]
    MissingImage {
        /// The expected image path.
        path: PathBuf,
        /// The label file that lists it.
        listed_in: PathBuf,
    },
    /// A file-level inconsistency that has no single line (counts, cross-file mismatches).
    #[error("{}: {msg}", path.display())]
    Invalid {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A request that does not fit the data (bad batch size, incompatible image sizes, ...).
    #[error("{0}")]
    Config(String),
    /// Reading `indices_train_test.mat` failed.
    #[cfg(feature = "mat")]
    #[error("{}: cannot read MATLAB 7.3 file: {cause}", path.display())]
    Mat {
        /// The .mat file.
        path: PathBuf,
        /// The HDF5 error.
        cause: hdf5::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn parse(path: impl Into<PathBuf>, line: usize, msg: impl Into<String>) -> Self {
        Error::Parse { path: path.into(), line, msg: msg.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause: source }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Invalid { path: path.into(), msg: msg.into() }
    }
}
