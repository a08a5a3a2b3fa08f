#!/usr/bin/env bash
# Train thinjax on GPU nodes under SLURM: one process per GPU, all nodes in one JAX job.
#
#   cd thinjax && sbatch launch/gpu_slurm.sh --config=configs/thin_r50.py \
#       --workdir=/shared/runs/r50 --config.data.data_dir=/shared/tfds
#   sbatch --nodes=4 launch/gpu_slurm.sh ...      # the #SBATCH values below are defaults
#   launch/gpu_slurm.sh --dry-run --config=... --workdir=...   # print srun and its env
#
# Submit from the repository root (SLURM runs a copy of this script; SLURM_SUBMIT_DIR is
# where the checkout is). The arguments are thinjax.main's. thinjax's
# initialize_distributed() sees SLURM_NTASKS > 1 and calls jax.distributed.initialize(),
# which reads the coordinator (first node), process count and id, and the local GPU
# (SLURM_LOCALID) from SLURM's environment. Each task must see all GPUs of its node, so do
# not bind GPUs per task (--gpus-per-task / --gpu-bind). The workdir must be on storage
# that every node sees (a shared file system; gs:// once thinjax writes through
# tf.io.gfile, see docs/scaling.md).
# Before the time limit SLURM sends SIGTERM (--signal): thinjax saves a checkpoint and
# exits 143; the job then requeues itself and the rerun resumes from that checkpoint (with
# several processes this needs the preemption fix in docs/scaling.md, "Known issues").
#
#SBATCH --job-name=thinjax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
if [[ $# -eq 0 || ${1:-} == -h || ${1:-} == --help ]]; then
  echo "usage: sbatch launch/gpu_slurm.sh --config=FILE --workdir=DIR [--config.key=value ...]" >&2
  echo "       launch/gpu_slurm.sh --dry-run --config=FILE --workdir=DIR [...]" >&2
  exit 2
fi
WORKDIR=""
for a in "$@"; do if [[ $a == --workdir=* ]]; then WORKDIR=${a#--workdir=}; fi; done
if [[ -z $WORKDIR ]]; then
  echo "error: --workdir=DIR is required (on storage every node sees)" >&2
  exit 2
fi

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
# srun starts --ntasks-per-node processes on every node of the allocation; jax.distributed
# reads SLURM_JOB_ID, SLURM_STEP_NODELIST (coordinator: the first node, port from the job
# id), SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID (this task's GPU) in each of them.
CMD=(srun --kill-on-bad-exit=1 "$PYTHON" -m thinjax.main "$@")

if ((DRY)); then
  echo "# job ${SLURM_JOB_ID:-(none)}: ${SLURM_JOB_NUM_NODES:-?} nodes (${SLURM_JOB_NODELIST:-?})" \
    "x ${SLURM_NTASKS_PER_NODE:-?} tasks = ${SLURM_NTASKS:-?} processes, one per GPU"
  echo "# each task: SLURM_PROCID=0..$((${SLURM_NTASKS:-1} - 1)) SLURM_LOCALID=GPU index" \
    "-> jax.distributed.initialize()"
  echo "+ cd $(pwd)"
  line=$(printf '%q ' "${CMD[@]}")
  echo "+ ${line% }"
  exit 0
fi

echo "[gpu_slurm] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_JOB_NUM_NODES" \
  "nodes, $SLURM_NTASKS processes: ${CMD[*]}"
rc=0
"${CMD[@]}" || rc=$?
if [[ -e $WORKDIR/results.json ]]; then exit 0; fi
# SIGTERM before the time limit: thinjax saved a checkpoint and exited 143; go again
if ((rc == 143 && ${SLURM_RESTART_COUNT:-0} < ${MAX_REQUEUE:-50})); then
  echo "[gpu_slurm] stopped at the time limit (exit 143): requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
