"""The trainer against PyTorch + PEFT on this CPU, on the same rows and settings, and the
shipped adapters loaded by PEFT.

Run with: python3 benches/train_vs_peft.py [--model smollm2-135m] [--seq 256] [--rows 8]
          [--check-adapter] [--no-speed] [--no-write]

1. Speed: `train-bench` (ours) times one forward and backward pass over the ROWS longest rows
   of the shared HexaCoder set cut to SEQ tokens and writes those rows; the peer then trains
   LoRA (r=8, alpha=16, dropout 0.05 on q,k,v,o, f32) with PEFT on exactly those token ids and
   loss masks, over the same GGUF's weights dequantized by transformers, with as many torch
   threads as this machine has cores.
2. `--check-adapter`: PEFT loads the adapter the catalogue ships for the model
   (`adapters/trained/MODEL-secure`, PEFT's own `PeftModel.from_pretrained`) and computes its
   masked loss on the validation rows of the trainer's split (`hexacoder-train train
   --max-steps 1` writes them); it must equal the validation loss the trainer stored in the
   adapter's metadata, and differ from the base model's.

The peer is installed once by pip into target/peft-venv at pinned versions. Writes a section of
benches/RESULTS.md unless --no-write.
"""

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from engine_vs_llamacpp import cpu_model, model_path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "target" / "peft-venv"
PEER = ["torch==2.11.0", "transformers==5.17.0", "peft==0.21.0", "gguf==0.19.0", "safetensors==0.8.0"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def ensure_peer(python):
    if python:
        return Path(python)
    py = VENV / "bin" / "python"
    stamp = VENV / "installed.txt"
    if not (py.exists() and stamp.exists() and stamp.read_text() == "\n".join(PEER)):
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER], check=True)
        stamp.write_text("\n".join(PEER))
    return py


# ---- the peer, run inside the venv ---------------------------------------------------------


def load_base(gguf):
    import torch
    from transformers import AutoModelForCausalLM

    root, name = str(gguf).rsplit("/", 1)
    return AutoModelForCausalLM.from_pretrained(root, gguf_file=name, dtype=torch.float32)


def masked_nll(model, ids, mask):
    """The trainer's loss: summed NLL of the tokens whose mask is set, predicted from the
    position before them."""
    import torch

    x = torch.tensor([ids])
    keep = torch.tensor(mask[1:], dtype=torch.bool)
    logits = model(x).logits[0, :-1][keep]
    logp = torch.log_softmax(logits, dim=-1)
    return -logp.gather(1, x[0, 1:][keep].unsqueeze(1)).sum(), int(keep.sum())


def peer_speed(gguf, rows_file, out):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    rows = [json.loads(line) for line in open(rows_file)]
    model = get_peft_model(load_base(gguf), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
        target_modules=TARGETS))
    model.train()
    nll, _ = masked_nll(model, rows[0]["ids"], rows[0]["mask"])
    nll.backward()
    model.zero_grad()
    started = time.perf_counter()
    for r in rows:
        nll, _ = masked_nll(model, r["ids"], r["mask"])
        nll.item()
    forward_s = time.perf_counter() - started
    started = time.perf_counter()
    for r in rows:
        nll, _ = masked_nll(model, r["ids"], r["mask"])
        nll.backward()
    step_s = time.perf_counter() - started
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    tokens = sum(len(r["ids"]) for r in rows)
    json.dump({
        "tokens": tokens,
        "tokens_per_second": tokens / step_s,
        "forward_share": forward_s / step_s,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params_without_grad": len(missing),
        "versions": {"torch": torch.__version__, "peft": __import__("peft").__version__,
                     "transformers": __import__("transformers").__version__},
    }, open(out, "w"))


def peer_check(gguf, adapter, examples, out):
    import torch
    from peft import PeftModel

    torch.set_num_threads(os.cpu_count() or 1)
    rows = [json.loads(line) for line in open(examples)]
    rows = [r for r in rows if r["split"] == "validation"]
    model = PeftModel.from_pretrained(load_base(gguf), adapter)
    model.eval()

    def loss():
        total, count = 0.0, 0
        with torch.no_grad():
            for r in rows:
                s, n = masked_nll(model, r["ids"], r["mask"])
                total, count = total + s.item(), count + n
        return total / count, count

    adapted, count = loss()
    with model.disable_adapter():
        base, _ = loss()
    lora_modules = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A.default"))
    json.dump({"rows": len(rows), "masked_tokens": count, "adapter_loss": adapted,
               "base_loss": base, "lora_modules": lora_modules}, open(out, "w"))


# ---- the orchestration ---------------------------------------------------------------------


def run_ours(gguf, seq, rows, rows_file):
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "hexacoder-benches", "--bin", "train-bench"],
                   cwd=ROOT, check=True)
    out = subprocess.run([str(ROOT / "target/release/train-bench"), str(gguf), str(seq), str(rows)], cwd=ROOT,
                         check=True, capture_output=True, text=True, env={**os.environ, "TRAIN_BENCH_ROWS": str(rows_file)})
    return json.loads(out.stdout)


