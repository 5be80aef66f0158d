//! `dmm forward`: one eval-mode forward pass on a tensor file, for parity checks.

use std::process::ExitCode;

use anyhow::Context;
use candle_core::Tensor;
use dmm_model::checkpoint::{self, read_meta};
use dmm_model::weights::{load_trunk, read_safetensors};
use dmm_model::{DmmModel, ModelConfig, Variant, WeightSource};

use crate::cli::ForwardArgs;

pub fn run(args: ForwardArgs) -> anyhow::Result<ExitCode> {
    let device = args.device.open()?;
    let source: WeightSource = args.weights.parse()?;
    let path = source.resolve(args.offline, None).with_context(|| format!("finding the weights {source}"))?;
    let input = read_safetensors(&args.input, &device)?
        .remove("input")
        .with_context(|| format!("{}: no tensor named `input`", args.input.display()))?;
    let (_, c, _, _) = input.dims4().with_context(|| format!("{}: `input` must be [N, 3, H, W]", args.input.display()))?;
    anyhow::ensure!(c == 3, "{}: `input` has {c} channels, expected 3", args.input.display());
    let input = input.to_dtype(candle_core::DType::F32)?;

    let mut outputs: Vec<(String, Tensor)> = Vec::new();
    if read_meta(&path)?.is_some() {
        let ckpt = checkpoint::load(&path, &device)?;
        if let Some(w) = args.width {
            anyhow::ensure!(w == ckpt.meta.model.width, "--width {w} contradicts the checkpoint's width {}", ckpt.meta.model.width);
        }
        let features = ckpt.model.trunk().forward_t(&input, false)?;
        let out = ckpt.model.heads(&features, false)?;
        outputs.push(("trunk".into(), features));
        outputs.push(("attributes".into(), out.attributes));
        if let Some(l) = out.landmarks {
            outputs.push(("landmarks".into(), l));
        }
    } else {
        let width = args.width.context("--width is needed with plain trunk weights (64 for ResNet-50)")?;
        let cfg = ModelConfig { variant: Variant::Baseline, width, ..ModelConfig::paper() };
        let (model, varmap) = DmmModel::fresh(&cfg, &device)?;
        let report = load_trunk(&varmap, &path)?;
        if !report.unexpected.is_empty() {
            eprintln!("note: {} tensors in {} are not part of the trunk and were skipped", report.unexpected.len(), path.display());
        }
        outputs.push(("trunk".into(), model.trunk().forward_t(&input, false)?));
    }
    checkpoint::write_atomic(&args.output, &outputs, None)?;
    let shapes: Vec<String> = outputs.iter().map(|(k, t)| format!("{k} {:?}", t.dims())).collect();
    crate::output::print(&format!("wrote {}: {}\n", args.output.display(), shapes.join(", ")))
}
