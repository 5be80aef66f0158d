//! `dmm landmarks`: dlib landmarks for images into the landmark CSV.

use std::process::ExitCode;

use crate::cli::LandmarksArgs;

#[cfg(not(feature = "dlib"))]
pub fn run(_args: LandmarksArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this dmm was built without dlib: rebuild with `--features dmm-cli/dlib` \
         (Debian: apt-get install libdlib-dev libdlib-data liblapack-dev libblas-dev)"
    )
}

#[cfg(feature = "dlib")]
pub fn run(args: LandmarksArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use dmm_landmarks::{collect_images, precompute, Dlib, Options};
    use indicatif::{ProgressBar, ProgressStyle};

    let images = collect_images(&args.images)?;
    anyhow::ensure!(!images.is_empty(), "no .jpg, .jpeg or .png images in {:?}", args.images);
    // Fail early, with the path, if the model cannot be loaded.
    drop(Dlib::new(&args.predictor)?);
    let options = Options { jobs: args.jobs.unwrap_or(Options::default().jobs), chunk: usize::try_from(args.chunk).unwrap_or(usize::MAX) };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}").expect("valid template"),
    );
    let predictor = args.predictor.clone();
    let summary = precompute(
        &images,
        &args.out,
        || {
            let mut d = Dlib::new(&predictor)?;
            Ok(move |img: &image::RgbImage| Ok(d.landmarks(img, 1)?.map(|f| f.points)))
        },
        &options,
        &|done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )
    .with_context(|| format!("computing landmarks into {}", args.out.display()))?;
    bar.finish_and_clear();
    for (key, reason) in &summary.failed {
        eprintln!("error: {key}: {reason}");
    }
    let processed = summary.detected + summary.no_face.len() + summary.failed.len();
    let rate = processed as f64 / summary.seconds.max(1e-9);
    let mut text = format!(
        "{} images: {} already done, {} with landmarks, {} without a face (listed in {}), {} unreadable; {rate:.1} images/s\n",
        images.len(),
        summary.already_done,
        summary.detected,
        summary.no_face.len(),
        dmm_landmarks::precompute::noface_path(&args.out).display(),
        summary.failed.len()
    );
    if !summary.no_face.is_empty() {
        let shown: Vec<&str> = summary.no_face.iter().take(10).map(String::as_str).collect();
        text.push_str(&format!("no face: {}{}\n", shown.join(", "), if summary.no_face.len() > 10 { ", …" } else { "" }));
    }
    let code = crate::output::print(&text)?;
    Ok(if summary.failed.is_empty() { code } else { ExitCode::FAILURE })
}
