//! The chat-template renderer on an untrusted template, as a GGUF's `tokenizer.chat_template`
//! brings one, and untrusted messages. The input is the template, then the messages as JSON
//! (`[{"role", "content"}]`; anything else is one user message), split by
//! [`hexacoder_fuzz::split`].
#![no_main]

use std::sync::OnceLock;

use hexacoder_engine::tokenizer::Tokenizer;
use hexacoder_server::chat_template::{ChatTemplate, Message};
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        Tokenizer::from_hf_dir(hexacoder_fuzz::tiny_model()).expect("the tiny model's tokenizer")
    })
}

fuzz_target!(init: { tokenizer(); }, |data: &[u8]| {
    let (template, messages) = hexacoder_fuzz::split(data);
    let template = String::from_utf8_lossy(template);
    let messages: Vec<Message> = serde_json::from_slice::<Vec<(String, String)>>(messages)
        .ok()
        .or_else(|| {
            let list: Vec<serde_json::Value> = serde_json::from_slice(messages).ok()?;
            Some(
                list.iter()
                    .map(|m| {
                        let field = |k: &str| m[k].as_str().unwrap_or_default().to_string();
                        (field("role"), field("content"))
                    })
                    .collect(),
            )
        })
        .unwrap_or_else(|| vec![("user".into(), String::from_utf8_lossy(messages).into())])
        .into_iter()
        .map(|(role, content)| Message { role, content })
        .collect();
    let tokenizer = tokenizer();
    let template = ChatTemplate::new(Some(&template), tokenizer);
    let _ = template.render(&messages, tokenizer);
    let _ = template.extra_stops();
});
