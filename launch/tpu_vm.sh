#!/usr/bin/env bash
# Train thinjax on a Cloud TPU VM or pod slice, and keep going through preemptions.
#
#   launch/tpu_vm.sh run --name=r50 --zone=us-central2-b --accelerator=v4-32 \
#       --config=configs/thin_r50.py --workdir=gs://BUCKET/runs/r50 \
#       --data-dir=gs://BUCKET/tfds --spot -- --config.model.width=16
#   launch/tpu_vm.sh delete --name=r50 --zone=us-central2-b
#
# `run` creates the TPU (if needed), copies this checkout to every worker and installs it
# with jax[tpu], then runs the same `python -m thinjax.main` command on all workers and
# streams its output. If the TPU is preempted (its state is no longer READY, or it is
# gone), it is deleted, recreated and the same command runs again: thinjax resumes from the
# newest checkpoint in the workdir. The loop ends when WORKDIR/results.json exists.
# --dry-run prints every command (`+ gcloud ...`) without running anything.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh run|delete [options] [-- thinjax.main options]

  --name=NAME            TPU name (required)
  --zone=ZONE            zone (required)
  --project=PROJECT      project (default: gcloud's configured project)
  --accelerator=TYPE     v4-N, v5litepod-N (or v5e-N), v5p-N, v6e-N (default v4-8)
  --version=RUNTIME      TPU runtime (default: by TPU generation)
  --spot                 a Spot TPU (preemptible, cheaper)
  --preemptible          a legacy preemptible TPU
  --queued               request the TPU as a queued resource (waits for capacity)
  --config=FILE          thinjax config (run; default configs/thin_r50.py)
  --workdir=gs://...     run directory: checkpoints, metrics, results.json (run; required)
  --data-dir=gs://...    TFDS data_dir (sets --config.data.data_dir)
  --max-attempts=N       give up after N runs of the command (default 50)
  --poll=SECONDS         wait between state checks (default 60)
  --dry-run              print the commands, run nothing
EOF
}

die() {
  echo "error: $*" >&2
  usage >&2
  exit 2
}

# -- options --------------------------------------------------------------------------------
ACTION=${1:-}
[[ $ACTION == run || $ACTION == delete ]] || die "the first argument must be 'run' or 'delete'"
shift
NAME="" ZONE="" PROJECT="" ACCEL=v4-8 VERSION="" SPOT=0 PREEMPTIBLE=0 QUEUED=0
CONFIG=configs/thin_r50.py WORKDIR="" DATA_DIR="" MAX_ATTEMPTS=50 POLL=60 DRY=0
EXTRA=()
while (($#)); do
  case $1 in
    --) shift; EXTRA=("$@"); break ;;
    --spot) SPOT=1 ;;
    --preemptible) PREEMPTIBLE=1 ;;
    --queued) QUEUED=1 ;;
    --dry-run) DRY=1 ;;
    --*=*)
      value=${1#*=}
      case ${1%%=*} in
        --name) NAME=$value ;;
        --zone) ZONE=$value ;;
        --project) PROJECT=$value ;;
        --accelerator) ACCEL=$value ;;
        --version) VERSION=$value ;;
        --config) CONFIG=$value ;;
        --workdir) WORKDIR=$value ;;
        --data-dir) DATA_DIR=$value ;;
        --max-attempts) MAX_ATTEMPTS=$value ;;
        --poll) POLL=$value ;;
        *) die "unknown option ${1%%=*}" ;;
      esac ;;
    *) die "unknown argument '$1' (options are --key=value; thinjax options go after --)" ;;
  esac
  shift
