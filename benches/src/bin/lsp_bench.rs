//! The LSP bridge's overhead: an `inlineCompletion` through `hexacoder-lsp` against the same
//! completion requested from the server directly over HTTP, paired per request.
//!
//! Both run against one `hexacoder-server` (prefix cache off, so neither path profits from
//! the other's work) on a scripted tiny model by default, so that server time is small and
//! steady and the difference is the bridge: JSON-RPC framing, document lookup, prompt
//! building, its own HTTP call and the reply.
//!
//! `cargo build --release -p hexacoder-server -p hexacoder-lsp && cargo run --release -p
//! hexacoder-benches --bin lsp-bench -- [--model PATH] [--requests N]`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use hexacoder_testkit::lsp::Lsp;
use hexacoder_testkit::{Arch, Tiny};
use serde_json::{Value, json};

const CHAIN: [&str; 10] = ["Ċ", "i", "m", "p", "o", "r", "t", "Ġ", "g", "c"];
const MAX_TOKENS: u32 = 16;

struct Args {
    model: Option<PathBuf>,
    requests: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        model: None,
        requests: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--model" => args.model = Some(it.next().context("--model needs a path")?.into()),
            "--requests" => {
                let value = it.next().context("--requests needs a number")?;
                args.requests = value
                    .parse()
                    .with_context(|| format!("--requests {value:?} is not a number"))?;
            }
            other => bail!("unknown argument {other:?} (try --model PATH, --requests N)"),
        }
    }
    Ok(args)
}

fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("bench binary has no directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} is missing: `cargo build --release -p hexacoder-server -p hexacoder-lsp` first",
            path.display()
        );
    }
    Ok(path)
}

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(model: &Path) -> Result<(ServerProcess, String)> {
    let mut command = Command::new(sibling_binary("hexacoder-server")?);
    command
        .args(["serve", "--port", "0", "--served-model-name", "bench"])
        .args(["--prefix-cache-bytes", "0", "--two-step", "off", "--model"])
        .arg(model)
        .env("HEXACODER_LOG", "warn")
        .stderr(Stdio::inherit());
    let (child, base) =
        hexacoder_testkit::server::spawn_listening(command, std::time::Duration::from_secs(120))
            .map_err(anyhow::Error::msg)?;
    Ok((ServerProcess(child), base))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let scratch = tempfile::tempdir()?;
    let model = match &args.model {
        Some(path) => path.clone(),
        None => {
            let tiny = Tiny {
                max_positions: 4096,
                ..Tiny::small(Arch::Qwen2)
            };
            hexacoder_testkit::write_scripted_hf_dir(&tiny, &scratch.path().join("tiny"), &CHAIN)
        }
    };
    let (_server, base) = start_server(&model)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::new();
    let mut lsp = Lsp::spawn(&sibling_binary("hexacoder-lsp")?);
    lsp.initialize(json!({"serverUrl": base, "model": "bench", "debounceMs": 0,
        "maxTokens": MAX_TOKENS, "twoStep": false, "temperature": 0.0}));
    let uri = "file:///bench/app.py";
    lsp.open(uri, "python", "");

    let (mut via_lsp, mut direct, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.requests + 5 {
        // A new file head each time, so neither the bridge's cache nor type-ahead answers.
        let text = format!("# request {i}\nimport os\n\n\ndef handler_{i}(path):\n    data = ");
        let last_line = text.lines().count() as u32 - 1;
        let column = text.lines().last().map_or(0, str::len) as u32;
        lsp.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": i + 2}, "contentChanges": [{"text": text}]}),
        );
        let lsp_call = |lsp: &mut Lsp| -> Result<f64> {
            let started = Instant::now();
            let result = lsp
                .complete_inline(uri, last_line, column)
                .map_err(|e| anyhow::anyhow!("inlineCompletion failed: {e}"))?;
            let seconds = started.elapsed().as_secs_f64();
            if result["items"][0]["insertText"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                bail!("no suggestion for request {i}: {result}");
            }
            Ok(seconds)
        };
        let http_call = || -> Result<f64> {
            let body = json!({"model": "bench", "prompt": text, "max_tokens": MAX_TOKENS,
                "temperature": 0.0, "hexacoder": {"two_step": false, "language": "python"}});
            let started = Instant::now();
            let response: Value = runtime.block_on(async {
                http.post(format!("{base}/v1/completions"))
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await
            })?;
            let seconds = started.elapsed().as_secs_f64();
            if response["choices"][0]["text"].as_str().is_none() {
                bail!("bad response {response}");
            }
            Ok(seconds)
        };
        let (l, h) = if i % 2 == 0 {
            let l = lsp_call(&mut lsp)?;
            (l, http_call()?)
        } else {
            let h = http_call()?;
            (lsp_call(&mut lsp)?, h)
        };
        if i >= 5 {
            via_lsp.push(l * 1e3);
            direct.push(h * 1e3);
            overhead.push((l - h) * 1e3);
        }
    }
    lsp.shutdown();
    let n = overhead.len();
    let (lsp_median, http_median) = (median(&mut via_lsp), median(&mut direct));
    let overhead_median = median(&mut overhead);
    let overhead_p90 = percentile(&mut overhead, 0.9);
    println!(
        "| requests | via hexacoder-lsp (median ms) | direct HTTP (median ms) | overhead, paired (median ms) | overhead p90 (ms) | lsp / direct |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {n} | {lsp_median:.2} | {http_median:.2} | {overhead_median:.2} | {overhead_p90:.2} | {:.2} |",
        lsp_median / http_median
    );
    Ok(())
}
