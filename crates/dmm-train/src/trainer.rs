//! Algorithm 1 of the paper: SGD on the joint loss (Eq. 3), and every P iterations a pass over the
//! whole evaluation set that updates the thresholds (Eq. 6), the loss weights (Eq. 4 or the chosen
//! scheme) and the learning-rate schedule, logs a record, and checkpoints.
//!
//! Resuming: the checkpoint written after each evaluation holds the model, the optimizer buffers
//! and [`TrainState`]; the loader's order and flips depend only on `(seed, epoch, sample)`, so a
//! resumed run replays exactly the batches an uninterrupted run would, and ends with the same
//! weights (tested on the smoke preset).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use dmm_data::{Dataset, Loader, LoaderConfig, Split, Transform, N_ATTRS};
use dmm_model::checkpoint::{self, CheckpointMeta};
use dmm_model::weights::load_trunk;
use dmm_model::{DmmModel, ModelConfig};
use dmm_policy::{AdaptiveThresholds, Plateau, WeightScheme, Weighting};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::TrainConfig;
use crate::evaluate::{evaluate, images};
use crate::metrics::{mean_of, Evaluation, HeadHealth};
use crate::optim::Sgd;
use crate::run::{append_line, truncate_records, write_atomic, RunDir};
use crate::{Error, Result};

/// Metadata key of the training state in `last.safetensors`.
const STATE_KEY: &str = "dmm_train";

/// Everything besides weights and optimizer buffers that a resumed run needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// The next iteration to run (0-based).
    pub iteration: u64,
    /// Evaluations done so far (t of Algorithm 1).
    pub evaluations: u64,
    /// Loss weights and their scheme's state.
    pub weighting: Weighting,
    /// Thresholds τ.
    pub thresholds: AdaptiveThresholds,
    /// The learning-rate schedule.
    pub plateau: Plateau,
    /// Best evaluation mean accuracy so far.
    pub best_accuracy: Option<f64>,
    /// Sum and count of training joint losses since the last evaluation (for the next record).
    pub train_loss_sum: f64,
    /// Batches in `train_loss_sum`.
    pub train_batches: u64,
    /// True once the final evaluation is written.
    pub finished: bool,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Iterations done when the evaluation ran.
    pub iteration: u64,
    /// 1-based epoch of that iteration (l of Eq. 6).
    pub epoch: u64,
    /// Learning rate after the schedule's update.
    pub lr: f64,
    /// Mean joint training loss since the previous evaluation (`None` at iteration 0).
    pub train_loss: Option<f64>,
    /// The split evaluated.
    pub split: Split,
    /// Images evaluated (V).
    pub n_eval: u64,
    /// Mean over attributes of the per-attribute MSE.
    pub loss: f64,
    /// Per-attribute MSE (Eq. 2), CelebA order.
    pub attribute_losses: Vec<f64>,
    /// Landmark MSE (Eq. 1), when the set has landmarks and the variant predicts them.
    pub landmark_loss: Option<f64>,
    /// Landmark NME (inter-ocular).
    pub nme: Option<f64>,
    /// Mean accuracy with the thresholds `tau_used`.
    pub mean_accuracy: f64,
    /// Mean balanced accuracy.
    pub mean_balanced_accuracy: f64,
    /// Per-attribute accuracy.
    pub accuracies: Vec<f64>,
    /// Per-attribute balanced accuracy.
    pub balanced_accuracies: Vec<f64>,
    /// Thresholds the accuracies were measured with.
    pub tau_used: Vec<f64>,
    /// λ after this evaluation's update (in force until the next).
    pub lambda: Vec<f64>,
    /// τ after this evaluation's update (in force until the next).
    pub tau: Vec<f64>,
    /// Whether this is the final evaluation of the run.
    pub last: bool,
    /// Per-attribute standard deviation of the scores across the evaluated images.
    #[serde(default)]
    pub output_spread: Vec<f64>,
    /// Per head: the spread of its outputs, its dead hidden units, and whether it has collapsed.
    #[serde(default)]
    pub heads: Vec<HeadHealth>,
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Training finished (now or in an earlier call); the best evaluation mean accuracy.
    Finished {
        /// Best evaluation mean accuracy.
        best_accuracy: f64,
        /// Where this call's wall time went (zero when it had nothing left to train).
        profile: Profile,
    },
    /// Stopped after the checkpoint at this iteration because `stop_after` was reached.
    Stopped {
        /// Iterations done.
        iteration: u64,
    },
}

