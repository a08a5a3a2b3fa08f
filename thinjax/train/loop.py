"""The training loop: data -> jit steps on a mesh -> metrics, evaluation, checkpoints.

A run lives in its workdir:
  config.json          the resolved config
  plan.json            the channel plan
  checkpoints/<step>/  orbax: `state` (the whole TrainState) and `meta` (plan, config)
  best/                model checkpoint (EMA weights if enabled) with the best eval top-1
  metrics.jsonl        one JSON object per log line / evaluation
  tensorboard/         the same scalars as TensorBoard events
  results.json         written when the run has finished
Rerunning with the same workdir resumes from the newest complete checkpoint; the data
stream is a pure function of (seed, step), so a resumed run ends with the weights of an
uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from thinjax import checkpoint as ckpt
from thinjax import fs, optim
from thinjax.cost import count
from thinjax.data import get_source
from thinjax.data.pipeline import EvalBatches, train_batches
from thinjax.evaluate import evaluate
from thinjax.plan import Plan
from thinjax.prune import groups as prune_groups, schedule as prune_schedule
from thinjax.prune.materialize import slice_opt_state, slice_tree, small_plan
from thinjax.prune.pruner import compute_masks, target_from_config
from thinjax.train import sharding, state as state_lib
from thinjax.train.step import StepConfig, apply_masks, train_step


class NonFiniteLoss(RuntimeError):
    pass


class MetricWriter:
    """JSON lines plus TensorBoard scalars (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool):
        self.enabled = enabled
        if enabled:
            import tensorflow as tf
            self._path = os.path.join(workdir, "metrics.jsonl")
            # object stores (gs://) cannot append: keep the lines and rewrite the file
            self._lines = None
            if fs.is_remote(workdir):
                self._lines = fs.read_text(self._path) if fs.exists(self._path) else ""
            else:
                self._f = open(self._path, "a")  # noqa: SIM115 (closed in close())
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        import tensorflow as tf
        line = json.dumps({"step": step, **scalars}) + "\n"
        if self._lines is None:
            self._f.write(line)
            self._f.flush()
        else:
            self._lines += line
            fs.write_text(self._path, self._lines)
        with self._tb.as_default():
            for k, v in scalars.items():
                if isinstance(v, (int, float)):
                    tf.summary.scalar(k, v, step=step)
        self._tb.flush()

    def close(self):
        if self.enabled:
            if self._lines is None:
                self._f.close()
            self._tb.close()


def _restore_latest(mngr: ocp.CheckpointManager, abstract_for):
    """(state, step, meta) from the newest checkpoint that restores; corrupt ones are
    reported. `abstract_for(meta)` gives the restore target for that checkpoint's plan (a
    pruned run continues on its materialised plan)."""
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            restored = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_for(meta))))
            return restored.state, step, meta
        except Exception as e:  # partial or corrupt: say so, fall back to the previous one
            print(f"warning: checkpoint step {step} in {mngr.directory} cannot be restored "
                  f"({type(e).__name__}: {str(e)[:200]}); trying the previous one",
                  file=sys.stderr)
    return None, None, None


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _raise_if_non_finite(window: list[dict], step: int, mngr) -> None:
    bad = [i for i, m in enumerate(window) if not bool(m["finite"])]
    if bad:
        last = mngr.latest_step()
        kept = (f"the last good checkpoint (step {last}) is kept in {mngr.directory}"
                if last is not None else "no checkpoint was written yet")
        raise NonFiniteLoss(f"non-finite loss at step {step - len(window) + bad[0] + 1}; the "
                            f"run stops and {kept}; lower optim.lr or check the data")


def _window_scalars(window: list[dict], global_batch: int, seconds: float) -> dict:
    mean = lambda k: float(np.mean([m[k] for m in window]))  # noqa: E731
    return {"train_loss": mean("loss"), "train_accuracy": 100 * mean("accuracy"),
            "grad_norm": mean("grad_norm"), "lr": float(window[-1]["lr"]),
            "images_per_s": len(window) * global_batch / max(seconds, 1e-9)}


def _progress_line(step: int, total: int, s: dict, eta_s: float) -> str:
    ev = "".join(f"  {k} {v:.2f}" for k, v in s.items() if k.endswith("top1"))
    return (f"step {step}/{total} ep {s['epoch']:.2f}  loss {s['train_loss']:.4f}  acc "
            f"{s['train_accuracy']:.1f}%  lr {s['lr']:.4g}  {s['images_per_s']:.0f} img/s  "
            f"ETA {_fmt_time(eta_s)}{ev}")


