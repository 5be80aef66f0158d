//! `cargo xtask download`: put CelebA or LFWA into the layout `dmm-data` reads, from a Hugging Face
//! Hub dataset repository that mirrors the official files (`--hub`, through hf-hub, resumable in
//! the HF cache) or from files the user already has (`--from`). Every file with a known official
//! MD5 is verified before it is used; archives are unpacked into a hidden temporary folder that is
//! renamed into place only when complete, and the label files — which make a root usable — are
//! moved in last. A failed or interrupted download therefore leaves nothing that looks complete.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

/// One file of a dataset release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Official file name.
    pub file: &'static str,
    /// Its official MD5 (hex), when one is published.
    pub md5: Option<&'static str>,
    /// An archive to unpack, and the folder it holds.
    pub unpacks_to: Option<&'static str>,
    /// The dataset cannot be used without it.
    pub required: bool,
}

/// CelebA (Liu et al. 2015), official names and MD5s; images unpack to `img_align_celeba/`.
pub const CELEBA: &[Entry] = &[
    Entry { file: "img_align_celeba.zip", md5: Some("00d2c5bc6d35e252742224ab0c1e8fcb"), unpacks_to: Some("img_align_celeba"), required: true },
    Entry { file: "list_landmarks_align_celeba.txt", md5: Some("cc24ecafdb5b50baae59b03474781f8c"), unpacks_to: None, required: false },
    Entry { file: "identity_CelebA.txt", md5: Some("32bd1bd63d3c78cd57e08160ec5ed1e2"), unpacks_to: None, required: false },
    Entry { file: "list_eval_partition.txt", md5: Some("d32c9cbf5e040fd4025c592c306e6668"), unpacks_to: None, required: true },
    Entry { file: "list_attr_celeba.txt", md5: Some("75e246fa4810816ffd6ee81facbd244c"), unpacks_to: None, required: true },
];

/// LFWA: the LFW images (`lfw.tgz`, MD5 as published with LFW) and the LFWA annotation of Liu et
/// al. 2015 (`name.txt`, `label.txt`, `indices_train_test.mat`; MD5s of the copies verified
/// against the released annotation archive).
pub const LFWA: &[Entry] = &[
    Entry { file: "lfw.tgz", md5: Some("a17d05bd522c52d84eca14327a23d494"), unpacks_to: Some("lfw"), required: true },
    Entry { file: "indices_train_test.mat", md5: Some("09526624631bf6b637829aa970b4a5f5"), unpacks_to: None, required: true },
    Entry { file: "label.txt", md5: Some("a180d1e8407a9e44ef2c068cfb358c0e"), unpacks_to: None, required: true },
    Entry { file: "name.txt", md5: Some("da1a330d8e5f2d2cba8f6bcbc4244836"), unpacks_to: None, required: true },
];

/// Where the files come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A folder holding the official files (or, for an archive, its unpacked folder).
    Dir(PathBuf),
    /// A Hugging Face Hub dataset repository `owner/name` at a revision, with the official files
    /// at its top level.
    Hub {
        /// `owner/name`.
        repo: String,
        /// Branch, tag or commit.
        revision: Option<String>,
        /// Use only the local HF cache.
        offline: bool,
        /// Cache folder (default: the HF environment's).
        cache: Option<PathBuf>,
    },
}

/// Parses `owner/name[@revision]`.
pub fn parse_hub(s: &str, offline: bool) -> anyhow::Result<Source> {
    let (repo, revision) = match s.split_once('@') {
        Some((r, v)) => (r, Some(v.to_string())),
        None => (s, None),
    };
    let ok = repo.split('/').count() == 2 && repo.split('/').all(|p| !p.is_empty()) && revision.as_deref() != Some("");
    if !ok {
        bail!("--hub `{s}`: expected owner/name or owner/name@revision");
    }
    Ok(Source::Hub { repo: repo.to_string(), revision, offline, cache: None })
}

impl Source {
    /// The local path of `file`, fetching it into the HF cache if needed; `None` when the source
    /// does not have it.
    fn fetch(&self, file: &str) -> anyhow::Result<Option<PathBuf>> {
        match self {
            Source::Dir(dir) => Ok(Some(dir.join(file)).filter(|p| p.is_file())),
            Source::Hub { repo, revision, offline, cache } => {
                let cache = hf_hub::Cache::new(cache.clone().unwrap_or_else(hub_cache_dir));
                let hub_repo = hf_hub::Repo::with_revision(repo.clone(), hf_hub::RepoType::Dataset, revision.clone().unwrap_or_else(|| "main".into()));
                if let Some(path) = cache.repo(hub_repo.clone()).get(file) {
                    return Ok(Some(path));
                }
                if *offline {
                    bail!("hf://datasets/{repo}/{file}: not in the Hugging Face cache {} (offline: only the local Hugging Face cache was searched)", cache.path().display());
                }
                eprintln!("fetching {file} from hf://datasets/{repo} …");
                let api = hf_hub::api::sync::ApiBuilder::from_cache(cache).build().context("starting the Hugging Face client")?;
                let path = api.repo(hub_repo).download(file).with_context(|| format!("hf://datasets/{repo}/{file}"))?;
                Ok(Some(path))
            }
        }
    }
}

