#!/usr/bin/env bash
# The GPU check of gpu.md, run on the GPU machine in three calls of one warm machine, because
# what it needs (two binaries, the 98 MB smoke model, the training data) does not fit one
# transfer (64 MiB):
#
#   stage 1: the server binary and the model's first part; nvidia-smi, --version, and
#            CPU/CUDA/transformers parity on a random-weight f32 checkpoint.
#   stage 2: the trainer binary and the model's second part.
#   stage 3: the model's last part, the training data and the benchmarks' prompts; the GGUF
#            is assembled and verified, then CPU/CUDA parity and speed against transformers
#            on SmolLM2-135M, and one epoch of `hexacoder-train train` against PyTorch + PEFT
#            on the same rows. The trained adapter comes back in trained.tar.
#
# Inputs (ignored, made by benches/gpu/prepare.sh; carry .gpu/stageN). Outputs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
stage="$1"
work=/root/hx
mkdir -p "$work"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
exec > >(tee "$out/stage$stage.log") 2>&1

site="$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))')"
export LD_LIBRARY_PATH="$(ls -d "$site"/nvidia/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1 HEXACODER_LOG=warn
server="$work/hexacoder-server"
trainer="$work/hexacoder-train"
model="$work/smol.gguf"

case "$stage" in
1)
    cp .gpu/stage1/smol.part1 .gpu/stage1/tokenizer.json "$work/"
    xz -dc .gpu/stage1/hexacoder-server.xz >"$server" && chmod +x "$server"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$server" --version
    python3 benches/gpu/make_tiny.py "$work/tokenizer.json" "$work/tiny"
    timeout 120 python3 benches/gpu/parity.py "$server" "$work/tiny" "$out/parity-tiny.json" --hf "$work/tiny"
    ;;
2)
    [ -x "$server" ] || { echo "stage 1 did not run on this machine"; exit 3; }
    cp .gpu/stage2/smol.part2 "$work/"
    xz -dc .gpu/stage2/hexacoder-train.xz >"$trainer" && chmod +x "$trainer"
    "$trainer" --version
    ;;
3)
    [ -x "$trainer" ] || { echo "stage 2 did not run on this machine"; exit 3; }
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/stage3/gguf-*.whl && export PYTHONPATH=/tmp/site
    cat "$work/smol.part1" "$work/smol.part2" .gpu/stage3/smol.part3 >"$model"
    echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $model" | sha256sum -c - || exit 1
    timeout 80 python3 benches/gpu/parity.py "$server" "$model" "$out/parity-smol.json" --hf "$model"
    timeout 90 python3 benches/gpu/speed.py "$server" "$model" "$out/speed-smol.json"
    nvidia-smi --query-gpu=memory.used --format=csv
    started=$(date +%s)
    timeout 150 "$trainer" train --model "$model" --data .gpu/stage3/hexacoder_train.jsonl \
        --benchmarks .gpu/stage3/bench --device cuda:0 --epochs 1 --max-seq-len 512 \
        --out "$work/adapter" --run-dir "$work/run"
    echo "hexacoder-train: exit $? after $(($(date +%s) - started)) s"
    tar -cf "$out/trained.tar" -C "$work" adapter run/best run/metrics.jsonl run/loss.svg run/run.json 2>/dev/null
    timeout 120 python3 benches/gpu/peft_train.py "$model" "$work/run/examples.jsonl" "$out/peft-train.json" --max-minutes 1.3
    ;;
esac
echo "stage $stage done"
