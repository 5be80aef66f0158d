//! Landmarks for many images: parallel, resumable, atomic.
//!
//! Images are processed in chunks on a pool of `jobs` threads, each with its own detector. After
//! every chunk the CSV (and the `<csv>.noface` list) is rewritten through a temporary file and a
//! rename, so an interruption loses at most one chunk; a rerun skips every image already in
//! either file. Unreadable images are reported and not written anywhere (they are retried).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dmm_data::LandmarkTable;
use image::RgbImage;
use rayon::prelude::*;

use crate::{Error, Result, N_POINTS};

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads (each loads its own detector).
    pub jobs: usize,
    /// Images per chunk between CSV rewrites.
    pub chunk: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { jobs: std::thread::available_parallelism().map_or(1, |n| n.get()), chunk: 256 }
    }
}

/// What a precompute run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Images skipped because an earlier run already handled them.
    pub already_done: usize,
    /// Images whose landmarks were found in this run.
    pub detected: usize,
    /// Images where no face was found in this run (keys), also written to `<csv>.noface`.
    pub no_face: Vec<String>,
    /// Images that could not be read: key and reason.
    pub failed: Vec<(String, String)>,
    /// Wall-clock seconds of this run.
    pub seconds: f64,
}

/// One image's result: landmarks, no face, or why it could not be read.
type Outcome = std::result::Result<Option<Vec<f32>>, String>;

/// The `.noface` list that accompanies a landmark CSV.
pub fn noface_path(csv: &Path) -> PathBuf {
    let mut name = csv.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".noface");
    csv.with_file_name(name)
}

/// Lists images (`.jpg`, `.jpeg`, `.png`) with their CSV keys: files under a directory are keyed by
/// their path relative to it (with `/`), single files by their file name. Sorted by key.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, input, &mut out)?;
        } else if input.is_file() {
            let key = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            out.push((key, input.clone()));
        } else {
            return Err(Error::Io {
                path: input.clone(),
                cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let io = |e| Error::Io { path: dir.to_path_buf(), cause: e };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")) {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let key = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            out.push((key, path));
        }
    }
    Ok(())
}

fn read_noface(path: &Path) -> Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::Io { path: path.to_path_buf(), cause: e }),
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    dmm_data::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| Error::Io { path: path.to_path_buf(), cause: e })
}

