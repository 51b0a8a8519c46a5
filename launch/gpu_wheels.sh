#!/usr/bin/env bash
# Build the wheels folder that launch/gpu_check.sh installs on an offline GPU machine (Python 3.12,
# x86-64, its own CUDA torch). Run here, where PyPI is reachable; carry the folder with the run
# (docs/gpu_check.md has the exact invocation). Nothing here is a torch wheel.
#
#   launch/gpu_wheels.sh            # -> wheels/ (ignored by git; a few MB)
#
# What goes in (versions: the ones installed in this venv, i.e. constraints-cpu.txt's when the venv was
# made with the README's command, so the GPU runs what the tests ran; the GPU image keeps its own torch,
# transformers and triton: torch 2.11 / transformers 5.17 on the image seen once, not the lock's):
#   deepspeed        built from its sdist (--no-deps --no-build-isolation, no ops prebuilt: the
#                    GPU run uses torch's AdamW, so no op is JIT-built either)
#   deepspeed's pure-python needs the image lacks: hjson, pydantic (+ pydantic-core, binary cp312,
#                    annotated-types, typing-inspection, typing-extensions); the image already has
#                    einops, msgpack, ninja, numpy, packaging, psutil, py-cpuinfo, tqdm, nvidia-ml-py
#   datasets + dill, multiprocess   (the image has pyarrow, pandas, fsspec, xxhash, requests)
#   cache/models/tiny-*   the built tiny model and tokenizer (5 MB), so the GPU machine needs no
#                    wordfreq (a 57 MB wheel: with it the carried tree would pass the 64 MiB limit);
#                    WITH_WORDFREQ=1 adds wordfreq + ftfy, wcwidth, langcodes, locate instead
#   liger-kernel     optional fused loss (Triton; the image has triton)
#   remix_ds         this project's own wheel (gpu_check.sh installs the working tree itself and
#                    uses this one only if that fails)
#
# Knobs (environment):
#   WHEELS  output folder (default wheels)
#   PY      this venv's python (default python)
#   WITH_WORDFREQ=1  also carry wordfreq and its needs (57 MB)
set -euo pipefail

cd "$(dirname "$0")/.."
WHEELS="${WHEELS:-wheels}"
PY="${PY:-python}"
mkdir -p "$WHEELS"
rm -rf "$WHEELS"/*.whl "$WHEELS/cache"

ver() {  # installed version of a distribution here, else the fallback
  "$PY" - "$1" "$2" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    print(sys.argv[2])
PY
}

# Wheels for the GPU image: CPython 3.12, manylinux x86-64 (pure-python wheels match any of these).
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform any)
pkgs=(
  "hjson==$(ver hjson 3.1.0)"
  "pydantic==$(ver pydantic 2.14.4)"
  "pydantic-core==$(ver pydantic_core 2.50.5)"
  "annotated-types==$(ver annotated-types 0.8.0)"
  "typing-inspection==$(ver typing-inspection 0.4.5)"
  "typing-extensions==$(ver typing_extensions 4.16.0)"
  "datasets==$(ver datasets 5.2.0)"
  "dill==$(ver dill 0.4.1)"
  "multiprocess==$(ver multiprocess 0.70.19)"
)
if [[ "${WITH_WORDFREQ:-0}" == "1" ]]; then
  pkgs+=("wordfreq==$(ver wordfreq 3.1.1)" "ftfy==$(ver ftfy 6.3.1)" "wcwidth==$(ver wcwidth 0.9.4)"
         "langcodes==$(ver langcodes 3.5.1)" "locate==$(ver locate 1.1.1)")
fi
for p in "${pkgs[@]}"; do
  "$PY" -m pip download -q --no-deps "${plat[@]}" -d "$WHEELS" "$p"
done
# Optional: a missing liger-kernel only makes the Liger rows skip.
"$PY" -m pip download -q --no-deps "${plat[@]}" -d "$WHEELS" liger-kernel \
  || echo "liger-kernel not downloaded: the linear_ce step will run without it"

# deepspeed ships as an sdist: build a py3-none-any wheel against this venv's torch.
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "deepspeed==$(ver deepspeed 0.19.8)"
# This project.
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" .
rm -rf build ./*.egg-info
# The tiny model + tokenizer (built here if needed), as a REMIX_DS_CACHE folder gpu_check.sh copies.
tiny="$("$PY" -c 'from remix_ds import models; print(models.tiny_model_dir())')"
rm -rf "$WHEELS/cache" && mkdir -p "$WHEELS/cache/models"
cp -r "$tiny" "$WHEELS/cache/models/"

ls -la "$WHEELS"
du -sh "$WHEELS"
