//! Run with: `cargo run --release -p hexacoder-benches --bin train-bench -- MODEL [SEQ] [ROWS]`
//!
//! Training throughput of `hexacoder-train`'s forward and backward pass on real rows of the
//! shared HexaCoder set (cut to SEQ tokens, default 256; ROWS rows, default 8), against this
//! CPU's f32 matrix-multiply peak measured in the same run with candle's GEMM and the trainer's
//! own (the faster of the two per shape), before and after the timed steps (the higher is the
//! reference). Prints one
//! JSON document: tokens/s, achieved GFLOP/s (FLOPs counted from the shapes), the share of
//! the peak, the forward/backward split and peak RSS. `TRAIN_BENCH_DEFAULT_MALLOC=1` measures
//! with glibc's default allocator settings instead of the trainer's. `TRAIN_BENCH_ROWS=FILE`
//! writes the rows it times (ids and loss mask, as JSONL) so that a peer trains on the same
//! tokens (`benches/train_vs_peft.py`).
//!
//! `train-bench gemm [M] [REPS]` times instead the frozen projections' products alone, at the
//! 0.5B model's shapes with M tokens (default 256): candle's matmul (the `gemm` crate, which
//! packs the weight on every call) against `PackedMatrix` (packed once), forward (`x · Wᵀ`)
//! and the input's gradient (`dy · W`), the two alternated, medians of REPS (default 9).

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use hexacoder_benches::{cpu_name, median};
use hexacoder_trainer::train::data::{self, Example};
use hexacoder_trainer::train::model::{self, Lora, LoraSettings, TrainModel};
use serde_json::json;

