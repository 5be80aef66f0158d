//! The one error type of `dmm-train`.

/// Errors from configuring, running and resuming training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the dataset or decoding images failed.
    #[error(transparent)]
    Data(#[from] dmm_data::Error),
    /// Building, running or loading the model failed.
    #[error(transparent)]
    Model(#[from] dmm_model::Error),
    /// A tensor operation failed.
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    /// A configuration value is unusable.
    #[error("{0}")]
    Config(String),
    /// A run directory file could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A run directory holds something inconsistent (resume with another config, bad state).
    #[error("{}: {msg}", path.display())]
    Run {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
