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

#[derive(serde::Deserialize)]
struct Timing {
    median_s: f64,
}

fn parse(out: &[u8], what: &str) -> anyhow::Result<f64> {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().last().with_context(|| format!("{what} printed nothing"))?;
    Ok(serde_json::from_str::<Timing>(line).with_context(|| format!("{what} printed `{line}`"))?.median_s)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
        rows.push((mode, size, median(ours), (!theirs.is_empty()).then(|| median(theirs))));
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("DMM-CNN width {width}, batch {batch}, f32 CPU ({cores} cores); median of {rounds} rounds × {iters} calls");
    println!("| case | input | dmm s | dmm images/s | PyTorch s | PyTorch images/s | speed vs PyTorch |");
    println!("|---|---|---|---|---|---|---|");
    for (mode, size, ours, theirs) in rows {
        let (t, ti, r) = match theirs {
            Some(t) => (format!("{t:.3}"), format!("{:.1}", batch as f64 / t), format!("{:.2}×", t / ours)),
            None => ("—".into(), "—".into(), "—".into()),
        };
        println!("| {mode} | {size} | {ours:.3} | {:.1} | {t} | {ti} | {r} |", batch as f64 / ours);
    }
    Ok(())
}
