//! Benchmarks of HexaCoder against peers. `engine_vs_llamacpp.py` drives the `engine-bench`
//! binary and llama-cpp-python on one workload and writes `RESULTS.md`.
