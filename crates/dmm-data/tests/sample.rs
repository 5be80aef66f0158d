//! End-to-end checks of `dmm-data` on the bundled real sample in `data/` (and, when present, the
//! larger `../shared/data` copy used in development).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use dmm_data::{Dataset, DatasetKind, LandmarkTable, Loader, LoaderConfig, Split, Transform};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn celeba() -> Dataset {
    Dataset::open(DatasetKind::CelebA, &repo().join("data/celeba")).unwrap()
}

fn counts(ds: &Dataset) -> Vec<(Split, usize, usize)> {
    ds.presence().splits.into_iter().map(|(s, c)| (s, c.listed, c.present)).collect()
}

#[test]
fn bundled_celeba_is_complete() {
    let ds = celeba();
    assert_eq!(counts(&ds), [(Split::Train, 280, 280), (Split::Val, 60, 60), (Split::Test, 60, 60)]);
    // Whole identities: no person is in two splits.
    let mut split_of = std::collections::HashMap::new();
    for s in &ds.samples {
        let first = *split_of.entry(s.identity.unwrap()).or_insert(s.split);
        assert_eq!(first, s.split, "identity {:?} spans splits", s.identity);
    }
}

#[test]
fn bundled_lfwa_text_split() {
    let ds = Dataset::open(DatasetKind::Lfwa, &repo().join("data/lfwa")).unwrap();
    assert_eq!(counts(&ds), [(Split::Train, 300, 300), (Split::Test, 100, 100)]);
    assert!(ds.samples.iter().all(|s| s.name.contains('/') && !s.name.contains('\\')));
}

#[cfg(feature = "mat")]
#[test]
fn mat_split_agrees_with_text_split() {
    for root in [repo().join("data/lfwa"), repo().join("../shared/data/lfwa")] {
        if !root.join(dmm_data::lfwa::MAT_SPLIT_FILE).is_file() {
            continue;
        }
        let official = dmm_data::lfwa::read_official(&root).unwrap();
        let text = dmm_data::lfwa::read_text_split(&root.join(dmm_data::lfwa::TEXT_SPLIT_FILE)).unwrap();
        assert_eq!(official, text, "{}", root.display());
    }
}

#[test]
fn shared_data_counts_when_available() {
    let shared = repo().join("../shared/data");
    if !shared.join("celeba/list_attr_celeba.txt").is_file() {
        eprintln!("../shared/data not present; skipping");
        return;
    }
    let ds = Dataset::open(DatasetKind::CelebA, &shared.join("celeba")).unwrap();
    assert_eq!(counts(&ds), [(Split::Train, 162770, 9000), (Split::Val, 19867, 2000), (Split::Test, 19962, 2000)]);
    let ds = Dataset::open(DatasetKind::Lfwa, &shared.join("lfwa")).unwrap();
    assert_eq!(counts(&ds), [(Split::Train, 6263, 6263), (Split::Test, 6880, 2067)]);
}

fn batches(loader: &Loader, epoch: u64, from: usize) -> Vec<dmm_data::Batch> {
    loader.epoch_from(epoch, from).map(Result::unwrap).collect()
}

#[test]
fn loader_covers_every_sample_once_and_is_deterministic() {
    let ds = celeba();
    let mut cfg = LoaderConfig { drop_last: false, ..LoaderConfig::train(64, 42) };
    cfg.transform = Transform { size: Some((64, 52)), ..Default::default() };
    let loader = Loader::new(&ds, Split::Val, cfg.clone()).unwrap();
    assert_eq!((loader.n_samples(), loader.n_batches()), (60, 1));
    let loader = Loader::new(&ds, Split::Train, cfg.clone()).unwrap();
    assert_eq!(loader.n_batches(), 5);
    let e0 = batches(&loader, 0, 0);
    let sizes: Vec<usize> = e0.iter().map(|b| b.len()).collect();
    assert_eq!(sizes, [64, 64, 64, 64, 24], "last partial batch is kept");
    let seen: HashSet<usize> = e0.iter().flat_map(|b| b.indices.iter().copied()).collect();
    assert_eq!(seen.len(), 280);
    let b = &e0[0];
    assert_eq!(b.shape, [64, 3, 64, 52]);
    assert_eq!((b.images.len(), b.labels.len()), (64 * 3 * 64 * 52, 64 * 40));
    assert!(b.labels.iter().all(|&l| l == 1.0 || l == -1.0));

    // Same seed, same epoch: identical batches. Resuming at batch 3 gives the tail.
    assert_eq!(batches(&loader, 0, 0), e0);
    assert_eq!(batches(&loader, 0, 3), e0[3..]);
    // Another epoch reshuffles.
    assert_ne!(batches(&loader, 1, 0)[0].indices, e0[0].indices);
    // drop_last (training's default) drops the partial batch, unless it is the only one.
    assert!(LoaderConfig::train(64, 42).drop_last);
    let dl = Loader::new(&ds, Split::Train, LoaderConfig { drop_last: true, ..cfg.clone() }).unwrap();
    assert_eq!(batches(&dl, 0, 0).len(), 4);
    let small = Loader::new(&ds, Split::Val, LoaderConfig { drop_last: true, ..cfg }).unwrap();
    assert_eq!(batches(&small, 0, 0).iter().map(|b| b.len()).collect::<Vec<_>>(), [60]);
}

