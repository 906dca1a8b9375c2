//! libFuzzer's entry to `hexacoder_fuzz_targets::adapter`, whose documentation says what the
//! target feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(init: { hexacoder_fuzz_targets::adapter::init(); }, |data: &[u8]| {
    hexacoder_fuzz_targets::adapter::run(data)
});
