#!/usr/bin/env bash
# Lays out .gpu/ (ignored; carried to the GPU machine) for benches/gpu/check.sh: the CUDA
# binaries (xz), the smoke model split in three parts so that each call fits one transfer,
# SmolLM2's reference tokenizer for the random-weight checkpoint, the training data, the
# benchmarks' prompt files (for the trainer's overlap filter) and the gguf wheel that
# transformers needs to read a GGUF.
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-${HEXACODER_MODELS_DIR:-$HOME/.cache/hexacoder/models}/SmolLM2-135M-Instruct.Q4_1.gguf}"
rm -rf .gpu
mkdir -p .gpu/stage1 .gpu/stage2 .gpu/stage3/bench/codelmsec .gpu/stage3/bench/hexacoder .gpu/stage3/bench/humaneval
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >>.git/info/exclude
xz -T2 -6 -c target/cuda/release/hexacoder-server >.gpu/stage1/hexacoder-server.xz
xz -T2 -6 -c target/cuda/release/hexacoder-train >.gpu/stage2/hexacoder-train.xz
dd if="$model" of=.gpu/stage1/smol.part1 bs=1M count=44 status=none
dd if="$model" of=.gpu/stage2/smol.part2 bs=1M skip=44 count=40 status=none
dd if="$model" of=.gpu/stage3/smol.part3 bs=1M skip=84 status=none
cp ../shared/reference/tokenizers/smollm2.tokenizer.json .gpu/stage1/tokenizer.json
cp ../shared/bench/hexacoder/dataset/hexacoder_train.jsonl .gpu/stage3/
cp ../shared/bench/codelmsec/codelmsec_prompts.jsonl .gpu/stage3/bench/codelmsec/
cp ../shared/bench/hexacoder/pearce_prompts.jsonl .gpu/stage3/bench/hexacoder/
cp ../shared/bench/humaneval/HumanEval.jsonl.gz .gpu/stage3/bench/humaneval/
python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/stage3 gguf==0.19.0
cat .gpu/stage1/smol.part1 .gpu/stage2/smol.part2 .gpu/stage3/smol.part3 | sha256sum
du -sh .gpu/stage1 .gpu/stage2 .gpu/stage3
