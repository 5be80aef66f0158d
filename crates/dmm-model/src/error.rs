//! The one error type of `dmm-model`. Messages name the file (or Hub source) and what did not fit.

use std::path::PathBuf;

/// Errors from building, running and loading models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shapes, dtypes, devices).
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A weight file does not fit the network: names of missing and mis-shaped tensors.
    #[error("{}: does not fit the network: {details}", path.display())]
    Mismatch {
        /// The weight file.
        path: PathBuf,
        /// Missing and mis-shaped keys, by name.
        details: String,
    },
    /// A file is not a valid safetensors file or checkpoint.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A Hugging Face Hub source could not be resolved.
    #[error("{source_name}: {msg}")]
    Hub {
        /// The `hf://` source as given.
        source_name: String,
        /// What went wrong (including "not in the local cache" when offline).
        msg: String,
    },
    /// A device cannot be opened.
    #[error("{0}")]
    Device(String),
    /// A weight source string is malformed.
    #[error("invalid weight source `{0}`: expected a file path or hf://owner/name[@revision][/file]")]
    BadSource(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
}