#[test]
fn random_flips_mirror_the_unflipped_image() {
    let ds = celeba();
    let eval = Loader::new(&ds, Split::Test, LoaderConfig::eval(60)).unwrap();
    let train = Loader::new(&ds, Split::Test, LoaderConfig { shuffle: false, ..LoaderConfig::train(60, 7) }).unwrap();
    let (plain, aug) = (&batches(&eval, 0, 0)[0], &batches(&train, 0, 0)[0]);
    let [n, c, h, w] = plain.shape;
    let n_flipped = (0..n).filter(|&i| train.flipped(0, i)).count();
    assert!((15..=45).contains(&n_flipped), "about half flipped, got {n_flipped}");
    for i in 0..n {
        let img = |b: &dmm_data::Batch, ch: usize, y: usize, x: usize| b.images[((i * c + ch) * h + y) * w + x];
        let flipped = train.flipped(0, i);
        for (ch, y, x) in [(0, 10, 3), (2, 100, 170), (1, 217, 0)] {
            let src = if flipped { w - 1 - x } else { x };
            assert_eq!(img(aug, ch, y, x), img(plain, ch, y, src));
        }
    }
}

/// A split that fits the cache is decoded and resized once: every later epoch gives exactly the
/// batches of a loader that decodes afresh, pixels and resized, flipped landmarks alike.
#[test]
fn cached_epochs_equal_freshly_decoded_ones() {
    let dir = tempfile::tempdir().unwrap();
    scratch_celeba(dir.path());
    let mut table = LandmarkTable::new(5);
    for s in celeba().split(Split::Val).step_by(3) {
        table.insert(&s.name, vec![60.0, 100.0, 110.0, 100.0, 88.5, 130.0, 70.0, 160.0, 105.0, 160.0]).unwrap();
    }
    table.write(&dir.path().join("landmarks.csv")).unwrap();
    let ds = Dataset::open(DatasetKind::CelebA, dir.path()).unwrap();
    let cfg = LoaderConfig { transform: Transform { size: Some((70, 57)), ..Default::default() }, ..LoaderConfig::train(16, 5) };
    let cached = Loader::new(&ds, Split::Val, cfg.clone()).unwrap();
    let fresh = Loader::new(&ds, Split::Val, cfg.clone()).unwrap().without_cache();
    assert_eq!(cached.cached(), 0);
    for epoch in 0..3 {
        assert_eq!(batches(&cached, epoch, 0), batches(&fresh, epoch, 0), "epoch {epoch}");
    }
    assert_eq!(batches(&cached, 1, 2), batches(&fresh, 1, 2), "resumed mid-epoch");
    assert_eq!(cached.batch_of(&[4, 0]).unwrap(), fresh.batch_of(&[4, 0]).unwrap());
    assert!(cached.cached() > 48, "three epochs of 48 draw most of the 60 images");
    assert_eq!(fresh.cached(), 0);
    // Warming decodes exactly the images not yet held, and changes no batch.
    let (held, ticks) = (cached.cached(), std::sync::atomic::AtomicUsize::new(0));
    let tick = || _ = ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(cached.warm(&tick).unwrap(), cached.n_samples() - held);
    assert_eq!(ticks.into_inner(), cached.n_samples() - held);
    assert_eq!((cached.cached(), cached.warm(&|| ()).unwrap()), (cached.n_samples(), 0));
    assert_eq!(batches(&cached, 3, 0), batches(&fresh, 3, 0), "after warming");
    let warmed = Loader::new(&ds, Split::Val, cfg.clone()).unwrap();
    assert_eq!(warmed.warm(&|| ()).unwrap(), warmed.n_samples());
    assert_eq!(batches(&warmed, 0, 0), batches(&fresh, 0, 0), "warmed before its first epoch");
    assert!(cached.caches() && !fresh.caches());
    assert_eq!(fresh.warm(&|| ()).unwrap(), 0, "a loader without a cache decodes per epoch");
    // Without a resize size, the images are not cached.
    let native = Loader::new(&ds, Split::Val, LoaderConfig::eval(16)).unwrap();
    batches(&native, 0, 0);
    assert_eq!(native.cached(), 0);
}