/// Where the wall time of one [`train`] call went, in seconds. On a GPU the kernels run
/// asynchronously: a phase is charged up to the next point that waits for results.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// Decoding and resizing the training and evaluation images into the loaders' caches before
    /// the first iteration ([`Loader::warm`]; nothing where a split does not fit the cache).
    #[serde(default)]
    pub decode: f64,
    /// Waiting for the loader's next training batch (decoding runs ahead on its own thread when
    /// the images are not cached).
    pub loader: f64,
    /// Forward pass and joint loss (Eq. 3), up to reading the loss value.
    pub forward: f64,
    /// Backward pass.
    pub backward: f64,
    /// SGD step (weight decay, momentum, clipping) and the weighting scheme's bookkeeping.
    pub update: f64,
    /// Evaluations, their loader included (and AW's per-iteration validation batches).
    pub evaluation: f64,
    /// Writing metrics.jsonl and the checkpoints.
    pub checkpoint: f64,
    /// The whole call, setup included.
    pub total: f64,
    /// Training iterations run in this call.
    pub iterations: u64,
    /// Training images run in this call.
    pub images: u64,
}

impl Profile {
    /// Training images per second over the whole call.
    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.total.max(1e-9)
    }

    /// One line: each phase's seconds and share of the total.
    pub fn summary(&self) -> String {
        let share = |s: f64| 100.0 * s / self.total.max(1e-9);
        let phases = [
            ("decode", self.decode),
            ("loader", self.loader),
            ("forward", self.forward),
            ("backward", self.backward),
            ("update", self.update),
            ("evaluation", self.evaluation),
            ("checkpoint", self.checkpoint),
        ];
        let other = self.total - phases.iter().map(|(_, s)| s).sum::<f64>();
        let parts: Vec<String> =
            phases.iter().chain([("other", other)].iter()).map(|(n, s)| format!("{n} {s:.1} s ({:.0}%)", share(*s))).collect();
        format!(
            "time: {:.1} s for {} iterations ({:.1} img/s): {}",
            self.total,
            self.iterations,
            self.images_per_second(),
            parts.join(", ")
        )
    }
}

/// Adds the time since `since` to `slot` and returns now.
fn charge(slot: &mut f64, since: Instant) -> Instant {
    let now = Instant::now();
    *slot += (now - since).as_secs_f64();
    now
}

/// Options that do not change the result.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue the run in the directory instead of starting one.
    pub resume: bool,
    /// One log line per evaluation instead of a progress bar.
    pub quiet: bool,
    /// Stop after the first checkpoint at or past this iteration (as an interruption would).
    pub stop_after: Option<u64>,
    /// Hugging Face cache only, for hf:// backbones.
    pub offline: bool,
    /// Where the network runs. Results agree across devices to rounding, not bit for bit.
    pub device: dmm_model::DeviceSpec,
}

