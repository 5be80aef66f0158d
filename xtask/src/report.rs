//! `report.md` and its SVG figures, built only from what the runs wrote: `metrics.jsonl` (one
//! record per evaluation), `test.json` (`dmm eval --json`), `config.json` and `xtask.json`. The
//! paper's published numbers sit beside ours where the paper gives them; the preset, data sizes
//! and machine are stated at the top so a CPU mini run is never mistaken for the paper's setting.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use dmm_data::{attrs::attr_index, AttributeGroups, Dataset, Split, CELEBA_ATTRIBUTES, N_ATTRS};

use crate::runs::{run_dir, scheme_run, Ds, RunLog, Settings, SCHEMES, VARIANTS};
use crate::svg::{self, Panel, Series};

/// The paper's DMM-CNN mean accuracy (%) on CelebA and LFWA (Table 3 / Table 2).
pub const PAPER_DMM_CNN: (f64, f64) = (91.70, 86.56);

/// The fields of a `metrics.jsonl` record the report reads (written by `dmm_train::Record`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Rec {
    /// Iterations done.
    pub iteration: u64,
    /// Mean per-attribute loss on the evaluation split.
    pub loss: f64,
    /// Per-attribute loss, CelebA order.
    pub attribute_losses: Vec<f64>,
    /// λ after the update.
    pub lambda: Vec<f64>,
    /// τ after the update.
    pub tau: Vec<f64>,
    /// Mean accuracy with the thresholds in use.
    pub mean_accuracy: f64,
    /// Images evaluated.
    pub n_eval: u64,
    /// Split evaluated.
    pub split: String,
    /// Per-head collapse diagnostics (absent in records written before they existed).
    #[serde(default)]
    pub heads: Vec<HeadRec>,
}

/// The collapse diagnostics of one head in a record (`dmm_train::metrics::HeadHealth`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct HeadRec {
    /// `objective`, `subjective`, `attributes` or `landmarks`.
    pub head: String,
    /// Mean standard deviation of its outputs across the evaluated images.
    pub spread: f64,
    /// Per hidden layer, the fraction of units dead on the whole evaluation set.
    pub dead: Vec<(String, f64)>,
    /// The outputs no longer depend on the image.
    pub collapsed: bool,
}

/// `dmm eval --json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TestResult {
    /// Mean accuracy over the 40 attributes.
    pub mean_accuracy: f64,
    /// Its standard error over images.
    pub mean_accuracy_se: Option<f64>,
    /// Mean balanced accuracy.
    pub mean_balanced_accuracy: f64,
    /// Always-majority mean accuracy on the same images.
    pub majority_accuracy: Option<f64>,
    /// Per attribute, CelebA order.
    pub attributes: Vec<AttrResult>,
}

/// One attribute of [`TestResult`].
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AttrResult {
    /// CelebA name.
    pub name: String,
    /// Accuracy.
    pub accuracy: f64,
}

/// A finished run as read back from its folder.
#[derive(Debug, Clone)]
pub struct Run {
    /// Evaluation records in order.
    pub records: Vec<Rec>,
    /// Test-split result.
    pub test: TestResult,
    /// Commands and time, when xtask ran it.
    pub log: Option<RunLog>,
    /// The resolved training configuration.
    pub config: serde_json::Value,
}

