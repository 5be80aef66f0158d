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

#[test]
fn a_missing_model_is_named() {
    let err = Dlib::new(Path::new("/no/such/model.dat")).err().unwrap().to_string();
    assert!(err.starts_with("/no/such/model.dat: shape predictor not found"), "{err}");
}
