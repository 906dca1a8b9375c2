//! libFuzzer's entry to `hexacoder_fuzz_targets::chat_template`, whose documentation says what the
//! target feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(init: { hexacoder_fuzz_targets::chat_template::init(); }, |data: &[u8]| {
    hexacoder_fuzz_targets::chat_template::run(data)
});
