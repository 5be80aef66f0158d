//! End-to-end tests of the `dmm` binary: real output on the bundled sample, and one readable
//! error line (file and line number) with a non-zero exit for every kind of malformed input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmm")).args(args).output().unwrap()
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().map(str::to_string).collect()
}

/// Runs `dmm` expecting failure with exactly one stderr line, and returns it.
fn one_error(args: &[&str]) -> String {
    let out = dmm(args);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {}", String::from_utf8_lossy(&out.stderr));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "one line per problem: {lines:?}");
    assert!(!lines[0].contains("panicked"), "{}", lines[0]);
    lines[0].clone()
}

#[test]
fn stats_json_on_the_bundled_sample() {
    let root = repo().join("data/celeba");
    let out = dmm(&["dataset", "stats", "--dataset", "celeba", "--root", root.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dataset"], "celeba");
    assert_eq!(v["splits"]["train"]["listed"], 280);
    assert_eq!(v["splits"]["val"]["present"], 60);
    assert_eq!(v["splits"]["test"]["present"], 60);
    let attrs = v["attributes"].as_array().unwrap();
    assert_eq!(attrs.len(), 40);
    assert_eq!(attrs[20]["name"], "Male");
    // An independent count of Male (column 21) straight from the label file.
    let text = std::fs::read_to_string(root.join("list_attr_celeba.txt")).unwrap();
    let rows: Vec<&str> = text.lines().skip(2).collect();
    let male = rows.iter().filter(|r| r.split_whitespace().nth(21) == Some("1")).count();
    let rate = attrs[20]["positive_rate"].as_f64().unwrap();
    assert!((rate - male as f64 / rows.len() as f64).abs() < 1e-4, "{rate} vs {male}/{}", rows.len());
}

#[test]
fn stats_table_for_lfwa() {
    let root = repo().join("data/lfwa");
    let out = dmm(&["dataset", "stats", "--dataset", "lfwa", "--root", root.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let train = text.lines().find(|l| l.starts_with("train")).unwrap();
    assert_eq!(train.split_whitespace().collect::<Vec<_>>(), ["train", "300", "300"]);
    assert!(!text.lines().any(|l| l.starts_with("val")), "LFWA has no validation split");
}

/// Writes a CelebA root whose attribute file is `attr` and whose other files list the same names.
fn celeba_root(dir: &Path, attr: &str) -> String {
    std::fs::write(dir.join("list_attr_celeba.txt"), attr).unwrap();
    let names: Vec<&str> = attr.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    let partition: String = names.iter().map(|n| format!("{n} 0\n")).collect();
    std::fs::write(dir.join("list_eval_partition.txt"), partition).unwrap();
    dir.to_str().unwrap().to_string()
}

fn header() -> String {
    dmm_data::CELEBA_ATTRIBUTES.join(" ")
}

fn row(name: &str, first: &str) -> String {
    format!("{name} {first}{}", " -1".repeat(39))
}

fn bad_attr(attr: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let root = celeba_root(dir.path(), attr);
    let line = one_error(&["dataset", "stats", "--dataset", "celeba", "--root", &root]);
    line.rsplit_once("list_attr_celeba.txt").map(|(_, tail)| tail.to_string()).unwrap_or(line)
}

#[test]
fn malformed_attribute_files_name_file_and_line() {
    let h = header();
    assert_eq!(bad_attr(&format!("1\n{h}\n000001.jpg 1 -1\n")), ":3: `000001.jpg`: expected 40 values, found 2");
    assert_eq!(bad_attr(&format!("1\n{h}\n{}\n", row("000001.jpg", "2"))), ":3: `000001.jpg`: value `2` for 5_o_Clock_Shadow is not -1 or 1");
    assert_eq!(
        bad_attr(&format!("2\r\n{h}\r\n{}\r\n{}\r\n", row("000001.jpg", "1"), row("000001.jpg", "1"))),
        ":4: duplicate image `000001.jpg` (first on line 3)"
    );
    assert_eq!(bad_attr(&format!("1\n{}\n{}\n", h.replace("Smiling", "Smile"), row("a.jpg", "1"))), ":2: unknown attribute `Smile` in header");
    assert_eq!(bad_attr(&format!("1\nimage_id,{}\n{}\n", h.replace(' ', ","), row("a.jpg", "1"))), ":2: header has 1 attribute names, expected 40");
    assert_eq!(bad_attr(&format!("{h}\n{}\n", row("a.jpg", "1"))), ":1: expected the image count, found `5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young`");
}

#[test]
fn missing_root_is_one_line() {
    let line = one_error(&["dataset", "stats", "--dataset", "celeba", "--root", "/no/such/dir"]);
    assert!(line.starts_with("error: reading the celeba dataset in /no/such/dir: /no/such/dir/list_attr_celeba.txt:"), "{line}");
}

#[test]
fn check_reports_truncated_and_fake_jpegs_and_strict_missing() {
    let dir = tempfile::tempdir().unwrap();
    let h = header();
    let names = ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"];
    let rows: Vec<String> = names.iter().map(|n| row(n, "1")).collect();
    let root = celeba_root(dir.path(), &format!("4\n{h}\n{}\n", rows.join("\n")));
    let images = dir.path().join("img_align_celeba");
    std::fs::create_dir(&images).unwrap();
    let real = std::fs::read(repo().join("data/celeba/img_align_celeba").read_dir().unwrap().next().unwrap().unwrap().path()).unwrap();
    std::fs::write(images.join(names[0]), &real).unwrap();
    std::fs::write(images.join(names[1]), &real[..real.len() - 300]).unwrap();
    std::fs::write(images.join(names[2]), "this is a text file").unwrap();
    // names[3] is missing.

    let out = dmm(&["dataset", "check", "--dataset", "celeba", "--root", &root]);
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("000002.jpg: cannot decode image: ") && lines[0].contains("truncated"), "{}", lines[0]);
    assert!(lines[1].contains("000003.jpg: cannot decode image: "), "{}", lines[1]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 images decoded, 2 unreadable, 1 listed but missing\n");

    let line = one_error(&["dataset", "check", "--dataset", "celeba", "--root", &root, "--strict"]);
    assert_eq!(line, format!("error: {root}/img_align_celeba/000004.jpg: image listed in {root}/list_attr_celeba.txt is missing"));
}

#[test]
fn help_explains_the_commands() {
    let out = dmm(&["dataset", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("stats") && text.contains("check"), "{text}");
}

fn fixture(name: &str) -> String {
    repo().join("crates/dmm-model/tests/fixtures").join(name).to_str().unwrap().to_string()
}

fn rel_err(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    d / b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt()
}

#[test]
fn forward_matches_the_pytorch_fixture() {
    use candle_core::Device;
    use dmm_model::weights::read_safetensors;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let run = dmm(&["forward", "--weights", &fixture("dmm_w8.safetensors"), "--width", "8", "--input", &fixture("io_w8.safetensors"), "--output", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let reference = read_safetensors(Path::new(&fixture("io_w8.safetensors")), &Device::Cpu).unwrap();
    let got = read_safetensors(&out, &Device::Cpu).unwrap();
    assert!(rel_err(&got["trunk"], &reference["trunk_eval"]) < 1e-4);

    // The same weights as a full checkpoint: trunk and heads.
    let cfg = dmm_model::ModelConfig { variant: dmm_model::Variant::DmmCnn, width: 8, n_points: 68, ..dmm_model::ModelConfig::paper() };
    let (_, varmap) = dmm_model::DmmModel::fresh(&cfg, &Device::Cpu).unwrap();
    let weights = read_safetensors(Path::new(&fixture("dmm_w8.safetensors")), &Device::Cpu).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&weights[name].to_dtype(candle_core::DType::F32).unwrap()).unwrap();
    }
    let ckpt = dir.path().join("model.safetensors");
    dmm_model::checkpoint::save(&ckpt, &varmap, &dmm_model::CheckpointMeta::new(cfg)).unwrap();
    let run = dmm(&["forward", "--weights", ckpt.to_str().unwrap(), "--input", &fixture("io_w8.safetensors"), "--output", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let got = read_safetensors(&out, &Device::Cpu).unwrap();
    assert!(rel_err(&got["attributes"], &reference["attributes_eval"]) < 1e-4);
    assert!(rel_err(&got["landmarks"], &reference["landmarks_eval"]) < 1e-4);
}

#[test]
fn forward_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let out = out.to_str().unwrap();
    let line = one_error(&["forward", "--weights", &fixture("dmm_w8.safetensors"), "--input", &fixture("io_w8.safetensors"), "--output", out]);
    assert!(line.contains("--width is needed"), "{line}");
    let line = one_error(&["forward", "--weights", &fixture("dmm_w8.safetensors"), "--width", "16", "--input", &fixture("io_w8.safetensors"), "--output", out]);
    assert!(line.contains("does not fit the network: 265 mis-shaped"), "{line}");
    let line = one_error(&["forward", "--weights", &fixture("dmm_w8.safetensors"), "--width", "8", "--input", &fixture("dmm_w8.safetensors"), "--output", out]);
    assert!(line.contains("no tensor named `input`"), "{line}");
    let line = one_error(&["forward", "--weights", "hf://nobody/nothing", "--offline", "--width", "8", "--input", &fixture("io_w8.safetensors"), "--output", out]);
    assert!(line.contains("hf://nobody/nothing/model.safetensors") && line.contains("offline"), "{line}");
    assert!(!Path::new(out).exists(), "nothing written on failure");
}

#[test]
fn train_smoke_then_eval_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let root = repo().join("data/celeba");
    let run = dmm(&["train", "--dataset", "celeba", "--root", root.to_str().unwrap(), "--preset", "smoke", "--out", out.to_str().unwrap(), "--quiet"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).starts_with("finished: best val mean accuracy"));
    let model = out.join("model.safetensors");
    let ev = dmm(&["eval", "--model", model.to_str().unwrap(), "--dataset", "celeba", "--root", root.to_str().unwrap(), "--split", "test", "--json"]);
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert_eq!(v["images"], 60);
    let attrs = v["attributes"].as_array().unwrap();
    assert_eq!(attrs.len(), 40);
    assert_eq!(attrs[39]["name"], "Young");
    for key in ["accuracy", "balanced_accuracy", "threshold"] {
        assert!(attrs.iter().all(|a| a[key].is_f64()), "{key}");
    }
    let mean = attrs.iter().map(|a| a["accuracy"].as_f64().unwrap()).sum::<f64>() / 40.0;
    assert!((v["mean_accuracy"].as_f64().unwrap() - mean).abs() < 1e-12);

    // Bad flags are one readable line each.
    let line = one_error(&["train", "--dataset", "celeba", "--root", root.to_str().unwrap(), "--preset", "smoke", "--variant", "dmm", "--out", dir.path().join("x").to_str().unwrap()]);
    assert!(line.contains("unknown variant `dmm`"), "{line}");
    let line = one_error(&["train", "--dataset", "celeba", "--root", root.to_str().unwrap(), "--preset", "smoke", "--out", out.to_str().unwrap()]);
    assert!(line.contains("already holds a run; pass --resume"), "{line}");
}

/// NaN, infinite, negative and zero settings and sizes no machine could hold are one line each,
/// before anything is read or written.
#[test]
fn bad_hyper_parameters_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let root = repo().join("data/celeba");
    for (flag, value, says) in [
        ("--lr", "NaN", "learning rate must be a positive number"),
        ("--lr", "inf", "learning rate must be a positive number"),
        ("--lr", "-1", "learning rate must be a positive number"),
        ("--lr", "0", "learning rate must be a positive number"),
        ("--size", "0x0", "at least 32×32"),
        ("--size", "-5x100", "--size height"),
        ("--size", "20000x20000", "at most 1024×1024"),
        ("--size", "big", "--size must be HxW"),
        ("--width", "0", "must all be at least 1"),
        ("--batch-size", "0", "must all be at least 1"),
        ("--epochs", "0", "must all be at least 1"),
    ] {
        let arg = format!("{flag}={value}");
        let line = one_error(&["train", "--dataset", "celeba", "--root", root.to_str().unwrap(), "--preset", "smoke", &arg, "--out", out.to_str().unwrap()]);
        assert!(line.contains(says), "{arg}: {line}");
        assert!(!out.exists(), "{arg} created the run directory");
    }
}

#[cfg(feature = "dlib")]
#[test]
fn landmarks_on_fixture_images_resume_and_report_no_face() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("imgs");
    std::fs::create_dir(&images).unwrap();
    let fixtures = repo().join("crates/dmm-landmarks/tests/fixtures");
    for name in ["000130.png", "002487.png"] {
        std::fs::copy(fixtures.join(name), images.join(name)).unwrap();
    }
    let csv = dir.path().join("lm.csv");
    let args = ["landmarks", "--images", images.to_str().unwrap(), "--out", csv.to_str().unwrap(), "--jobs", "1"];
    let out = dmm(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("2 images: 0 already done, 1 with landmarks, 1 without a face"), "{text}");
    let table = dmm_data::LandmarkTable::read(&csv).unwrap();
    let reference = dmm_data::LandmarkTable::read(&fixtures.join("python_dlib.csv")).unwrap();
    assert_eq!(table.get("000130.png"), reference.get("000130.png"));
    let again = dmm(&args);
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("2 images: 2 already done, 0 with landmarks"));
}

#[cfg(not(feature = "dlib"))]
#[test]
fn landmarks_without_dlib_says_how_to_get_it() {
    let line = one_error(&["landmarks", "--images", "data", "--out", "x.csv"]);
    assert!(line.contains("built without dlib") && line.contains("--features dmm-cli/dlib"), "{line}");
}

#[cfg(feature = "mat")]
#[test]
fn text_split_converts_the_official_mat_split() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["name.txt", "label.txt", "indices_train_test.mat"] {
        std::fs::copy(repo().join("data/lfwa").join(f), dir.path().join(f)).unwrap();
    }
    let out = dmm(&["dataset", "text-split", "--root", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(300 train, 100 test images)"));
    // The bundled text split was made from the same files by scripts/make_sample.py (Python, h5py).
    let rows = |p: PathBuf| std::fs::read_to_string(p).unwrap().lines().filter(|l| !l.starts_with('#')).map(String::from).collect::<Vec<_>>();
    assert_eq!(rows(dir.path().join("lfwa_40attr_with_split.txt")), rows(repo().join("data/lfwa/lfwa_40attr_with_split.txt")));
}

#[cfg(not(feature = "mat"))]
#[test]
fn text_split_without_mat_says_how_to_get_it() {
    let line = one_error(&["dataset", "text-split", "--root", "data/lfwa"]);
    assert!(line.contains("--features mat"), "{line}");
}

#[test]
fn bench_prints_the_median_as_json() {
    for mode in ["train-step", "forward"] {
        let out = dmm(&["bench", mode, "--width", "2", "--size", "64x52", "--batch", "2", "--iters", "2", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (t, rate) = (v["median_s"].as_f64().unwrap(), v["images_per_s"].as_f64().unwrap());
        assert!(t > 0.0 && (rate * t - 2.0).abs() < 1e-9, "{v}");
    }
    let line = one_error(&["bench", "forward", "--size", "big"]);
    assert!(line.contains("HxW") || line.contains("big"), "{line}");
}
