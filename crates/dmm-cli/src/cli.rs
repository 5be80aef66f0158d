//! The command-line surface of `dmm`: raw flags as the user typed them (clap derive). Resolving
//! them into paths, datasets and configs happens in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// `dmm --version`: the crate version and the commit it was built from (build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DMM_COMMIT"), ")");

/// DMM-CNN facial attribute classification: datasets, training, evaluation and prediction.
#[derive(Debug, Parser)]
#[command(name = "dmm", version = VERSION, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a variant (Algorithm 1) into a run directory.
    ///
    /// The run directory gets config.json, metrics.jsonl (one record per evaluation with λ and τ),
    /// last.safetensors (resume point) and model.safetensors (best model by evaluation mean
    /// accuracy). Ctrl-C loses at most the work since the last
    /// evaluation; --resume continues to the same result as an uninterrupted run.
    Train(Box<TrainArgs>),
    /// Compute dlib's 68 landmarks for images into the CSV that training reads.
    ///
    /// HOG detector with upsample 1, the largest face, into the landmark CSV that training reads (put it at DATASET_ROOT/landmarks.csv, or pass
    /// --landmarks to dmm train). Parallel, resumable (images already in the CSV or in
    /// FILE.csv.noface are skipped) and written atomically. Needs dmm built with --features dlib.
    Landmarks(LandmarksArgs),
    /// Evaluate a trained model on a split.
    ///
    /// Per-attribute and mean accuracy and balanced accuracy, with the model's adaptive thresholds,
    /// beside the always-majority baseline, and the landmark NME.
    Eval(EvalArgs),
    /// Predict the 40 attributes and the landmarks of face images.
    ///
    /// For each image: score, the model's threshold τ and yes/no per attribute, and the landmarks.
    /// Images are files or folders (searched for .jpg/.jpeg/.png), any size or colour mode, EXIF
    /// orientation respected. A table for people by default, JSON lines (--json) or CSV (--csv) for
    /// programs. An unreadable image is reported (name and reason) and skipped; the exit code is 1
    /// if any failed.
    Predict(PredictArgs),
    /// Rewrite a trained model in half precision, for shipping.
    ///
    /// Every variable is stored as f16 (half the file; dmm widens it back to f32 on load); the
    /// metadata and thresholds are unchanged.
    Export(ExportArgs),
    /// Time a training step or an eval forward of DMM-CNN.
    ///
    /// One training step (forward, loss, backward, SGD update) or one eval-mode forward on random
    /// data: the median seconds per call and images/s. `cargo xtask bench` runs
    /// the suite beside the PyTorch reference (bench/torch_bench.py).
    Bench(BenchArgs),
    /// Check a CUDA build on its GPU.
    ///
    /// Every custom op against the CPU path (f64, outputs and
    /// gradients) and against finite differences, a DMM-CNN eval forward and training step against
    /// the CPU, and the PyTorch fixtures. Prints one line per check; exits 1 if any fails.
    /// `scripts/gpu-check.sh` runs it with the throughput benchmarks.
    GpuCheck(GpuCheckArgs),
    /// Run the network on a tensor file (parity checks against PyTorch).
    ///
    /// Reads tensor `input`
    /// [N, 3, H, W] f32 and writes `trunk` [N, 32·W, h, w] — plus `attributes` [N, 40] and
    /// `landmarks` [N, 2T] when the weights are a full dmm checkpoint. Eval-mode batch norm.
    Forward(ForwardArgs),
    /// Inspect a dataset on disk.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Listed and present images per split, and each attribute's positive rate.
    ///
    /// Per split: images listed by the label files and images present on disk; per attribute:
    /// the positive rate over all listed images.
    Stats(StatsArgs),
    /// Decode every present image and report each unreadable one.
    ///
    /// One line per image that cannot be read (name and reason); exits non-zero if any image is unreadable. Use it after a
    /// download to find truncated or corrupt files.
    Check(CheckArgs),
    /// Convert LFWA's official .mat split into the text split every build reads.
    ///
    /// name.txt + label.txt + indices_train_test.mat become ROOT/lfwa_40attr_with_split.txt. Needs dmm built with --features
    /// mat (system HDF5) once; `cargo xtask download lfwa` runs it for you.
    TextSplit(TextSplitArgs),
}

#[derive(Debug, clap::Args)]
pub struct TextSplitArgs {
    /// LFWA root holding the official files.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
}

/// Which dataset layout a root holds.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DatasetArg {
    /// CelebA: list_attr_celeba.txt, list_eval_partition.txt, img_align_celeba/.
    Celeba,
    /// LFWA: lfwa_40attr_with_split.txt (or name.txt + label.txt + indices_train_test.mat), lfw/.
    Lfwa,
}