/// GFLOP/s of `[m, k] × [n, k]ᵀ` in f32, median of 7 after a warm-up: the better of
/// candle's matmul and the trainer's over a packed weight (the GEMMs this process has).
fn matmul_gflops(m: usize, k: usize, n: usize) -> Result<f64> {
    use hexacoder_trainer::train::packed::PackedMatrix;
    let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
    let packed = PackedMatrix::transposed(&b.flatten_all()?.to_vec1::<f32>()?, n, k);
    let a_values: Vec<f32> = a.flatten_all()?.to_vec1()?;
    let median_s = |product: &dyn Fn() -> Result<()>| -> Result<f64> {
        product()?;
        let times = (0..7)
            .map(|_| {
                let t = Instant::now();
                product()?;
                Ok(t.elapsed().as_secs_f64())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(median(times))
    };
    let candle = median_s(&|| {
        a.matmul(&b.t()?)?;
        Ok(())
    })?;
    let ours = median_s(&|| {
        std::hint::black_box(packed.left_multiply(&a_values));
        Ok(())
    })?;
    Ok(2.0 * (m * k * n) as f64 / candle.min(ours) / 1e9)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// FLOPs of one row's forward and backward pass: every frozen projection twice forward-sized
/// (its output, then its input's gradient), attention's four products forward and about
/// twice that backward, and the output head at the masked positions, forward and backward.
fn row_flops(model: &TrainModel, example: &Example) -> f64 {
    let c = model.config();
    let t = example.ids.len() as f64;
    let (h, i) = (c.hidden_size as f64, c.intermediate_size as f64);
    let (q, kv) = (
        (c.num_attention_heads * c.head_dim) as f64,
        (c.num_key_value_heads * c.head_dim) as f64,
    );
    let per_layer_params = h * (q + 2.0 * kv) + q * h + 3.0 * h * i;
    let projections = 4.0 * t * per_layer_params;
    let attention = 3.0 * 2.0 * 2.0 * t * t * q;
    let head = 4.0 * example.masked() as f64 * c.vocab_size as f64 * h;
    c.num_hidden_layers as f64 * (projections + attention) + head
}

// As the binaries do: large blocks on reused, huge-page memory.
#[global_allocator]
static ALLOCATOR: hexacoder_engine::alloc::HugePageAlloc = hexacoder_engine::alloc::HugePageAlloc;

/// The projections' products, candle's against ours over packed weights (see the module's
/// comment).
fn gemm_table(m: usize, reps: usize) -> Result<()> {
    use hexacoder_trainer::train::packed::PackedMatrix;
    println!(
        "CPU: {}, {} threads, M = {m}, median of {reps} (ms per product)\n",
        cpu_name(),
        candle_core::utils::get_num_threads()
    );
    println!("| projection (out × in) | product | candle | packed | candle / packed |");
    println!("|---|---|---|---|---|");
    let shapes = [
        ("q, o", 896, 896),
        ("k, v", 128, 896),
        ("gate, up", 4864, 896),
        ("down", 896, 4864),
    ];
    let (mut candle_total, mut packed_total) = (0.0, 0.0);
    for (name, out, inp) in shapes {
        let w = Tensor::randn(0f32, 0.05, (out, inp), &Device::Cpu)?;
        let values: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let forward = PackedMatrix::transposed(&values, out, inp);
        let gradient = PackedMatrix::plain(&values, out, inp);
        for (product, packed, k) in [("x · Wᵀ", &forward, inp), ("dy · W", &gradient, out)] {
            let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let a_values: Vec<f32> = a.flatten_all()?.to_vec1()?;
            let theirs = || -> Result<()> {
                if k == inp {
                    a.matmul(&w.t()?)?;
                } else {
                    a.matmul(&w)?;
                }
                Ok(())
            };
            let ours = || {
                std::hint::black_box(packed.left_multiply(&a_values));
            };
            theirs()?;
            ours();
            let (mut t_theirs, mut t_ours) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let t = Instant::now();
                theirs()?;
                t_theirs.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                ours();
                t_ours.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let (theirs, ours) = (median(t_theirs), median(t_ours));
            let count = if name == "down" { 1.0 } else { 2.0 };
            candle_total += count * theirs;
            packed_total += count * ours;
            println!(
                "| {name} ({out} × {inp}) | {product} | {theirs:.2} | {ours:.2} | {:.2}× |",
                theirs / ours
            );
        }
    }
    println!(
        "| one layer's seven, both ways | | {candle_total:.1} | {packed_total:.1} | {:.2}× |",
        candle_total / packed_total
    );
    Ok(())
}

fn main() -> Result<()> {
    // SAFETY: nothing has started a thread yet.
    unsafe { hexacoder_trainer::train::settle_thread_count() };
    let mut args = std::env::args().skip(1);
    if std::env::args().nth(1).as_deref() == Some("gemm") {
        let mut numbers = std::env::args().skip(2).map(|v| {
            v.parse::<usize>()
                .with_context(|| format!("M and REPS are whole numbers, not {v:?}"))
        });
        let m = numbers.next().transpose()?.unwrap_or(256);
        let reps = numbers.next().transpose()?.unwrap_or(9);
        return gemm_table(m, reps);
    }
    let model_path = args
        .next()
        .context("usage: train-bench MODEL [SEQ] [ROWS]")?;
    let seq: usize = args.next().map_or(Ok(256), |s| s.parse())?;
    let rows: usize = args.next().map_or(Ok(8), |s| s.parse())?;
    if std::env::var_os("TRAIN_BENCH_DEFAULT_MALLOC").is_none() {
        hexacoder_trainer::train::keep_freed_memory();
    }
    let engine = hexacoder_trainer::train::load_base(std::path::Path::new(&model_path))?;
    let c = engine.model().config().clone();
    let shared =
        hexacoder_testkit::shared_dir().join("bench/hexacoder/dataset/hexacoder_train.jsonl");
    let dataset = data::prepare(&[shared], engine.tokenizer(), seq, None, 0.0, 0)?;
    // The longest rows, so that sequences are near SEQ tokens as the benchmark says.
    let mut examples = dataset.train;
    examples.sort_by_key(|e| std::cmp::Reverse(e.ids.len()));
    examples.truncate(rows);
    if let Some(path) = std::env::var_os("TRAIN_BENCH_ROWS") {
        let lines: String = examples
            .iter()
            .map(|e| {
                let mask: Vec<u8> = e.mask.iter().map(|&m| u8::from(m)).collect();
                format!(
                    "{}\n",
                    json!({"ids": e.ids, "mask": mask, "origin": e.origin})
                )
            })
            .collect();
        let path = std::path::PathBuf::from(path);
        let staged = path.with_extension("tmp");
        std::fs::write(&staged, lines).with_context(|| format!("writing {}", staged.display()))?;
        std::fs::rename(&staged, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    let model = TrainModel::new(engine.model(), &Device::Cpu)?;
    drop(engine);
    let settings = LoraSettings {
        rank: 8,
        alpha: 16.0,
        dropout: 0.05,
        rslora: false,
        target_modules: ["q", "k", "v", "o"].map(String::from).to_vec(),
    };
    let lora = Lora::new(&model, &settings, 0)?;
    // The peak moves by a third between runs on these VMs (other tenants, clock), so it is
    // measured on both sides of the timed steps and the higher figure is the reference.
    let peak = || -> Result<[f64; 3]> {
        Ok([
            matmul_gflops(seq, c.hidden_size, c.intermediate_size)?,
            matmul_gflops(seq, c.intermediate_size, c.hidden_size)?,
            matmul_gflops(1024, 1024, 1024)?,
        ])
    };
    let peak_before = peak()?;
    let tokens: usize = examples.iter().map(|e| e.ids.len()).sum();
    let flops: f64 = examples.iter().map(|e| row_flops(&model, e)).sum();
    // Warm-up on the first row, then forward only, then forward and backward.
    let (nll, _) = model.masked_nll(&examples[0].ids, &examples[0].mask, Some(&lora), None)?;
    nll.backward()?;
    let started = Instant::now();
    for e in &examples {
        let (nll, _) = model.masked_nll(&e.ids, &e.mask, Some(&lora), None)?;
        nll.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    }
    let forward_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for (j, e) in examples.iter().enumerate() {
        let dropout = model::Dropout {
            p: 0.05,
            seed: j as u64,
        };
        let (nll, _) = model.masked_nll(&e.ids, &e.mask, Some(&lora), Some(&dropout))?;
        model::gradients(&lora, &nll.backward()?)?;
    }
    let step_s = started.elapsed().as_secs_f64();
    let peak_after = peak()?;
    let best = |shapes: &[f64; 3]| shapes.iter().copied().fold(0.0, f64::max);
    let peak_gflops = best(&peak_before).max(best(&peak_after));
    let achieved = flops / step_s / 1e9;
    let report = json!({
        "model": model_path,
        "cpu": cpu_name(),
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "seq": seq,
        "rows": examples.len(),
        "tokens": tokens,
        "tokens_per_second": tokens as f64 / step_s,
        "forward_share": forward_s / step_s,
        "gflops_counted": flops / 1e9,
        "achieved_gflops_per_s": achieved,
        "matmul_peak_gflops_per_s": peak_gflops,
        "matmul_peak_before_gflops_per_s": best(&peak_before),
        "matmul_peak_after_gflops_per_s": best(&peak_after),
        "matmul_gflops_by_shape": [peak_before, peak_after],
        "share_of_peak": achieved / peak_gflops,
        "peak_rss_mb": peak_rss_mb(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
