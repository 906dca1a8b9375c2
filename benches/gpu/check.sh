#!/usr/bin/env bash
# The GPU check of gpu.md, run on the GPU machine in two stages because the smoke model
# (98 MB) does not fit in one transfer beside the binary (64 MiB per call):
#
#   stage 1: the binary and the model's first part arrive; nvidia-smi, --version, and
#            CPU/CUDA/transformers parity on a random-weight f32 checkpoint.
#   stage 2: the model's second part arrives; the GGUF is assembled and verified, then
#            CPU/CUDA parity and speed against transformers on SmolLM2-135M.
#
# Inputs (ignored, made by benches/gpu/prepare.sh; carry .gpu/stage1 or .gpu/stage2):
# stage1/{hexacoder-server.xz, smol.part1, tokenizer.json}, stage2/{smol.part2, gguf-*.whl}.
# Outputs: logs and JSON under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
stage="$1"
work=/root/hx
mkdir -p "$work"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
exec > >(tee "$out/stage$stage.log") 2>&1

site="$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))')"
export LD_LIBRARY_PATH="$(ls -d "$site"/nvidia/*/lib "$site"/nvidia/cu13/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1 HEXACODER_LOG=warn
bin="$work/hexacoder-server"

if [ "$stage" = 1 ]; then
    cp .gpu/stage1/smol.part1 .gpu/stage1/tokenizer.json "$work/"
    xz -dc .gpu/stage1/hexacoder-server.xz >"$bin" && chmod +x "$bin"
    nvidia-smi
    ldd "$bin" | grep -E 'cuda|cublas|nvrtc|curand|not found'
    "$bin" --version
    python3 benches/gpu/make_tiny.py "$work/tokenizer.json" "$work/tiny"
    timeout 300 python3 benches/gpu/parity.py "$bin" "$work/tiny" "$out/parity-tiny.json" --hf "$work/tiny"
    echo "stage 1 done"
else
    [ -x "$bin" ] || { echo "stage 1 did not run on this machine (it was given back in between)"; exit 3; }
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/stage2/gguf-*.whl && export PYTHONPATH=/tmp/site
    cat "$work/smol.part1" .gpu/stage2/smol.part2 >"$work/smol.gguf"
    echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $work/smol.gguf" | sha256sum -c - || exit 1
    timeout 240 python3 benches/gpu/parity.py "$bin" "$work/smol.gguf" "$out/parity-smol.json" --hf "$work/smol.gguf"
    timeout 300 python3 benches/gpu/speed.py "$bin" "$work/smol.gguf" "$out/speed-smol.json"
    echo "stage 2 done"
fi
