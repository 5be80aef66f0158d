//! `dmm predict`: the 40 attributes (score, threshold τ, yes/no) and the landmarks of any face
//! image with a trained model. Images are decoded in parallel with their EXIF orientation
//! applied, optionally cropped and aligned like CelebA's crops around the largest dlib face
//! (`--detect`), prepared exactly as in training (the checkpoint's input size and
//! normalization), and run in batches. Landmarks are reported in pixels of the photo as the
//! viewer shows it. An unreadable file is reported and skipped; the exit code says whether any was.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use dmm_data::align::Similarity;
use dmm_data::{Transform, CELEBA_ATTRIBUTES, N_ATTRS};
use dmm_model::checkpoint::{self, Checkpoint};
use dmm_model::DmmModel;
use image::RgbImage;
use rayon::prelude::*;
use serde_json::json;

use crate::cli::PredictArgs;

/// The prediction for one image.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The key the image is reported under.
    pub image: String,
    /// Width and height of the (oriented) photo.
    pub size: (u32, u32),
    /// Raw scores, CelebA order.
    pub scores: Vec<f32>,
    /// Landmarks `[x0, y0, …]` in photo pixels, when the model has the landmark head.
    pub landmarks: Option<Vec<f32>>,
    /// The face box `[left, top, right, bottom]` found by `--detect`.
    pub face: Option<[f32; 4]>,
}

/// A decoded photo and the crop the network sees.
struct Input {
    key: String,
    photo: RgbImage,
    /// Photo → network-input similarity when the face was aligned (`None`: the photo as given).
    to_crop: Option<Similarity>,
    face: Option<[f32; 4]>,
    chw: Vec<f32>,
    hw: (usize, usize),
    /// Size of the image before the checkpoint's resize (the crop or the photo).
    pre_resize: (usize, usize),
}

