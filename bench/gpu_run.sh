#!/usr/bin/env bash
# The prepared GPU run of the realtime benchmarks, for a lent H100/H200 through the `device` tool: SD1.5
# (bench/realtime.py, issue 6), then SDXL (bench/realtime_sdxl.py, issue 12), then the 8192 x 8192 upscale's
# host and device memory (bench/upscale_memory.py, issue 14), in one command:
#
#   run(command="bash bench/gpu_run.sh", carry=["bench/.whl"], timeout_s=600)
#   (RUN_TESTS=1 bash bench/gpu_run.sh: also tests/backend/test_accelerated_cuda.py first; extra arguments go to
#   bench/realtime.py, e.g. --compile-mode max-autotune-no-cudagraphs or --cases live_img2img; SDXL_ARGS="..."
#   to bench/realtime_sdxl.py; BENCHES=sd15, sdxl or upscale runs one of them; TAG=options names that run's
#   files apart)
#
# It installs nothing from the network. The device image has torch, transformers, safetensors, numpy and
# Pillow but lacks diffusers and websockets: fetch their wheels here first (bench/README.md, "GPU run"),
# into bench/.whl (git-ignored), and carry that folder. Results land in $OUT (or bench/results without it):
# <date>-<gpu>.jsonl and realtime.log (SD1.5), <date>-<gpu>-sdxl.jsonl and realtime_sdxl.log; commit the
# .jsonl files as bench/results/<name>.jsonl.
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
STEM="$OUT/$(date -u +%F)-$GPU"
FILE="$STEM${TAG:+-$TAG}.jsonl"  # TAG names a second run's file apart
SDXL_FILE="$STEM-sdxl${TAG:+-$TAG}.jsonl"
UPSCALE_FILE="$STEM-upscale${TAG:+-$TAG}.jsonl"
BENCHES="${BENCHES:-sd15 sdxl upscale}"
# Both benches share the tool's 10-minute command limit: the whole script stops within BUDGET_S of its start
# (bash's SECONDS), and while SD1.5 runs, SDXL_RESERVE_S of it is kept for SDXL (about 1.5-2 minutes: no
# compile by default) and UPSCALE_RESERVE_S for the upscale line (about a minute); each gets what is left.
BUDGET_S="${BUDGET_S:-570}"
SDXL_RESERVE_S="${SDXL_RESERVE_S:-150}"
UPSCALE_RESERVE_S="${UPSCALE_RESERVE_S:-90}"
runs() { [[ " $BENCHES " == *" $1 "* ]]; }
# `timeout 0` would mean no limit at all: a bench with under a minute left is skipped instead.
seconds_left() { local left=$((BUDGET_S - SECONDS - ${1:-0})); echo $((left < 60 ? 0 : left)); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

if [ "${RUN_TESTS:-0}" = "1" ]; then
    # The accelerated path's GPU correctness tests on the tiny models (about a minute; needs pytest there).
    timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/backend/test_accelerated_cuda.py 2>&1 | tee "$OUT/tests.log"
fi

# SD1.5: about 6 minutes expected (compiles ~2-3 of them). Lines are written as they are measured, so a
# cut-off run still returns what it measured; the start-up case (slowest, and it writes a 2 GB random
# checkpoint) runs last, so it is what a cut loses.
if runs sd15; then
    reserve=$(( $(runs sdxl && echo "$SDXL_RESERVE_S" || echo 0) + $(runs upscale && echo "$UPSCALE_RESERVE_S" || echo 0) ))
    limit="${BENCH_TIMEOUT:-$(seconds_left "$reserve")}"
    if [ "$limit" -gt 0 ]; then
        timeout "$limit" "$PY" bench/realtime.py --full --out "$FILE" \
            --cases live_img2img,live_controlnet,live_inpaint,floors,websocket,startup \
            --compile-timeout "${COMPILE_TIMEOUT:-240}" "$@" 2>&1 | tee "$OUT/realtime.log"
        echo "results: $FILE"
    else
        echo "SD1.5 bench skipped: under a minute of the budget left" >&2
    fi
fi

# SDXL: live img2img at 1024 and 768 against StableDiffusionXLImg2ImgPipeline, peak memory, floors; the
# default CUDA variants need no compile (SDXL_ARGS="--accelerate compile" in a run of its own for that).
if runs sdxl; then
    read -r -a sdxl_args <<<"${SDXL_ARGS:-}"
    limit="${SDXL_TIMEOUT:-$(seconds_left "$(runs upscale && echo "$UPSCALE_RESERVE_S" || echo 0)")}"
    if [ "$limit" -gt 0 ]; then
        timeout "$limit" "$PY" bench/realtime_sdxl.py --full --out "$SDXL_FILE" \
            ${sdxl_args[@]+"${sdxl_args[@]}"} 2>&1 | tee "$OUT/realtime_sdxl.log"
        echo "results: $SDXL_FILE"
    else
        echo "SDXL bench skipped: under a minute of the budget left" >&2
    fi
fi

# Upscale: one 4096 x 4096 canvas upscaled 2x and refined over tiles (the 8192 x 8192 result) on full-size
# random SD1.5 in fp16: the job's peak host and device memory. The upscale model needs spandrel and einops
# (their wheels in bench/.whl, bench/README.md); without them, Lanczos alone.
if runs upscale; then
    upscalers=lanczos
    "$PY" -c "import spandrel, einops" 2>/dev/null && upscalers=lanczos,model
    limit="${UPSCALE_TIMEOUT:-$(seconds_left)}"
    if [ "$limit" -gt 0 ]; then
        timeout "$limit" "$PY" bench/upscale_memory.py --full --sides "${UPSCALE_SIDES:-4096}" \
            --upscalers "$upscalers" --out "$UPSCALE_FILE" 2>&1 | tee "$OUT/upscale_memory.log"
        echo "results: $UPSCALE_FILE"
    else
        echo "upscale bench skipped: under a minute of the budget left" >&2
    fi
fi
