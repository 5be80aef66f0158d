//! The models that ship in the repository, remade from scratch by dmm's own commands:
//! `mini-backbone` (the trunk the `mini` preset starts from) and `bundle-model` (the model built
//! into `dmm predict`). Each writes its file atomically and prints how long it took.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::dmm::{self, Dmm};
use crate::runs::Ds;

/// The training behind [`Command::MiniBackbone`]; the arguments are its whole recipe.
const MINI_BACKBONE_ARGS: [&str; 14] = [
    "--preset", "mini", "--variant", "baseline", "--backbone", "none", "--batch-size", "32", "--epochs", "20", "--eval-every", "281", "--lr",
    "0.00025",
];

pub fn mini_backbone(root: &Path, dmm: &Dmm, data_root: &Path, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut args: Vec<String> = ["train", "--dataset", "celeba", "--root"].map(String::from).to_vec();
    args.push(data_root.to_string_lossy().into_owned());
    args.extend(MINI_BACKBONE_ARGS.map(String::from));
    args.extend(["--out".into(), out.to_string_lossy().into_owned(), "--resume".into()]);
    eprintln!("$ dmm {}", dmm::shell_words(&args));
    let status = dmm.command(None).args(&args).status().context("running dmm train")?;
    anyhow::ensure!(status.success(), "`dmm {}` failed ({status})", dmm::shell_words(&args));
    let dest = root.join("data/pretrained/celeba-baseline-w8.safetensors");
    let tmp = dest.with_extension("safetensors.tmp");
    std::fs::create_dir_all(dest.parent().expect("a parent")).with_context(|| format!("creating {}", dest.display()))?;
    std::fs::copy(out.join("model.safetensors"), &tmp).with_context(|| format!("copying {}", out.join("model.safetensors").display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
    println!("{} written in {:.1} min; its card is data/pretrained/README.md", dest.display(), started.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

/// The built-in model, relative to the workspace root (`dmm-cli` includes it).
pub const BUNDLED_MODEL: &str = "models/dmm-cnn-celeba-w16.safetensors";
/// The f32 model's predictions (`dmm predict --json`) on the bundled sample, the reference the
/// f16 model is tested against.
pub const BUNDLED_REFERENCE: &str = "models/dmm-cnn-celeba-w16.f32-predictions.jsonl";

/// The training behind [`crate::Command::BundleModel`]; with the dataset root (and its
/// landmarks.csv) the arguments are its whole recipe. Width 16 at 218×178 keeps the f16 file
/// near 11 MB.
const BUNDLE_ARGS: [&str; 12] =
    ["--preset", "subset", "--variant", "dmm-cnn", "--width", "16", "--size", "218x178", "--epochs", "18", "--seed", "0"];

pub fn bundle_model(root: &Path, data_root: &Path, out: &Path, landmarks: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let dmm = Dmm::build(root, &["dlib"], None)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::ensure_landmarks(root, Ds::Celeba, data_root, Some(landmarks), None, Some(dmm.exe.clone()))?;
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut train: Vec<String> = vec!["train".into(), "--dataset".into(), "celeba".into(), "--root".into(), s(data_root), "--landmarks".into(), s(landmarks)];
    train.extend(BUNDLE_ARGS.map(String::from));
    train.extend(["--out".into(), s(out), "--resume".into()]);
    eprintln!("$ dmm {}", dmm::shell_words(&train));
    let status = dmm.command(None).args(&train).status().context("running dmm train")?;
    anyhow::ensure!(status.success(), "`dmm {}` failed ({status})", dmm::shell_words(&train));
    let trained = out.join("model.safetensors");
    let bundled = root.join(BUNDLED_MODEL);
    std::fs::create_dir_all(bundled.parent().expect("a parent")).with_context(|| format!("creating {}", bundled.display()))?;
    dmm.output(&["export".into(), "--model".into(), s(&trained), "--out".into(), s(&bundled)], None)?;
    let sample = root.join("data/celeba/img_align_celeba");
    let reference = dmm.output(&["predict".into(), "--model".into(), s(&trained), "--json".into(), s(&sample)], None)?;
    let reference_path = root.join(BUNDLED_REFERENCE);
    dmm_data::fsutil::write_atomic(&reference_path, reference.as_bytes()).with_context(|| format!("writing {}", reference_path.display()))?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    for split in ["val", "test"] {
        let eval = ["eval", "--model", &s(&bundled), "--dataset", "celeba", "--root", &s(data_root), "--landmarks", &s(landmarks), "--split", split]
            .map(String::from);
        eprintln!("$ dmm {}", dmm::shell_words(&eval));
        print!("{}", dmm.output(&eval, None)?);
    }
    println!("{} and {} written in {minutes:.1} min; its card is models/README.md", bundled.display(), reference_path.display());
    Ok(())
}
