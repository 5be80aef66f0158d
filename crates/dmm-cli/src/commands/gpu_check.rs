//! `dmm gpu-check`: the checks a CUDA build must pass on a GPU before its numbers are trusted.
//! Every custom op (convolutions of each geometry the trunk uses, the eval-mode folded batch norm,
//! linear layers, training-mode batch norm with and without the fused ReLU, add + ReLU, the stem
//! max-pool and SPP) runs on the CPU and on `--device` from the same f64 inputs; outputs and every
//! gradient must agree. Each op's gradients on the device are also checked against central finite
//! differences along a random direction. Then a width-8 DMM-CNN (f32) runs an eval forward and one
//! training step on both, the step also in f64 on the CPU as the reference for both, and the trunk
//! and full model run against the PyTorch fixtures.
//!
//! With `--device cpu` the CPU is compared with itself (differences are zero), which still runs
//! the finite-difference and fixture checks: that is how the harness itself is tested without a
//! GPU. Exits 1 if any check fails.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use dmm_model::norm::BatchNorm2d;
use dmm_model::weights::{load_trunk, read_safetensors};
use dmm_model::{conv, linear, pool, trunk, DmmModel, ModelConfig, Variant};
use dmm_policy::SgdConfig;
use dmm_train::optim::Sgd;
use serde_json::json;

use crate::cli::GpuCheckArgs;

/// One line of the report.
struct Check {
    name: String,
    /// Relative error (see each check), `None` when skipped.
    error: Option<f64>,
    tolerance: f64,
    note: String,
}

impl Check {
    fn passed(&self) -> bool {
        self.error.is_none_or(|e| e <= self.tolerance)
    }
}

/// The op of a case, applied to its inputs.
type OpFn = Box<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>>;

/// An op under test: inputs of these shapes (all differentiable unless `forward_only`).
struct OpCase {
    name: &'static str,
    shapes: Vec<Vec<usize>>,
    forward_only: bool,
    f: OpFn,
}

fn case(name: &'static str, shapes: &[&[usize]], f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor> + 'static) -> OpCase {
    OpCase { name, shapes: shapes.iter().map(|s| s.to_vec()).collect(), forward_only: false, f: Box::new(f) }
}

/// A batch norm layer over `x`'s channels whose γ and β are the given tensors.
fn batch_norm(gamma: &Tensor, beta: &Tensor) -> candle_core::Result<BatchNorm2d> {
    let c = gamma.dim(0)?;
    let (dev, dtype) = (gamma.device(), gamma.dtype());
    let tensors = HashMap::from([
        ("weight".to_string(), gamma.clone()),
        ("bias".to_string(), beta.clone()),
        ("running_mean".to_string(), Tensor::zeros(c, dtype, dev)?),
        ("running_var".to_string(), Tensor::ones(c, dtype, dev)?),
    ]);
    BatchNorm2d::new(c, VarBuilder::from_tensors(tensors, dtype, dev))
}

fn op_cases() -> Vec<OpCase> {
    let mut cases = vec![
        case("conv 3×3 s1 p1", &[&[3, 5, 9, 8], &[7, 5, 3, 3]], |t| conv::conv2d(&t[0], &t[1], 1, 1)),
        case("conv 3×3 s2 p1", &[&[2, 4, 11, 10], &[6, 4, 3, 3]], |t| conv::conv2d(&t[0], &t[1], 2, 1)),
        case("conv 7×7 s2 p3 (stem)", &[&[2, 3, 23, 19], &[4, 3, 7, 7]], |t| conv::conv2d(&t[0], &t[1], 2, 3)),
        case("conv 1×1", &[&[2, 6, 7, 5], &[5, 6, 1, 1]], |t| conv::conv2d(&t[0], &t[1], 1, 0)),
        case("conv 1×1 s2 (shortcut)", &[&[2, 6, 9, 7], &[5, 6, 1, 1]], |t| conv::conv2d(&t[0], &t[1], 2, 0)),
        case("linear + bias", &[&[3, 10], &[6, 10], &[6]], |t| linear::forward(&candle_nn::Linear::new(t[1].clone(), Some(t[2].clone())), &t[0])),
        case("batch norm (train)", &[&[3, 4, 5, 6], &[4], &[4]], |t| batch_norm(&t[1], &t[2])?.forward_t(&t[0], true)),
        case("batch norm + ReLU (train)", &[&[3, 4, 5, 6], &[4], &[4]], |t| batch_norm(&t[1], &t[2])?.forward_relu_t(&t[0], true)),
        case("add + ReLU", &[&[2, 3, 5, 4], &[2, 3, 5, 4]], |t| trunk::add_relu(&t[0], &t[1])),
        case("max-pool 3×3 s2 p1 (stem)", &[&[2, 3, 11, 9]], |t| pool::max_pool2d(&t[0], 3, 2, 1)),
        case("SPP, 3 levels", &[&[2, 3, 7, 5]], |t| pool::spp(&t[0], 3)),
    ];
    cases.push(OpCase {
        name: "conv + folded batch norm + ReLU (eval)",
        shapes: vec![vec![2, 5, 8, 7], vec![6, 5, 3, 3]],
        forward_only: true,
        f: Box::new(|t| {
            let scale = vec![0.5, -1.0, 2.0, 1.5, 0.25, -0.75];
            let shift = vec![0.1, 0.2, -0.3, 0.0, 0.5, -0.1];
            conv::conv2d_affine(&t[0], &t[1], 1, 1, scale, shift, true)
        }),
    });
    cases
}

