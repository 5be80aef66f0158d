//! `list_attr_celeba.txt` (count line, header of 40 names, `name ±1 × 40` rows) and the 5-point
//! `list_landmarks_align_celeba.txt`: any bytes give rows or an error, never a panic.
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = common::file("list_attr_celeba.txt", data);
    let _ = dmm_data::celeba::read_attributes(&path);
    let path = common::file("list_landmarks_align_celeba.txt", data);
    let _ = dmm_data::celeba::read_landmarks_align(&path);
});
