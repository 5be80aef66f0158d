//! The image pipeline: content sniffing, truncated-JPEG detection, decoding (with the size limit),
//! EXIF orientation, then resize, flip and normalization with landmarks, as training and
//! `dmm predict` run them. Seeds: bundled CelebA and LFW crops and the PNG fixtures.
#![no_main]
mod common;

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(img) = dmm_data::pipeline::decode_bytes(Path::new("fuzz.img"), data) else { return };
    let path = common::file("fuzz.img", data);
    let oriented = dmm_data::pipeline::decode_oriented(&path).expect("what decodes plainly decodes with its orientation");
    assert_eq!(oriented.width() as u64 * oriented.height() as u64, img.width() as u64 * img.height() as u64);
    let points = [0.0, 0.0, img.width() as f32 - 1.0, img.height() as f32 - 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    for size in [None, Some((40, 32))] {
        let t = dmm_data::Transform { size, ..Default::default() };
        let out = t.apply(&img, Some(&points), true).expect("5 points flip");
        assert_eq!(out.chw.len(), 3 * out.height * out.width);
        assert!(out.chw.iter().all(|v| v.is_finite()));
    }
});
