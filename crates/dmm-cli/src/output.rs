//! Writing results to stdout. A closed pipe (`dmm … | head`) is a normal way for a reader to stop,
//! so it ends the program quietly with success instead of a panic.

use std::io::Write;
use std::process::ExitCode;

/// Writes `text` to stdout and flushes; a broken pipe counts as success.
pub fn print(text: &str) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}
