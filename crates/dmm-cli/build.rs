//! Stamps the commit `dmm` is built from into `dmm --version` (`DMM_COMMIT`): the short hash of
//! HEAD (uncommitted edits are not marked), or `unknown commit` outside a git checkout (a crates.io
//! or tarball build).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=9", "HEAD"]) {
        Some(hash) => format!("commit {hash}"),
        None => "unknown commit".to_string(),
    };
    println!("cargo:rustc-env=DMM_COMMIT={commit}");
    // A new commit or checkout moves HEAD or the ref it names.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        let head_ref = git(&["symbolic-ref", "-q", "HEAD"]).map(|r| format!("{dir}/{r}"));
        // Watching a file that does not exist would rerun this on every build.
        for file in head_ref.into_iter().chain([format!("{dir}/packed-refs")]) {
            if std::path::Path::new(&file).exists() {
                println!("cargo:rerun-if-changed={file}");
            }
        }
    }
}
