"""The study protocol (thinjax.stats, thinjax.protocol): interval and Holm arithmetic on
hand-made numbers, LR selection on the validation split only, the FLOPs column, scratch-B's
budget, BN-recalibrated one-shot rows, a tiny end-to-end run, and every committed protocol
report's verdicts recomputed from its results.csv."""

import glob
import json
import math
import os
import re
import runpy
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from tests.helpers import sub_env, tiny
from thinjax import checkpoint, jobs, stats
from thinjax.errors import ConfigError, OutputError
from thinjax.protocol import analysis, execute, from_config, pack_study, report, run_study
from thinjax.protocol import plan as planning
from thinjax.protocol.runner import finalise_tests, load_rows
from thinjax.protocol.spec import RunSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- statistics, by hand ---------------------------------------------------------------
def test_paired_interval_by_hand():
    # d = (1, 2, 3): mean 2, sd 1; t_{0.975, 2} = 4.302653 (tables); with 2 degrees of
    # freedom the t distribution has the closed form sf(t) = 1/2 - t / (2 sqrt(2 + t^2))
    iv = stats.paired_interval([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    half = 4.302653 / math.sqrt(3)
    assert (iv.n, iv.mean, iv.sd) == (3, 2.0, 1.0)
    assert iv.lo == pytest.approx(2 - half, abs=1e-5) and iv.hi == pytest.approx(2 + half,
                                                                                  abs=1e-5)
    t = 2 / (1 / math.sqrt(3))
    assert iv.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert math.isnan(stats.paired_interval([1.0], [0.0]).lo)  # one seed: no interval
    with pytest.raises(ValueError, match="one value per seed"):
        stats.paired_interval([1.0, 2.0], [1.0])


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x = 0.02, 0.03, 0.06, 0.04 -> monotone
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adj = stats.holm([0.02, math.nan, 0.5])  # nan neither counts nor changes
    assert adj[0] == pytest.approx(0.04) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.5)
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_verdicts():
    eq = stats.paired_interval([10.1, 10.0, 9.9], [10.0, 10.0, 10.0])  # [-0.25, +0.25]
    assert stats.verdict(eq, eq.p, delta=0.5) == "equivalent"
    assert stats.verdict(eq, eq.p, delta=0.2) == "inconclusive"
    lo = stats.paired_interval([7.0, 7.1, 6.9], [10.0, 10.0, 10.0])  # -3 +- 0.25
    assert stats.verdict(lo, lo.p, 0.5, "pruned") == "thin better"
    hi = stats.paired_interval([13.0, 13.1, 12.9], [10.0, 10.0, 10.0])
    assert stats.verdict(hi, hi.p, 0.5, "pruned") == "pruned better"
    # significant alone (p ~ 0.0003), not after Holm in a family where it is multiplied
    assert stats.verdict(lo, 0.06, 0.5) == "inconclusive"
    fam = stats.compare_family("w=8, E=3", {"a": ([7.0, 7.1, 6.9], [10.0] * 3),
                                            "b": ([10.1, 10.0, 9.9], [10.0] * 3)}, 0.5)
    assert [c.verdict for c in fam] == ["thin better", "equivalent"]
    assert fam[0].p_holm == pytest.approx(2 * fam[0].interval.p)


def _final_row(arm, criterion, seed, top1, epochs, flops):
    return {"run": f"{arm}-{criterion}-s{seed}", "arm": arm, "criterion": criterion,
            "target": "w=8", "seed": seed, "E": 3.0, "lr": 0.2, "selection": False,
            "top1": top1, "val_top1": top1, "epochs_total": epochs, "images": 1000 * epochs,
            "train_flops": flops, "params": 100, "macs": 10, "wall_s": 1.0}


def test_the_verdicts_in_words_carry_their_numbers():
    """Each sentence of a report's "In words": the difference, the interval, n, Holm's p,
    the verdict and both budgets, as computed by hand from the rows."""
    thin = [70.0, 71.0, 72.0]
    pruned = [71.0, 72.5, 73.0]  # d = 1, 1.5, 1: mean 7/6, sd 0.288675
    rows = ([_final_row("thin", None, s, t, 6, 3e12) for s, t in enumerate(thin)]
            + [_final_row("pruned+ft", "l1", s, t, 3, 9e12) for s, t in enumerate(pruned)])
    comps = analysis.comparisons(rows, 0.5)
    [text] = report.findings(comps, analysis.arm_summary(rows), 0.5)
    half = 4.302653 * 0.288675 / math.sqrt(3)  # t_{0.975, 2} sd / sqrt(n)
    lo, hi = 7 / 6 - half, 7 / 6 + half       # [+0.45, +1.88]: outside the 0.5 margin
    p = comps[0].p_holm
    assert 0 < p < 0.05 and comps[0].verdict == "pruned+ft l1 better"
    assert text == (
        f"At w=8, E=3, pruned+ft l1 minus thin: +1.17 top-1 points (95% interval "
        f"[{lo:+.2f}, {hi:+.2f}], n = 3 paired seeds, Holm p = {p:.3g}): "
        "**pruned+ft l1 better** (margin +-0.5). Budget: pruned+ft l1 3 epochs from init, "
        "3,000 images, 9.00 T training FLOPs (test top-1 72.17); thin 6 epochs from init, "
        "6,000 images, 3.00 T training FLOPs (test top-1 71.00).")
    assert (f"{lo:+.2f}", f"{hi:+.2f}") == ("+0.45", "+1.88")


def test_budget_curves_and_literature_points_take_each_comparison_at_its_target_and_e(
        tmp_path):
    """Two targets (a quarter and half of the dense MACs) at E = 1 and 3: the literature
    plot takes the pruned+ft comparisons at the reference E only, each at its target's
    MAC fraction; the E-curve plot draws both Es of each target."""
    rows = []
    for target, macs in (("w=8", 25e6), ("w=11", 50e6)):
        for E in (1.0, 3.0):
            for s in range(3):
                for arm, crit, top1 in (("thin", None, 70.0 + s), ("pruned+ft", "l1", 71 + s * E)):
                    r = _final_row(arm, crit, s, top1, 3 + E, 1e12)
                    r.update(target=target, E=E, target_macs=macs, run=f"{r['run']}-{target}-{E}")
                    rows.append(r)
    rows.append({**rows[0], "arm": "dense", "target": "dense", "target_macs": 100e6})
    comps = analysis.comparisons(rows, 0.5)
    assert sorted(c.family for c in comps) == ["w=11, E=1", "w=11, E=3", "w=8, E=1", "w=8, E=3"]
    assert {analysis.family_parts(c.family) for c in comps} == {
        ("w=8", 1.0), ("w=8", 3.0), ("w=11", 1.0), ("w=11", 3.0)}
    pts = report.lit_points(comps, rows, _protocol(finetune_epochs=(1.0, 3.0), ref_epochs=3.0))
    assert sorted((f, c.family) for f, c in pts) == [(0.25, "w=8, E=3"), (0.5, "w=11, E=3")]
    files = report.e_curve_plot(comps, 0.5, str(tmp_path / "e_curve"), "t")
    assert files and all(os.path.getsize(f) > 0 for f in files)
    svg = open(files[1]).read()
    assert "target w=8" in svg and "target w=11" in svg
    # a target compared at one E only has no panel; no target with two Es, no plot
    at_one_e = [c for c in comps if c.family != "w=11, E=1"]
    files = report.e_curve_plot(at_one_e, 0.5, str(tmp_path / "e_curve2"), "t")
    svg = open(files[1]).read()
    assert "target w=8" in svg and "target w=11" not in svg
    assert report.e_curve_plot([c for c in comps if c.family.endswith("E=3")], 0.5,
                               str(tmp_path / "e_curve3"), "t") == []


# -- planning: LR selection on the validation split ------------------------------------
def _protocol(**kw):
    d = dict(arch="resnet20", base_width=4, targets=(2, 3), seeds=3, delta=1.0,
             dense_epochs=2.0, finetune_epochs=(1.0, 2.0), ref_epochs=2.0,
             criteria=("l1", "random"), curve_criteria=1, curve_targets=(2,),
             control_targets=(2,), arms=("dense", "oneshot", "thin", "pruned+ft",
                                         "gradual", "scratch-B"),
             lr_grid={"thin": (0.1, 0.2), "pruned+ft": (0.01, 0.05), "gradual": (0.05,),
                      "scratch-B": (0.1,)}, dense_lr=0.1)
    d.update(kw)
    return from_config(ml_collections.ConfigDict(d))


class ValOnly(dict):
    """Rows that raise if anything reads a test-split number while planning."""
    def __getitem__(self, k):
        row = dict.__getitem__(self, k)
        return {key: v for key, v in row.items() if key not in ("top1", "top5")}


def test_cost_is_per_arm_target_and_e_at_the_median_run_time():
    # one run of three ran across a pause (1,000 s): the median, not the mean, is the
    # group's run time; the measured total keeps it
    row = lambda arm, target, E, wall: {"arm": arm, "target": target, "E": E,  # noqa: E731
                                        "wall_s": wall}
    rows = [row("thin", "w=8", 3.0, w) for w in (100.0, 1000.0, 110.0)]
    rows += [row("thin", "w=8", 1.0, 40.0), row("dense", None, 0.0, 500.0)]
    lines = report.cost_table(rows, "a 2-core CPU")
    assert lines[2:5] == ["| dense | - | 0 | 1 | 500 s | 8 min |",
                          "| thin | w=8 | 1 | 1 | 40 s | 1 min |",
                          "| thin | w=8 | 3 | 3 | 110 s | 20 min |"]
    measured, typical = 1750 / 3600, (500 + 40 + 3 * 110) / 3600
    assert lines[-1].startswith(f"In all {measured:.2f} h of wall time as measured, "
                                f"{typical:.2f} h at each group's median (a 2-core CPU)")
    assert report.cost_table([], "x") == ["nothing ran yet"]


def test_lr_and_criteria_are_chosen_on_validation_rows_only():
    p = _protocol()
    val = {0.1: 50.0, 0.2: 52.0, 0.01: 40.0, 0.05: 45.0}
    rows = ValOnly()
    while True:
        todo = planning.next_runs(p, rows)
        if not todo:
            break
        r = todo[0]
        bonus = 5.0 if r.criterion == "random" else 0.0
        dict.__setitem__(rows, r.id, {"val_top1": val.get(r.lr, 30.0) + bonus})
    assert planning.chosen_lr(p, rows, "thin") == 0.2
    assert planning.chosen_lr(p, rows, "pruned+ft", "l1") == 0.05
    assert planning.ranked_criteria(p, rows) == ["random", "l1"]
    ids = set(rows)
    # E curve only for the best criterion at the curve target; controls use it too
    assert "pruned-ft-random-w2-E1-lr0.05-s2" in ids and "pruned-ft-l1-w2-E1-lr0.05-s0" not in ids
    assert "thin-w3-E1-lr0.2-s0" not in ids and "thin-w3-E2-lr0.2-s2" in ids
    assert "gradual-random-w2-E2-lr0.05-s1" in ids and "scratch-B-random-w2-E2-lr0.1-s2" in ids
    assert not any(i.startswith("gradual-l1") for i in ids)
    # ties go to the smaller LR
    dict.__setitem__(rows, "thin-w2-E2-lr0.1-s0", {"val_top1": 52.0})
    assert planning.chosen_lr(p, rows, "thin") == 0.1


def test_only_final_rows_are_evaluated_on_the_test_split(monkeypatch, tmp_path):
    p = _protocol(arms=("dense", "oneshot", "thin"), criteria=("l1",), curve_criteria=0,
                  control_targets=())
    rows = {"dense-s0": {"run": "dense-s0", "val_top1": 1.0, "top1": None},
            "thin-w2-E2-lr0.1-s0": {"run": "thin-w2-E2-lr0.1-s0", "val_top1": 50.0,
                                    "top1": None},
            "thin-w2-E2-lr0.2-s0": {"run": "thin-w2-E2-lr0.2-s0", "val_top1": 60.0,
                                    "top1": None}}
    seen = []
    monkeypatch.setattr(execute, "evaluate_tests", lambda ctx, p, specs: seen.extend(
        s.id for s in specs) or [(1.0, 2.0)] * len(specs))
    ctx = execute.Context(str(tmp_path), "d", None, 100, "c")
    finalise_tests(ctx, p, rows, lambda m: None)
    assert sorted(seen) == ["dense-s0", "thin-w2-E2-lr0.2-s0"]
    assert rows["thin-w2-E2-lr0.1-s0"]["top1"] is None


def test_a_row_measured_before_its_grid_was_extended_is_not_reported():
    row = lambda lr, seed, val, top1: {"arm": "thin", "criterion": None, "lr": lr,  # noqa: E731
                                       "seed": seed, "selection": seed == 0,
                                       "val_top1": val, "top1": top1}
    rows = [row(0.4, 0, 78.0, 77.55),  # chosen, and measured, before 0.8 was added
            row(0.8, 0, 78.5, 77.32), row(0.8, 1, None, 76.0),
            {"arm": "dense", "criterion": None, "lr": None, "seed": 0, "selection": False,
             "val_top1": 74.0, "top1": 73.9}]
    assert analysis.chosen_lrs(rows) == {("thin", None): 0.8}
    kept = analysis.final(rows)
    assert [(r["arm"], r["lr"], r["seed"]) for r in kept] == [
        ("thin", 0.8, 0), ("thin", 0.8, 1), ("dense", None, 0)]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"protocol.seeds: 2: paired"):
        _protocol(seeds=2)
    with pytest.raises(ConfigError, match=r"protocol.lr_grid.*scratch-B"):
        _protocol(lr_grid={"thin": (0.1,), "pruned+ft": (0.1,), "gradual": (0.1,)})
    with pytest.raises(ConfigError, match="ref_epochs"):
        _protocol(ref_epochs=5.0)
    with pytest.raises(ConfigError, match="unknown field"):
        _protocol(sedes=3)


