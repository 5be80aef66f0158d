//! The resize step gives the pixels PyTorch's training reference (`bench/torch_train.py`) feeds its
//! network: bilinear over pixel centres, antialiased when shrinking (`F.interpolate(...,
//! antialias=True)`), so that the two train on the same images. The reference is
//! `tests/fixtures/make_resize_fixture.py` (random noise at CelebA's 218×178, where any difference
//! of filter shows).

use std::path::{Path, PathBuf};

use dmm_data::pipeline::decode;
use dmm_data::Transform;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn resizing_matches_pytorch_antialiased_bilinear() {
    let src = decode(&fixture("resize_source.png")).unwrap();
    for (h, w) in [(109, 89), (96, 80), (64, 48)] {
        let want = decode(&fixture(&format!("resize_{h}x{w}.png"))).unwrap();
        let transform = Transform { size: Some((h, w)), ..Transform::default() };
        let got = transform.resize(&src).unwrap().expect("a new size resizes");
        assert_eq!((got.height(), got.width()), (h as u32, w as u32));
        let diffs: Vec<i32> = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
        let (max, mean) = (*diffs.iter().max().unwrap(), diffs.iter().sum::<i32>() as f64 / diffs.len() as f64);
        eprintln!("{h}×{w}: largest difference {max} levels, mean {mean:.3}");
        // Rounding alone: the two accumulate the same weights in different orders and precisions.
        assert!(max <= 1 && mean < 0.05, "{h}×{w}: {max} levels at most, {mean:.3} on average, from PyTorch's pixels");
    }
}
