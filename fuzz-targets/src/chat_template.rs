//! The chat-template renderer on an untrusted template, as a GGUF's `tokenizer.chat_template`
//! brings one, and untrusted messages. The input is the template, then the messages as JSON
//! (`[{"role", "content"}]`; anything else is one user message), split by
//! [`crate::split`].

use std::sync::OnceLock;

use hexacoder_engine::tokenizer::Tokenizer;
use hexacoder_server::chat_template::{ChatTemplate, Message};

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        Tokenizer::from_hf_dir(crate::tiny_model()).expect("the tiny model's tokenizer")
    })
}

/// What the target sets up once, before its first input.
pub fn init() {
    tokenizer();
}

/// One input.
pub fn run(data: &[u8]) {
    let (template, messages) = crate::split(data);
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
}
