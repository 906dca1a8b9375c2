//! `hexacoder-train`, HexaCoder's companion tool: `scan` (the security oracle over files) and
//! `train` (masked-loss LoRA fine-tuning). Synthesis and evaluation will join them.

pub mod model_source;
pub mod scan;
pub mod train;
