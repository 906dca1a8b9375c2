//! libFuzzer's entry to `hexacoder_fuzz_targets::lsp_document`, whose documentation says what the
//! target feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hexacoder_fuzz_targets::lsp_document::run(data));