/// Trains per `config` in `run`; see the module docs.
pub fn train(config: &TrainConfig, run: &RunDir, options: &TrainOptions) -> Result<Outcome> {
    config.validate()?;
    let call_started = Instant::now();
    let mut profile = Profile::default();
    let device = options.device.open()?;
    let say = |msg: String| eprintln!("{msg}");
    prepare_run_dir(config, run, options)?;

    let mut dataset = Dataset::open(config.dataset, &config.root)?;
    if let Some(csv) = &config.landmarks {
        let table = dmm_data::LandmarkTable::read(csv)?;
        let n = dataset.attach_landmarks(&table);
        say(format!("landmarks for {n} of {} listed images from {}", dataset.samples.len(), csv.display()));
    }
    let presence = dataset.retain_present(false)?;
    let n_points = dataset.n_points.unwrap_or(68);
    let has_landmarks = dataset.samples.iter().any(|s| s.landmarks.is_some());
    if !presence.missing.is_empty() {
        say(format!("note: {} listed images are not on disk and are skipped", presence.missing.len()));
    }
    if config.variant.uses_landmarks() && !has_landmarks {
        say(format!(
            "note: {} has no landmarks.csv; the landmark head of {} is not trained (run `dmm landmarks`)",
            config.root.display(),
            config.variant
        ));
    }
    let transform = Transform { size: config.input_size, ..Default::default() };
    cap_split(&mut dataset, Split::Train, config.max_train);
    let train_loader = Loader::new(
        &dataset,
        Split::Train,
        LoaderConfig { transform, random_flip: has_landmarks_flippable(&dataset), ..LoaderConfig::train(config.batch_size, config.seed) },
    )?;
    // The evaluation set is the eval split of the (already capped) data, capped at max_eval.
    let mut eval_set = dataset.clone();
    cap_split(&mut eval_set, config.eval_split, config.max_eval);
    let eval_loader = Loader::new(&eval_set, config.eval_split, LoaderConfig { transform, ..LoaderConfig::eval(config.batch_size) })?;

    let model_config = ModelConfig { variant: config.variant, width: config.width, n_points, groups: Default::default() };
    let (model, varmap) = DmmModel::fresh(&model_config, &device)?;
    let mut sgd = Sgd::new(&varmap, config.sgd);
    let mut meta = CheckpointMeta::new(model_config.clone());
    meta.input_size = config.input_size;

    let per_epoch = train_loader.n_batches() as u64;
    let total = per_epoch * config.epochs as u64;
    let resuming = options.resume && run.last().exists();
    let mut reopened = None;
    let mut state = if resuming {
        let ckpt = checkpoint::load(&run.last(), &device)?;
        copy_vars(&ckpt.varmap, &varmap)?;
        sgd.load_state(&checkpoint::read_extra(&run.last(), &device)?)?;
        let json = checkpoint::read_metadata_entry(&run.last(), STATE_KEY)?
            .ok_or_else(|| Error::Run { path: run.last(), msg: "no training state: not a resume point".into() })?;
        let state: TrainState = serde_json::from_str(&json).map_err(|e| Error::Run { path: run.last(), msg: format!("bad training state: {e}") })?;
        truncate_records(&run.metrics(), state.iteration)?;
        if state.finished && state.iteration >= total {
            return Ok(Outcome::Finished { best_accuracy: state.best_accuracy.unwrap_or(0.0), profile });
        }
        if state.finished {
            reopened = Some(reopen_final_evaluation(config, run, state.iteration)?);
        }
        // More --epochs than the stored run: the same run, only longer (nothing else depends on
        // the epoch count), so config.json takes the new count.
        write_atomic(&run.config(), serde_json::to_string_pretty(config).expect("config serializes").as_bytes())?;
        say(format!("resuming {} at iteration {}", run.path.display(), state.iteration));
        state
    } else {
        dmm_model::init::seeded(&varmap, config.seed)?;
        if let Some(init) = &config.init {
            let ckpt = checkpoint::load(init, &device)?;
            copy_vars(&ckpt.varmap, &varmap)?;
        } else if let Some(backbone) = &config.backbone {
            let source: dmm_model::WeightSource = backbone.parse()?;
            let path = source.resolve(options.offline, None).map_err(|e| match backbone.as_str() {
                crate::config::MINI_BACKBONE => Error::Config(format!(
                    "{e}: preset mini starts from this bundled trunk; run from the repository root, or pass --backbone FILE (or none)"
                )),
                _ => e.into(),
            })?;
            let report = load_trunk(&varmap, &path)?;
            say(format!("loaded {} trunk tensors from {}", report.loaded, path.display()));
        }
        TrainState {
            iteration: 0,
            evaluations: 0,
            weighting: Weighting::new(config.scheme(), N_ATTRS),
            thresholds: AdaptiveThresholds::new(N_ATTRS, config.gamma),
            plateau: Plateau::new(config.sgd.lr, config.plateau_patience),
            best_accuracy: None,
            train_loss_sum: 0.0,
            train_batches: 0,
            finished: false,
        }
    };

    let t = Instant::now();
    warm(&[&train_loader, &eval_loader], options.quiet)?;
    charge(&mut profile.decode, t);
    let bar = progress(total, state.iteration, options.quiet);
    if let Some(train_loss) = reopened {
        // The final evaluation of the shorter run becomes the periodic one that a longer run makes
        // at this iteration: same weights, so the same numbers, but now it updates τ, λ and the
        // schedule. It replaces the final record (and counts once).
        state.finished = false;
        state.evaluations -= 1;
        let epoch = state.iteration / per_epoch + 1;
        let t = Instant::now();
        let mut record = evaluation_step(config, &model, &eval_loader, &mut state, epoch, false, &device)?;
        let t = charge(&mut profile.evaluation, t);
        record.train_loss = train_loss;
        finish_evaluation(config, run, &varmap, &sgd, &mut meta, &mut state, &record, &bar, options.quiet)?;
        charge(&mut profile.checkpoint, t);
    }
    let started = Instant::now();
    // The evaluation at the resume point is already in the log and in the state.
    let mut resumed_at = resuming.then_some(state.iteration);

    while state.iteration < total {
        let epoch = state.iteration / per_epoch;
        let first = (state.iteration % per_epoch) as usize;
        let mut batches = train_loader.epoch_from(epoch, first);
        loop {
            let t = Instant::now();
            let Some(batch) = batches.next() else { break };
            charge(&mut profile.loader, t);
            if state.iteration % config.eval_every as u64 == 0 && resumed_at.take() != Some(state.iteration) {
                let t = Instant::now();
                let record = evaluation_step(config, &model, &eval_loader, &mut state, epoch + 1, false, &device)?;
                let t = charge(&mut profile.evaluation, t);
                finish_evaluation(config, run, &varmap, &sgd, &mut meta, &mut state, &record, &bar, options.quiet)?;
                charge(&mut profile.checkpoint, t);
                if options.stop_after.is_some_and(|s| state.iteration >= s) {
                    bar.finish_and_clear();
                    return Ok(Outcome::Stopped { iteration: state.iteration });
                }
            }
            resumed_at = None;
            let batch = batch?;
            let loss = train_step(config, &model, &mut sgd, &mut state, &batch, &device, &mut profile)?;
            if state.weighting.needs_validation_batch() {
                let t = Instant::now();
                aw_batch(config, &model, &eval_loader, &mut state, &device)?;
                charge(&mut profile.evaluation, t);
            }
            profile.images += batch.len() as u64;
            profile.iterations += 1;
            state.iteration += 1;
            bar.inc(1);
            let rate = profile.images as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {loss:.4}  lr {:.1e}  {rate:.1} img/s", state.plateau.lr));
        }
        state.weighting.on_epoch_end();
    }
    let t = Instant::now();
    let record = evaluation_step(config, &model, &eval_loader, &mut state, config.epochs as u64, true, &device)?;
    let t = charge(&mut profile.evaluation, t);
    state.finished = true;
    finish_evaluation(config, run, &varmap, &sgd, &mut meta, &mut state, &record, &bar, options.quiet)?;
    charge(&mut profile.checkpoint, t);
    bar.finish_and_clear();
    profile.total = call_started.elapsed().as_secs_f64();
    write_atomic(&run.profile(), serde_json::to_string_pretty(&profile).expect("profile serializes").as_bytes())?;
    Ok(Outcome::Finished { best_accuracy: state.best_accuracy.unwrap_or(record.mean_accuracy), profile })
}

