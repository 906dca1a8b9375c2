//! `hexacoder-server serve`: load the model, start the scheduler, serve HTTP until SIGTERM or
//! Ctrl-C, then let in-flight requests finish up to `--shutdown-timeout`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hexacoder_engine::batch::BatchOptions;
use hexacoder_engine::{Scheduler, SchedulerOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::adapter_registry::{AdapterLimits, AdapterRegistry};
use crate::chat_template::ChatTemplate;
use crate::cli::ServeArgs;
use crate::http::{self, AppState, ModelCard};
use crate::metrics::Metrics;
use crate::model_source;

/// Runs the server until it is told to stop.
pub fn run(args: &ServeArgs) -> Result<()> {
    let state = app_state(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hexacoder-http")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(Arc::clone(&state), args));
    state.scheduler.cancel_all();
    state.scheduler.join();
    result
}

/// Everything `serve` builds before it listens: the model loaded, adapters loaded, the
/// scheduler's thread started. [`http::router`] over it is the whole HTTP application, which
/// the fuzz targets drive without a socket.
pub fn app_state(args: &ServeArgs) -> Result<Arc<AppState>> {
    let api_key = secret(
        args.api_key.as_deref(),
        args.api_key_file.as_deref(),
        "--api-key",
    )?;
    let admin_token = secret(
        args.admin_token.as_deref(),
        args.admin_token_file.as_deref(),
        "--admin-token",
    )?;
    let adapter_root = if args.enable_adapter_mutation {
        if admin_token.is_none() {
            bail!("--enable-adapter-mutation needs --admin-token (or --admin-token-file)");
        }
        let root = args.adapter_root.as_ref().context(
            "--enable-adapter-mutation needs --adapter-root, the directory loads may read",
        )?;
        Some(
            root.canonicalize()
                .with_context(|| format!("--adapter-root {}", root.display()))?,
        )
    } else {
        if admin_token.is_some() {
            tracing::warn!("--admin-token has no effect without --enable-adapter-mutation");
        }
        None
    };
    if api_key.is_none() && !is_loopback(&args.host) {
        tracing::warn!(host = %args.host, "listening beyond loopback without --api-key");
    }
    let mut engine = model_source::load_engine(&args.model)?;
    tracing::info!(
        cpu_kernels = hexacoder_engine::nn::Isa::best().map_or("candle's", |isa| isa.name()),
        "CPU kernels (HEXACODER_MAX_ISA=avx2 caps them)"
    );
    if let Some(path) = &args.merge_adapter {
        let adapter = hexacoder_adapters::Adapter::load(path, engine.model())
            .with_context(|| format!("--merge-adapter {}", path.display()))?;
        let kernel = if args.model.candle_q8_kernel {
            hexacoder_engine::nn::Q8Kernel::Candle
        } else {
            hexacoder_engine::nn::Q8Kernel::Fastest
        };
        engine
            .merge_adapter(&adapter, kernel)
            .with_context(|| format!("merging {}", path.display()))?;
        tracing::info!(adapter = %path.display(), "adapter merged into the base weights");
    }
    let tokenizer = engine.shared_tokenizer();
    let model = engine.shared_model();
    let card = ModelCard {
        id: args
            .served_model_name
            .clone()
            .unwrap_or_else(|| served_name(&args.model.model)),
        created: crate::time::unix_now(),
        context_length: engine.context_length(),
        chat_template: ChatTemplate::new(engine.chat_template(), &tokenizer),
        tokenizer,
        has_fim: engine.fim().is_some(),
    };
    tracing::info!(chat_template = ?card.chat_template.kind(), "chat template");
    let adapters = AdapterRegistry::new(
        model,
        &card.id,
        AdapterLimits {
            max_adapters: args.max_adapters,
            max_bytes: args.max_adapter_bytes,
        },
    );
    let startup = startup_adapters(args)?;
    for (name, path) in &startup {
        let info = adapters
            .load(name, path)
            .with_context(|| format!("loading adapter {name} from {}", path.display()))?;
        tracing::info!(adapter = %info.name, bytes = info.bytes, "adapter loaded");
    }
    // The security adapter HexaCoder ships for this base, unless turned off, already merged,
    // or replaced by one of the user's under the same name.
    if !args.no_default_adapter
        && args.merge_adapter.is_none()
        && let Some(shipped) = hexacoder_catalog::trained_adapter_for(&args.model.model)
        && !startup.iter().any(|(name, _)| name == shipped.name)
    {
        let dir = shipped
            .materialize(&hexacoder_catalog::cache_dir())
            .with_context(|| format!("writing the shipped adapter {}", shipped.dir_name))?;
        let info = adapters
            .load(shipped.name, &dir)
            .with_context(|| format!("loading the shipped adapter from {}", dir.display()))?;
        tracing::info!(adapter = %info.name, bytes = info.bytes, "shipped security adapter loaded (--no-default-adapter turns it off)");
    }
    let scheduler = Scheduler::start(
        engine,
        SchedulerOptions {
            max_running: args.max_concurrent.max(1),
            max_waiting: args.max_queue,
            batch: BatchOptions {
                prefill_chunk: args.prefill_chunk.max(1),
                interleaved_prefill_chunk: args.interleaved_prefill_chunk.max(1),
            },
        },
    )
    .context("starting the engine thread")?;
    let state = Arc::new(AppState {
        scheduler: Arc::new(scheduler),
        model: card,
        metrics: Metrics::new(args.max_adapters).context("registering metrics")?,
        api_key_digest: api_key.as_deref().map(http::auth::api_key_digest),
        adapters,
        admin_token_digest: if args.enable_adapter_mutation {
            admin_token.as_deref().map(http::auth::api_key_digest)
        } else {
            None
        },
        adapter_root,
        adapter_requests: Default::default(),
        oracle: Arc::new(
            hexacoder_oracle::EmbeddedAnalyzer::builtin().context("loading the oracle's rules")?,
        ),
        two_step: http::two_step::TwoStepDefaults {
            enabled: args.two_step,
            options: hexacoder_two_step::TwoStepOptions {
                first_step_tokens: args.first_step_tokens,
                prune_unused: args.prune_unused_imports,
                per_sample_imports: false,
                without_imports: args.two_step_without_imports,
            },
        },
        request_timeout: (args.request_timeout > 0)
            .then(|| Duration::from_secs(args.request_timeout)),
        max_body_bytes: args.max_body_bytes,
        shutting_down: AtomicBool::new(false),
    });
    Ok(state)
}

async fn serve(state: Arc<AppState>, args: &ServeArgs) -> Result<()> {
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr().context("listening address")?;
    print_banner(addr, &state.model.id, state.api_key_digest.is_some());

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopping = {
        let state = Arc::clone(&state);
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tracing::info!("shutting down: finishing in-flight requests");
            state.shutting_down.store(true, Ordering::Relaxed);
            state.scheduler.close();
        }
    };
    let header_read_timeout = Duration::from_secs(args.header_read_timeout);
    let server = accept_loop(
        listener,
        http::router(Arc::clone(&state)),
        header_read_timeout,
        stopping,
    );
    tokio::pin!(server);
    let deadline = Duration::from_secs(args.shutdown_timeout);
    let mut stop_rx = stop_rx;
    tokio::select! {
        () = &mut server => {}
        _ = async {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(deadline).await;
        } => {
            tracing::warn!(?deadline, "shutdown deadline passed; cancelling what is left");
            state.scheduler.cancel_all();
            // Cancelled requests answer at once; give their connections a moment to flush.
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut server).await;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves connections until `stopping` completes, then waits for the open ones to finish.
/// Our own loop rather than `axum::serve`, which gives hyper no timer and so no limit on how
/// long a client may take to send its headers: one trickling a byte at a time would hold a
/// connection (and its task) forever.
async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    header_read_timeout: Duration,
    stopping: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connections = GracefulShutdown::new();
    tokio::pin!(stopping);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stopping => break,
        };
        // Streamed tokens go out as they come, not batched by Nagle's algorithm.
        let _ = socket.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(socket), service)
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A secret given directly or as the first line of a file.
fn secret(value: Option<&str>, file: Option<&Path>, flag: &str) -> Result<Option<String>> {
    if let Some(value) = value {
        if value.trim().is_empty() {
            bail!("{flag} is empty");
        }
        return Ok(Some(value.trim().to_string()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {flag}-file {}", path.display()))?;
    match text.lines().next().map(str::trim) {
        Some(key) if !key.is_empty() => Ok(Some(key.to_string())),
        _ => bail!("{flag}-file {} is empty", path.display()),
    }
}

/// `--adapter NAME=PATH` and the subdirectories of `--adapter-dir`.
fn startup_adapters(args: &ServeArgs) -> Result<Vec<(String, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for spec in &args.adapters {
        let Some((name, path)) = spec.split_once('=') else {
            bail!("--adapter {spec:?} is not NAME=PATH");
        };
        out.push((name.to_string(), std::path::PathBuf::from(path)));
    }
    if let Some(dir) = &args.adapter_dir {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read --adapter-dir {}", dir.display()))?;
        let mut found = Vec::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot read --adapter-dir {}", dir.display()))?
                .path();
            if path.is_dir()
                && let Some(name) = path.file_name().and_then(|n| n.to_str())
                && !name.starts_with('.')
            {
                found.push((name.to_string(), path.clone()));
            }
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A short model name for `--model`: catalogue and hub ids as given, files by their stem.
fn served_name(model: &str) -> String {
    let path = Path::new(model);
    if hexacoder_catalog::find(model).is_none() && path.exists() {
        let stem = if path.is_dir() {
            path.file_name()
        } else {
            path.file_stem()
        };
        if let Some(stem) = stem {
            return stem.to_string_lossy().into_owned();
        }
    }
    model.to_string()
}

fn print_banner(addr: SocketAddr, model: &str, auth: bool) {
    let base = format!("http://{addr}");
    let key = if auth { "$HEXACODER_API_KEY" } else { "unused" };
    let auth_header = if auth {
        " -H \"Authorization: Bearer $HEXACODER_API_KEY\""
    } else {
        ""
    };
    // The first line is machine-read by tests and scripts, which may close the pipe after
    // it: a failed write must not take the server down, so errors are ignored.
    let banner = format!(
        "listening on {base}\n\nTry it with curl:\n  curl -s {base}/v1/completions{auth_header} -H 'Content-Type: application/json' \\\n    -d '{{\"model\": \"{model}\", \"prompt\": \"def fibonacci(n):\\n\", \"max_tokens\": 64, \"temperature\": 0}}'\n\nor with the official openai Python client (pip install openai):\n  python3 -c 'from openai import OpenAI; c = OpenAI(base_url=\"{base}/v1\", api_key=\"{key}\"); print(c.completions.create(model=\"{model}\", prompt=\"def fibonacci(n):\\n\", max_tokens=64, temperature=0).choices[0].text)'\n\n"
    );
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
}
