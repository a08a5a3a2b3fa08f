"""Training curves of one or several runs, from their ``metrics.jsonl`` (what
`thinjax.train.metrics.MetricWriter` writes: one JSON object per log line, each with its
``step``; ``train_loss``, ``lr``, ``epoch`` on every log line, ``eval_top1`` and, with EMA,
``ema_eval_top1`` where an evaluation ran).

    runs = {name: read_metrics(workdir) for name, workdir in zip(run_names(dirs), dirs)}
    plot_curves(runs, "docs/quick_cifar10")   # docs/quick_cifar10.png and .svg

The figure draws with matplotlib's object API (``Figure``, no pyplot): it changes no
backend or other process-wide setting.
"""

from __future__ import annotations

import json
import os

from thinjax import figures, fs
from thinjax.errors import ThinjaxError

X_KEYS = ("step", "epoch")


class MetricsError(ThinjaxError, ValueError):
    """A run whose metrics.jsonl is missing or holds no metric line."""


def metrics_path(run: str) -> str:
    """`run`'s metrics file: ``RUN/metrics.jsonl`` for a workdir, `run` itself for a file."""
    return run if run.endswith(".jsonl") else os.path.join(run, "metrics.jsonl")


def read_metrics(run: str) -> list[dict]:
    """The metric lines of a workdir (or of a metrics.jsonl file), in step order; a torn
    last line (a kill mid-write) is skipped."""
    path = metrics_path(run)
    if not fs.exists(path):
        raise MetricsError(f"{run}: no {os.path.basename(path)} there; give a training "
                           "workdir (the --workdir of thinjax-train) or its metrics.jsonl")
    rows = []
    for line in fs.read_text(path).splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    if not rows:
        raise MetricsError(f"{path}: no metric line yet (the run logs every "
                           "train.log_every steps); plot it once it has logged")
    return sorted(rows, key=lambda r: r["step"])


def run_names(runs: list[str]) -> list[str]:
    """A legend name per run: its folder's name, with as many parent folders as it takes to
    tell runs of the same name apart."""
    parts = [os.path.normpath(r.removesuffix("metrics.jsonl") or ".").split(os.sep)
             for r in runs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{n} ({i + 1})" for i, n in enumerate(names)]


def series(rows: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(x values, values) of the lines of `rows` that have `key`."""
    pts = [(r[x], r[key]) for r in rows if isinstance(r.get(key), (int, float))
           and isinstance(r.get(x), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def output_stem(out: str) -> str:
    """``--out`` without a .png / .svg extension: the prefix of both files."""
    stem, ext = os.path.splitext(out)
    return stem if ext.lower().lstrip(".") in figures.EXTENSIONS else out


def _panel(ax, title: str, ylabel: str, x: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def curves_figure(runs: dict[str, list[dict]], title: str | None = None, x: str = "step"):
    """A matplotlib Figure of three panels against `x` (``step`` or ``epoch``): training
    loss, evaluation top-1 (raw weights solid, EMA dashed) and learning rate, a colour per
    run, the legend by run name."""
    from matplotlib.figure import Figure  # heavy: loaded only when a plot is drawn
    if x not in X_KEYS:
        raise MetricsError(f"cannot plot against {x!r}; choose one of {', '.join(X_KEYS)}")
    fig = Figure(figsize=(16, 4.6), layout="constrained")
    loss_ax, top1_ax, lr_ax = fig.subplots(1, 3)
    for i, (name, rows) in enumerate(runs.items()):
        color = f"C{i % 10}"
        loss_ax.plot(*series(rows, "train_loss", x), color=color, lw=1, label=name)
        for key, style, kind in (("eval_top1", "o-", "raw"), ("ema_eval_top1", "s--", "EMA")):
            xs, ys = series(rows, key, x)
            if xs:
                top1_ax.plot(xs, ys, style, color=color, ms=4, label=f"{name} ({kind})")
        lr_ax.plot(*series(rows, "lr", x), color=color, lw=1, label=name)
    _panel(loss_ax, "training loss", "train loss", x)
    _panel(top1_ax, "evaluation", "top-1 accuracy (%)", x)
    _panel(lr_ax, "learning rate", "lr", x)
    if not top1_ax.lines:
        top1_ax.text(0.5, 0.5, "no evaluation logged", ha="center", va="center",
                     transform=top1_ax.transAxes)
    for ax in (loss_ax, top1_ax, lr_ax):
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title or ", ".join(runs))
    return fig


def plot_curves(runs: dict[str, list[dict]], path_stem: str, title: str | None = None,
                x: str = "step") -> list[str]:
    """`curves_figure` written to ``path_stem.png`` and ``path_stem.svg`` (the SVG keeps its
    text as text); returns their paths."""
    return figures.save(curves_figure(runs, title, x), path_stem, dpi=120)


def _num(v: object, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def eval_table(rows: list[dict]) -> str:
    """The run's evaluations as a Markdown table: epoch, step, top-1 (raw, EMA), top-5
    (EMA), the train loss and rate of the window that ended there."""
    lines = ["| epoch | step | top-1 raw | top-1 EMA | top-5 EMA | train loss | img/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "eval_top1" in r:
            lines.append(f"| {_num(r.get('epoch'), '.0f')} | {r['step']} | "
                         f"{_num(r['eval_top1'], '.2f')} | {_num(r.get('ema_eval_top1'), '.2f')} "
                         f"| {_num(r.get('ema_eval_top5'), '.2f')} | "
                         f"{_num(r.get('train_loss'), '.3f')} | "
                         f"{_num(r.get('images_per_s'), '.0f')} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    """The run's last step and its last logged train loss, lr and evaluation."""
    last = lambda key: next((r[key] for r in reversed(rows) if key in r), None)  # noqa: E731
    return {"steps": rows[-1]["step"], "lines": len(rows),
            **{k: last(k) for k in ("train_loss", "lr", "eval_top1", "ema_eval_top1")}}
