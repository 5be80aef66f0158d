//! Full-model checkpoints: every variable of the network in one safetensors file, with metadata
//! (variant, width, T, attribute order, groups, thresholds, input normalization) under the
//! `dmm` key of the safetensors header, so prediction needs nothing else.
//!
//! Writing goes to a temporary file beside the target, then a rename: a crash never leaves a
//! truncated checkpoint under the real name. Every file written here carries a CRC-32 of its own
//! bytes under [`CHECKSUM_KEY`], and every read checks it: a bit flipped on disk or a cut-off copy
//! is refused ("checksum mismatch"), never loaded. Files without one (weights from the Hub) load
//! as they are.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use dmm_core::{Normalization, CELEBA_ATTRIBUTES, N_ATTRS};

use crate::model::{DmmModel, ModelConfig};
use crate::{Error, Result};

/// Metadata key in the safetensors header.
pub const METADATA_KEY: &str = "dmm";
/// Name prefix of tensors that are not model variables (a trainer's optimizer state); [`load`]
/// skips them.
pub const EXTRA_PREFIX: &str = "extra.";
/// Metadata key of the file's CRC-32: eight hex digits, computed over the whole file with those
/// digits written as [`CHECKSUM_PLACEHOLDER`].
pub const CHECKSUM_KEY: &str = "dmm_crc32";
const CHECKSUM_PLACEHOLDER: &[u8; 8] = b"00000000";

/// Version of the layout. 2: the SPP heads start with batch norm (`<head>.bn.*`); format 1
/// networks lack those variables and cannot be loaded into today's heads.
pub const FORMAT_VERSION: u32 = 2;

/// Everything besides the weights that prediction needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// The network's configuration.
    pub model: ModelConfig,
    /// Attribute names in output order (CelebA's).
    pub attributes: Vec<String>,
    /// Decision thresholds τ, one per attribute: predict "yes" when `score > τ`.
    pub thresholds: Vec<f32>,
    /// Pixel normalization the network was trained with.
    pub normalization: Normalization,
    /// Resize `(height, width)` applied in training, if any (`None`: native size).
    pub input_size: Option<(usize, usize)>,
}

impl CheckpointMeta {
    /// Metadata for `model` with thresholds 0 and ImageNet normalization at native size.
    pub fn new(model: ModelConfig) -> Self {
        Self {
            format: FORMAT_VERSION,
            model,
            attributes: CELEBA_ATTRIBUTES.iter().map(|s| s.to_string()).collect(),
            thresholds: vec![0.0; N_ATTRS],
            normalization: Normalization::IMAGENET,
            input_size: None,
        }
    }
}

/// A loaded checkpoint: the network, its variables and metadata.
pub struct Checkpoint {
    /// The network.
    pub model: DmmModel,
    /// Its variables (to continue training or save again).
    pub varmap: VarMap,
    /// The metadata.
    pub meta: CheckpointMeta,
}

/// Writes all variables of `varmap` and `meta` to `path` atomically.
pub fn save(path: &Path, varmap: &VarMap, meta: &CheckpointMeta) -> Result<()> {
    save_with_extra(path, varmap, meta, Vec::new(), HashMap::new())
}

/// [`save`] with every variable stored as `dtype` (F16 halves the file of a model that ships;
/// [`load`] widens any float type back to F32).
pub fn save_as(path: &Path, varmap: &VarMap, meta: &CheckpointMeta, dtype: DType) -> Result<()> {
    let tensors = variables(varmap).into_iter().map(|(k, t)| Ok((k, t.to_dtype(dtype)?))).collect::<Result<Vec<_>>>()?;
    write_checkpoint(path, tensors, meta, HashMap::new())
}