def train_and_evaluate(cfg, workdir: str, model, plan, init_variables=None) -> dict:
    sharding.initialize_distributed()
    pi, pc = jax.process_index(), jax.process_count()
    mesh = sharding.make_mesh(cfg.train.mesh_model)
    main_process = pi == 0
    source = get_source(cfg.data.name, data_dir=cfg.data.data_dir)
    if source.num_classes != plan.num_classes:
        raise ValueError(f"the model has {plan.num_classes} classes but data {cfg.data.name!r} "
                         f"has {source.num_classes}; set config.model.num_classes")
    gb = cfg.train.batch_size
    if gb % (mesh.shape["data"]) or gb % cfg.train.grad_accum:
        raise ValueError(f"train.batch_size {gb} must divide evenly over {mesh.shape['data']} "
                         f"data-parallel devices and {cfg.train.grad_accum} micro-batches")
    n_train = source.num_examples(cfg.data.train_split)
    steps_per_epoch = n_train // gb
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size {gb} exceeds the {n_train} training examples")
    total = cfg.train.total_steps or int(round(cfg.train.epochs * steps_per_epoch))
    epochs = total / steps_per_epoch
    schedule = optim.learning_rate_schedule(cfg.optim, gb, steps_per_epoch, total)
    size = cfg.data.image_size

    # -- state on the mesh ----------------------------------------------------------------
    rng = jax.random.PRNGKey(cfg.seed)
    repl = sharding.replicated(mesh)
    events = prune_schedule.events(cfg.prune, steps_per_epoch, total)
    ema_d = optim.ema_decay(cfg.ema, gb, epochs)
    step_cfg = StepConfig(
        num_classes=plan.num_classes, label_smoothing=cfg.train.label_smoothing,
        mixup_alpha=cfg.train.mixup_alpha, cutmix_alpha=cfg.train.cutmix_alpha,
        loss=cfg.train.loss, grad_accum=cfg.train.grad_accum, ema=cfg.ema.enabled,
        ema_decay=ema_d, ema_every=cfg.ema.every,
        ema_copy_until=int(cfg.optim.warmup_epochs * steps_per_epoch) if cfg.ema.warmup_copy
        else 0, bn_l1=cfg.prune.bn_l1)

    def setup(p: Plan):
        """(model, optimizer, jitted step) for plan `p` (it changes when a pruned network
        is materialised)."""
        m = model.clone(plan=p)
        shapes = jax.eval_shape(lambda: m.init(rng, np.zeros((1, size, size, 3), np.float32)))
        t = optim.make_optimizer(cfg.optim, schedule, shapes["params"])
        f = jax.jit(functools.partial(train_step, model=m, tx=t, schedule=schedule,
                                      cfg=step_cfg),
                    in_shardings=(repl, sharding.batch_sharding(mesh)),
                    out_shardings=(repl, repl), donate_argnums=0)
        return m, t, f

    masks0 = prune_groups.init_masks(plan) if events else {}
    model, tx, p_step = setup(plan)
    if init_variables is None:
        init = jax.jit(functools.partial(state_lib.create, model, tx,
                                         input_shape=(1, size, size, plan.in_channels),
                                         masks=masks0), out_shardings=repl)
        state = init(rng)
    else:
        state = jax.jit(functools.partial(state_lib.from_variables, tx=tx, masks=masks0),
                        out_shardings=repl)(init_variables, rng=rng)

    mngr = ckpt.manager(
        os.path.join(workdir, "checkpoints"), max_to_keep=cfg.train.keep_checkpoints,
        enable_async_checkpointing=cfg.train.async_checkpoints)
    to_abstract = lambda st: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), st)

    def abstract_for(meta: dict):
        if meta.get("materialized"):  # a pruned run that already continues on the small net
            p = Plan.from_dict(meta["plan"])
            m, t, _ = setup(p)
            return to_abstract(jax.eval_shape(functools.partial(
                state_lib.create, m, t, input_shape=(1, size, size, p.in_channels)), rng))
        return to_abstract(state)

    restored, start, ck_meta = _restore_latest(mngr, abstract_for)
    meta = {"plan": plan.to_dict(), "config": json.loads(cfg.to_json_best_effort())}
    if restored is not None:
        state = restored
        if ck_meta.get("materialized"):
            plan = Plan.from_dict(ck_meta["plan"])
            model, tx, p_step = setup(plan)
            meta.update(plan=plan.to_dict(), materialized=True,
                        dense_plan=ck_meta.get("dense_plan"))
        print(f"resumed from {mngr.directory} step {start}")
    start = int(jax.device_get(state.step))
    prune_log: list[dict] = list(ck_meta.get("prune_events", [])) if ck_meta else []
    dense_cost = count(Plan.from_dict(meta.get("dense_plan") or meta["plan"]), size)

    writer = MetricWriter(workdir, main_process)
    cost = count(plan, size)
    if main_process:
        print(f"{plan.describe()}\n{cost.params:,} params, {cost.macs / 1e6:.2f} M MACs at "
              f"{size}px; {n_train} train images, batch {gb}, {steps_per_epoch} steps/epoch, "
              f"{total} steps ({epochs:.1f} epochs); peak lr "
              f"{optim.scaled_lr(cfg.optim, gb):.4g}; EMA decay {ema_d:.6g} every "
              f"{cfg.ema.every} steps; {jax.device_count()} devices ({jax.default_backend()}), "
              f"{pc} process(es)")

    # per-process eval batch: a multiple of the local devices (the last batch is padded)
    ld = jax.local_device_count()
    eval_local_batch = -(-cfg.data.eval_batch_size // (pc * ld)) * ld

    eval_data = EvalBatches(source, cfg.data.eval_split, eval_local_batch,
                            image_size=cfg.data.eval_size or size,
                            resize=cfg.data.eval_resize or None, process_index=pi,
                            process_count=pc, cache=cfg.data.cache == "decoded")

    def run_eval(st) -> dict:
        out = {}
        kinds = [("", False)] + ([("ema_", True)] if cfg.ema.enabled else [])
        for prefix, ema in kinds:
            r = evaluate(model, st.variables(ema), eval_data, progress=False, mesh=mesh,
                         masks=st.masks or None)
            out.update({f"{prefix}eval_top1": r["top1"], f"{prefix}eval_top5": r["top5"],
                        f"{prefix}eval_loss": r["loss"]})
        return out

    # -- preemption ---------------------------------------------------------------------
    stop = {"signal": None}

    def on_term(signum, frame):
        stop["signal"] = signum

    # One process: a flag set by the handler. Several: JAX's preemption sync manager (set up
    # by jax.distributed.initialize, it catches SIGTERM itself) names one step at which every
    # process stops, so that all of them save the same checkpoint.
    synced = pc > 1 and jax.distributed.is_initialized()
    old_handler = None if synced else signal.signal(signal.SIGTERM, on_term)

    best_file = os.path.join(workdir, "best_metric.json")
    best = json.loads(fs.read_text(best_file)) if fs.exists(best_file) else {"top1": -1.0}

    def keep_best(st, step, ev):
        """Exports the weights that give the best eval top-1 so far to workdir/best."""
        top1 = ev["ema_eval_top1" if cfg.ema.enabled else "eval_top1"]
        if not cfg.train.keep_best or top1 <= best["top1"] or not main_process:
            return
        best.update(top1=top1, step=step)
        p, v = plan, jax.device_get(st.variables(cfg.ema.enabled))  # replicated: on host
        if st.masks:  # export the materialised network, not the masked wide one
            host = jax.device_get(st.masks)
            p = small_plan(plan, host)
            v = {k: slice_tree(plan, host, jax.device_get(x), p) for k, x in v.items()}
        ckpt.export_model(os.path.join(workdir, "best"), p, v,
                          {**meta, "plan": p.to_dict(), "step": step, "top1": top1},
                          overwrite=True)
        fs.write_text(best_file, json.dumps(best))

    eval_every = max(1, int(round(cfg.train.eval_every_epochs * steps_per_epoch)))
    batches = train_batches(source, cfg.data, gb, cfg.seed, start, steps_per_epoch,
                            num_shards=cfg.data.num_shards or pc,
                            process_index=pi, process_count=pc)
    window, t_window, last_eval = [], time.perf_counter(), {}
    t_start, n_start = time.perf_counter(), start
    step = start
    target = target_from_config(cfg.prune) if events else None
    pending_events = [(i, e, pr) for i, (e, pr) in enumerate(events) if e >= start]
    if start > 0 and pending_events and pending_events[0][1] == start and prune_log and \
            prune_log[-1]["step"] == start:  # that event is in the checkpoint already
        pending_events.pop(0)

    def prune_event(st, k: int, progress: float):
        """Scores the current weights, shrinks the masks towards this event's target."""
        host = jax.device_get({"params": st.params, "batch_stats": st.batch_stats})
        masks = jax.device_get(st.masks)
        tgt = prune_schedule.step_target(target, progress, dense_cost.params, dense_cost.macs)
        taylor = None
        if cfg.prune.criterion == "taylor":
            it = train_batches(source, cfg.data, gb, cfg.seed + 1, step, steps_per_epoch,
                               num_shards=cfg.data.num_shards or pc, process_index=pi,
                               process_count=pc)
            taylor = (sharding.global_batch(next(it), mesh) for _ in range(10 ** 9))
        alloc = compute_masks(plan, host, cfg.prune, tgt, masks=masks, model=model,
                              batches=taylor, input_size=size, seed=cfg.seed + step)
        st = jax.jit(functools.partial(apply_masks, plan=plan), out_shardings=repl)(
            st.replace(masks=jax.tree.map(np.asarray, alloc.masks)))
        rec = {"step": step, "event": k + 1, "of": len(events), "params": alloc.params,
               "macs": alloc.macs, "target": list(alloc.target),
               "rel_error": alloc.rel_error, "plan": alloc.plan.describe()}
        prune_log.append(rec)
        meta["prune_events"] = prune_log
        writer.write(step, {"prune_params": alloc.params, "prune_macs": alloc.macs})
        if main_process:
            print(f"prune event {k + 1}/{len(events)} at step {step} ({cfg.prune.criterion}, "
                  f"{cfg.prune.allocation}, target {tgt.kind}={tgt.value:,.4g}): "
                  f"{alloc.params:,} params ({100 * alloc.params / dense_cost.params:.1f}%), "
                  f"{alloc.macs / 1e6:.2f} M MACs ({100 * alloc.macs / dense_cost.macs:.1f}%)"
                  f"\n  {alloc.plan.describe()}", flush=True)
        return st

    def materialize(st):
        """Continues on the smaller dense network: params, BN stats, EMA, optimizer state."""
        nonlocal plan, model, tx, p_step
        host = jax.device_get(st)
        new = small_plan(plan, host.masks)
        sl = lambda t: slice_tree(plan, host.masks, t, new)  # noqa: E731
        m, t, f = setup(new)
        params = sl(host.params)
        opt_state = slice_opt_state(plan, host.masks, host.opt_state, t.init(params), new)
        st = state_lib.TrainState(
            step=host.step, params=params, batch_stats=sl(host.batch_stats),
            opt_state=opt_state, ema_params=sl(host.ema_params),
            ema_batch_stats=sl(host.ema_batch_stats), rng=host.rng, masks={})
        meta.update(dense_plan=meta.get("dense_plan") or plan.to_dict(), plan=new.to_dict(),
                    materialized=True)
        plan, model, tx, p_step = new, m, t, f
        if main_process:
            new.save(os.path.join(workdir, "pruned_plan.json"))  # local or gs://
            print(f"materialised: continuing on {new.describe()}", flush=True)
        return jax.device_put(st, repl)

    try:
        while step < total:
            while pending_events and pending_events[0][1] == step:
                k, _, progress = pending_events.pop(0)
                state = prune_event(state, k, progress)
                best.update(top1=-1.0)  # the best network is chosen after pruning
                if not pending_events and cfg.prune.materialize:
                    state = materialize(state)
            local = next(batches)
            state, metrics = p_step(state, sharding.global_batch(local, mesh))
            step += 1
            if synced and multihost_utils.reached_preemption_sync_point(step):
                stop["signal"] = signal.SIGTERM
            window.append(metrics)
            boundary = step % cfg.train.log_every == 0 or step == total
            do_eval = step % eval_every == 0 or step == total
            do_ckpt = step % cfg.train.checkpoint_every == 0 or step == total or stop["signal"]
            if boundary or do_eval or do_ckpt:
                got = jax.device_get(window)
                _raise_if_non_finite(got, step, mngr)
                if boundary or do_eval:
                    scalars = _window_scalars(got, gb, time.perf_counter() - t_window)
                    scalars["epoch"] = step / steps_per_epoch
                    window = []
                    if do_eval:
                        last_eval = run_eval(state)
                        scalars.update(last_eval)
                        keep_best(state, step, last_eval)
                    t_window = time.perf_counter()  # evaluation time is not training rate
                    writer.write(step, scalars)
                    if main_process:
                        rate = (step - n_start) / max(time.perf_counter() - t_start, 1e-9)
                        print(_progress_line(step, total, scalars, (total - step) / rate),
                              flush=True)
                if do_ckpt or stop["signal"]:  # the signal may come mid-step
                    ckpt.save(mngr, step, state, {**meta, "step": step})
                if stop["signal"]:
                    mngr.wait_until_finished()
                    print(f"signal {stop['signal']}: saved step {step} in {mngr.directory}; "
                          "rerun the same command to resume", flush=True)
                    raise SystemExit(143)
        mngr.wait_until_finished()
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        writer.close()
        mngr.close()
    final = last_eval or run_eval(state)
    wall = time.perf_counter() - t_start
    out_plan = small_plan(plan, jax.device_get(state.masks)) if state.masks else plan
    out = {"mode": "train", "workdir": workdir, "steps": total, "epochs": epochs,
           **count(out_plan, size).to_dict(), **final, "best": best,
           "train_images_per_s": (total - n_start) * gb / max(wall, 1e-9),
           "wall_s": wall, "plan": out_plan.to_dict()}
    if events:
        out.update(prune_events=prune_log, dense_params=dense_cost.params,
                   dense_macs=dense_cost.macs)
    return out
