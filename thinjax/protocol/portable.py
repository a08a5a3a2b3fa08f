"""A compact copy of a protocol study's workdir that another machine continues from.

A study's workdir keeps, for every run, its training checkpoints (optimizer state, EMA,
every kept step), logs and TensorBoard files. What a later run or the test evaluation reads
is much less: each finished run's row (``row.json``), and the raw weights (parameters and
BN statistics) of the runs something still starts from or evaluates: the dense networks
(dense+ft and gradual start from them, one-shot prunings are cut from them), the one-shot
prunings (pruned+ft starts from them; scratch-E/B read their plans), and trained runs whose
test top-1 is still to be measured and may be (their arm's LR is the chosen one, or not yet
decided). `pack` writes just that, as a study workdir: ``--workdir=COPY`` continues the
study where the original stood (the rows' keys are unchanged, so nothing finished reruns;
a run that was in flight is run again).

Weights are copied exactly: a training checkpoint becomes a model checkpoint of the same
raw parameters and BN statistics (``train/model``, what ``--checkpoint`` and
``config.init_from`` read; a checkpoint holding pruning masks is copied whole), a one-shot
pruning's convert output is copied as it is. ``pack.json`` records what was kept, the CPU,
and, when it replaces an earlier pack, the packs before it and the rows new since: a study
carried from machine to machine through one pack knows where each row was made. A
trained run whose weights and files equal those of the pack being replaced keeps that
pack's files (orbax names them at random): a pack kept in git changes where the study did.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jax
import numpy as np

from thinjax import checkpoint, cpu, fs
from thinjax.errors import CheckpointError, OutputError
from thinjax.protocol import plan as planning
from thinjax.protocol.execute import Context, checkpoint_of
from thinjax.protocol.runner import load_rows
from thinjax.protocol.spec import Protocol, RunSpec

PACK_FILE = "pack.json"
# what later runs read beside the weights: a training run's config (its classes) and plan;
# a one-shot pruning's plan (its convert output's config.py, finetune.json and summary.json
# describe how it was made, with the machine's paths, and stay behind with its logs)
_TRAIN_FILES = ("config.json", "plan.json")
_PRUNED_LEFT = ("*.log", "config.py", "finetune.json", "summary.json")


def keeps_weights(p: Protocol, rows: dict, spec: RunSpec) -> bool:
    """Whether a later run or the test evaluation may still read `spec`'s network."""
    if spec.arm in ("dense", "oneshot"):
        return True
    row = rows[spec.id]
    if row.get("top1") is not None or row.get("diverged"):
        return False
    crit = spec.criterion if spec.arm != "dense+ft" else None
    chosen = planning.chosen_lr(p, rows, spec.arm, crit)
    return chosen is None or chosen == spec.lr


def _copy_trained(src: str, dst: str) -> None:
    """`src` (a training workdir) as a model checkpoint of its newest step's raw weights,
    with the files a later run reads beside it."""
    net, variables, meta = checkpoint.load_network(src)
    os.makedirs(dst)
    for name in _TRAIN_FILES:
        if os.path.exists(os.path.join(src, name)):
            with open(os.path.join(src, name)) as f:
                record = _portable(json.load(f), os.path.dirname(os.path.dirname(src)))
            with open(os.path.join(dst, name), "w") as f:
                json.dump(record, f, indent=1)
    if meta.get("masks") is not None:  # a gradual run's masks: the whole newest step
        step = os.path.join(meta["directory"], str(meta["step"]))
        shutil.copytree(step, os.path.join(dst, "checkpoints", str(meta["step"])))
        return
    checkpoint.export_model(os.path.join(dst, "model"), net, variables,
                            {"packed_from": f"{os.path.basename(os.path.dirname(src))} step "
                                            f"{meta['step']}"})


def _portable(value, runs: str):
    """A run's recorded config with this machine's paths taken out: a path inside the
    study's `runs` folder relative to the study, any other absolute path its last part."""
    if isinstance(value, dict):
        return {k: _portable(v, runs) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, runs) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        if value.startswith(runs + os.sep):
            return os.path.relpath(value, os.path.dirname(runs))
        return os.path.basename(value.rstrip(os.sep))
    return value


