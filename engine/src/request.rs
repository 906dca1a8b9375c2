//! What a generation request asks for and what it returns. The batch, the scheduler and
//! [`Engine::generate`](crate::Engine::generate) all speak these types.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::sampling::SamplingParams;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// The text before the cursor (or the whole prompt).
    pub prompt: String,
    /// The text after the cursor; generation fills the middle. Needs a FIM-capable model.
    pub suffix: Option<String>,
    /// New tokens per sample at most.
    pub max_tokens: usize,
    /// Token selection.
    pub sampling: SamplingParams,
    /// Samples; they share one prefill.
    pub n: usize,
    /// Strings that end a sample; they are not part of its text.
    pub stop: Vec<String>,
    /// Alternatives to report per token (0 for none). The chosen token's log-probability
    /// is always reported.
    pub top_logprobs: usize,
    /// Other files shown to the model before the prompt (repository-level context), most
    /// relevant last.
    pub context_files: Vec<ContextFile>,
    /// Added to the logits of these token ids before sampling (-100 bans a token, +100
    /// nearly forces it).
    pub logit_bias: Vec<(u32, f32)>,
    /// The LoRA adapter to apply, or `None` for the base model. Requests with different
    /// adapters share a batch.
    pub adapter: Option<crate::SharedAdapter>,
    /// Never choose an end-of-generation token: every sample runs to `max_tokens` or a stop
    /// string (benchmarks, load tests).
    pub ignore_eos: bool,
    /// Encode `prompt` as the opening of a fill-in-the-middle prefix (`<fim_prefix>prompt`)
    /// with no suffix yet, so the model continues the prefix. A first pass framed this way
    /// leaves KV state that a later FIM request on a longer prefix reuses. Needs FIM tokens;
    /// ignored when `suffix` is set.
    pub fim_prefix_only: bool,
    /// Ends a sample (finish reason `Stop`) once its text satisfies this.
    pub stop_condition: Option<StopCondition>,
    /// Adjusts each sample's logits before every choice, after `logit_bias`.
    pub logits_processor: Option<Arc<dyn LogitsProcessor>>,
    /// Ends a sample (finish reason `BlockEnd`) at the first line after its first that is
    /// indented by fewer than this many spaces or tabs, a blank line included; the text keeps
    /// that line's newline and indentation. 0 is off. llama.cpp's `n_indent`: an inline
    /// suggestion ends with the block it started in.
    pub indent_floor: usize,
    /// Once this long has passed since a sample's first token, the sample ends (finish
    /// reason `TimeLimit`) at its next token that contains a newline, so a slow model still
    /// answers on time with whole lines. llama.cpp's `t_max_predict_ms`.
    pub newline_deadline: Option<Duration>,
}

impl Default for GenerateRequest {
    /// An empty greedy request for 16 tokens; set at least `prompt`.
    fn default() -> Self {
        GenerateRequest {
            prompt: String::new(),
            suffix: None,
            max_tokens: 16,
            sampling: SamplingParams::greedy(),
            n: 1,
            stop: Vec::new(),
            top_logprobs: 0,
            context_files: Vec::new(),
            logit_bias: Vec::new(),
            adapter: None,
            ignore_eos: false,
            fim_prefix_only: false,
            stop_condition: None,
            logits_processor: None,
            indent_floor: 0,
            newline_deadline: None,
        }
    }
}

/// A test on a sample's whole text so far, run after every token: a stop rule that plain
/// stop strings cannot express (two-step generation ends its first step at the first line
/// that cannot be an import).
#[derive(Clone)]
pub struct StopCondition(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl StopCondition {
    /// A condition that holds when `is_met` returns `true` for the text.
    pub fn new(is_met: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        StopCondition(Arc::new(is_met))
    }

    /// Whether `text` ends the sample.
    pub fn is_met(&self, text: &str) -> bool {
        (self.0)(text)
    }
}

impl fmt::Debug for StopCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StopCondition(..)")
    }
}

/// Changes logits before a token is chosen: constrained decoding, or a script that forces
/// known output in tests.
pub trait LogitsProcessor: Send + Sync + fmt::Debug {
    /// Adjusts `logits` for sample `sample`, which has generated `generated` so far.
    fn process(&self, sample: usize, generated: &[u32], logits: &mut [f32]);
}

/// A file given as context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextFile {
    /// Its path or name, as the model should see it.
    pub name: String,
    /// Its contents (or an excerpt).
    pub text: String,
}

/// Why a sample ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop string was generated.
    Stop,
    /// An end-of-generation token was generated.
    EndOfGeneration,
    /// `max_tokens` was reached.
    Length,
    /// The caller asked to stop (a client went away).
    Cancelled,
    /// A line began below [`GenerateRequest::indent_floor`].
    BlockEnd,
    /// A newline came after [`GenerateRequest::newline_deadline`].
    TimeLimit,
}

/// One generated token.
#[derive(Clone, Debug)]
pub struct GeneratedToken {
    /// Its id.
    pub id: u32,
    /// Natural-log probability under the untempered distribution.
    pub logprob: f32,
    /// The most likely alternatives `(id, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// One completed sample.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The completion, stop string excluded.
    pub text: String,
    /// Every generated token, including an end-of-generation token or the tokens of a stop
    /// string.
    pub tokens: Vec<GeneratedToken>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// The stop string that ended it, when one did.
    pub stop_string: Option<String>,
    /// Sum of the tokens' log-probabilities, to rank samples.
    pub cumulative_logprob: f64,
}

/// The result of a request.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Samples in request order.
    pub samples: Vec<Sample>,
    /// The prompt as tokens.
    pub prompt_tokens: Vec<u32>,
    /// Prompt tokens whose KV state came from the prefix cache.
    pub cached_prompt_tokens: usize,
    /// Time until the first token of every sample was chosen.
    pub time_to_first_token: Duration,
    /// Total time.
    pub elapsed: Duration,
}

impl Generation {
    /// Tokens generated over all samples.
    pub fn completion_tokens(&self) -> usize {
        self.samples.iter().map(|s| s.tokens.len()).sum()
    }
}

/// A streamed piece of text: sample index and new text. Returning `false` cancels.
pub type OnDelta<'a> = dyn FnMut(usize, &str) -> bool + 'a;

pub(crate) const PREFIX_CACHE_NAMESPACE_BASE: u64 = 0;
