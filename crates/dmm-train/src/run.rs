//! The run directory: `config.json` (the resolved configuration), `last.safetensors` (the resume
//! point: model, metadata, training state and optimizer buffers in one atomic file),
//! `model.safetensors` (the best model by evaluation mean accuracy, with its thresholds — the one to
//! predict with), `metrics.jsonl` (one record per evaluation) and `profile.json` (where the wall
//! time of the call that finished the run went: decode, loader, forward, backward, update, evaluation,
//! checkpoints; not part of the result, so resumed runs differ only there).

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

    /// `profile.json`, where the finishing call's time went.
    pub fn profile(&self) -> PathBuf {
        self.path.join("profile.json")
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
/// resume point describe lost work), atomically. A last line without its newline is a record cut
/// short by a kill or a full disk: it is dropped as well.
pub fn truncate_records(path: &Path, last: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })?;
    let complete = &bytes[..bytes.iter().rposition(|&b| b == b'\n').map_or(0, |end| end + 1)];
    let complete = std::str::from_utf8(complete).map_err(|e| Error::Run { path: path.to_path_buf(), msg: format!("not UTF-8: {e}") })?;
    let mut kept = String::new();
    for (i, line) in complete.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Run { path: path.to_path_buf(), msg: format!("line {}: not JSON: {e}", i + 1) })?;
        if v["iteration"].as_u64().is_some_and(|it| it <= last) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_atomic(path, kept.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records after the resume point go, and so does a record cut short (no newline, possibly
    /// inside a character); a damaged complete line is still an error naming the line.
    #[test]
    fn truncation_drops_later_records_and_a_cut_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let full = "{\"iteration\":0}\n{\"iteration\":4}\n{\"iteration\":8}\n{\"iteration\":12,\"head\":\"objectiv\u{e9}";
        for cut in [full.len(), full.len() - 1] {
            std::fs::write(&path, &full.as_bytes()[..cut]).unwrap();
            truncate_records(&path, 4).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"iteration\":0}\n{\"iteration\":4}\n");
        }
        std::fs::write(&path, "{\"iteration\":0}\n{\"iteration\n").unwrap();
        let err = truncate_records(&path, 4).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl") && err.contains("line 2"), "{err}");
    }
}
