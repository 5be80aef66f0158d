//! The GPU check harness without a GPU: `dmm gpu-check --device cpu` (the CPU against itself, the
//! finite-difference checks and the PyTorch fixtures all run), `scripts/gpu-check.sh --cpu`, and
//! the one-line error a CPU build gives for `--device cuda`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn gpu_check_on_the_cpu_passes_every_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_dmm")).current_dir(repo()).args(["gpu-check", "--device", "cpu", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["failed"], 0);
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["check"].as_str().unwrap()).collect();
    // Every op is compared; every differentiable op also meets finite differences.
    for op in ["conv 3×3 s2 p1", "conv 7×7 s2 p3 (stem)", "linear + bias", "batch norm + ReLU (train)", "add + ReLU", "max-pool 3×3 s2 p1 (stem)", "SPP, 3 levels"] {
        assert!(names.contains(&format!("{op}: device = CPU").as_str()), "{op}: {names:?}");
        assert!(names.contains(&format!("{op}: gradient = finite difference").as_str()), "{op}");
    }
    // The step is measured against the f64 one; the CPU against itself is exactly as far from it.
    let step = checks.iter().find(|c| c["check"].as_str().unwrap().starts_with("DMM-CNN one SGD step")).unwrap();
    let ratio = step["error"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio <= 1.0, "{step}");
    // The fixtures were found (run from the repository root) and met.
    let torch: Vec<_> = checks.iter().filter(|c| c["check"].as_str().unwrap().ends_with("= PyTorch")).collect();
    assert_eq!(torch.len(), 3, "{names:?}");
    assert!(torch.iter().all(|c| c["passed"] == true && c["error"].as_f64().unwrap() < 1e-4));
}

#[test]
fn a_missing_fixture_folder_is_a_skipped_line_not_a_failure() {
    let out = Command::new(env!("CARGO_BIN_EXE_dmm")).args(["gpu-check", "--device", "cpu", "--fixtures", "/nonexistent"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("skipped  (skipped: no fixtures in /nonexistent)"), "{text}");
}

#[test]
fn cuda_in_a_cpu_build_is_one_readable_line() {
    if dmm_model::DeviceSpec::CUDA_BUILT {
        return;
    }
    for args in [&["gpu-check"][..], &["bench", "forward", "--device", "cuda:1"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_dmm")).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("built without CUDA") && err.contains("cargo xtask cuda-build"), "{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_dmm")).args(["bench", "forward", "--device", "gpu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap rejects an unknown device");
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected cpu, cuda or cuda:N"));
}

#[test]
fn the_script_runs_its_cpu_mode() {
    if Command::new("bash").arg("--version").output().is_err() {
        return;
    }
    let out = Command::new("bash").arg(repo().join("scripts/gpu-check.sh")).args(["--cpu", "--bin", env!("CARGO_BIN_EXE_dmm")]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(" checks, 0 failed"), "{text}");
    for mode in ["| train-step | ", "| forward | "] {
        let row = text.lines().find(|l| l.starts_with(mode)).unwrap_or_else(|| panic!("no {mode} row: {text}"));
        let secs: f64 = row.split('|').nth(2).unwrap().trim().parse().unwrap();
        assert!(secs > 0.0, "{row}");
    }
}

#[test]
fn the_script_stops_at_once_when_the_device_cannot_be_opened() {
    if Command::new("bash").arg("--version").output().is_err() {
        return;
    }
    // A CPU build (or a machine without a driver) cannot open cuda:0.
    let out = Command::new("bash").arg(repo().join("scripts/gpu-check.sh")).args(["--bin", env!("CARGO_BIN_EXE_dmm"), "--device", "cuda:0"]).output().unwrap();
    let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if dmm_model::DeviceSpec::CUDA_BUILT && out.status.success() {
        return; // a CUDA build on a GPU machine
    }
    assert_eq!(out.status.code(), Some(2), "{text}\n{err}");
    assert!(err.contains("cuda:0 cannot be opened") && !text.contains("| train-step |"), "{text}\n{err}");
}
