//! The `dmm` binary as xtask uses it: built once in release mode (`cargo build --release -p
//! dmm-cli -p xtask`), then run as a child process per training or evaluation, so runs can go in
//! parallel with their own thread counts and a crash in one run never takes the others down.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// A built `dmm` executable.
#[derive(Debug, Clone)]
pub struct Dmm {
    /// The executable.
    pub exe: PathBuf,
}

/// A `cargo` command without the variables `cargo run` set for xtask itself (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, …). Some build scripts (ring's) rerun when those change, so a child build
/// that inherited them would recompile ring and everything above it (about a minute) whenever a
/// plain `cargo build` ran in between.
pub fn cargo() -> Command {
    without_cargo_run_env(Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())))
}

/// `cmd` without the variables `cargo run` set for xtask itself (see [`cargo`]).
pub fn without_cargo_run_env(mut cmd: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let from_cargo_run = key.starts_with("CARGO_PKG_")
            || ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE"].contains(&&*key);
        if from_cargo_run {
            cmd.env_remove(&*key);
        }
    }
    cmd
}

impl Dmm {
    /// Builds `dmm` in release mode with `features` (e.g. `["dlib"]`) and returns it; `exe`
    /// short-cuts the build (tests pass a debug binary).
    pub fn build(root: &Path, features: &[&str], exe: Option<PathBuf>) -> anyhow::Result<Self> {
        if let Some(exe) = exe {
            if !exe.is_file() {
                bail!("{}: no such executable", exe.display());
            }
            return Ok(Self { exe });
        }
        let mut cmd = cargo();
        // With xtask in the same build, cargo picks the features it picked when it built xtask,
        // which depends on dmm's library: every dependency is already compiled (xtask/Cargo.toml).
        cmd.current_dir(root).args(["build", "--release", "-p", "dmm-cli", "-p", "xtask"]);
        if !features.is_empty() {
            let list: Vec<String> = features.iter().map(|f| format!("dmm-cli/{f}")).collect();
            cmd.args(["--features", &list.join(",")]);
        }
        eprintln!("building dmm (release{}) …", if features.is_empty() { String::new() } else { format!(", features {}", features.join(",")) });
        let status = cmd.status().context("running cargo build")?;
        if !status.success() {
            if features.contains(&"dlib") {
                bail!("building dmm with the dlib feature failed; it needs libdlib-dev, libdlib-data, liblapack-dev and libblas-dev (Debian), or pass --no-landmarks");
            }
            bail!("cargo build --release -p dmm-cli failed");
        }
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        Ok(Self { exe: target.join("release").join("dmm") })
    }

    /// A command for this executable with `threads` CPU threads (candle and rayon read
    /// `RAYON_NUM_THREADS`).
    pub fn command(&self, threads: Option<usize>) -> Command {
        let mut cmd = Command::new(&self.exe);
        if let Some(n) = threads {
            cmd.env("RAYON_NUM_THREADS", n.to_string());
        }
        cmd
    }

    /// Runs `args`, sending stdout and stderr to `log` (appended); fails with the log's last lines.
    pub fn run_logged(&self, args: &[String], threads: Option<usize>, log: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("{}: cannot open", log.display()))?;
        writeln!(file, "$ dmm {}", shell_words(args))?;
        let status = self
            .command(threads)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .with_context(|| format!("running {}", self.exe.display()))?;
        if !status.success() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("`dmm {}` failed ({status}); log {}: {}", shell_words(args), log.display(), tail.join(" | "));
        }
        Ok(())
    }

    /// Runs `args` and returns stdout; stderr passes through to ours.
    pub fn output(&self, args: &[String], threads: Option<usize>) -> anyhow::Result<String> {
        let out = self.command(threads).args(args).stdin(Stdio::null()).stderr(Stdio::inherit()).output().with_context(|| format!("running {}", self.exe.display()))?;
        if !out.status.success() {
            bail!("`dmm {}` failed ({})", shell_words(args), out.status);
        }
        String::from_utf8(out.stdout).context("dmm printed non-UTF-8 output")
    }
}

/// `args` as one line a shell would read back the same (single-quoted where needed).
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        let args: Vec<String> = ["train", "--out", "runs/a b", "it's", ""].map(String::from).to_vec();
        assert_eq!(shell_words(&args), r"train --out 'runs/a b' 'it'\''s' ''");
    }
}
