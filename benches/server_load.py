"""The HTTP server under concurrent load, against llama.cpp's own `llama-server` (parallel
slots, continuous batching: `-np` equal to our `--max-concurrent`) and llama-cpp-python's
OpenAI-compatible server (one request at a time) on the same GGUF. Writes a section of
benches/RESULTS.md with medians, p95s and ratios.

Run with: python3 benches/server_load.py [--model ID_OR_GGUF] [--clients 1 4 16]

Each client sends IDE-sized prompts (CodeLMSec prompts, tens of tokens) one after another,
streaming, greedy, exactly --max-tokens new tokens (end-of-generation tokens are banned with
logit_bias on every server). The servers run one at a time, so they never compete for the
two cores. Latency is from sending the request to the last chunk; TTFT to the first chunk
with text; throughput is all generated tokens over the wall time of the level.
"""

import argparse
import datetime
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_vs_llamacpp import (  # noqa: E402
    PEER, ROOT, append_results, cmake_args, cpu_model, ensure_llama_server, ensure_peer, model_path,
)

# Qwen2.5-Coder's end-of-generation tokens (llama.cpp treats all five as such).
QWEN_END_TOKENS = [151643, 151645, 151662, 151663, 151664]
MODEL_NAME = "bench"


def prompts():
    path = ROOT.parent / "shared" / "bench" / "codelmsec" / "codelmsec_prompts.jsonl"
    return [json.loads(line)["prompt"] for line in open(path) if line.strip()]


class Server:
    def __init__(self, command, env=None, ready_line=None, port=None):
        # Only a ready line is read; any other output must not fill a pipe and block the server.
        stdout = subprocess.PIPE if ready_line else subprocess.DEVNULL
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=subprocess.DEVNULL, text=True, env=env)
        if ready_line:
            line = self.proc.stdout.readline().strip()
            assert line.startswith(ready_line), line
            self.host, self.port = line[len(ready_line):].removeprefix("http://").rsplit(":", 1)
            self.port = int(self.port)
        else:
            self.host, self.port = "127.0.0.1", port
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/v1/models")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{command[0]} did not come up")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def request(server, prompt, max_tokens, stream=True):
    body = {
        "model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "stream": stream, "logit_bias": {str(t): -100 for t in QWEN_END_TOKENS},
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    started = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    if not stream:
        return json.loads(response.read())
    ttft, text_chunks, usage = None, 0, None
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            text_chunks += 1
            if ttft is None:
                ttft = time.perf_counter() - started
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
    tokens = usage if usage is not None else text_chunks
    if tokens < max_tokens:
        # A server that cuts a stream short (llama-cpp-python interrupts by default) must
        # not look fast.
        raise RuntimeError(f"stream ended after {tokens} of {max_tokens} tokens")
    return {"latency_s": time.perf_counter() - started, "ttft_s": ttft, "tokens": tokens}


def run_level(server, texts, clients, per_client, max_tokens):
    results, errors = [], []
    lock = threading.Lock()
    counter = iter(range(10**9))

    def client():
        for _ in range(per_client):
            with lock:
                prompt = texts[next(counter) % len(texts)]
            try:
                result = request(server, prompt, max_tokens)
            except Exception as err:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(err))
                continue
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[:3]}")
    latencies = sorted(r["latency_s"] for r in results)
    ttfts = sorted(r["ttft_s"] for r in results)
    p95 = lambda xs: xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]  # noqa: E731
    return {
        "requests": len(results),
        "p50_latency_s": statistics.median(latencies),
        "p95_latency_s": p95(latencies),
        "p50_ttft_s": statistics.median(ttfts),
        "p95_ttft_s": p95(ttfts),
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
    }