/// `a` and `b` on the CPU in f64, checked to have one shape.
fn on_host_f64(a: &Tensor, b: &Tensor) -> anyhow::Result<(Tensor, Tensor)> {
    let (a, b) = (a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?, b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?);
    anyhow::ensure!(a.dims() == b.dims(), "shapes differ: {:?} and {:?}", a.dims(), b.dims());
    Ok((a, b))
}

/// `max |a − b| / max |b|` over all elements (0 when both are 0).
fn max_rel(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let (a, b) = on_host_f64(a, b)?;
    let diff = (&a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    Ok(if scale == 0.0 { diff } else { diff / scale })
}

/// `‖a − b‖ / ‖b‖`, the measure of the PyTorch parity tests.
fn norm_rel(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let (a, b) = on_host_f64(a, b)?;
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if norm == 0.0 { diff } else { diff / norm })
}

/// `sum(f(inputs) · r)` and, unless forward only, its gradients, on `dev`.
fn run_case(c: &OpCase, inputs: &[Tensor], r: &Tensor, dev: &Device) -> anyhow::Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&t.to_device(dev)?)).collect::<candle_core::Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = (c.f)(&tensors)?;
    if c.forward_only {
        return Ok((out, Vec::new()));
    }
    let grads = (&out * r.to_device(dev)?)?.sum_all()?.backward()?;
    let grads = tensors.iter().map(|t| grads.get(t).cloned().context("no gradient reached an input")).collect::<anyhow::Result<_>>()?;
    Ok((out, grads))
}

/// Device against CPU, output and gradients, and the device's gradients against central finite
/// differences along a random direction: `|Δ − ⟨g, d⟩| / (1 + |Δ|)`.
fn op_checks(dev: &Device, checks: &mut Vec<Check>) -> anyhow::Result<()> {
    for c in op_cases() {
        let inputs: Vec<Tensor> = c.shapes.iter().map(|s| Tensor::randn(0f64, 1., s.as_slice(), &Device::Cpu)).collect::<candle_core::Result<_>>()?;
        let probe = (c.f)(&inputs)?;
        let r = Tensor::randn(0f64, 1., probe.shape(), &Device::Cpu)?;
        let (out_cpu, g_cpu) = run_case(&c, &inputs, &r, &Device::Cpu)?;
        let (out_dev, g_dev) = run_case(&c, &inputs, &r, dev)?;
        let mut worst = max_rel(&out_dev, &out_cpu)?;
        for (a, b) in g_dev.iter().zip(&g_cpu) {
            worst = worst.max(max_rel(a, b)?);
        }
        let what = if c.forward_only { "output" } else { "output and gradients" };
        checks.push(Check { name: format!("{}: device = CPU", c.name), error: Some(worst), tolerance: 1e-9, note: format!("f64, {what}, max relative difference") });
        if c.forward_only {
            continue;
        }
        let dirs: Vec<Tensor> = inputs.iter().map(|t| Tensor::randn(0f64, 1., t.shape(), &Device::Cpu)).collect::<candle_core::Result<_>>()?;
        let mut analytic = 0f64;
        for (g, d) in g_dev.iter().zip(&dirs) {
            analytic += (g.to_device(&Device::Cpu)? * d)?.sum_all()?.to_scalar::<f64>()?;
        }
        let eps = 1e-6;
        let objective = |sign: f64| -> anyhow::Result<f64> {
            let moved: Vec<Tensor> = inputs.iter().zip(&dirs).map(|(x, d)| (x + (d * (sign * eps))?)?.to_device(dev)).collect::<candle_core::Result<_>>()?;
            Ok(((c.f)(&moved)? * r.to_device(dev)?)?.sum_all()?.to_scalar::<f64>()?)
        };
        let fd = (objective(1.0)? - objective(-1.0)?) / (2.0 * eps);
        checks.push(Check {
            name: format!("{}: gradient = finite difference", c.name),
            error: Some((fd - analytic).abs() / (1.0 + fd.abs())),
            tolerance: 1e-6,
            note: "f64 on the device, central difference along a random direction".into(),
        });
    }
    Ok(())
}

