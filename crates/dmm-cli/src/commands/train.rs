//! `dmm train` and `dmm eval`: resolve flags into a [`TrainConfig`] and call `dmm-train`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use dmm_data::{Dataset, Loader, LoaderConfig, Split, Transform, CELEBA_ATTRIBUTES};
use dmm_policy::Scheme;
use dmm_train::metrics::mean_of;
use dmm_train::{Outcome, RunDir, TrainConfig, TrainOptions};
use serde_json::json;

use crate::cli::{EvalArgs, TrainArgs, WeightingArg};

/// Parses `HxW` or `native`.
pub(crate) fn parse_size(s: &str) -> anyhow::Result<Option<(usize, usize)>> {
    if s == "native" {
        return Ok(None);
    }
    let (h, w) = s.split_once(['x', 'X']).context("--size must be HxW (e.g. 112x92) or native")?;
    Ok(Some((h.trim().parse().context("--size height")?, w.trim().parse().context("--size width")?)))
}

pub fn train(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = TrainConfig::preset(&args.preset, args.dataset.into(), args.root.clone())?;
    cfg.variant = args.variant.parse().map_err(anyhow::Error::msg)?;
    if let Some(b) = args.backbone {
        cfg.backbone = (b != "none").then_some(b);
    }
    cfg.landmarks = args.landmarks;
    cfg.init = args.init;
    if let Some(w) = args.weighting {
        cfg.weighting = Some(match w {
            WeightingArg::Uw => Scheme::Uw,
            WeightingArg::Dwa => Scheme::dwa(),
            WeightingArg::Aw => Scheme::aw(),
            WeightingArg::Dw => Scheme::Dw { rescale: args.rescale_dw.unwrap_or(cfg.rescale_dw) },
        });
    }
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(v) = args.$field { cfg.$field = v; })* };
    }
    set!(width, epochs, batch_size, eval_every, seed, rescale_dw);
    if let Some(c) = args.grad_clip {
        cfg.grad_clip = (c > 0.0).then_some(c);
    }
    if let Some(lr) = args.lr {
        cfg.sgd.lr = lr;
    }
    if let Some(s) = &args.size {
        cfg.input_size = parse_size(s)?;
    }
    if args.max_train.is_some() {
        cfg.max_train = args.max_train;
    }
    if args.max_eval.is_some() {
        cfg.max_eval = args.max_eval;
    }
    let run = RunDir::new(&args.out);
    let options = TrainOptions { resume: args.resume, quiet: args.quiet, stop_after: args.stop_after, offline: args.offline, device: args.device };
    let outcome = dmm_train::train(&cfg, &run, &options).with_context(|| format!("training into {}", args.out.display()))?;
    let text = match outcome {
        Outcome::Finished { best_accuracy, profile } => {
            let mut text = format!(
                "finished: best {} mean accuracy {best_accuracy:.4}; model {}, log {}\n",
                cfg.eval_split,
                run.best().display(),
                run.metrics().display()
            );
            if profile.iterations > 0 {
                text.push_str(&format!("{}\n", profile.summary()));
            }
            text
        }
        Outcome::Stopped { iteration } => format!("stopped after iteration {iteration}; continue with --resume\n"),
    };
    crate::output::print(&text)
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let device = args.device.open()?;
    let ckpt = dmm_model::checkpoint::load(&args.model, &device)?;
    let split: Split = args.split.parse().map_err(anyhow::Error::msg)?;
    let kind: dmm_data::DatasetKind = args.dataset.into();
    let mut ds = Dataset::open(kind, &args.root).with_context(|| format!("reading {}", args.root.display()))?;
    ds.retain_present(false)?;
    if let Some(csv) = &args.landmarks {
        ds.attach_landmarks(&dmm_data::LandmarkTable::read(csv)?);
    }
    let transform = Transform { size: ckpt.meta.input_size, normalization: ckpt.meta.normalization };
    let loader = Loader::new(&ds, split, LoaderConfig { transform, ..LoaderConfig::eval(args.batch_size) })?.without_cache();
    let tau: Vec<f64> = ckpt.meta.thresholds.iter().map(|&t| t as f64).collect();
    let ev = dmm_train::evaluate::evaluate(&ckpt.model, &loader, &tau, &device)?;
    let (acc, bal) = (ev.accuracies(), ev.balanced_accuracies());
    let majority = majority_accuracy(&ds, split);
    if args.json {
        let attributes: Vec<_> = CELEBA_ATTRIBUTES
            .iter()
            .enumerate()
            .map(|(j, name)| json!({"name": name, "accuracy": acc[j], "balanced_accuracy": bal[j], "threshold": tau[j]}))
            .collect();
        let out = json!({
            "model": args.model, "dataset": kind.as_str(), "split": split, "images": ev.n,
            "mean_accuracy": mean_of(&acc), "mean_accuracy_se": ev.mean_accuracy_se(), "mean_balanced_accuracy": mean_of(&bal),
            "nme": ev.nme(), "majority_accuracy": majority, "attributes": attributes,
        });
        return crate::output::print(&(serde_json::to_string_pretty(&out)? + "\n"));
    }
    let mut t = String::new();
    writeln!(t, "{} on {} {split} ({} images)", args.model.display(), kind.as_str(), ev.n)?;
    writeln!(t, "{:<20} {:>9} {:>9} {:>9}", "attribute", "accuracy", "balanced", "τ")?;
    for (j, name) in CELEBA_ATTRIBUTES.iter().enumerate() {
        writeln!(t, "{name:<20} {:>9.4} {:>9.4} {:>9.4}", acc[j], bal[j], tau[j])?;
    }
    writeln!(t, "{:<20} {:>9.4} {:>9.4}", "mean", mean_of(&acc), mean_of(&bal))?;
    if let Some(se) = ev.mean_accuracy_se() {
        writeln!(t, "{:<20} {se:>9.4}   (standard error of the mean accuracy over images)", "± 1 SE")?;
    }
    if let Some(m) = majority {
        writeln!(t, "{:<20} {m:>9.4}   (always the training set's majority label)", "majority baseline")?;
    }
    if let Some(nme) = ev.nme() {
        writeln!(t, "landmark NME {nme:.4}")?;
    }
    crate::output::print(&t)
}

/// Mean accuracy on `split` of always predicting each attribute's majority label in the training
/// split (`None` when the dataset has no training images on disk).
fn majority_accuracy(ds: &Dataset, split: Split) -> Option<f64> {
    ds.majority_accuracies(split).map(|m| mean_of(&m))
}
