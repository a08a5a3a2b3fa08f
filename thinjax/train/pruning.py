"""The pruning controller of a training run: when to prune (the schedule's events), what
to keep (criterion + allocation -> masks in the state), and the switch to the materialised
smaller network after the last event, with its log.

`meta` is the part of every checkpoint's metadata that describes the network: the current
plan (an example network's description: ``example``), and once pruning has materialised,
the dense one it came from (``dense_plan``, ``dense_example``) and the event log. The
network (`thinjax.trace.networks`) is a plan's or an example's pruned on traced groups: the
same events, criteria, allocation and regularisers act on either.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np

from thinjax import sharding
from thinjax.plan import Plan
from thinjax.prune import criteria
from thinjax.prune import schedule as prune_schedule
from thinjax.trace.example import ExampleNet, network_from_meta
from thinjax.trace.networks import Network, network
from thinjax.train import state as state_lib
from thinjax.train.run import Run, Setting
from thinjax.train.step import apply_masks


class PruningController:
    """Runs the pruning events due at each step and materialises after the last."""

    def __init__(self, setting: Setting, plan: Plan | Network, workdir: str,
                 train_batches_at, verbose: bool):
        spec = setting.prune
        self.setting, self.spec, self.verbose, self.workdir = setting, spec, verbose, workdir
        self.events = prune_schedule.events(spec, setting.steps_per_epoch, setting.total)
        self.target = spec.goal() if self.events else None
        self._batches_at = train_batches_at
        self.resume(plan, None, 0)

    def _net(self, plan: Plan | ExampleNet | Network) -> Network:
        return network(plan, input_size=self.setting.image_size)

    def resume(self, plan: Plan | Network, ck_meta: dict | None, start: int) -> None:
        """Picks up the event log and networks of the checkpoint a run resumes from."""
        ck_meta = ck_meta or {}
        self.log: list[dict] = list(ck_meta.get("prune_events", []))
        net = self._net(plan)
        dense = network_from_meta(ck_meta, "dense_")
        self.dense = net if dense is None else net.at(dense)
        self.dense_cost = self.dense.cost(self.setting.image_size)
        self.materialized = bool(ck_meta.get("materialized"))
        done = {e["step"] for e in self.log}
        self.pending = [(i, e, pr) for i, (e, pr) in enumerate(self.events)
                        if e > start or (e == start and e not in done)]

    @property
    def phase(self) -> int:
        """Pruning events done so far (the best network is chosen in the last phase)."""
        return len(self.events) - len(self.pending)

    @property
    def dense_plan(self) -> Plan | ExampleNet:
        """What rebuilds the network the run started from."""
        return self.dense.desc

    def initial_masks(self, plan: Plan | Network) -> dict:
        return self._net(plan).init_masks() if self.events and not self.materialized else {}

    def meta(self, plan: Plan | Network) -> dict:
        out = self._net(plan).meta()
        if self.log:
            out["prune_events"] = self.log
        if self.materialized:
            out.update(materialized=True, **self.dense.meta("dense_"))
        return out

    def due(self, step: int) -> bool:
        return bool(self.pending) and self.pending[0][1] == step

    def run_events(self, state, run: Run, step: int, template, writer=None) -> tuple:
        """Every event due at `step` (its sizes also to `writer`, a MetricWriter); after
        the last (with prune.materialize), the state and run of the smaller network.
        Returns (state, run). `template`: unused (the run's network carries its model
        options); kept for callers that pass it."""
        while self.due(step):
            k, _, progress = self.pending.pop(0)
            state = self._event(state, run, step, k, progress, writer)
        if not self.pending and self.spec.materialize and state.masks:
            state, run = self._materialize(state, run)
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
        alloc = run.net.compute_masks(host, self.spec, tgt, masks=masks, batches=batches,
                                      seed=self.setting.config.seed + step)
        new_masks = jax.tree.map(np.asarray, alloc.masks)
        if soft:  # the filters are zeroed, but train on: no mask is kept
            params = jax.jit(run.net.soft_event,
                             out_shardings=self.setting.repl)(state.params, new_masks)
            state = state.replace(params=params)
        else:
            state = jax.jit(functools.partial(apply_masks, plan=run.net),
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

    def _materialize(self, state, run: Run) -> tuple:
        """Continues on the smaller dense network: params, BN stats, EMA, optimizer state."""
        host = jax.device_get(state)
        net = run.net
        new = net.small(host.masks)
        sl = lambda t: net.slice_tree(host.masks, t, new)  # noqa: E731
        new_run = self.setting.run_for(new)
        params = sl(host.params)
        opt_state = net.slice_opt_state(host.masks, host.opt_state, new_run.tx.init(params),
                                        new)
        state = state_lib.TrainState(
            step=host.step, params=params, batch_stats=sl(host.batch_stats),
            opt_state=opt_state, ema_params=sl(host.ema_params),
            ema_batch_stats=sl(host.ema_batch_stats), rng=host.rng, masks={})
        self.materialized = True
        if self.verbose:  # process 0
            new.desc.save(os.path.join(self.workdir, "pruned_plan.json"))  # local or gs://
            print(f"materialised: continuing on {new.describe()}", flush=True)
        return jax.device_put(state, self.setting.repl), new_run

    def out_network(self, state, net: Network) -> Network:
        """The network the run ends with (materialised, even if masks remain)."""
        return net.small(jax.device_get(state.masks)) if state.masks else net


def regularized(setting: Setting, net: Network, state, batches_at, start: int) -> Setting:
    """`setting` with the ``prune.regularizer`` penalty in the train step
    (``StepConfig.prune_reg``, `thinjax.prune.regularize.build`), built from the state's
    weights at step `start` (GReg selects its channels from them); unchanged when the config
    asks for none. For the dense network only: a materialised run trains without it."""
    cfg = setting.prune
    if cfg.regularizer == "none":
        return setting
    host = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    batches = None
    if cfg.regularizer == "greg" and criteria.needs_data(cfg.criterion):
        it = batches_at(start)
        batches = (sharding.global_batch(next(it), setting.mesh) for _ in range(10 ** 9))
    masks = jax.device_get(state.masks) if state.masks else None
    reg = net.regularizer(cfg, host, masks=masks, batches=batches,
                          seed=setting.config.seed + start)
    return dataclasses.replace(
        setting, step_cfg=dataclasses.replace(setting.step_cfg, prune_reg=reg))