/// Reads a run folder; `None` when it is not finished (no test.json).
pub fn load_run(dir: &Path) -> anyhow::Result<Option<Run>> {
    let test_path = dir.join("test.json");
    if !test_path.is_file() {
        return Ok(None);
    }
    let read = |p: PathBuf| std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()));
    let test: TestResult = serde_json::from_str(&read(test_path.clone())?).with_context(|| format!("{}: not a dmm eval result", test_path.display()))?;
    let names: Vec<&str> = test.attributes.iter().map(|a| a.name.as_str()).collect();
    if names != CELEBA_ATTRIBUTES {
        anyhow::bail!("{}: attributes are not the 40 of CelebA in CelebA order", test_path.display());
    }
    let metrics = dir.join("metrics.jsonl");
    let mut records = Vec::new();
    for (i, line) in read(metrics.clone())?.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let rec: Rec = serde_json::from_str(line).with_context(|| format!("{}:{}: not a metrics record", metrics.display(), i + 1))?;
        records.push(rec);
    }
    let config = serde_json::from_str(&read(dir.join("config.json"))?).with_context(|| format!("{}: invalid JSON", dir.join("config.json").display()))?;
    let log = match std::fs::read_to_string(dir.join("xtask.json")) {
        Ok(t) => Some(serde_json::from_str(&t).with_context(|| format!("{}: invalid", dir.join("xtask.json").display()))?),
        Err(_) => None,
    };
    Ok(Some(Run { records, test, log, config }))
}

/// Per-attribute accuracy on the test split of the training split's majority label, and the
/// present train / test image counts, of a dataset root.
fn majority_per_attribute(ds: Ds, root: &Path) -> anyhow::Result<(Vec<f64>, usize, usize)> {
    let mut data = Dataset::open(ds.kind(), root).with_context(|| format!("reading {}", root.display()))?;
    data.retain_present(false)?;
    let maj = data.majority_accuracies(Split::Test).with_context(|| format!("{}: no train or no test images", root.display()))?;
    Ok((maj.to_vec(), data.split(Split::Train).count(), data.split(Split::Test).count()))
}

