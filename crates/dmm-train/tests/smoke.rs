//! The smoke preset end to end on the bundled sample: records with 40 λ and 40 τ, checkpoints
//! that load, and a run interrupted after its first checkpoint and resumed that ends bit-for-bit
//! where an uninterrupted run ends.

use std::path::{Path, PathBuf};

use candle_core::Device;
use dmm_data::DatasetKind;
use dmm_train::{train, Outcome, Record, RunDir, TrainConfig, TrainOptions};

fn smoke() -> TrainConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/celeba");
    TrainConfig::preset("smoke", DatasetKind::CelebA, root).unwrap()
}

fn records(run: &RunDir) -> Vec<Record> {
    std::fs::read_to_string(run.metrics()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn tensors(path: PathBuf) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<_> = dmm_model::weights::read_safetensors(&path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn smoke_writes_records_and_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().join("run"));
    let quiet = TrainOptions { quiet: true, ..Default::default() };
    let outcome = train(&smoke(), &run, &quiet).unwrap();
    let Outcome::Finished { profile, .. } = outcome else { panic!("not finished: {outcome:?}") };
    // Where the time went: 6 iterations of 8 images, every phase charged, none beyond the whole.
    assert_eq!((profile.iterations, profile.images), (6, 48));
    let phases = [profile.decode, profile.loader, profile.forward, profile.backward, profile.update, profile.evaluation, profile.checkpoint];
    assert!(phases.iter().all(|&s| s >= 0.0) && profile.forward > 0.0 && profile.backward > 0.0 && profile.evaluation > 0.0);
    assert!(profile.decode > 0.0, "smoke resizes, so its images are decoded into the caches up front");
    assert!(phases.iter().sum::<f64>() <= profile.total, "{profile:?}");
    let stored: dmm_train::Profile = serde_json::from_str(&std::fs::read_to_string(run.profile()).unwrap()).unwrap();
    assert_eq!(stored, profile);
    assert!(profile.summary().starts_with("time: "));
    let recs = records(&run);
    assert_eq!(recs.iter().map(|r| r.iteration).collect::<Vec<_>>(), [0, 3, 6]);
    assert!(recs.iter().all(|r| r.lambda.len() == 40 && r.tau.len() == 40 && r.n_eval == 16));
    assert!(recs.last().unwrap().last);
    // DW: λ = 1 after one evaluation, Eq. 4 (rescaled to sum to 40) after two.
    assert!(recs[0].lambda.iter().all(|&l| l == 1.0));
    assert!((recs[1].lambda.iter().sum::<f64>() - 40.0).abs() < 1e-9);
    // Eq. 6 at epoch 1 over V = 16: each τ step is a multiple of 0.01/16.
    let step = 0.01 / 16.0;
    assert!(recs[0].tau.iter().all(|t| ((t / step).round() * step - t).abs() < 1e-12));
    // The plateau rule is fed the periodic evaluations' error, 1 − mean accuracy, not their loss.
    let state = dmm_model::checkpoint::read_metadata_entry(&run.last(), "dmm_train").unwrap().unwrap();
    let best = serde_json::from_str::<serde_json::Value>(&state).unwrap()["plateau"]["best"].as_f64().unwrap();
    let least_error = recs.iter().filter(|r| !r.last).map(|r| 1.0 - r.mean_accuracy).fold(f64::INFINITY, f64::min);
    assert!((best - least_error).abs() < 1e-12, "plateau best {best}, least validation error {least_error}");
    let ckpt = dmm_model::checkpoint::load(&run.best(), &Device::Cpu).unwrap();
    assert_eq!(ckpt.meta.model.width, 2);
    // A second start into the same directory without --resume is refused.
    let err = train(&smoke(), &run, &quiet).unwrap_err().to_string();
    assert!(err.contains("already holds a run"), "{err}");
}

#[test]
fn resume_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = smoke();
    let straight = RunDir::new(dir.path().join("straight"));
    train(&cfg, &straight, &TrainOptions { quiet: true, ..Default::default() }).unwrap();

    let resumed = RunDir::new(dir.path().join("resumed"));
    let stop = TrainOptions { quiet: true, stop_after: Some(3), ..Default::default() };
    assert_eq!(train(&cfg, &resumed, &stop).unwrap(), Outcome::Stopped { iteration: 3 });
    assert_eq!(records(&resumed).len(), 2);
    let again = TrainOptions { quiet: true, resume: true, ..Default::default() };
    assert!(matches!(train(&cfg, &resumed, &again).unwrap(), Outcome::Finished { .. }));

    assert_eq!(records(&resumed), records(&straight));
    assert_eq!(tensors(resumed.last()), tensors(straight.last()));
    assert_eq!(tensors(resumed.best()), tensors(straight.best()));
    // Resuming a finished run is a no-op.
    assert!(matches!(train(&cfg, &resumed, &again).unwrap(), Outcome::Finished { .. }));
    assert_eq!(records(&resumed).len(), 3);
}

#[test]
fn resume_right_after_the_first_evaluation_does_not_repeat_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = smoke();
    let straight = RunDir::new(dir.path().join("straight"));
    train(&cfg, &straight, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let resumed = RunDir::new(dir.path().join("resumed"));
    train(&cfg, &resumed, &TrainOptions { quiet: true, stop_after: Some(0), ..Default::default() }).unwrap();
    train(&cfg, &resumed, &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap();
    assert_eq!(records(&resumed), records(&straight));
    assert_eq!(tensors(resumed.last()), tensors(straight.last()));
}

#[test]
fn resume_with_other_flags_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().join("run"));
    let cfg = smoke();
    train(&cfg, &run, &TrainOptions { quiet: true, stop_after: Some(0), ..Default::default() }).unwrap();
    let other = TrainConfig { width: 4, ..cfg.clone() };
    let err = train(&other, &run, &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("config.json: differs"), "{err}");
    let shorter = TrainConfig { epochs: 2, ..cfg.clone() };
    let longer = TrainConfig { epochs: 3, ..cfg };
    train(&longer, &run, &TrainOptions { quiet: true, resume: true, stop_after: Some(3), ..Default::default() }).unwrap();
    let err = train(&shorter, &run, &TrainOptions { quiet: true, resume: true, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("cannot have fewer (2)"), "{err}");
}

#[test]
fn a_finished_run_resumed_with_more_epochs_equals_the_longer_run() {
    let dir = tempfile::tempdir().unwrap();
    let longer = TrainConfig { epochs: 2, ..smoke() };
    let straight = RunDir::new(dir.path().join("straight"));
    train(&longer, &straight, &TrainOptions { quiet: true, ..Default::default() }).unwrap();

    let extended = RunDir::new(dir.path().join("extended"));
    train(&smoke(), &extended, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    assert!(records(&extended).last().unwrap().last);
    let again = TrainOptions { quiet: true, resume: true, ..Default::default() };
    assert!(matches!(train(&longer, &extended, &again).unwrap(), Outcome::Finished { .. }));

    assert_eq!(records(&extended), records(&straight));
    assert_eq!(std::fs::read(extended.metrics()).unwrap(), std::fs::read(straight.metrics()).unwrap());
    assert_eq!(std::fs::read(extended.config()).unwrap(), std::fs::read(straight.config()).unwrap());
    assert_eq!(tensors(extended.last()), tensors(straight.last()));
    assert_eq!(tensors(extended.best()), tensors(straight.best()));
}