# -- the budget columns --------------------------------------------------------------
def test_training_flops_and_scratch_b_budget(monkeypatch, tmp_path):
    p = _protocol()
    M16, M2 = execute.macs_of_width(p, 4), execute.macs_of_width(p, 2)
    ctx = execute.Context(str(tmp_path), "sample:cifar10", None, 100, "c")
    calls = []

    def fake_train(ctx, p, spec, epochs, flags):
        calls.append((spec.arm, epochs, flags))
        macs = {"dense": M16, "gradual": 700_000}.get(spec.arm, M2)
        return {"steps": 10, "epochs": epochs, "macs": macs, "params": 1, "eval_top1": 1.0}

    monkeypatch.setattr(execute, "train", fake_train)
    rows = {}
    d = execute.execute(ctx, p, RunSpec("dense", 0), rows)
    assert d["train_flops"] == 3 * M16 * 10 * 128 and d["images"] == 1280
    rows["dense-s0"] = d
    t = execute.execute(ctx, p, RunSpec("thin", 0, 2, None, 2.0, 0.1), rows)
    assert calls[-1][1] == 4.0  # T + E from scratch
    assert t["train_flops"] == 3 * M2 * 1280 and t["T"] == 0.0
    g = execute.execute(ctx, p, RunSpec("gradual", 0, 2, "l1", 2.0, 0.05), rows)
    assert g["train_flops"] == d["train_flops"] + 3 * (M16 * 640 + 700_000 * 640)
    assert g["images"] == 2560
    oneshot = {"train_flops": d["train_flops"] + 5, "images": 1280}
    rows["oneshot-l1-w2-s0"] = oneshot
    os.makedirs(tmp_path / "runs" / "oneshot-l1-w2-s0" / "pruned")
    from thinjax.plan import plan_from_width
    plan_from_width("resnet20", 2).save(str(tmp_path / "runs/oneshot-l1-w2-s0/pruned/plan.json"))
    f = execute.execute(ctx, p, RunSpec("pruned+ft", 0, 2, "l1", 2.0, 0.01), rows)
    assert f["train_flops"] == oneshot["train_flops"] + 3 * M2 * 1280
    execute.execute(ctx, p, RunSpec("scratch-B", 0, 2, "l1", 2.0, 0.1), rows)
    want = math.ceil(100 * (2.0 * M16 / M2 + 2.0)) / 100
    assert calls[-1][1] == want  # same training FLOPs as pruned+ft, up to 1/100 epoch
    assert abs(3 * M2 * want - 3 * (M16 * 2.0 + M2 * 2.0)) <= 3 * M2 * 0.01


