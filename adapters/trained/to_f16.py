"""Rewrites an adapter_model.safetensors with f16 tensors (metadata kept), halving what the
repository and the binary carry. HexaCoder's loader, PEFT and vLLM read f16 adapters.

Usage: python3 to_f16.py adapters/trained/NAME/adapter_model.safetensors
"""

import json
import os
import struct
import sys

path = sys.argv[1]
data = open(path, "rb").read()
(n,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8:8 + n])
body = data[8 + n:]
out_header, chunks, offset = {}, [], 0
for name, info in header.items():
    if name == "__metadata__":
        out_header[name] = info
        continue
    start, end = info["data_offsets"]
    code, width = {"F32": ("f", 4), "F16": ("e", 2)}[info["dtype"]]
    count = (end - start) // width
    values = struct.unpack(f"<{count}{code}", body[start:end])
    raw = struct.pack(f"<{count}e", *values)
    out_header[name] = {"dtype": "F16", "shape": info["shape"], "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
encoded = json.dumps(out_header, separators=(",", ":")).encode()
encoded += b" " * (-len(encoded) % 8)
with open(path + ".tmp", "wb") as f:
    f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))
os.replace(path + ".tmp", path)
