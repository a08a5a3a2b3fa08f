"""The metrics reporter: `metrics.jsonl`, TensorBoard scalars, optionally Weights & Biases,
and the progress line.

Process 0 writes; the others only count. `metrics.jsonl` holds one JSON object per log line
or evaluation, each step once: a resumed run first drops the lines past its checkpoint.
With ``config.logging.wandb`` the same numeric scalars also go to a W&B run (`WandbWriter`).
"""

from __future__ import annotations

import json
import os
import time
import uuid

import jax
import numpy as np

from thinjax import fs
from thinjax.config import WANDB_MISSING
from thinjax.errors import ConfigError
from thinjax.settings import LoggingSettings


class MetricWriter:
    """JSON lines plus TensorBoard scalars, and W&B where `logging` asks for it (process 0
    only; `config`: the run's settings as a dict, recorded in the W&B run)."""

    def __init__(self, workdir: str, enabled: bool, resume_step: int | None = None,
                 logging: LoggingSettings | None = None, config: dict | None = None):
        self.enabled = enabled
        if not enabled:
            return
        self._wandb = WandbWriter(workdir, logging, config) if logging and logging.wandb \
            else None
        import tensorflow as tf  # loads TensorFlow (TensorBoard's event writer): only when enabled
        self._path = os.path.join(workdir, "metrics.jsonl")
        self._text = fs.read_text(self._path) if fs.exists(self._path) else ""
        if resume_step is not None:  # a (re)start at this step logs what follows again
            self._text = truncate_lines(self._text, resume_step)
        # object stores (gs://) cannot append: keep the lines and rewrite the file
        self._remote = fs.is_remote(workdir)
        fs.write_text(self._path, self._text)
        if not self._remote:
            self._f = open(self._path, "a")  # noqa: SIM115 (closed in close())
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        import tensorflow as tf  # loads TensorFlow: only when enabled
        line = json.dumps({"step": step, **scalars}) + "\n"
        if self._remote:
            self._text += line
            fs.write_text(self._path, self._text)
        else:
            self._f.write(line)
            self._f.flush()
        with self._tb.as_default():
            for k, v in scalars.items():
                if isinstance(v, (int, float)):
                    tf.summary.scalar(k, v, step=step)
        self._tb.flush()
        if self._wandb is not None:
            self._wandb.write(step, scalars)

    def close(self) -> None:
        if self.enabled:
            if not self._remote:
                self._f.close()
            self._tb.close()
            if self._wandb is not None:
                self._wandb.close()


class WandbWriter:
    """The numeric scalars of each log line to a Weights & Biases run, at the line's step.

    The run's id is kept in ``WORKDIR/wandb_run_id``, so a resumed workdir goes on in the
    same W&B run (steps that run already has are not logged again: W&B keeps the first).
    wandb writes its files under ``$WANDB_DIR`` when that is set, else in the (local)
    workdir; its console capture is off (the command's output stays the command's)."""

    def __init__(self, workdir: str, log: LoggingSettings, config: dict | None):
        try:
            import wandb  # optional and slow to import: only with config.logging.wandb
        except ModuleNotFoundError as e:
            raise ConfigError(WANDB_MISSING) from e
        id_path = os.path.join(workdir, "wandb_run_id")
        run_id = fs.read_text(id_path).strip() if fs.exists(id_path) else uuid.uuid4().hex[:16]
        fs.write_text(id_path, run_id + "\n")
        local = None if fs.is_remote(workdir) or os.environ.get("WANDB_DIR") else workdir
        try:
            self.run = wandb.init(
                project=log.wandb_project, entity=log.wandb_entity or None, id=run_id,
                name=log.wandb_name or os.path.basename(os.path.normpath(workdir)),
                mode=log.wandb_mode or None, resume="allow", dir=local, config=config,
                settings=wandb.Settings(console="off"))
        except wandb.errors.Error as e:  # not logged in, no network, ...
            raise ConfigError(f"config.logging.wandb: W&B could not start a run ({e}); log in "
                              "(wandb login), or log offline (--config.logging.wandb_mode="
                              "offline, upload later with wandb sync), or set "
                              "--config.logging.wandb=False") from e
        self.last = self.run.step  # a resumed W&B run's current step

    def write(self, step: int, scalars: dict) -> None:
        numbers = {k: v for k, v in scalars.items() if isinstance(v, (int, float))}
        if numbers and step >= self.last:  # W&B refuses steps below its current one
            self.run.log(numbers, step=step)
            self.last = step

    def close(self) -> None:
        self.run.finish()


def truncate_lines(text: str, step: int) -> str:
    """The JSON lines of `text` logged at or before `step` (a resume from `step` logs the
    rest again); a torn last line (a kill mid-write) is dropped."""
    keep = []
    for line in text.splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line + "\n")
        except json.JSONDecodeError:
            continue
    return "".join(keep)


def fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def window_scalars(window: list[dict], global_batch: int, seconds: float) -> dict:
    """Means of a log window's step metrics, and its training rate."""
    mean = lambda k: float(np.mean([m[k] for m in window]))  # noqa: E731
    return {"train_loss": mean("loss"), "train_accuracy": 100 * mean("accuracy"),
            "grad_norm": mean("grad_norm"), "lr": float(window[-1]["lr"]),
            "images_per_s": len(window) * global_batch / max(seconds, 1e-9)}


def progress_line(step: int, total: int, s: dict, eta_s: float) -> str:
    ev = "".join(f"  {k} {v:.2f}" for k, v in s.items() if k.endswith("top1"))
    return (f"step {step}/{total} ep {s['epoch']:.2f}  loss {s['train_loss']:.4f}  acc "
            f"{s['train_accuracy']:.1f}%  lr {s['lr']:.4g}  {s['images_per_s']:.0f} img/s  "
            f"ETA {fmt_time(eta_s)}{ev}")


class Reporter:
    """Collects step metrics between log points; writes and prints them with rate and
    ETA. Evaluation time does not count towards the training rate."""

    def __init__(self, writer: MetricWriter, total: int, global_batch: int,
                 steps_per_epoch: int, start: int, verbose: bool):
        self.writer, self.total, self.gb = writer, total, global_batch
        self.steps_per_epoch, self.verbose = steps_per_epoch, verbose
        self.window: list = []
        self.t_window = self.t_start = time.perf_counter()
        self.n_start = start

    def add(self, metrics: dict) -> None:
        self.window.append(metrics)

    def fetch(self) -> list[dict]:
        """The window's metrics on the host (blocks until its steps have run)."""
        self.window = jax.device_get(self.window)
        return self.window

    def log(self, step: int, evaluation: dict | None = None, eval_seconds: float = 0) -> dict:
        scalars = window_scalars(self.fetch(), self.gb,
                                 time.perf_counter() - self.t_window - eval_seconds)
        scalars["epoch"] = step / self.steps_per_epoch
        scalars.update(evaluation or {})
        self.window, self.t_window = [], time.perf_counter()
        self.writer.write(step, scalars)
        if self.verbose:
            rate = (step - self.n_start) / max(self.t_window - self.t_start, 1e-9)
            print(progress_line(step, self.total, scalars, (self.total - step) / rate),
                  flush=True)
        return scalars

    def wall(self) -> float:
        return time.perf_counter() - self.t_start