/// A seeded width-8 DMM-CNN on `dev` in `dtype`: the same values on every device and in every
/// dtype, since they are drawn in f32 on the CPU and converted.
fn model_on(dev: &Device, dtype: DType) -> anyhow::Result<(DmmModel, VarMap)> {
    let cfg = ModelConfig { variant: Variant::DmmCnn, width: 8, n_points: 68, ..ModelConfig::paper() };
    let (_, seeded) = DmmModel::fresh(&cfg, &Device::Cpu)?;
    dmm_model::init::seeded(&seeded, 7)?;
    Ok(DmmModel::from_copy(&cfg, &seeded, dtype, dev)?)
}

/// What one network computes from the check's batch: eval attributes and landmarks, the
/// training loss, and what one SGD step changed in each variable (sorted by name).
struct StepResult {
    attributes: Tensor,
    landmarks: Tensor,
    loss: Tensor,
    steps: Vec<(String, Tensor)>,
}

fn step_result(dev: &Device, dtype: DType, x: &Tensor, t_attr: &Tensor, t_lm: &Tensor) -> anyhow::Result<StepResult> {
    let (model, varmap) = model_on(dev, dtype)?;
    let on = |t: &Tensor| t.to_dtype(dtype)?.to_device(dev);
    let eval = model.forward_t(&on(x)?, false)?;
    let out = model.forward_t(&on(x)?, true)?;
    let lm = out.landmarks.context("DMM-CNN has a landmark head")?;
    let loss = ((out.attributes - on(t_attr)?)?.sqr()?.mean_all()? + (lm - on(t_lm)?)?.sqr()?.mean_all()?)?;
    let grads = loss.backward()?;
    // Copies, not views: the step writes the variables in place.
    let snapshot = || -> candle_core::Result<Vec<(String, Tensor)>> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut v = data.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?))).collect::<candle_core::Result<Vec<_>>>()?;
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    };
    let before = snapshot()?;
    Sgd::new(&varmap, SgdConfig::paper()).step(&grads, 0.01, None)?;
    // What the step changed, which the gradients decide.
    let steps = snapshot()?.into_iter().zip(before).map(|((name, after), (_, before))| Ok((name, (after - before)?))).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(StepResult { attributes: eval.attributes, landmarks: eval.landmarks.context("DMM-CNN has a landmark head")?, loss, steps })
}

/// Eval forward and one training step (forward, MSE, backward, SGD with momentum) of the same
/// network on the CPU and the device in f32, and on the CPU in f64.
///
/// The forward and the loss are compared as `‖device − CPU‖ / ‖CPU‖`. The step is compared per
/// variable with the f64 one, against the CPU f32 path's own distance from it: some updates are
/// rounding noise in f32 whatever the device. A batch-norm bias shifts every position of a
/// channel, which the next train-mode batch norm removes except where a ReLU or max-pool in
/// between clips it, so its true gradient is nearly zero and its f32 value is a sum of
/// cancelling terms (on the CPU alone, f32 is 3e-2 from f64 on `bn1.bias`).
fn model_checks(dev: &Device, checks: &mut Vec<Check>) -> anyhow::Result<()> {
    let x = Tensor::randn(0f32, 1., (4, 3, 96, 80), &Device::Cpu)?;
    let t_attr = Tensor::randn(0f32, 1., (4, 40), &Device::Cpu)?.sign()?;
    let t_lm = Tensor::rand(0f32, 1., (4, 136), &Device::Cpu)?;
    let cpu = step_result(&Device::Cpu, DType::F32, &x, &t_attr, &t_lm)?;
    let on_dev = step_result(dev, DType::F32, &x, &t_attr, &t_lm)?;
    let exact = step_result(&Device::Cpu, DType::F64, &x, &t_attr, &t_lm)?;
    let f32_note = |what: &str| format!("f32, width 8, 4×3×96×80, {what}, ‖Δ‖/‖CPU‖");
    let forward = norm_rel(&on_dev.attributes, &cpu.attributes)?.max(norm_rel(&on_dev.landmarks, &cpu.landmarks)?);
    checks.push(Check { name: "DMM-CNN eval forward: device = CPU".into(), error: Some(forward), tolerance: 1e-4, note: f32_note("attributes and landmarks") });
    checks.push(Check { name: "DMM-CNN training loss: device = CPU".into(), error: Some(norm_rel(&on_dev.loss, &cpu.loss)?), tolerance: 1e-4, note: f32_note("MSE after a train-mode forward") });
    // Each variable's error against f64, over the larger of 1e-4 and the CPU f32 path's error.
    let (mut worst, mut worst_note) = (0f64, String::new());
    for (((name, d), (_, c)), (_, e)) in on_dev.steps.iter().zip(&cpu.steps).zip(&exact.steps) {
        let (dev_err, cpu_err) = (norm_rel(d, e)?, norm_rel(c, e)?);
        let ratio = dev_err / cpu_err.max(1e-4);
        if ratio > worst {
            worst = ratio;
            worst_note = format!("worst {name}: device {dev_err:.1e}, CPU {cpu_err:.1e}");
        }
    }
    checks.push(Check {
        name: "DMM-CNN one SGD step: device ≈ CPU, against f64".into(),
        error: Some(worst),
        tolerance: 10.0,
        note: format!("f32, width 8, 4×3×96×80, each variable's update against f64: the device's error over max(1e-4, the CPU f32 error); {worst_note}"),
    });
    Ok(())
}

