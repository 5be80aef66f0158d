//! `cargo xtask tidy`: source hygiene that CI checks through `cargo test` — every `.rs` file
//! opens with a `//!` doc saying what it is.

use std::path::{Path, PathBuf};

/// Returns one line per `.rs` file under `crates/` and `xtask/` that does not start with `//!`.
pub fn tidy(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    for dir in ["crates", "xtask"] {
        collect_rs(&root.join(dir), &mut files)?;
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

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
