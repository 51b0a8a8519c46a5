#!/usr/bin/env bash
# Train one stage on all GPUs of this node.
#
#   launch/single_node.sh CONFIG.yaml [a.b=value ...]
#
# Knobs (environment):
#   NUM_GPUS     ranks to start (default: every visible GPU)
#   MASTER_PORT  rendezvous port (default 29500)
#   DRY_RUN=1    only validate the config and print the command
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,10p' "$0"; exit 2
fi
NUM_GPUS="${NUM_GPUS:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
MASTER_PORT="${MASTER_PORT:-29500}"

cmd=(deepspeed --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT" --module remix_ds.train "$@")
remix-ds info "$@" >/dev/null  # fails fast on unknown keys or bad types
echo "+ ${cmd[*]}"
if [[ "${DRY_RUN:-0}" == "1" ]]; then exit 0; fi
exec "${cmd[@]}"
