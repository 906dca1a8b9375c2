//! Chat messages to a prompt, with the model's own Jinja template (GGUF
//! `tokenizer.chat_template` or `tokenizer_config.json`) rendered by minijinja the way
//! `transformers` renders it, or a fallback chosen from the vocabulary's control tokens.

use hexacoder_engine::tokenizer::Tokenizer;
use minijinja::{Environment, Error as JinjaError, ErrorKind, context};
use serde::Serialize;

/// One message as the template sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Which template is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateKind {
    /// The model's own.
    Model,
    /// `<|im_start|>role ... <|im_end|>` (Qwen, SmolLM and other ChatML models).
    ChatMl,
    /// Llama 3 header tokens.
    Llama3,
    /// `User: ...` / `Assistant:` for base models without chat tokens.
    Plain,
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
const LLAMA3: &str = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
const PLAIN: &str = "{% for m in messages %}{{ m.role | capitalize }}: {{ m.content }}\n\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    kind: TemplateKind,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The model's template if it compiles, else the fallback for its family.
    pub fn new(model_template: Option<&str>, tokenizer: &Tokenizer) -> Self {
        let text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id))
                .unwrap_or_default()
        };
        let bos_token = text(tokenizer.bos());
        let eos_token = ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"]
            .iter()
            .find(|t| tokenizer.token_id(t).is_some())
            .map(|t| t.to_string())
            .unwrap_or_default();
        if let Some(source) = model_template {
            match compile(source.to_string()) {
                Ok(env) => {
                    return ChatTemplate {
                        env,
                        kind: TemplateKind::Model,
                        bos_token,
                        eos_token,
                    };
                }
                Err(err) => {
                    tracing::warn!(%err, "the model's chat template does not compile; using a fallback")
                }
            }
        }
        let (kind, source) = if tokenizer.token_id("<|im_start|>").is_some() {
            (TemplateKind::ChatMl, CHATML)
        } else if tokenizer.token_id("<|start_header_id|>").is_some() {
            (TemplateKind::Llama3, LLAMA3)
        } else {
            (TemplateKind::Plain, PLAIN)
        };
        let env = match compile(source.to_string()) {
            Ok(env) => env,
            Err(err) => unreachable!("built-in template does not compile: {err}"),
        };
        ChatTemplate {
            env,
            kind,
            bos_token,
            eos_token,
        }
    }

    /// Which template renders prompts.
    pub fn kind(&self) -> TemplateKind {
        self.kind
    }

    /// Stop strings the template needs beyond the model's end tokens.
    pub fn extra_stops(&self) -> Vec<String> {
        match self.kind {
            TemplateKind::Plain => vec!["\nUser:".into()],
            _ => Vec::new(),
        }
    }

    /// The prompt for `messages`, ending where the assistant's reply starts. A leading BOS is
    /// dropped when the tokenizer adds its own.
    pub fn render(
        &self,
        messages: &[Message],
        tokenizer: &Tokenizer,
    ) -> Result<String, JinjaError> {
        let template = self.env.get_template("chat")?;
        let rendered = template.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            tools => Option::<()>::None,
        })?;
        if tokenizer.bos_to_add().is_some()
            && !self.bos_token.is_empty()
            && let Some(rest) = rendered.strip_prefix(&self.bos_token)
        {
            return Ok(rest.to_string());
        }
        Ok(rendered)
    }
}

fn compile(source: String) -> Result<Environment<'static>, JinjaError> {
    let mut env = Environment::new();
    // What `transformers.apply_chat_template` sets.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_template_owned("chat", source)?;
    Ok(env)
}
