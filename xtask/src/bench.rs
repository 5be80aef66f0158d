//! `cargo xtask bench`: `dmm bench` and the PyTorch reference `bench/torch_bench.py` on the same
//! cases, alternating ours and theirs round by round so both see the same machine state, and one
//! table of median seconds and the speed ratio (PyTorch time / ours: above 1 means we are faster).

use std::path::Path;
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

/// Runs the suite and prints the table.
pub fn run(root: &Path, dmm: &Dmm, iters: usize, rounds: usize, width: usize, batch: usize) -> anyhow::Result<()> {
    let torch = Command::new("python3").args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success());
    if !torch {
        eprintln!("python3 cannot import torch: timing dmm only (pip install torch for the reference)");
    }
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
