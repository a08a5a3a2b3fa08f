"""Multi-host training on one machine: 2 processes x 4 CPU devices, started by
launch/gpu_multinode.sh and coordinated over loopback by jax.distributed (CPU collectives:
gloo, jax's default), against 1 process x 8 devices; checkpoints move between the two.

Each process reads only its own data shard (data.num_shards = 2 in both layouts, so the
global batches are the same). Mixup/cutmix are off: with them, the 1-process 8-device
gradients of this width-4 network differ from the 1-device ones by up to 1e-3 relative on
some batches (identical mixed inputs, targets and loss: rounding, amplified through
BatchNorm), which would hide what is tested here.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from tests.helpers import ROOT, TINY, final_params
from thinjax.checkpoint import load_model

EXTRA = ["--config.data.num_shards=2", "--config.train.mixup_alpha=0.0",
         "--config.train.cutmix_alpha=0.0", "--config.train.log_every=1",
         "--config.train.checkpoint_every=2", "--config.optim.warmup_epochs=5"]
TIMEOUT = 300  # seconds per phase (a loaded 2-core machine); a run takes ~20-45 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(workdir, num_processes: int, devices: int, *extra: str):
    """Starts thinjax.main in `num_processes` processes with `devices` CPU devices each,
    through launch/gpu_multinode.sh (coordinator on 127.0.0.1), in a new process group;
    returns (Popen, log path)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    # XLA -O0: compiling the train step dominates these short runs (same flags in every run)
    env.update(JAX_PLATFORMS="cpu", PYTHON=sys.executable,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
               "--xla_backend_optimization_level=0")
    args = [f"--workdir={workdir}", *TINY, *EXTRA, *extra]
    if num_processes > 1:
        port = free_port()
        env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"  # loopback only
        cmd = ["bash", "launch/gpu_multinode.sh", f"--nproc-per-node={num_processes}",
               f"--coordinator=127.0.0.1:{port}", "--", *args]
    else:
        cmd = [sys.executable, "-m", "thinjax.main", *args]
    log = workdir.parent / f"{workdir.name}.{num_processes}p.log"
    with open(log, "a") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True), log


