"""thinjax-plot: training curves of real metrics.jsonl files (written by the training
loop's MetricWriter), legends by run name, PNG and SVG, one error line for a bad run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT
from thinjax.commands import cli
from thinjax.commands import plot as plot_cmd
from thinjax.curves import curves_figure, read_metrics, run_names
from thinjax.train.metrics import MetricWriter


def write_run(workdir, steps, ema: bool, eval_every: int) -> list[dict]:
    """A run's metrics.jsonl as training writes it (train lines every 5 steps, an
    evaluation every `eval_every`, a pruning line); returns the lines written."""
    workdir.mkdir(parents=True)
    w = MetricWriter(str(workdir), enabled=True)
    lines = []
    for s in range(5, steps + 1, 5):
        row = {"train_loss": 2.3 / (1 + s / 40), "train_accuracy": 10 + s / 3, "grad_norm": 1.5,
               "lr": 0.2 * (1 - s / steps), "images_per_s": 900.0 + s, "epoch": s / 25}
        if s % eval_every == 0:
            row.update(eval_top1=20 + s / 2, eval_top5=60.0, eval_loss=1.9)
            if ema:
                row.update(ema_eval_top1=19 + s / 2, ema_eval_top5=61.0, ema_eval_loss=1.8)
        w.write(s, row)
        lines.append({"step": s, **row})
    w.write(12, {"prune_params": 1000, "prune_macs": 5000})  # a pruning event's line
    w.close()
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "train_lo')  # a kill mid-write
    return lines


def test_plot_command_draws_every_run(tmp_path, capsys):
    a, b = tmp_path / "sweep" / "w8", tmp_path / "sweep" / "w16"
    want = {"w8": write_run(a, 60, ema=True, eval_every=20),
            "w16": write_run(b, 40, ema=False, eval_every=10)}
    out = tmp_path / "figs" / "curves.png"
    assert cli.call(plot_cmd.main, [str(a), str(b), f"--out={out}", "--table", "--json"],
                    plot_cmd.FLAGS) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed.splitlines()[-1])
    stem = str(tmp_path / "figs" / "curves")
    assert result["files"] == [stem + ".png", stem + ".svg"]
    assert open(stem + ".png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    svg = open(stem + ".svg").read()
    for label in ("w8 (raw)", "w8 (EMA)", "w16 (raw)", "training loss", "learning rate"):
        assert label in svg, label
    assert "w16 (EMA)" not in svg  # that run evaluated no EMA weights
    assert result["runs"]["w8"]["steps"] == 60 and result["runs"]["w16"]["steps"] == 40
    assert result["runs"]["w8"]["ema_eval_top1"] == want["w8"][-1]["ema_eval_top1"] == 49
    assert result["runs"]["w16"]["train_loss"] == want["w16"][-1]["train_loss"]
    assert "| 2 | 40 | 40.00 | - | - | 1.150 | 940 |" in printed  # w16's last evaluation
    assert "| 2 | 60 | 50.00 | 49.00 | 61.00 | 0.920 | 960 |" in printed  # w8's


def logged(lines: list[dict], x: str, key: str) -> np.ndarray:
    return np.array([(r[x], r[key]) for r in lines if key in r])


def test_the_curves_are_the_logged_values(tmp_path):
    want = write_run(tmp_path / "r", 60, ema=True, eval_every=20)
    rows = read_metrics(str(tmp_path / "r"))
    assert [r["step"] for r in rows] == [5, 10, 12, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60]
    for x in ("step", "epoch"):
        loss, top1, lr = curves_figure({"r": rows}, x=x).axes
        np.testing.assert_array_equal(loss.lines[0].get_xydata(), logged(want, x, "train_loss"))
        np.testing.assert_array_equal(lr.lines[0].get_xydata(), logged(want, x, "lr"))
        raw, ema = top1.lines
        np.testing.assert_array_equal(raw.get_xydata(), logged(want, x, "eval_top1"))
        np.testing.assert_array_equal(ema.get_xydata(), logged(want, x, "ema_eval_top1"))
        assert raw.get_linestyle() == "-" and ema.get_linestyle() == "--"
        assert loss.get_xlabel() == x


def test_run_names_tell_runs_of_the_same_name_apart():
    assert run_names(["runs/a", "runs/b/"]) == ["a", "b"]
    assert run_names(["x/seed0/run", "y/seed0/run", "runs/z"]) == ["x/seed0/run", "y/seed0/run",
                                                                  "runs/z"]
    assert run_names(["runs/a/metrics.jsonl", "old/a"]) == ["runs/a", "old/a"]


def test_bad_runs_are_one_error_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "thinjax.plot", str(tmp_path / "nope"),
                        f"--out={tmp_path / 'f'}"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope'}: no metrics.jsonl there; give a training workdir (the "
        "--workdir of thinjax-train) or its metrics.jsonl"]
    assert not os.path.exists(tmp_path / "f.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit) as e:
        cli.call(plot_cmd.main, [str(tmp_path / "empty"), "--out=x"], plot_cmd.FLAGS)
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.call(plot_cmd.main, ["--out=x"], plot_cmd.FLAGS)  # no run


def test_a_figure_written_twice_is_the_same_bytes_with_its_text_as_text(tmp_path):
    """A rebuilt report changes no plot that did not change: no date in the SVG, fixed ids."""
    import matplotlib.pyplot as plt

    from thinjax import figures
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [3.0, 1.0, 2.0], label="thin w=8")
    ax.axvspan(0.5, 1.5, color="0.9")   # a clipped patch: an SVG id
    ax.legend()
    a = figures.save(fig, str(tmp_path / "a" / "fig"), dpi=50)
    b = figures.save(fig, str(tmp_path / "b" / "fig"), dpi=50)
    plt.close(fig)
    assert [os.path.basename(p) for p in a] == ["fig.png", "fig.svg"]
    for x, y in zip(a, b):
        assert open(x, "rb").read() == open(y, "rb").read(), x
    assert "thin w=8" in open(a[1]).read()
