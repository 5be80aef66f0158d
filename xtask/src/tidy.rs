//! `cargo xtask tidy`: source hygiene that CI checks through `cargo test` — every `.rs` file
//! opens with a `//!` doc saying what it is, and every crate depends only on the dmm crates below
//! it ([`LAYERS`], docs/architecture.md).

use std::path::{Path, PathBuf};

/// The dmm crates each crate may depend on (`[dependencies]`; tests and benchmarks may use more).
/// Data and model stand side by side on `dmm-core`: building the model never compiles the image
/// decoders, and the data crate never sees a tensor.
pub const LAYERS: &[(&str, &[&str])] = &[
    ("dmm-core", &[]),
    ("dmm-data", &["dmm-core"]),
    ("dmm-policy", &["dmm-core"]),
    ("dmm-model", &["dmm-core"]),
    ("dmm-landmarks", &["dmm-core", "dmm-data"]),
    ("dmm-train", &["dmm-core", "dmm-data", "dmm-model", "dmm-policy"]),
    ("dmm-cli", &["dmm-core", "dmm-data", "dmm-landmarks", "dmm-model", "dmm-policy", "dmm-train"]),
    ("xtask", &["dmm-cli", "dmm-core", "dmm-data"]),
];

/// Returns one line per `.rs` file under `crates/` and `xtask/` that does not start with `//!`,
/// and one per dmm dependency that breaks [`LAYERS`].
pub fn tidy(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut problems = module_docs(root)?;
    problems.extend(layering(root)?);
    Ok(problems)
}

/// The `dmm-*` names in the `[dependencies]` table of a Cargo.toml.
fn dmm_dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps && line.starts_with("dmm-") {
            let name: String = line.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            deps.push(name);
        }
    }
    deps
}

/// Checks every crate with a Cargo.toml under `crates/`, and `xtask/`, against [`LAYERS`].
fn layering(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut manifests = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).map_err(|e| anyhow::anyhow!("{}: {e}", root.join("crates").display()))? {
        manifests.push(entry?.path().join("Cargo.toml"));
    }
    manifests.push(root.join("xtask/Cargo.toml"));
    manifests.sort();
    let mut problems = Vec::new();
    for manifest in manifests.into_iter().filter(|m| m.is_file()) {
        let rel = manifest.strip_prefix(root).unwrap_or(&manifest).display().to_string();
        let name = manifest.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&manifest).map_err(|e| anyhow::anyhow!("{rel}: {e}"))?;
        let Some((_, allowed)) = LAYERS.iter().find(|(crate_name, _)| *crate_name == name) else {
            problems.push(format!("{rel}: crate `{name}` has no place in xtask/src/tidy.rs LAYERS (and docs/architecture.md)"));
            continue;
        };
        for dep in dmm_dependencies(&text) {
            if !allowed.contains(&dep.as_str()) {
                problems.push(format!("{rel}: `{name}` must not depend on `{dep}` (layers: docs/architecture.md)"));
            }
        }
    }
    Ok(problems)
}

fn module_docs(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "fuzz"] {
        if root.join(dir).is_dir() {
            collect_rs(&root.join(dir), &mut files)?;
        }
    }
    files.sort();
    let mut problems = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        if !text.trim_start().starts_with("//!") {
            let rel = f.strip_prefix(root).unwrap_or(&f);
            problems.push(format!("{}:1: file does not open with a `//!` doc comment", rel.display()));
        }
    }
    Ok(problems)
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                collect_rs(&path, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project_root;

    #[test]
    fn every_source_file_explains_itself() {
        let problems = tidy(&project_root()).unwrap();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn tidy_flags_a_file_without_module_doc() {
        let dir = tempfile_dir();
        std::fs::create_dir_all(dir.join("crates/x/src")).unwrap();
        std::fs::create_dir_all(dir.join("xtask")).unwrap();
        std::fs::write(dir.join("crates/x/src/lib.rs"), "//! ok\n").unwrap();
        std::fs::write(dir.join("crates/x/src/bad.rs"), "fn f() {}\n").unwrap();
        let problems = tidy(&dir).unwrap();
        assert_eq!(problems, ["crates/x/src/bad.rs:1: file does not open with a `//!` doc comment"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dependency_against_the_layers_is_named() {
        // Its own folder: the other test removes `tempfile_dir()` while this one may run.
        let dir = std::env::temp_dir().join(format!("xtask-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("crates/dmm-model")).unwrap();
        std::fs::create_dir_all(dir.join("crates/dmm-new")).unwrap();
        std::fs::create_dir_all(dir.join("xtask")).unwrap();
        let manifest = "[package]\nname = \"dmm-model\"\n\n[dependencies]\ndmm-core.workspace = true\ndmm-data = { path = \"../dmm-data\" }\n\n[dev-dependencies]\ndmm-train.workspace = true\n";
        std::fs::write(dir.join("crates/dmm-model/Cargo.toml"), manifest).unwrap();
        std::fs::write(dir.join("crates/dmm-new/Cargo.toml"), "[dependencies]\n").unwrap();
        std::fs::write(dir.join("xtask/Cargo.toml"), "[dependencies]\ndmm-data.workspace = true\n").unwrap();
        assert_eq!(
            layering(&dir).unwrap(),
            [
                "crates/dmm-model/Cargo.toml: `dmm-model` must not depend on `dmm-data` (layers: docs/architecture.md)",
                "crates/dmm-new/Cargo.toml: crate `dmm-new` has no place in xtask/src/tidy.rs LAYERS (and docs/architecture.md)",
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
