//! `--model` to loaded engine: catalogue ids are fetched into our cache, anything else goes
//! through the engine's hub resolution.

use anyhow::{Context, Result, bail};
use hexacoder_engine::ModelFiles;
use hexacoder_engine::fim::FimSetting;
use hexacoder_engine::load::{self, LoadOptions, Requantize};
use hexacoder_engine::nn::Q8Kernel;

use crate::cli::ModelArgs;
use crate::hub::{self, HubOptions};

/// Files for `--model`, fetching a catalogue model when needed.
pub fn resolve(args: &ModelArgs) -> Result<ModelFiles> {
    if let Some(entry) = hexacoder_catalog::find(&args.model) {
        let path = hexacoder_catalog::ensure(entry, &hexacoder_catalog::cache_dir(), progress())
            .with_context(|| format!("fetching catalogue model {}", entry.id))?;
        return Ok(ModelFiles::Gguf(path));
    }
    let options = HubOptions {
        cache_dir: args.hub_cache.clone(),
        offline: args.offline,
    };
    Ok(hub::resolve(&args.model, &options)?)
}

/// Progress bars when stderr is a terminal.
pub fn progress() -> hexacoder_catalog::Progress {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        hexacoder_catalog::Progress::Bars
    } else {
        hexacoder_catalog::Progress::Quiet
    }
}

/// Engine load options from the command line.
pub fn load_options(args: &ModelArgs) -> Result<LoadOptions> {
    let fim = match args.fim.as_str() {
        "auto" => FimSetting::Auto,
        "off" => FimSetting::Off,
        tokens => match tokens.split(',').collect::<Vec<_>>().as_slice() {
            [prefix, suffix, middle] => FimSetting::Tokens {
                prefix: prefix.to_string(),
                suffix: suffix.to_string(),
                middle: middle.to_string(),
            },
            _ => bail!("--fim {tokens:?} is not `auto`, `off` or `PREFIX,SUFFIX,MIDDLE`"),
        },
    };
    let device = load::parse_device(&args.device)?;
    Ok(LoadOptions {
        // On a GPU, dense f32 weights (see `Requantize::Dequantize`).
        requantize: if device.is_cuda() {
            Requantize::Dequantize
        } else if args.legacy_quants_to_q8 {
            Requantize::LegacyToQ8_0
        } else {
            LoadOptions::cpu().requantize
        },
        device,
        max_context: args.max_context,
        fim,
        prefix_cache_bytes: args.prefix_cache_bytes,
        kv_dtype: args.kv_dtype,
        q8_kernel: if args.candle_q8_kernel {
            Q8Kernel::Candle
        } else {
            Q8Kernel::Fastest
        },
        ..LoadOptions::cpu()
    })
}

/// Resolves and loads `--model`.
pub fn load_engine(args: &ModelArgs) -> Result<hexacoder_engine::Engine> {
    // Options first: a typo must not cost a model download.
    let options = load_options(args)?;
    let files = resolve(args)?;
    let started = std::time::Instant::now();
    let engine = load::load(&files, &options).with_context(|| format!("loading {files:?}"))?;
    tracing::info!(
        model = engine.name(),
        kv_dtype = %engine.model().kv_dtype(),
        elapsed = ?started.elapsed(),
        "model loaded"
    );
    Ok(engine)
}
