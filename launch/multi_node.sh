#!/usr/bin/env bash
# Train one stage across several nodes. Two ways:
#  * ssh (default): run on the first node of the hostfile; the deepspeed launcher starts the
#    other nodes over passwordless ssh (or use `--launcher slurm` etc. in DS_LAUNCHER_ARGS).
#  * no ssh: run this script on every node with NODE_RANK=0..N-1 (same HOSTFILE, MASTER_ADDR,
#    MASTER_PORT); each launcher starts its own node's ranks (`--no_ssh --node_rank`). This is the
#    variant tests/test_multi_node.py runs: two launchers on one machine, CPU/gloo, with per-step
#    losses equal to one node with the same number of ranks.
# RUN_DIR (train.output_dir) may be shared by every node or node-local (the same path on each
# node): checkpoints resume exactly either way (node-local: each node's folder holds its ranks'
# shards). A node that dies makes the others exit with one `lost another rank` line.
#
#   HOSTFILE=launch/hostfile.example launch/multi_node.sh CONFIG.yaml [a.b=value ...]
#   NODE_RANK=1 MASTER_ADDR=10.0.0.1 HOSTFILE=... launch/multi_node.sh CONFIG.yaml ...   # on node 1
#
# Knobs (environment):
#   HOSTFILE          lines of `hostname slots=GPUS` (default launch/hostfile)
#   MASTER_ADDR       address of the first node as the others reach it (default: first host in HOSTFILE)
#   MASTER_PORT       rendezvous port (default 29500)
#   NODE_RANK         set: start only this node's ranks, no ssh (run the script on every node)
#   DS_LAUNCHER_ARGS  extra launcher flags, e.g. "--launcher openmpi" or "--num_nodes 2"
#   DRY_RUN=1         only validate the config and print the command
#
# NCCL notes: export these in ~/.deepspeed_env (one VAR=value a line) so every node gets them:
#   NCCL_SOCKET_IFNAME=eth0      the interface the nodes talk over (check `ip addr`)
#   NCCL_IB_DISABLE=0            keep InfiniBand on where it exists; 1 on plain ethernet clusters
#   NCCL_DEBUG=WARN              INFO when debugging hangs at init
#   NCCL_ASYNC_ERROR_HANDLING=1  a failed rank ends the job instead of hanging it
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,28p' "$0"; exit 2
fi
HOSTFILE="${HOSTFILE:-launch/hostfile}"
[[ -f "$HOSTFILE" ]] || { echo "hostfile not found: $HOSTFILE (see launch/hostfile.example)" >&2; exit 2; }
MASTER_ADDR="${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}"
MASTER_PORT="${MASTER_PORT:-29500}"
read -r -a extra <<< "${DS_LAUNCHER_ARGS:-}"
if [[ -n "${NODE_RANK:-}" ]]; then extra+=(--no_ssh --node_rank "$NODE_RANK"); fi

cmd=(deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
     "${extra[@]}" --module remix_ds.train "$@")
remix-ds info "$@" >/dev/null
echo "+ ${cmd[*]}"
if [[ "${DRY_RUN:-0}" == "1" ]]; then exit 0; fi
exec "${cmd[@]}"
