"""Speed of `hexacoder-server serve --device cuda:0` against transformers on the same GGUF
and GPU: prefill of a ~1,000-token prompt, single-stream decode, and 16 concurrent clients.

Usage: python3 speed.py BIN GGUF OUT_JSON
"""

import http.client
import json
import statistics
import subprocess
import sys
import threading
import time

PORT = 18080
CODE = (
    "import os\nimport json\n\n\ndef load_config(path):\n    with open(path) as f:\n        return json.load(f)\n\n\n"
    "def save_config(path, data):\n    tmp = path + '.tmp'\n    with open(tmp, 'w') as f:\n        json.dump(data, f)\n"
    "    os.replace(tmp, path)\n\n\nclass Cache:\n    def __init__(self, size):\n        self.size = size\n"
    "        self.items = {}\n\n    def get(self, key):\n        return self.items.get(key)\n\n"
)


def post(body):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=300)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(data)
    return data


def ours(binary, gguf):
    server = subprocess.Popen([binary, "serve", "--model", gguf, "--device", "cuda:0", "--port", str(PORT),
                               "--max-concurrent", "16", "--max-queue", "64"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("server did not come up")
                time.sleep(0.3)
        long_prompt = CODE * 5
        post({"prompt": "def f(x):\n", "max_tokens": 8, "temperature": 0})  # warm-up
        prefill = []
        for i in range(3):
            r = post({"prompt": f"# run {i}\n" + long_prompt, "max_tokens": 1, "temperature": 0})
            prefill.append(r["usage"]["prompt_tokens"] / (r["hexacoder"]["time_to_first_token_ms"] / 1e3))
        decode = []
        for i in range(3):
            r = post({"prompt": f"# {i}\ndef fibonacci(n):\n", "max_tokens": 256, "temperature": 0,
                      "hexacoder": {"ignore_eos": True}})
            h = r["hexacoder"]
            decode.append((r["usage"]["completion_tokens"] - 1) / ((h["elapsed_ms"] - h["time_to_first_token_ms"]) / 1e3))
        result = {"prompt_tokens": r["usage"]["prompt_tokens"], "prefill_tok_s": statistics.median(prefill),
                  "decode_tok_s": statistics.median(decode), "prefill_runs": prefill, "decode_runs": decode}
        for clients in (1, 16):
            tokens = []

            def client(c):
                for k in range(2):
                    r = post({"prompt": f"# client {c} request {k}\n" + CODE, "max_tokens": 128, "temperature": 0,
                              "hexacoder": {"ignore_eos": True}})
                    tokens.append(r["usage"]["completion_tokens"])

            started = time.time()
            threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            result[f"clients_{clients}_tok_s"] = sum(tokens) / (time.time() - started)
            result[f"clients_{clients}_requests"] = len(tokens)
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def peer(gguf):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, name = gguf.rsplit("/", 1)
    started = time.time()
    model = AutoModelForCausalLM.from_pretrained(root, gguf_file=name, dtype=torch.bfloat16).to("cuda").eval()
    tokenizer = AutoTokenizer.from_pretrained(root, gguf_file=name)
    load_s = time.time() - started
    sync = torch.cuda.synchronize
    long_ids = torch.tensor([tokenizer("# run 0\n" + CODE * 5)["input_ids"]], device="cuda")
    with torch.no_grad():
        model(long_ids)
        prefill = []
        for _ in range(3):
            sync(); t = time.time(); model(long_ids); sync()
            prefill.append(long_ids.shape[1] / (time.time() - t))
        short = torch.tensor([tokenizer("def fibonacci(n):\n")["input_ids"]], device="cuda")
        decode = []
        for _ in range(3):
            sync(); t = time.time()
            model.generate(short, max_new_tokens=256, min_new_tokens=256, do_sample=False)
            sync(); decode.append(256 / (time.time() - t))
        result = {"load_s": load_s, "prompt_tokens": long_ids.shape[1], "prefill_tok_s": statistics.median(prefill),
                  "decode_tok_s": statistics.median(decode)}
        ids = tokenizer("# client 0 request 0\n" + CODE)["input_ids"]
        for clients in (1, 16):
            batch = torch.tensor([ids] * clients, device="cuda")
            sync(); t = time.time()
            for _ in range(2):
                model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=128, min_new_tokens=128,
                               do_sample=False)
            sync()
            result[f"clients_{clients}_tok_s"] = clients * 2 * 128 / (time.time() - t)
    return result


def main():
    binary, gguf, out = sys.argv[1:4]
    result = {}
    for name, run in (("hexacoder_cuda", lambda: ours(binary, gguf)), ("transformers_bf16", lambda: peer(gguf))):
        try:
            result[name] = run()
        except Exception as e:  # noqa: BLE001 - reported; the other side still runs
            result[name] = {"error": repr(e)[:3000]}
        print(name, json.dumps(result[name]))
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
