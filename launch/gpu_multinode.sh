#!/usr/bin/env bash
# Train thinjax on several GPU nodes without a cluster manager (as torchrun does): run this
# script once on every node, with the same options and that node's --node-rank.
#
#   node 0: launch/gpu_multinode.sh --nnodes=2 --node-rank=0 --coordinator=10.0.0.1:12345 \
#               -- --config=configs/thin_r50.py --workdir=/shared/runs/r50
#   node 1: launch/gpu_multinode.sh --nnodes=2 --node-rank=1 --coordinator=10.0.0.1:12345 \
#               -- --config=configs/thin_r50.py --workdir=/shared/runs/r50
#
# It starts one process per GPU of this node (--nproc-per-node, default: the number of
# GPUs nvidia-smi lists), each with JAX_COORDINATOR_ADDRESS (node 0's address and a free
# port), JAX_NUM_PROCESSES, JAX_PROCESS_ID = node_rank * nproc_per_node + local_rank and
# JAX_LOCAL_DEVICE_IDS = local_rank (the one GPU it drives). thinjax's
# initialize_distributed() passes them to jax.distributed.initialize(). If one process
# fails, the others on this node are stopped; SIGTERM/SIGINT are passed on to every
# process (thinjax then saves a checkpoint and exits 143; rerunning resumes).
# --dry-run prints the commands with their environment. PYTHON picks the interpreter.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/gpu_multinode.sh [--nnodes=N] [--node-rank=R] [--nproc-per-node=G]
                               [--coordinator=HOST:PORT] [--dry-run] -- THINJAX_MAIN_ARGS

  --nnodes=N              nodes in the job (default 1)
  --node-rank=R           this node, 0..N-1 (default 0); node 0 hosts the coordinator
  --nproc-per-node=G      processes (= GPUs) on this node (default: GPUs found)
  --coordinator=H:P       node 0's address and a free port (required if N > 1;
                          default 127.0.0.1:12355)
EOF
}

die() {
  echo "error: $*" >&2
  usage >&2
  exit 2
}

NNODES=1 RANK=0 NPROC="" COORD="" DRY=0 ARGS=()
while (($#)); do
  case $1 in
    --) shift; ARGS=("$@"); break ;;
    --dry-run) DRY=1 ;;
    --nnodes=*) NNODES=${1#*=} ;;
    --node-rank=*) RANK=${1#*=} ;;
    --nproc-per-node=*) NPROC=${1#*=} ;;
    --coordinator=*) COORD=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (thinjax.main's options go after --)" ;;
  esac
  shift
done
if [[ -z $NPROC ]]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [[ $NPROC -gt 0 ]] || die "no GPU found by nvidia-smi; pass --nproc-per-node"
fi
for v in "$NNODES" "$NPROC"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "'$v' is not a positive count"
done
if ! [[ $RANK =~ ^[0-9]+$ ]] || ((RANK >= NNODES)); then
  die "--node-rank must be in 0..$((NNODES - 1))"
fi
if [[ -z $COORD ]]; then
  ((NNODES == 1)) || die "--coordinator=HOST:PORT (node 0) is required with several nodes"
  COORD=127.0.0.1:12355
fi
[[ $COORD =~ ^[^:]+:[0-9]+$ ]] || die "--coordinator must be HOST:PORT, not '$COORD'"
((${#ARGS[@]})) || die "no thinjax.main arguments (put them after --)"

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
WORLD=$((NNODES * NPROC))

PIDS=() STOPPING=0
stop_all() {  # passes a signal on to every process still running, once
  local pid
  ((!STOPPING)) || return 0
  STOPPING=1
  for pid in "${PIDS[@]}"; do kill -"$1" "$pid" 2>/dev/null || true; done
}
trap 'stop_all TERM' TERM
trap 'stop_all INT' INT

for ((i = 0; i < NPROC; i++)); do
  ENV=(JAX_COORDINATOR_ADDRESS="$COORD" JAX_NUM_PROCESSES="$WORLD"
    JAX_PROCESS_ID=$((RANK * NPROC + i)))
  if ((NPROC > 1)); then ENV+=(JAX_LOCAL_DEVICE_IDS="$i"); fi
  line=$(printf '%q ' "${ENV[@]}" "$PYTHON" -m thinjax.main "${ARGS[@]}")
  echo "+ ${line% }"
  if ((!DRY)); then
    env "${ENV[@]}" "$PYTHON" -m thinjax.main "${ARGS[@]}" &
    PIDS+=("$!")
  fi
done
((!DRY)) || exit 0

# Wait for all; the first failure stops the others (they would wait for it forever).
rc=0
while ((${#PIDS[@]})); do
  done_pid="" code=0
  wait -n -p done_pid "${PIDS[@]}" || code=$?
  [[ -n ${done_pid:-} ]] || continue  # a signal interrupted the wait (and was passed on)
  left=()
  for pid in "${PIDS[@]}"; do if [[ $pid != "$done_pid" ]]; then left+=("$pid"); fi; done
  PIDS=("${left[@]}")
  if ((code != 0 && rc == 0)); then
    rc=$code
    if ((!STOPPING)); then  # after a passed-on signal, 143s are expected: no second TERM
      echo "[gpu_multinode] process $done_pid exited with $code: stopping the others" >&2
      stop_all TERM
    fi
  fi
done
exit "$rc"
