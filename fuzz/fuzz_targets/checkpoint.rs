//! Checkpoint bytes: the safetensors header, dmm's metadata, the checksum and the tensors, as
//! `dmm predict --model` and `dmm eval` load them. The seed corpus holds a real (tiny) checkpoint.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dmm_model::checkpoint::load_bytes(data, Path::new("fuzz.safetensors"), &candle_core::Device::Cpu);
});