def measure(server, texts, levels, max_tokens, offset):
    # Warm-up, and a check that the server really generates max_tokens tokens.
    whole = request(server, texts[0], max_tokens, stream=False)
    got = whole["usage"]["completion_tokens"]
    if got != max_tokens:
        raise RuntimeError(f"server generated {got} tokens, not {max_tokens}: logit_bias ignored?")
    out = {}
    for clients, per_client in levels:
        # Each server sees the same prompts, shifted past those of earlier levels.
        shifted = texts[offset[clients]:] + texts[:offset[clients]]
        out[clients] = run_level(server, shifted, clients, per_client, max_tokens)
        print(f"  {clients} clients: {out[clients]}", file=sys.stderr)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=16, help="requests per level (at least one per client)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    python = ensure_peer()
    llama_server = ensure_llama_server()
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "hexacoder-server"], cwd=ROOT, check=True)
    model = model_path(args.model)
    texts = prompts()
    levels = [(c, max(1, args.requests // c)) for c in args.clients]
    offset, total = {}, 1
    for clients, per_client in levels:
        offset[clients] = total
        total += clients * per_client
    slots = max(args.clients)
    threads = str(os.cpu_count())

    def run(name, command, **server_args):
        print(name, file=sys.stderr)
        server = Server(command, **server_args)
        try:
            return measure(server, texts, levels, args.max_tokens, offset)
        finally:
            server.stop()

    ours = run(
        "HexaCoder server",
        [str(ROOT / "target" / "release" / "hexacoder-server"), "serve", "--model", str(model), "--port", "0",
         "--served-model-name", MODEL_NAME, "--max-concurrent", str(slots), "--max-queue", "256"],
        env=dict(os.environ, HEXACODER_LOG="warn"), ready_line="listening on ",
    )
    port = 18765
    # 4,096 positions per slot, as for the others; continuous batching is its default.
    theirs = run(
        "llama-server",
        [str(llama_server), "--model", str(model), "--alias", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
         "--parallel", str(slots), "--ctx-size", str(4096 * slots), "--threads", threads, "--threads-batch", threads],
        port=port,
    )
    python_peer = run(
        "llama-cpp-python server",
        [str(python), "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_NAME, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "4096", "--n_threads", threads, "--n_threads_batch", threads,
         # By default it aborts a running stream whenever a new request arrives.
         "--interrupt_requests", "False"],
        port=port,
    )

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        f"### Server under load: {model.name}, {datetime.date.today()}, commit {commit}",
        "",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores. Peers, both built with `{cmake_args()}`: llama.cpp's "
        f"`llama-server` from the source vendored by `{PEER}` (`--parallel {slots}`, continuous batching, "
        f"`--threads {threads}`), and that package's own server (`python -m llama_cpp.server`, one request at a "
        f"time, `interrupt_requests=False`). Ours: `--max-concurrent {slots}`. Streaming, greedy, "
        f"{args.max_tokens} new tokens per request (end tokens banned by logit_bias on all), CodeLMSec prompts, "
        "closed-loop clients.",
        "",
        "| clients | requests | measure | HexaCoder | llama-server | ours / llama-server | llama-cpp-python | ours / llama-cpp-python |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [("p50 latency (s)", "p50_latency_s", False), ("p95 latency (s)", "p95_latency_s", False),
            ("p50 TTFT (s)", "p50_ttft_s", False), ("p95 TTFT (s)", "p95_ttft_s", False),
            ("aggregate tokens/s", "tokens_per_s", True)]
    for clients, _ in levels:
        a, b, c = ours[clients], theirs[clients], python_peer[clients]
        for label, key, higher in rows:
            note = "" if higher else " (lower is better)"
            ratio = lambda x, y: f"{x / y:.2f}{note}" if y else "n/a"  # noqa: E731
            lines.append(f"| {clients} | {a['requests']} | {label} | {a[key]:.2f} | {b[key]:.2f} | {ratio(a[key], b[key])} | "
                         f"{c[key]:.2f} | {ratio(a[key], c[key])} |")
    lines.append("")
    lines.append(f"Command: `python3 benches/server_load.py --model {args.model} --clients {' '.join(map(str, args.clients))} "
                 f"--requests {args.requests} --max-tokens {args.max_tokens}`")
    lines.append("")
    table = "\n".join(lines)
    print(table)
    print(json.dumps({"ours": ours, "llama-server": theirs, "llama-cpp-python": python_peer}), file=sys.stderr)
    if not args.no_write:
        append_results(table)


if __name__ == "__main__":
    main()