impl From<DatasetArg> for dmm_data::DatasetKind {
    fn from(d: DatasetArg) -> Self {
        match d {
            DatasetArg::Celeba => dmm_data::DatasetKind::CelebA,
            DatasetArg::Lfwa => dmm_data::DatasetKind::Lfwa,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Dataset layout of ROOT.
    #[arg(long, value_enum)]
    pub dataset: DatasetArg,
    /// Dataset root folder (e.g. data/celeba for the bundled sample).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Fail on the first listed image that is missing from disk.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Dataset layout of ROOT.
    #[arg(long, value_enum)]
    pub dataset: DatasetArg,
    /// Dataset root folder.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Also fail when a listed image is missing from disk.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// Trunk weights in torchvision/timm naming (a safetensors file or hf://owner/name[@rev][/file]),
    /// or a full dmm checkpoint.
    #[arg(long, value_name = "FILE")]
    pub weights: String,
    /// Trunk width of plain trunk weights (64 = ResNet-50); read from the metadata of a checkpoint.
    #[arg(long, value_name = "W")]
    pub width: Option<usize>,
    /// Safetensors file holding tensor `input`.
    #[arg(long, value_name = "IN")]
    pub input: PathBuf,
    /// Where to write the outputs (safetensors; written atomically).
    #[arg(long, value_name = "OUT")]
    pub output: PathBuf,
    /// Where to run: cpu, or cuda / cuda:N in a CUDA build of dmm (`cargo xtask cuda-build`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub device: dmm_model::DeviceSpec,
    /// Resolve hf:// weights from the local Hugging Face cache only, never the network.
    #[arg(long)]
    pub offline: bool,
}

/// The four loss-weighting schemes of the paper's Table 2.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WeightingArg {
    /// Uniform weights (λ = 1).
    Uw,
    /// Dynamic Weight Average (Liu et al. 2019), T = 2.
    Dwa,
    /// Adaptive Weighting (He et al. 2017, reconstructed), 10-image validation batch per iteration.
    Aw,
    /// The paper's dynamic weights (Eq. 4).
    Dw,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Dataset layout of ROOT.
    #[arg(long, value_enum)]
    pub dataset: DatasetArg,
    /// Dataset root folder.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Settings to start from: smoke (seconds), mini (the bundled sample, minutes), subset (a real
    /// CelebA subset on CPU, about an hour), paper (full data, width 64, batch 64, 15 epochs, GPU).
    #[arg(long, default_value = "mini", value_parser = ["smoke", "mini", "subset", "paper"])]
    pub preset: String,
    /// Which of Table 1's variants: baseline, dmm-fac, dmm-eq-fix, dmm-eq-at, dmm-dw-fix, dmm-spp, dmm-cnn.
    #[arg(long, default_value = "dmm-cnn")]
    pub variant: String,
    /// Run directory (created; must not hold another run unless --resume).
    #[arg(long, value_name = "RUN_DIR")]
    pub out: PathBuf,
    /// Landmark CSV to train the landmark head on (default: ROOT/landmarks.csv if present).
    #[arg(long, value_name = "FILE.csv")]
    pub landmarks: Option<PathBuf>,
    /// Trunk weights to start from: a safetensors file or hf://owner/name[@rev][/file]
    /// (torchvision/timm names, e.g. hf://timm/resnet50.a1_in1k at width 64; a dmm checkpoint's
    /// trunk also fits), or `none` for random initialisation. Preset mini starts from the
    /// bundled data/pretrained/celeba-baseline-w8.safetensors; the others from random.
    #[arg(long, value_name = "FILE|hf://…|none")]
    pub backbone: Option<String>,
    /// Start from a trained dmm checkpoint (fine-tuning, e.g. LFWA from CelebA).
    #[arg(long, value_name = "CKPT", conflicts_with = "backbone")]
    pub init: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint. With a larger --epochs it also trains
    /// a finished run longer, to the same result as the longer run from the start.
    #[arg(long)]
    pub resume: bool,
    /// Loss weighting (default: DW for variants with dynamic weights, else UW).
    #[arg(long, value_enum)]
    pub weighting: Option<WeightingArg>,
    /// Override the preset's trunk width.
    #[arg(long)]
    pub width: Option<usize>,
    /// Override the preset's epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override the preset's batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override the preset's learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Clip the global gradient norm (not in the paper); 0 turns clipping off.
    #[arg(long, value_name = "NORM")]
    pub grad_clip: Option<f64>,
    /// Override P, the evaluation interval in iterations.
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Resize inputs to HxW (e.g. 112x92); `native` keeps the stored size.
    #[arg(long, value_name = "HxW|native")]
    pub size: Option<String>,
    /// Use at most this many training images.
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Use at most this many images per evaluation.
    #[arg(long)]
    pub max_eval: Option<usize>,
    /// Seed of initialisation, shuffling and flips.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Rescale DW's λ to sum to 40 (on in every preset; false gives the paper's raw Eq. 4, whose
    /// shrinking Σλ stalls learning: docs/fidelity.md).
    #[arg(long)]
    pub rescale_dw: Option<bool>,
    /// Where to run: cpu, or cuda / cuda:N in a CUDA build of dmm (`cargo xtask cuda-build`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub device: dmm_model::DeviceSpec,
    /// Log one line per evaluation instead of a progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Resolve hf:// weights from the local Hugging Face cache only.
    #[arg(long)]
    pub offline: bool,
    /// Stop after the first checkpoint at or past this iteration (for testing resume).
    #[arg(long, hide = true)]
    pub stop_after: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A dmm checkpoint (model.safetensors of a run).
    #[arg(long, value_name = "CKPT")]
    pub model: PathBuf,
    /// Dataset layout of ROOT.
    #[arg(long, value_enum)]
    pub dataset: DatasetArg,
    /// Dataset root folder.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "test", value_parser = ["train", "val", "test"])]
    pub split: String,
    /// Landmark CSV for the landmark NME (default ROOT/landmarks.csv when it exists).
    #[arg(long, value_name = "FILE.csv")]
    pub landmarks: Option<PathBuf>,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Where to run: cpu, or cuda / cuda:N in a CUDA build of dmm (`cargo xtask cuda-build`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub device: dmm_model::DeviceSpec,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `dmm bench` times.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchMode {
    /// Forward in train mode, MSE on attributes and landmarks, backward, SGD-momentum update.
    TrainStep,
    /// Eval-mode forward.
    Forward,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to time.
    #[arg(value_enum)]
    pub mode: BenchMode,
    /// Trunk width (64 = ResNet-50).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Input height x width.
    #[arg(long, default_value = "112x112", value_name = "HxW")]
    pub size: String,
    /// Images per call.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Timed calls after one warm-up (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Where to run: cpu, or cuda / cuda:N in a CUDA build of dmm (`cargo xtask cuda-build`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub device: dmm_model::DeviceSpec,
    /// Print {"median_s": …, "images_per_s": …}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct GpuCheckArgs {
    /// The device to check against the CPU (cpu compares the CPU with itself: a harness test).
    #[arg(long, default_value = "cuda", value_name = "cpu|cuda[:N]")]
    pub device: dmm_model::DeviceSpec,
    /// Folder of the PyTorch fixtures (io_w8.safetensors, dmm_w8.safetensors).
    #[arg(long, value_name = "DIR", default_value = "crates/dmm-model/tests/fixtures")]
    pub fixtures: PathBuf,
    /// Print JSON: {"device", "checks": [{"check", "error", "tolerance", "passed", "note"}], "failed"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// A trained model: model.safetensors of a run, or hf://owner/name[@rev][/file]. Default: the
    /// model built into dmm (DMM-CNN at width 16 trained on CelebA images; models/README.md).
    #[arg(long, value_name = "CKPT|hf://…")]
    pub model: Option<String>,
    /// Images or folders of images.
    #[arg(required = true, value_name = "IMAGE|DIR")]
    pub images: Vec<PathBuf>,
    /// One JSON object per image: image, width, height, face, attributes [{name, score, threshold,
    /// present}], landmarks [[x, y], …] (photo pixels) or null.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV: image, width, height, then per attribute NAME (1/0), NAME_score, NAME_threshold, then
    /// x0, y0, … when the model predicts landmarks.
    #[arg(long)]
    pub csv: bool,
    /// Also write OUT_DIR/<image>.png: the photo with the landmarks drawn and the positive
    /// attributes listed.
    #[arg(long, value_name = "OUT_DIR")]
    pub annotate: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Where to run: cpu, or cuda / cuda:N in a CUDA build of dmm (`cargo xtask cuda-build`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub device: dmm_model::DeviceSpec,
    /// Find the largest face with dlib and crop and align it like CelebA's 178×218 crops before
    /// predicting (for in-the-wild photos; needs --features dlib). Without it the image is used as
    /// given, so give face crops.
    #[arg(long)]
    pub detect: bool,
    /// dlib's 68-point shape predictor for --detect.
    #[arg(long, value_name = "FILE")]
    pub predictor: Option<PathBuf>,
    /// Resolve hf:// models from the local Hugging Face cache only.
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A dmm checkpoint (model.safetensors of a run).
    #[arg(long, value_name = "CKPT")]
    pub model: PathBuf,
    /// The f16 checkpoint to write (atomically).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct LandmarksArgs {
    /// Image folders (keys are paths relative to the folder, e.g. img_align_celeba or lfw) or files.
    #[arg(long, num_args = 1.., required = true, value_name = "DIR|FILE")]
    pub images: Vec<PathBuf>,
    /// The landmark CSV to create or extend.
    #[arg(long, value_name = "FILE.csv")]
    pub out: PathBuf,
    /// Worker threads (each loads its own 100 MB model).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Images between two rewrites of the CSV: an interrupted run loses at most this many.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk: u64,
    /// dlib's 68-point shape predictor.
    #[arg(long, value_name = "FILE", default_value = dmm_landmarks::DEFAULT_PREDICTOR)]
    pub predictor: PathBuf,
}
