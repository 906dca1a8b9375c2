//! The tokenizer built from a GGUF's metadata, on structured metadata (tokens, types, merges,
//! the pre-tokenizer's name, special ids) so that inputs get past the header into the
//! tokenizer; then text encoded and decoded with it.

use arbitrary::Arbitrary;
use candle_core::quantized::gguf_file::{self, Value};
use hexacoder_engine::load::gguf::GgufFile;
use hexacoder_engine::tokenizer::Tokenizer;

#[derive(Arbitrary, Debug)]
struct Input {
    model: Option<String>,
    pre: Option<String>,
    tokens: Vec<String>,
    types: Option<Vec<i32>>,
    merges: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: Option<bool>,
    text: String,
    ids: Vec<u32>,
}

/// One input, as libFuzzer's typed targets build it: the whole of `data` taken by
/// [`Arbitrary`].
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else {
        return;
    };
    let mut metadata = vec![(
        "general.architecture".to_string(),
        Value::String("qwen2".into()),
    )];
    if let Some(model) = input.model {
        metadata.push(("tokenizer.ggml.model".into(), Value::String(model)));
    }
    if let Some(pre) = input.pre {
        metadata.push(("tokenizer.ggml.pre".into(), Value::String(pre)));
    }
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    metadata.push(("tokenizer.ggml.tokens".into(), strings(input.tokens)));
    metadata.push(("tokenizer.ggml.merges".into(), strings(input.merges)));
    if let Some(types) = input.types {
        let types = types.into_iter().map(Value::I32).collect();
        metadata.push(("tokenizer.ggml.token_type".into(), Value::Array(types)));
    }
    if let Some(id) = input.bos {
        metadata.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(id)));
    }
    if let Some(id) = input.eos {
        metadata.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(id)));
    }
    if let Some(add) = input.add_bos {
        metadata.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add)));
    }
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut bytes = Vec::new();
    if gguf_file::write(&mut std::io::Cursor::new(&mut bytes), &metadata, &[]).is_err() {
        return;
    }
    let path = crate::scratch().join("tokenizer.gguf");
    std::fs::write(&path, &bytes).expect("write the input");
    let Ok(gguf) = GgufFile::open(&path) else {
        return;
    };
    let Ok(tokenizer) = Tokenizer::from_gguf(&gguf) else {
        return;
    };
    if let Ok(ids) = tokenizer.encode(&input.text) {
        let _ = tokenizer.decode(&ids);
    }
    let _ = tokenizer.decode(&input.ids);
    for &id in &input.ids {
        let _ = tokenizer.token_bytes(id);
        let _ = tokenizer.token_text(id);
        let _ = tokenizer.is_special(id);
    }
}
