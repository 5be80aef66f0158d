//! The batch loader: a fixed list of samples, iterated by epoch in a seeded order, decoded in
//! parallel with rayon on a producer thread that stays up to `prefetch` batches ahead, so training
//! never waits on disk.
//!
//! Determinism: the order of epoch `e` and the flip of each sample depend only on `(seed, e,
//! sample)`, never on thread timing, so a run resumed at batch `k` of epoch `e`
//! ([`Loader::epoch_from`]) sees exactly the batches an uninterrupted run would.
//!
//! Caching: when the split's images, resized, fit in [`CACHE_BYTES`], each is decoded and resized
//! once and kept; later epochs only flip and normalize it. The batches are the same either way
//! (the cached image is the one the pipeline would make again). [`Loader::warm`] fills the cache
//! up front, so that no epoch decodes beside the training on the same cores. PyTorch's reference
//! script (`bench/torch_train.py`) likewise decodes its images once, before training.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::attrs::N_ATTRS;
use crate::pipeline::{decode, Prepared, Transform};
use dmm_core::{mix, SplitMix64};
use crate::{Dataset, Error, Result, Split};

/// How batches are formed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Shuffle the order every epoch (training); otherwise list order (evaluation).
    pub shuffle: bool,
    /// Flip each image horizontally with probability ½ (training augmentation).
    pub random_flip: bool,
    /// Drop the last batch when it is smaller than `batch_size` and at least one full batch
    /// exists; otherwise yield it. Training drops it: a batch of a few images gives batch norm
    /// noisy statistics, and its running averages then move the evaluation's scores.
    pub drop_last: bool,
    /// Seed of the shuffle and flip decisions.
    pub seed: u64,
    /// How many finished batches may wait in the queue.
    pub prefetch: usize,
    /// Resize and normalization.
    pub transform: Transform,
}

impl LoaderConfig {
    /// Training defaults: shuffled, random flips, last partial batch dropped (another shuffle
    /// draws other images into it next epoch), 4 batches of prefetch.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        Self { batch_size, shuffle: true, random_flip: true, drop_last: true, seed, prefetch: 4, transform: Transform::default() }
    }

    /// Evaluation defaults: list order, no augmentation, every sample exactly once.
    pub fn eval(batch_size: usize) -> Self {
        Self { shuffle: false, random_flip: false, drop_last: false, ..Self::train(batch_size, 0) }
    }
}

/// One batch, as flat row-major buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[b, 3, h, w]` normalized pixels.
    pub images: Vec<f32>,
    /// `[b, 3, h, w]`.
    pub shape: [usize; 4],
    /// `[b, 40]` targets, ±1, CelebA order.
    pub labels: Vec<f32>,
    /// `[b, 2T]` landmark targets normalized to [0, 1] (`x / w`, `y / h`); zeros where absent.
    /// Empty when the dataset has no landmarks.
    pub landmarks: Vec<f32>,
    /// `[b]`: 1 where the image has landmarks, 0 where it has none (mask for the landmark loss).
    pub landmark_mask: Vec<f32>,
    /// Points per face, T (0 without landmarks).
    pub n_points: usize,
    /// Position of each image in the loader's sample list ([`Loader::name`]).
    pub indices: Vec<usize>,
}

impl Batch {
    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// True for a batch without images (never produced by the loader).
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }
}

/// The most memory a loader spends on keeping its split's resized images (RGB, one byte per
/// value). A split that needs more is decoded afresh every epoch. 1 GiB holds about 36,900
/// images at `subset`'s 109×89 (its 9,000 training images take 262 MB), and 9,200 at CelebA's
/// native 218×178 (which is not resized, so not cached: only resized splits are).
pub const CACHE_BYTES: usize = 1 << 30;

struct Item {
    name: String,
    path: PathBuf,
    labels: [i8; N_ATTRS],
    landmarks: Option<Vec<f32>>,
}

/// A decoded image at the loader's size, and the size it was decoded at (which its landmarks
/// refer to).
struct Resized {
    img: image::RgbImage,
    from: (usize, usize),
}

/// One slot per sample, filled on first use; `None` where the split does not fit [`CACHE_BYTES`].
type Cache = Option<Arc<Vec<OnceLock<Resized>>>>;

/// Batches over one split of a dataset.
pub struct Loader {
    items: Arc<Vec<Item>>,
    config: LoaderConfig,
    n_points: usize,
    cache: Cache,
}

