"""Writes a random-weight LLaMA checkpoint (f32 safetensors, SmolLM2's tokenizer) for the
CUDA parity check: small enough to make on the GPU machine, dense so that CPU, CUDA and
transformers should agree to float rounding.

Usage: python3 make_tiny.py TOKENIZER_JSON OUT_DIR
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

tokenizer_json, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=49152, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
    rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=0.08,
    bos_token_id=1, eos_token_id=2,
)
model = LlamaForCausalLM(config).to(torch.float32)
model.save_pretrained(out)
shutil.copy(tokenizer_json, out / "tokenizer.json")
(out / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
print("wrote", out, sorted(p.name for p in out.iterdir()))