/// Random flips are safe unless landmarks have no known mirror map.
fn has_landmarks_flippable(ds: &Dataset) -> bool {
    ds.n_points.is_none_or(|n| dmm_data::pipeline::flip_permutation(n).is_some())
}

/// Keeps at most `cap` samples of `split` (the first in list order).
fn cap_split(ds: &mut Dataset, split: Split, cap: Option<usize>) {
    let Some(cap) = cap else { return };
    let mut kept = 0;
    ds.samples.retain(|s| {
        if s.split != split {
            return true;
        }
        kept += 1;
        kept <= cap
    });
}

fn copy_vars(from: &candle_nn::VarMap, to: &candle_nn::VarMap) -> Result<()> {
    let src = from.data().lock().expect("varmap lock");
    for (name, var) in to.data().lock().expect("varmap lock").iter() {
        let t = src.get(name).ok_or_else(|| Error::Config(format!("initial checkpoint lacks {name} (another variant or width?)")))?;
        if t.dims() != var.dims() {
            return Err(Error::Config(format!("initial checkpoint's {name} is {:?}, expected {:?}", t.dims(), var.dims())));
        }
        var.set(t.as_tensor())?;
    }
    Ok(())
}

/// Fills the caches of `loaders` before training, with a bar of its own: decoded beside the
/// training instead, the images take the cores the first epoch computes on.
fn warm(loaders: &[&Loader], quiet: bool) -> Result<()> {
    let left: usize = loaders.iter().filter(|l| l.caches()).map(|l| l.n_samples() - l.cached()).sum();
    if left == 0 {
        return Ok(());
    }
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(left as u64)
            .with_style(ProgressStyle::with_template("{bar:30} {pos}/{len} images decoded  {elapsed_precise} eta {eta}").expect("valid template"))
    };
    for loader in loaders {
        loader.warm(&|| bar.inc(1))?;
    }
    bar.finish_and_clear();
    Ok(())
}

