//! Throughput of the data pipeline: decode + flip + normalize + batch, through the real loader, on
//! real CelebA images. Uses `../shared/data/celeba` when present (13,000 images), else the bundled
//! sample, or the root in `DMM_BENCH_CELEBA`. Prints images/s; not a test.
//!
//! Run: `cargo bench -p dmm-data --bench pipeline`

use std::path::{Path, PathBuf};
use std::time::Instant;

use dmm_data::{Dataset, DatasetKind, Loader, LoaderConfig, Split};

fn root() -> PathBuf {
    if let Ok(r) = std::env::var("DMM_BENCH_CELEBA") {
        return PathBuf::from(r);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shared = repo.join("../shared/data/celeba");
    if shared.join("list_attr_celeba.txt").is_file() { shared } else { repo.join("data/celeba") }
}

fn main() {
    let root = root();
    let mut ds = Dataset::open(DatasetKind::CelebA, &root).expect("opening the CelebA root");
    ds.retain_present(false).expect("listing present images");
    let threads = rayon::current_num_threads();
    println!("data pipeline benchmark: {} ({} present images), {threads} rayon threads", root.display(), ds.samples.len());
    println!("{:<34} {:>8} {:>10} {:>10}", "case", "images", "seconds", "images/s");
    for (label, size, batch) in [
        ("train 218x178 native, batch 64", None, 64),
        ("train resize 112x112, batch 64", Some((112, 112)), 64),
    ] {
        let mut cfg = LoaderConfig::train(batch, 1);
        cfg.transform.size = size;
        let loader = Loader::new(&ds, Split::Train, cfg).expect("building the loader");
        // Warm the page cache with one pass so disk speed does not decide the figure.
        let warm: usize = loader.epoch(99).map(|b| b.expect("decoding").len()).sum();
        let start = Instant::now();
        let mut n = 0;
        for b in loader.epoch(0) {
            n += b.expect("decoding").len();
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(n, warm);
        println!("{label:<34} {n:>8} {secs:>10.2} {:>10.0}", n as f64 / secs);
    }
}
