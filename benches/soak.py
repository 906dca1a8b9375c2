"""Soak and hostile clients against `hexacoder-server serve` on the smoke model (issue 21).

Run with: python3 benches/soak.py [--seconds 60] [--clients 64] [--server target/release/hexacoder-server]

1. Soak: --clients threads for --seconds, each sending one request after another, mixing
   streamed completions, n = 2, two-step, verify mode, an adapter and chat. Counts statuses
   (only 200 and 429 are acceptable), latencies, and /health answers polled throughout; RSS
   after warm-up and at the end.
2. Hostile clients: disconnects mid-stream, mid-body and mid-headers; more connections than
   --max-concurrent + --max-queue; a 4 MiB body of nested JSON; a prompt that fills the
   context exactly and one token more; adapter loads of a 1 GiB sparse file, a FIFO, and
   /dev/zero through a symlink inside the adapter root. Each must end in a clear status within
   seconds while /health keeps answering.

Loopback only, bounded in time. Prints a markdown section and appends it to benches/RESULTS.md
(unless --no-write).
"""

import argparse
import datetime
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "soak-admin"
PROMPTS = [
    "import os\n\n\ndef run(cmd):\n",
    "from flask import Flask, request\n\napp = Flask(__name__)\n\n@app.route('/')\ndef index():\n",
    "def fibonacci(n):\n",
    "import sqlite3\n\n\ndef find_user(name):\n",
]


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    def __init__(self, binary, model, adapter, root):
        command = [str(binary), "serve", "--model", model, "--port", "0",
                   "--max-concurrent", "8", "--max-queue", "32", "--request-timeout", "120",
                   # A small prefix cache fills during warm-up, so RSS growth after it is a leak.
                   "--prefix-cache-bytes", str(32 << 20),
                   "--enable-adapter-mutation", "--admin-token", ADMIN, "--adapter-root", str(root),
                   "--adapter", f"secure={adapter}", "--no-default-adapter"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "HEXACODER_LOG": "warn"})
        line = self.proc.stdout.readline().strip()
        assert line.startswith("listening on http://"), line
        self.host, port = line.removeprefix("listening on http://").rsplit(":", 1)
        self.port = int(port)

    def request(self, method, path, body=None, headers=None, timeout=120):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=data, headers=hdrs)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def mixed_request(rng):
    prompt = rng.choice(PROMPTS)
    base = {"prompt": prompt, "max_tokens": 24, "temperature": 0.7, "seed": rng.randrange(1 << 30)}
    kind = rng.choice(["stream", "n2", "two_step", "verify", "adapter", "chat"])
    if kind == "stream":
        return kind, "/v1/completions", {**base, "stream": True}
    if kind == "n2":
        return kind, "/v1/completions", {**base, "n": 2}
    if kind == "two_step":
        return kind, "/v1/completions", {**base, "hexacoder": {"two_step": True}}
    if kind == "verify":
        return kind, "/v1/completions", {**base, "hexacoder": {"verify": True, "candidates": 2, "language": "python"}}
    if kind == "adapter":
        return kind, "/v1/completions", {**base, "model": "secure", "stream": True}
    return kind, "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}], "max_tokens": 24,
                                           "temperature": 0.7}


def soak(server, seconds, clients):
    stop = time.time() + seconds
    results = []  # (kind, status, seconds)
    health = {"ok": 0, "bad": 0, "worst": 0.0}
    lock = threading.Lock()

    def client(index):
        rng = random.Random(index)
        while time.time() < stop:
            kind, path, body = mixed_request(rng)
            started = time.time()
            try:
                status, _ = server.request("POST", path, body)
            except OSError as err:
                status = f"error {type(err).__name__}"
            with lock:
                results.append((kind, status, time.time() - started))
            if status == 429:
                time.sleep(0.2)

    def poll_health():
        while time.time() < stop:
            started = time.time()
            try:
                status, _ = server.request("GET", "/health", timeout=5)
            except OSError:
                status = None
            took = time.time() - started
            with lock:
                health["ok" if status == 200 else "bad"] += 1
                health["worst"] = max(health["worst"], took)
            time.sleep(0.25)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=poll_health))
    for thread in threads:
        thread.start()
    time.sleep(min(10, seconds / 3))
    rss_warm = rss_kib(server.proc.pid)
    for thread in threads:
        thread.join()
    time.sleep(2)
    rss_end = rss_kib(server.proc.pid)
    return results, health, rss_warm, rss_end


