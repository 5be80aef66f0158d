//! `cargo xtask bench`: `dmm bench` and the PyTorch reference `bench/torch_bench.py` on the same
//! cases, alternating ours and theirs round by round so both see the same machine state, and one
//! table of median seconds and the speed ratio (PyTorch time / ours: above 1 means we are faster).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::dmm::Dmm;

/// The cases of the performance issue: training steps at 112×112 and 218×178, forwards at
/// 224×224 and 218×178.
const CASES: [(&str, &str); 4] = [("train-step", "112x112"), ("train-step", "218x178"), ("forward", "224x224"), ("forward", "218x178")];

/// One line of `--json` output from either benchmark.
#[derive(serde::Deserialize, Clone, Copy)]
struct Timing {
    median_s: f64,
    /// Peak resident memory of the benchmark process, where the platform reports it.
    peak_rss_mib: Option<f64>,
}

fn parse(out: &[u8], what: &str) -> anyhow::Result<Timing> {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().last().with_context(|| format!("{what} printed nothing"))?;
    serde_json::from_str::<Timing>(line).with_context(|| format!("{what} printed `{line}`"))
}

/// The median time over rounds (the upper one of an even count) and the largest peak memory.
fn summarize(mut v: Vec<Timing>) -> Timing {
    v.sort_by(|a, b| a.median_s.total_cmp(&b.median_s));
    let peak = v.iter().filter_map(|t| t.peak_rss_mib).reduce(f64::max);
    Timing { median_s: v[v.len() / 2].median_s, peak_rss_mib: peak }
}

/// Whether `python3` can import torch, for the PyTorch side; says so when it cannot.
fn torch_available() -> bool {
    let torch = Command::new("python3").args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success());
    if !torch {
        eprintln!("python3 cannot import torch: timing dmm only (pip install torch for the reference)");
    }
    torch
}

