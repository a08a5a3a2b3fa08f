"""The checkpoint keeper: restore, periodic and best checkpoints, the exported best model,
and preemption.

Retention is orbax's own: the newest `keep` checkpoints (`LatestN`) plus the best by eval
top-1 (`BestN` over the metrics saved with each evaluated checkpoint). For a pruning run a
checkpoint counts towards "best" only after the last pruning event (`phase`). The best
network is also exported, materialised, to `workdir/best` as a standalone model.

Restore tries the newest step first. A step whose files cannot be read is moved aside to
`workdir/checkpoints-unreadable/<step>` (never deleted) and the previous one is tried; a
step that reads but holds another network (a changed config) stops the run with an error,
since falling back would silently retrain it from scratch.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from thinjax import checkpoint as ckpt
from thinjax import fs
from thinjax.errors import CheckpointError, NonFiniteLoss
from thinjax.trace.example import network_meta


def best_metric(metrics: dict | None, phase: int) -> float:
    """The value BestN ranks by: eval top-1 of checkpoints saved in the final phase."""
    if not metrics or metrics.get("phase") != phase:
        return -1.0
    return float(metrics["top1"])


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class CheckpointKeeper:
    """Owns `workdir/checkpoints` and `workdir/best` for one training run."""

    def __init__(self, workdir: str, keep: int, keep_best: bool, final_phase: int,
                 async_save: bool = True):
        self.workdir, self.keep_best, self.final_phase = workdir, keep_best, final_phase
        policies: list = [pp.LatestN(n=keep)]
        if keep_best:
            policies.append(pp.BestN(get_metric_fn=lambda m: best_metric(m, final_phase),
                                     n=1, keep_checkpoints_without_metrics=False))
        self.mngr = ckpt.manager(os.path.join(workdir, "checkpoints"),
                                 enable_async_checkpointing=async_save,
                                 preservation_policy=pp.AnyPreservationPolicy(policies))
        self.best = {"top1": -1.0}
        self._stop = None
        self._old_handler = None
        self._synced = False

    # -- restore ------------------------------------------------------------------------
    def restore(self, abstract_for: Callable[[dict], Any]):
        """(state, step, meta) of the newest readable checkpoint, or (None, None, None)."""
        for step in sorted(self.mngr.all_steps(), reverse=True):
            try:
                meta = self.mngr.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore())).meta
                stored = self.mngr.item_metadata(step)["state"]
            except Exception as e:  # noqa: BLE001 (any read failure: try an older step)
                self._set_aside(step, e)
                continue
            target = abstract_for(meta)
            self._check_same_network(step, stored, target)
            try:
                with _quiet_failed_reads():
                    state = self.mngr.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target))).state
            except Exception as e:  # noqa: BLE001
                self._set_aside(step, e)
                continue
            self._restore_best()
            return state, step, meta
        return None, None, None

    def _check_same_network(self, step: int, stored, target) -> None:
        """Refuses a checkpoint whose arrays differ from this run's in name or shape."""
        want = dict(_shapes(target))
        got = dict(_shapes(stored))
        for k in sorted(set(want) | set(got)):
            if want.get(k) != got.get(k):
                raise CheckpointError(
                    f"{self.mngr.directory}/{step}: {k} is {got.get(k, 'absent')} in the "
                    f"checkpoint but {want.get(k, 'absent')} in this run: the workdir holds "
                    "a run of another network. Use a new --workdir, or rerun with the "
                    "config that made it")

    def _set_aside(self, step: int, error: Exception) -> None:
        """Moves an unreadable step out of the manager's sight, keeping its files."""
        src = os.path.join(str(self.mngr.directory), str(step))
        dst_dir = os.path.join(self.workdir, "checkpoints-unreadable")
        dst = os.path.join(dst_dir, str(step))
        if jax.process_index() == 0 and not fs.is_remote(src) and os.path.exists(src):
            os.makedirs(dst_dir, exist_ok=True)
            while os.path.exists(dst):
                dst += "-"
            os.replace(src, dst)
        first = str(error).splitlines()[0][:160] if str(error) else ""
        print(f"warning: checkpoint step {step} cannot be restored, its files are unreadable "
              f"({type(error).__name__}: {first}); moved to {dst}, "
              "trying the previous one", file=sys.stderr, flush=True)
        self.mngr.reload()

    def _restore_best(self) -> None:
        for s in self.mngr.all_steps():
            m = self.mngr.metrics(s)
            v = best_metric(m, self.final_phase)
            if v > self.best["top1"]:
                self.best = {"top1": v, "step": int(s)}

    # -- save ---------------------------------------------------------------------------
    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
        """Saves `state` at `step`; refuses non-finite weights (the last finite checkpoint
        stays the newest)."""
        if not bool(_all_finite((state.params, state.batch_stats, state.ema_params,
                                 state.ema_batch_stats))):
            last = self.mngr.latest_step()
            raise NonFiniteLoss(f"step {step}: the weights are no longer finite; nothing was "
                                f"saved, the newest checkpoint is step {last} in "
                                f"{self.mngr.directory}; lower optim.lr or check the data")
        self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)),
                       metrics=metrics, force=True)

    def is_new_best(self, top1: float, phase: int) -> bool:
        return self.keep_best and phase == self.final_phase and top1 > self.best["top1"]

    def export_best(self, step: int, top1: float, plan, variables: dict, meta: dict) -> None:
        """Writes the best network so far to workdir/best (process 0 alone); `plan`: its
        `Plan` or `ExampleNet`."""
        self.best = {"top1": top1, "step": step}
        if jax.process_index() == 0:
            fs.write_text(os.path.join(self.workdir, "best_metric.json"), json.dumps(self.best))
            ckpt.export_model(os.path.join(self.workdir, "best"), plan, variables,
                              {**meta, **network_meta(plan), "step": step, "top1": top1},
                              overwrite=True)

    # -- preemption ---------------------------------------------------------------------
    def watch_preemption(self) -> None:
        """One process: SIGTERM sets a flag. Several: JAX's preemption sync manager (set
        up by jax.distributed.initialize) names one step at which every process stops."""
        self._synced = jax.process_count() > 1 and jax.distributed.is_initialized()
        if not self._synced:
            self._old_handler = signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum, frame) -> None:
        self._stop = signum

    @property
    def stop_signal(self) -> int | None:
        """The signal that asked the run to stop (SIGTERM), or None."""
        return self._stop

    def preempted(self, step: int) -> bool:
        if self._synced and self.mngr.reached_preemption(step):
            self._stop = signal.SIGTERM
        return self._stop is not None

    def close(self) -> None:
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
        self.mngr.close()


def _shapes(tree) -> list[tuple[str, tuple]]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return [(jax.tree_util.keystr(p, simple=True, separator="/"), tuple(np.shape(x)))
            for p, x in flat if hasattr(x, "shape")]


@contextlib.contextmanager
def _quiet_failed_reads():
    """Silences the echoes of one unreadable array: orbax reads a checkpoint's arrays in
    concurrent asyncio tasks, and when one fails the others' failures surface as asyncio's
    "Task exception was never retrieved" and unraisable-coroutine tracebacks (dozens of
    lines each). The failure itself is raised, and reported once by `_set_aside`."""
    log = logging.getLogger("asyncio")
    level, hook = log.level, sys.unraisablehook
    log.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda _: None
    try:
        yield
    finally:
        gc.collect()  # the failed tasks are reported when collected: here, while quiet
        log.setLevel(level)
        sys.unraisablehook = hook
