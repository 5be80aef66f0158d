//! Loading ImageNet weights into the trunk: from a local safetensors file or from the Hugging Face
//! Hub (`hf://timm/resnet50.a1_in1k`), with offline use of an existing cache.
//!
//! Keys are torchvision's/timm's. Only trunk variables are loaded; heads keep their fresh
//! initialisation. The classifier (`fc.*`) and `num_batches_tracked` counters are ignored; a file
//! with a missing or mis-shaped trunk tensor is refused with every such key named. Half-precision
//! files are converted to `f32`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use crate::model::is_trunk_key;
use crate::{Error, Result};

/// Where weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightSource {
    /// A local safetensors file.
    File(PathBuf),
    /// A file in a Hugging Face Hub model repository.
    Hub {
        /// `owner/name`.
        repo: String,
        /// File in the repository (default `model.safetensors`).
        file: String,
        /// Branch, tag or commit (default `main`).
        revision: Option<String>,
    },
}

impl FromStr for WeightSource {
    type Err = Error;

    /// `hf://owner/name[@revision][/path/in/repo]` or a file path.
    fn from_str(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix("hf://") else {
            return Ok(WeightSource::File(PathBuf::from(s)));
        };
        let mut parts = rest.splitn(3, '/');
        let (owner, name_rev, file) = (parts.next(), parts.next(), parts.next());
        let (Some(owner), Some(name_rev)) = (owner, name_rev) else { return Err(Error::BadSource(s.into())) };
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) => (n, Some(r.to_string())),
            None => (name_rev, None),
        };
        if owner.is_empty() || name.is_empty() || revision.as_deref() == Some("") || file == Some("") {
            return Err(Error::BadSource(s.into()));
        }
        Ok(WeightSource::Hub {
            repo: format!("{owner}/{name}"),
            file: file.unwrap_or("model.safetensors").to_string(),
            revision,
        })
    }
}

impl std::fmt::Display for WeightSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightSource::File(p) => write!(f, "{}", p.display()),
            WeightSource::Hub { repo, file, revision } => {
                write!(f, "hf://{repo}")?;
                if let Some(r) = revision {
                    write!(f, "@{r}")?;
                }
                write!(f, "/{file}")
            }
        }
    }
}

impl WeightSource {
    /// The local path of the weights: the file itself, or the Hub file downloaded into (or, with
    /// `offline`, only looked up in) the Hugging Face cache (`cache_dir`, else [`hub_cache_dir`]).
    pub fn resolve(&self, offline: bool, cache_dir: Option<&Path>) -> Result<PathBuf> {
        match self {
            WeightSource::File(p) => {
                if p.is_file() {
                    Ok(p.clone())
                } else {
                    Err(Error::io(p, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")))
                }
            }
            WeightSource::Hub { repo, file, revision } => {
                let hub_err = |msg: String| Error::Hub { source_name: self.to_string(), msg };
                let cache = hf_hub::Cache::new(cache_dir.map_or_else(hub_cache_dir, Path::to_path_buf));
                let hub_repo = hf_hub::Repo::with_revision(repo.clone(), hf_hub::RepoType::Model, revision.clone().unwrap_or_else(|| "main".into()));
                if let Some(path) = cached_file(&cache, &hub_repo, file) {
                    return Ok(path);
                }
                if offline {
                    return Err(hub_err(format!(
                        "not in the Hugging Face cache {} (offline: only the local Hugging Face cache was searched)",
                        cache.path().display()
                    )));
                }
                let api = hf_hub::api::sync::ApiBuilder::from_cache(cache).build().map_err(|e| hub_err(e.to_string()))?;
                api.repo(hub_repo).download(file).map_err(|e| hub_err(e.to_string()))
            }
        }
    }
}

/// The Hugging Face cache folder: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (the Python library's order).
fn hub_cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .unwrap_or_else(|| var("HOME").unwrap_or_default().join(".cache/huggingface/hub"))
}

/// `file` of `repo` in the cache, if present: through the ref of a branch or tag, or directly
/// under `snapshots/` for a commit hash.
fn cached_file(cache: &hf_hub::Cache, repo: &hf_hub::Repo, file: &str) -> Option<PathBuf> {
    cache.repo(repo.clone()).get(file).or_else(|| {
        let rev = repo.revision();
        let is_commit = rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit());
        let path = cache.path().join(repo.folder_name()).join("snapshots").join(rev).join(file);
        (is_commit && path.is_file()).then_some(path)
    })
}

