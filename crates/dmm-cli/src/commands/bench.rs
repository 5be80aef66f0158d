//! `dmm bench`: the median time of one training step (forward in train mode, MSE on attributes and
//! landmarks, backward, SGD with momentum and weight decay) or one eval-mode forward of DMM-CNN at
//! a width, input size and batch, on random data. Forwards run on the model's
//! [`DmmModel::for_inference`] copy, as `dmm predict` and evaluation do. `bench/torch_bench.py` times the same network
//! and step in PyTorch; `cargo xtask bench` runs both and prints the ratios.

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Tensor};
use dmm_model::{DmmModel, ModelConfig};
use dmm_policy::SgdConfig;
use dmm_train::optim::Sgd;
use serde_json::json;

use crate::cli::{BenchArgs, BenchMode};

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let (h, w) = crate::commands::train::parse_size(&args.size)?.ok_or_else(|| anyhow::anyhow!("--size must be HxW"))?;
    let device = args.device.open()?;
    let config = ModelConfig { width: args.width, ..ModelConfig::paper() };
    let (model, varmap) = DmmModel::fresh(&config, &device)?;
    dmm_model::init::seeded(&varmap, 0)?;
    let b = args.batch;
    // Drawn on the CPU and copied: a GPU needs no random-number library for this.
    let cpu = candle_core::Device::Cpu;
    let x = Tensor::randn(0f32, 1., (b, 3, h, w), &cpu)?.to_device(&device)?;
    let t_attr = Tensor::randn(0f32, 1., (b, 40), &cpu)?.sign()?.to_device(&device)?;
    let t_lm = Tensor::rand(0f32, 1., (b, 2 * config.n_points), &cpu)?.to_device(&device)?;
    let mut sgd = Sgd::new(&varmap, SgdConfig::paper());
    // Forwards time the copy `dmm predict` and evaluation run, its 3×3 filters transformed once;
    // the time that takes is reported beside.
    let prepared = Instant::now();
    let inference = match args.mode {
        BenchMode::Forward => Some(model.for_inference()?),
        BenchMode::TrainStep => None,
    };
    let prepare_s = prepared.elapsed().as_secs_f64();
    let mut step = || -> anyhow::Result<()> {
        match args.mode {
            BenchMode::TrainStep => {
                let out = model.forward_t(&x, true)?;
                let lm = out.landmarks.ok_or_else(|| anyhow::anyhow!("DMM-CNN has a landmark head"))?;
                let loss = ((out.attributes - &t_attr)?.sqr()?.mean_all()? + (lm - &t_lm)?.sqr()?.mean_all()?)?;
                let grads = loss.backward()?;
                sgd.step(&grads, 1e-3, None)?;
            }
            BenchMode::Forward => {
                let out = inference.as_ref().unwrap_or(&model).forward_t(&x, false)?;
                out.attributes.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            }
        }
        Ok(())
    };
    step()?; // warm-up
    device.synchronize()?;
    let mut times = Vec::with_capacity(args.iters);
    for _ in 0..args.iters.max(1) {
        let t = Instant::now();
        step()?;
        // A GPU runs the step asynchronously: wait for it before reading the clock.
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let rate = b as f64 / median;
    let mode = match args.mode {
        BenchMode::TrainStep => "train-step",
        BenchMode::Forward => "forward",
    };
    let peak = peak_rss_mib();
    let text = if args.json {
        json!({"median_s": median, "images_per_s": rate, "peak_rss_mib": peak, "prepare_s": inference.as_ref().map(|_| prepare_s)}).to_string() + "\n"
    } else {
        let peak = peak.map(|p| format!(", peak RSS {p:.0} MiB")).unwrap_or_default();
        // Off the CPU the inference copy transforms nothing (the GPU path has no Winograd).
        let prepare = inference.as_ref().filter(|_| device.is_cpu()).map(|_| format!(" after {prepare_s:.3} s transforming the 3×3 filters")).unwrap_or_default();
        format!(
            "dmm {mode} width {} {h}x{w} batch {b} on {}: median {median:.3} s, {rate:.1} images/s{peak}{prepare} ({} iterations, {} threads)\n",
            args.width,
            args.device,
            times.len(),
            candle_core::utils::get_num_threads()
        )
    };
    crate::output::print(&text)
}

/// The process's peak resident set in MiB (`VmHWM` in `/proc/self/status`; Linux only), model and
/// all included, as `getrusage` reports it for the PyTorch script.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib / 1024.0)
}