fn progress(total: u64, done: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} it  {elapsed_precise} eta {eta}  {msg}").expect("valid template"),
    );
    bar.set_position(done);
    bar
}

/// The joint loss of Eq. 3 on one batch, and the per-attribute losses of Eq. 2 (`[40]`).
pub struct JointLoss {
    /// Σ_j λ_j·MSE_j + β·MSE_FLD, a scalar to differentiate.
    pub loss: Tensor,
    /// Per-attribute MSE over the batch (Eq. 2), `[40]`.
    pub per_attribute: Tensor,
}

/// Eq. 3: `Σ_j λ_j·L_j + β·L_FLD` with `L_j` the batch MSE of attribute j on ±1 targets (Eq. 2)
/// and `L_FLD` the mean over the images that have landmarks of ‖ŷ − y‖² (Eq. 1); images without
/// landmarks are masked out, and a batch without any has no landmark term.
pub fn joint_loss(out: &dmm_model::DmmOutput, batch: &dmm_data::Batch, lambda: &[f64], beta: f64, device: &Device) -> Result<JointLoss> {
    let b = batch.len();
    // The network's dtype (f32 in training; f64 in the parity checks).
    let dtype = out.attributes.dtype();
    let targets = Tensor::from_slice(&batch.labels, (b, N_ATTRS), device)?.to_dtype(dtype)?;
    let per_attribute = (&out.attributes - targets)?.sqr()?.mean(0)?; // [40], Eq. 2
    let mut loss = (&per_attribute * Tensor::from_slice(lambda, N_ATTRS, device)?.to_dtype(dtype)?)?.sum_all()?;
    let n_with = batch.landmark_mask.iter().filter(|&&m| m > 0.0).count();
    if let (Some(lm), true) = (&out.landmarks, n_with > 0) {
        if lm.dim(1)? == 2 * batch.n_points {
            let target = Tensor::from_slice(&batch.landmarks, (b, 2 * batch.n_points), device)?.to_dtype(dtype)?;
            let mask = Tensor::from_slice(&batch.landmark_mask, b, device)?.to_dtype(dtype)?;
            let per_image = (lm - target)?.sqr()?.sum(1)?; // ‖ŷ − y‖², Eq. 1
            let fld = ((per_image * mask)?.sum_all()? / n_with as f64)?;
            loss = (loss + (fld * beta)?)?;
        }
    }
    Ok(JointLoss { loss, per_attribute })
}

/// Forward, joint loss (Eq. 3), backward and an SGD step. Returns the joint loss.
fn train_step(
    config: &TrainConfig,
    model: &DmmModel,
    sgd: &mut Sgd,
    state: &mut TrainState,
    batch: &dmm_data::Batch,
    device: &Device,
    profile: &mut Profile,
) -> Result<f64> {
    let t = Instant::now();
    let out = model.forward_t(&images(batch, device)?, true)?;
    let JointLoss { loss, per_attribute } = joint_loss(&out, batch, state.weighting.weights(), config.beta, device)?;
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !value.is_finite() {
        return Err(Error::Config(format!(
            "the training loss became {value} at iteration {}; lower the learning rate",
            state.iteration
        )));
    }
    let t = charge(&mut profile.forward, t);
    let grads = loss.backward()?;
    let t = charge(&mut profile.backward, t);
    sgd.step(&grads, state.plateau.lr, config.grad_clip)?;
    let per_attr: Vec<f64> = per_attribute.to_dtype(DType::F64)?.to_vec1()?;
    state.weighting.on_train_batch(&per_attr);
    state.train_loss_sum += value;
    state.train_batches += 1;
    charge(&mut profile.update, t);
    Ok(value)
}

