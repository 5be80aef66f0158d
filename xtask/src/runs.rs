//! The ablation as a list of runs (Table 1's seven variants and Table 2's weighting schemes, on
//! CelebA and then LFWA fine-tuned from the CelebA run of the same name), and running them: a pool
//! of `dmm` child processes, each run in its own directory, a finished run reused, a failed run
//! reported without stopping the others.
//!
//! A run directory `OUT/DATASET/NAME/` holds what `dmm train` writes (config.json, metrics.jsonl,
//! model.safetensors, last.safetensors), `test.json` (`dmm eval --json` on the test split; its
//! presence marks the run finished), `xtask.log` (every command with its output) and `xtask.json`
//! (the commands and the wall time).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::dmm::{shell_words, Dmm};

/// Table 1's variants: command-line name and the paper's name.
pub const VARIANTS: [(&str, &str); 7] = [
    ("baseline", "Baseline"),
    ("dmm-fac", "DMM-FAC"),
    ("dmm-eq-fix", "DMM-EQ-FIX"),
    ("dmm-eq-at", "DMM-EQ-AT"),
    ("dmm-dw-fix", "DMM-DW-FIX"),
    ("dmm-spp", "DMM-SPP"),
    ("dmm-cnn", "DMM-CNN"),
];

/// Table 2's schemes on the DMM-CNN network: `--weighting` value, label, and the published
/// CelebA / LFWA mean accuracies (%). The paper's own scheme is the `dmm-cnn` run itself.
pub const SCHEMES: [(&str, &str, f64, f64); 4] = [
    ("uw", "UW", 91.08, 84.11),
    ("dwa", "DWA [30]", 91.36, 84.78),
    ("aw", "AW [38]", 91.65, 85.02),
    ("dw", "Ours (DW)", 91.70, 86.56),
];

/// The two datasets, in the order they are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ds {
    /// CelebA: trained from scratch (or an ImageNet backbone).
    Celeba,
    /// LFWA: fine-tuned from the CelebA run of the same name.
    Lfwa,
}

impl Ds {
    /// `celeba` / `lfwa` (the `--dataset` value and the folder name).
    pub fn as_str(self) -> &'static str {
        match self {
            Ds::Celeba => "celeba",
            Ds::Lfwa => "lfwa",
        }
    }

    /// The `dmm-data` kind.
    pub fn kind(self) -> dmm_data::DatasetKind {
        match self {
            Ds::Celeba => dmm_data::DatasetKind::CelebA,
            Ds::Lfwa => dmm_data::DatasetKind::Lfwa,
        }
    }
}

/// One training run of the ablation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Dataset.
    pub ds: Ds,
    /// Folder name: the variant, or `dmm-cnn-<scheme>` for Table 2's comparison schemes.
    pub name: String,
    /// `--variant`.
    pub variant: &'static str,
    /// `--weighting`, when not the variant's own.
    pub weighting: Option<&'static str>,
}

/// Every run of the ablation for `datasets`: the seven variants, then DMM-CNN with UW, DWA and
/// AW (DMM-CNN with DW is the `dmm-cnn` run).
pub fn plan(datasets: &[Ds]) -> Vec<Spec> {
    let mut specs = Vec::new();
    for &ds in datasets {
        for (variant, _) in VARIANTS {
            specs.push(Spec { ds, name: variant.to_string(), variant, weighting: None });
        }
        for (w, ..) in SCHEMES.iter().filter(|s| s.0 != "dw") {
            specs.push(Spec { ds, name: scheme_run(w), variant: "dmm-cnn", weighting: Some(w) });
        }
    }
    specs
}

/// The run folder name of a Table 2 scheme.
pub fn scheme_run(weighting: &str) -> String {
    if weighting == "dw" {
        "dmm-cnn".to_string()
    } else {
        format!("dmm-cnn-{weighting}")
    }
}

/// Where and how the runs go.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--preset` of every run.
    pub preset: String,
    /// CelebA root.
    pub celeba: PathBuf,
    /// LFWA root.
    pub lfwa: PathBuf,
    /// Run root.
    pub out: PathBuf,
    /// Runs in parallel.
    pub jobs: usize,
    /// CPU threads per run (`None`: the default, all cores).
    pub threads: Option<usize>,
    /// ImageNet trunk weights for the CelebA runs (`--backbone`).
    pub backbone: Option<String>,
    /// Resolve hf:// backbones from the local cache only.
    pub offline: bool,
    /// `--device` of every run (`None`: the CPU).
    pub device: Option<String>,
}

impl Settings {
    /// The dataset root of `ds`.
    pub fn root(&self, ds: Ds) -> &Path {
        match ds {
            Ds::Celeba => &self.celeba,
            Ds::Lfwa => &self.lfwa,
        }
    }