pub fn run(args: PredictArgs) -> anyhow::Result<ExitCode> {
    // The images first: a wrong path is answered before seconds of model loading.
    let images = dmm_landmarks::collect_images(&args.images)?;
    if images.is_empty() {
        anyhow::bail!("no .jpg, .jpeg or .png images in {}", args.images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let device = args.device.open()?;
    let (ckpt, model_name) = match &args.model {
        Some(model) => {
            let source: dmm_model::WeightSource = model.parse()?;
            let path = source.resolve(args.offline, None)?;
            (checkpoint::load(&path, &device).with_context(|| format!("loading the model {source}"))?, source.to_string())
        }
        None => (crate::bundled::load(&device).context("loading the built-in model")?, format!("{} (built in; models/README.md)", crate::bundled::NAME)),
    };
    let mut detector = Detector::new(args.detect, args.predictor.as_deref())?;
    if let Some(dir) = &args.annotate {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let format = if args.json { Format::Json } else if args.csv { Format::Csv } else { Format::Table };
    let mut out = String::new();
    if format == Format::Table {
        let m = &ckpt.meta.model;
        let size = ckpt.meta.input_size.map_or("native size".to_string(), |(h, w)| format!("{w}×{h} input"));
        let _ = writeln!(out, "model: {model_name}: {}, width {}, {size}\n", m.variant, m.width);
    }
    if format == Format::Csv {
        out.push_str(&csv_header(ckpt.meta.model.n_points, ckpt.model.config().variant.uses_landmarks()));
    }
    let transform = Transform { size: ckpt.meta.input_size, normalization: ckpt.meta.normalization };
    let started = Instant::now();
    // The 3×3 filters transformed once for every batch (the weights no longer change).
    let model = ckpt.model.for_inference()?;
    let (mut done, mut failed) = (0usize, 0usize);
    for chunk in images.chunks(args.batch.max(1)) {
        // Decode (and crop) in parallel; a failure is reported and the others go on.
        let decoded: Vec<anyhow::Result<(String, RgbImage)>> = chunk
            .par_iter()
            .map(|(key, path)| decode_photo(path, args.detect).map(|img| (key.clone(), img)))
            .collect();
        let mut inputs = Vec::new();
        for ((key, _), result) in chunk.iter().zip(decoded) {
            match result.and_then(|(key, photo)| detector.prepare(key, photo, &transform)) {
                Ok(input) => inputs.push(input),
                Err(e) => {
                    failed += 1;
                    eprintln!("{key}: {e:#}");
                }
            }
        }
        let predictions = infer(&model, &inputs, &device)?;
        for (input, p) in inputs.iter().zip(&predictions) {
            if let Some(dir) = &args.annotate {
                if let Err(e) = annotate(dir, input, p, &ckpt) {
                    failed += 1;
                    eprintln!("{}: {e:#}", input.key);
                    continue;
                }
            }
            write_prediction(&mut out, format, p, &ckpt);
            done += 1;
        }
        crate::output::print(&std::mem::take(&mut out))?;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "predicted {done} of {} images in {secs:.2} s ({:.1} images/s) with {model_name}{}",
        images.len(),
        done as f64 / secs.max(1e-9),
        if failed > 0 { format!("; {failed} failed") } else { String::new() }
    );
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Runs `model` over `inputs`, grouping equal sizes into one forward pass each.
fn infer(model: &DmmModel, inputs: &[Input], device: &Device) -> anyhow::Result<Vec<Prediction>> {
    let mut out: Vec<Option<Prediction>> = vec![None; inputs.len()];
    let mut sizes: Vec<(usize, usize)> = inputs.iter().map(|i| i.hw).collect();
    sizes.sort();
    sizes.dedup();
    for hw in sizes {
        let idx: Vec<usize> = (0..inputs.len()).filter(|&i| inputs[i].hw == hw).collect();
        let data: Vec<f32> = idx.iter().flat_map(|&i| inputs[i].chw.iter().copied()).collect();
        let x = Tensor::from_vec(data, (idx.len(), 3, hw.0, hw.1), device)?;
        let y = model.forward_t(&x, false)?;
        let scores: Vec<Vec<f32>> = y.attributes.to_vec2()?;
        let points: Option<Vec<Vec<f32>>> = y.landmarks.map(|l| l.to_vec2()).transpose()?;
        for (k, &i) in idx.iter().enumerate() {
            let input = &inputs[i];
            let landmarks = points.as_ref().map(|p| to_photo(&p[k], input, hw));
            out[i] = Some(Prediction { image: input.key.clone(), size: input.photo.dimensions(), scores: scores[k].clone(), landmarks, face: input.face });
        }
    }
    Ok(out.into_iter().map(|p| p.expect("every input predicted")).collect())
}

/// Normalized network-input coordinates → pixels of the photo: undo the checkpoint's resize
/// (pixel centres, as the training pipeline maps them), then the alignment.
fn to_photo(normalized: &[f32], input: &Input, (h, w): (usize, usize)) -> Vec<f32> {
    let (h0, w0) = input.pre_resize;
    let (sx, sy) = (w as f64 / w0 as f64, h as f64 / h0 as f64);
    let crop: Vec<f32> = normalized
        .chunks_exact(2)
        .flat_map(|p| [((p[0] as f64 * w as f64 + 0.5) / sx - 0.5) as f32, ((p[1] as f64 * h as f64 + 0.5) / sy - 0.5) as f32])
        .collect();
    match &input.to_crop {
        Some(t) => t.inverse().apply_points(&crop),
        None => crop,
    }
}

/// A photo with its EXIF orientation applied. With `--detect`, JPEGs are decoded as Python's dlib
/// pipeline decodes them (libjpeg-turbo, as Pillow), so dlib finds the points Python finds.
fn decode_photo(path: &Path, detect: bool) -> anyhow::Result<RgbImage> {
    #[cfg(feature = "dlib")]
    if detect {
        return Ok(dmm_landmarks::decode_oriented_like_pil(path)?);
    }
    let _ = detect;
    Ok(dmm_data::pipeline::decode_oriented(path)?)
}

/// `--detect`: dlib's largest face, aligned to CelebA's crop; otherwise the photo as given.
struct Detector {
    #[cfg(feature = "dlib")]
    dlib: Option<dmm_landmarks::Dlib>,
}

impl Detector {
    fn new(detect: bool, predictor: Option<&Path>) -> anyhow::Result<Self> {
        #[cfg(feature = "dlib")]
        {
            let dlib = if detect {
                let p = predictor.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(dmm_landmarks::DEFAULT_PREDICTOR));
                Some(dmm_landmarks::Dlib::new(&p)?)
            } else {
                None
            };
            Ok(Self { dlib })
        }
        #[cfg(not(feature = "dlib"))]
        {
            let _ = predictor;
            if detect {
                anyhow::bail!("--detect needs dmm built with dlib: cargo build --release -p dmm-cli --features dmm-cli/dlib (Debian: libdlib-dev libdlib-data liblapack-dev libblas-dev)");
            }
            Ok(Self {})
        }
    }

    fn prepare(&mut self, key: String, photo: RgbImage, transform: &Transform) -> anyhow::Result<Input> {
        let (to_crop, face) = self.align(&photo)?;
        let crop;
        let seen = match &to_crop {
            Some(t) => {
                crop = dmm_data::align::warp(&photo, t, dmm_data::align::CELEBA_CROP);
                &crop
            }
            None => &photo,
        };
        let pre_resize = (seen.height() as usize, seen.width() as usize);
        // Checked before the resize, which would blow a 1×1 picture up to the model's input size.
        if seen.height() < 32 || seen.width() < 32 {
            anyhow::bail!("{}×{} pixels is too small to hold a face (at least 32×32)", seen.width(), seen.height());
        }
        let prepared = transform.apply(seen, None, false)?;
        Ok(Input { key, to_crop, face, hw: (prepared.height, prepared.width), chw: prepared.chw, pre_resize, photo })
    }

    #[cfg(feature = "dlib")]
    fn align(&mut self, photo: &RgbImage) -> anyhow::Result<(Option<Similarity>, Option<[f32; 4]>)> {
        let Some(dlib) = self.dlib.as_mut() else { return Ok((None, None)) };
        let face = dlib.landmarks(photo, 1)?.context("no face found (dlib HOG detector, upsample 1)")?;
        let t = Similarity::fit(&face.points, dmm_data::align::celeba_template()).context("degenerate landmarks")?;
        Ok((Some(t), Some(face.bbox)))
    }

    #[cfg(not(feature = "dlib"))]
    fn align(&mut self, _photo: &RgbImage) -> anyhow::Result<(Option<Similarity>, Option<[f32; 4]>)> {
        Ok((None, None))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Csv,
}

fn label(p: &Prediction, ckpt: &Checkpoint, j: usize) -> bool {
    p.scores[j] > ckpt.meta.thresholds[j]
}

/// One image in the chosen format. The JSON fields and CSV columns are a stable interface.
fn write_prediction(out: &mut String, format: Format, p: &Prediction, ckpt: &Checkpoint) {
    let tau = &ckpt.meta.thresholds;
    match format {
        Format::Json => {
            let attributes: Vec<_> = (0..N_ATTRS)
                .map(|j| json!({"name": CELEBA_ATTRIBUTES[j], "score": short(p.scores[j]), "threshold": short(tau[j]), "present": label(p, ckpt, j)}))
                .collect();
            let landmarks = p.landmarks.as_ref().map(|l| l.chunks_exact(2).map(|q| [round2(q[0]), round2(q[1])]).collect::<Vec<_>>());
            let line = json!({"image": p.image, "width": p.size.0, "height": p.size.1, "face": p.face, "attributes": attributes, "landmarks": landmarks});
            out.push_str(&line.to_string());
            out.push('\n');
        }
        Format::Csv => {
            let mut row = vec![csv_field(&p.image), p.size.0.to_string(), p.size.1.to_string()];
            for (j, (score, t)) in p.scores.iter().zip(tau).enumerate() {
                row.extend([(label(p, ckpt, j) as u8).to_string(), score.to_string(), t.to_string()]);
            }
            if let Some(l) = &p.landmarks {
                row.extend(l.iter().map(|v| round2(*v).to_string()));
            }
            out.push_str(&row.join(","));
            out.push('\n');
        }
        Format::Table => {
            let _ = writeln!(out, "{} ({}×{}{})", p.image, p.size.0, p.size.1, if p.face.is_some() { ", face aligned" } else { "" });
            let positive: Vec<&str> = (0..N_ATTRS).filter(|&j| label(p, ckpt, j)).map(|j| CELEBA_ATTRIBUTES[j]).collect();
            let _ = writeln!(out, "  yes: {}", if positive.is_empty() { "(none)".to_string() } else { positive.join(", ") });
            let _ = writeln!(out, "  {:<20} {:>8} {:>8}  label", "attribute", "score", "τ");
            for j in 0..N_ATTRS {
                let _ = writeln!(out, "  {:<20} {:>8.4} {:>8.4}  {}", CELEBA_ATTRIBUTES[j], p.scores[j], tau[j], if label(p, ckpt, j) { "yes" } else { "no" });
            }
            if let Some(l) = &p.landmarks {
                let _ = writeln!(out, "  {} landmarks (x, y in pixels):", l.len() / 2);
                for row in l.chunks(16) {
                    let pts: Vec<String> = row.chunks_exact(2).map(|q| format!("({:.1}, {:.1})", q[0], q[1])).collect();
                    let _ = writeln!(out, "    {}", pts.join(" "));
                }
            }
            out.push('\n');
        }
    }
}

fn csv_header(n_points: usize, landmarks: bool) -> String {
    let mut cols = vec!["image".to_string(), "width".into(), "height".into()];
    for name in CELEBA_ATTRIBUTES {
        cols.extend([name.to_string(), format!("{name}_score"), format!("{name}_threshold")]);
    }
    if landmarks {
        for i in 0..n_points {
            cols.extend([format!("x{i}"), format!("y{i}")]);
        }
    }
    cols.join(",") + "\n"
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Landmark pixels to two decimals, as the JSON number a reader expects (`12.34`, not
/// `12.340000152587891`).
fn round2(v: f32) -> f64 {
    (v as f64 * 100.0).round() / 100.0
}

/// An `f32` as the `f64` with the same shortest decimal form, so JSON shows `0.0013333333`
/// rather than the widened `0.0013333333190530539`.
fn short(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// Writes `DIR/<key with / as __>.png` atomically.
fn annotate(dir: &Path, input: &Input, p: &Prediction, ckpt: &Checkpoint) -> anyhow::Result<()> {
    let mut lines = vec![input.key.rsplit('/').next().unwrap_or(&input.key).to_string()];
    lines.extend((0..N_ATTRS).filter(|&j| label(p, ckpt, j)).map(|j| CELEBA_ATTRIBUTES[j].to_string()));
    if lines.len() == 1 {
        lines.push("(no attribute)".into());
    }
    let png = super::annotate::render(&input.photo, p.landmarks.as_deref(), &lines);
    let mut bytes = Vec::new();
    png.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    let name = format!("{}.png", input.key.replace('/', "__"));
    let path: PathBuf = dir.join(name);
    dmm_data::fsutil::write_atomic(&path, &bytes).with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(to_crop: Option<Similarity>, pre_resize: (usize, usize)) -> Input {
        Input { key: "x".into(), photo: RgbImage::new(1, 1), to_crop, face: None, chw: Vec::new(), hw: (96, 80), pre_resize }
    }

    #[test]
    fn landmarks_map_back_through_resize_and_alignment() {
        // Network input 80×96 resized from a 178×218 crop: x' = (x + ½)·80/178 − ½ in training, so
        // the centre of the input (x̂ = 0.5 → 40 px) is x = 40.5·178/80 − ½ = 89.6125 in the crop.
        let got = to_photo(&[0.5, 0.25], &input(None, (218, 178)), (96, 80));
        assert!((got[0] - 89.6125).abs() < 1e-4 && (got[1] - (24.5 * 218.0 / 96.0 - 0.5)).abs() < 1e-4, "{got:?}");
        // With alignment photo → crop = scale ½ then shift (−10, −20), crop points map back by the inverse.
        let t = Similarity { a: 0.5, b: 0.0, tx: -10.0, ty: -20.0 };
        let aligned = to_photo(&[0.5, 0.25], &input(Some(t), (218, 178)), (96, 80));
        assert!((aligned[0] - (got[0] + 10.0) * 2.0).abs() < 1e-3 && (aligned[1] - (got[1] + 20.0) * 2.0).abs() < 1e-3, "{aligned:?}");
    }

    #[test]
    fn json_numbers_keep_the_order_of_their_f32_values() {
        assert_eq!(short(0.0013333333), 0.0013333333);
        let (a, b) = (0.1f32, f32::from_bits(0.1f32.to_bits() + 1));
        assert!(short(b) > short(a));
        assert_eq!(round2(12.345_678), 12.35);
    }
}
