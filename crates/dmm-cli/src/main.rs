//! The `dmm` binary. `main` only parses flags, calls [`run`] and turns its error into one line on
//! stderr and a non-zero exit code; each subcommand lives in `commands/`.
//!
//! End-to-end tests of the binary are in `tests/cli.rs`.

mod bundled;
mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// Training allocates and frees activation-sized buffers every step; glibc hands the big ones
/// back to the kernel each time, so each step pays fresh zeroed pages. mimalloc keeps them
/// (measured: training step 1.15 s against 1.31 s with glibc, peak memory 1.50 against 1.42 GiB).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the `mi_option_e` enum of the mimalloc 3 header that
/// libmimalloc-sys 0.1.49 builds (`c_src/mimalloc/v3/include/mimalloc.h`); the crate does not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // mimalloc returns freed memory to the kernel after a second by default; a training step
    // frees and reallocates the same large buffers (the subjective branch's 235 MB weight gradient
    // among them) every step, so keep them. Measured: 218×178 training step 2.24 s against
    // 2.34–2.56 s, peak memory 2.30 against 2.23 GiB (PyTorch: 2.75 GiB).
    // SAFETY: setting an option is a plain store in mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
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