/// Writes `OUT/report.md` and `OUT/figures/*.svg`; returns the report's path and the runs that
/// were missing.
pub fn write_report(settings: &Settings, command: &str) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let out = &settings.out;
    let mut missing = Vec::new();
    let mut get = |ds: Ds, name: &str| -> anyhow::Result<Option<Run>> {
        let r = load_run(&run_dir(out, ds, name))?;
        if r.is_none() {
            missing.push(format!("{}/{name}", ds.as_str()));
        }
        Ok(r)
    };
    let mut variants = Vec::new();
    for (name, paper) in VARIANTS {
        variants.push((name, paper, get(Ds::Celeba, name)?, get(Ds::Lfwa, name)?));
    }
    let mut schemes = Vec::new();
    for (w, label, pc, pl) in SCHEMES {
        let name = scheme_run(w);
        let (c, l) = if w == "dw" { (None, None) } else { (get(Ds::Celeba, &name)?, get(Ds::Lfwa, &name)?) };
        schemes.push((name, label, pc, pl, c, l));
    }
    let find = |ds: Ds, name: &str| -> Option<&Run> {
        variants.iter().find(|v| v.0 == name).and_then(|v| if ds == Ds::Celeba { v.2.as_ref() } else { v.3.as_ref() })
    };
    let scheme_of = |ds: Ds, name: &str| -> Option<&Run> {
        if name == "dmm-cnn" {
            return find(ds, name);
        }
        schemes.iter().find(|s| s.0 == name).and_then(|s| if ds == Ds::Celeba { s.4.as_ref() } else { s.5.as_ref() })
    };

    let figures = out.join("figures");
    std::fs::create_dir_all(&figures).with_context(|| format!("{}: cannot create", figures.display()))?;
    let groups = AttributeGroups::default();
    let mut md = String::new();
    let preset = &settings.preset;
    let _ = writeln!(md, "# DMM-CNN reproduction report — preset `{preset}`\n");
    let _ = writeln!(
        md,
        "Made by `{command}`. Every number on this page is read from the run folders listed under [Runs](#runs) \
         (`metrics.jsonl`, `test.json`, `config.json`); `cargo xtask report --preset {preset} --out {}` rebuilds the page from them.\n",
        out.display()
    );
    let dmm = find(Ds::Celeba, "dmm-cnn");
    if preset != "paper" {
        let _ = writeln!(
            md,
            "> **This is not the paper's setting.** The paper trains a full-width ResNet-50 from ImageNet weights on 162,770 CelebA \
             images for 15 epochs on a GPU. Preset `{preset}` trains a {} on the data below, on a CPU. The numbers show the whole \
             pipeline running on real faces: read each row against the always-majority row, which a few hundred training \
             images take a model only a few points past, and treat differences smaller than about two standard errors \
             (the ± column) as noise.\n",
            dmm.map(|r| describe_config(&r.config)).unwrap_or_else(|| "reduced network".into())
        );
    }

    // Setting.
    let _ = writeln!(md, "## Setting\n");
    let _ = writeln!(md, "| | CelebA | LFWA |\n|---|---|---|");
    let mut majority = Vec::new();
    let mut sizes = Vec::new();
    for ds in [Ds::Celeba, Ds::Lfwa] {
        match majority_per_attribute(ds, settings.root(ds)) {
            Ok((m, train, test)) => {
                majority.push(Some(m));
                sizes.push(format!("{train} train / {test} test"));
            }
            Err(e) => {
                majority.push(None);
                sizes.push(format!("unreadable: {e:#}"));
            }
        }
    }
    let _ = writeln!(md, "| dataset root | `{}` | `{}` |", settings.celeba.display(), settings.lfwa.display());
    let _ = writeln!(md, "| images present | {} | {} |", sizes[0], sizes[1]);
    let eval_of = |ds: Ds| find(ds, "dmm-cnn").and_then(|r| r.records.last()).map(|r| format!("{} `{}` images every P iterations", r.n_eval, r.split)).unwrap_or("—".into());
    let _ = writeln!(md, "| τ/λ evaluation set | {} | {} |", eval_of(Ds::Celeba), eval_of(Ds::Lfwa));
    let cfg_of = |ds: Ds| find(ds, "dmm-cnn").map(|r| describe_config(&r.config)).unwrap_or("—".into());
    let _ = writeln!(md, "| DMM-CNN run | {} | {} |", cfg_of(Ds::Celeba), cfg_of(Ds::Lfwa));
    // What the CelebA runs started from, as their own config says (a preset may set a trunk).
    let backbone = find(Ds::Celeba, "dmm-cnn").and_then(|r| r.config.get("backbone")?.as_str().map(String::from)).or(settings.backbone.clone());
    let start = backbone.map(|b| format!("the trunk of `{b}`")).unwrap_or("random initialisation (no ImageNet weights)".into());
    let _ = writeln!(md, "| start | {start} | fine-tuned from the CelebA run of the same name |\n");
    let _ = writeln!(md, "Machine: {}.\n", machine());

    // Table 1.
    let _ = writeln!(md, "## Table 1 — the seven variants (test mean accuracy, %)\n");
    let _ = writeln!(md, "Balanced accuracy is the mean over attributes of (TPR + TNR)/2 (50 = majority guessing). ± is one standard error of the mean accuracy: the spread of per-image accuracies over √N test images.\n");
    let _ = writeln!(md, "| Variant | CelebA | ± | CelebA balanced | LFWA | ± | LFWA balanced | Paper CelebA | Paper LFWA |\n|---|---|---|---|---|---|---|---|---|");
    let maj_c = find(Ds::Celeba, "dmm-cnn").or(variants.iter().find_map(|v| v.2.as_ref())).and_then(|r| r.test.majority_accuracy);
    let maj_l = find(Ds::Lfwa, "dmm-cnn").or(variants.iter().find_map(|v| v.3.as_ref())).and_then(|r| r.test.majority_accuracy);
    let _ = writeln!(md, "| always-majority | {} | | 50.00 | {} | | 50.00 | | |", pct(maj_c), pct(maj_l));
    for (name, paper, c, l) in &variants {
        let (pc, pl) = if *name == "dmm-cnn" { (format!("{:.2}", PAPER_DMM_CNN.0), format!("{:.2}", PAPER_DMM_CNN.1)) } else { (String::new(), String::new()) };
        let _ = writeln!(md, "| {paper} | {} | {} | {} | {} | {} | {} | {pc} | {pl} |", acc(c), se(c), bal(c), acc(l), se(l), bal(l));
    }
    let _ = writeln!(md, "\nThe paper reports the per-variant accuracies only as the bar charts of its Figs. 3 and 4; its text gives DMM-CNN's means.\n");

    // Table 2.
    let _ = writeln!(md, "## Table 2 — loss-weighting schemes on DMM-CNN (test mean accuracy, %)\n");
    let _ = writeln!(md, "| Scheme | run | CelebA | ± | LFWA | ± | Paper CelebA | Paper LFWA |\n|---|---|---|---|---|---|---|---|");
    for (name, label, pc, pl, ..) in &schemes {
        let (c, l) = (scheme_of(Ds::Celeba, name).cloned(), scheme_of(Ds::Lfwa, name).cloned());
        let _ = writeln!(md, "| {label} | `{name}` | {} | {} | {} | {} | {pc:.2} | {pl:.2} |", acc(&c), se(&c), acc(&l), se(&l));
    }
    let _ = writeln!(md, "\nAW is reconstructed from the paper's description (see docs/fidelity.md).\n");

    // Table 3.
    let _ = writeln!(md, "## Table 3 — DMM-CNN per attribute (test accuracy, %)\n");
    let _ = writeln!(md, "The paper's Table 3 (per-attribute numbers) is missing from the text we have, so only its means are quoted above.\n");
    let _ = writeln!(md, "| Attribute | group | CelebA | CelebA majority | LFWA | LFWA majority |\n|---|---|---|---|---|---|");
    let (dc, dl) = (find(Ds::Celeba, "dmm-cnn"), find(Ds::Lfwa, "dmm-cnn"));
    for (j, name) in CELEBA_ATTRIBUTES.iter().enumerate() {
        let group = if groups.objective.contains(&j) { "objective" } else { "subjective" };
        let a = |r: Option<&Run>| r.map(|r| format!("{:.2}", 100.0 * r.test.attributes[j].accuracy)).unwrap_or("—".into());
        let m = |k: usize| majority[k].as_ref().map(|m| format!("{:.2}", 100.0 * m[j])).unwrap_or("—".into());
        let _ = writeln!(md, "| {name} | {group} | {} | {} | {} | {} |", a(dc), m(0), a(dl), m(1));
    }
    let _ = writeln!(md, "| **mean** | | {} | {} | {} | {} |\n", acc(&dc.cloned()), pct(maj_c), acc(&dl.cloned()), pct(maj_l));

    // Figures.
    let _ = writeln!(md, "## Figures\n");
    let mut figs = Vec::new();
    for (ds, fig, file) in [(Ds::Celeba, 3, "fig3-celeba-variants.svg"), (Ds::Lfwa, 4, "fig4-lfwa-variants.svg")] {
        let runs: Vec<(&str, Option<&Run>)> = variants.iter().map(|v| (v.1, if ds == Ds::Celeba { v.2.as_ref() } else { v.3.as_ref() })).collect();
        let title = format!("Fig. {fig}: per-attribute test accuracy of the variants on {} (preset {preset})", if ds == Ds::Celeba { "CelebA" } else { "LFWA" });
        figs.push((file, title.clone(), variants_figure(&title, &runs, &groups)));
    }
    let (dw, fix) = (find(Ds::Celeba, "dmm-cnn"), scheme_of(Ds::Celeba, "dmm-cnn-uw"));
    figs.push(("fig5-validation-loss.svg", format!("Fig. 5: CelebA validation loss, DW vs fixed weights (preset {preset})"), loss_figure(dw, fix, preset)));
    figs.push(("fig6-dynamic-weights.svg", format!("Fig. 6: dynamic weights λ of DMM-CNN on CelebA (preset {preset})"), weights_figure(dw, preset)));
    figs.push(("fig7-thresholds.svg", format!("Fig. 7: adaptive thresholds τ of DMM-CNN on CelebA (preset {preset})"), thresholds_figure(dw, preset)));
    for (file, title, svg) in &figs {
        crate::runs::write(&figures.join(file), svg)?;
        let _ = writeln!(md, "![{title}](figures/{file})\n");
    }
    let _ = writeln!(md, "Fig. 5 plots the DMM-CNN run (DW) against `dmm-cnn-uw` (the same network with λ = 1); Fig. 7 shows every fourth attribute in CelebA order (the paper picked ten at random).\n");

    // Runs.
    let _ = writeln!(md, "## Runs\n");
    let _ = writeln!(
        md,
        "The heads column reads the last evaluation: each head's output spread (standard deviation of its scores across the \
         evaluated images; targets are ±1) and the largest share of dead hidden units (zero for every image) in any of its \
         layers. A **collapsed** head's outputs no longer depend on the image: it predicts each attribute's prior.\n"
    );
    let _ = writeln!(md, "| run | evaluations | last eval mean acc | test mean acc | heads at the last evaluation | train time | command |\n|---|---|---|---|---|---|---|");
    for ds in [Ds::Celeba, Ds::Lfwa] {
        for name in VARIANTS.iter().map(|v| v.0.to_string()).chain(SCHEMES.iter().filter(|s| s.0 != "dw").map(|s| scheme_run(s.0))) {
            let dir = run_dir(out, ds, &name);
            let Some(r) = find(ds, &name).or_else(|| scheme_of(ds, &name)) else {
                let _ = writeln!(md, "| `{}` | not finished | | | | | |", dir.display());
                continue;
            };
            let time = r.log.as_ref().map(|l| format!("{:.0} s{}", l.train_seconds, l.threads.map(|t| format!(" ({t} thread{})", if t == 1 { "" } else { "s" })).unwrap_or_default())).unwrap_or("—".into());
            let cmd = r.log.as_ref().map(|l| format!("`{}`", l.train_command)).unwrap_or("—".into());
            let heads = r.records.last().map(|x| heads_cell(&x.heads)).unwrap_or_default();
            let _ = writeln!(md, "| `{}` | {} | {} | {:.2} | {heads} | {time} | {cmd} |", dir.display(), r.records.len(), pct(r.records.last().map(|x| x.mean_accuracy)), 100.0 * r.test.mean_accuracy);
        }
    }
    let path = out.join("report.md");
    crate::runs::write(&path, &md)?;
    Ok((path, missing))
}

