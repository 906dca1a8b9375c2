#!/usr/bin/env bash
# Lays out .gpu/ (ignored; carried to the GPU machine) for benches/gpu/check.sh: the CUDA
# binary (xz), the smoke model split in two parts that each fit one transfer, SmolLM2's
# reference tokenizer for the random-weight checkpoint, and the gguf wheel transformers
# needs to read a GGUF.
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-${HEXACODER_MODELS_DIR:-$HOME/.cache/hexacoder/models}/SmolLM2-135M-Instruct.Q4_1.gguf}"
mkdir -p .gpu/stage1 .gpu/stage2
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >>.git/info/exclude
xz -T2 -6 -c target/cuda/release/hexacoder-server >.gpu/stage1/hexacoder-server.xz
# Stage 1 also carries the binary (about 11 MB compressed), so it takes the smaller part.
head -c $((42 << 20)) "$model" >.gpu/stage1/smol.part1
tail -c +$(((42 << 20) + 1)) "$model" >.gpu/stage2/smol.part2
cp ../shared/reference/tokenizers/smollm2.tokenizer.json .gpu/stage1/tokenizer.json
[ -f .gpu/stage2/gguf-0.19.0-py3-none-any.whl ] ||
    python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/stage2 gguf==0.19.0
du -sh .gpu/stage1 .gpu/stage2
