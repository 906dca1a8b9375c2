//! `hexacoder-train`, HexaCoder's companion tool: `scan` (the security oracle over files),
//! `train` (masked-loss LoRA fine-tuning) and `eval` (vulnerable and correct completions of
//! any OpenAI-compatible endpoint). Synthesis will join them.

pub mod eval;
pub mod jsonl;
pub mod model_source;
pub mod scan;
pub mod synth;
pub mod train;