/// "objective 0.412 (12% dead), subjective **collapsed** 0.003 (98% dead)".
fn heads_cell(heads: &[HeadRec]) -> String {
    if heads.is_empty() {
        return "—".into();
    }
    heads
        .iter()
        .map(|h| {
            let dead = h.dead.iter().map(|(_, f)| *f).fold(0.0, f64::max);
            format!("{}{} {:.3} ({:.0}% dead)", h.head, if h.collapsed { " **collapsed**" } else { "" }, h.spread, 100.0 * dead)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}", 100.0 * v)).unwrap_or("—".into())
}

fn acc(r: &Option<Run>) -> String {
    pct(r.as_ref().map(|r| r.test.mean_accuracy))
}

fn bal(r: &Option<Run>) -> String {
    pct(r.as_ref().map(|r| r.test.mean_balanced_accuracy))
}

fn se(r: &Option<Run>) -> String {
    r.as_ref().and_then(|r| r.test.mean_accuracy_se).map(|v| format!("{:.2}", 100.0 * v)).unwrap_or("—".into())
}

/// "width 8, 112×92 input, batch 16, 5 epochs, lr 0.01, P 10" from a run's config.json.
fn describe_config(c: &serde_json::Value) -> String {
    let n = |k: &str| c.get(k).and_then(|v| v.as_u64()).map(|v| v.to_string()).unwrap_or("?".into());
    let size = c
        .get("input_size")
        .and_then(|v| v.as_array())
        .map(|a| format!("{}×{}", a[0], a[1]))
        .unwrap_or_else(|| "native-size".into());
    let lr = c.pointer("/sgd/lr").and_then(|v| v.as_f64()).map(|v| v.to_string()).unwrap_or("?".into());
    format!("width-{} ResNet-50 ({size} input, batch {}, {} epochs, lr {lr}, P = {})", n("width"), n("batch_size"), n("epochs"), n("eval_every"))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu}, {cores} cores, CPU only")
}

