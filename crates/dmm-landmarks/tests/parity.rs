//! Parity with Python's dlib (`tests/fixtures/make_fixture.py`): on the same pixels, the same
//! faces are found (or not) and every point agrees within 0.5 px. Needs the `dlib` feature.
#![cfg(feature = "dlib")]

use std::path::{Path, PathBuf};

use dmm_data::LandmarkTable;
use dmm_landmarks::{Dlib, DEFAULT_PREDICTOR};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn points_match_python_dlib() {
    let reference = LandmarkTable::read(&fixtures().join("python_dlib.csv")).unwrap();
    let mut dlib = Dlib::new(Path::new(DEFAULT_PREDICTOR)).unwrap();
    for name in ["000130.png", "000318.png", "002487.png", "Aaron_Eckhart_0001.png"] {
        let img = dmm_data::pipeline::decode(&fixtures().join(name)).unwrap();
        let face = dlib.landmarks(&img, 1).unwrap();
        match (reference.get(name), face) {
            (None, None) => {}
            (Some(expected), Some(face)) => {
                let worst = expected.iter().zip(&face.points).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                eprintln!("{name}: worst coordinate difference {worst} px, box {:?}, first points {:?} vs {:?}", face.bbox, &face.points[..6], &expected[..6]);
                assert!(worst <= 0.5, "{name}: {worst} px");
            }
            (e, f) => panic!("{name}: python found a face: {}, we found one: {}", e.is_some(), f.is_some()),
        }
    }
}

/// The JPEGs the fixtures were made from, decoded as `dmm landmarks` decodes them, give Pillow's
/// pixels exactly (the PNG fixtures are Pillow's decode) and so Python dlib's points. The `image`
/// crate's decoder, which the rest of dmm uses, is a few levels off: printed, as the measurement.
#[test]
fn jpegs_decode_as_pillow_and_give_python_dlibs_points() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let reference = LandmarkTable::read(&fixtures().join("python_dlib.csv")).unwrap();
    let mut dlib = Dlib::new(Path::new(DEFAULT_PREDICTOR)).unwrap();
    for (jpeg, png) in [
        ("data/celeba/img_align_celeba/000130.jpg", "000130.png"),
        ("data/celeba/img_align_celeba/000318.jpg", "000318.png"),
        ("data/celeba/img_align_celeba/002487.jpg", "002487.png"),
        ("data/lfwa/lfw/Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Aaron_Eckhart_0001.png"),
    ] {
        let pillow = dmm_data::pipeline::decode(&fixtures().join(png)).unwrap();
        let ours = dmm_landmarks::decode_like_pil(&repo.join(jpeg)).unwrap();
        let crate_decoder = dmm_data::pipeline::decode(&repo.join(jpeg)).unwrap();
        let diff = |img: &image::RgbImage| {
            let d: Vec<u8> = img.as_raw().iter().zip(pillow.as_raw()).map(|(a, b)| a.abs_diff(*b)).collect();
            (d.iter().copied().max().unwrap_or(0), d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64)
        };
        let (max_crate, mean_crate) = diff(&crate_decoder);
        eprintln!("{jpeg}: image crate against Pillow: max {max_crate}, mean {mean_crate:.3} levels");
        assert_eq!(ours.dimensions(), pillow.dimensions(), "{jpeg}");
        assert_eq!(diff(&ours), (0, 0.0), "{jpeg}: libjpeg-turbo's pixels differ from Pillow's");
        let face = dlib.landmarks(&ours, 1).unwrap();
        match (reference.get(png), face) {
            (None, None) => {}
            (Some(expected), Some(face)) => {
                let worst = expected.iter().zip(&face.points).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst <= 0.5, "{jpeg}: {worst} px");
            }
            (e, f) => panic!("{jpeg}: python found a face: {}, we found one: {}", e.is_some(), f.is_some()),
        }
    }
}

#[test]
fn a_missing_model_is_named() {
    let err = Dlib::new(Path::new("/no/such/model.dat")).err().unwrap().to_string();
    assert!(err.starts_with("/no/such/model.dat: shape predictor not found"), "{err}");
}