def raw(server, data, read=True, timeout=10):
    """Sends raw bytes, then closes (after reading a little when `read`)."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(data)
        if read:
            try:
                sock.recv(200)
            except OSError:
                pass


def healthy(server):
    try:
        return server.request("GET", "/health", timeout=5)[0] == 200
    except OSError:
        return False


def hostile(server, root, adapter):
    checks = []

    def check(name, ok, detail):
        checks.append((name, bool(ok) and healthy(server), detail))

    body = json.dumps({"prompt": "x", "max_tokens": 400, "stream": True, "hexacoder": {"ignore_eos": True}}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    started = time.time()
    for _ in range(20):
        raw(server, head + body)  # reads the first bytes of the stream, then hangs up
    check("20 disconnects mid-stream", True, f"{time.time() - started:.1f} s")
    started = time.time()
    for _ in range(20):
        raw(server, head + body[: len(body) // 2], read=False)
    check("20 disconnects mid-body", True, f"{time.time() - started:.1f} s")
    started = time.time()
    for _ in range(20):
        raw(server, head[: len(head) // 2], read=False)
    check("20 disconnects mid-headers", True, f"{time.time() - started:.1f} s")

    # More clients than running + queued places.
    statuses = []
    lock = threading.Lock()

    def long_request():
        try:
            status, _ = server.request("POST", "/v1/completions",
                                       {"prompt": "x", "max_tokens": 64, "hexacoder": {"ignore_eos": True}})
        except OSError as err:
            status = f"error {type(err).__name__}"
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=long_request) for _ in range(8 + 32 + 24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = {s: statuses.count(s) for s in set(statuses)}
    check("64 at once (8 running + 32 queued places)", set(statuses) <= {200, 429} and 429 in statuses,
          json.dumps(counts, default=str))

    nested = b"[" * (2 << 20) + b"]" * (2 << 20)
    started = time.time()
    status, answer = server.request("POST", "/v1/completions", nested, timeout=30)
    check("4 MiB of nested JSON", status in (400, 413) and time.time() - started < 10,
          f"{status} in {time.time() - started:.2f} s: {answer[:80].decode(errors='replace')}")

    status, models = server.request("GET", "/v1/models")
    context = json.loads(models)["data"][0]["max_model_len"]
    prompt = "def f(x):\n    return x\n" * 8
    status, answer = server.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 0})
    n_prompt = json.loads(answer)["usage"]["prompt_tokens"]
    # Admitted (the stream starts) is enough; generating the whole context would take minutes.
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"prompt": prompt, "max_tokens": context - n_prompt, "stream": True}), headers={"Content-Type": "application/json"})
    fits = conn.getresponse().status
    conn.close()
    over, answer = server.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": context - n_prompt + 1})
    code = json.loads(answer).get("error", {}).get("code")
    check("prompt + max_tokens = the context, then one token more", fits == 200 and over == 400 and code == "context_length_exceeded",
          f"{fits}, then {over} {code} (context {context})")

    config = (Path(adapter) / "adapter_config.json").read_text()
    for name, make in [
        ("a 1 GiB sparse weights file", lambda d: open(d / "adapter_model.safetensors", "wb").truncate(1 << 30)),
        ("a FIFO as the weights file", lambda d: os.mkfifo(d / "adapter_model.safetensors")),
        ("/dev/zero through a symlink inside the root",
         lambda d: os.symlink("/dev/zero", d / "adapter_model.safetensors")),
    ]:
        directory = root / name.split()[1].replace("/", "")
        directory.mkdir()
        (directory / "adapter_config.json").write_text(config)
        make(directory)
        started = time.time()
        try:
            status, answer = server.request("POST", "/v1/load_lora_adapter",
                                            {"lora_name": "hostile", "lora_path": str(directory)},
                                            headers={"x-admin-token": ADMIN}, timeout=30)
            detail = f"{status} in {time.time() - started:.2f} s: {json.loads(answer)['error']['message'][:100]}"
        except (OSError, KeyError, ValueError) as err:
            status, detail = None, f"no answer in {time.time() - started:.1f} s ({type(err).__name__})"
        check(f"adapter load of {name}", status is not None and 400 <= status < 500 and time.time() - started < 10, detail)
    return checks


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", default=str(ROOT / "adapters/trained/smollm2-135m-secure"))
    parser.add_argument("--server", default=None)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    # The newest build, so a stale release binary is not soaked by mistake.
    binary = Path(args.server) if args.server else max(
        (p for p in [ROOT / "target/release/hexacoder-server", ROOT / "target/debug/hexacoder-server"] if p.exists()),
        key=lambda p: p.stat().st_mtime)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        server = Server(binary, args.model, args.adapter, root)
        try:
            results, health, rss_warm, rss_end = soak(server, args.seconds, args.clients)
            checks = hostile(server, root, args.adapter)
        finally:
            server.stop()
    by_status = {}
    for _, status, _ in results:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
    ok_latency = [t for _, s, t in results if s == 200]
    growth = (rss_end - rss_warm) / rss_warm * 100 if rss_warm else float("nan")
    lines = [
        f"\n## Soak and hostile clients (issue 21), {datetime.date.today()}, commit {commit}\n",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores. Server: `{binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary}` "
        f"on `{args.model}` with the `secure` adapter, `--max-concurrent 8 --max-queue 32 --prefix-cache-bytes 32 MiB`.",
        f"Command: `python3 benches/soak.py --seconds {args.seconds:g} --clients {args.clients}`\n",
        f"Soak: {args.clients} clients for {args.seconds:g} s, mixing streamed completions, n = 2, two-step, "
        "verify mode, the adapter and chat (24 new tokens each).\n",
        "| requests | by status | p50 latency (200) | p99 latency (200) | /health answered | slowest /health | RSS after warm-up | RSS at end |",
        "|---|---|---|---|---|---|---|---|",
        f"| {len(results)} | {json.dumps(by_status)} | {statistics.median(ok_latency) if ok_latency else float('nan'):.2f} s | "
        f"{percentile(ok_latency, 0.99):.2f} s | {health['ok']}/{health['ok'] + health['bad']} | {health['worst']:.2f} s | "
        f"{rss_warm / 1024:.0f} MiB | {rss_end / 1024:.0f} MiB ({growth:+.1f}%) |\n",
        "| hostile client | passed | what happened |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {'yes' if ok else '**no**'} | {detail} |" for name, ok, detail in checks]
    section = "\n".join(lines) + "\n"
    print(section)
    soak_ok = set(by_status) <= {"200", "429"} and health["bad"] == 0 and growth <= 10
    if not args.no_write:
        with open(ROOT / "benches" / "RESULTS.md", "a") as out:
            out.write(section)
    sys.exit(0 if soak_ok and all(ok for _, ok, _ in checks) else 1)


if __name__ == "__main__":
    main()
