"""Running one protocol run: a training (thinjax.main), a one-shot pruning (the prune
command) or an evaluation, each a job (`thinjax.jobs`: the command in its own process,
logged in the run's folder), and the row it leaves.

Every training run reads only the training part of the split (``train_split``) and is
evaluated on the validation part (``val_split``) at its end; the test split is read by
`evaluate_tests` alone, which the runner calls for rows whose LR is final.

Row fields: run, arm, target, target_macs, criterion, seed, E, T, lr, epochs_total
(the arm's epochs from random init), images (seen in training over every phase),
train_flops (3 x MACs x images per phase; gradual's masked steps at dense MACs; BN
recalibration 1 x MACs x images), params, macs, val_top1, top1, top5 (test; None until
final), selection (a grid run), wall_s, commit, key.

The network is a ThinResNet (``--config.model.name``, ``--config.model.width``) or, with
``protocol.example``, an example network (``--config.model.example``,
``--config.model.width_mult``): pruned on its traced groups by the same prune command, its
MACs counted on its trace at the recipe's ``data.image_size`` (`macs_of_width`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

from thinjax import jobs
from thinjax.cost import Cost, count
from thinjax.errors import NonFiniteLoss, ThinjaxError
from thinjax.plan import Plan, plan_from_width
from thinjax.protocol import plan as planning
from thinjax.protocol.spec import FROM_SCRATCH, Protocol, RunSpec, recipe_config, width_text
from thinjax.prune.spec import PruneSpec
from thinjax.trace.example import example_net, network_from_meta
from thinjax.trace.networks import network


class RunFailed(ThinjaxError, RuntimeError):
    """A protocol run whose subprocess or pruning failed (its folder keeps the log)."""


class Diverged(RunFailed):
    """A training run stopped by a non-finite loss or weights (`NonFiniteLoss`): a result
    of its LR, recorded as a row at chance accuracy, not a failure."""


@dataclasses.dataclass(frozen=True)
class Context:
    """Where and on what the protocol runs."""
    workdir: str
    data: str
    data_dir: str | None
    eval_batch_size: int
    commit: str

    def run_dir(self, spec: RunSpec) -> str:
        return os.path.join(self.workdir, "runs", spec.id)


def macs_of_width(p: Protocol, width: int | float) -> int:
    """The MACs of the uniform network at `width`: a ThinResNet's plan, or the example at
    that width multiplier (traced at the recipe's image size, with its classes)."""
    if not p.example:
        return count(plan_from_width(p.arch, width)).macs
    c = recipe_config(p.recipe)
    return _example_macs(p.example, int(c.data.image_size), float(width),
                         int(c.model.num_classes))


@functools.lru_cache(maxsize=64)
def _example_macs(name: str, size: int, width: float, num_classes: int) -> int:
    return network(example_net(name, size, width=width, num_classes=num_classes)).cost().macs


def width_flags(p: Protocol, width: int | float) -> list[str]:
    """The thinjax.main flag(s) that build the uniform network at `width`."""
    if p.example:
        return [f"--config.model.width_mult={float(width)!r}"]
    return [f"--config.model.width={width}"]


def _network_flag(p: Protocol) -> str:
    return f"--config.model.example={p.example}" if p.example else f"--config.model.name={p.arch}"


def network_cost(plan_file: str) -> Cost:
    """Params and MACs of the network a plan.json describes: a ThinResNet's plan, or an
    example network's description (the prune command's, or a training run's)."""
    with open(plan_file) as f:
        d = json.load(f)
    if "example" in d:
        return network(network_from_meta(d, where=plan_file)).cost()
    return count(Plan.load(plan_file))


def train(ctx: Context, p: Protocol, spec: RunSpec, epochs: float, flags: list[str]) -> dict:
    """thinjax.main with the recipe, seed, LR and splits of `spec` (a job); its result."""
    wd = os.path.join(ctx.run_dir(spec), "train")
    lr = p.dense_lr if spec.arm == "dense" else spec.lr
    cmd = [f"--config={p.recipe}", f"--workdir={wd}",
           f"--config.data.name={ctx.data}", f"--config.data.train_split={p.train_split}",
           f"--config.data.eval_split={p.val_split}", _network_flag(p),
           f"--config.seed={spec.seed}", f"--config.train.epochs={epochs:g}",
           f"--config.train.eval_every_epochs={epochs:g}",
           f"--config.train.batch_size={p.batch_size}",
           f"--config.optim.lr={lr:g}", f"--config.optim.lr_batch={p.batch_size}",
           f"--config.optim.warmup_epochs={p.warmup_fraction * epochs:.6g}",
           "--config.ema.enabled=False"]
    if ctx.data_dir:
        cmd.append(f"--config.data.data_dir={ctx.data_dir}")
    try:
        return jobs.run(jobs.Job("train", (*cmd, *p.recipe_overrides, *flags),
                                 os.path.join(ctx.run_dir(spec), "train.log")))
    except jobs.JobFailed as e:
        if e.returncode == 2 and any(m in e.tail for m in NonFiniteLoss.PHRASES):
            raise Diverged(f"{spec.id}: diverged (non-finite loss) at lr {lr:g}") from None
        raise RunFailed(f"{spec.id}: {e}") from None


def dense_dir(ctx: Context, seed: int) -> str:
    return os.path.join(ctx.run_dir(RunSpec("dense", seed)), "train")


def oneshot_dir(ctx: Context, spec: RunSpec) -> str:
    src = RunSpec("oneshot", spec.seed, spec.target, spec.criterion)
    d = os.path.join(ctx.run_dir(src), "pruned")
    if not os.path.isdir(d):
        raise RunFailed(f"{spec.id} needs the one-shot pruning {src.id}, which has not "
                        "finished; rerun the study")
    return d


def _flags_and_epochs(ctx, p, spec) -> tuple[list[str], float]:
    """(--config flags, epochs) of a trained arm."""
    a, T = spec.arm, p.dense_epochs
    if a == "dense":
        return width_flags(p, p.base_width), T
    if a == "thin":
        return width_flags(p, spec.target), T + spec.E
    if a == "dense+ft":
        return [*width_flags(p, p.base_width),
                f"--config.init_from={dense_dir(ctx, spec.seed)}"], spec.E
    if a == "pruned+ft":
        d = oneshot_dir(ctx, spec)
        return [f"--config.model.plan_file={d}/plan.json", f"--config.init_from={d}/model"], spec.E
    if a in ("scratch-E", "scratch-B"):
        d = oneshot_dir(ctx, spec)
        ep = T + spec.E
        if a == "scratch-B":
            plan_macs = network_cost(f"{d}/plan.json").macs
            ep = planning.scratch_b_epochs(p, macs_of_width(p, p.base_width), plan_macs)
        return [f"--config.model.plan_file={d}/plan.json"], ep
    if a == "gradual":
        E = spec.E
        gradual = prune_spec(p, spec).replace(schedule="gradual", start_epoch=0.0,
                                              end_epoch=p.gradual_end * E,
                                              every_epochs=p.gradual_every * E)
        return [*width_flags(p, p.base_width),
                f"--config.init_from={dense_dir(ctx, spec.seed)}"] + gradual.to_flags(), E
    raise ValueError(f"not a trained arm: {a}")


def prune_spec(p: Protocol, spec: RunSpec) -> PruneSpec:
    """The one-shot pruning of `spec` (its criterion, the protocol's allocation and
    round_to) to the MACs of its target width."""
    return PruneSpec(criterion=spec.criterion, allocation=p.allocation, round_to=p.round_to,
                     target_kind="macs", target=float(macs_of_width(p, spec.target)))


def _base_row(ctx: Context, p: Protocol, spec: RunSpec) -> dict:
    return {"run": spec.id, "arm": spec.arm,
            "target": f"w={width_text(spec.target)}" if spec.target
            else f"w={width_text(p.base_width)} (dense)",
            "target_macs": macs_of_width(p, spec.target or p.base_width),
            "criterion": spec.criterion, "seed": spec.seed, "E": spec.E, "lr": spec.lr,
            "T": 0.0 if spec.arm in FROM_SCRATCH + ("dense",) else p.dense_epochs,
            "selection": planning.is_selection(p, spec), "commit": ctx.commit,
            "key": spec.key(p, ctx.data), "top1": None, "top5": None}


def _dense_row(rows: dict, spec: RunSpec) -> dict:
    d = rows.get(RunSpec("dense", spec.seed).id)
    if d is None:
        raise RunFailed(f"{spec.id} needs the dense run of seed {spec.seed}, which has not "
                        "finished; rerun the study")
    return d


def _num_classes(ctx: Context, seed: int) -> int:
    with open(os.path.join(dense_dir(ctx, seed), "config.json")) as f:
        return int(json.load(f)["model"]["num_classes"])


def _diverged_result(ctx: Context, p: Protocol, spec: RunSpec, rows: dict,
                     epochs: float) -> dict:
    """What a diverged run stands for: its planned steps, the network it trained (plan.json
    of its workdir) and chance accuracy."""
    d = _dense_row(rows, spec)
    steps = round(d["images"] / d["epochs_here"] * epochs / p.batch_size)
    c = network_cost(os.path.join(ctx.run_dir(spec), "train", "plan.json"))
    return {"steps": steps, "epochs": epochs, "macs": c.macs, "params": c.params,
            "eval_top1": 100.0 / _num_classes(ctx, spec.seed), "diverged": True}


def execute_trained(ctx: Context, p: Protocol, spec: RunSpec, rows: dict) -> dict:
    """A trained arm (dense included): train, then the row with its budget and cost. A run
    other than dense that diverges is a row at chance accuracy (``diverged``: True), so
    that an LR grid still decides."""
    flags, epochs = _flags_and_epochs(ctx, p, spec)
    try:
        res = train(ctx, p, spec, epochs, flags)
    except Diverged:
        if spec.arm == "dense":
            raise
        res = _diverged_result(ctx, p, spec, rows, epochs)
    images = int(res["steps"]) * p.batch_size
    macs, M = int(res["macs"]), macs_of_width(p, p.base_width)
    row = {**_base_row(ctx, p, spec), "epochs_here": float(res["epochs"]),
           "params": int(res["params"]), "macs": macs, "val_top1": float(res["eval_top1"]),
           "wall_s": float(res.get("wall_s", 0.0))}
    if res.get("diverged"):
        row.update(diverged=True, chance_top5=min(100.0, 5 * res["eval_top1"]))
    here = 3 * macs * images
    if spec.arm == "gradual":  # masked steps until the last event compute the dense network
        before = int(images * p.gradual_end)
        here = 3 * (M * before + macs * (images - before))
    if spec.arm in ("dense+ft", "gradual", "pruned+ft"):
        d = _dense_row(rows, spec)
        prior_images, prior_flops = d["images"], d["train_flops"]
        if spec.arm == "pruned+ft":
            o = rows[RunSpec("oneshot", spec.seed, spec.target, spec.criterion).id]
            prior_flops = o["train_flops"]
        row.update(images=prior_images + images, train_flops=prior_flops + here,
                   epochs_total=d["epochs_here"] + float(res["epochs"]))
    else:
        row.update(images=images, train_flops=here, epochs_total=float(res["epochs"]))
    return row


def execute_oneshot(ctx: Context, p: Protocol, spec: RunSpec, rows: dict) -> dict:
    """The seed's dense network (raw weights) pruned one-shot to the target's MACs, BN
    recalibrated on `recalibrate_bn` training batches, evaluated on the validation split."""
    d = _dense_row(rows, spec)
    out = os.path.join(ctx.run_dir(spec), "pruned")
    flags = [f"--checkpoint={dense_dir(ctx, spec.seed)}", f"--output={out}",
             f"--data={ctx.data}", f"--split={p.val_split}", f"--train_split={p.train_split}",
             f"--batch_size={ctx.eval_batch_size}", "--noema", "--overwrite",
             f"--recalibrate_bn={p.recalibrate_bn}", "--noevaluate_before",
             f"--seed={spec.seed}", *prune_spec(p, spec).to_command_flags()]
    summ = _job(ctx, spec, "prune", flags)
    a = summ["after"]
    recal = p.recalibrate_bn * 128
    return {**_base_row(ctx, p, spec), "epochs_here": 0.0, "params": int(a["params"]),
            "macs": int(a["macs"]), "val_top1": float(a["top1"]),
            "val_top1_no_recal": a.get("top1_before_recalibration"),
            "images": d["images"], "epochs_total": d["epochs_here"],
            "train_flops": d["train_flops"] + int(a["macs"]) * recal, "wall_s": 0.0}


def checkpoint_of(ctx: Context, spec: RunSpec) -> str:
    sub = "pruned" if spec.arm == "oneshot" else "train"
    return os.path.join(ctx.run_dir(spec), sub)


def evaluate_tests(ctx: Context, p: Protocol, specs: list[RunSpec]) -> list[tuple[float, float]]:
    """(top-1, top-5) of each run's final network (raw weights) on the test split: one
    evaluate job for them all (one start-up), logged in DIR/test.log."""
    flags = [f"--checkpoint={checkpoint_of(ctx, s)}" for s in specs] + [
        f"--data={ctx.data}", f"--split={p.test_split}", f"--batch_size={ctx.eval_batch_size}",
        "--noema"] + ([f"--data_dir={ctx.data_dir}"] if ctx.data_dir else [])
    try:
        r = jobs.run(jobs.Job("evaluate", tuple(flags), os.path.join(ctx.workdir, "test.log")))
    except jobs.JobFailed as e:
        raise RunFailed(f"test evaluation of {', '.join(s.id for s in specs)}: {e}") from None
    results = r["results"] if len(specs) > 1 else [r]
    return [(float(x["top1"]), float(x["top5"])) for x in results]


def _job(ctx: Context, spec: RunSpec, command: str, flags: list[str]) -> dict:
    """A prune or evaluate job of `spec` (thinjax.jobs), logged in its run folder."""
    if ctx.data_dir:
        flags = [*flags, f"--data_dir={ctx.data_dir}"]
    try:
        return jobs.run(jobs.Job(command, tuple(flags),
                                 os.path.join(ctx.run_dir(spec), f"{command}.log")))
    except jobs.JobFailed as e:
        raise RunFailed(f"{spec.id}: {e}") from None


def execute(ctx: Context, p: Protocol, spec: RunSpec, rows: dict) -> dict:
    if spec.arm == "oneshot":
        return execute_oneshot(ctx, p, spec, rows)
    return execute_trained(ctx, p, spec, rows)
