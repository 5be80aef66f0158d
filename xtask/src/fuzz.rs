//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (one per parser a user's file
//! reaches) with seed corpora from the bundled data, and prints executions and crashes per target.
//!
//! Needs a nightly toolchain and `cargo-fuzz`; without them it says how to get them and fails,
//! and `--if-available` (CI's smoke) turns that into a note and success.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;

/// The targets, in `fuzz/Cargo.toml` order.
pub const TARGETS: [&str; 6] = ["celeba_attributes", "celeba_root", "landmark_csv", "lfwa_text_split", "checkpoint", "image"];

/// How one target's run ended.
pub struct Outcome {
    pub target: String,
    pub executions: u64,
    pub seconds: f64,
    /// The crash input libFuzzer saved, if it found one.
    pub crash: Option<PathBuf>,
}

/// Fuzzes `targets` for at most `seconds` and `runs` executions each, under libFuzzer's 2 GiB
/// memory and allocation limits; `None` when the toolchain is missing and `if_available` is set.
pub fn fuzz(root: &Path, targets: &[String], seconds: u64, runs: u64, if_available: bool) -> anyhow::Result<Option<Vec<Outcome>>> {
    if let Err(missing) = toolchain() {
        if if_available {
            println!("fuzz: skipped ({missing})");
            return Ok(None);
        }
        anyhow::bail!("{missing}");
    }
    let mut outcomes = Vec::new();
    for target in targets {
        anyhow::ensure!(TARGETS.contains(&target.as_str()), "unknown fuzz target `{target}` (targets: {})", TARGETS.join(", "));
        let corpus = root.join("fuzz/corpus").join(target);
        seed(root, target, &corpus)?;
        let artifacts = root.join("fuzz/artifacts").join(target);
        std::fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
        let before = crashes(&artifacts);
        eprintln!("fuzz {target}: up to {seconds} s or {runs} executions");
        let started = Instant::now();
        let out = nightly_cargo()
            .current_dir(root)
            .args(["fuzz", "run", "--release", target])
            .arg(&corpus)
            .arg("--")
            .args([
                format!("-max_total_time={seconds}"),
                format!("-runs={runs}"),
                "-rss_limit_mb=2048".into(),
                "-malloc_limit_mb=2048".into(),
                "-timeout=20".into(),
                "-print_final_stats=1".into(),
                format!("-artifact_prefix={}/", artifacts.display()),
            ])
            .output()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let executions = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|v| v.trim().parse().ok());
        let crash = crashes(&artifacts).into_iter().find(|p| !before.contains(p));
        if executions.is_none() && crash.is_none() {
            // Neither statistics nor a crash: the build or libFuzzer itself failed.
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            anyhow::bail!("cargo fuzz run {target} failed ({}):\n{}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        outcomes.push(Outcome { target: target.clone(), executions: executions.unwrap_or(0), seconds: started.elapsed().as_secs_f64(), crash });
    }
    Ok(Some(outcomes))
}

/// Prints the table of outcomes; true when nothing crashed.
pub fn report(outcomes: &[Outcome]) -> bool {
    println!("| target | executions | seconds | crashes |");
    println!("|---|---|---|---|");
    for o in outcomes {
        let crash = o.crash.as_ref().map_or("0".to_string(), |p| format!("1: {}", p.display()));
        println!("| {} | {} | {:.0} | {crash} |", o.target, o.executions, o.seconds);
    }
    outcomes.iter().all(|o| o.crash.is_none())
}

/// `cargo +nightly` through rustup, without the variables of the cargo that runs xtask (they
/// would pin the stable toolchain).
fn nightly_cargo() -> Command {
    let mut cmd = crate::dmm::without_cargo_run_env(Command::new("cargo"));
    cmd.arg("+nightly");
    for key in ["CARGO", "RUSTC", "RUSTUP_TOOLCHAIN", "RUSTDOC", "CARGO_TARGET_DIR"] {
        cmd.env_remove(key);
    }
    cmd
}

/// Ok when `cargo +nightly fuzz` runs; else what is missing and how to get it.
fn toolchain() -> Result<(), String> {
    let works = |args: &[&str]| nightly_cargo().args(args).output().is_ok_and(|o| o.status.success());
    if !works(&["--version"]) {
        return Err("cargo xtask fuzz needs a nightly toolchain: rustup toolchain install nightly".into());
    }
    if !works(&["fuzz", "--version"]) {
        return Err("cargo xtask fuzz needs cargo-fuzz: cargo install cargo-fuzz".into());
    }
    Ok(())
}

fn crashes(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| ["crash-", "oom-", "timeout-", "leak-"].iter().any(|k| n.to_string_lossy().starts_with(k))))
        .collect()
}

/// Fills `corpus` (ignored by git) with the target's seeds: the bundled data it parses, and
/// `fuzz/seeds/<target>/` where the repository has no such file (a tiny checkpoint).
fn seed(root: &Path, target: &str, corpus: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let read = |rel: &str| std::fs::read(root.join(rel)).with_context(|| format!("reading seed {rel}"));
    // The first `n` lines of a text file (whole files are long; libFuzzer prefers short inputs).
    let head = |rel: &str, n: usize| -> anyhow::Result<Vec<u8>> {
        let text = read(rel)?;
        Ok(text.split_inclusive(|&b| b == b'\n').take(n).flatten().copied().collect())
    };
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    match target {
        "celeba_attributes" => {
            seeds.push(("attrs".into(), head("data/celeba/list_attr_celeba.txt", 12)?));
        }
        "celeba_root" => {
            let mut joined = head("data/celeba/list_attr_celeba.txt", 12)?;
            joined.push(0);
            joined.extend(head("data/celeba/list_eval_partition.txt", 10)?);
            joined.push(0);
            joined.extend(head("data/celeba/identity_CelebA.txt", 10)?);
            seeds.push(("root".into(), joined));
        }
        "landmark_csv" => {
            seeds.push(("celeba".into(), head("data/celeba/landmarks.csv", 4)?));
            seeds.push(("lfwa".into(), head("data/lfwa/landmarks.csv", 4)?));
        }
        "lfwa_text_split" => seeds.push(("split".into(), head("data/lfwa/lfwa_40attr_with_split.txt", 8)?)),
        "image" => {
            for dir in ["data/celeba/img_align_celeba", "crates/dmm-landmarks/tests/fixtures"] {
                let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
                    .with_context(|| format!("listing {dir}"))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "png"))
                    .collect();
                files.sort();
                for f in files.into_iter().take(3) {
                    let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
                    seeds.push((f.file_name().expect("a file").to_string_lossy().into_owned(), bytes));
                }
            }
            seeds.push(("claims-huge.png".into(), read("crates/dmm-cli/tests/fixtures/claims-60000x60000.png")?));
        }
        _ => {}
    }
    let extra = root.join("fuzz/seeds").join(target);
    if let Ok(entries) = std::fs::read_dir(&extra) {
        for e in entries.filter_map(|e| e.ok()) {
            let bytes = std::fs::read(e.path()).with_context(|| format!("reading {}", e.path().display()))?;
            seeds.push((e.file_name().to_string_lossy().into_owned(), bytes));
        }
    }
    for (name, bytes) in seeds {
        std::fs::write(corpus.join(format!("seed-{name}")), bytes).with_context(|| format!("writing seed {name}"))?;
    }
    Ok(())
}
