//! Training parity with PyTorch, step by step: SGD-momentum steps in training mode (batch norm on
//! batch statistics, running statistics updated) on fixed batches, from identical weights, for
//! Baseline and for DMM-CNN with its three heads. Each step's joint loss (Eq. 3, the real
//! [`joint_loss`]) and every weight and running statistic after the checked steps must match
//! PyTorch's to a relative error of 1e-4: ten steps in f64 (weights after steps 1, 3 and 10), and
//! three in f32, the training precision (weights after step 3). The reference is
//! `tests/fixtures/make_step_fixtures.py`; its docstring explains why f32 stops at three (a
//! rounding difference can break a tie between ReLU zeros and send a gradient down another path).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use dmm_data::Batch;
use dmm_model::weights::read_safetensors;
use dmm_model::{DmmModel, ModelConfig, Variant};
use dmm_policy::SgdConfig;
use dmm_train::optim::Sgd;
use dmm_train::joint_loss;

const LR: f64 = 0.0002;
const BETA: f64 = 0.5;
const N_POINTS: usize = 5;

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    read_safetensors(&path, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn flat32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// ‖a − b‖ / ‖b‖.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| y.powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

fn batch(data: &HashMap<String, Tensor>, step: usize) -> Batch {
    let get = |k: &str| flat32(&data[k].get(step).unwrap());
    let shape = data["input"].dims();
    Batch {
        images: get("input"),
        shape: [shape[1], shape[2], shape[3], shape[4]],
        labels: get("labels"),
        landmarks: get("landmarks"),
        landmark_mask: get("mask"),
        n_points: N_POINTS,
        indices: (0..shape[1]).collect(),
    }
}

/// Runs the fixture's steps in `dtype` (ten in f64, three in f32) and compares with PyTorch's.
fn check(variant: Variant, file: &str, dtype: DType) {
    let (data, reference) = (fixture("step_data.safetensors"), fixture(file));
    let (tag, steps, snapshots): (&str, usize, &[usize]) = match dtype {
        DType::F64 => ("f64", 10, &[1, 3, 10]),
        _ => ("f32", 3, &[3]),
    };
    let cfg = ModelConfig { variant, width: 2, n_points: N_POINTS, ..ModelConfig::paper() };
    let varmap = VarMap::new();
    let model = DmmModel::new(&cfg, VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu)).unwrap();
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let init = reference.get(&format!("init.{name}")).unwrap_or_else(|| panic!("{variant}: the fixture lacks init.{name}"));
        var.set(&init.to_dtype(dtype).unwrap().reshape(var.dims()).unwrap()).unwrap();
    }
    let initial: HashMap<String, Vec<f64>> = names.iter().map(|k| (k.clone(), flat(&reference[&format!("init.{k}")]))).collect();
    let lambda: Vec<f64> = flat(&data["lambda"]);
    let losses: Vec<f64> = reference[&format!("{tag}.loss")].to_vec1().unwrap();
    let mut sgd = Sgd::new(&varmap, SgdConfig { lr: LR, momentum: 0.9, weight_decay: 5e-4 });
    for step in 0..steps {
        let b = batch(&data, step);
        let xs = Tensor::from_slice(&b.images, b.shape.to_vec(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let out = model.forward_t(&xs, true).unwrap();
        let loss = joint_loss(&out, &b, &lambda, BETA, &Device::Cpu).unwrap().loss;
        let value = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        let e = (value - losses[step]).abs() / losses[step].abs();
        eprintln!("{variant} {tag} step {}: loss {value:.6} (PyTorch {:.6}), relative error {e:.1e}", step + 1, losses[step]);
        assert!(e <= 1e-4, "{variant} {tag} step {}: loss {value} against PyTorch's {}", step + 1, losses[step]);
        sgd.step(&loss.backward().unwrap(), LR, None).unwrap();

        if !snapshots.contains(&(step + 1)) {
            continue;
        }
        let state = varmap.data().lock().unwrap();
        // Whole weights per tensor, and the displacement from the start over all of them (the
        // part the steps wrote, which a check on whole weights could hide behind the initial values).
        let (mut moved_diff, mut moved_norm, mut worst) = (0f64, 0f64, (0f64, String::new()));
        for name in &names {
            let ours = flat(state[name].as_tensor());
            let theirs = flat(&reference[&format!("{tag}.step{}.{name}", step + 1)]);
            let e = rel_err(&ours, &theirs);
            if e > worst.0 {
                worst = (e, name.clone());
            }
            for ((o, t), i) in ours.iter().zip(&theirs).zip(&initial[name]) {
                moved_diff += ((o - i) - (t - i)).powi(2);
                moved_norm += (t - i).powi(2);
            }
        }
        let moved = (moved_diff / moved_norm).sqrt();
        eprintln!("{variant} {tag} after step {}: worst tensor {} at {:.1e}; displacement relative error {moved:.1e}", step + 1, worst.1, worst.0);
        assert!(worst.0 <= 1e-4, "{variant} {tag} after step {}: {} differs from PyTorch by {:.2e}", step + 1, worst.1, worst.0);
        assert!(moved <= 1e-4, "{variant} {tag} after step {}: the update differs from PyTorch's by {moved:.2e}", step + 1);
    }
}

#[test]
fn baseline_trains_like_pytorch_step_by_step() {
    check(Variant::Baseline, "step_baseline.safetensors", DType::F64);
    check(Variant::Baseline, "step_baseline.safetensors", DType::F32);
}

#[test]
fn dmm_cnn_trains_like_pytorch_step_by_step() {
    check(Variant::DmmCnn, "step_dmm-cnn.safetensors", DType::F64);
    check(Variant::DmmCnn, "step_dmm-cnn.safetensors", DType::F32);
}