/// The trunk and the full model on the device against PyTorch's outputs (the fixtures of
/// `crates/dmm-model/tests/fixtures`, width 8, 218×178).
fn fixture_checks(dev: &Device, dir: &Path, checks: &mut Vec<Check>) -> anyhow::Result<()> {
    let (io_path, weights) = (dir.join("io_w8.safetensors"), dir.join("dmm_w8.safetensors"));
    if !io_path.exists() || !weights.exists() {
        checks.push(Check { name: "PyTorch fixtures".into(), error: None, tolerance: 0.0, note: format!("skipped: no fixtures in {}", dir.display()) });
        return Ok(());
    }
    let io = read_safetensors(&io_path, dev)?;
    let get = |k: &str| io.get(k).with_context(|| format!("{}: no tensor {k}", io_path.display()));
    let cfg = ModelConfig { variant: Variant::DmmCnn, width: 8, n_points: 68, ..ModelConfig::paper() };
    let (model, varmap) = DmmModel::fresh(&cfg, dev)?;
    load_trunk(&varmap, &weights)?;
    let note = "f32, width 8, 218×178, ‖Δ‖/‖PyTorch‖".to_string();
    let e = norm_rel(&model.trunk().forward_t(get("input")?, false)?, get("trunk_eval")?)?;
    checks.push(Check { name: "trunk eval on the device = PyTorch".into(), error: Some(e), tolerance: 1e-4, note: note.clone() });
    let e = norm_rel(&model.trunk().forward_t(get("input")?, true)?, get("trunk_train")?)?;
    checks.push(Check { name: "trunk train mode on the device = PyTorch".into(), error: Some(e), tolerance: 1e-4, note: note.clone() });
    let tensors = read_safetensors(&weights, dev)?;
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        let t = tensors.get(name).with_context(|| format!("{}: no tensor {name}", weights.display()))?;
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    let out = model.forward_t(get("input")?, false)?;
    let e = norm_rel(&out.attributes, get("attributes_eval")?)?.max(norm_rel(&out.landmarks.context("DMM-CNN has a landmark head")?, get("landmarks_eval")?)?);
    checks.push(Check { name: "DMM-CNN eval on the device = PyTorch".into(), error: Some(e), tolerance: 1e-4, note: note + ", attributes and landmarks" });
    Ok(())
}

pub fn run(args: GpuCheckArgs) -> anyhow::Result<ExitCode> {
    let dev = args.device.open()?;
    let fixtures = args.fixtures;
    let mut checks = Vec::new();
    op_checks(&dev, &mut checks).context("op checks")?;
    model_checks(&dev, &mut checks).context("model checks")?;
    fixture_checks(&dev, &fixtures, &mut checks).context("PyTorch fixture checks")?;
    let failed = checks.iter().filter(|c| !c.passed()).count();
    let text = if args.json {
        let rows: Vec<_> = checks
            .iter()
            .map(|c| json!({"check": c.name, "error": c.error, "tolerance": c.tolerance, "passed": c.passed(), "note": c.note}))
            .collect();
        serde_json::to_string_pretty(&json!({"device": args.device.to_string(), "checks": rows, "failed": failed}))? + "\n"
    } else {
        let mut t = format!("dmm gpu-check on {}\n{:<58} {:>10} {:>9}  {}\n", args.device, "check", "error", "tolerance", "result");
        for c in &checks {
            let (err, verdict) = match c.error {
                Some(e) => (format!("{e:.2e}"), if c.passed() { "ok" } else { "FAILED" }),
                None => ("-".into(), "skipped"),
            };
            t += &format!("{:<58} {err:>10} {:>9.0e}  {verdict}  ({})\n", c.name, c.tolerance, c.note);
        }
        t += &format!("{} checks, {failed} failed\n", checks.len());
        t
    };
    crate::output::print(&text)?;
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