/// AW's per-iteration validation batch: `batch` images chosen by the iteration number.
fn aw_batch(config: &TrainConfig, model: &DmmModel, eval: &Loader, state: &mut TrainState, device: &Device) -> Result<()> {
    let dmm_policy::Scheme::Aw { batch, .. } = config.scheme() else { return Ok(()) };
    let mut rng = dmm_data::SplitMix64::new(config.seed ^ state.iteration.wrapping_mul(0x9E37_79B9));
    let n = eval.n_samples() as u64;
    let indices: Vec<usize> = (0..batch.min(eval.n_samples())).map(|_| rng.below(n) as usize).collect();
    let b = eval.batch_of(&indices)?;
    let out = model.forward_t(&images(&b, device)?, false)?;
    let targets = Tensor::from_slice(&b.labels, (b.len(), N_ATTRS), device)?;
    let losses: Vec<f64> = (out.attributes - targets)?.sqr()?.mean(0)?.to_dtype(DType::F64)?.to_vec1()?;
    state.weighting.on_validation_batch(&losses);
    Ok(())
}

/// Evaluates, then (unless `last`) updates τ (Eq. 6), λ and the schedule; returns the record.
fn evaluation_step(config: &TrainConfig, model: &DmmModel, eval_loader: &Loader, state: &mut TrainState, epoch: u64, last: bool, device: &Device) -> Result<Record> {
    let tau_used = state.thresholds.tau.clone();
    let ev: Evaluation = evaluate(model, eval_loader, &tau_used, device)?;
    let (losses, accuracies) = (ev.attribute_losses(), ev.accuracies());
    let mean_accuracy = mean_of(&accuracies);
    if !last {
        if config.variant.uses_adaptive_thresholds() {
            state.thresholds.update(&ev.fp, &ev.fn_, ev.n, epoch);
        }
        state.weighting.on_evaluation(&losses);
        // The schedule watches the validation error, not the loss: the loss moves by ±0.04
        // between evaluations with the weights held, as the batch norms' running averages follow
        // the last dozen batches, and that cut the lr by chance (docs/training.md, "The plateau
        // rule"); the accuracy moves by 0.0003 there.
        state.plateau.step(1.0 - mean_accuracy);
    }
    state.evaluations += 1;
    let balanced = ev.balanced_accuracies();
    let train_loss = (state.train_batches > 0).then(|| state.train_loss_sum / state.train_batches as f64);
    let mut heads = ev.head_health(&model.attribute_heads());
    if state.iteration == 0 {
        // Nothing has trained yet: an untrained network (running statistics still 0 and 1) may
        // give nearly the same scores to every image without anything having collapsed.
        heads.iter_mut().for_each(|h| h.collapsed = false);
    }
    state.train_loss_sum = 0.0;
    state.train_batches = 0;
    Ok(Record {
        iteration: state.iteration,
        epoch,
        lr: state.plateau.lr,
        train_loss,
        split: config.eval_split,
        n_eval: ev.n,
        loss: ev.mean_attribute_loss(),
        attribute_losses: losses,
        landmark_loss: ev.landmark_loss(),
        nme: ev.nme(),
        mean_accuracy,
        mean_balanced_accuracy: mean_of(&balanced),
        accuracies,
        balanced_accuracies: balanced,
        tau_used,
        lambda: state.weighting.weights().to_vec(),
        tau: state.thresholds.tau.clone(),
        last,
        output_spread: ev.output_spreads(),
        heads,
    })
}

/// Logs the record, keeps the best model, and writes the resume point.
#[allow(clippy::too_many_arguments)]
fn finish_evaluation(
    config: &TrainConfig,
    run: &RunDir,
    varmap: &candle_nn::VarMap,
    sgd: &Sgd,
    meta: &mut CheckpointMeta,
    state: &mut TrainState,
    record: &Record,
    bar: &ProgressBar,
    quiet: bool,
) -> Result<()> {
    let line = serde_json::to_string(record).expect("records serialize");
    append_line(&run.metrics(), &line)?;
    let improved = state.best_accuracy.is_none_or(|b| record.mean_accuracy > b);
    if improved {
        state.best_accuracy = Some(record.mean_accuracy);
        meta.thresholds = record.tau_used.iter().map(|&t| t as f32).collect();
        checkpoint::save(&run.best(), varmap, meta)?;
    }
    meta.thresholds = state.thresholds.tau.iter().map(|&t| t as f32).collect();
    let state_json = serde_json::to_string(state).expect("state serializes");
    checkpoint::save_with_extra(&run.last(), varmap, meta, sgd.state()?, HashMap::from([(STATE_KEY.to_string(), state_json)]))?;
    let msg = format!(
        "eval @ it {:>6} (epoch {}): {} loss {:.4}  mean acc {:.4}  balanced {:.4}{}{}",
        record.iteration,
        record.epoch,
        config.eval_split,
        record.loss,
        record.mean_accuracy,
        record.mean_balanced_accuracy,
        record.nme.map(|n| format!("  NME {n:.4}")).unwrap_or_default(),
        if improved { "  (best)" } else { "" }
    );
    let warning = collapse_warning(&record.heads);
    // A hidden bar (stderr is not a terminal) drops println, so log directly then.
    for line in std::iter::once(msg).chain(warning) {
        if quiet || bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    }
    Ok(())
}

