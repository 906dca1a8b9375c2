"""Greedy parity of `hexacoder-server generate` on CPU and on CUDA, and (with --hf) the
log-probabilities transformers gives the CPU's tokens on the GPU in f32.

Usage: python3 parity.py BIN MODEL OUT_JSON [--hf DIR_OR_GGUF] [--max-tokens N]
"""

import argparse
import json
import subprocess
import time

PROMPTS = [
    "def fibonacci(n):\n",
    "import os\n\ndef list_files(path):\n",
    "#include <stdio.h>\n#include <string.h>\n\nint copy_name(char *dst, const char *src) {\n",
    "from flask import Flask, request\nimport sqlite3\n\napp = Flask(__name__)\n\n@app.route('/user')\ndef user():\n    name = request.args.get('name')\n",
]


def generate(binary, model, prompt, device, max_tokens):
    started = time.time()
    done = subprocess.run(
        [binary, "generate", "--model", model, "--prompt", prompt, "--max-tokens", str(max_tokens),
         "--json", "--device", device],
        capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        return {"error": done.stderr[-3000:]}
    doc = json.loads(done.stdout)
    sample = doc["samples"][0]
    return {
        "text": sample["text"],
        "ids": [t["id"] for t in sample["tokens"]],
        "logprobs": [t["logprob"] for t in sample["tokens"]],
        "prompt_tokens": doc["prompt_tokens"],
        "wall_s": time.time() - started,
    }


def hf_logprobs(source, prompt, ids):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    global _hf
    if "_hf" not in globals():
        kwargs = {"gguf_file": source.rsplit("/", 1)[1]} if source.endswith(".gguf") else {}
        root = source.rsplit("/", 1)[0] if source.endswith(".gguf") else source
        model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32, **kwargs).to("cuda").eval()
        if kwargs:
            hf_tok = AutoTokenizer.from_pretrained(root, **kwargs)
            encode = lambda text: hf_tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        else:
            from tokenizers import Tokenizer

            raw = Tokenizer.from_file(f"{root}/tokenizer.json")
            encode = lambda text: raw.encode(text, add_special_tokens=False).ids  # noqa: E731
        _hf = (model, encode)
    model, encode = _hf
    prompt_ids = encode(prompt)
    full = torch.tensor([prompt_ids + ids], device="cuda")
    with torch.no_grad():
        logits = model(full).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    n = len(prompt_ids)
    picked = [logp[n - 1 + i, tok].item() for i, tok in enumerate(ids)]
    greedy = [int(logp[n - 1 + i].argmax()) for i in range(len(ids))]
    return {"prompt_tokens": n, "logprobs": picked, "argmax_agrees": sum(g == t for g, t in zip(greedy, ids))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--hf")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    rows = []
    for prompt in PROMPTS:
        cpu = generate(args.binary, args.model, prompt, "cpu", args.max_tokens)
        cuda = generate(args.binary, args.model, prompt, "cuda:0", args.max_tokens)
        row = {"prompt": prompt, "cpu": cpu, "cuda": cuda}
        if "error" in cpu or "error" in cuda:
            print("ERROR", json.dumps({k: v.get("error") for k, v in (("cpu", cpu), ("cuda", cuda))})[:3000])
            rows.append(row)
            continue
        same = 0
        while same < min(len(cpu["ids"]), len(cuda["ids"])) and cpu["ids"][same] == cuda["ids"][same]:
            same += 1
        diffs = [abs(a - b) for a, b in zip(cpu["logprobs"][:same], cuda["logprobs"][:same])]
        row["identical_tokens"] = cpu["ids"] == cuda["ids"]
        row["common_prefix_tokens"] = same
        row["max_abs_logprob_diff_cpu_cuda"] = max(diffs, default=0.0)
        if args.hf:
            try:
                hf = hf_logprobs(args.hf, prompt, cpu["ids"])
                row["hf"] = hf
                row["hf_prompt_tokens_match"] = hf["prompt_tokens"] == cpu["prompt_tokens"]
                row["max_abs_logprob_diff_cpu_hf"] = max(abs(a - b) for a, b in zip(cpu["logprobs"], hf["logprobs"]))
                row["max_abs_logprob_diff_cuda_hf"] = max(
                    (abs(a - b) for a, b in zip(cuda["logprobs"][:same], hf["logprobs"][:same])), default=0.0)
            except Exception as e:  # noqa: BLE001 - reported, the other checks go on
                row["hf_error"] = repr(e)[:2000]
        print(json.dumps({k: v for k, v in row.items() if k not in ("cpu", "cuda", "hf")}),
              "| cpu:", repr(cpu["text"][:80]), "| cuda:", repr(cuda["text"][:80]),
              f"| wall cpu {cpu['wall_s']:.1f}s cuda {cuda['wall_s']:.1f}s")
        rows.append(row)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
