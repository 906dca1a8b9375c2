"""One epoch of PyTorch + PEFT LoRA training on exactly the rows `hexacoder-train train`
trained on (its run directory's examples.jsonl: token ids and loss masks), with the same
settings: the peer for the trainer's speed and loss on a GPU.

Usage: python3 peft_train.py GGUF EXAMPLES_JSONL OUT_JSON [--batch-size 16] [--lr 5e-4]
       [--rank 8] [--alpha 16] [--dropout 0.05] [--epochs 1] [--max-minutes 4]
"""

import argparse
import json
import math
import random
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def masked_nll(model, ids, mask):
    x = torch.tensor([ids], device="cuda")
    logits = model(x).logits[0, :-1].float()
    targets = x[0, 1:]
    keep = torch.tensor(mask[1:], device="cuda", dtype=torch.bool)
    logp = torch.log_softmax(logits[keep], dim=-1)
    return -logp.gather(1, targets[keep].unsqueeze(1)).sum(), int(keep.sum())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("gguf")
    p.add_argument("examples")
    p.add_argument("out")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--warmup-ratio", type=float, default=0.03)
    p.add_argument("--max-minutes", type=float, default=4)
    a = p.parse_args()
    rows = [json.loads(line) for line in open(a.examples)]
    train = [r for r in rows if r["split"] == "train"]
    validation = [r for r in rows if r["split"] == "validation"]
    root, name = a.gguf.rsplit("/", 1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(root, gguf_file=name, dtype=torch.float32).to("cuda")
    model = get_peft_model(model, LoraConfig(
        r=a.rank, lora_alpha=a.alpha, lora_dropout=a.dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train) / a.batch_size)
    total = steps_per_epoch * a.epochs
    warmup = round(a.warmup_ratio * total)

    def lr_at(step):
        if step < warmup:
            return a.lr * (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return a.lr * 0.5 * (1 + math.cos(math.pi * progress))

    rng = random.Random(0)
    torch.cuda.synchronize()
    started = time.time()
    tokens, step, losses = 0, 0, []
    model.train()
    for _ in range(a.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        for k in range(steps_per_epoch):
            batch = [train[i] for i in order[k * a.batch_size:(k + 1) * a.batch_size]]
            total_masked = sum(sum(r["mask"][1:]) for r in batch)
            loss_sum = 0.0
            for r in batch:
                nll, _ = masked_nll(model, r["ids"], r["mask"])
                loss = nll / total_masked
                loss.backward()
                loss_sum += loss.item()
                tokens += len(r["ids"])
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss_sum)
            step += 1
            if time.time() - started > a.max_minutes * 60:
                break
    torch.cuda.synchronize()
    elapsed = time.time() - started
    model.eval()
    with torch.no_grad():
        nll, count = 0.0, 0
        for r in validation:
            s, n = masked_nll(model, r["ids"], r["mask"])
            nll, count = nll + s.item(), count + n
    result = {"steps": step, "of_steps": total, "tokens": tokens, "seconds": elapsed,
              "tokens_per_second": tokens / elapsed, "first_losses": losses[:5], "last_losses": losses[-5:],
              "validation_loss": nll / max(count, 1)}
    print(json.dumps(result))
    json.dump(result, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
