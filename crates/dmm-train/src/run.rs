//! The run directory: `config.json` (the resolved configuration), `last.safetensors` (the resume
//! point: model, metadata, training state and optimizer buffers in one atomic file),
//! `model.safetensors` (the best model by evaluation mean accuracy, with its thresholds — the one to
//! predict with) and `metrics.jsonl` (one record per evaluation).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Paths of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
}

impl RunDir {
    /// The run directory at `path` (not created yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.path.join("config.json")
    }

    /// `last.safetensors`, the resume point.
    pub fn last(&self) -> PathBuf {
        self.path.join("last.safetensors")
    }

    /// `model.safetensors`, the best model.
    pub fn best(&self) -> PathBuf {
        self.path.join("model.safetensors")
    }

    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    dmm_data::fsutil::write_atomic(path, bytes).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })
}

/// Appends one JSON line and flushes it to disk.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let io = |e| Error::Io { path: path.to_path_buf(), cause: e };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    writeln!(f, "{line}").map_err(io)?;
    f.sync_data().map_err(io)
}

/// Keeps only the JSONL records whose `iteration` is at most `last` (records written after the
/// resume point describe lost work), atomically.
pub fn truncate_records(path: &Path, last: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })?;
    let mut kept = String::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Run { path: path.to_path_buf(), msg: format!("line {}: not JSON: {e}", i + 1) })?;
        if v["iteration"].as_u64().is_some_and(|it| it <= last) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_atomic(path, kept.as_bytes())
}