/// [`save`] plus extra tensors (stored as `extra.<name>`) and extra metadata entries, in the same
/// atomic write: a trainer's resume point is one file, never a model from one step and optimizer
/// state from another.
pub fn save_with_extra(
    path: &Path,
    varmap: &VarMap,
    meta: &CheckpointMeta,
    extra: Vec<(String, Tensor)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut tensors = variables(varmap);
    tensors.extend(extra.into_iter().map(|(k, t)| (format!("{EXTRA_PREFIX}{k}"), t)));
    write_checkpoint(path, tensors, meta, metadata)
}

fn variables(varmap: &VarMap) -> Vec<(String, Tensor)> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
}

/// Writes `tensors` in name order with `meta` under [`METADATA_KEY`], atomically.
fn write_checkpoint(path: &Path, mut tensors: Vec<(String, Tensor)>, meta: &CheckpointMeta, mut metadata: HashMap<String, String>) -> Result<()> {
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let json = serde_json::to_string(meta).map_err(|e| Error::format(path, e.to_string()))?;
    metadata.insert(METADATA_KEY.to_string(), json);
    write_atomic(path, &tensors, Some(metadata))
}

/// Reads one metadata entry of a safetensors header (`None` if absent).
pub fn read_metadata_entry(path: &Path, key: &str) -> Result<Option<String>> {
    Ok(metadata_entry(&read_header(path)?, key).map(str::to_string))
}

/// One entry of the `__metadata__` map of a parsed safetensors header.
fn metadata_entry<'a>(header: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    header.get("__metadata__").and_then(|m| m.get(key)).and_then(|v| v.as_str())
}

/// Reads the tensors stored with [`save_with_extra`], without their prefix.
pub fn read_extra(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let tensors = crate::weights::read_safetensors(path, device)?;
    Ok(tensors.into_iter().filter_map(|(k, t)| k.strip_prefix(EXTRA_PREFIX).map(|k| (k.to_string(), t))).collect())
}

fn read_header(path: &Path) -> Result<serde_json::Value> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    parse_header(f, path)
}

/// The JSON header of the safetensors bytes read from `reader` (`origin` names them in errors).
fn parse_header(mut reader: impl std::io::Read, origin: &Path) -> Result<serde_json::Value> {
    let mut len = [0u8; 8];
    reader.read_exact(&mut len).map_err(|_| Error::format(origin, "too short for a safetensors file"))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(Error::format(origin, format!("safetensors header of {len} bytes is implausible")));
    }
    let mut header = vec![0u8; len as usize];
    reader.read_exact(&mut header).map_err(|_| Error::format(origin, "truncated safetensors header"))?;
    serde_json::from_slice(&header).map_err(|e| Error::format(origin, format!("safetensors header is not JSON: {e}")))
}

