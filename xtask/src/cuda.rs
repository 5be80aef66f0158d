//! `cargo xtask cuda-build`: one release `dmm` with the CUDA path, built on any x86-64 Linux
//! machine, GPU or not. nvcc and the CUDA headers come from PyPI (NVIDIA's `nvidia-*` wheels,
//! CUDA 13.0) into `target/cuda-sdk`; the build goes to its own target folder, `target/cuda`, so
//! the CPU binary that `reproduce` uses is left alone. The binary loads the driver and cuBLAS when
//! a CUDA device opens (cuRAND only for random draws on the GPU, which dmm does not make), so it
//! starts, and runs on the CPU, anywhere; `scripts/gpu-check.sh` finds those libraries on the GPU
//! machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The PyPI wheels that make a CUDA 13.0 compiler: nvcc, its front end (cicc) and the headers
/// candle's and dmm's kernels include. Pinned together: their minor versions must agree.
pub const WHEELS: [&str; 5] = [
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
];

/// H100 and H200.
pub const DEFAULT_COMPUTE_CAP: u32 = 90;

/// The largest binary a GPU machine is handed.
pub const MAX_BINARY_MIB: f64 = 64.0;

/// Where the wheels put the toolkit inside the install folder.
fn toolkit(sdk: &Path) -> PathBuf {
    sdk.join("nvidia").join("cu13")
}

/// Installs the wheels into `sdk` unless nvcc is already there; returns the toolkit root
/// (`CUDA_HOME`).
pub fn ensure_sdk(sdk: &Path) -> anyhow::Result<PathBuf> {
    let home = toolkit(sdk);
    if home.join("bin/nvcc").is_file() && home.join("nvvm/bin/cicc").is_file() {
        return Ok(home);
    }
    eprintln!("installing nvcc and the CUDA headers from PyPI into {} …", sdk.display());
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--upgrade", "--target"])
        .arg(sdk)
        .args(WHEELS)
        .status()
        .context("running python3 -m pip (python3 with pip is needed to fetch nvcc)")?;
    if !status.success() {
        bail!("pip could not install {} into {}", WHEELS.join(" "), sdk.display());
    }
    if !home.join("bin/nvcc").is_file() {
        bail!("{}: the wheels installed no bin/nvcc", home.display());
    }
    Ok(home)
}

/// The environment of the build: nvcc first on the PATH, the toolkit root and the GPU generation.
pub fn build_env(home: &Path, compute_cap: u32) -> Vec<(String, String)> {
    let bin = home.join("bin");
    let path = std::env::var("PATH").unwrap_or_default();
    vec![
        ("PATH".into(), format!("{}:{path}", bin.display())),
        ("NVCC".into(), bin.join("nvcc").display().to_string()),
        ("CUDA_HOME".into(), home.display().to_string()),
        ("CUDA_ROOT".into(), home.display().to_string()),
        ("CUDA_COMPUTE_CAP".into(), compute_cap.to_string()),
        // Symbols stripped and no debug info: the GPU machine gets one file under 64 MiB.
        ("CARGO_PROFILE_RELEASE_DEBUG".into(), "false".into()),
        ("CARGO_PROFILE_RELEASE_STRIP".into(), "symbols".into()),
    ]
}

/// Builds `dmm` with the `cuda` feature for `compute_cap` (90: H100/H200) and returns it.
pub fn build(root: &Path, compute_cap: u32) -> anyhow::Result<PathBuf> {
    let home = match std::env::var_os("CUDA_HOME").map(PathBuf::from) {
        // A toolkit the user points at is used as it is.
        Some(h) if h.join("bin/nvcc").is_file() => h,
        _ => ensure_sdk(&root.join("target/cuda-sdk"))?,
    };
    let target = root.join("target/cuda");
    eprintln!("building dmm (release, cuda, compute capability {compute_cap}) into {} with {} …", target.display(), home.display());
    let status = crate::dmm::cargo()
        .current_dir(root)
        .envs(build_env(&home, compute_cap))
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--release", "-p", "dmm-cli", "--features", "dmm-cli/cuda"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p dmm-cli --features cuda failed");
    }
    let exe = target.join("release/dmm");
    let mib = std::fs::metadata(&exe).with_context(|| format!("{}: not built", exe.display()))?.len() as f64 / (1024.0 * 1024.0);
    if mib > MAX_BINARY_MIB {
        bail!("{}: {mib:.1} MiB, over the {MAX_BINARY_MIB} MiB a GPU machine takes", exe.display());
    }
    println!("{} ({mib:.1} MiB, CUDA 13.0, compute capability {compute_cap}; needs an NVIDIA driver 580+ and this machine's glibc or newer)", exe.display());
    println!("on the GPU machine, from a checkout of this repository: scripts/gpu-check.sh --bin {}", exe.display());
    Ok(exe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_sees_the_sdk_nvcc_first() {
        let env = build_env(Path::new("/sdk/nvidia/cu13"), 90);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap();
        assert!(get("PATH").starts_with("/sdk/nvidia/cu13/bin:"));
        assert_eq!(get("NVCC"), "/sdk/nvidia/cu13/bin/nvcc");
        assert_eq!(get("CUDA_COMPUTE_CAP"), "90");
        assert_eq!(get("CARGO_PROFILE_RELEASE_STRIP"), "symbols");
    }

    #[test]
    fn the_wheels_agree_on_one_cuda_minor() {
        assert!(WHEELS.iter().all(|w| w.ends_with("==13.0.*")), "{WHEELS:?}");
    }
}
