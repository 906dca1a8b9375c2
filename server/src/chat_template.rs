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
        let mut output = BoundedOutput {
            bytes: Vec::new(),
            full: false,
        };
        let result = template.render_captured_to(
            context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
                tools => Option::<()>::None,
            },
            &mut output,
        );
        if result.is_err() && output.full {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                format!(
                    "the chat template wrote more than {} MiB",
                    MAX_RENDERED_BYTES >> 20
                ),
            ));
        }
        result?;
        let rendered = String::from_utf8_lossy(&output.bytes).into_owned();
        if tokenizer.bos_to_add().is_some()
            && !self.bos_token.is_empty()
            && let Some(rest) = rendered.strip_prefix(&self.bos_token)
        {
            return Ok(rest.to_string());
        }
        Ok(rendered)
    }
}

/// Template instructions one render may run: a template comes from a model file a stranger
/// may have written, and nested loops would otherwise hold a request forever. Real templates
/// spend a few hundred per message.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// The most text one render may write; a prompt is far shorter.
const MAX_RENDERED_BYTES: usize = 32 << 20;

/// A render's output, refusing to grow past [`MAX_RENDERED_BYTES`].
struct BoundedOutput {
    bytes: Vec<u8>,
    /// Set when a write was refused, so the render's error can say why.
    full: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.full = true;
            return Err(std::io::Error::other("the rendered prompt is too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn compile(source: String) -> Result<Environment<'static>, JinjaError> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use hexacoder_testkit::{Arch, Tiny};

    use super::*;

    fn tokenizer() -> (tempfile::TempDir, Tokenizer) {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = Tiny::small(Arch::Qwen2).write_hf_dir(&dir.path().join("tiny"), 1);
        let tokenizer = Tokenizer::from_hf_dir(&model).expect("tokenizer");
        (dir, tokenizer)
    }

    fn hello() -> Vec<Message> {
        vec![Message {
            role: "user".into(),
            content: "hello".into(),
        }]
    }

    #[test]
    fn a_template_that_loops_for_ever_runs_out_of_fuel() {
        let (_dir, tokenizer) = tokenizer();
        let source = "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}";
        let template = ChatTemplate::new(Some(source), &tokenizer);
        assert_eq!(template.kind(), TemplateKind::Model);
        let started = Instant::now();
        let error = template
            .render(&hello(), &tokenizer)
            .expect_err("out of fuel");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(error.to_string().contains("fuel"), "{error}");
    }

    #[test]
    fn a_template_that_writes_without_end_is_stopped() {
        let (_dir, tokenizer) = tokenizer();
        let source = "{% for i in range(50) %}{{ 'x' * 10000000 }}{% endfor %}";
        let template = ChatTemplate::new(Some(source), &tokenizer);
        let error = template.render(&hello(), &tokenizer).expect_err("too long");
        assert!(format!("{error:#}").contains("MiB"), "{error:#}");
    }

    #[test]
    fn a_real_template_renders_within_its_fuel() {
        let (_dir, tokenizer) = tokenizer();
        let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let template = ChatTemplate::new(Some(source), &tokenizer);
        let messages: Vec<Message> = (0..2000)
            .map(|i| Message {
                role: if i % 2 == 0 { "user" } else { "assistant" }.into(),
                content: format!("message {i}"),
            })
            .collect();
        let prompt = template.render(&messages, &tokenizer).expect("renders");
        assert!(prompt.ends_with("<|im_start|>assistant\n"));
    }
}
