//! `dmm dataset stats`: listed vs present images per split and attribute positive rates.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use dmm_data::{Dataset, CELEBA_ATTRIBUTES};
use serde_json::json;

use crate::cli::StatsArgs;

pub fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let kind: dmm_data::DatasetKind = args.dataset.into();
    let ds = Dataset::open(kind, &args.root)
        .with_context(|| format!("reading the {} dataset in {}", kind.as_str(), args.root.display()))?;
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

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}