/// A copy of the bundled CelebA sample's label files whose image folder links to the real one,
/// so tests can add a landmark CSV or break an image without touching `data/`.
fn scratch_celeba(dir: &Path) {
    let src = repo().join("data/celeba");
    for f in ["list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::create_dir(dir.join("img_align_celeba")).unwrap();
    for e in std::fs::read_dir(src.join("img_align_celeba")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join("img_align_celeba").join(e.file_name())).unwrap();
    }
}

#[test]
fn landmarks_csv_is_attached_masked_and_normalized() {
    let dir = tempfile::tempdir().unwrap();
    scratch_celeba(dir.path());
    let base = celeba();
    let val: Vec<_> = base.split(Split::Val).collect();
    let mut table = LandmarkTable::new(5);
    // Landmarks for every other validation image; the rest have no face.
    for s in val.iter().step_by(2) {
        table.insert(&s.name, vec![60.0, 100.0, 110.0, 100.0, 88.5, 130.0, 70.0, 160.0, 105.0, 160.0]).unwrap();
    }
    table.write(&dir.path().join("landmarks.csv")).unwrap();
    let ds = Dataset::open(DatasetKind::CelebA, dir.path()).unwrap();
    assert_eq!(ds.n_points, Some(5));
    let loader = Loader::new(&ds, Split::Val, LoaderConfig::eval(16)).unwrap();
    let b = &batches(&loader, 0, 0)[0];
    assert_eq!((b.n_points, b.landmarks.len(), b.landmark_mask.len()), (5, 16 * 10, 16));
    for (i, &idx) in b.indices.iter().enumerate() {
        let has = idx % 2 == 0;
        assert_eq!(b.landmark_mask[i], if has { 1.0 } else { 0.0 });
        let p = &b.landmarks[i * 10..i * 10 + 10];
        if has {
            assert_eq!(p[0], 60.0 / 178.0);
            assert_eq!(p[1], 100.0 / 218.0);
        } else {
            assert!(p.iter().all(|&v| v == 0.0), "absent landmarks are zeros, masked out");
        }
    }
}

#[test]
fn corrupt_image_stops_the_epoch_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    scratch_celeba(dir.path());
    let ds = Dataset::open(DatasetKind::CelebA, dir.path()).unwrap();
    let victim = ds.split(Split::Test).nth(10).unwrap().name.clone();
    let path = dir.path().join("img_align_celeba").join(&victim);
    let bytes = std::fs::read(&path).unwrap();
    // Cut the last 200 bytes: the scan is nearly complete, which a lenient decoder would accept.
    std::fs::write(&path, &bytes[..bytes.len() - 200]).unwrap();
    let loader = Loader::new(&ds, Split::Test, LoaderConfig::eval(8)).unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    assert!(results[0].is_ok());
    let err = match &results[1] {
        Err(e) => e.to_string(),
        Ok(_) => panic!("the truncated image was decoded"),
    };
    assert!(err.contains(&victim) && err.contains("cannot decode image"), "{err}");
    assert_eq!(results.len(), 2, "the epoch stops at the error");
    // Warming up front names the same image.
    let cfg = LoaderConfig { transform: Transform { size: Some((70, 57)), ..Default::default() }, ..LoaderConfig::eval(8) };
    let err = Loader::new(&ds, Split::Test, cfg).unwrap().warm(&|| ()).unwrap_err().to_string();
    assert!(err.contains(&victim) && err.contains("cannot decode image"), "{err}");
}

#[test]
fn mixed_sizes_without_resize_are_refused() {
    let ds = Dataset::open(DatasetKind::Lfwa, &repo().join("data/lfwa")).unwrap();
    let mut ds2 = celeba();
    // Make a dataset whose test split mixes LFW (250×250) and CelebA (178×218) images.
    let lfw = ds.samples[0].clone();
    ds2.image_dir = repo().join("data");
    for s in &mut ds2.samples {
        s.name = format!("celeba/img_align_celeba/{}", s.name);
    }
    ds2.samples.insert(0, dmm_data::Sample { name: format!("lfwa/lfw/{}", lfw.name), split: Split::Test, ..lfw });
    let loader = Loader::new(&ds2, Split::Test, LoaderConfig::eval(4)).unwrap();
    let err = match loader.epoch(0).next().unwrap() {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a batch of mixed sizes was assembled"),
    };
    assert!(err.contains("but the batch is 250×250; set a resize size"), "{err}");
}