    /// The run folder of `spec`.
    pub fn dir(&self, spec: &Spec) -> PathBuf {
        run_dir(&self.out, spec.ds, &spec.name)
    }

    /// The `dmm train` arguments of `spec`.
    pub fn train_args(&self, spec: &Spec) -> Vec<String> {
        let dir = self.dir(spec);
        let mut args: Vec<String> = vec![
            "train".into(),
            "--dataset".into(),
            spec.ds.as_str().into(),
            "--root".into(),
            path_str(self.root(spec.ds)),
            "--preset".into(),
            self.preset.clone(),
            "--variant".into(),
            spec.variant.into(),
        ];
        if let Some(w) = spec.weighting {
            args.extend(["--weighting".into(), w.into()]);
        }
        args.extend(["--out".into(), path_str(&dir), "--resume".into(), "--quiet".into()]);
        if let Some(d) = &self.device {
            args.extend(["--device".into(), d.clone()]);
        }
        match spec.ds {
            Ds::Celeba => {
                if let Some(b) = &self.backbone {
                    args.extend(["--backbone".into(), b.clone()]);
                    if self.offline {
                        args.push("--offline".into());
                    }
                }
            }
            Ds::Lfwa => args.extend(["--init".into(), path_str(&run_dir(&self.out, Ds::Celeba, &spec.name).join("model.safetensors"))]),
        }
        args
    }

    /// The `dmm eval` arguments of `spec` (test split, JSON).
    pub fn eval_args(&self, spec: &Spec) -> Vec<String> {
        let model = self.dir(spec).join("model.safetensors");
        let mut args: Vec<String> = ["eval", "--model", &path_str(&model), "--dataset", spec.ds.as_str(), "--root", &path_str(self.root(spec.ds)), "--split", "test", "--json"]
            .map(String::from)
            .to_vec();
        if let Some(d) = &self.device {
            args.extend(["--device".into(), d.clone()]);
        }
        args
    }
}

/// `OUT/DATASET/NAME`.
pub fn run_dir(out: &Path, ds: Ds, name: &str) -> PathBuf {
    out.join(ds.as_str()).join(name)
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// What `xtask.json` records about a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunLog {
    /// The training command (`dmm …`).
    pub train_command: String,
    /// The evaluation command that wrote test.json.
    pub eval_command: String,
    /// Wall seconds of the training command in the call that finished it.
    pub train_seconds: f64,
    /// Threads the run had (`None`: all cores).
    pub threads: Option<usize>,
}

/// How one run went.
#[derive(Debug)]
pub enum Done {
    /// Trained and evaluated now.
    Trained { seconds: f64 },
    /// Already finished earlier; left as it was.
    Reused,
}

/// Whether `dir` holds a finished run (a readable test.json).
pub fn is_finished(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("test.json")).ok().is_some_and(|t| serde_json::from_str::<serde_json::Value>(&t).is_ok())
}

/// Trains and evaluates one run, or reuses it.
pub fn run_one(dmm: &Dmm, settings: &Settings, spec: &Spec) -> anyhow::Result<Done> {
    let dir = settings.dir(spec);
    if is_finished(&dir) {
        return Ok(Done::Reused);
    }
    if spec.ds == Ds::Lfwa {
        let init = run_dir(&settings.out, Ds::Celeba, &spec.name);
        if !is_finished(&init) {
            bail!("needs the finished CelebA run {} to fine-tune from", init.display());
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let log = dir.join("xtask.log");
    let train = settings.train_args(spec);
    let started = Instant::now();
    dmm.run_logged(&train, settings.threads, &log)?;
    let seconds = started.elapsed().as_secs_f64();
    let eval = settings.eval_args(spec);
    let json = dmm.output(&eval, settings.threads)?;
    serde_json::from_str::<serde_json::Value>(&json).with_context(|| format!("`dmm {}` printed invalid JSON", shell_words(&eval)))?;
    let record = RunLog { train_command: format!("dmm {}", shell_words(&train)), eval_command: format!("dmm {}", shell_words(&eval)), train_seconds: seconds, threads: settings.threads };
    write(&dir.join("xtask.json"), &serde_json::to_string_pretty(&record)?)?;
    // Written last: its presence marks the run finished.
    write(&dir.join("test.json"), &json)?;
    Ok(Done::Trained { seconds })
}

/// Atomic write with the path in the error.
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    dmm_data::fsutil::write_atomic(path, text.as_bytes()).with_context(|| format!("{}: cannot write", path.display()))
}

/// Runs `specs` on `settings.jobs` workers, in [`schedule`]'s order. Returns one line per failed
/// run; the others still finish.
pub fn run_all(dmm: &Dmm, settings: &Settings, specs: &[Spec]) -> Vec<String> {
    let bar = ProgressBar::new(specs.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} runs  {elapsed_precise}  {msg}").expect("valid template"),
    );
    let failures = Mutex::new(Vec::new());
    let active = Mutex::new(Vec::<String>::new());
    schedule(settings.jobs, specs, |spec| {
        let label = format!("{}/{}", spec.ds.as_str(), spec.name);
        set_active(&bar, &active, Some(&label), None);
        let line = match run_one(dmm, settings, spec) {
            Ok(Done::Trained { seconds }) => format!("{label}: trained and evaluated in {seconds:.0} s"),
            Ok(Done::Reused) => format!("{label}: finished earlier, reused"),
            Err(e) => {
                let msg = format!("{label}: {e:#}");
                failures.lock().expect("lock").push(msg.clone());
                format!("FAILED {msg}")
            }
        };
        bar.println(&line);
        if bar.is_hidden() {
            eprintln!("{line}");
        }
        bar.inc(1);
        set_active(&bar, &active, None, Some(&label));
    });
    bar.finish_and_clear();
    failures.into_inner().expect("lock")
}

