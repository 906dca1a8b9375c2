"""Writes the fuzz targets' seed inputs into fuzz/seeds/<target>/ (committed; run again only
to change them). Everything comes from the repository, ../shared and the catalogue's models
(for their chat templates), and from a tiny GGUF written here by hand.

    python3 fuzz/seeds/make_seeds.py [--models DIR]   # DIR: where `fetch` put the GGUFs

The two-part inputs use hexacoder_fuzz_targets::split's form: a little-endian u32 length, that many
bytes, then the rest.
"""

import argparse
import hashlib
import json
import os
import random
import re
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fuzz" / "seeds"
SHARED = ROOT.parent / "shared"


def join(first: bytes, second: bytes) -> bytes:
    return struct.pack("<I", len(first)) + first + second


def put(target: str, data: bytes) -> None:
    folder = OUT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


# --- GGUF, written by hand: metadata types and the two tensor types the seed uses ---------
GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL, GGUF_STRING, GGUF_ARRAY = 4, 5, 6, 7, 8, 9


def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(v) -> bytes:
    if isinstance(v, bool):
        return struct.pack("<I?", GGUF_BOOL, v)
    if isinstance(v, int):
        return struct.pack("<Ii", GGUF_I32, v) if v < 0 else struct.pack("<II", GGUF_U32, v)
    if isinstance(v, float):
        return struct.pack("<If", GGUF_F32, v)
    if isinstance(v, str):
        return struct.pack("<I", GGUF_STRING) + gguf_string(v)
    if isinstance(v, list):
        if all(isinstance(x, str) for x in v):
            return struct.pack("<IIQ", GGUF_ARRAY, GGUF_STRING, len(v)) + b"".join(gguf_string(x) for x in v)
        return struct.pack("<IIQ", GGUF_ARRAY, GGUF_I32, len(v)) + b"".join(struct.pack("<i", x) for x in v)
    raise TypeError(v)


def q8_0(values):
    out = b""
    for i in range(0, len(values), 32):
        block = values[i : i + 32]
        scale = max(abs(x) for x in block) / 127 or 1.0
        out += struct.pack("<e", scale) + bytes((round(x / scale) & 0xFF) for x in block)
    return out


def tiny_gguf() -> bytes:
    rng = random.Random(0)
    hidden, inter, heads, kv_heads, layers = 64, 128, 4, 2, 1
    head_dim = hidden // heads
    byte_char = {ord(" "): "Ġ", ord("\n"): "Ċ"}
    tokens = [byte_char.get(b, chr(b)) for b in list(range(0x20, 0x7F)) + [0x0A]]
    merges = [("d", "e"), ("de", "f"), ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ"), ("i", "n")]
    tokens += [a + b for a, b in merges]
    specials = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
    tokens += specials
    vocab = len(tokens)
    metadata = {
        "general.architecture": "qwen2",
        "general.name": "fuzz-seed",
        "qwen2.context_length": 64,
        "qwen2.embedding_length": hidden,
        "qwen2.feed_forward_length": inter,
        "qwen2.block_count": layers,
        "qwen2.attention.head_count": heads,
        "qwen2.attention.head_count_kv": kv_heads,
        "qwen2.attention.layer_norm_rms_epsilon": 1e-6,
        "qwen2.rope.freq_base": 10000.0,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3 if t in specials else 1 for t in tokens],
        "tokenizer.ggml.merges": [f"{a} {b}" for a, b in merges],
        "tokenizer.ggml.eos_token_id": tokens.index("<|endoftext|>"),
        "tokenizer.chat_template": "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}",
    }
    # (name, rows, cols, type): type 0 is F32, 8 is Q8_0 (32 values a block).
    shapes = [("token_embd.weight", vocab, hidden, 0), ("output_norm.weight", 1, hidden, 0)]
    shapes.append(("output.weight", vocab, hidden, 8))
    for i in range(layers):
        p = f"blk.{i}."
        shapes += [
            (p + "attn_norm.weight", 1, hidden, 0),
            (p + "ffn_norm.weight", 1, hidden, 0),
            (p + "attn_q.weight", heads * head_dim, hidden, 8),
            (p + "attn_k.weight", kv_heads * head_dim, hidden, 8),
            (p + "attn_v.weight", kv_heads * head_dim, hidden, 8),
            (p + "attn_q.bias", 1, heads * head_dim, 0),
            (p + "attn_k.bias", 1, kv_heads * head_dim, 0),
            (p + "attn_v.bias", 1, kv_heads * head_dim, 0),
            (p + "attn_output.weight", hidden, heads * head_dim, 8),
            (p + "ffn_gate.weight", inter, hidden, 0),
            (p + "ffn_up.weight", inter, hidden, 8),
            (p + "ffn_down.weight", hidden, inter, 8),
        ]
    header = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(metadata))
    for key, value in metadata.items():
        header += gguf_string(key) + gguf_value(value)
    data, infos = b"", b""
    for name, rows, cols, kind in shapes:
        values = [1.0] * cols if name.endswith("norm.weight") else [rng.uniform(-0.1, 0.1) for _ in range(rows * cols)]
        blob = struct.pack(f"<{len(values)}f", *values) if kind == 0 else q8_0(values)
        dims = [cols] if rows == 1 else [cols, rows]
        infos += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", kind, len(data))
        data += blob + b"\0" * (-len(blob) % 32)
    head = header + infos
    return head + b"\0" * (-len(head) % 32) + data


