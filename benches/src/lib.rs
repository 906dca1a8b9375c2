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
    let avx512 = info.contains(" avx512f");
    format!("{name} ({})", if avx512 { "AVX-512" } else { "AVX2" })
}