/// Calls `run` for every spec on `jobs` worker threads: the CelebA runs first, then the LFWA
/// runs, each of which fine-tunes from the CelebA run of its name. A worker that takes an LFWA run
/// whose CelebA run is among `specs` waits until that run has ended, and the other workers go on
/// meanwhile: the two datasets overlap, where a barrier between them left workers idle while the
/// last CelebA runs finished.
fn schedule<F: Fn(&Spec) + Sync>(jobs: usize, specs: &[Spec], run: F) {
    let celeba: Vec<&Spec> = specs.iter().filter(|s| s.ds == Ds::Celeba).collect();
    let order: Vec<&Spec> = celeba.iter().copied().chain(specs.iter().filter(|s| s.ds == Ds::Lfwa)).collect();
    // The names of the CelebA runs that have ended, however they ended.
    let (ended, wake) = (Mutex::new(Vec::<&str>::new()), Condvar::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                while let Some(&spec) = order.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if spec.ds == Ds::Lfwa && celeba.iter().any(|c| c.name == spec.name) {
                        // Every CelebA run comes before every LFWA run in `order`, so this one's is
                        // running on another worker or over: the wait ends.
                        let done = ended.lock().unwrap_or_else(|e| e.into_inner());
                        drop(wake.wait_while(done, |done| !done.contains(&spec.name.as_str())).unwrap_or_else(|e| e.into_inner()));
                    }
                    let _end = (spec.ds == Ds::Celeba).then(|| MarkEnded { name: &spec.name, ended: &ended, wake: &wake });
                    run(spec);
                }
            });
        }
    });
}

/// Records a CelebA run as ended when dropped, after `run` returns or while it panics, so that no
/// worker waits for it forever and the panic reaches the caller.
struct MarkEnded<'a> {
    name: &'a str,
    ended: &'a Mutex<Vec<&'a str>>,
    wake: &'a Condvar,
}

impl Drop for MarkEnded<'_> {
    fn drop(&mut self) {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).push(self.name);
        self.wake.notify_all();
    }
}

fn set_active(bar: &ProgressBar, active: &Mutex<Vec<String>>, add: Option<&str>, remove: Option<&str>) {
    let mut a = active.lock().expect("lock");
    if let Some(x) = add {
        a.push(x.to_string());
    }
    if let Some(x) = remove {
        a.retain(|y| y != x);
    }
    bar.set_message(format!("running {}", a.join(", ")));
}

