#!/usr/bin/env bash
# The prepared GPU run of the realtime benchmark (issue 6), for a lent H100/H200 through the `device` tool:
#
#   run(command="bash bench/gpu_run.sh", carry=["bench/.whl"], timeout_s=600)
#   (RUN_TESTS=1 bash bench/gpu_run.sh: also tests/backend/test_accelerated_cuda.py first; extra arguments go to
#   bench/realtime.py, e.g. --compile-mode max-autotune-no-cudagraphs or --cases live_img2img; TAG=options
#   names that run's file apart)
#
# It installs nothing from the network. The device image has torch, transformers, safetensors, numpy and
# Pillow but lacks diffusers and websockets: fetch their wheels here first (bench/README.md, "GPU run"),
# into bench/.whl (git-ignored), and carry that folder. Results land in $OUT (or bench/results without it):
# <date>-<gpu>.jsonl and realtime.log; commit the .jsonl as bench/results/<date>-<gpu>.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD"
if compgen -G "bench/.whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/kld-site bench/.whl/*.whl || exit 1
    export PYTHONPATH="/tmp/kld-site:$PWD"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 DIFFUSERS_NO_ADVISORY_WARNINGS=1
# Compile caches: a second run on the same machine (or a copied cache) shows the warm start.
export LIVE_DIFFUSION_CACHE_DIR="${LIVE_DIFFUSION_CACHE_DIR:-/tmp/kld-cache}"

GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null \
    | tr '[:upper:]' '[:lower:]' | sed -e 's/nvidia //' -e 's/[^a-z0-9]\+/-/g' -e 's/-$//')
if [ -z "$GPU" ]; then
    echo "no CUDA device visible to $PY" >&2
    exit 2
fi
FILE="$OUT/$(date -u +%F)-$GPU${TAG:+-$TAG}.jsonl"  # TAG names a second run's file apart
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

if [ "${RUN_TESTS:-0}" = "1" ]; then
    # The accelerated path's GPU correctness tests on the tiny models (about a minute; needs pytest there).
    timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/backend/test_accelerated_cuda.py 2>&1 | tee "$OUT/tests.log"
fi

# About 6 minutes expected (compiles ~2-3 of them); `timeout` keeps the command inside the tool's 10-minute
# limit. Lines are written as they are measured, so a cut-off run still returns what it measured; the
# start-up case (slowest, and it writes a 2 GB random checkpoint) runs last.
timeout "${BENCH_TIMEOUT:-540}" "$PY" bench/realtime.py --full --out "$FILE" \
    --cases live_img2img,live_controlnet,live_inpaint,floors,websocket,startup \
    --compile-timeout "${COMPILE_TIMEOUT:-240}" "$@" 2>&1 | tee "$OUT/realtime.log"
echo "results: $FILE"