/// Writes named tensors as safetensors with their checksum, atomically (temporary file + rename).
pub fn write_atomic(path: &Path, tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let contiguous = tensors
        .iter()
        .map(|(k, t)| Ok((k.as_str(), t.contiguous()?)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut metadata = metadata.unwrap_or_default();
    metadata.insert(CHECKSUM_KEY.to_string(), String::from_utf8_lossy(CHECKSUM_PLACEHOLDER).into_owned());
    let mut bytes = safetensors::serialize(contiguous.iter().map(|(k, t)| (*k, t)), Some(metadata.clone()))
        .map_err(|e| Error::format(path, format!("cannot serialize safetensors: {e}")))?;
    sort_metadata(&mut bytes, &metadata).ok_or_else(|| Error::format(path, "the serialized header does not start with its metadata"))?;
    let span = checksum_span(&bytes).ok_or_else(|| Error::format(path, "the serialized header lost its checksum entry"))?;
    let crc = crc32fast::hash(&bytes);
    bytes[span].copy_from_slice(format!("{crc:08x}").as_bytes());
    dmm_core::fsutil::write_atomic(path, &bytes).map_err(|e| Error::io(path, e))
}

/// Rewrites the `__metadata__` map that opens a serialized safetensors header in key order.
/// safetensors writes it in `HashMap` order, which differs from process to process, so without this
/// the same weights written by a run and by its killed-and-resumed twin would differ in their bytes.
/// The sorted map has the same length, so every offset stands.
fn sort_metadata(bytes: &mut [u8], metadata: &HashMap<String, String>) -> Option<()> {
    const OPENING: &[u8] = b"{\"__metadata__\":";
    let sorted = serde_json::to_string(&metadata.iter().collect::<std::collections::BTreeMap<_, _>>()).ok()?;
    let start = 8 + OPENING.len();
    if bytes.get(8..start)? != OPENING {
        return None;
    }
    let slot = bytes.get_mut(start..start + sorted.len())?;
    let written: HashMap<String, String> = serde_json::from_slice(slot).ok()?;
    (written == *metadata).then(|| slot.copy_from_slice(sorted.as_bytes()))
}

/// Where the checksum's eight digits sit in a safetensors file, if its header has one. Inside the
/// header's JSON, metadata values are escaped strings, so the quoted key followed by `":"` occurs
/// only as the key itself.
fn checksum_span(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    let needle = format!("\"{CHECKSUM_KEY}\":\"");
    let at = header.windows(needle.len()).position(|w| w == needle.as_bytes())?;
    let start = 8 + at + needle.len();
    let end = start + CHECKSUM_PLACEHOLDER.len();
    (end < 8 + len && bytes[end] == b'"').then_some(start..end)
}

/// Refuses `bytes` whose stored checksum does not match them; files without one pass.
pub(crate) fn verify(bytes: &[u8], origin: &Path) -> Result<()> {
    let Some(span) = checksum_span(bytes) else { return Ok(()) };
    let stored = std::str::from_utf8(&bytes[span.clone()]).ok().and_then(|s| u32::from_str_radix(s, 16).ok());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..span.start]);
    hasher.update(CHECKSUM_PLACEHOLDER);
    hasher.update(&bytes[span.end..]);
    let actual = hasher.finalize();
    if stored == Some(actual) {
        return Ok(());
    }
    Err(Error::format(
        origin,
        format!(
            "checksum mismatch: the file is damaged or cut short (stored crc32 {}, computed {actual:08x}); copy or write it again",
            String::from_utf8_lossy(&bytes[span])
        ),
    ))
}

/// Reads only the metadata of a checkpoint (`None` for a plain weight file without it).
pub fn read_meta(path: &Path) -> Result<Option<CheckpointMeta>> {
    meta_from_header(&read_header(path)?, path)
}

/// The checkpoint metadata in a parsed safetensors header, validated.
fn meta_from_header(header: &serde_json::Value, path: &Path) -> Result<Option<CheckpointMeta>> {
    let Some(json) = metadata_entry(header, METADATA_KEY) else {
        return Ok(None);
    };
    let meta: CheckpointMeta =
        serde_json::from_str(json).map_err(|e| Error::format(path, format!("invalid dmm metadata: {e}")))?;
    if meta.format != FORMAT_VERSION {
        return Err(Error::format(path, format!(
            "checkpoint format {} is not supported (expected {FORMAT_VERSION}; format 1 heads had no batch norm: retrain with this dmm)",
            meta.format
        )));
    }
    if meta.thresholds.len() != meta.attributes.len() {
        return Err(Error::format(path, format!("{} thresholds for {} attributes", meta.thresholds.len(), meta.attributes.len())));
    }
    Ok(Some(meta))
}

/// Loads a checkpoint written by [`save`]: rebuilds the network from the metadata and sets every
/// variable, refusing a file with missing, extra or mis-shaped tensors.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_bytes(&bytes, path, device)
}

/// [`load`] from the bytes of a checkpoint file (a model built into a binary); `origin` names it
/// in errors.
pub fn load_bytes(bytes: &[u8], origin: &Path, device: &Device) -> Result<Checkpoint> {
    verify(bytes, origin)?;
    let meta = meta_from_header(&parse_header(bytes, origin)?, origin)?.ok_or_else(|| not_a_checkpoint(origin))?;
    let tensors = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| Error::format(origin, format!("not a readable safetensors file: {e}")))?;
    build(meta, tensors, origin, device)
}