/// The Hugging Face cache folder: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (as dmm-model's `weights::hub_cache_dir`; xtask does not link dmm-model).
fn hub_cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .unwrap_or_else(|| var("HOME").unwrap_or_default().join(".cache/huggingface/hub"))
}

/// Fetches, verifies and unpacks `entries` into `out`. Already-complete parts are kept.
pub fn install(entries: &[Entry], source: &Source, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    // Archives first, label files last: the root only becomes usable when everything is there.
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by_key(|e| (e.unpacks_to.is_none(), e.required));
    let mut skipped = Vec::new();
    for e in order {
        if let Some(folder) = e.unpacks_to {
            let dest = out.join(folder);
            if dest.is_dir() {
                eprintln!("{}: present, kept", dest.display());
                continue;
            }
            if let Source::Dir(dir) = source {
                // An unpacked folder the user already has is copied as it is.
                let have = dir.join(folder);
                if have.is_dir() && !dir.join(e.file).is_file() {
                    eprintln!("copying {} (no archive to verify; run `dmm dataset check` afterwards)", have.display());
                    let tmp = hidden(out, folder);
                    copy_dir(&have, &tmp)?;
                    rename(&tmp, &dest)?;
                    continue;
                }
            }
            let Some(archive) = source.fetch(e.file)? else {
                bail!("{} is not in {} (nor an unpacked {folder}/)", e.file, describe(source));
            };
            verify(&archive, e)?;
            let tmp = hidden(out, folder);
            unpack(&archive, &tmp).with_context(|| format!("unpacking {}", archive.display()))?;
            let inner = tmp.join(folder);
            if !inner.is_dir() {
                bail!("{} does not hold a top-level {folder}/ folder", archive.display());
            }
            rename(&inner, &dest)?;
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            let dest = out.join(e.file);
            if dest.is_file() && verify(&dest, e).is_ok() {
                eprintln!("{}: present and verified, kept", dest.display());
                continue;
            }
            let src = match source.fetch(e.file) {
                Ok(Some(p)) => p,
                Ok(None) if e.required => bail!("{} is not in {}", e.file, describe(source)),
                Err(err) if e.required => return Err(err),
                Ok(None) => {
                    skipped.push(format!("{} not found in {}", e.file, describe(source)));
                    continue;
                }
                Err(err) => {
                    skipped.push(format!("{err:#}"));
                    continue;
                }
            };
            verify(&src, e)?;
            let tmp = hidden(out, e.file);
            std::fs::copy(&src, &tmp).with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
            rename(&tmp, &dest)?;
        }
    }
    for why in skipped {
        eprintln!("note: optional file skipped: {why}");
    }
    Ok(())
}

fn describe(source: &Source) -> String {
    match source {
        Source::Dir(d) => d.display().to_string(),
        Source::Hub { repo, .. } => format!("hf://datasets/{repo}"),
    }
}

/// A hidden sibling in `out` for work in progress, emptied first.
fn hidden(out: &Path, name: &str) -> PathBuf {
    let p = out.join(format!(".{name}.partial"));
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(&p);
    } else {
        let _ = std::fs::remove_file(&p);
    }
    p
}

fn rename(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))
}

/// Checks the MD5 of `path` against the entry's official one (a progress bar for big files).
pub fn verify(path: &Path, e: &Entry) -> anyhow::Result<()> {
    let Some(expected) = e.md5 else { return Ok(()) };
    let got = md5_of(path)?;
    if got != expected {
        bail!("{}: MD5 {got} differs from the official {expected} of {} (corrupt or partial download; delete it and fetch again)", path.display(), e.file);
    }
    Ok(())
}

