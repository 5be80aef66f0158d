//! The `dmm` command as a library: argument parsing (`cli.rs`) and the subcommands
//! (`commands/`), behind one entry point, [`main`]. The binary (`src/main.rs`) adds only the
//! allocator. xtask depends on this library so that `cargo xtask` compiles every crate `dmm` needs
//! with the features `dmm` uses: its build of the `dmm` binary then compiles nothing but `main.rs`
//! (docs/benchmarks.md, "Cold build").
//!
//! End-to-end tests of the binary are in `tests/cli.rs`.

mod bundled;
mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// Parses the process's arguments, runs the subcommand and turns its error into one line on
/// stderr and a non-zero exit code.
pub fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: cli::Cli) -> anyhow::Result<ExitCode> {
    match args.command {
        cli::Command::Forward(a) => commands::forward::run(a),
        cli::Command::Train(a) => commands::train::train(*a),
        cli::Command::Eval(a) => commands::train::eval(a),
        cli::Command::Landmarks(a) => commands::landmarks::run(a),
        cli::Command::Predict(a) => commands::predict::run(a),
        cli::Command::Export(a) => commands::export::run(a),
        cli::Command::Bench(a) => commands::bench::run(a),
        cli::Command::GpuCheck(a) => commands::gpu_check::run(a),
        cli::Command::Dataset { command } => match command {
            cli::DatasetCommand::Stats(a) => commands::dataset::stats(a),
            cli::DatasetCommand::Check(a) => commands::dataset::check(a),
            cli::DatasetCommand::TextSplit(a) => commands::dataset::text_split(a),
        },
    }
}