fn not_a_checkpoint(path: &Path) -> Error {
    Error::format(path, "not a dmm checkpoint (no `dmm` metadata); for trunk weights use --weights")
}

/// The network of `meta` with every variable set from `tensors`.
fn build(meta: CheckpointMeta, tensors: HashMap<String, Tensor>, path: &Path, device: &Device) -> Result<Checkpoint> {
    let (model, varmap) = DmmModel::fresh(&meta.model, device)?;
    let data = varmap.data().lock().expect("varmap lock");
    let mut problems = Vec::new();
    for (name, var) in data.iter() {
        match tensors.get(name) {
            None => problems.push(format!("missing {name}")),
            Some(t) if t.dims() != var.dims() => problems.push(format!("{name} is {:?}, expected {:?}", t.dims(), var.dims())),
            Some(t) => var.set(&t.to_dtype(DType::F32)?)?,
        }
    }
    problems.extend(
        tensors.keys().filter(|k| !data.contains_key(*k) && !k.starts_with(EXTRA_PREFIX)).map(|k| format!("unexpected {k}")),
    );
    drop(data);
    if !problems.is_empty() {
        problems.sort();
        return Err(Error::Mismatch { path: path.to_path_buf(), details: problems.join(", ") });
    }
    Ok(Checkpoint { model, varmap, meta })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Variant;

    /// DMM-CNN at width 2 with 5 landmarks: every head, in a few kilobytes.
    fn tiny() -> ModelConfig {
        ModelConfig { variant: Variant::DmmCnn, width: 2, n_points: 5, ..ModelConfig::paper() }
    }

    #[test]
    fn round_trip_keeps_weights_and_metadata() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let cfg = tiny();
        let (model, varmap) = DmmModel::fresh(&cfg, &Device::Cpu)?;
        let mut meta = CheckpointMeta::new(cfg);
        meta.thresholds[3] = 0.25;
        save(&path, &varmap, &meta)?;
        let back = load(&path, &Device::Cpu)?;
        assert_eq!(back.meta, meta);
        let xs = Tensor::randn(0f32, 1., (1, 3, 40, 36), &Device::Cpu)?;
        let (a, b) = (model.forward_t(&xs, false)?, back.model.forward_t(&xs, false)?);
        let diff = (a.attributes - b.attributes)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        Ok(())
    }

    /// A half-precision copy loads from a file or from memory, the same network, with weights
    /// rounded to f16 and nothing else changed.
    #[test]
    fn an_f16_copy_loads_from_file_and_bytes() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let (f32_path, f16_path) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
        let cfg = tiny();
        let (_, varmap) = DmmModel::fresh(&cfg, &Device::Cpu)?;
        let meta = CheckpointMeta::new(cfg);
        save(&f32_path, &varmap, &meta)?;
        save_as(&f16_path, &varmap, &meta, DType::F16)?;
        let (full, half) = (std::fs::metadata(&f32_path).unwrap().len(), std::fs::metadata(&f16_path).unwrap().len());
        assert!(half * 10 < full * 6, "f16 file {half} bytes against f32 {full}");
        let bytes = std::fs::read(&f16_path).unwrap();
        for back in [load(&f16_path, &Device::Cpu)?, load_bytes(&bytes, &f16_path, &Device::Cpu)?] {
            assert_eq!(back.meta, meta);
            let data = varmap.data().lock().unwrap();
            let loaded = back.varmap.data().lock().unwrap();
            for (name, var) in data.iter() {
                let want = var.as_tensor().to_dtype(DType::F16)?.to_dtype(DType::F32)?;
                let diff = (loaded[name].as_tensor() - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert_eq!(diff, 0.0, "{name}");
            }
        }
        let err = load_bytes(&bytes[..bytes.len() / 2], Path::new("cut.safetensors"), &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("cut.safetensors"), "{err}");
        Ok(())
    }

    /// Any flipped bit (in the tensor data, the metadata or the checksum itself) and any cut are
    /// refused by every reader; a file written without a checksum still loads.
    #[test]
    fn damaged_files_are_refused_and_files_without_a_checksum_load() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let cfg = tiny();
        let (_, varmap) = DmmModel::fresh(&cfg, &Device::Cpu)?;
        save(&path, &varmap, &CheckpointMeta::new(cfg.clone()))?;
        let good = std::fs::read(&path).unwrap();
        let span = checksum_span(&good).expect("a checksum");
        let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        // A digit of τ inside the metadata: flipping bit 0 gives another valid number.
        let thresholds = good.windows(10).position(|w| w == b"thresholds").unwrap() + 14;
        assert_eq!(good[thresholds], b'0');
        for (what, at) in [("tensor data", good.len() - 5), ("first tensor byte", header_end), ("checksum", span.start + 3), ("metadata", thresholds)] {
            for bit in [0, 7] {
                let mut bad = good.clone();
                bad[at] ^= 1 << bit;
                let damaged = dir.path().join("damaged.safetensors");
                std::fs::write(&damaged, &bad).unwrap();
                for err in [
                    load(&damaged, &Device::Cpu).err(),
                    load_bytes(&bad, &damaged, &Device::Cpu).err(),
                    crate::weights::read_safetensors(&damaged, &Device::Cpu).err(),
                ] {
                    let err = err.unwrap_or_else(|| panic!("a flipped bit {bit} in the {what} was loaded")).to_string();
                    assert!(err.contains("damaged.safetensors: checksum mismatch"), "{what}: {err}");
                }
            }
        }
        for cut in [good.len() - 1, header_end + 1] {
            let err = load_bytes(&good[..cut], Path::new("cut.safetensors"), &Device::Cpu).err().unwrap().to_string();
            assert!(err.contains("cut.safetensors: checksum mismatch"), "{err}");
        }
        // Without the checksum entry (as safetensors writers other than dmm leave it).
        let tensors = read_safetensors_unchecked(&good);
        let meta = HashMap::from([(METADATA_KEY.to_string(), serde_json::to_string(&CheckpointMeta::new(cfg)).unwrap())]);
        let plain = safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(meta)).unwrap();
        assert!(checksum_span(&plain).is_none());
        load_bytes(&plain, Path::new("plain.safetensors"), &Device::Cpu)?;
        Ok(())
    }

    fn read_safetensors_unchecked(bytes: &[u8]) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).unwrap().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The same tensors and metadata give the same bytes, whatever order the metadata map iterates
    /// in (each `HashMap` hashes with its own keys), with the metadata keys in sorted order.
    #[test]
    fn the_same_checkpoint_is_the_same_bytes() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let tensors = [("w".to_string(), Tensor::arange(0f32, 6., &Device::Cpu)?)];
        let keys: Vec<String> = (0..16).map(|i| format!("key{i:02}")).collect();
        let mut seen = Vec::new();
        for _ in 0..8 {
            let metadata: HashMap<String, String> = keys.iter().map(|k| (k.clone(), format!("value of {k}"))).collect();
            write_atomic(&path, &tensors, Some(metadata))?;
            seen.push(std::fs::read(&path).unwrap());
        }
        assert!(seen.iter().all(|b| *b == seen[0]), "the bytes differ between writes");
        let text = String::from_utf8_lossy(&seen[0]);
        let at: Vec<usize> = keys.iter().map(|k| text.find(&format!("\"{k}\"")).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "metadata keys are not in order: {text}");
        verify(&seen[0], &path)?;
        Ok(())
    }

    #[test]
    fn plain_weights_are_not_a_checkpoint() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        write_atomic(&path, &[("conv1.weight".into(), Tensor::zeros((2, 3, 7, 7), DType::F32, &Device::Cpu)?)], None)?;
        assert_eq!(read_meta(&path)?, None);
        let err = load(&path, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("not a dmm checkpoint"), "{err}");
        Ok(())
    }
}
