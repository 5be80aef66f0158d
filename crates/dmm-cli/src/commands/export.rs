//! `dmm export`: a trained model rewritten for shipping, its variables stored in half precision
//! (the file halves; `dmm` widens them back to f32 when it loads the model), its metadata and
//! thresholds unchanged. `cargo xtask bundle-model` makes the built-in model with it.

use std::process::ExitCode;

use anyhow::Context;
use candle_core::{DType, Device};
use dmm_model::checkpoint;

use crate::cli::ExportArgs;

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let ckpt = checkpoint::load(&args.model, &Device::Cpu).with_context(|| format!("loading {}", args.model.display()))?;
    checkpoint::save_as(&args.out, &ckpt.varmap, &ckpt.meta, DType::F16).with_context(|| format!("writing {}", args.out.display()))?;
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(f64::NAN);
    eprintln!("{} ({:.1} MB, f16) written from {} ({:.1} MB)", args.out.display(), size(&args.out), args.model.display(), size(&args.model));
    Ok(ExitCode::SUCCESS)
}
