"""The llama.cpp side of engine_vs_llamacpp.py: the same workload through llama-cpp-python.

Run with: PEER_VENV/bin/python benches/llamacpp_bench.py MODEL.gguf WORKLOAD.json
Prints one JSON document shaped like engine-bench's output. With LLAMACPP_BENCH_LOAD_ONLY set,
loads the model and prints only {"load_s": ...}, as engine-bench does with
HEXACODER_BENCH_LOAD_ONLY.
"""

import json
import os
import resource
import sys
import time

from llama_cpp import Llama


def run(llm, prompt, max_tokens):
    started = time.perf_counter()
    first = last = None
    chunks = 0
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True):
        now = time.perf_counter() - started
        if chunk["choices"][0]["text"]:
            chunks += 1
            first = now if first is None else first
            last = now
    total = time.perf_counter() - started
    return {
        "ttft_s": first if first is not None else total,
        "total_s": total,
        "first_delta_s": first,
        "last_delta_s": last,
        # One streamed chunk per token for plain ASCII code with no stop strings.
        "tokens": chunks,
        "prompt_tokens": len(llm.tokenize(prompt.encode(), add_bos=False, special=True)),
        "cached_tokens": None,
    }


def main():
    model, workload_path = sys.argv[1], sys.argv[2]
    workload = json.load(open(workload_path))
    started = time.perf_counter()
    llm = Llama(model_path=model, n_threads=2, n_threads_batch=2, n_ctx=4096, verbose=False)
    load_s = time.perf_counter() - started
    if os.environ.get("LLAMACPP_BENCH_LOAD_ONLY"):
        print(json.dumps({"load_s": load_s}))
        return
    run(llm, "def warmup():", 4)
    doc = {"engine": "llama.cpp", "load_s": load_s, "decode": [], "prefill": [], "ttft_cold": [], "ttft_warm": []}
    for rep in range(workload["reps"]):
        doc["decode"].append(run(llm, f"# run {rep}\n{workload['decode_prompt']}", workload["decode_tokens"]))
        doc["prefill"].append(run(llm, f"# run {rep}\n{workload['prefill_prompt']}", 1))
        long = f"# run {rep}\n{workload['ttft_prompt']}"
        doc["ttft_cold"].append(run(llm, long, 1))
        doc["ttft_warm"].append(run(llm, long + workload["warm_suffix"], 1))
    # ru_maxrss is in KiB on Linux; it includes the Python interpreter (about 30 MB).
    doc["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