def adapter_metadata(adapter_dir):
    with open(adapter_dir / "adapter_model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return header.get("__metadata__", {})


def trainer_split(model, work):
    """The trainer's rows and split for MODEL: a one-step run writes them to examples.jsonl."""
    run = work / f"split-{model}"
    examples = run / "run" / "examples.jsonl"
    if not examples.exists():
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "hexacoder-trainer"], cwd=ROOT, check=True)
        subprocess.run([str(ROOT / "target/release/hexacoder-train"), "train", "--model", model,
                        "--data", str(ROOT.parent / "shared/bench/hexacoder/dataset/hexacoder_train.jsonl"),
                        "--benchmarks", str(ROOT.parent / "shared/bench"), "--max-steps", "1",
                        "--run-dir", str(run / "run"), "--out", str(run / "adapter")], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return examples


def speed_section(args, python, gguf, work):
    rows_file = work / f"rows-{args.model}-{args.seq}.jsonl"
    ours = run_ours(gguf, args.seq, args.rows, rows_file)
    peer_out = work / "peer-speed.json"
    subprocess.run([str(python), __file__, "--peer", "speed", str(gguf), str(rows_file), str(peer_out)], check=True)
    peer = json.load(open(peer_out))
    if peer["params_without_grad"]:
        sys.exit(f"the peer left {peer['params_without_grad']} LoRA parameters without a gradient")
    v = peer["versions"]
    peer_gflops = ours["gflops_counted"] / (peer["tokens"] / peer["tokens_per_second"])
    return [
        "",
        f"Speed: weights dequantized to f32 by each side; LoRA r=8, alpha=16, dropout 0.05 on q,k,v,o; one "
        f"forward and backward pass over the same {ours['rows']} rows ({ours['tokens']} tokens, the longest "
        f"of the shared set cut to {args.seq}), after a warm-up row. Peer: torch {v['torch']} "
        f"({peer['threads']} threads), transformers {v['transformers']}, peft {v['peft']}.",
        "",
        "| measure | HexaCoder `train` | PyTorch + PEFT | ratio |",
        "|---|---|---|---|",
        f"| tokens/s (forward + backward) | {ours['tokens_per_second']:.1f} | {peer['tokens_per_second']:.1f} | "
        f"{ours['tokens_per_second'] / peer['tokens_per_second']:.2f} |",
        f"| achieved GFLOP/s (same FLOP count) | {ours['achieved_gflops_per_s']:.0f} | {peer_gflops:.0f} | "
        f"{ours['achieved_gflops_per_s'] / peer_gflops:.2f} |",
        f"| forward share of a step | {ours['forward_share']:.0%} | {peer['forward_share']:.0%} | |",
        f"| peak RSS (MB) | {ours['peak_rss_mb']:.0f} | {peer['peak_rss_mb']:.0f} | "
        f"{ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f} |",
        "",
        f"This CPU's f32 GEMM peak (the faster of candle's GEMM and the trainer's own per shape, best of "
        f"the model's MLP shapes and 1024³, measured "
        f"before and after our timed steps: {ours['matmul_peak_before_gflops_per_s']:.0f} and "
        f"{ours['matmul_peak_after_gflops_per_s']:.0f}): "
        f"{ours['matmul_peak_gflops_per_s']:.0f} GFLOP/s; ours reaches {ours['share_of_peak']:.0%} of it, "
        f"PEFT {peer_gflops / ours['matmul_peak_gflops_per_s']:.0%}.",
    ]


def check_section(args, python, gguf, work):
    adapter = ROOT / "adapters" / "trained" / f"{args.model}-secure"
    stored = float(adapter_metadata(adapter)["hexacoder.validation_loss"])
    examples = trainer_split(args.model, work)
    check_out = work / "peer-check.json"
    subprocess.run([str(python), __file__, "--peer", "check", str(gguf), str(adapter), str(examples),
                    str(check_out)], check=True)
    check = json.load(open(check_out))
    agree = abs(check["adapter_loss"] - stored) <= 1e-3 * stored
    text = [
        "",
        f"The shipped adapter (`adapters/trained/{args.model}-secure`, f16) loaded by PEFT "
        f"(`PeftModel.from_pretrained`, {check['lora_modules']} LoRA modules) over the GGUF's weights as "
        f"transformers dequantizes them, on the trainer's {check['rows']} validation rows "
        f"({check['masked_tokens']} masked tokens): loss {check['adapter_loss']:.6f}, against "
        f"{stored:.6f} stored by the trainer ({'agrees' if agree else 'DISAGREES'} within 0.1%); "
        f"the base model without it: {check['base_loss']:.4f}.",
    ]
    if not agree:
        print("\n".join(text))
        sys.exit("PEFT does not reproduce the trainer's validation loss")
    return text


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--check-adapter", action="store_true")
    parser.add_argument("--no-speed", action="store_true", help="only the adapter check")
    parser.add_argument("--python", help="a Python that has the peer's packages (default: target/peft-venv)")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not touch RESULTS.md")
    parser.add_argument("--peer", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        {"speed": peer_speed, "check": peer_check}[args.peer[0]](*args.peer[1:])
        return

    python = ensure_peer(args.python)
    gguf = model_path(args.model)
    work = ROOT / "target" / "train-vs-peft"
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    flags = (" --check-adapter" if args.check_adapter else "") + (" --no-speed" if args.no_speed else "")
    lines = [
        f"## Training against PyTorch + PEFT on the CPU (issue 16), {datetime.date.today().isoformat()}, commit {commit}",
        "",
        f"CPU: {cpu_model()}, {os.cpu_count()} threads for both. Model: `{args.model}` ({gguf.name}).",
        f"Command: `python3 benches/train_vs_peft.py --model {args.model} --seq {args.seq} --rows {args.rows}{flags}`",
    ]
    if not args.no_speed:
        lines += speed_section(args, python, gguf, work)
    if args.check_adapter:
        lines += check_section(args, python, gguf, work)
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        results = ROOT / "benches" / "RESULTS.md"
        staged = results.with_suffix(".md.tmp")
        staged.write_text(results.read_text().rstrip() + "\n\n" + section)
        os.replace(staged, results)


if __name__ == "__main__":
    main()