impl Loader {
    /// A loader over the samples of `split` (in list order before shuffling). Call
    /// [`Dataset::retain_present`] first if the image folder may be partial.
    pub fn new(dataset: &Dataset, split: Split, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        let items: Vec<Item> = dataset
            .split(split)
            .map(|s| Item {
                name: s.name.clone(),
                path: dataset.image_path(s),
                labels: s.labels,
                landmarks: s.landmarks.clone(),
            })
            .collect();
        if items.is_empty() {
            return Err(Error::Config(format!("{} has no {split} images", dataset.root.display())));
        }
        let n_points = if items.iter().any(|i| i.landmarks.is_some()) { dataset.n_points.unwrap_or(0) } else { 0 };
        if config.random_flip && n_points > 0 && crate::pipeline::flip_permutation(n_points).is_none() {
            return Err(Error::Config(format!(
                "random flips need a mirror map for {n_points} landmarks (68 and 5 are known); turn flips off"
            )));
        }
        let cache_bytes = config.transform.size.map_or(usize::MAX, |(h, w)| items.len().saturating_mul(3 * h * w));
        let cache = (cache_bytes <= CACHE_BYTES).then(|| Arc::new((0..items.len()).map(|_| OnceLock::new()).collect()));
        Ok(Self { items: Arc::new(items), config, n_points, cache })
    }

    /// This loader, decoding every image afresh each time: for a single pass (`dmm eval`), where
    /// keeping the images would only take memory.
    pub fn without_cache(self) -> Self {
        Self { cache: None, ..self }
    }

    /// Whether this loader keeps its resized images (its split fits [`CACHE_BYTES`]).
    pub fn caches(&self) -> bool {
        self.cache.is_some()
    }

