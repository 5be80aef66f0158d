//! `cargo xtask`: the user's entry point for whole experiments, and project automation.
//!
//! - `reproduce` runs what is missing of the paper's experiments for a preset — landmarks,
//!   CelebA training of the seven variants and the weighting schemes, LFWA fine-tuning, test
//!   evaluation — and writes `report.md` with SVG figures ([`report`]);
//! - `ablate` trains and evaluates those runs ([`runs`]); `report` rebuilds the page from them;
//! - `download` installs CelebA or LFWA from a Hub mirror or local files ([`download`]);
//! - `landmarks` and `train` wrap the `dmm` commands of the same name ([`dmm`]);
//! - `bench` times training steps and forwards beside PyTorch ([`bench`]);
//! - `cuda-build` builds the CUDA binary with nvcc from PyPI ([`cuda`]);
//! - `mini-backbone` and `bundle-model` remake the models that ship: the trunk the `mini` preset
//!   starts from (`data/pretrained/`) and the model built into `dmm predict` (`models/`) ([`bundle`]);
//! - `fuzz` runs the cargo-fuzz targets of every parser a user's file reaches ([`fuzz`]);
//! - `tidy` checks source hygiene and the crates' layering ([`tidy`]).
//!
//! Training runs as `dmm` child processes built in release mode, so xtask itself stays light
//! (no candle) and runs can go in parallel.

mod bench;
mod bundle;
mod cuda;
mod dmm;
mod download;
mod fuzz;
mod report;
mod runs;
mod svg;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::dmm::Dmm;
use crate::runs::{Ds, Settings};