def _keep_unchanged(new: str, old: str) -> None:
    """Puts the previous pack's weights of a trained run (`old`) in place of those just
    written (`new`) when both hold the same arrays, bit for bit: orbax names its files at
    random, so a pack kept in git then changes only where the weights did."""
    try:
        va, vb = checkpoint.load_network(new)[1], checkpoint.load_network(old)[1]
    except (CheckpointError, OSError):
        return
    if jax.tree.structure(va) != jax.tree.structure(vb) or not all(
            x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(
                map(np.asarray, jax.tree.leaves(va)), map(np.asarray, jax.tree.leaves(vb)))):
        return
    for name in ("model", "checkpoints"):
        if os.path.isdir(os.path.join(new, name)) and os.path.isdir(os.path.join(old, name)):
            shutil.rmtree(os.path.join(new, name))
            shutil.copytree(os.path.join(old, name), os.path.join(new, name))


def _history(dst: str) -> tuple[list, dict]:
    """(the packs before, with the one at `dst`; that pack's rows as bytes, by run id)."""
    try:
        with open(os.path.join(dst, PACK_FILE)) as f:
            old = json.load(f)
        entry = {k: old[k] for k in ("date", "cpu", "rows", "new_rows")}
        runs = os.path.join(dst, "runs")
        return list(old.get("history", [])) + [entry], {
            rid: _read(os.path.join(runs, rid, "row.json")) for rid in os.listdir(runs)}
    except (OSError, ValueError, KeyError, TypeError):
        return [], {}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def pack(ctx: Context, p: Protocol, specs: dict[str, RunSpec], dst: str) -> dict:
    """Writes the compact copy of `ctx.workdir` to `dst` (atomically; an existing `dst` is
    replaced only if thinjax wrote it) and returns what pack.json records."""
    dst = fs.absolute(dst)
    fs.check_replaceable(dst, [ctx.workdir], overwrite=True, flag="--pack_to")
    rows, stale = load_rows(ctx, p, specs)
    if stale:
        raise OutputError(f"{len(stale)} row(s) of {ctx.workdir} were made with other settings "
                          f"than this config's (first: {stale[0]}); pack with the config and "
                          "--config.data.name the study ran with")
    kept, unknown = [], []
    history, before = _history(dst)
    with fs.writing(dst, "choose a --pack_to you can write to"), fs.atomic_dir(dst) as tmp:
        for rid in sorted(rows):
            spec = specs.get(rid)
            out = os.path.join(tmp, "runs", rid)
            os.makedirs(out)
            shutil.copy2(os.path.join(ctx.workdir, "runs", rid, "row.json"), out)
            if spec is None:  # a row the config no longer plans: kept, without weights
                unknown.append(rid)
                continue
            if not keeps_weights(p, rows, spec):
                continue
            src = checkpoint_of(ctx, spec)
            if spec.arm == "oneshot":
                shutil.copytree(src, os.path.join(out, "pruned"),
                                ignore=shutil.ignore_patterns(*_PRUNED_LEFT))
            else:
                _copy_trained(src, os.path.join(out, "train"))
                _keep_unchanged(os.path.join(out, "train"), os.path.join(dst, "runs", rid, "train"))
            kept.append(rid)
        info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "cpu": cpu.cpu_description(),
                "source": os.path.basename(ctx.workdir), "packed_by": ctx.commit, "rows": len(rows),
                "data": os.path.basename(ctx.data.rstrip("/")),  # the rows' keys read it
                # made or completed here since the pack this one replaces (the study
                # continued from it)
                "new_rows": [r for r in sorted(rows) if before.get(r) != _read(
                    os.path.join(tmp, "runs", r, "row.json"))],
                "weights_kept": kept, "not_planned": unknown,
                "bytes": _size(tmp), "history": history}
        with open(os.path.join(tmp, PACK_FILE), "w") as f:
            json.dump(info, f, indent=1)
    return info


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path)
               for n in names)


def pack_workdir(ctx: Context, p: Protocol, dst: str) -> dict:
    """`pack` of the runs the protocol plans from the workdir's rows."""
    if not os.path.isdir(os.path.join(ctx.workdir, "runs")):
        raise OutputError(f"--workdir={ctx.workdir} holds no study runs (no runs/ folder) to "
                          "pack; name the workdir of a study that has run")
    rows = load_rows(ctx, p, {})[0]
    return pack(ctx, p, {r.id: r for r in planning.all_runs(p, rows)}, dst)
