//! The landmark CSV that `dmm landmarks` writes and `dmm train` reads (`image,x0,y0,…`).
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = common::file("landmarks.csv", data);
    if let Ok(table) = dmm_data::LandmarkTable::read(&path) {
        // What was read writes back and reads again to the same table.
        let again = common::scratch().join("again.csv");
        table.write(&again).expect("a table that was read writes");
        let back = dmm_data::LandmarkTable::read(&again).expect("a written table reads");
        assert_eq!(back.len(), table.len());
    }
});