done
[[ -n $NAME ]] || die "--name is required"
[[ -n $ZONE ]] || die "--zone is required"
((SPOT + PREEMPTIBLE <= 1)) || die "--spot and --preemptible exclude each other"
[[ $MAX_ATTEMPTS =~ ^[1-9][0-9]*$ ]] || die "--max-attempts must be a positive integer"
[[ $POLL =~ ^[0-9]+$ ]] || die "--poll must be a number of seconds"
ACCEL=${ACCEL/#v5e-/v5litepod-}
if [[ -z $VERSION ]]; then  # the runtime images Google documents for JAX on each generation
  case $ACCEL in
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "unknown accelerator type '$ACCEL' (v4-N, v5litepod-N, v5p-N, v6e-N)" ;;
  esac
fi
if [[ $ACTION == run ]]; then
  [[ $WORKDIR == gs://* ]] || die "--workdir must be a gs:// path (the TPU may be replaced)"
  [[ -z $DATA_DIR || $DATA_DIR == gs://* ]] || die "--data-dir must be a gs:// path"
fi

# -- commands -------------------------------------------------------------------------------
exec 3>&1  # the script's stdout, for lines printed from inside $(...)
SCOPE=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then SCOPE+=(--project="$PROJECT"); fi
KIND=()  # what kind of capacity
if ((SPOT)); then KIND=(--spot); fi
if ((PREEMPTIBLE)); then KIND=(--preemptible); fi

quote() {  # the arguments as one shell-readable line: --key="value" where quoting is needed
  local a key out=()
  for a in "$@"; do
    key=""
    if [[ $a =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then key=${BASH_REMATCH[1]} a=${BASH_REMATCH[2]}; fi
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]*$ ]]; then out+=("$key$a")
    elif [[ $a != *[\"\$\`\\!]* ]]; then out+=("$key\"$a\"")
    else out+=("$key'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

run() {  # prints a command, then runs it unless --dry-run
  echo "+ $(quote "$@")"
  if ((!DRY)); then "$@"; fi
}

query() {  # a command that only reads (its output is the answer; a dry run prints it, fails)
  if ((DRY)); then echo "+ $(quote "$@")" >&3; return 1; fi
  "$@" 2>/dev/null
}

log() { echo "[tpu_vm $(date -u +%H:%M:%S)] $*" >&2; }

state() {  # READY, CREATING, PREEMPTED, ... or MISSING
  query gcloud compute tpus tpu-vm describe "$NAME" "${SCOPE[@]}" --format='value(state)' \
    || echo MISSING
}

results_exist() {
  query gcloud storage ls "$WORKDIR/results.json" >/dev/null
}

create() {
  if ((QUEUED)); then  # the queued resource owns a node of the same name
    run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${SCOPE[@]}" \
      --accelerator-type="$ACCEL" --runtime-version="$VERSION" "${KIND[@]}" || return
    ((DRY)) || wait_queued
  else
    run gcloud compute tpus tpu-vm create "$NAME" "${SCOPE[@]}" \
      --accelerator-type="$ACCEL" --version="$VERSION" "${KIND[@]}"
  fi
}

wait_queued() {  # until the queued resource's node is READY, or the request has failed
  local q
  while [[ $(state) != READY ]]; do
    q=$(query gcloud compute tpus queued-resources describe "$NAME" "${SCOPE[@]}" \
      --format='value(state.state)') || q=MISSING
    case $q in FAILED | SUSPENDED | MISSING) log "queued resource $NAME is $q"; return 1 ;; esac
    log "queued resource $NAME is $q; waiting for capacity"
    sleep "$POLL"
  done
}

delete() {
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources delete "$NAME" "${SCOPE[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${SCOPE[@]}" --quiet
  fi
}

ssh_all() {  # runs a command line on every worker (output streamed)
  run gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" --worker=all --command="$1"
}

install() {  # this checkout (tracked and untracked, not ignored files) onto every worker
  local repo tarball jax_version
  repo=$(cd "$(dirname "$0")/.." && pwd)
  tarball=${TMPDIR:-/tmp}/thinjax-$NAME.tar.gz
  jax_version=$(sed -n 's/^jax==//p' "$repo/constraints.txt")
  echo "+ (cd $(quote "$repo") && git ls-files -co --exclude-standard |" \
    "tar -czf $(quote "$tarball") -T -)"
  if ((!DRY)); then
    (cd "$repo" && git ls-files -co --exclude-standard | tar -czf "$tarball" -T -)
  fi
  run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:thinjax.tar.gz" "${SCOPE[@]}" --worker=all &&
    ssh_all "set -e; rm -rf ~/thinjax; mkdir -p ~/thinjax; tar -xzf ~/thinjax.tar.gz -C ~/thinjax; \
python3 -m pip install -q -U pip; python3 -m pip install -q ~/thinjax 'jax[tpu]==${jax_version}'"
}

train() {  # the same thinjax.main command on every worker; each worker keeps a log too
  local args=(--config="$CONFIG" --workdir="$WORKDIR")
  if [[ -n $DATA_DIR ]]; then args+=(--config.data.data_dir="$DATA_DIR"); fi
  args+=("${EXTRA[@]}")
  ssh_all "set -o pipefail; cd ~/thinjax && THINJAX_DISTRIBUTED=1 python3 -m thinjax.main \
$(quote "${args[@]}") 2>&1 | tee -a ~/thinjax.log"
}

# -- delete ---------------------------------------------------------------------------------
if [[ $ACTION == delete ]]; then
  delete
  exit 0
fi

# -- run: (re)create, install, train, until results.json exists -----------------------------
installed=0
for ((attempt = 1; attempt <= MAX_ATTEMPTS; attempt++)); do
  s=$(state)
  while [[ $s =~ ^(CREATING|STARTING|RESTARTING|REPAIRING)$ ]]; do
    log "TPU $NAME is $s; waiting"
    sleep "$POLL"
    s=$(state)
  done
  if [[ $s != READY ]]; then
    if [[ $s != MISSING ]] || ((QUEUED && attempt > 1)); then
      log "TPU $NAME is $s: deleting it"
      delete || true
    fi
    if ! create; then
      log "creating TPU $NAME failed (capacity?); retrying in $POLL s"
      sleep "$POLL"
      continue
    fi
    installed=0
  fi
  if ((!installed)); then
    if ! install; then
      log "installing on TPU $NAME failed; retrying in $POLL s"
      sleep "$POLL"
      continue
    fi
    installed=1
  fi
  rc=0
  train || rc=$?
  if ((DRY)); then
    results_exist || true
    echo "# dry run: the loop would now check $WORKDIR/results.json and the TPU's state, and" \
      "recreate the TPU and rerun the command until results.json exists"
    exit 0
  fi
  if results_exist; then
    log "finished: $WORKDIR/results.json"
    exit 0
  fi
  if ((rc == 0)); then
    log "the command exited 0 but $WORKDIR/results.json does not exist; stopping"
    exit 1
  fi
  s=$(state)
  # a READY TPU and a failure other than SIGTERM (143) or a lost ssh (255): not a preemption
  if [[ $s == READY ]] && ((rc != 143 && rc != 255)); then
    log "the command failed (exit $rc) on a healthy TPU; fix it and rerun this script (it resumes)"
    exit "$rc"
  fi
  log "attempt $attempt ended (exit $rc, TPU $s); resuming"
done
log "giving up after $MAX_ATTEMPTS attempts"
exit 1
