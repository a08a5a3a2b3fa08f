"""The training loop: data -> jit steps on a mesh -> metrics, evaluation, checkpoints.

A run lives in its workdir:
  config.json          the resolved config
  plan.json            the channel plan (an example network's description: thinjax.trace)
  checkpoints/<step>/  orbax: `state` (the whole TrainState) and `meta` (plan, pruning log)
  best/                model checkpoint (EMA weights if enabled) with the best eval top-1
  metrics.jsonl        one JSON object per log line / evaluation
  tensorboard/         the same scalars as TensorBoard events
  wandb_run_id, wandb/ with config.logging.wandb: the W&B run's id and files (thinjax.train.metrics)
  results.json         written when the run has finished
Rerunning with the same workdir resumes from the newest readable checkpoint; the data
stream is a pure function of (seed, step), so a resumed run ends with the weights of an
uninterrupted one.

The parts: `run.Setting` / `run.Run` (the fixed setting; one plan's model, optimizer and
jitted step), `pruning.PruningController`, `keeper.CheckpointKeeper` and
`metrics.Reporter`. `train_and_evaluate` is the loop that drives them.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import jax
import jax.numpy as jnp

from thinjax import optim, sharding
from thinjax.allocator import malloc_status
from thinjax.data import get_source, train_batches
from thinjax.data.pipeline import EvalBatches
from thinjax.errors import NonFiniteLoss
from thinjax.evaluation import evaluate
from thinjax.ops import conv
from thinjax.plan import Plan
from thinjax.settings import Settings, as_settings
from thinjax.trace.example import ExampleNet, network_from_meta
from thinjax.trace.networks import Network, network
from thinjax.train.keeper import CheckpointKeeper
from thinjax.train.metrics import MetricWriter, Reporter
from thinjax.train.pruning import PruningController, regularized
from thinjax.train.run import Run, Setting, make_setting


@dataclasses.dataclass
class Parts:
    """A run assembled and, where a checkpoint exists, restored."""
    setting: Setting
    run: Run
    state: object
    start: int
    source: object
    keeper: CheckpointKeeper
    pruner: PruningController
    reporter: Reporter
    evaluator: Evaluator


def train_and_evaluate(cfg: Settings, workdir: str, model, plan: Plan | ExampleNet,
                       init_variables=None) -> dict:
    """Trains (or resumes) the run in `workdir`; returns its results. `plan`: a ThinResNet's
    plan (`model`: the ResNet carrying its options) or an example network's description
    (`model`: its module)."""
    p = assemble(cfg, workdir, model, plan, init_variables)
    s, keeper, pruner = p.setting, p.keeper, p.pruner
    batches = _train_stream(s, p.source, p.start)
    step, last_eval = p.start, {}
    keeper.watch_preemption()
    try:
        while step < s.total:
            if pruner.due(step):
                p.state, p.run = pruner.run_events(p.state, p.run, step, model,
                                                   p.reporter.writer)
            p.state, metrics = p.run.step(p.state, sharding.global_batch(next(batches), s.mesh))
            step += 1
            p.reporter.add(metrics)
            last_eval = _bookkeeping(p, step) or last_eval
        keeper.mngr.wait_until_finished()
    finally:
        p.reporter.writer.close()
        keeper.close()
    return _results(p, workdir, last_eval or p.evaluator(p.state, p.run))


def _bookkeeping(p: Parts, step: int) -> dict | None:
    """Logging, evaluation and checkpoints after `step`; exits 143 on preemption.
    Returns the evaluation, if one ran."""
    cfg, s = p.setting.config, p.setting
    last = step == s.total
    log = step % cfg.train.log_every == 0 or last
    do_eval = step % p.evaluator.every == 0 or last
    stop = p.keeper.preempted(step)
    do_ckpt = step % cfg.train.checkpoint_every == 0 or last or do_eval or stop
    if not (log or do_eval or do_ckpt):
        return None
    _raise_if_non_finite(p.reporter.fetch(), step, p.keeper)
    ev, t_eval = None, time.perf_counter()
    if do_eval:
        try:
            ev = p.evaluator(p.state, p.run)
        except BaseException:  # e.g. an undecodable evaluation image: keep the training first
            if do_ckpt:
                _save(p, step, None)
                p.keeper.mngr.wait_until_finished()
            raise
    if log or do_eval:
        p.reporter.log(step, ev, time.perf_counter() - t_eval)
    if do_ckpt:
        _save(p, step, ev)
    if stop:
        p.keeper.mngr.wait_until_finished()
        print(f"signal {p.keeper.stop_signal}: saved step {step} in {p.keeper.mngr.directory}; "
              "rerun the same command to resume", flush=True)
        raise SystemExit(143)
    return ev


def _save(p: Parts, step: int, ev: dict | None) -> None:
    """A checkpoint (with its eval top-1 when evaluated) and, if best so far, `best/`."""
    ema = p.setting.config.ema.enabled
    top1 = ev["ema_eval_top1" if ema else "eval_top1"] if ev else None
    metrics = {"top1": top1, "phase": p.pruner.phase} if ev else None
    meta = {**p.pruner.meta(p.run.net), "config": p.setting.config.to_dict(), "step": step,
        "convolution": convolution_of(p.run.model)}
    p.keeper.save(step, p.state, meta, metrics)
    if ev and p.keeper.is_new_best(top1, p.pruner.phase):
        net, v = p.run.net, jax.device_get(p.state.variables(ema))  # replicated: on host
        if p.state.masks:  # export the materialised network, not the masked wide one
            masks = jax.device_get(p.state.masks)
            net = p.run.net.small(masks)
            v = {k: p.run.net.slice_tree(masks, x, net) for k, x in v.items()}
        p.keeper.export_best(step, top1, net.desc, v, meta)


def _raise_if_non_finite(window: list[dict], step: int, keeper: CheckpointKeeper) -> None:
    bad = [i for i, m in enumerate(window) if not bool(m["finite"])]
    if bad:
        last = keeper.mngr.latest_step()
        kept = (f"the last good checkpoint (step {last}) is kept in {keeper.mngr.directory}"
                if last is not None else "no checkpoint was written yet")
        raise NonFiniteLoss(f"non-finite loss at step {step - len(window) + bad[0] + 1}; the "
                            f"run stops (a step with a non-finite loss, gradient or update is "
                            f"not applied) and {kept}; lower optim.lr or check the data")


def _train_stream(s: Setting, source, start: int, seed_offset: int = 0):
    """This process's training batches from step `start` (another stream with an offset:
    the batches that score Taylor importance)."""
    pi, pc = jax.process_index(), jax.process_count()
    return train_batches(source, s.config.data, s.global_batch, s.config.seed + seed_offset, start,
                         s.steps_per_epoch, num_shards=s.config.data.num_shards or pc,
                         process_index=pi, process_count=pc)


class Evaluator:
    """Raw (and EMA) top-1/top-5/loss of the state on the eval split, every `every` steps."""

    def __init__(self, setting: Setting, source):
        cfg, pc, ld = setting.config, jax.process_count(), jax.local_device_count()
        # per-process batch: a multiple of the local devices (the last batch is padded)
        local = -(-cfg.data.eval_batch_size // (pc * ld)) * ld
        self.data = EvalBatches(source, cfg.data.eval_split, local,
                                image_size=cfg.data.eval_size or setting.image_size,
                                resize=cfg.data.eval_resize or None,
                                process_index=jax.process_index(), process_count=pc,
                                cache=cfg.data.cache == "decoded")
        self.mesh, self.ema = setting.mesh, cfg.ema.enabled
        self.every = max(1, int(round(cfg.train.eval_every_epochs * setting.steps_per_epoch)))

    def __call__(self, state, run: Run) -> dict:
        out = {}
        masks = state.masks if state.masks and run.net.masks_in_apply else None
        for prefix, ema in [("", False)] + ([("ema_", True)] if self.ema else []):
            r = evaluate(run.model, state.variables(ema), self.data, progress=False,
                         mesh=self.mesh, masks=masks)
            out.update({f"{prefix}eval_top1": r["top1"], f"{prefix}eval_top5": r["top5"],
                        f"{prefix}eval_loss": r["loss"]})
        return out


def assemble(cfg: Settings, workdir: str, model, plan: Plan | ExampleNet,
             init_variables=None) -> Parts:
    """Builds every part of the run and restores its newest readable checkpoint (`cfg`: the
    typed settings; a ConfigDict is resolved here, once)."""
    cfg = as_settings(cfg)
    sharding.initialize_distributed()
    main_process = jax.process_index() == 0
    source = get_source(cfg.data.name, data_dir=cfg.data.data_dir)
    net = network(plan, model, cfg.data.image_size)
    s = make_setting(cfg, net, source, sharding.make_mesh(cfg.train.mesh_model))
    pruner = PruningController(s, net, workdir, lambda step: _train_stream(s, source, step, 1),
                               main_process)
    keeper = CheckpointKeeper(workdir, cfg.train.keep_checkpoints, cfg.train.keep_best,
                              len(pruner.events), cfg.train.async_checkpoints)
    state, start, ck_meta = keeper.restore(lambda meta: _restore_target(s, net, meta, pruner))
    now = net  # the network the run goes on with (the smaller one once materialised)
    if state is None:
        _, tx = s.model_and_tx(net)
        state, start = s.init_state(net, tx, init_variables, pruner.initial_masks(net)), 0
    else:
        pruner.resume(net, ck_meta, start)
        if ck_meta.get("materialized"):
            now = net.at(network_from_meta(ck_meta))
        print(f"resumed from {keeper.mngr.directory} step {start}", flush=True)
        _warn_if_convolution_changed(ck_meta, model, start)
    if not pruner.materialized:  # a pruning regulariser trains the dense network only
        s = regularized(s, now, state, lambda st: _train_stream(s, source, st, 1), start)
    run = s.run_for(now)  # the one Run of this network (a materialisation makes the next)
    writer = MetricWriter(workdir, main_process, resume_step=start, logging=cfg.logging,
                          config=cfg.to_dict())
    reporter = Reporter(writer, s.total, s.global_batch, s.steps_per_epoch, start, main_process)
    if main_process:
        print(_header(s, run.net, cfg), flush=True)
    return Parts(s, run, state, start, source, keeper, pruner, reporter, Evaluator(s, source))


def _restore_target(s: Setting, net: Network, meta: dict, pruner: PruningController):
    if meta.get("materialized"):  # a pruned run that already continues on the small net
        small = net.at(network_from_meta(meta))
        return s.abstract_state(small, s.model_and_tx(small)[1], {})
    return s.abstract_state(net, s.model_and_tx(net)[1], pruner.initial_masks(net))


def _warn_if_convolution_changed(ck_meta: dict, model, start: int) -> None:
    was, now = ck_meta.get("convolution"), convolution_of(model)
    if was and was != now:
        print(f"warning: this run computed its convolutions with {was} until step {start} "
              f"and goes on with {now} (THINJAX_CONV, the device count or the dtype "
              "changed); the results agree to float rounding, not bit for bit",
              file=sys.stderr, flush=True)


def _header(s: Setting, net: Network, cfg: Settings) -> str:
    cost = net.cost(s.image_size)
    return (f"{net.describe()}\n{cost.params:,} params, {cost.macs / 1e6:.2f} M MACs at "
            f"{s.image_size}px; {s.n_train} train images, batch {s.global_batch}, "
            f"{s.steps_per_epoch} steps/epoch, {s.total} steps ({s.epochs:.1f} epochs); "
            f"peak lr {optim.scaled_lr(cfg.optim, s.global_batch):.4g}; EMA decay "
            f"{s.ema_decay:.6g} every {cfg.ema.every} steps; {jax.device_count()} devices "
            f"({jax.default_backend()}), {jax.process_count()} process(es)")


def convolution_of(model) -> str:
    """'xla' or 'onednn': the convolution `model`'s layers use here (thinjax.ops.conv)."""
    return conv.resolve(getattr(model, "conv_impl", "auto"),
                        jnp.dtype(getattr(model, "dtype", None) or jnp.float32))


def _results(p: Parts, workdir: str, final: dict) -> dict:
    s, pruner = p.setting, p.pruner
    out_net = pruner.out_network(p.state, p.run.net)
    out = {"mode": "train", "workdir": workdir, "steps": s.total, "epochs": s.epochs,
           **out_net.cost(s.image_size).to_dict(), **final, "best": p.keeper.best,
           "train_images_per_s": (s.total - p.start) * s.global_batch / max(p.reporter.wall(),
                                                                           1e-9),
           "wall_s": p.reporter.wall(), **out_net.meta(),
           "convolution": convolution_of(p.run.model), "malloc": malloc_status()}
    if pruner.events:
        out.update(prune_events=pruner.log, dense_params=pruner.dense_cost.params,
                   dense_macs=pruner.dense_cost.macs)
    return out