/// Parallel runs and threads per run for `preset` on a machine with `cores` cores: small presets
/// run one single-threaded process per core (small convolutions scale poorly across threads;
/// measured 1.8× the throughput of one two-thread process on 2 cores); large ones one process.
pub fn default_jobs(preset: &str, cores: usize, requested: Option<usize>) -> (usize, Option<usize>) {
    let jobs = requested.unwrap_or(match preset {
        "smoke" | "mini" => cores,
        _ => 1,
    });
    let jobs = jobs.max(1);
    let threads = (jobs > 1).then(|| (cores / jobs).max(1));
    (jobs, threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LFWA runs start only after their CelebA run has ended, and the two datasets overlap: with
    /// two workers, an LFWA run starts while the last CelebA run is still going.
    #[test]
    fn lfwa_runs_wait_for_their_celeba_run_only() {
        use std::time::Duration;
        let specs = plan(&[Ds::Celeba, Ds::Lfwa]);
        let t0 = Instant::now();
        let log = Mutex::new(Vec::new());
        // The last CelebA run is much longer than the others, as an idle worker would see it.
        schedule(2, &specs, |spec| {
            let start = t0.elapsed();
            let long = spec.ds == Ds::Celeba && spec.name == "dmm-cnn-aw";
            std::thread::sleep(Duration::from_millis(if long { 400 } else { 20 }));
            log.lock().unwrap().push((spec.ds, spec.name.clone(), start, t0.elapsed()));
        });
        let log = log.into_inner().unwrap();
        assert_eq!(log.len(), specs.len(), "every run ran once");
        let find = |ds: Ds, name: &str| log.iter().find(|(d, n, ..)| *d == ds && n == name).expect("ran");
        for spec in specs.iter().filter(|s| s.ds == Ds::Lfwa) {
            let (.., celeba_end) = find(Ds::Celeba, &spec.name);
            let (_, _, lfwa_start, _) = find(Ds::Lfwa, &spec.name);
            assert!(lfwa_start >= celeba_end, "{}: LFWA started at {lfwa_start:?}, before its CelebA run ended at {celeba_end:?}", spec.name);
        }
        let (.., last_celeba_end) = find(Ds::Celeba, "dmm-cnn-aw");
        let (_, _, first_lfwa_start, _) = find(Ds::Lfwa, "baseline");
        assert!(first_lfwa_start < last_celeba_end, "no overlap: LFWA started at {first_lfwa_start:?}, the last CelebA run ended at {last_celeba_end:?}");
    }

    /// A CelebA run that panics still counts as ended: its LFWA run does not wait forever, and
    /// the panic reaches the caller.
    #[test]
    fn a_panicking_run_reaches_the_caller() {
        let specs = plan(&[Ds::Celeba, Ds::Lfwa]);
        let ran = AtomicUsize::new(0);
        let outcome = std::panic::catch_unwind(|| {
            schedule(2, &specs, |spec| {
                ran.fetch_add(1, Ordering::SeqCst);
                assert!(!(spec.ds == Ds::Celeba && spec.name == "dmm-cnn-aw"), "the last CelebA run fails");
            })
        });
        assert!(outcome.is_err(), "the panic is lost");
        assert!(ran.load(Ordering::SeqCst) >= specs.len() - 1, "a worker stopped early");
    }

    #[test]
    fn plan_holds_both_tables_once() {
        let specs = plan(&[Ds::Celeba, Ds::Lfwa]);
        assert_eq!(specs.len(), 20);
        let names: Vec<&str> = specs.iter().filter(|s| s.ds == Ds::Celeba).map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["baseline", "dmm-fac", "dmm-eq-fix", "dmm-eq-at", "dmm-dw-fix", "dmm-spp", "dmm-cnn", "dmm-cnn-uw", "dmm-cnn-dwa", "dmm-cnn-aw"]);
        assert!(specs.iter().all(|s| s.weighting.is_none() || s.variant == "dmm-cnn"));
    }

    #[test]
    fn lfwa_runs_fine_tune_from_celeba() {
        let s = Settings {
            preset: "mini".into(),
            celeba: "data/celeba".into(),
            lfwa: "data/lfwa".into(),
            out: "runs/r".into(),
            jobs: 1,
            threads: None,
            backbone: Some("hf://timm/resnet50.a1_in1k".into()),
            offline: false,
            device: None,
        };
        let spec = Spec { ds: Ds::Lfwa, name: "dmm-cnn-aw".into(), variant: "dmm-cnn", weighting: Some("aw") };
        let args = s.train_args(&spec).join(" ");
        assert_eq!(
            args,
            "train --dataset lfwa --root data/lfwa --preset mini --variant dmm-cnn --weighting aw --out runs/r/lfwa/dmm-cnn-aw --resume --quiet --init runs/r/celeba/dmm-cnn-aw/model.safetensors"
        );
        let celeba = Spec { ds: Ds::Celeba, ..spec };
        assert!(s.train_args(&celeba).join(" ").ends_with("--backbone hf://timm/resnet50.a1_in1k"));
        // A GPU run names its device to both commands.
        let gpu = Settings { device: Some("cuda:1".into()), ..s };
        assert!(gpu.train_args(&celeba).join(" ").contains("--quiet --device cuda:1 --backbone"));
        assert!(gpu.eval_args(&celeba).join(" ").ends_with("--split test --json --device cuda:1"));
    }

    #[test]
    fn small_presets_run_one_process_per_core() {
        assert_eq!(default_jobs("mini", 2, None), (2, Some(1)));
        assert_eq!(default_jobs("mini", 16, Some(4)), (4, Some(4)));
        assert_eq!(default_jobs("paper", 16, None), (1, None));
    }
}