    /// How many samples' resized images are held (0 when the split does not fit [`CACHE_BYTES`]).
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.iter().filter(|s| s.get().is_some()).count())
    }

    /// Decodes and resizes every sample not yet held into the cache, in parallel, calling `tick`
    /// after each; returns how many it decoded (0 when the split does not fit [`CACHE_BYTES`],
    /// which leaves decoding to the epochs). The first unreadable image is the error.
    pub fn warm(&self, tick: &(dyn Fn() + Sync)) -> Result<usize> {
        let Some(cache) = &self.cache else { return Ok(0) };
        let transform = &self.config.transform;
        self.items
            .par_iter()
            .zip(cache.par_iter())
            .filter(|(_, slot)| slot.get().is_none())
            .map(|(item, slot)| {
                let r = load(item, transform)?;
                slot.get_or_init(|| r);
                tick();
                Ok(1)
            })
            .sum()
    }

    /// Samples in the loader.
    pub fn n_samples(&self) -> usize {
        self.items.len()
    }

    /// Batches per epoch.
    pub fn n_batches(&self) -> usize {
        let (n, b) = (self.items.len(), self.config.batch_size);
        if self.config.drop_last && n >= b { n / b } else { n.div_ceil(b) }
    }

    /// Image name (relative path) of sample `index` (see [`Batch::indices`]).
    pub fn name(&self, index: usize) -> &str {
        &self.items[index].name
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The sample order of epoch `epoch` (0-based).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        if self.config.shuffle {
            SplitMix64::new(self.config.seed ^ mix(epoch.wrapping_add(1))).shuffle(&mut order);
        }
        order
    }

    /// Whether sample `index` is flipped in epoch `epoch`.
    pub fn flipped(&self, epoch: u64, index: usize) -> bool {
        self.config.random_flip && mix(self.config.seed ^ mix(epoch.wrapping_add(1)) ^ mix(index as u64 + 0x5EED)) & 1 == 1
    }

    /// Decodes the samples at `indices` (positions in this loader) as one batch, unflipped, on
    /// the calling thread's rayon pool (for small ad-hoc batches such as AW's validation batch).
    pub fn batch_of(&self, indices: &[usize]) -> Result<Batch> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.items.len()) {
            return Err(Error::Config(format!("sample index {bad} is out of range (0..{})", self.items.len())));
        }
        if indices.is_empty() {
            return Err(Error::Config("a batch needs at least one sample".into()));
        }
        assemble(&self.items, &self.cache, indices.to_vec(), &vec![false; indices.len()], &self.config.transform, self.n_points)
    }

    /// Iterates the batches of epoch `epoch`.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// Iterates the batches of epoch `epoch` starting at batch `first_batch` (for resuming); the
    /// skipped batches are not decoded.
    pub fn epoch_from(&self, epoch: u64, first_batch: usize) -> EpochIter {
        let order = self.order(epoch);
        let b = self.config.batch_size;
        let batches: Vec<Vec<usize>> = order.chunks(b).take(self.n_batches()).skip(first_batch).map(<[usize]>::to_vec).collect();
        let flips: Vec<Vec<bool>> = batches.iter().map(|ix| ix.iter().map(|&i| self.flipped(epoch, i)).collect()).collect();
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let items = Arc::clone(&self.items);
        let cache = self.cache.clone();
        let transform = self.config.transform;
        let n_points = self.n_points;
        let producer = std::thread::Builder::new()
            .name("dmm-loader".into())
            .spawn(move || {
                for (indices, flips) in batches.into_iter().zip(flips) {
                    let batch = assemble(&items, &cache, indices, &flips, &transform, n_points);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawning the loader thread");
        EpochIter { rx: Some(rx), producer: Some(producer) }
    }
}

/// One sample through the pipeline: decoded and resized (or taken from its cache `slot`), then
/// flipped and normalized.
fn prepare(item: &Item, slot: Option<&OnceLock<Resized>>, transform: &Transform, flip: bool) -> Result<Prepared> {
    let fresh;
    let resized = match slot {
        Some(slot) => match slot.get() {
            Some(r) => r,
            None => {
                let r = load(item, transform)?;
                slot.get_or_init(|| r)
            }
        },
        None => {
            fresh = load(item, transform)?;
            &fresh
        }
    };
    transform.apply_resized(&resized.img, resized.from, item.landmarks.as_deref(), flip)
}

/// One sample decoded and resized, as the cache keeps it.
fn load(item: &Item, transform: &Transform) -> Result<Resized> {
    let img = decode(&item.path)?;
    let from = (img.height() as usize, img.width() as usize);
    Ok(Resized { img: transform.resize(&img)?.unwrap_or(img), from })
}

/// Decodes (or takes from `cache`) and stacks one batch (images in parallel).
fn assemble(items: &[Item], cache: &Cache, indices: Vec<usize>, flips: &[bool], transform: &Transform, n_points: usize) -> Result<Batch> {
    let prepared = indices
        .par_iter()
        .zip(flips)
        .map(|(&i, &flip)| prepare(&items[i], cache.as_ref().map(|c| &c[i]), transform, flip))
        .collect::<Result<Vec<_>>>()?;
    let (h, w) = (prepared[0].height, prepared[0].width);
    let b = indices.len();
    let mut batch = Batch {
        images: Vec::with_capacity(b * 3 * h * w),
        shape: [b, 3, h, w],
        labels: Vec::with_capacity(b * N_ATTRS),
        landmarks: Vec::with_capacity(b * 2 * n_points),
        landmark_mask: Vec::with_capacity(b),
        n_points,
        indices,
    };
    for (p, &i) in prepared.into_iter().zip(&batch.indices) {
        let item = &items[i];
        if (p.height, p.width) != (h, w) {
            return Err(Error::Config(format!(
                "{}: image is {}×{} but the batch is {h}×{w}; set a resize size to mix image sizes",
                item.path.display(), p.height, p.width
            )));
        }
        batch.images.extend_from_slice(&p.chw);
        batch.labels.extend(item.labels.iter().map(|&l| l as f32));
        if n_points > 0 {
            match p.landmarks {
                Some(points) => {
                    batch.landmarks.extend(points.chunks_exact(2).flat_map(|q| [q[0] / w as f32, q[1] / h as f32]));
                    batch.landmark_mask.push(1.0);
                }
                None => {
                    batch.landmarks.resize(batch.landmarks.len() + 2 * n_points, 0.0);
                    batch.landmark_mask.push(0.0);
                }
            }
        } else {
            batch.landmark_mask.push(0.0);
        }
    }
    Ok(batch)
}

/// The batches of one epoch. Dropping it stops the producer after at most one batch.
pub struct EpochIter {
    rx: Option<Receiver<Result<Batch>>>,
    producer: Option<JoinHandle<()>>,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Close the channel first so a blocked producer wakes up, then wait for it.
        drop(self.rx.take());
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}
