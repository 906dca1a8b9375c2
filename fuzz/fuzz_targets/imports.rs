//! libFuzzer's entry to `hexacoder_fuzz_targets::imports`, whose documentation says what the
//! target feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hexacoder_fuzz_targets::imports::run(data));