def test_a_diverged_grid_run_is_a_row_at_chance_and_the_grid_still_decides(monkeypatch,
                                                                             tmp_path):
    p = _protocol(arms=("dense", "oneshot", "thin"), criteria=("l1",), curve_criteria=0,
                  control_targets=())
    ctx = execute.Context(str(tmp_path), "d", None, 100, "c")
    dense = tmp_path / "runs" / "dense-s0" / "train"
    dense.mkdir(parents=True)
    (dense / "config.json").write_text(json.dumps({"model": {"num_classes": 10}}))
    rows = {"dense-s0": {"run": "dense-s0", "images": 4500, "epochs_here": 2.0}}
    from thinjax.plan import plan_from_width

    def fake_run(cmd, stdout, stderr, env=None):  # thinjax.main as NonFiniteLoss leaves it
        wd = next(c.split("=", 1)[1] for c in cmd if c.startswith("--workdir="))
        os.makedirs(wd, exist_ok=True)
        plan_from_width("resnet20", 2).save(os.path.join(wd, "plan.json"))
        stdout.write("error: non-finite loss at step 5; the run stops ...\n")
        return subprocess.CompletedProcess(cmd, 2)

    monkeypatch.setattr(jobs.subprocess, "run", fake_run)
    spec = RunSpec("thin", 0, 2, None, 2.0, 0.2)
    row = execute.execute(ctx, p, spec, rows)
    assert row["diverged"] and row["val_top1"] == 10.0 and row["chance_top5"] == 50.0
    steps = round(4500 / 2.0 * 4.0 / 128)  # T + E epochs at the dense run's images/epoch
    assert row["images"] == steps * 128
    assert row["macs"] == execute.macs_of_width(p, 2)
    rows[spec.id] = row
    rows["thin-w2-E2-lr0.1-s0"] = {"run": "thin-w2-E2-lr0.1-s0", "val_top1": 30.0, "top1": None}
    assert planning.chosen_lr(p, rows, "thin") == 0.1
    # a diverged dense run, or any other failure, stays a failure
    with pytest.raises(execute.Diverged):
        execute.execute(ctx, p, RunSpec("dense", 1), rows)
    monkeypatch.setattr(jobs.subprocess, "run",
                        lambda cmd, stdout, stderr, env=None: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(execute.RunFailed) as e:
        execute.execute(ctx, p, RunSpec("thin", 1, 2, None, 2.0, 0.1), rows)
    assert not isinstance(e.value, execute.Diverged)
    # chosen, a diverged row's test numbers are chance too (its weights are not finite)
    p1 = _protocol(arms=("dense", "oneshot", "thin"), criteria=("l1",), curve_criteria=0,
                   control_targets=(), lr_grid={"thin": (0.2,), "pruned+ft": (0.01,)})
    monkeypatch.setattr(execute, "evaluate_tests", lambda *a: pytest.fail("evaluated"))
    finalise_tests(ctx, p1, {spec.id: row}, lambda m: None)
    assert (row["top1"], row["top5"]) == (10.0, 50.0)


# -- a tiny run, end to end ----------------------------------------------------------


def check_report(csv_path: str, report_path: str, delta: float) -> int:
    """Recomputes every verdict from the CSV (plain paired t-intervals, Holm per family,
    the margin) and compares with the report's table row by row; the number compared."""
    comps = analysis.comparisons(analysis.read_csv(csv_path), delta)
    table = [ln for ln in open(report_path).read().splitlines()
             if re.match(r"\| w=[\d.]+, E=", ln)]
    assert len(table) == len(comps)
    for ln, c in zip(table, comps):
        cells = [x.strip() for x in ln.strip("|").split("|")]
        assert cells[0] == c.family and cells[1] == c.x and int(cells[2]) == c.interval.n
        assert float(cells[3]) == pytest.approx(c.interval.mean, abs=0.006)
        assert cells[6].strip("*") == c.verdict
    return len(comps)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The tiny protocol run to its end: (config, workdir, run_study's result)."""
    tmp_path = tmp_path_factory.mktemp("tiny_study")
    cfg = tiny(tmp_path)
    return cfg, tmp_path / "wd", run_study(cfg, str(tmp_path / "wd"), log=lambda m: None)


def test_tiny_protocol_end_to_end(tiny_study):
    cfg, wd, out = tiny_study
    tmp_path = wd.parent
    rows = {r["run"]: r for r in out["rows"]}
    assert out["failures"] == []
    assert {"dense-s0", "dense-s1", "dense-s2", "oneshot-l1-w2-s2", "thin-w2-E0.25-lr0.05-s0",
            "thin-w2-E0.25-lr0.2-s0", "pruned-ft-l1-w2-E0.25-lr0.05-s2"} <= set(rows)
    chosen = planning.chosen_lr(from_config(cfg.protocol), rows, "thin")
    other = 0.05 if chosen == 0.2 else 0.2
    assert rows[f"thin-w2-E0.25-lr{other:g}-s0"]["top1"] is None   # never on test
    assert rows[f"thin-w2-E0.25-lr{chosen:g}-s2"]["top1"] is not None
    for s in range(3):  # BN recalibration: forward passes only, counted, and they matter
        o = rows[f"oneshot-l1-w2-s{s}"]
        assert o["val_top1_no_recal"] is not None
        assert o["train_flops"] == rows[f"dense-s{s}"]["train_flops"] + o["macs"] * 3 * 128
        assert o["images"] == rows[f"dense-s{s}"]["images"]
    # seeds pair: same seed, same dense network for every arm of that seed
    assert len({rows[f"dense-s{s}"]["val_top1"] for s in range(3)}) > 1
    assert check_report(str(tmp_path / "wd" / "results.csv"),
                        str(tmp_path / "wd" / "report.md"), 5.0) == 1
    assert os.path.exists(tmp_path / "wd" / "forest.png")
    # a rerun runs nothing; a changed setting makes the rows stale
    again = run_study(cfg, str(tmp_path / "wd"), log=lambda m: None)
    assert {r["run"]: r["val_top1"] for r in again["rows"]} == {
        k: r["val_top1"] for k, r in rows.items()}


def _tree_size(path) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(path) for n in ns)


def test_a_packed_study_continues_elsewhere_from_the_same_weights(tiny_study, tmp_path):
    cfg, wd, out = tiny_study
    rows = {r["run"]: r for r in out["rows"]}
    src, dst = tmp_path / "src", tmp_path / "pack"
    shutil.copytree(wd, src)
    # one final row whose test top-1 is still to come: its weights must travel
    lr = planning.chosen_lr(from_config(cfg.protocol), rows, "thin")
    pending = f"thin-w2-E0.25-lr{lr:g}-s1"
    row = json.loads((src / "runs" / pending / "row.json").read_text())
    row["top1"] = row["top5"] = None
    (src / "runs" / pending / "row.json").write_text(json.dumps(row))
    info = pack_study(cfg, str(src), str(dst))
    assert info["rows"] == len(rows) and info["history"] == []
    assert set(info["weights_kept"]) == {pending} | {
        f"{a}-s{s}" for a in ("dense", "oneshot-l1-w2") for s in range(3)}
    assert _tree_size(dst) < _tree_size(src) / 4
    for rid in ("dense-s1", pending):  # the same raw weights, bit for bit
        a = checkpoint.load_network(str(src / "runs" / rid / "train"))[1]
        b = checkpoint.load_network(str(dst / "runs" / rid / "train"))[1]
        jax.tree.map(np.testing.assert_array_equal, a, b)
    # elsewhere: a run that starts from a packed one-shot pruning is made again, the
    # pending test top-1 is measured from the packed weights, nothing else runs
    redo = f"pruned-ft-l1-w2-E0.25-lr{rows_lr(rows, 'pruned+ft')}-s2"
    work = tmp_path / "elsewhere"
    shutil.copytree(dst, work)
    shutil.rmtree(work / "runs" / redo)
    said = []
    again = {r["run"]: r for r in run_study(cfg, str(work), log=said.append)["rows"]}
    assert [m.split(": ")[0].split("] ")[1] for m in said if "running" in m] == [redo]
    assert again[pending]["top1"] == rows[pending]["top1"]
    # training is bit for bit deterministic in one environment (as test_robust's resume):
    # the same start, the same batches, the same result
    assert again[redo]["val_top1"] == rows[redo]["val_top1"]
    assert {k: r["val_top1"] for k, r in again.items() if k != redo} == {
        k: r["val_top1"] for k, r in rows.items() if k != redo}
    # packed back: the pack before is remembered, with the rows made or completed since
    assert info["new_rows"] == sorted(rows)
    dense = {f: f.read_bytes() for f in (dst / "runs").glob("dense-s*/train/**/*")
             if f.is_file()}
    second = pack_study(cfg, str(work), str(dst))
    assert [h["rows"] for h in second["history"]] == [len(rows)]
    # (the run made again is new unless its row came out byte for byte the same: same
    # val top-1 and, at 0.1 s, the same wall time)
    assert second["new_rows"] == sorted({pending} | ({redo} if again[redo] != rows[redo]
                                                     else set()))
    # weights that did not change keep their files, byte for byte (a pack kept in git)
    assert {f: f.read_bytes() for f in (dst / "runs").glob("dense-s*/train/**/*")
            if f.is_file()} == dense and len(dense) > 3
    # a user's folder is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="not a thinjax output"):
        pack_study(cfg, str(src), str(mine))
    assert (mine / "notes.txt").read_text() == "keep"


def test_pack_to_refuses_what_it_cannot_pack_in_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OutputError, match="holds no study runs"):
        pack_study(tiny(tmp_path), str(empty), str(tmp_path / "pack"))
    r = subprocess.run(  # a study without a protocol section: its workdir is copied as it is
        [sys.executable, "-m", "thinjax.study", "--config=configs/study_cifar10_r56.py",
         f"--workdir={empty}", f"--pack_to={tmp_path / 'pack'}"], cwd=ROOT, env=sub_env(),
        capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and not (tmp_path / "pack").exists()
    assert r.stderr.strip().splitlines() == [
        "error: --pack_to packs a protocol study (a config with a protocol section); copy "
        "another study's --workdir as it is"]


def rows_lr(rows: dict, arm: str) -> str:
    """The LR (as in run ids) of `arm`'s rows."""
    return next(r["run"].split("-lr")[1].split("-s")[0] for r in rows.values()
                if r["arm"] == arm)


def _protocol_report_dirs() -> list[str]:
    """docs/study_NAME/ for every configs/study_NAME.py with a protocol section."""
    out = []
    for d in sorted(glob.glob(os.path.join(ROOT, "docs", "study_*", ""))):
        cfg = os.path.join(ROOT, "configs", os.path.basename(d.rstrip("/")) + ".py")
        if os.path.exists(cfg) and "c.protocol" in open(cfg).read():
            out.append(d)
    return out


def _state_dirs() -> list[str]:
    """benchmarks/state/study_NAME/: packs of studies in progress (`--pack_to`)."""
    return sorted(glob.glob(os.path.join(ROOT, "benchmarks", "state", "study_*", "")))


@pytest.mark.parametrize("state", _state_dirs())
def test_a_committed_study_in_progress_continues_with_its_config(state):
    """Every row of a committed pack still matches its config (nothing would rerun), and
    every network a planned run or test evaluation reads is in it."""
    name = os.path.basename(state.rstrip("/"))
    with open(os.path.join(state, "pack.json")) as f:
        info = json.load(f)
    cfg = ml_collections.ConfigDict(
        runpy.run_path(os.path.join(ROOT, "configs", name + ".py"))["get_config"]())
    p = from_config(cfg.protocol)
    ctx = execute.Context(state, info["data"], None, 500, "test")
    rows, _ = load_rows(ctx, p, {})
    rows, stale = load_rows(ctx, p, {r.id: r for r in planning.all_runs(p, rows)})
    assert stale == [] and len(rows) == info["rows"]
    for rid in info["weights_kept"]:
        spec = next(r for r in planning.all_runs(p, rows) if r.id == rid)
        checkpoint.load_network(execute.checkpoint_of(ctx, spec))


@pytest.mark.parametrize("report_dir", _protocol_report_dirs())
def test_committed_protocol_reports_recompute(report_dir):
    cfg_name = os.path.basename(report_dir.rstrip("/")).replace("study_", "study_", 1)
    import importlib.util
    spec = importlib.util.spec_from_file_location("c", os.path.join(
        ROOT, "configs", cfg_name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    delta = mod.get_config().protocol.delta
    n = check_report(os.path.join(report_dir, "results.csv"),
                     os.path.join(report_dir, "report.md"), delta)
    rows = analysis.final(analysis.read_csv(os.path.join(report_dir, "results.csv")))
    trained = [r for r in rows if r["arm"] not in ("dense", "oneshot")]
    assert n >= 1 and all(r["commit"] for r in rows) and trained


@pytest.mark.parametrize("report_dir", _protocol_report_dirs())
def test_a_committed_results_csv_reads_and_writes_back_unchanged(report_dir, tmp_path):
    """`--from_csv` rebuilds a report from a results.csv: reading and writing it again
    changes no byte (an empty `diverged` once came back as False)."""
    src = os.path.join(report_dir, "results.csv")
    analysis.write_csv(str(tmp_path / "results.csv"), analysis.read_csv(src))
    assert (tmp_path / "results.csv").read_bytes() == open(src, "rb").read()


@pytest.mark.parametrize("name,n_runs", [("study_cifar10_r20_protocol", 123),
                                         ("study_cifar10_r20_protocol_gpu", None),
                                         ("study_cifar10_mobilenetv2", 24)])
def test_protocol_configs_load_and_plan(name, n_runs):
    """The committed protocol configs validate and plan to the end (with made-up
    validation numbers), every trained arm with >= 3 seeds."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("c", os.path.join(ROOT, "configs",
                                                                    name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    p = from_config(mod.get_config().protocol)
    rows = {}
    while True:
        todo = planning.next_runs(p, rows)
        if not todo:
            break
        rows[todo[0].id] = {"val_top1": float(len(rows) % 7)}
    if n_runs is not None:
        assert len(rows) == n_runs
    seeds: dict = {}
    for rid in rows:
        head, s = rid.rsplit("-s", 1)
        if "-lr" in head:
            seeds.setdefault(head, set()).add(int(s))
    finals = [h for h, ss in seeds.items() if len(ss) > 1]
    assert finals and all(seeds[h] == set(range(p.seeds)) for h in finals)


def test_packed_configs_name_no_folder_of_the_machine():
    from thinjax.protocol.portable import _portable
    rec = {"init_from": "/m/study/runs/dense-s0/train", "data": {"name": "/m/data/cifar10-jpeg/",
           "split": "train[:30000]"}, "files": ["/x/y.json", "rel/z"], "lr": 0.2}
    assert _portable(rec, "/m/study/runs") == {
        "init_from": "runs/dense-s0/train", "data": {"name": "cifar10-jpeg",
        "split": "train[:30000]"}, "files": ["y.json", "rel/z"], "lr": 0.2}
