//! [`Engine::generate`], which runs one request alone through a [`Batch`], and the prompt's
//! tokens as the model sees them.

use std::cell::RefCell;

use crate::batch::{Batch, BatchOptions, Event, Sink};
use crate::request::{ContextFile, GenerateRequest, Generation, OnDelta};
use crate::{Engine, Error, Result};

/// Repository-level tokens of Qwen2.5-Coder (and StarCoder2): files follow `<|file_sep|>`.
const FILE_SEPARATOR: &str = "<|file_sep|>";
const REPO_NAME: &str = "<|repo_name|>";

/// Streams text to an [`OnDelta`] and keeps the final result.
struct CallbackSink<'r, 'f> {
    on_delta: &'r mut OnDelta<'f>,
    result: &'r RefCell<Option<Result<Generation>>>,
}

impl Sink for CallbackSink<'_, '_> {
    fn send(&mut self, event: Event) -> bool {
        match event {
            Event::Token { sample, text, .. } => text.is_empty() || (self.on_delta)(sample, &text),
            Event::Finished(result) => {
                *self.result.borrow_mut() = Some(result);
                true
            }
        }
    }
}

impl Engine {
    /// The token ids the model sees for `prompt` (and `suffix`, as fill-in-the-middle),
    /// after `context_files`.
    ///
    /// With the repository tokens, each file is `<|file_sep|>name\ntext` and the current file
    /// gets its own separator; without them the files' text simply precedes the prompt. File
    /// text is encoded with special tokens disabled, so it cannot forge the template.
    ///
    /// With `fim_prefix_only` (and no suffix) the prompt is the opening of a FIM prefix; see
    /// [`GenerateRequest::fim_prefix_only`].
    pub fn prompt_tokens(
        &self,
        prompt: &str,
        suffix: Option<&str>,
        fim_prefix_only: bool,
        context_files: &[ContextFile],
    ) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.tokenizer.bos_to_add().into_iter().collect();
        if !context_files.is_empty() {
            match self.tokenizer.token_id(FILE_SEPARATOR) {
                Some(separator) => {
                    if let Some(repo) = self.tokenizer.token_id(REPO_NAME) {
                        ids.push(repo);
                        ids.extend(self.tokenizer.encode_plain("workspace\n")?);
                    }
                    for file in context_files {
                        ids.push(separator);
                        let text = format!("{}\n{}\n", file.name, file.text);
                        ids.extend(self.tokenizer.encode_plain(&text)?);
                    }
                    ids.push(separator);
                    ids.extend(self.tokenizer.encode_plain("current\n")?);
                }
                None => {
                    for file in context_files {
                        ids.extend(self.tokenizer.encode_plain(&format!("{}\n", file.text))?);
                    }
                }
            }
        }
        match suffix {
            Some(suffix) => {
                let fim = self.fim.as_ref().ok_or(Error::NoFim)?;
                ids.extend(fim.encode(&self.tokenizer, prompt, suffix)?);
            }
            None if fim_prefix_only => {
                let fim = self.fim.as_ref().ok_or(Error::NoFim)?;
                ids.extend(fim.encode_prefix(&self.tokenizer, prompt)?);
            }
            None => ids.extend(self.tokenizer.encode(prompt)?),
        }
        if ids.is_empty() {
            return Err(Error::InvalidRequest(
                "prompt is empty and the model has no BOS token to start from".into(),
            ));
        }
        Ok(ids)
    }

    /// Runs `request` alone to completion, streaming text through `on_delta`. A server runs
    /// many requests together with [`crate::Scheduler`] instead.
    ///
    /// # Errors
    /// Invalid parameters, a prompt that does not fit the context, `suffix` on a model
    /// without FIM tokens, and tensor failures.
    pub fn generate(
        &mut self,
        request: &GenerateRequest,
        on_delta: &mut OnDelta<'_>,
    ) -> Result<Generation> {
        let result = RefCell::new(None);
        {
            let mut batch = Batch::new(BatchOptions {
                prefill_chunk: self.prefill_chunk,
                interleaved_prefill_chunk: self.prefill_chunk,
            });
            let sink = CallbackSink {
                on_delta,
                result: &result,
            };
            batch.add(self, request.clone(), Box::new(sink));
            while !batch.is_empty() {
                batch.step(self)?;
            }
        }
        result
            .into_inner()
            .ok_or_else(|| Error::InvalidRequest("request ended without a result".into()))?
    }
}
