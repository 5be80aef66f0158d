//! LFWA's text split (`image split` and the 40 attribute names, then `name train|test 0/1 × 40`).
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = common::file("lfwa_40attr_with_split.txt", data);
    if let Ok(samples) = dmm_data::lfwa::read_text_split(&path) {
        // The writer's output of what was read parses to the same samples.
        let text = dmm_data::lfwa::text_split(&samples);
        let again = common::file("again.txt", text.as_bytes());
        let back = dmm_data::lfwa::read_text_split(&again).expect("written split reads");
        assert_eq!(back.len(), samples.len());
    }
});