/// Runs the suite and prints the table.
pub fn run(root: &Path, dmm: &Dmm, iters: usize, rounds: usize, width: usize, batch: usize) -> anyhow::Result<()> {
    let torch = torch_available();
    let script = root.join("bench/torch_bench.py");
    let common = |mode: &str, size: &str| -> Vec<String> {
        [mode, "--width", &width.to_string(), "--size", size, "--batch", &batch.to_string(), "--iters", &iters.to_string(), "--json"].map(String::from).to_vec()
    };
    let mut rows = Vec::new();
    for (mode, size) in CASES {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..rounds.max(1) {
            eprintln!("{mode} {size}: round {} of {rounds}", round + 1);
            let mut args = vec!["bench".to_string()];
            args.extend(common(mode, size));
            let out = dmm.command(None).args(&args).output().context("running dmm bench")?;
            if !out.status.success() {
                bail!("dmm bench {mode} {size} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            ours.push(parse(&out.stdout, "dmm bench")?);
            if torch {
                let out = Command::new("python3").arg(&script).args(common(mode, size)).output().context("running bench/torch_bench.py")?;
                if !out.status.success() {
                    bail!("torch_bench.py {mode} {size} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
                theirs.push(parse(&out.stdout, "torch_bench.py")?);
            }
        }
        rows.push((mode, size, summarize(ours), (!theirs.is_empty()).then(|| summarize(theirs))));
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("DMM-CNN width {width}, batch {batch}, f32 CPU ({cores} cores); median of {rounds} rounds × {iters} calls");
    println!("| case | input | dmm s | dmm images/s | PyTorch s | PyTorch images/s | speed vs PyTorch | dmm peak MiB | PyTorch peak MiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mib = |t: Option<Timing>| t.and_then(|t| t.peak_rss_mib).map_or("—".into(), |p| format!("{p:.0}"));
    for (mode, size, ours, theirs) in rows {
        let (t, ti, r) = match theirs {
            Some(t) => (format!("{:.3}", t.median_s), format!("{:.1}", batch as f64 / t.median_s), format!("{:.2}×", t.median_s / ours.median_s)),
            None => ("—".into(), "—".into(), "—".into()),
        };
        let s = ours.median_s;
        println!("| {mode} | {size} | {s:.3} | {:.1} | {t} | {ti} | {r} | {} | {} |", batch as f64 / s, mib(Some(ours)), mib(theirs));
    }
    Ok(())
}

/// The phases of `RUN/profile.json` (dmm) and of the PyTorch script's `profile`, in seconds.
const PHASES: [&str; 7] = ["loader", "forward", "backward", "update", "evaluation", "checkpoint", "other"];

/// One side of the end-to-end benchmark: a whole `train` process.
struct EpochRun {
    /// The epoch: training plus the evaluations at its start and end, after each side decoded
    /// its images up front.
    seconds: f64,
    /// Decoding and resizing the images before the epoch.
    decode_seconds: f64,
    /// The whole process, start-up and (PyTorch) the decoding of every image included.
    process_seconds: f64,
    images: u64,
    phases: Vec<(&'static str, f64)>,
    peak_mib: Option<f64>,
}

/// `dmm`'s `profile.json` as xtask reads it (xtask does not link dmm-train).
#[derive(serde::Deserialize)]
struct DmmProfile {
    #[serde(default)]
    decode: f64,
    loader: f64,
    forward: f64,
    backward: f64,
    update: f64,
    evaluation: f64,
    checkpoint: f64,
    total: f64,
    images: u64,
}

/// The PyTorch script's `--json` summary, the fields used here.
#[derive(serde::Deserialize)]
struct TorchSummary {
    wall_seconds: f64,
    load_seconds: f64,
    images_trained: u64,
    profile: std::collections::BTreeMap<String, f64>,
}

/// Runs `cmd` to the end with its output in `log`, sampling its peak resident memory (`VmHWM`,
/// Linux) every 50 ms; returns the wall seconds and the peak in MiB.
fn run_sampled(mut cmd: Command, log: &Path, what: &str) -> anyhow::Result<(f64, Option<f64>)> {
    let out = std::fs::File::create(log).with_context(|| format!("{}: cannot create", log.display()))?;
    let err = out.try_clone().with_context(|| format!("{}: cannot reopen", log.display()))?;
    let started = std::time::Instant::now();
    let mut child = cmd.stdout(out).stderr(err).spawn().with_context(|| format!("starting {what}"))?;
    let status_file = PathBuf::from(format!("/proc/{}/status", child.id()));
    let mut peak: Option<f64> = None;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let kib = text.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().strip_suffix("kB")).and_then(|v| v.trim().parse::<f64>().ok());
            if let Some(kib) = kib {
                peak = Some(peak.unwrap_or(0.0).max(kib / 1024.0));
            }
        }
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {what}"))? {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        bail!("{what} failed ({status}); the end of {}:\n{}", log.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok((started.elapsed().as_secs_f64(), peak))
}

/// `cargo xtask bench --train-run`: one epoch of `dmm train --preset subset` (evaluations at its
/// start and end included) against the same epoch of `bench/torch_train.py`, alternating round
/// by round, with each side's profile and peak memory.
pub fn train_run(root: &Path, dmm: &Dmm, celeba: &Path, variant: &str, rounds: usize) -> anyhow::Result<()> {
    let torch = torch_available();
    let work = root.join("target/bench-train-run");
    std::fs::create_dir_all(&work).with_context(|| format!("{}: cannot create", work.display()))?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        eprintln!("train-run: round {} of {rounds}: dmm", round + 1);
        let out = work.join(format!("dmm-{round}"));
        if out.exists() {
            std::fs::remove_dir_all(&out).with_context(|| format!("{}: cannot remove", out.display()))?;
        }
        let mut cmd = dmm.command(None);
        cmd.arg("train").args(["--dataset", "celeba", "--preset", "subset", "--variant", variant, "--epochs", "1", "--quiet"]);
        cmd.arg("--root").arg(celeba).arg("--out").arg(&out);
        let (process_seconds, peak_mib) = run_sampled(cmd, &work.join(format!("dmm-{round}.log")), "dmm train")?;
        let path = out.join("profile.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let p: DmmProfile = serde_json::from_str(&text).with_context(|| format!("{}: not a profile", path.display()))?;
        let named = [p.loader, p.forward, p.backward, p.update, p.evaluation, p.checkpoint];
        let other = p.total - p.decode - named.iter().sum::<f64>();
        let phases = PHASES.iter().copied().zip(named.into_iter().chain([other])).collect();
        ours.push(EpochRun { seconds: p.total - p.decode, decode_seconds: p.decode, process_seconds, images: p.images, phases, peak_mib });
        if torch {
            eprintln!("train-run: round {} of {rounds}: PyTorch", round + 1);
            let json = work.join(format!("torch-{round}.json"));
            let mut cmd = Command::new("python3");
            cmd.arg(root.join("bench/torch_train.py")).args(["--variant", variant, "--epochs", "1"]).arg("--root").arg(celeba).arg("--json").arg(&json);
            let (process_seconds, peak_mib) = run_sampled(cmd, &work.join(format!("torch-{round}.log")), "bench/torch_train.py")?;
            let text = std::fs::read_to_string(&json).with_context(|| format!("{}: cannot read", json.display()))?;
            let s: TorchSummary = serde_json::from_str(&text).with_context(|| format!("{}: not the script's summary", json.display()))?;
            let phases = PHASES.iter().map(|&n| (n, s.profile.get(n).copied().unwrap_or(0.0))).collect();
            theirs.push(EpochRun { seconds: s.wall_seconds - s.load_seconds, decode_seconds: s.load_seconds, process_seconds, images: s.images_trained, phases, peak_mib });
        }
    }
    let median = |runs: &[EpochRun]| -> Option<usize> {
        let mut idx: Vec<usize> = (0..runs.len()).collect();
        idx.sort_by(|&a, &b| runs[a].seconds.total_cmp(&runs[b].seconds));
        idx.get(idx.len() / 2).copied()
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "One epoch of `dmm train --preset subset --variant {variant} --epochs 1` on {} ({cores} cores), evaluations at its start and end included; median of {rounds} rounds",
        celeba.display()
    );
    println!("| | epoch s | images | images/s | decode s | process s | {} | peak MiB |", PHASES.join(" s | ") + " s");
    println!("|---|---|---|---|---|---|{}---|", "---|".repeat(PHASES.len()));
    let row = |name: &str, r: &EpochRun| {
        let phases: Vec<String> = r.phases.iter().map(|(_, s)| format!("{s:.1}")).collect();
        let peak = r.peak_mib.map_or("—".into(), |p| format!("{p:.0}"));
        let (s, d, p) = (r.seconds, r.decode_seconds, r.process_seconds);
        println!("| {name} | {s:.1} | {} | {:.1} | {d:.1} | {p:.1} | {} | {peak} |", r.images, r.images as f64 / s, phases.join(" | "));
    };
    let (o, t) = (median(&ours).map(|i| &ours[i]), median(&theirs).map(|i| &theirs[i]));
    if let Some(o) = o {
        row("dmm", o);
    }
    if let Some(t) = t {
        row("PyTorch", t);
    }
    if let (Some(o), Some(t)) = (o, t) {
        let speed = (o.images as f64 / o.seconds) / (t.images as f64 / t.seconds);
        let whole = t.process_seconds / o.process_seconds;
        println!(
            "throughput against PyTorch: {speed:.2}× (the epoch; each side decodes its images before it, not counted: dmm {:.1} s, PyTorch {:.1} s); whole processes {whole:.2}×",
            o.decode_seconds, t.decode_seconds
        );
    }
    Ok(())
}
