//! `hexacoder-server`: the command line over the engine.
//!
//! Today it offers `generate` (one completion from the terminal) and `fetch` (download a
//! catalogue model). The HTTP API (`serve`) lands on top of the same pieces: [`cli`] defines
//! the options once, [`model_source`] turns `--model` into files, and [`generate`] maps CLI
//! options to an `engine::GenerateRequest`.

pub mod cli;
pub mod generate;
pub mod model_source;