/// MD5 (hex) of a file.
pub fn md5_of(path: &Path) -> anyhow::Result<String> {
    use md5::Digest;
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if len > 64 << 20 {
        ProgressBar::new(len).with_style(ProgressStyle::with_template("verifying {bar:30} {bytes}/{total_bytes}").expect("valid template"))
    } else {
        ProgressBar::hidden()
    };
    let mut hasher = md5::Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("{}: read error", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Unpacks a `.zip` or `.tgz`/`.tar.gz` into `dir` (which must not exist).
fn unpack(archive: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let f = std::fs::File::open(archive)?;
    let name = archive.to_string_lossy();
    if name.ends_with(".zip") {
        let mut z = zip::ZipArchive::new(f)?;
        z.extract(dir)?;
    } else if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        tar::Archive::new(flate2::read::GzDecoder::new(f)).unpack(dir)?;
    } else {
        bail!("unknown archive type");
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("{}: cannot list", from.display()))? {
        let p = entry?.path();
        let target = to.join(p.file_name().expect("listed entries have names"));
        if p.is_dir() {
            copy_dir(&p, &target)?;
        } else {
            std::fs::copy(&p, &target).with_context(|| format!("copying {}", p.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn entries(md5_zip: &'static str, md5_txt: &'static str) -> Vec<Entry> {
        vec![
            Entry { file: "imgs.zip", md5: Some(md5_zip), unpacks_to: Some("imgs"), required: true },
            Entry { file: "labels.txt", md5: Some(md5_txt), unpacks_to: None, required: true },
            Entry { file: "extra.txt", md5: None, unpacks_to: None, required: false },
        ]
    }

    fn make_source(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let mut z = zip::ZipWriter::new(std::fs::File::create(dir.join("imgs.zip")).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        z.add_directory("imgs/", opts).unwrap();
        z.start_file("imgs/000001.jpg", opts).unwrap();
        z.write_all(b"not really a jpeg").unwrap();
        z.finish().unwrap();
        std::fs::write(dir.join("labels.txt"), b"1\nheader\n").unwrap();
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    #[test]
    fn imports_verifies_and_unpacks() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_source(&src);
        let (mz, mt) = (leak(md5_of(&src.join("imgs.zip")).unwrap()), leak(md5_of(&src.join("labels.txt")).unwrap()));
        let out = tmp.path().join("out");
        install(&entries(mz, mt), &Source::Dir(src.clone()), &out).unwrap();
        assert_eq!(std::fs::read(out.join("imgs/000001.jpg")).unwrap(), b"not really a jpeg");
        assert_eq!(std::fs::read(out.join("labels.txt")).unwrap(), b"1\nheader\n");
        let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["imgs", "labels.txt"], "no temporaries left");
        // A second run keeps what is there.
        install(&entries(mz, mt), &Source::Dir(src), &out).unwrap();
    }

    #[test]
    fn a_corrupt_file_leaves_nothing_that_looks_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_source(&src);
        let mz = leak(md5_of(&src.join("imgs.zip")).unwrap());
        let out = tmp.path().join("out");
        let err = install(&entries(mz, "00000000000000000000000000000000"), &Source::Dir(src.clone()), &out).unwrap_err().to_string();
        assert!(err.contains("labels.txt") && err.contains("differs from the official 00000000000000000000000000000000"), "{err}");
        assert!(!out.join("labels.txt").exists());
        // A truncated archive fails its checksum before anything is unpacked.
        let bytes = std::fs::read(src.join("imgs.zip")).unwrap();
        std::fs::write(src.join("imgs.zip"), &bytes[..bytes.len() - 10]).unwrap();
        let out2 = tmp.path().join("out2");
        let err = install(&entries(mz, "x"), &Source::Dir(src), &out2).unwrap_err().to_string();
        assert!(err.contains("imgs.zip") && err.contains("MD5"), "{err}");
        assert_eq!(std::fs::read_dir(&out2).unwrap().count(), 0);
    }

    #[test]
    fn reads_a_hub_dataset_from_the_local_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_source(&src);
        let (mz, mt) = (leak(md5_of(&src.join("imgs.zip")).unwrap()), leak(md5_of(&src.join("labels.txt")).unwrap()));
        // The hub cache layout: datasets--owner--name/{refs/main, blobs/<etag>, snapshots/<commit>/<file> -> blob}.
        let cache = tmp.path().join("hub");
        let repo = cache.join("datasets--someone--celeba-mirror");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        for f in ["imgs.zip", "labels.txt"] {
            let blob = repo.join("blobs").join(md5_of(&src.join(f)).unwrap());
            std::fs::copy(src.join(f), &blob).unwrap();
            std::os::unix::fs::symlink(&blob, repo.join("snapshots").join(commit).join(f)).unwrap();
        }
        let Source::Hub { repo, revision, .. } = parse_hub("someone/celeba-mirror", true).unwrap() else { unreachable!() };
        let source = Source::Hub { repo, revision, offline: true, cache: Some(cache) };
        let out = tmp.path().join("out");
        // extra.txt is optional and not in the cache: skipped with a note.
        install(&entries(mz, mt), &source, &out).unwrap();
        assert!(out.join("imgs/000001.jpg").is_file() && out.join("labels.txt").is_file() && !out.join("extra.txt").exists());
        let mut need_extra = entries(mz, mt);
        need_extra[2].required = true;
        let err = install(&need_extra, &source, &out).unwrap_err().to_string();
        assert!(err.contains("extra.txt") && err.contains("offline"), "{err}");
        assert!(parse_hub("nohub", false).is_err() && parse_hub("a/b@", false).is_err());
    }
}
