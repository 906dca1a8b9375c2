"""Our engine against llama.cpp (llama-cpp-python) on the same GGUF, the same prompts and
settings, on this CPU. Writes a section of benches/RESULTS.md with medians and ratios.

Run with: python3 benches/engine_vs_llamacpp.py [--model ID_OR_GGUF] [--reps N] [--max-isa avx2]

The peer is built once by pip into target/bench-venv, with instruction-set flags read from
this CPU (AMX always off: it faults on these machines; AVX-512 only where the OS enables it).
`--max-isa avx2` holds both engines to AVX2 on a CPU that has AVX-512 (our engine through
HEXACODER_MAX_ISA, the peer built without AVX-512 into target/bench-venv-avx2), to compare
the AVX2 kernels where no AVX2-only machine is at hand.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "target" / "bench-venv"
# Set by --max-isa avx2: both engines held to AVX2 (see the module's docstring).
AVX2_ONLY = False
PEER = "llama-cpp-python[server]==0.3.36"
# llama.cpp's own server, built from the llama.cpp that the peer's source distribution vendors.
LLAMA_SERVER_DIR = ROOT / "target" / "llama-server"
BUILD_TOOLS = ["cmake==4.4.5", "ninja==1.13.2"]


def cpu_flags():
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def os_enables_avx512():
    """cpuinfo can list avx512f while XCR0 has the ZMM state off; compile a one-line probe."""
    if "avx512f" not in cpu_flags():
        return False
    probe = ROOT / "target" / "avx512probe"
    src = probe.with_suffix(".c")
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(
        "int main(){unsigned lo,hi;__asm__(\"xgetbv\":\"=a\"(lo),\"=d\"(hi):\"c\"(0));return (lo&0xe6)==0xe6?0:1;}\n"
    )
    if subprocess.run(["cc", "-o", str(probe), str(src)]).returncode != 0:
        return False
    return subprocess.run([str(probe)]).returncode == 0


def cmake_args():
    flags = cpu_flags()
    args = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    for flag, option in [("avx", "AVX"), ("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C")]:
        args.append(f"-DGGML_{option}={'ON' if flag in flags else 'OFF'}")
    avx512 = os_enables_avx512() and not AVX2_ONLY
    args.append(f"-DGGML_AVX512={'ON' if avx512 else 'OFF'}")
    if avx512:
        args.append(f"-DGGML_AVX512_VNNI={'ON' if 'avx512_vnni' in flags else 'OFF'}")
        args.append(f"-DGGML_AVX512_BF16={'ON' if 'avx512_bf16' in flags else 'OFF'}")
    return " ".join(args)


def ensure_peer():
    python = VENV / "bin" / "python"
    stamp = VENV / "peer-build.txt"
    wanted = f"{PEER} {cmake_args()}"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"building {PEER} (about 7 minutes) with {cmake_args()}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    env = dict(os.environ, CMAKE_ARGS=cmake_args())
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-cache-dir", "--force-reinstall", PEER], check=True, env=env)
    stamp.write_text(wanted)
    return python


def llama_server_cmake_args():
    """The peer's instruction-set flags, plus: a static server binary, no web UI (the prebuilt
    one would be downloaded), no HTTPS, no tests or examples."""
    return cmake_args() + (" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF"
                           " -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_SERVER=ON"
                           " -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF")


def ensure_llama_server():
    """Builds `llama-server` once (about 10 minutes on 2 cores) from the llama.cpp source in
    the peer's sdist, so both llama.cpp peers run the same code with the same flags."""
    binary = LLAMA_SERVER_DIR / "build" / "bin" / "llama-server"
    stamp = LLAMA_SERVER_DIR / "build-stamp.txt"
    spec = PEER.replace("[server]", "")
    wanted = f"{spec} llama-server {llama_server_cmake_args()}"
    if binary.exists() and stamp.exists() and stamp.read_text() == wanted:
        return binary
    python = ensure_peer()
    print(f"building llama-server from {spec}'s vendored llama.cpp with {cmake_args()}", file=sys.stderr)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *BUILD_TOOLS], check=True)
    sdist = LLAMA_SERVER_DIR / "sdist"
    subprocess.run([str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", spec.split("==")[0],
                    spec, "-d", str(sdist)], check=True)
    archive = next(sdist.glob("llama_cpp_python-*.tar.gz"))
    source = LLAMA_SERVER_DIR / archive.name.removesuffix(".tar.gz")
    if not source.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(LLAMA_SERVER_DIR, filter="data")
    bin_dir = VENV / "bin"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    build = LLAMA_SERVER_DIR / "build"
    subprocess.run([str(bin_dir / "cmake"), "-S", str(source / "vendor" / "llama.cpp"), "-B", str(build), "-G", "Ninja",
                    *llama_server_cmake_args().split()], check=True, env=env)
    subprocess.run([str(bin_dir / "cmake"), "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count())],
                   check=True, env=env)
    stamp.write_text(wanted)
    return binary


def model_path(model):
    if Path(model).is_file():
        return Path(model)
    out = subprocess.run(
        ["cargo", "run", "--release", "--quiet", "-p", "hexacoder-server", "--", "fetch", model],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def workload(python, model, reps):
    """Prompts of exact token lengths, cut from the CodeLMSec prompts with the model's tokenizer."""
    script = r"""
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
texts = [json.loads(l)["prompt"] for l in open(sys.argv[2]) if l.strip()]
corpus = "\n\n".join(texts * 4)
ids = llm.tokenize(corpus.encode(), add_bos=False, special=False)
cut = lambda a, b: llm.detokenize(ids[a:b]).decode("utf-8", "ignore")
# The prefill prompt starts where the TTFT prompt ends, so neither engine can reuse one
# for the other: "cold" stays cold.
print(json.dumps({"ttft": cut(0, 2000), "prefill": cut(3000, 4000)}))
"""
    prompts = ROOT.parent / "shared" / "bench" / "codelmsec" / "codelmsec_prompts.jsonl"
    out = subprocess.run([str(python), "-c", script, str(model), str(prompts)], check=True, capture_output=True, text=True)
    cuts = json.loads(out.stdout)
    return {
        "reps": reps,
        "decode_prompt": "import numpy as np\n\n\nclass LinearRegression:\n    \"\"\"Ordinary least squares with a full set of helper methods.\"\"\"\n\n",
        "decode_tokens": 128,
        "prefill_prompt": cuts["prefill"],
        "ttft_prompt": cuts["ttft"],
        # Eight more tokens, as an editor's next keystrokes.
        "warm_suffix": "\n\ndef check_input(value):\n    return",
    }


def median_load_s(ours_cmd, theirs_cmd, env, reps):
    """Load time as the median of `reps` fresh processes each, ours and the peer's alternated:
    one load is one sample, and on these machines one sample can be twice the next (memory
    the previous process left behind, page-cache state), which decided the ratio before."""
    ours, theirs = [], []
    for _ in range(reps):
        for cmd, extra, out in [(ours_cmd, {"HEXACODER_BENCH_LOAD_ONLY": "1"}, ours),
                                (theirs_cmd, {"LLAMACPP_BENCH_LOAD_ONLY": "1"}, theirs)]:
            run = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(env, **extra))
            out.append(json.loads(run.stdout)["load_s"])
    return statistics.median(ours), statistics.median(theirs)


def append_results(table):
    """Appends a section to benches/RESULTS.md, atomically (temporary file, then rename)."""
    results = ROOT / "benches" / "RESULTS.md"
    text = results.read_text() if results.exists() else "# Benchmark results\n\n"
    staged = results.with_suffix(".md.tmp")
    staged.write_text(text.rstrip() + "\n\n" + table)
    os.replace(staged, results)


def decode_rate(t):
    span = (t["last_delta_s"] or 0) - (t["first_delta_s"] or 0)
    return (t["tokens"] - 1) / span if span > 0 and t["tokens"] > 1 else float("nan")


def summarize(doc):
    med = statistics.median
    return {
        "decode_tok_s": med(decode_rate(t) for t in doc["decode"]),
        "decode_tokens": med(t["tokens"] for t in doc["decode"]),
        "prefill_tok_s": med(t["prompt_tokens"] / t["ttft_s"] for t in doc["prefill"]),
        "prefill_prompt_tokens": med(t["prompt_tokens"] for t in doc["prefill"]),
        "ttft_cold_ms": med(t["ttft_s"] for t in doc["ttft_cold"]) * 1e3,
        "ttft_warm_ms": med(t["ttft_s"] for t in doc["ttft_warm"]) * 1e3,
        "ttft_prompt_tokens": med(t["prompt_tokens"] for t in doc["ttft_cold"]),
        "peak_rss_mb": (doc.get("peak_rss_bytes") or 0) / 1e6,
        "load_s": doc["load_s"],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch RESULTS.md")
    parser.add_argument("--max-isa", choices=["avx2"], help="hold both engines to AVX2 on a CPU with AVX-512")
    args = parser.parse_args()
    global AVX2_ONLY, VENV
    engine_env = dict(os.environ)
    if args.max_isa:
        AVX2_ONLY = True
        VENV = ROOT / "target" / "bench-venv-avx2"
        engine_env["HEXACODER_MAX_ISA"] = args.max_isa

    python = ensure_peer()
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "hexacoder-benches", "--bin", "engine-bench"], cwd=ROOT, check=True)
    model = model_path(args.model)
    work = ROOT / "target" / "bench-workload.json"
    work.write_text(json.dumps(workload(python, model, args.reps)))

    ours_cmd = [str(ROOT / "target" / "release" / "engine-bench"), str(model), str(work)]
    theirs_cmd = [str(python), str(ROOT / "benches" / "llamacpp_bench.py"), str(model), str(work)]
    ours = json.loads(subprocess.run(ours_cmd, check=True, capture_output=True, text=True, env=engine_env).stdout)
    theirs = json.loads(subprocess.run(theirs_cmd, check=True, capture_output=True, text=True).stdout)
    a, b = summarize(ours), summarize(theirs)
    a["load_s"], b["load_s"] = median_load_s(ours_cmd, theirs_cmd, engine_env, max(args.reps, 5))
    rows = [
        ("decode, single stream (tokens/s)", "decode_tok_s", "{:.1f}", True),
        (f"prefill, {a['prefill_prompt_tokens']:.0f}-token prompt (tokens/s)", "prefill_tok_s", "{:.0f}", True),
        (f"TTFT cold, {a['ttft_prompt_tokens']:.0f}-token prompt (ms)", "ttft_cold_ms", "{:.0f}", False),
        ("TTFT warm, same prompt + 8 tokens (ms)", "ttft_warm_ms", "{:.0f}", False),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}", False),
        (f"model load, median of {max(args.reps, 5)} fresh processes alternated (s)", "load_s", "{:.2f}", False),
    ]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        f"### {model.name}, {datetime.date.today()}, commit {commit}",
        "",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; peer: {PEER} built with `{cmake_args()}`, `n_threads=2`.",
        f"Median of {args.reps} runs; greedy; our engine with its defaults"
        + (f", held to AVX2 (`HEXACODER_MAX_ISA={args.max_isa}`), as the peer is." if args.max_isa else "."),
        "",
        "| measure | HexaCoder | llama.cpp | ours / theirs |",
        "|---|---|---|---|",
    ]
    for label, key, fmt, higher_is_better in rows:
        ratio = a[key] / b[key] if b[key] else float("nan")
        lines.append(f"| {label} | {fmt.format(a[key])} | {fmt.format(b[key])} | {ratio:.2f}{'' if higher_is_better else ' (lower is better)'} |")
    lines.append("")
    isa = f" --max-isa {args.max_isa}" if args.max_isa else ""
    lines.append(f"Command: `python3 benches/engine_vs_llamacpp.py --model {args.model} --reps {args.reps}{isa}`")
    lines.append("")
    table = "\n".join(lines)
    print(table)
    print(json.dumps({"ours": a, "llama.cpp": b}), file=sys.stderr)
    if not args.no_write:
        append_results(table)


if __name__ == "__main__":
    main()