/// One line naming the heads whose outputs no longer depend on the image, if any.
pub fn collapse_warning(heads: &[HeadHealth]) -> Option<String> {
    let collapsed: Vec<String> = heads
        .iter()
        .filter(|h| h.collapsed)
        .map(|h| {
            let worst = h.dead.iter().map(|(_, f)| *f).fold(0.0, f64::max);
            format!("{} (output spread {:.4}, {:.0}% of a hidden layer dead)", h.head, h.spread, 100.0 * worst)
        })
        .collect();
    (!collapsed.is_empty()).then(|| {
        format!(
            "warning: collapsed: the outputs of {} barely depend on the image, so it predicts the label priors; lower --lr or check the init",
            collapsed.join(", ")
        )
    })
}

/// Checks that a finished run ending at `end` can be extended, and drops its final record from
/// `metrics.jsonl`; returns that record's training loss (the reopened evaluation reports it).
fn reopen_final_evaluation(config: &TrainConfig, run: &RunDir, end: u64) -> Result<Option<f64>> {
    if !end.is_multiple_of(config.eval_every as u64) {
        return Err(Error::Run {
            path: run.path.clone(),
            msg: format!(
                "finished at iteration {end}, between evaluations (every {}): a longer run would not evaluate there, so it cannot be extended exactly; start a new run",
                config.eval_every
            ),
        });
    }
    let path = run.metrics();
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Io { path: path.clone(), cause: e })?;
    let last: Record = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .filter(|r: &Record| r.last && r.iteration == end)
        .ok_or_else(|| Error::Run { path: path.clone(), msg: format!("its last line is not the final evaluation at iteration {end}") })?;
    truncate_records(&path, end - 1)?;
    Ok(last.train_loss)
}

/// Creates the run directory and `config.json`, or checks that a resumed run has the same config
/// (`--epochs` may grow: the run continues past its old end).
fn prepare_run_dir(config: &TrainConfig, run: &RunDir, options: &TrainOptions) -> Result<()> {
    let config_json = serde_json::to_string_pretty(config).expect("config serializes");
    // Writes cut short by a kill leave their temporary files; this process owns the directory now.
    for file in [run.config(), run.last(), run.best(), run.metrics(), run.profile()] {
        dmm_data::fsutil::remove_stale_temporaries(&file);
    }
    if run.last().exists() {
        if !options.resume {
            return Err(Error::Run {
                path: run.path.clone(),
                msg: "already holds a run; pass --resume to continue it or choose another --out".into(),
            });
        }
        let stored = std::fs::read_to_string(run.config()).map_err(|e| Error::Io { path: run.config(), cause: e })?;
        let stored: TrainConfig = serde_json::from_str(&stored).map_err(|e| Error::Run { path: run.config(), msg: format!("unreadable: {e}") })?;
        if stored != (TrainConfig { epochs: stored.epochs, ..config.clone() }) {
            return Err(Error::Run {
                path: run.config(),
                msg: "differs from this command's configuration; resume with the same flags (only --epochs may grow)".into(),
            });
        }
        if config.epochs < stored.epochs {
            return Err(Error::Run {
                path: run.config(),
                msg: format!("the run has {} epochs; a resumed run cannot have fewer ({})", stored.epochs, config.epochs),
            });
        }
        return Ok(());
    }
    std::fs::create_dir_all(&run.path).map_err(|e| Error::Io { path: run.path.clone(), cause: e })?;
    // A fresh start: forget records of an earlier attempt that never reached a checkpoint.
    let _ = std::fs::remove_file(run.metrics());
    write_atomic(&run.config(), config_json.as_bytes())
}