def gguf_header_strings(path: Path, keys):
    """The string values of `keys` in a GGUF's metadata, and the header's length in bytes."""
    with open(path, "rb") as f:
        raw = f.read(64 << 20)
    at = 4 + 4 + 8
    (n_kv,) = struct.unpack_from("<Q", raw, at)
    at += 8
    found = {}

    def read_str(at):
        (n,) = struct.unpack_from("<Q", raw, at)
        return raw[at + 8 : at + 8 + n].decode("utf-8", "replace"), at + 8 + n

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip(kind, at):
        if kind == GGUF_STRING:
            return read_str(at)[1]
        if kind == GGUF_ARRAY:
            inner, n = struct.unpack_from("<IQ", raw, at)
            at += 12
            for _ in range(n):
                at = skip(inner, at)
            return at
        return at + sizes[kind]

    for _ in range(n_kv):
        key, at = read_str(at)
        (kind,) = struct.unpack_from("<I", raw, at)
        at += 4
        if key in keys and kind == GGUF_STRING:
            found[key], at = read_str(at)
        else:
            at = skip(kind, at)
    return found, at


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "hexacoder" / "models")
    args = parser.parse_args()

    gguf = tiny_gguf()
    put("gguf", gguf)
    put("gguf", gguf[: len(gguf) // 2])  # cut inside the tensor data
    templates = []
    for model in sorted(args.models.glob("*.gguf")):
        # (A real header is megabytes of vocabulary: too large a seed to mutate quickly.)
        strings, _ = gguf_header_strings(model, {"tokenizer.chat_template"})
        if "tokenizer.chat_template" in strings:
            templates.append(strings["tokenizer.chat_template"])
    templates.append("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}")
    conversation = json.dumps([
        {"role": "system", "content": "You write secure code."},
        {"role": "user", "content": "Read a file named by the user."},
        {"role": "assistant", "content": "def read(path):\n    return open(path).read()"},
        {"role": "user", "content": "Make it safe."},
    ]).encode()
    for template in templates:
        put("chat_template", join(template.encode(), conversation))

    # Adapters: our shipped trained adapters' configs with their weights, and the configs
    # alone (the weights cut to a header) so that the fuzzer starts from real files.
    for folder in sorted((ROOT / "adapters" / "trained").glob("*/")):
        config = (folder / "adapter_config.json").read_bytes()
        weights = (folder / "adapter_model.safetensors").read_bytes()
        (header_len,) = struct.unpack_from("<Q", weights, 0)
        put("adapter", join(config, weights[: 8 + header_len]))
    # A tiny, complete adapter for the fuzz target's base (q, k, v, o; hidden 64, r = 2).
    rng = random.Random(1)
    tensors, blob = {}, b""
    shapes = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64)}
    for layer in range(2):
        for module, (n_in, n_out) in shapes.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            for part, shape in (("lora_A", (2, n_in)), ("lora_B", (n_out, 2))):
                values = [rng.uniform(-0.05, 0.05) for _ in range(shape[0] * shape[1])]
                raw = struct.pack(f"<{len(values)}f", *values)
                tensors[f"{prefix}.{part}.weight"] = {"dtype": "F32", "shape": list(shape), "data_offsets": [len(blob), len(blob) + len(raw)]}
                blob += raw
    header = json.dumps(tensors).encode()
    header += b" " * (-len(header) % 8)
    config = json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4,
                         "target_modules": list(shapes), "lora_dropout": 0.0, "bias": "none"}).encode()
    put("adapter", join(config, struct.pack("<Q", len(header)) + header + blob))

    # Requests: every POST body of the golden wire test, on its route.
    routes = ["/v1/completions", "/v1/chat/completions", "/infill", "/tabby/v1/completions",
              "/tabby/v1/events", "/v1/hexacoder/events", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"]
    wire = (ROOT / "server" / "tests" / "golden" / "wire.txt").read_text().splitlines()
    for i, line in enumerate(wire):
        m = re.match(r"### POST (\S+)$", line)
        if m and m.group(1) in routes:
            put("request", bytes([routes.index(m.group(1))]) + wire[i + 1].encode())
    put("request", bytes([6]) + json.dumps({"lora_name": "again", "lora_path": "tiny-adapter"}).encode())
    put("request", bytes([7]) + json.dumps({"lora_name": "again"}).encode())

    # Source code: CodeLMSec's prompts and the few-shot pairs, for the oracle and imports.
    prompts = [json.loads(l) for l in (SHARED / "bench" / "codelmsec" / "codelmsec_prompts.jsonl").read_text().splitlines() if l.strip()]
    rng = random.Random(2)
    for p in rng.sample(prompts, 40):
        language = 0 if p["language"].lower().startswith("py") else 1
        source = p["prompt"].encode()
        put("oracle", bytes([language]) + source)
        put("imports", bytes([language]) + join(source, join(b"\nimport os\nimport subprocess\n", b"os.system(cmd)\n")))
    shots = json.loads((SHARED / "bench" / "codelmsec" / "fewshot_prompt_code_pairs.json").read_text())
    for entry in (shots if isinstance(shots, list) else list(shots.values()))[:20]:
        text = json.dumps(entry) if not isinstance(entry, str) else entry
        put("oracle", bytes([0]) + text.encode())
    for language, source in [(2, "#include <stdio.h>\n#include <string>\n\nint main() {\n"),
                             (3, "import fs from 'fs';\nconst x = require('path');\n\n"),
                             (6, "package main\n\nimport (\n\t\"fmt\"\n)\n\nfunc main() {\n"),
                             (7, "import java.util.List;\n\nclass A {\n"),
                             (8, "use std::io;\nuse std::{fs, path::Path};\n\nfn main() {\n")]:
        put("imports", bytes([language]) + join(source.encode(), join(b"\nimport os\n#include <string.h>\nuse std::fs;\n", b"fs::read(p)")))
    # The structured targets (arbitrary's derive) read any bytes; start them from text with
    # the characters that matter to them: CRLF, lone CR, astral-plane and multi-byte text.
    for text in ["import os\r\nx = 1\r\n", "a\rb\r\nc\nd", "s = '😀é漢'\n\tpass\n",
                 "Ġa Ġb de def in\n<|endoftext|>", "\x00\x01\x02\x03\xff" * 8]:
        put("lsp_document", text.encode("utf-8", "surrogatepass"))
        put("gguf_tokenizer", text.encode("utf-8", "surrogatepass"))
    print("seeds written under", OUT)


if __name__ == "__main__":
    main()
