//! End to end: `cargo xtask reproduce --preset smoke` on the bundled sample trains and evaluates
//! all twenty runs with a real `dmm` binary, writes the report and the five figures, and a second
//! call reuses every finished run; a run whose result was lost is evaluated again.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The debug `dmm` that `cargo test --workspace` builds for dmm-cli's own tests; built here when
/// this package is tested alone.
fn dmm_exe() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    let exe = target.join("debug").join("dmm");
    if !exe.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let ok = Command::new(cargo).current_dir(root()).args(["build", "-p", "dmm-cli"]).status().unwrap().success();
        assert!(ok, "cargo build -p dmm-cli failed");
    }
    exe
}

fn reproduce(out: &Path) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(root())
        .args(["reproduce", "--preset", "smoke", "--jobs", "2", "--no-landmarks", "--out"])
        .arg(out)
        .arg("--dmm")
        .arg(dmm_exe())
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn reproduce_smoke_writes_the_report_and_reuses_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    let (ok, log) = reproduce(&out);
    assert!(ok, "{log}");
    assert_eq!(log.matches("trained and evaluated").count(), 20, "{log}");

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for name in ["Baseline", "DMM-FAC", "DMM-EQ-FIX", "DMM-EQ-AT", "DMM-DW-FIX", "DMM-SPP", "DMM-CNN"] {
        let row = report.lines().find(|l| l.starts_with(&format!("| {name} |"))).unwrap_or_else(|| panic!("no row for {name}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // CelebA and LFWA accuracies are numbers in [0, 100].
        for c in [cells[2], cells[5]] {
            let v: f64 = c.parse().unwrap_or_else(|_| panic!("{name}: `{c}` in {row}"));
            assert!((0.0..=100.0).contains(&v), "{row}");
        }
    }
    assert!(report.contains("| Ours (DW) | `dmm-cnn` |") && report.contains("91.70") && report.contains("86.56"));
    assert!(report.contains("This is not the paper's setting"));
    // Every number comes from a run folder: the DMM-CNN CelebA accuracy is test.json's.
    let test: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("celeba/dmm-cnn/test.json")).unwrap()).unwrap();
    let acc = format!("{:.2}", 100.0 * test["mean_accuracy"].as_f64().unwrap());
    assert!(report.lines().any(|l| l.starts_with("| DMM-CNN |") && l.contains(&acc)), "{acc}");
    for fig in ["fig3-celeba-variants", "fig4-lfwa-variants", "fig5-validation-loss", "fig6-dynamic-weights", "fig7-thresholds"] {
        let svg = std::fs::read_to_string(out.join(format!("figures/{fig}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{fig}");
        assert!(report.contains(&format!("(figures/{fig}.svg)")), "{fig} not linked");
    }

    // Everything finished: nothing is retrained.
    let (ok, log) = reproduce(&out);
    assert!(ok, "{log}");
    assert_eq!(log.matches("finished earlier, reused").count(), 20, "{log}");
    // A lost test result is recomputed from the finished training run.
    std::fs::remove_file(out.join("lfwa/dmm-spp/test.json")).unwrap();
    let (ok, log) = reproduce(&out);
    assert!(ok, "{log}");
    assert_eq!(log.matches("trained and evaluated").count(), 1, "{log}");
    assert!(log.contains("lfwa/dmm-spp: trained and evaluated"), "{log}");
}
