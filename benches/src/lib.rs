//! Benchmarks of HexaCoder against peers. `engine_vs_llamacpp.py` drives the `engine-bench`
//! binary and llama-cpp-python on one workload and writes `RESULTS.md`.

/// The median of `xs` (the upper one for an even count); `NaN` for none.
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// This CPU's model name and widest vector extension, for the header of a results table.
pub fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    let isa = match (has("avx512f"), has("avx512_vnni")) {
        (true, true) => "AVX-512 with VNNI",
        (true, false) => "AVX-512",
        _ => "AVX2",
    };
    format!("{name} ({isa})")
}

/// A tensor of `shape` with values in [-0.5, 0.5) from a xorshift stream seeded by `seed`.
pub fn random_tensor(shape: &[usize], seed: u64) -> anyhow::Result<candle_core::Tensor> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Ok(candle_core::Tensor::from_vec(
        values,
        shape,
        &candle_core::Device::Cpu,
    )?)
}

/// The median wall time of `reps` calls of `f` in milliseconds, after one warm-up call.
pub fn median_ms<T>(reps: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = std::time::Instant::now();
        f()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}