/// Runs `detect` (built per worker by `make_detector`) over `images`, merging into the CSV at
/// `out`. `on_progress(done, total)` is called after each image.
pub fn precompute<D, M>(
    images: &[(String, PathBuf)],
    out: &Path,
    make_detector: M,
    options: &Options,
    on_progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Summary>
where
    M: Fn() -> Result<D> + Sync,
    D: FnMut(&RgbImage) -> Result<Option<Vec<f32>>>,
{
    let started = Instant::now();
    let noface_file = noface_path(out);
    // Rewrites cut short by a kill leave their temporary files; this run takes over the CSV.
    for file in [out, noface_file.as_path()] {
        dmm_data::fsutil::remove_stale_temporaries(file);
    }
    let mut table = if out.exists() { LandmarkTable::read(out)? } else { LandmarkTable::new(N_POINTS) };
    if table.n_points() != N_POINTS {
        return Err(Error::Dlib(format!("{} holds {} points per face, dlib gives {N_POINTS}", out.display(), table.n_points())));
    }
    let mut noface = read_noface(&noface_file)?;
    let done: HashSet<&str> = table.rows().map(|(k, _)| k).chain(noface.iter().map(String::as_str)).collect();
    let todo: Vec<&(String, PathBuf)> = images.iter().filter(|(k, _)| !done.contains(k.as_str())).collect();
    let mut summary = Summary { already_done: images.len() - todo.len(), ..Default::default() };
    drop(done);

    let pool = rayon::ThreadPoolBuilder::new().num_threads(options.jobs.max(1)).build().map_err(|e| Error::Dlib(e.to_string()))?;
    let total = todo.len();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    for chunk in todo.chunks(options.chunk.max(1)) {
        let results: Vec<(String, Outcome)> = pool.install(|| {
            chunk
                .par_iter()
                .map_init(
                    || make_detector().map_err(|e| e.to_string()),
                    |detector, (key, path)| {
                        let result = match detector {
                            Err(e) => Err(e.clone()),
                            Ok(d) => crate::decode(path)
                                .map_err(|e| e.to_string())
                                .and_then(|img| d(&img).map_err(|e| e.to_string())),
                        };
                        on_progress(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, total);
                        (key.clone(), result)
                    },
                )
                .collect()
        });
        for (key, result) in results {
            match result {
                Ok(Some(points)) => {
                    table.insert(&key, points).map_err(|_| Error::Dlib(format!("{key} listed twice")))?;
                    summary.detected += 1;
                }
                Ok(None) => {
                    noface.push(key.clone());
                    summary.no_face.push(key);
                }
                Err(reason) => summary.failed.push((key, reason)),
            }
        }
        table.write(out)?;
        write_atomic(&noface_file, &noface.iter().map(|k| format!("{k}\n")).collect::<String>())?;
    }
    if todo.is_empty() && !out.exists() {
        table.write(out)?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in detector: "finds" a face in images wider than 20 px, with points derived from
    /// the image size, and refuses nothing.
    fn fake() -> Result<impl FnMut(&RgbImage) -> Result<Option<Vec<f32>>>> {
        Ok(|img: &RgbImage| Ok((img.width() > 20).then(|| vec![img.width() as f32; 2 * N_POINTS])))
    }

    fn images(dir: &Path) -> Vec<(String, PathBuf)> {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        RgbImage::new(30, 10).save(dir.join("a.png")).unwrap();
        RgbImage::new(10, 10).save(dir.join("b.png")).unwrap();
        RgbImage::new(40, 10).save(dir.join("sub/c.png")).unwrap();
        std::fs::write(dir.join("sub/broken.jpg"), b"not a jpeg").unwrap();
        std::fs::write(dir.join("notes.txt"), b"ignored").unwrap();
        collect_images(&[dir.to_path_buf()]).unwrap()
    }

    #[test]
    fn keys_are_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = images(dir.path()).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a.png", "b.png", "sub/broken.jpg", "sub/c.png"]);
    }

    #[test]
    fn resumes_and_records_no_face_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = images(&dir.path().join("imgs"));
        let csv = dir.path().join("lm.csv");
        let opts = Options { jobs: 2, chunk: 2 };
        // First run on the first two images only (as if interrupted).
        let s = precompute(&imgs[..2], &csv, fake, &opts, &|_, _| {}).unwrap();
        assert_eq!((s.detected, s.no_face.clone(), s.already_done), (1, vec!["b.png".to_string()], 0));
        let s = precompute(&imgs, &csv, fake, &opts, &|_, _| {}).unwrap();
        assert_eq!((s.already_done, s.detected, s.no_face.len()), (2, 1, 0));
        assert_eq!(s.failed.len(), 1);
        assert!(s.failed[0].0 == "sub/broken.jpg" && s.failed[0].1.contains("cannot decode image"), "{:?}", s.failed);
        let table = LandmarkTable::read(&csv).unwrap();
        assert_eq!(table.rows().map(|(k, _)| k).collect::<Vec<_>>(), ["a.png", "sub/c.png"]);
        assert_eq!(table.get("sub/c.png").unwrap()[0], 40.0);
        assert_eq!(std::fs::read_to_string(noface_path(&csv)).unwrap(), "b.png\n");
        // Nothing left but the broken file, which is retried and fails again.
        let s = precompute(&imgs, &csv, fake, &opts, &|_, _| {}).unwrap();
        assert_eq!((s.already_done, s.detected, s.failed.len()), (3, 0, 1));
    }
}
