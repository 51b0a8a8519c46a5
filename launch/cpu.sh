#!/usr/bin/env bash
# Train on CPU ranks (gloo backend, fp32): for laptops, CI and debugging the distributed path.
#
#   launch/cpu.sh [CONFIG.yaml] [a.b=value ...]      (default config: configs/tiny.yaml)
#
# Knobs (environment):
#   NUM_RANKS        CPU processes (default 2)
#   MASTER_PORT      rendezvous port (default 29511)
#   OMP_NUM_THREADS  threads per rank (default: cores / NUM_RANKS)
#   DRY_RUN=1        only validate the config and print the command
set -euo pipefail

NUM_RANKS="${NUM_RANKS:-2}"
MASTER_PORT="${MASTER_PORT:-29511}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / NUM_RANKS > 0 ? $(nproc) / NUM_RANKS : 1 ))}"
export DS_ACCELERATOR=cpu   # the CPU accelerator and gloo, even on a GPU machine
if [[ $# -eq 0 || "$1" == *=* ]]; then
  set -- "$(dirname "$0")/../configs/tiny.yaml" "$@"
fi

cmd=(deepspeed --num_gpus "$NUM_RANKS" --master_port "$MASTER_PORT" --module remix_ds.train "$@"
     deepspeed.backend=gloo model.dtype=fp32)
remix-ds info "$@" >/dev/null
echo "+ ${cmd[*]}"
if [[ "${DRY_RUN:-0}" == "1" ]]; then exit 0; fi
exec "${cmd[@]}"
