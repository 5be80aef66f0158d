//! The pixels dmm trains on, for scripts that must feed PyTorch exactly those: each listed image
//! decoded and resized as `dmm train` does ([`dmm_data::pipeline::decode`], then
//! [`Transform::resize`]), written one after another as raw 8-bit RGB, rows of `W` pixels, `H`
//! rows per image. `bench/lockstep.py` uses it; PIL's decoder (libjpeg-turbo) differs from dmm's
//! (zune-jpeg) by about 0.2 levels on average, which is enough to change a training run.
//!
//! ```text
//! cargo run --release -p dmm-data --example pixel_dump -- LIST HxW OUT
//! ```
//!
//! LIST has one image path per line.

use std::path::Path;
use std::process::ExitCode;

use dmm_data::pipeline::{decode, Transform};
use rayon::prelude::*;

fn run(args: &[String]) -> Result<(), String> {
    let [_, list, size, out] = args else {
        return Err("usage: pixel_dump LIST HxW OUT".into());
    };
    let parsed = size.split_once('x').and_then(|(h, w)| Some((h.parse().ok()?, w.parse().ok()?)));
    let Some((h, w)) = parsed else {
        return Err(format!("size {size}: expected HxW, e.g. 109x89"));
    };
    let transform = Transform { size: Some((h, w)), ..Default::default() };
    let text = std::fs::read_to_string(list).map_err(|e| format!("{list}: {e}"))?;
    let paths: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let images = paths
        .par_iter()
        .map(|p| {
            let img = decode(Path::new(p)).map_err(|e| e.to_string())?;
            Ok(transform.resize(&img).map_err(|e| e.to_string())?.unwrap_or(img).into_raw())
        })
        .collect::<Result<Vec<Vec<u8>>, String>>()?;
    let tmp = format!("{out}.tmp");
    std::fs::write(&tmp, images.concat()).map_err(|e| format!("{tmp}: {e}"))?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{out}: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
