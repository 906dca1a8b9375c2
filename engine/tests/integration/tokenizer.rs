//! Tokenizers built from GGUF metadata against independently built `tokenizer.json` files
//! (`shared/reference/tokenizers/`), on every CodeLMSec prompt and a few hard cases.

use hexacoder_engine::load::gguf::GgufFile;
use hexacoder_engine::tokenizer::Tokenizer;

use hexacoder_testkit::Arch;

use crate::support::{self, Tiny};

fn prompts() -> Vec<String> {
    let mut prompts: Vec<String> = hexacoder_testkit::codelmsec_prompts()
        .into_iter()
        .map(|p| p.prompt)
        .collect();
    prompts.extend(
        [
            "\tindented\twith tabs\r\nand CRLF\r\n",
            "# 注释：计算斐波那契数列\ndef fib(n): return n",
            "emoji 🦀🔒 in a string: s = \"✓ ok\"",
            "x = 12345678901234567890 + 0.5e-10",
            "<|endoftext|> special in text <|fim_prefix|>",
            "   \n\n\n    \t  trailing   ",
        ]
        .map(String::from),
    );
    prompts
}

fn check(model_id: &str, reference_file: &str) {
    let Some(path) = support::real_model(model_id) else {
        return;
    };
    let ours = Tokenizer::from_gguf(&GgufFile::open(&path).expect("gguf header"))
        .expect("tokenizer from gguf");
    let reference_path = support::shared_dir()
        .join("reference/tokenizers")
        .join(reference_file);
    let reference = tokenizers::Tokenizer::from_file(&reference_path).expect("reference tokenizer");
    let mut mismatches = Vec::new();
    for prompt in prompts() {
        let expected = reference
            .encode(prompt.as_str(), false)
            .expect("reference encode")
            .get_ids()
            .to_vec();
        let got = ours.encode(&prompt).expect("encode");
        if got != expected {
            mismatches.push(format!("{prompt:?}: ours {got:?} reference {expected:?}"));
            continue;
        }
        // Special tokens are dropped from generated text, so compare decoding on the rest.
        let normal: Vec<u32> = got
            .iter()
            .copied()
            .filter(|&id| !ours.is_special(id))
            .collect();
        let expected_text = reference.decode(&normal, true).expect("reference decode");
        assert_eq!(
            ours.decode(&normal),
            expected_text,
            "{model_id}: decode of {prompt:?}"
        );
    }
    assert!(
        mismatches.is_empty(),
        "{model_id}: {} mismatches, first: {}",
        mismatches.len(),
        mismatches[0]
    );
}

#[test]
fn qwen2_tokenizer_from_gguf_matches_reference() {
    check("qwen2.5-coder-0.5b", "qwen2.5-coder.tokenizer.json");
}

/// The GGUF build reads each token's bytes from the file's token list; the `tokenizer.json`
/// build asks the BPE model for each id's text. Both must give every token the same bytes.
#[test]
fn every_token_has_the_same_bytes_from_gguf_as_from_tokenizer_json() {
    for (model_id, reference_file) in [
        ("qwen2.5-coder-0.5b", "qwen2.5-coder.tokenizer.json"),
        ("smollm2-135m", "smollm2.tokenizer.json"),
    ] {
        let Some(path) = support::real_model(model_id) else {
            return;
        };
        let ours = Tokenizer::from_gguf(&GgufFile::open(&path).expect("gguf header"))
            .expect("tokenizer from gguf");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            support::shared_dir()
                .join("reference/tokenizers")
                .join(reference_file),
            dir.path().join("tokenizer.json"),
        )
        .expect("copy the reference");
        let reference = Tokenizer::from_hf_dir(dir.path()).expect("tokenizer from json");
        assert_eq!(ours.vocab_size(), reference.vocab_size(), "{model_id}");
        let differing: Vec<u32> = (0..ours.vocab_size() as u32)
            .filter(|&id| ours.token_bytes(id) != reference.token_bytes(id))
            .collect();
        assert!(
            differing.is_empty(),
            "{model_id}: {} tokens differ, first {:?}: {:?} against {:?}",
            differing.len(),
            differing[0],
            ours.token_bytes(differing[0]),
            reference.token_bytes(differing[0])
        );
    }
}

#[test]
fn smollm2_tokenizer_from_gguf_matches_reference() {
    check("smollm2-135m", "smollm2.tokenizer.json");
}

#[test]
fn qwen2_special_tokens_and_end_of_generation() {
    let Some(path) = support::real_model("qwen2.5-coder-0.5b") else {
        return;
    };
    let tokenizer =
        Tokenizer::from_gguf(&GgufFile::open(&path).expect("gguf header")).expect("tokenizer");
    assert_eq!(tokenizer.token_id("<|fim_prefix|>"), Some(151659));
    assert_eq!(tokenizer.token_id("<|fim_suffix|>"), Some(151661));
    assert_eq!(tokenizer.token_id("<|fim_middle|>"), Some(151660));
    assert!(
        tokenizer.is_end_of_generation(151643),
        "<|endoftext|> ends generation"
    );
    assert!(tokenizer.is_special(151643));
    // <tool_call> is a user-defined token: added, but not special. (shared/models.md lists
    // the FIM ids in another order; the vocabulary has middle = 151660, suffix = 151661.)
    assert!(!tokenizer.is_special(151657));
    // Encoding "plain" keeps user text from becoming control tokens.
    assert_eq!(
        tokenizer.encode("<|fim_middle|>").expect("encode"),
        vec![151660]
    );
    assert!(
        !tokenizer
            .encode_plain("<|fim_middle|>")
            .expect("encode")
            .contains(&151660)
    );
}

/// `tokenizers` keeps BPE results in a thread-local map keyed by tokenizer instance and never
/// frees an instance's entries when it is dropped, so every tokenizer built and used on a
/// thread left up to 10,000 words behind there (the `gguf_tokenizer` fuzzer ran out of memory
/// on it). Ours are built without that cache. A child process (alone, so that other tests do
/// not move its RSS) builds 200 tokenizers, encodes 10,000 distinct words with each, and
/// checks how much its resident memory grew.
#[test]
fn building_and_dropping_tokenizers_does_not_leak_memory() {
    const CHILD: &str = "HEXACODER_TOKENIZER_LEAK_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "tokenizer::building_and_dropping_tokenizers_does_not_leak_memory",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        eprint!("{stderr}");
        return;
    }
    let rss_mb = || -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .expect("VmRSS")
            / 1024.0
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let model = Tiny::small(Arch::Qwen2).write_hf_dir(&dir.path().join("model"), 1);
    // Letters only, so that the pre-tokenizer keeps each word whole.
    let word = |mut i: usize| -> String {
        let mut w = String::from("z");
        for _ in 0..4 {
            w.push((b'a' + (i % 26) as u8) as char);
            i /= 26;
        }
        w
    };
    let text: String = (0..10_000).map(|i| word(i) + " ").collect();
    let build_and_encode = || {
        let tokenizer = Tokenizer::from_hf_dir(&model).expect("tokenizer");
        assert!(!tokenizer.encode(&text).expect("encode").is_empty());
    };
    build_and_encode();
    let before = rss_mb();
    for _ in 0..200 {
        build_and_encode();
    }
    let grown = rss_mb() - before;
    eprintln!("RSS grew {grown:.1} MB over 200 tokenizers");
    assert!(grown < 50.0, "RSS grew {grown:.1} MB over 200 tokenizers");
}
