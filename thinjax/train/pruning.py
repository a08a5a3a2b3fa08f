"""The pruning controller of a training run: when to prune (the schedule's events), what
to keep (criterion + allocation -> masks in the state), and the switch to the materialised
smaller network after the last event, with its log.

`meta` is the part of every checkpoint's metadata that describes the network: the current
plan, and once pruning has materialised, the dense plan it came from and the event log.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np

from thinjax import sharding
from thinjax.cost import count
from thinjax.plan import Plan
from thinjax.prune import criteria, regularize
from thinjax.prune import groups as prune_groups
from thinjax.prune import schedule as prune_schedule
from thinjax.prune.materialize import slice_opt_state, slice_tree, small_plan
from thinjax.prune.pruner import compute_masks
from thinjax.prune.soft import soft_event
from thinjax.train import state as state_lib
from thinjax.train.run import Run, Setting
from thinjax.train.step import apply_masks


class PruningController:
    """Runs the pruning events due at each step and materialises after the last."""

    def __init__(self, setting: Setting, plan: Plan, workdir: str, train_batches_at,
                 verbose: bool):
        spec = setting.prune
        self.setting, self.spec, self.verbose, self.workdir = setting, spec, verbose, workdir
        self.events = prune_schedule.events(spec, setting.steps_per_epoch, setting.total)
        self.target = spec.goal() if self.events else None
        self._batches_at = train_batches_at
        self.resume(plan, None, 0)

    def resume(self, plan: Plan, ck_meta: dict | None, start: int) -> None:
        """Picks up the event log and plans of the checkpoint a run resumes from."""
        ck_meta = ck_meta or {}
        self.log: list[dict] = list(ck_meta.get("prune_events", []))
        self.dense_plan = Plan.from_dict(ck_meta.get("dense_plan") or plan.to_dict())
        self.dense_cost = count(self.dense_plan, self.setting.image_size)
        self.materialized = bool(ck_meta.get("materialized"))
        done = {e["step"] for e in self.log}
        self.pending = [(i, e, pr) for i, (e, pr) in enumerate(self.events)
                        if e > start or (e == start and e not in done)]

    @property
    def phase(self) -> int:
        """Pruning events done so far (the best network is chosen in the last phase)."""
        return len(self.events) - len(self.pending)

    def initial_masks(self, plan: Plan) -> dict:
        return prune_groups.init_masks(plan) if self.events and not self.materialized else {}

    def meta(self, plan: Plan) -> dict:
        out = {"plan": plan.to_dict()}
        if self.log:
            out["prune_events"] = self.log
        if self.materialized:
            out.update(materialized=True, dense_plan=self.dense_plan.to_dict())
        return out

    def due(self, step: int) -> bool:
        return bool(self.pending) and self.pending[0][1] == step

    def run_events(self, state, run: Run, step: int, template, writer=None) -> tuple:
        """Every event due at `step` (its sizes also to `writer`, a MetricWriter); after
        the last (with prune.materialize), the state and run of the smaller network.
        Returns (state, run)."""
        while self.due(step):
            k, _, progress = self.pending.pop(0)
            state = self._event(state, run, step, k, progress, writer)
        if not self.pending and self.spec.materialize and state.masks:
            state, run = self._materialize(state, run, template)
        return state, run

    def _event(self, state, run: Run, step: int, k: int, progress: float, writer):
        """Scores the current weights and shrinks the masks towards this event's target; a
        soft event (``schedule="soft"``, all but the last) zeroes the lowest channels'
        filters instead and keeps no mask."""
        host = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        tgt = prune_schedule.step_target(self.target, progress, self.dense_cost.params,
                                         self.dense_cost.macs)
        soft = prune_schedule.is_soft(self.spec, k, len(self.events))
        batches = None
        if criteria.needs_data(self.spec.criterion):
            it = self._batches_at(step)
            batches = (sharding.global_batch(next(it), self.setting.mesh)
                       for _ in range(10 ** 9))
        masks = None if soft or not state.masks else jax.device_get(state.masks)
        alloc = compute_masks(run.plan, host, self.spec, tgt, masks=masks,
                              model=run.model, batches=batches,
                              input_size=self.setting.image_size,
                              seed=self.setting.config.seed + step)
        new_masks = jax.tree.map(np.asarray, alloc.masks)
        if soft:  # the filters are zeroed, but train on: no mask is kept
            params = jax.jit(functools.partial(soft_event, run.plan),
                             out_shardings=self.setting.repl)(state.params, new_masks)
            state = state.replace(params=params)
        else:
            state = jax.jit(functools.partial(apply_masks, plan=run.plan),
                            out_shardings=self.setting.repl)(state.replace(masks=new_masks))
        self._record(step, k, tgt, alloc, soft, writer=writer)
        return state

    def _record(self, step: int, k: int, tgt, alloc, soft: bool = False, writer=None) -> None:
        d = self.dense_cost
        self.log.append({"step": step, "event": k + 1, "of": len(self.events), "soft": soft,
                         "params": alloc.params, "macs": alloc.macs,
                         "target": list(alloc.target), "rel_error": alloc.rel_error,
                         "plan": alloc.plan.describe()})
        if writer is not None:
            writer.write(step, {"prune_params": alloc.params, "prune_macs": alloc.macs})
        if self.verbose:
            kind = "soft prune" if soft else "prune"
            print(f"{kind} event {k + 1}/{len(self.events)} at step {step} "
                  f"({self.spec.criterion}, {self.spec.allocation}, target "
                  f"{tgt.kind}={tgt.value:,.4g}): {alloc.params:,} params "
                  f"({100 * alloc.params / d.params:.1f}%), {alloc.macs / 1e6:.2f} M MACs "
                  f"({100 * alloc.macs / d.macs:.1f}%)\n  {alloc.plan.describe()}", flush=True)

    def _materialize(self, state, run: Run, template) -> tuple:
        """Continues on the smaller dense network: params, BN stats, EMA, optimizer state."""
        host = jax.device_get(state)
        new = small_plan(run.plan, host.masks)
        sl = lambda t: slice_tree(run.plan, host.masks, t, new)  # noqa: E731
        new_run = self.setting.run_for(template, new)
        params = sl(host.params)
        opt_state = slice_opt_state(run.plan, host.masks, host.opt_state,
                                    new_run.tx.init(params), new)
        state = state_lib.TrainState(
            step=host.step, params=params, batch_stats=sl(host.batch_stats),
            opt_state=opt_state, ema_params=sl(host.ema_params),
            ema_batch_stats=sl(host.ema_batch_stats), rng=host.rng, masks={})
        self.materialized = True
        if self.verbose:  # process 0
            new.save(os.path.join(self.workdir, "pruned_plan.json"))  # local or gs://
            print(f"materialised: continuing on {new.describe()}", flush=True)
        return jax.device_put(state, self.setting.repl), new_run

    def out_plan(self, state, plan: Plan) -> Plan:
        """The network the run ends with (materialised, even if masks remain)."""
        return small_plan(plan, jax.device_get(state.masks)) if state.masks else plan


def regularized(setting: Setting, plan: Plan, template, state, batches_at,
                start: int) -> Setting:
    """`setting` with the ``prune.regularizer`` penalty in the train step
    (``StepConfig.prune_reg``, `thinjax.prune.regularize.build`), built from the state's
    weights at step `start` (GReg selects its channels from them); unchanged when the config
    asks for none. For the dense plan only: a materialised run trains without it."""
    cfg = setting.prune
    if cfg.regularizer == "none":
        return setting
    host = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    batches = None
    if cfg.regularizer == "greg" and criteria.needs_data(cfg.criterion):
        it = batches_at(start)
        batches = (sharding.global_batch(next(it), setting.mesh) for _ in range(10 ** 9))
    masks = jax.device_get(state.masks) if state.masks else None
    reg = regularize.build(plan, cfg, host, masks=masks, model=template.clone(plan=plan),
                           batches=batches, input_size=setting.image_size,
                           seed=setting.config.seed + start)
    return dataclasses.replace(
        setting, step_cfg=dataclasses.replace(setting.step_cfg, prune_reg=reg))