fn variants_figure(title: &str, runs: &[(&str, Option<&Run>)], groups: &AttributeGroups) -> String {
    let panel = |label: &str, idx: &[usize]| Panel {
        title: format!("{label} attributes"),
        y_label: "test accuracy (%)".into(),
        categories: idx.iter().map(|&j| CELEBA_ATTRIBUTES[j].to_string()).collect(),
        series: runs
            .iter()
            .filter_map(|(name, r)| r.map(|r| Series { name: name.to_string(), points: idx.iter().enumerate().map(|(k, &j)| (k as f64, 100.0 * r.test.attributes[j].accuracy)).collect(), ..Default::default() }))
            .collect(),
        ..Default::default()
    };
    svg::render(title, &[panel("Objective", &groups.objective), panel("Subjective", &groups.subjective)], 1100.0)
}

fn curve(r: &Run, f: impl Fn(&Rec) -> f64) -> Vec<(f64, f64)> {
    r.records.iter().map(|x| (x.iteration as f64, f(x))).collect()
}

fn loss_figure(dw: Option<&Run>, fix: Option<&Run>, preset: &str) -> String {
    let (mouth, young) = (attr_index("Mouth_Slightly_Open").expect("CelebA attribute"), attr_index("Young").expect("CelebA attribute"));
    let mut series = Vec::new();
    for (run, tag, dashed) in [(fix, "FIX", true), (dw, "DW", false)] {
        let Some(r) = run else { continue };
        series.push(Series { name: format!("Mean-{tag}"), points: curve(r, |x| x.loss), dashed, color: Some(0) });
        series.push(Series { name: format!("MouthOpen-{tag}"), points: curve(r, |x| x.attribute_losses[mouth]), dashed, color: Some(1) });
        series.push(Series { name: format!("Young-{tag}"), points: curve(r, |x| x.attribute_losses[young]), dashed, color: Some(2) });
    }
    let panel = Panel { title: "validation loss (MSE on ±1 targets, log scale)".into(), x_label: "iteration".into(), y_label: "loss".into(), log_y: true, series, ..Default::default() };
    svg::render(&format!("Fig. 5: validation loss, dynamic vs fixed weights (CelebA, preset {preset})"), &[panel], 900.0)
}

