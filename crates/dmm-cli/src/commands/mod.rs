//! One module per `dmm` subcommand, each with plain functions taking the parsed flags.

pub mod annotate;
pub mod bench;
pub mod dataset;
pub mod export;
pub mod forward;
pub mod gpu_check;
pub mod train;
pub mod landmarks;
pub mod predict;
