//! The command-line surface of `dmm`: raw flags as the user typed them (clap derive). Resolving
//! them into paths, datasets and configs happens in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// DMM-CNN facial attribute classification: datasets, training, evaluation and prediction.
#[derive(Debug, Parser)]
#[command(name = "dmm", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the network on a tensor file (for parity checks against PyTorch): reads tensor `input`
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
    /// Per split: images listed by the label files and images present on disk; per attribute:
    /// the positive rate over all listed images.
    Stats(StatsArgs),
    /// Decode every listed image that is present and report each one that cannot be read (name
    /// and reason, one line each); exits non-zero if any image is unreadable. Use it after a
    /// download to find truncated or corrupt files.
    Check(CheckArgs),
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
    /// Resolve hf:// weights from the local Hugging Face cache only, never the network.
    #[arg(long)]
    pub offline: bool,
}
