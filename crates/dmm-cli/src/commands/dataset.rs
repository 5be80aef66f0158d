//! `dmm dataset stats`: listed vs present images per split and attribute positive rates.
//! `dmm dataset check`: decode every present image and report the unreadable ones.
//! `dmm dataset text-split`: LFWA's official .mat split as the text form every build reads.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use dmm_data::{Dataset, CELEBA_ATTRIBUTES};
use serde_json::json;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::cli::{CheckArgs, DatasetArg, StatsArgs, TextSplitArgs};

fn open(dataset: DatasetArg, root: &std::path::Path) -> anyhow::Result<Dataset> {
    let kind: dmm_data::DatasetKind = dataset.into();
    Dataset::open(kind, root).with_context(|| format!("reading the {} dataset in {}", kind.as_str(), root.display()))
}

pub fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let ds = open(args.dataset, &args.root)?;
    let kind = ds.kind;
    let presence = if args.strict { ds.clone().retain_present(true)? } else { ds.presence() };
    let rates = ds.positive_rates();

    if args.json {
        let splits: serde_json::Map<String, serde_json::Value> = presence
            .splits
            .iter()
            .map(|(s, c)| (s.to_string(), json!({"listed": c.listed, "present": c.present})))
            .collect();
        let attributes: Vec<_> = CELEBA_ATTRIBUTES
            .iter()
            .zip(rates)
            .map(|(name, r)| json!({"name": name, "positive_rate": round4(r)}))
            .collect();
        let out = json!({"dataset": kind.as_str(), "splits": splits, "attributes": attributes});
        return crate::output::print(&(serde_json::to_string_pretty(&out)? + "\n"));
    }

    let mut text = String::new();
    writeln!(text, "{} in {}", kind.as_str(), args.root.display())?;
    writeln!(text, "{:<6} {:>8} {:>8}", "split", "listed", "present")?;
    for (s, c) in &presence.splits {
        writeln!(text, "{:<6} {:>8} {:>8}", s.as_str(), c.listed, c.present)?;
    }
    if let Some(n) = ds.n_points {
        let with = ds.samples.iter().filter(|s| s.landmarks.is_some()).count();
        writeln!(text, "landmarks: {n} points for {with} of {} listed images", ds.samples.len())?;
    }
    writeln!(text, "\n{:<20} {:>13}", "attribute", "positive rate")?;
    for (name, r) in CELEBA_ATTRIBUTES.iter().zip(rates) {
        writeln!(text, "{name:<20} {r:>13.4}")?;
    }
    crate::output::print(&text)
}

pub fn text_split(args: TextSplitArgs) -> anyhow::Result<ExitCode> {
    use dmm_data::lfwa;
    if !cfg!(feature = "mat") {
        anyhow::bail!("reading {} needs dmm built with --features mat (system HDF5, Debian libhdf5-dev)", args.root.join(lfwa::MAT_SPLIT_FILE).display());
    }
    #[cfg(feature = "mat")]
    {
        let out = args.root.join(lfwa::TEXT_SPLIT_FILE);
        let samples = lfwa::read_official(&args.root)?;
        dmm_data::fsutil::write_atomic(&out, lfwa::text_split(&samples).as_bytes()).with_context(|| format!("{}: cannot write", out.display()))?;
        let train = samples.iter().filter(|s| s.split == dmm_data::Split::Train).count();
        println!("wrote {} ({train} train, {} test images)", out.display(), samples.len() - train);
    }
    Ok(ExitCode::SUCCESS)
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut ds = open(args.dataset, &args.root)?;
    let presence = ds.retain_present(args.strict)?;
    let bar = ProgressBar::new(ds.samples.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}")
            .expect("a valid progress template"),
    );
    let mut failures: Vec<(usize, String)> = ds
        .samples
        .par_iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let result = dmm_data::pipeline::decode(&ds.image_path(s));
            bar.inc(1);
            result.err().map(|e| (i, e.to_string()))
        })
        .collect();
    bar.finish_and_clear();
    failures.sort();
    for (_, msg) in &failures {
        eprintln!("error: {msg}");
    }
    let text = format!(
        "{} images decoded, {} unreadable, {} listed but missing\n",
        ds.samples.len() - failures.len(),
        failures.len(),
        presence.missing.len()
    );
    let code = crate::output::print(&text)?;
    Ok(if failures.is_empty() { code } else { ExitCode::FAILURE })
}