fn weights_figure(dw: Option<&Run>, preset: &str) -> String {
    let (mouth, young) = (attr_index("Mouth_Slightly_Open").expect("CelebA attribute"), attr_index("Young").expect("CelebA attribute"));
    let series = dw
        .map(|r| {
            vec![
                Series { name: "MouthOpen".into(), points: curve(r, |x| x.lambda[mouth]), ..Default::default() },
                Series { name: "Young".into(), points: curve(r, |x| x.lambda[young]), ..Default::default() },
            ]
        })
        .unwrap_or_default();
    let panel = Panel { title: "λ after each evaluation (Eq. 4)".into(), x_label: "iteration".into(), y_label: "weight λ".into(), series, ..Default::default() };
    svg::render(&format!("Fig. 6: dynamic weights of DMM-CNN (CelebA, preset {preset})"), &[panel], 900.0)
}

fn thresholds_figure(dw: Option<&Run>, preset: &str) -> String {
    let series = dw
        .map(|r| (0..N_ATTRS).step_by(4).map(|j| Series { name: CELEBA_ATTRIBUTES[j].to_string(), points: curve(r, |x| x.tau[j]), ..Default::default() }).collect())
        .unwrap_or_default();
    let panel = Panel { title: "τ after each evaluation (Eq. 6)".into(), x_label: "iteration".into(), y_label: "threshold τ".into(), series, ..Default::default() };
    svg::render(&format!("Fig. 7: adaptive thresholds of DMM-CNN (CelebA, preset {preset})"), &[panel], 900.0)
}