/// Whole experiments and project automation for dmm.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reproduce the paper's tables and figures for a preset: landmarks (if any image lacks them),
    /// the seven variants of Table 1 and the weighting schemes of Table 2 on CelebA, LFWA
    /// fine-tuning of each, test evaluation, then OUT/report.md with SVG figures. Finished runs
    /// are reused, so an interrupted reproduce continues where it stopped. `--preset mini` runs on
    /// the bundled sample in a few minutes on two cores once dmm is built.
    Reproduce {
        #[command(flatten)]
        exp: ExperimentArgs,
        /// Do not compute missing landmarks (the landmark head trains on what there is).
        #[arg(long)]
        no_landmarks: bool,
    },
    /// Train and test-evaluate the ablation runs (Table 1 variants and Table 2 schemes on CelebA,
    /// then LFWA fine-tuned from them), each in OUT/DATASET/NAME; finished runs are reused.
    Ablate {
        #[command(flatten)]
        exp: ExperimentArgs,
    },
    /// Rebuild OUT/report.md and OUT/figures/ from the runs already in OUT.
    Report {
        #[command(flatten)]
        exp: ExperimentArgs,
    },
    /// Install CelebA or LFWA into OUT in the layout dmm reads, verifying the official MD5s:
    /// from a Hugging Face dataset repository mirroring the official files (--hub), or from
    /// files you already have (--from). The official files: CelebA from
    /// https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (img_align_celeba.zip and the list_*.txt
    /// files), LFW from https://vis-www.cs.umass.edu/lfw/ (lfw.tgz), the LFWA labels from the
    /// CelebA page (name.txt, label.txt, indices_train_test.mat).
    Download {
        /// Which dataset.
        #[arg(value_enum)]
        dataset: DatasetArg,
        /// Dataset root to create (e.g. datasets/celeba).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A folder holding the official files (an unpacked img_align_celeba/ or lfw/ is accepted).
        #[arg(long, value_name = "DIR", conflicts_with = "hub", required_unless_present = "hub")]
        from: Option<PathBuf>,
        /// A Hugging Face dataset repository with the official files at its top level.
        #[arg(long, value_name = "OWNER/NAME[@REV]")]
        hub: Option<String>,
        /// With --hub: use only the local Hugging Face cache.
        #[arg(long)]
        offline: bool,
    },
    /// Compute dlib landmarks into ROOT/landmarks.csv for every present image that has none yet
    /// (wraps `dmm landmarks`; builds dmm with the dlib feature).
    Landmarks {
        /// Which dataset.
        #[arg(long, value_enum)]
        dataset: DatasetArg,
        /// Dataset root.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// Worker threads (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Build dmm in release mode and run `dmm train` with these arguments (see `dmm train --help`).
    Train {
        /// Arguments for `dmm train`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Time DMM-CNN training steps and forwards (`dmm bench`, release build) and, when
    /// `python3 -c "import torch"` works, the same network and step in PyTorch
    /// (bench/torch_bench.py), interleaved; print one table with the ratios.
    Bench {
        /// Timed calls per measurement (after one warm-up).
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Alternating rounds of ours and PyTorch per case (the median is reported).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Trunk width.
        #[arg(long, default_value_t = 64)]
        width: usize,
        /// Images per call.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Instead of the kernel cases: one epoch of `dmm train --preset subset` (evaluations
        /// included) against the same epoch of bench/torch_train.py, with where each spends it
        /// (loader, forward, backward, update, evaluation) and peak memory. Both decode their
        /// images before the epoch; that time is shown beside it, not counted in it.
        #[arg(long)]
        train_run: bool,
        /// The CelebA root of --train-run (e.g. ../shared/data/celeba: 9,000 train / 2,000 val).
        #[arg(long, default_value = "data/celeba", value_name = "DIR")]
        celeba: PathBuf,
        /// The variant of --train-run: dmm-cnn or baseline (the two the PyTorch script has).
        #[arg(long, default_value = "dmm-cnn", value_parser = ["dmm-cnn", "baseline"])]
        variant: String,
    },
    /// Build one release `dmm` with the CUDA path (`--device cuda`), on any x86-64 Linux machine:
    /// nvcc and the CUDA 13.0 headers are installed from PyPI into target/cuda-sdk (or taken from
    /// CUDA_HOME), the binary lands in target/cuda/release/dmm (stripped, under 64 MiB). Copy it
    /// next to a checkout of this repository on the GPU machine and run scripts/gpu-check.sh.
    /// The GPU needs an NVIDIA driver for CUDA 13 (580 or newer).
    CudaBuild {
        /// The GPU generation to compile the kernels for: 90 for H100/H200, 80 for A100, 89 for
        /// L4/L40/RTX 40xx.
        #[arg(long, default_value_t = cuda::DEFAULT_COMPUTE_CAP, value_name = "CC")]
        compute_cap: u32,
    },
    /// Remake the trunk the `mini` preset starts from, data/pretrained/celeba-baseline-w8.safetensors:
    /// `dmm train` of the Baseline at mini's width and size, from random initialisation, on the
    /// train split of a CelebA root (its val split picks the kept model; the test split is never
    /// read), then the kept checkpoint copied into place. About 12 min on two cores.
    MiniBackbone {
        /// CelebA root with at least a few thousand train images (e.g. ../shared/data/celeba); its
        /// test identities must include the bundled sample's test images, never its train ones.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// Run directory of the training (resumed if it exists).
        #[arg(long, value_name = "DIR", default_value = "runs/mini-backbone")]
        out: PathBuf,
    },
    /// Remake the model built into `dmm predict`, models/dmm-cnn-celeba-w16.safetensors: dlib
    /// landmarks for ROOT (if any image lacks them), `dmm train` of DMM-CNN at width 16 on
    /// CelebA's 218×178 crops from random initialisation on the train split (val picks the kept
    /// model and sets τ), `dmm export` to f16, the f32 model's predictions on the bundled sample
    /// (the f16 test's reference), and `dmm eval` on the test split for the card
    /// (models/README.md). About an hour on two cores. Needs dlib (see `landmarks`).
    BundleModel {
        /// CelebA root with the official partition (e.g. ../shared/data/celeba).
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// Run directory of the training (resumed if it exists).
        #[arg(long, value_name = "DIR", default_value = "runs/bundle-model")]
        out: PathBuf,
        /// The landmark CSV for ROOT's images, computed where rows are missing (default
        /// OUT/landmarks.csv, so the dataset root is only read).
        #[arg(long, value_name = "FILE.csv")]
        landmarks: Option<PathBuf>,
    },
    /// Check source hygiene: every .rs file opens with a `//!` doc saying what it is.
    Tidy,
    /// Fuzz the parsers a user's file reaches (CelebA and LFWA label files, the landmark CSV,
    /// checkpoints, images) with cargo-fuzz, seeded from the bundled data, under libFuzzer's 2 GiB
    /// memory limit. Needs nightly and `cargo install cargo-fuzz`. Crash inputs go to
    /// fuzz/artifacts/TARGET/.
    Fuzz {
        /// Targets to run (default: all): celeba_attributes, celeba_root, landmark_csv,
        /// lfwa_text_split, checkpoint, image.
        targets: Vec<String>,
        /// Stop each target after this many seconds...
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// ... or this many executions, whichever comes first.
        #[arg(long, default_value_t = 1_000_000)]
        runs: u64,
        /// Without nightly or cargo-fuzz, say so and succeed (CI's smoke run).
        #[arg(long)]
        if_available: bool,
    },
    /// Kill and full-disk tests: `dmm train` and `dmm landmarks` killed with SIGKILL 20 times
    /// each (half of the kills inside a checkpoint or CSV write) and resumed, to the same bytes as
    /// an uninterrupted run; a run on a full tmpfs (needs root); `cargo xtask download` killed 20
    /// times mid-install (needs ../shared). Runs the ignored tests of
    /// crates/dmm-cli/tests/faults.rs and xtask/tests/download_faults.rs in release, a few minutes.
    Faults {
        /// Build dmm without dlib and skip the landmark test.
        #[arg(long)]
        no_landmarks: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DatasetArg {
    /// CelebA.
    Celeba,
    /// LFWA.
    Lfwa,
}

impl DatasetArg {
    fn ds(self) -> Ds {
        match self {
            DatasetArg::Celeba => Ds::Celeba,
            DatasetArg::Lfwa => Ds::Lfwa,
        }
    }
}

#[derive(Debug, clap::Args)]
struct ExperimentArgs {
    /// Training preset of every run: smoke (seconds), mini (the bundled sample, minutes), subset
    /// (a real subset on CPU, hours), paper (full data, GPU).
    #[arg(long, default_value = "mini", value_parser = ["smoke", "mini", "subset", "paper"])]
    preset: String,
    /// CelebA root.
    #[arg(long, value_name = "DIR", default_value = "data/celeba")]
    celeba: PathBuf,
    /// LFWA root.
    #[arg(long, value_name = "DIR", default_value = "data/lfwa")]
    lfwa: PathBuf,
    /// Run root (default runs/PRESET).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Runs in parallel (default: one single-threaded run per core for smoke and mini, else 1).
    #[arg(long)]
    jobs: Option<usize>,
    /// ImageNet trunk weights for the CelebA runs: a safetensors file or hf://owner/name[/file].
    #[arg(long, value_name = "FILE|hf://…")]
    backbone: Option<String>,
    /// Resolve hf:// backbones from the local Hugging Face cache only.
    #[arg(long)]
    offline: bool,
    /// Where every run trains and evaluates: cpu, or cuda / cuda:N, which builds the CUDA binary
    /// (`cargo xtask cuda-build`) unless --dmm names one. GPU runs go one at a time.
    #[arg(long, value_name = "cpu|cuda[:N]", default_value = "cpu")]
    device: String,
    /// Use this dmm executable instead of building one.
    #[arg(long, value_name = "EXE")]
    dmm: Option<PathBuf>,
}

impl ExperimentArgs {
    fn settings(&self) -> Settings {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let on_gpu = self.device != "cpu";
        let (jobs, threads) = if on_gpu { (self.jobs.unwrap_or(1), None) } else { runs::default_jobs(&self.preset, cores, self.jobs) };
        Settings {
            preset: self.preset.clone(),
            celeba: self.celeba.clone(),
            lfwa: self.lfwa.clone(),
            out: self.out.clone().unwrap_or_else(|| Path::new("runs").join(&self.preset)),
            jobs,
            threads,
            backbone: self.backbone.clone(),
            offline: self.offline,
            device: on_gpu.then(|| self.device.clone()),
        }
    }

    /// The dmm executable: --dmm, else a build for the device.
    fn dmm(&self, root: &Path) -> anyhow::Result<Dmm> {
        match &self.dmm {
            None if self.device != "cpu" => Ok(Dmm { exe: cuda::build(root, cuda::DEFAULT_COMPUTE_CAP)? }),
            exe => Dmm::build(root, &[], exe.clone()),
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let root = project_root();
    match cli.command {
        Command::CudaBuild { compute_cap } => {
            cuda::build(&root, compute_cap)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::MiniBackbone { root: data_root, out } => {
            let dmm = Dmm::build(&root, &[], None)?;
            bundle::mini_backbone(&root, &dmm, &data_root, &out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BundleModel { root: data_root, out, landmarks } => {
            bundle::bundle_model(&root, &data_root, &out, &landmarks.unwrap_or_else(|| out.join(dmm_data::LANDMARKS_CSV)))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fuzz { targets, seconds, runs, if_available } => {
            let targets = if targets.is_empty() { fuzz::TARGETS.map(String::from).to_vec() } else { targets };
            let Some(outcomes) = fuzz::fuzz(&root, &targets, seconds, runs, if_available)? else { return Ok(ExitCode::SUCCESS) };
            Ok(if fuzz::report(&outcomes) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Faults { no_landmarks } => {
            let features = if no_landmarks { "" } else { "dlib" };
            let suites: [(&str, &str, &str); 2] = [("dmm-cli", "faults", features), ("xtask", "download_faults", "")];
            let mut failed = Vec::new();
            for (package, test, features) in suites {
                let mut cmd = dmm::cargo();
                cmd.current_dir(&root).args(["test", "--release", "-p", package, "--test", test]);
                if !features.is_empty() {
                    cmd.args(["--features", features]);
                }
                cmd.args(["--", "--ignored", "--nocapture", "--test-threads", "1"]);
                if !cmd.status().with_context(|| format!("running cargo test -p {package} --test {test}"))?.success() {
                    failed.push(format!("{package}/tests/{test}.rs"));
                }
            }
            for f in &failed {
                eprintln!("failed: {f}");
            }
            Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Tidy => {
            let problems = tidy::tidy(&root)?;
            for p in &problems {
                eprintln!("{p}");
            }
            if problems.is_empty() {
                println!("tidy: ok");
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Reproduce { exp, no_landmarks } => {
            let started = Instant::now();
            let settings = exp.settings();
            if !no_landmarks {
                for ds in [Ds::Celeba, Ds::Lfwa] {
                    ensure_landmarks(&root, ds, settings.root(ds), None, None, exp.dmm.clone())?;
                }
            }
            let dmm = exp.dmm(&root)?;
            let failures = ablate(&dmm, &settings)?;
            let command = reproduce_command(&exp, no_landmarks);
            let code = finish(&settings, &command, &failures)?;
            eprintln!("reproduce took {:.1} min", started.elapsed().as_secs_f64() / 60.0);
            Ok(code)
        }
        Command::Ablate { exp } => {
            let settings = exp.settings();
            let dmm = exp.dmm(&root)?;
            let failures = ablate(&dmm, &settings)?;
            for f in &failures {
                eprintln!("failed: {f}");
            }
            Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Report { exp } => finish(&exp.settings(), &reproduce_command(&exp, false), &[]),
        Command::Download { dataset, out, from, hub, offline } => {
            let source = match (from, hub) {
                (Some(dir), _) => download::Source::Dir(dir),
                (None, Some(h)) => download::parse_hub(&h, offline)?,
                (None, None) => unreachable!("clap requires --from or --hub"),
            };
            let entries = match dataset {
                DatasetArg::Celeba => download::CELEBA,
                DatasetArg::Lfwa => download::LFWA,
            };
            download::install(entries, &source, &out)?;
            if matches!(dataset, DatasetArg::Lfwa) && !out.join("lfwa_40attr_with_split.txt").is_file() {
                // The default build reads the split as text; convert the official .mat once.
                let dmm = Dmm::build(&root, &["mat"], None).context("converting the LFWA split needs dmm with the mat feature (Debian libhdf5-dev)")?;
                let args = ["dataset", "text-split", "--root"].map(String::from).into_iter().chain([out.to_string_lossy().into_owned()]).collect::<Vec<_>>();
                print!("{}", dmm.output(&args, None)?);
            }
            println!("{} ready in {}; check the images with `dmm dataset check --dataset {} --root {}`", dataset.ds().as_str(), out.display(), dataset.ds().as_str(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Landmarks { dataset, root: data_root, jobs } => {
            ensure_landmarks(&root, dataset.ds(), &data_root, None, jobs, None)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { iters, rounds, width, batch, train_run, celeba, variant } => {
            let dmm = Dmm::build(&root, &[], None)?;
            if train_run {
                bench::train_run(&root, &dmm, &celeba, &variant, rounds)?;
            } else {
                bench::run(&root, &dmm, iters, rounds, width, batch)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Train { args } => {
            let dmm = Dmm::build(&root, &[], None)?;
            let status = dmm.command(None).arg("train").args(&args).status().context("running dmm train")?;
            Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// The reproduce command line as the report quotes it.
fn reproduce_command(exp: &ExperimentArgs, no_landmarks: bool) -> String {
    let mut c = format!("cargo xtask reproduce --preset {}", exp.preset);
    if exp.celeba != Path::new("data/celeba") {
        c += &format!(" --celeba {}", exp.celeba.display());
    }
    if exp.lfwa != Path::new("data/lfwa") {
        c += &format!(" --lfwa {}", exp.lfwa.display());
    }
    if let Some(o) = &exp.out {
        c += &format!(" --out {}", o.display());
    }
    if let Some(b) = &exp.backbone {
        c += &format!(" --backbone {b}");
    }
    if exp.device != "cpu" {
        c += &format!(" --device {}", exp.device);
    }
    if no_landmarks {
        c += " --no-landmarks";
    }
    c
}

fn ablate(dmm: &Dmm, settings: &Settings) -> anyhow::Result<Vec<String>> {
    let specs = runs::plan(&[Ds::Celeba, Ds::Lfwa]);
    let pending = specs.iter().filter(|s| !runs::is_finished(&settings.dir(s))).count();
    eprintln!(
        "{} runs in {} ({} finished earlier), {} at a time{}",
        specs.len(),
        settings.out.display(),
        specs.len() - pending,
        settings.jobs,
        settings.threads.map(|t| format!(", {t} thread{} each", if t == 1 { "" } else { "s" })).unwrap_or_default()
    );
    Ok(runs::run_all(dmm, settings, &specs))
}

fn finish(settings: &Settings, command: &str, failures: &[String]) -> anyhow::Result<ExitCode> {
    let (path, missing) = report::write_report(settings, command)?;
    println!("report: {}", path.display());
    for f in failures {
        eprintln!("failed: {f}");
    }
    if !missing.is_empty() {
        eprintln!("the report lacks {} unfinished runs: {}", missing.len(), missing.join(", "));
    }
    Ok(if failures.is_empty() && missing.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Runs `dmm landmarks` on the image folder of `data_root` when a present image has neither a
/// row in `csv` (default `data_root/landmarks.csv`) nor a line in `<csv>.noface`.
pub(crate) fn ensure_landmarks(root: &Path, ds: Ds, data_root: &Path, csv: Option<&Path>, jobs: Option<usize>, exe: Option<PathBuf>) -> anyhow::Result<()> {
    let mut data = dmm_data::Dataset::open(ds.kind(), data_root).with_context(|| format!("reading {}", data_root.display()))?;
    data.retain_present(false)?;
    let csv = csv.map_or_else(|| data_root.join(dmm_data::LANDMARKS_CSV), Path::to_path_buf);
    if csv.is_file() {
        let table = dmm_data::LandmarkTable::read(&csv).with_context(|| format!("reading {}", csv.display()))?;
        data.attach_landmarks(&table);
    }
    let noface_path = PathBuf::from(format!("{}.noface", csv.display()));
    let noface: std::collections::HashSet<String> = std::fs::read_to_string(&noface_path).unwrap_or_default().lines().map(|l| l.trim().to_string()).collect();
    let todo = data.samples.iter().filter(|s| s.landmarks.is_none() && !noface.contains(&s.name)).count();
    if todo == 0 {
        eprintln!("{}: landmarks cover all {} present images", csv.display(), data.samples.len());
        return Ok(());
    }
    eprintln!("{}: {todo} of {} present images have no landmarks yet; running dmm landmarks", csv.display(), data.samples.len());
    let dmm = Dmm::build(root, &["dlib"], exe)?;
    let mut args: Vec<String> = vec!["landmarks".into(), "--images".into(), data.image_dir.to_string_lossy().into_owned(), "--out".into(), csv.to_string_lossy().into_owned()];
    if let Some(j) = jobs {
        args.extend(["--jobs".into(), j.to_string()]);
    }
    let status = dmm.command(None).args(&args).status().context("running dmm landmarks")?;
    if !status.success() {
        anyhow::bail!("`dmm {}` failed ({status})", dmm::shell_words(&args));
    }
    Ok(())
}

/// The workspace root (the folder above `xtask/`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}

