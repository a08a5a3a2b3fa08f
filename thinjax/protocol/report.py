"""The protocol's outputs: results.csv, the forest plot, the difference-against-E plot,
published drops beside the measured differences, and report.md.

The report prints, for every comparison, n, the mean paired difference (arm - thin, top-1
points on the test split), its 95% t-interval, the Holm-adjusted p and the verdict
(`thinjax.stats`); then each arm's mean, LR and budget; the LR selection on the validation
split; the one-shot rows before and after BN recalibration; the cost; the Limits.
"""

from __future__ import annotations

import csv
import math
import os
import statistics

from thinjax import figures
from thinjax.errors import require
from thinjax.protocol import analysis
from thinjax.protocol.spec import Protocol


def _plt():
    matplotlib = require("matplotlib", "plot", "plotting")  # heavy: only when drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed
    return plt


def _save(fig, stem: str) -> list[str]:
    paths = figures.save(fig, stem, dpi=110, tight=True)
    _plt().close(fig)
    return paths


def forest_plot(comps, delta: float, stem: str, title: str) -> list[str]:
    """Each comparison's mean difference and 95% interval, with the +-delta band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(comps) + 1.6))
    ax.axvspan(-delta, delta, color="0.88")
    ax.axvline(0, color="0.4", lw=0.8)
    colors = {"equivalent": "C2", "inconclusive": "0.45"}
    for i, c in enumerate(reversed(comps)):
        col = colors.get(c.verdict, "C3" if c.verdict.startswith("thin") else "C0")
        iv = c.interval
        ax.errorbar(iv.mean, i, xerr=[[iv.mean - iv.lo], [iv.hi - iv.mean]], fmt="o",
                    color=col, capsize=3)
    ax.set_yticks(range(len(comps)))
    ax.set_yticklabels([f"{c.x} | {c.family} ({c.verdict})" for c in reversed(comps)],
                       fontsize=8)
    ax.set_xlabel("top-1 difference, arm - thin (points, test split; 95% t-interval); "
                  f"grey: the equivalence margin +-{delta:g}", fontsize=9)
    ax.set_title(title, fontsize=10)
    return _save(fig, stem)


def e_curve_plot(comps, delta: float, stem: str, title: str) -> list[str]:
    """The paired difference against the fine-tune budget E, per target and arm."""
    plt = _plt()
    parts = [(analysis.family_parts(c.family), c) for c in comps]  # ((target, E), comparison)
    es: dict[tuple, set] = {}
    for (t, E), c in parts:
        es.setdefault((t, c.x), set()).add(E)
    # a panel for each target where some arm was compared at two budgets or more
    targets = sorted({t for (t, _), v in es.items() if len(v) > 1})
    if not targets:
        return []
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 3.8),
                             squeeze=False)
    for ax, t in zip(axes[0], targets):
        ax.axhspan(-delta, delta, color="0.88")
        ax.axhline(0, color="0.4", lw=0.8)
        mine = [(E, c) for (target, E), c in parts if target == t]
        arms = sorted({c.x for _, c in mine})
        for i, a in enumerate(arms):
            pts = sorted((E, c.interval) for E, c in mine if c.x == a)
            if len(pts) < 2:
                continue
            xs = [e for e, _ in pts]
            ax.errorbar(xs, [iv.mean for _, iv in pts],
                        yerr=[[iv.mean - iv.lo for _, iv in pts],
                              [iv.hi - iv.mean for _, iv in pts]],
                        fmt="-o", capsize=3, color=f"C{i}", label=a)
        ax.set_xscale("log")
        ticks = sorted({E for (target, E), _ in parts if target == t})
        ax.set_xticks(ticks, [f"{E:g}" for E in ticks])
        ax.minorticks_off()
        ax.set_xlabel("fine-tune epochs E (log scale)")
        ax.set_ylabel("top-1 difference, arm - thin (points)")
        ax.set_title(f"target {t}", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, stem)


def literature_plot(points, literature: list[dict], stem: str, title: str) -> list[str]:
    """Published drops (pruned - own baseline) against the MACs kept, beside this study's
    paired differences (pruned arm - thin) at their targets."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for net, m in (("resnet20", "o"), ("resnet56", "s")):
        pts = [(1 - float(r["macs_reduction"]), float(r["pruned_top1"]) -
                float(r["baseline_top1"])) for r in literature if r["network"] == net
               and r.get("macs_reduction") and r.get("pruned_top1") and r.get("baseline_top1")]
        if pts:
            ax.plot(*zip(*pts), m, mfc="none", color="0.35",
                    label=f"published {net}: pruned - own baseline")
    arms = sorted({c.x for _, c in points})
    for i, a in enumerate(arms):
        pts = [(f, c) for f, c in points if c.x == a]
        shift = 0.006 * (i - (len(arms) - 1) / 2)  # the arms side by side at one target
        ax.errorbar([f + shift for f, _ in pts], [c.interval.mean for _, c in pts],
                    yerr=[[c.interval.mean - c.interval.lo for _, c in pts],
                          [c.interval.hi - c.interval.mean for _, c in pts]],
                    fmt="D", capsize=3, color=f"C{i}",
                    label=f"this study: {a} - thin ({pts[0][1].family.split(', ')[1]})")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlabel("fraction of the dense network's MACs kept")
    ax.set_ylabel("top-1 difference (points)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, stem)


def _fmt_iv(c) -> str:
    iv = c.interval
    if math.isnan(iv.lo):
        return f"{iv.mean:+.2f} | - | -"
    return f"{iv.mean:+.2f} | [{iv.lo:+.2f}, {iv.hi:+.2f}] | {c.p_holm:.3g}"


def comparison_table(comps) -> list[str]:
    out = ["| target, E | arm (vs thin) | n | mean diff | 95% interval | Holm p | verdict |",
           "|---|---|---|---|---|---|---|"]
    for c in comps:
        out.append(f"| {c.family} | {c.x} | {c.interval.n} | {_fmt_iv(c)} | "
                   f"**{c.verdict}** |")
    return out


def _budget(s: dict) -> str:
    return (f"{s['epochs_total']:g} epochs from init, {s['images']:,} images, "
            f"{s['train_flops'] / 1e12:.2f} T training FLOPs (test top-1 {s['mean']:.2f})")


def findings(comps, summary: list[dict], delta: float) -> list[str]:
    """The verdicts in words, one sentence a comparison, every figure from the rows: the
    mean paired difference, its interval, n, Holm's p, the verdict against the margin and
    each side's training budget (a study's docs open with these)."""
    budget = {(s["arm"], analysis.family(s["target"], s["E"])): s for s in summary}
    out = []
    for c in comps:
        iv = c.interval
        ci = ("no interval" if math.isnan(iv.lo)
              else f"95% interval [{iv.lo:+.2f}, {iv.hi:+.2f}]")
        text = (f"At {c.family}, {c.x} minus {c.ref}: {iv.mean:+.2f} top-1 points ({ci}, "
                f"n = {iv.n} paired seeds, Holm p = {c.p_holm:.3g}): **{c.verdict}** "
                f"(margin +-{delta:g}).")
        x, ref = budget.get((c.x, c.family)), budget.get((c.ref, c.family))
        if x and ref:
            text += f" Budget: {c.x} {_budget(x)}; {c.ref} {_budget(ref)}."
        out.append(text)
    return out


def arm_table(summary: list[dict]) -> list[str]:
    out = ["| target | E | arm | n | test top-1 mean (sd) | val top-1 | LR | epochs from "
           "init | images seen | training FLOPs | params | MACs | median wall per run |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lr = "-" if s["lr"] is None else f"{s['lr']:g}"
        sd = "-" if math.isnan(s["sd"]) else f"{s['sd']:.2f}"
        out.append(f"| {s['target']} | {s['E']:g} | {s['arm']} | {s['n']} | {s['mean']:.2f} "
                   f"({sd}) | {s['val']:.2f} | {lr} | {s['epochs_total']:.2f} | "
                   f"{s['images']:,} | {s['train_flops'] / 1e12:.2f} T | {s['params']:,.0f} | "
                   f"{s['macs'] / 1e6:.2f} M | {s['wall_s']:.0f} s |")
    return out


def selection_table(rows: list[dict]) -> list[str]:
    sel = sorted((r for r in rows if r.get("selection")),
                 key=lambda r: (analysis.arm_name(r), r["lr"]))
    out = ["| arm | LR | val top-1 (seed 0, first target, ref E) | chosen |", "|---|---|---|---|"]
    for r in sel:
        out.append(f"| {analysis.arm_name(r)} | {r['lr']:g} | {r['val_top1']:.2f} | "
                   f"{'yes' if r.get('top1') is not None else ''} |")
    return out


def oneshot_table(rows: list[dict]) -> list[str]:
    out = ["| target | criterion | seeds | val top-1 before BN recalibration | after | test "
           "top-1 after |", "|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["arm"] == "oneshot":
            groups.setdefault((r["target"], r["criterion"]), []).append(r)
    mean = lambda v: sum(v) / len(v) if v else math.nan  # noqa: E731
    for (t, c), g in sorted(groups.items()):
        before = [r["val_top1_no_recal"] for r in g if r.get("val_top1_no_recal") is not None]
        test = [r["top1"] for r in g if r.get("top1") is not None]
        out.append(f"| {t} | {c} | {len(g)} | {mean(before):.2f} | "
                   f"{mean([r['val_top1'] for r in g]):.2f} | {mean(test):.2f} |")
    return out


def cost_table(rows: list[dict], cpu: str) -> list[str]:
    """Run time per arm, target and E (LR-grid runs included): the runs and their median
    wall time. A run's wall time includes whatever shared the CPU with it or paused it; the
    median is not moved by a few such runs, so the total at the medians is what the study
    costs alone, beside the total as measured."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        key = (r["arm"], r["target"] or "-", r.get("E") or 0.0)
        groups.setdefault(key, []).append(r.get("wall_s") or 0.0)
    if not groups:
        return ["nothing ran yet"]
    out = ["| arm | target | E | runs | median wall per run | wall in all |",
           "|---|---|---|---|---|---|"]
    for (arm, target, E), v in sorted(groups.items()):
        out.append(f"| {arm} | {target} | {E:g} | {len(v)} | {statistics.median(v):.0f} s | "
                   f"{sum(v) / 60:.0f} min |")
    measured = sum(sum(v) for v in groups.values())
    typical = sum(len(v) * statistics.median(v) for v in groups.values())
    return out + ["", f"In all {measured / 3600:.2f} h of wall time as measured, "
                  f"{typical / 3600:.2f} h at each group's median ({cpu}). A run's wall time "
                  "includes anything that shared the CPU with it or paused it."]


def read_literature(path: str, networks=("resnet20", "resnet56")) -> list[dict]:
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["network"] in networks
                and r["dataset"] == "CIFAR-10"]


def lit_points(comps, rows: list[dict], p: Protocol) -> list:
    dense = {r["target"]: r["target_macs"] for r in rows}
    base = max(dense.values()) if dense else 1
    parts = [(analysis.family_parts(c.family), c) for c in comps]
    return [(dense[t] / base, c) for (t, E), c in parts
            if c.x.startswith("pruned+ft") and E == p.ref_epochs and t in dense]


def markdown(p: Protocol, rows: list[dict], comps, plots: dict, text: dict) -> str:
    """report.md: the verdicts first, then the arms, selection, one-shot rows, cost, limits."""
    summary = analysis.arm_summary(rows)
    commits = sorted({r["commit"] for r in rows if r.get("commit")})
    wall = sum(r.get("wall_s") or 0 for r in rows)
    lines = [f"# {text['title']}", "", text.get("data", ""), "",
             f"Protocol: n = {p.seeds} paired seeds per arm (seed s: the same batches and the "
             f"same dense network in every arm), equivalence margin delta = {p.delta:g} "
             f"top-1 points (declared in the config before any run), 95% t-intervals of the "
             "mean paired difference, Holm correction over the arms compared at one target "
             "and E (`thinjax.stats`). Dense network: "
             f"{p.network_name}, T = {p.dense_epochs:g} epochs in-domain; thin: the "
             f"uniform network at the target width trained from scratch for T + E epochs; "
             f"pruned+ft: the dense network pruned one-shot ({p.allocation} allocation, BN "
             f"recalibrated on {p.recalibrate_bn} batches) then fine-tuned E epochs. Recipe: "
             f"{p.recipe_name or p.recipe}; weights: raw (no EMA). LRs chosen per arm on the "
             f"validation split ({p.val_split}); the test split ({p.test_split}) is read only "
             "for the reported numbers.", "",
             f"Code: commit(s) {', '.join(commits) or '?'}; {len(rows)} runs, "
             f"{wall / 3600:.1f} h of run time in all.", "",
             "## Verdicts: each arm against thin at equal cost and equal epochs", ""]
    lines += comparison_table(comps) or ["(no comparison has paired seeds yet)"]
    if comps:
        lines += ["", "## In words", ""] + [f"- {x}" for x in findings(comps, summary, p.delta)]
    for key, title in (("forest", "Forest plot"), ("curve", "Difference against E"),
                       ("literature", "Published drops beside this study")):
        if plots.get(key):
            lines += ["", f"## {title}", "", f"![{title}]({os.path.basename(plots[key][0])})"]
    lines += ["", "## Arms (test split unless marked val)", ""] + arm_table(summary)
    lines += ["", "## LR selection (validation split)", ""] + selection_table(rows)
    lines += ["", "## One-shot pruning, 0 epochs (BN recalibration)", ""] + oneshot_table(rows)
    lines += ["", "## Cost", ""] + cost_table(rows, text.get("cpu") or "CPU not named")
    lines += ["", "## Limits", ""]
    lines += [f"- {x}" for x in text.get("limits", ())]
    lines += ["", "## Rerunning one row", "", text.get("rerun", "")]
    return "\n".join(lines) + "\n"
