#!/usr/bin/env bash
# GPU validation in one command: attention and fused-loss parity, ZeRO-3 tokens/s and MFU on a
# Llama-3-8B-shaped model vs HF Trainer, fused EM vs generate, sync-debug. Each step runs in its own
# subprocess under its own timeout; OUT_DIR/gpu_check.json and gpu_check.md are rewritten after
# every step, so a run cut off early still holds every finished step. See docs/gpu_check.md.
#
#   launch/gpu_check.sh [extra `remix-ds bench gpu` flags ...]     # on one CUDA GPU, <= 8 minutes
#   DRY_RUN=1 launch/gpu_check.sh                                   # CPU, toy sizes (what the tests run)
#
# Knobs (environment):
#   OUT_DIR       where gpu_check.json / gpu_check.md / logs/ go (default gpu_check; on the lent
#                 machine pass OUT_DIR=$OUT so the files come back)
#   LOGS_DIR      each step's log + result JSON (default OUT_DIR/logs; keep it outside $OUT there:
#                 the device tool returns at most 8 files)
#   BUDGET        seconds for all steps together (default 480)
#   STEPS         comma-separated subset of attention,linear_ce,train,eval,syncdebug (default all)
#   TRAIN_LAYERS  most decoder layers of the 8B-shaped train model (default 4; fewer if memory says so)
#   DS_CONFIG     DeepSpeed template of the train step: zero3 (default) or zero3_offload
#   WHEELS        folder of carried wheels installed first when present (default wheels/, built
#                 by launch/gpu_wheels.sh); never touches the image's torch
#   SITE          install target for the wheels and this project (default /tmp/remix-site, put on PYTHONPATH)
#   PYTHON        interpreter (default python3)
#   DRY_RUN=1     CPU dry run at toy sizes (`--cpu`); installs nothing
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT_DIR:-gpu_check}"
BUDGET="${BUDGET:-480}"
STEPS="${STEPS:-attention,linear_ce,train,eval,syncdebug}"
TRAIN_LAYERS="${TRAIN_LAYERS:-4}"
DS_CONFIG="${DS_CONFIG:-zero3}"
WHEELS="${WHEELS:-wheels}"
SITE="${SITE:-/tmp/remix-site}"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,23p' "$0"; exit 0
fi

args=(--out-dir "$OUT_DIR" ${LOGS_DIR:+--logs-dir "$LOGS_DIR"} --budget "$BUDGET" --steps "$STEPS" --train-layers "$TRAIN_LAYERS" --ds-config "$DS_CONFIG")
if [[ "${DRY_RUN:-0}" == "1" ]]; then
  args+=(--cpu)
else
  # Offline installs: dependency wheels (no deps resolved, so torch is never replaced), then this
  # working tree itself (no build isolation: setuptools from the image, nothing downloaded).
  mkdir -p "$SITE"
  shopt -s nullglob
  whls=("$WHEELS"/*.whl)
  deps=()
  for w in "${whls[@]}"; do
    case "$(basename "$w")" in
      torch-*|remix_ds-*) ;;  # the image's torch stays; the project comes from the tree below
      *) deps+=("$w") ;;
    esac
  done
  if (( ${#deps[@]} )); then
    echo "+ installing ${#deps[@]} carried wheels into $SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${deps[@]}"
  else
    echo "no wheels in $WHEELS/: using the image's packages only (missing ones make steps skip)"
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$SITE" . || {
    # fallback: the project's wheel built by launch/gpu_wheels.sh
    own=("$WHEELS"/remix_ds-*.whl)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${own[@]}"
  }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  # The carried tiny model + tokenizer (built here without wordfreq), copied to a writable cache.
  if [[ -d "$WHEELS/cache" && -z "${REMIX_DS_CACHE:-}" ]]; then
    export REMIX_DS_CACHE=/tmp/remix-cache
    mkdir -p "$REMIX_DS_CACHE" && cp -r "$WHEELS/cache/." "$REMIX_DS_CACHE/"
  fi
  export PATH="$SITE/bin:$PATH"
  cd /tmp  # import remix_ds from $SITE (with remix_ds.kernels), not from the source tree
  case "$OUT_DIR" in /*) ;; *) OUT_DIR="$OLDPWD/$OUT_DIR"; args[1]="$OUT_DIR" ;; esac
fi
export PYTHONUNBUFFERED=1
echo "+ $PYTHON -m remix_ds.cli bench gpu ${args[*]} $*"
exec "$PYTHON" -m remix_ds.cli bench gpu "${args[@]}" "$@"