def stop(p) -> None:
    """Kills what is left of a start()ed job's process group."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def finish(p, log, expect=0) -> str:
    """Waits for a start()ed job (TIMEOUT), cleans up, checks the exit code, returns the
    output."""
    try:
        rc = p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        rc = "timeout"
    finally:
        stop(p)
    out = log.read_text()
    assert rc == expect, f"exit {rc}\n{out[-3000:]}"
    return out


def launch(workdir, num_processes: int, devices: int, *extra: str) -> str:
    return finish(*start(workdir, num_processes, devices, *extra))


def max_abs_diff(a, b) -> float:
    import jax
    import numpy as np
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _continue_from(one, wd, num_processes: int, devices: int, ulps: int = 0):
    """Steps 3-4 from `one`'s step-2 checkpoint (its parameters moved by `ulps` ulps) on
    `num_processes` x `devices`: (final variables, the train losses logged)."""
    import jax
    import numpy as np

    from thinjax import checkpoint
    if ulps:
        meta, state = checkpoint._restore(str(one / "checkpoints"), 2)
        state["params"] = jax.tree.map(
            lambda a: np.asarray(a) * np.float32(1 + ulps * 2.0 ** -23), state["params"])
        m = checkpoint.manager(str(wd / "checkpoints"))
        checkpoint.save(m, 2, state, meta)
        m.wait_until_finished()
        m.close()
    else:
        shutil.copytree(one / "checkpoints" / "2", wd / "checkpoints" / "2")
    launch(wd, num_processes, devices, "--config.train.total_steps=4")
    return final_params(wd)[0], [json.loads(x)["train_loss"] for x in open(wd / "metrics.jsonl")]


def test_two_processes_equal_one_and_checkpoints_move_between_them(tmp_path):
    # 1 process x 8 devices, steps 1-4, checkpoints at 2 and 4: the reference
    one = tmp_path / "one"
    launch(one, 1, 8, "--config.train.total_steps=4")
    # 2 processes x 4 devices continue the 1-process checkpoint of step 2 to step 4
    two = tmp_path / "two"
    shutil.copytree(one / "checkpoints" / "2", two / "checkpoints" / "2")
    out = launch(two, 2, 4, "--config.train.total_steps=4")
    assert len(re.findall(r"resumed from \S+/two/checkpoints step 2\n", out)) == 2, out
    assert "8 devices (cpu), 2 process(es)" in out
    v1, m1 = final_params(one)
    v2, m2 = final_params(two)  # this (single) test process restores the 2-process checkpoint
    assert m1["step"] == m2["step"] == 4
    # The noise band: steps 3-4 again on 1 process x 8 devices from the step-2 state with
    # every parameter moved by one ulp, up and down, and on 1 process x 4 devices (another
    # reduction order of gradients and BN statistics). 2 processes reduce across the
    # processes (gloo) in yet another order. At this state the gradient of this width-4
    # network amplifies rounding ~3,000 times in one step (step 3's gradient norm moves
    # 3.4e-4 for a one-ulp move of the parameters, its loss 1e-7): on an Intel Xeon (family
    # 6 model 207) the two processes' step 4 was 0.0095 from one process's, the one-ulp-up
    # start's the same 0.0095 and the 4-device layout's 1e-4 (issue 25). The same batches
    # and state are checked apart from that noise: step 3's loss, computed before any
    # update, equals one process's (1e-7 here; from scratch, 2 processes matched 1 to 3e-8
    # in the parameters after two steps).
    draws = [_continue_from(one, tmp_path / "band", 1, 4)] + [
        _continue_from(one, tmp_path / f"ulp{u}", 1, 8, ulps=u) for u in (1, -1)]
    for part in ("params", "batch_stats"):
        noise = max(max_abs_diff(v1[part], vb[part]) for vb, _ in draws)
        diff = max_abs_diff(v1[part], v2[part])
        print(f"{part}: 2 processes vs 1: {diff:.3g}; noise band: {noise:.3g}")
        assert diff <= 4 * noise + 1e-7, (part, diff, noise)
    l1, l2 = ([json.loads(x)["train_loss"] for x in open(wd / "metrics.jsonl")]
              for wd in (one, two))
    assert len(l2) == 2 and abs(l2[0] - l1[2]) < 1e-6 * l1[2]  # step 3: same batch, state
    assert abs(l2[1] - l1[3]) <= 4 * max(abs(lb[1] - l1[3]) for _, lb in draws) + 1e-6
    # the best model is exported by process 0 alone (keep_best, on by default)
    assert json.load(open(two / "best_metric.json"))["step"] == 4
    assert load_model(str(two / "best"))[1]["params"]
    # 1 process on 1 device resumes the 2-process run's whole train state to step 5
    out = launch(two, 1, 1, "--config.train.total_steps=5")
    assert re.search(r"resumed from \S+/two/checkpoints step 4\n", out)
    res = json.load(open(two / "results.json"))
    assert res["steps"] == 5 and res["eval_top1"] > 0


def test_sigterm_to_one_process_stops_all_at_one_checkpoint(tmp_path):
    import psutil
    wd = tmp_path / "run"
    p, log = start(wd, 2, 4, "--config.train.total_steps=400",
                   "--config.train.checkpoint_every=1000", "--config.train.log_every=4")
    try:
        metrics = wd / "metrics.jsonl"
        deadline = time.time() + TIMEOUT
        while not (metrics.exists() and metrics.stat().st_size > 0):
            assert p.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        procs = psutil.Process(p.pid).children()
        one = [c for c in procs if c.environ().get("JAX_PROCESS_ID") == "1"]
        one[0].send_signal(signal.SIGTERM)  # as if only that host were preempted
    except BaseException:
        stop(p)
        raise
    out = finish(p, log, expect=143)
    saved = [d for d in os.listdir(wd / "checkpoints") if d.isdigit()]
    assert len(saved) == 1 and out.count(f"saved step {saved[0]}") == 2
    # (test_two_processes_... resumes a 2-process checkpoint; here, it is whole and readable)
    _, v, meta = load_model(str(wd / "checkpoints" / saved[0]))
    assert meta["step"] == int(saved[0]) and v["params"]
