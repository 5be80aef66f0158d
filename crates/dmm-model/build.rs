//! With the `cuda` feature, compiles `kernels/dmm.cu` to PTX for `src/cuda.rs` with nvcc: `NVCC`,
//! else `$CUDA_HOME/bin/nvcc`, else `nvcc` on the PATH, for the compute capability in
//! `CUDA_COMPUTE_CAP` (90 for H100/H200; `cargo xtask cuda-build` sets all of these). Without the
//! feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels/dmm.cu");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| {
        panic!("the cuda feature needs CUDA_COMPUTE_CAP (e.g. 90 for H100/H200); `cargo xtask cuda-build` sets it")
    });
    let cap = cap.trim().trim_start_matches("sm_").trim_end_matches('a');
    if cap.is_empty() || !cap.chars().all(|c| c.is_ascii_digit()) {
        panic!("CUDA_COMPUTE_CAP={cap:?} is not a compute capability like 90");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("dmm.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}"), "kernels/dmm.cu", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}); set NVCC or CUDA_HOME, or use `cargo xtask cuda-build`", nvcc.display()));
    if !status.success() {
        panic!("{} failed on kernels/dmm.cu ({status})", nvcc.display());
    }
}