/// What a trunk load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The file read.
    pub path: PathBuf,
    /// Trunk tensors set from the file.
    pub loaded: usize,
    /// File keys that are not trunk variables and not known extras (a head, another network).
    pub unexpected: Vec<String>,
    /// Known extras skipped on purpose: the ImageNet classifier and batch counters.
    pub ignored: Vec<String>,
}

/// Reads every tensor of a safetensors file onto `device`, refusing a file whose checksum (see
/// [`crate::checkpoint::CHECKSUM_KEY`]) does not match its bytes.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    crate::checkpoint::verify(&bytes, path)?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| Error::format(path, format!("not a readable safetensors file: {e}")))
}

/// Sets the trunk variables of `varmap` from the safetensors file at `path`.
///
/// Fails, changing nothing, when a trunk variable is missing from the file or has another shape.
pub fn load_trunk(varmap: &VarMap, path: &Path) -> Result<LoadReport> {
    let data = varmap.data().lock().expect("varmap lock");
    let device = data.values().next().map(|v| v.device().clone()).unwrap_or(Device::Cpu);
    let tensors = read_safetensors(path, &device)?;
    let mut missing = Vec::new();
    let mut mis_shaped = Vec::new();
    let mut updates = Vec::new();
    let mut names: Vec<&String> = data.keys().filter(|k| is_trunk_key(k)).collect();
    names.sort();
    for name in names {
        let var = &data[name];
        match tensors.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.dims() != var.dims() => {
                mis_shaped.push(format!("{name} (file {:?}, network {:?})", t.dims(), var.dims()))
            }
            Some(t) => updates.push((var, t.to_dtype(DType::F32)?)),
        }
    }
    if !missing.is_empty() || !mis_shaped.is_empty() {
        let mut details = Vec::new();
        if !missing.is_empty() {
            details.push(format!("{} missing: {}", missing.len(), abbreviate(&missing)));
        }
        if !mis_shaped.is_empty() {
            details.push(format!("{} mis-shaped: {}", mis_shaped.len(), abbreviate(&mis_shaped)));
        }
        return Err(Error::Mismatch { path: path.to_path_buf(), details: details.join("; ") });
    }
    for (var, t) in &updates {
        var.set(t)?;
    }
    let mut report = LoadReport { path: path.to_path_buf(), loaded: updates.len(), ..Default::default() };
    let mut extra: Vec<&String> = tensors.keys().filter(|k| !data.contains_key(*k)).collect();
    extra.sort();
    for k in extra {
        if k.starts_with("fc.") || k.ends_with("num_batches_tracked") {
            report.ignored.push(k.clone());
        } else {
            report.unexpected.push(k.clone());
        }
    }
    Ok(report)
}

/// The first few names of a long list, with the count of the rest.
fn abbreviate(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", … and {} more", names.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        let hub = |repo: &str, file: &str, rev: Option<&str>| WeightSource::Hub {
            repo: repo.into(),
            file: file.into(),
            revision: rev.map(Into::into),
        };
        assert_eq!("hf://timm/resnet50.a1_in1k".parse::<WeightSource>().unwrap(), hub("timm/resnet50.a1_in1k", "model.safetensors", None));
        assert_eq!("hf://o/n@v2/sub/w.safetensors".parse::<WeightSource>().unwrap(), hub("o/n", "sub/w.safetensors", Some("v2")));
        assert_eq!("weights/r50.safetensors".parse::<WeightSource>().unwrap(), WeightSource::File("weights/r50.safetensors".into()));
        for bad in ["hf://", "hf://timm", "hf://timm/", "hf:///x", "hf://o/n@", "hf://o/n/"] {
            assert!(bad.parse::<WeightSource>().is_err(), "{bad}");
        }
        assert_eq!(hub("o/n", "f.st", Some("r")).to_string(), "hf://o/n@r/f.st");
    }
}
