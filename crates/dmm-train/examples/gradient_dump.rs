//! One training-mode forward and backward of a dmm checkpoint on a given batch, every gradient
//! written out: the dmm half of `bench/grad_parity.py`, which checks them against PyTorch's at a
//! real run's size (the step-parity test, `tests/step_parity.rs`, runs at width 2 and 64×48).
//!
//! ```text
//! cargo run --release -p dmm-train --example gradient_dump -- CHECKPOINT BATCH OUT f32|f64
//! ```
//!
//! BATCH is a safetensors file with `input` `[n, 3, h, w]` (normalized pixels), `labels` `[n, 40]`
//! (±1) and `lambda` `[40]`; no landmarks (the FLD term is masked out). OUT receives
//! `grad.<variable>` for every variable with a gradient, `attributes` `[n, 40]` and `loss` `[1]`,
//! all in f64.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use candle_core::{DType, Device, Tensor};
use dmm_data::Batch;
use dmm_model::{checkpoint, weights::read_safetensors, DmmModel};

fn run(args: &[String]) -> Result<(), String> {
    let [_, ckpt, batch, out, dtype] = args else {
        return Err("usage: gradient_dump CHECKPOINT BATCH OUT f32|f64".into());
    };
    let dtype = match dtype.as_str() {
        "f32" => DType::F32,
        "f64" => DType::F64,
        other => return Err(format!("dtype {other}: expected f32 or f64")),
    };
    let dev = Device::Cpu;
    let loaded = checkpoint::load(Path::new(ckpt), &dev).map_err(about(ckpt))?;
    let (model, varmap) = DmmModel::from_copy(&loaded.meta.model, &loaded.varmap, dtype, &dev).map_err(about(ckpt))?;
    let data = read_safetensors(Path::new(batch), &dev).map_err(about(batch))?;
    let get = |k: &str| data.get(k).ok_or_else(|| format!("{batch}: no tensor `{k}`"));
    let (input, labels, lambda) = (get("input")?, get("labels")?, get("lambda")?);
    let dims: [usize; 4] = input.dims().try_into().map_err(|_| format!("{batch}: input is {:?}, expected [n, 3, h, w]", input.dims()))?;
    let n = dims[0];
    let n_points = loaded.meta.model.n_points;
    let b = Batch {
        images: input.flatten_all().and_then(|t| t.to_vec1()).map_err(about(batch))?,
        shape: dims,
        labels: labels.flatten_all().and_then(|t| t.to_vec1()).map_err(about(batch))?,
        landmarks: vec![0.0; n * 2 * n_points],
        landmark_mask: vec![0.0; n],
        n_points,
        indices: (0..n).collect(),
    };
    let lambda: Vec<f64> = lambda.to_dtype(DType::F64).and_then(|t| t.to_vec1()).map_err(about(batch))?;
    let step = || -> candle_core::Result<HashMap<String, Tensor>> {
        let out = model.forward_t(&input.to_dtype(dtype)?, true)?;
        let loss = dmm_train::joint_loss(&out, &b, &lambda, 0.0, &dev).map_err(|err| candle_core::Error::Msg(err.to_string()))?.loss;
        let grads = loss.backward()?;
        let mut dump = HashMap::new();
        for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
            if let Some(g) = grads.get(var.as_tensor()) {
                dump.insert(format!("grad.{name}"), g.to_dtype(DType::F64)?);
            }
        }
        dump.insert("attributes".into(), out.attributes.to_dtype(DType::F64)?);
        dump.insert("loss".into(), loss.to_dtype(DType::F64)?.reshape(1)?);
        Ok(dump)
    };
    let dump = step().map_err(|err| format!("forward and backward: {err}"))?;
    candle_core::safetensors::save(&dump, out).map_err(about(out))
}

/// An error about `what`, as one line.
fn about<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> String + '_ {
    move |err| format!("{what}: {err}")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
