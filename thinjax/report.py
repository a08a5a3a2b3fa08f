"""Study results -> CSV, Pareto fronts, accuracy-vs-cost plots and a Markdown report.

Rows are dicts with the CSV columns (`COLUMNS`). The ThinResNet curve is the sweep's
(cost, top-1) points; `interpolate` reads it at any cost, linearly in log10(cost), inside
the sweep's range only (outside it says so instead of extrapolating).
"""

from __future__ import annotations

import csv
import math
import os

COLUMNS = ("name", "method", "kind", "params", "macs", "top1", "top5", "epochs", "source")
KINDS = ("thin", "pruned", "extra")


def write_csv(path: str, rows: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    os.replace(tmp, path)


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("params", "macs"):
            r[k] = int(float(r[k])) if r.get(k) not in (None, "") else None
        for k in ("top1", "top5", "epochs"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
    return rows


def interpolate(curve: list[tuple[float, float]], x: float,
                extrapolate: float = 0.0) -> float | None:
    """Top-1 of the curve [(cost, top1), ...] at cost x, linear in log10(cost). Outside the
    curve's range: None, unless x is within `extrapolate` (relative) of the nearest end,
    where the end segment is extended (a pruned network that lands 1% below the thinnest
    sweep member still gets a curve value)."""
    pts = sorted((c, a) for c, a in curve if c and a is not None)
    if not pts:
        return None
    for c, a in pts:
        if math.isclose(c, x, rel_tol=1e-9):
            return a
    for (c0, a0), (c1, a1) in zip(pts, pts[1:]):
        if c0 <= x <= c1:
            t = (math.log10(x) - math.log10(c0)) / (math.log10(c1) - math.log10(c0))
            return a0 + t * (a1 - a0)
    lo, hi = pts[0][0], pts[-1][0]
    near = x < lo and x >= lo * (1 - extrapolate) or x > hi and x <= hi * (1 + extrapolate)
    if not near:
        return None
    if len(pts) == 1:
        return pts[0][1]
    (c0, a0), (c1, a1) = (pts[0], pts[1]) if x < lo else (pts[-2], pts[-1])
    t = (math.log10(x) - math.log10(c0)) / (math.log10(c1) - math.log10(c0))
    return a0 + t * (a1 - a0)


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (cost <= and top-1 >=, one strictly)."""
    out = []
    for i, (c, a) in enumerate(points):
        if not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a)
                   for j, (c2, a2) in enumerate(points) if j != i):
            out.append(i)
    return out


EXTRAPOLATE = 0.15  # compare up to 15% beyond the sweep's cheapest / dearest network


def comparisons(rows: list[dict], key: str = "macs") -> list[str]:
    """One sentence per pruned/extra network: its distance to the ThinResNet curve."""
    curve = [(r[key], r["top1"]) for r in rows if r["kind"] == "thin" and r["top1"] is not None]
    unit = "MACs" if key == "macs" else "parameters"
    out = []
    for r in rows:
        if r["kind"] == "thin" or r["top1"] is None or not r[key]:
            continue
        ref = interpolate(curve, r[key], EXTRAPOLATE)
        inside = interpolate(curve, r[key]) is not None
        if ref is None:
            out.append(f"At {_fmt(r[key])} {unit}, {r['name']} reaches {r['top1']:.2f}%; that "
                       "cost is outside the ThinResNet sweep's range, so there is no curve "
                       "value to compare with (add a width to the sweep).")
            continue
        d = r["top1"] - ref
        where = "above" if d >= 0 else "below"
        out.append(f"At {_fmt(r[key])} {unit}, {r['name']} ({r['method']}) reaches "
                   f"{r['top1']:.2f}%, {abs(d):.2f} points {where} the ThinResNet curve "
                   f"({ref:.2f}%, " + ("interpolated on the sweep)." if inside else
                                        "extrapolated slightly beyond the sweep)."))
    return out


def _fmt(x: float) -> str:
    for unit, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= unit:
            return f"{x / unit:.2f} {s}"
    return f"{x:.0f}"


def plot(rows: list[dict], literature: list[dict], path_stem: str, key: str,
         title: str, eval_label: str) -> list[str]:
    """Two panels, log x: measured here (ThinResNet sweep line, pruned points, Pareto front
    ringed) and published (literature points, the release's own ThinResNet figures).
    Writes PNG and SVG; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    unit = "MACs" if key == "macs" else "parameters"
    fig, axes = plt.subplots(1, 2, figsize=(16, 6), constrained_layout=True,
                             gridspec_kw={"width_ratios": [1, 1]})
    ax = axes[0]
    thin = sorted((r[key], r["top1"]) for r in rows if r["kind"] == "thin" and r["top1"])
    if thin:
        ax.plot(*zip(*thin), "-o", color="C0", lw=2, ms=7, label="ThinResNet (width sweep)")
    methods = sorted({r["method"] for r in rows if r["kind"] != "thin"})
    markers = "s^vD<>pPX*h"
    for i, m in enumerate(methods):
        pts = [(r[key], r["top1"]) for r in rows
               if r["kind"] != "thin" and r["method"] == m and r["top1"] is not None]
        if pts:
            ax.plot(*zip(*pts), markers[i % len(markers)], color=f"C{i + 1}", ms=8,
                    ls="none", label=m)
    measured = [(r[key], r["top1"]) for r in rows if r["top1"] is not None and r[key]]
    front = sorted(measured[i] for i in pareto(measured))
    if front:
        ax.plot(*zip(*front), "o", mfc="none", mec="black", ms=14, mew=1.2,
                label="Pareto front")
    fig.suptitle(title, fontsize=13)
    ax.set_title(f"measured here ({eval_label})", fontsize=11)
    ax2 = axes[1]
    lit = [r for r in literature if r.get("pruned_top1") and r.get(key)]
    groups: dict[str, list] = {}
    for r in lit:
        groups.setdefault(r["method"], []).append((float(r[key]), float(r["pruned_top1"])))
    for i, (m, pts) in enumerate(sorted(groups.items())):
        style = dict(color="C0", marker="o", ms=9) if m.startswith("ThinResNet") else \
            dict(color=f"C{(i % 9) + 1}", marker=markers[i % len(markers)], ms=7)
        ax2.plot(*zip(*sorted(pts)), ls="-" if m.startswith("ThinResNet") else "none",
                 label=m, **style)
    pub = [(float(r[key]), float(r["pruned_top1"])) for r in lit]
    pfront = sorted(pub[i] for i in pareto(pub))
    if pfront:
        ax2.plot(*zip(*pfront), "o", mfc="none", mec="black", ms=14, mew=1.2,
                 label="Pareto front")
    ax2.set_title("published results (original test sets, their own baselines)", fontsize=11)
    for a in axes:
        a.set_xscale("log")
        a.set_xlabel(f"{unit} (log scale)")
        a.set_ylabel("top-1 accuracy (%)")
        a.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    out = []
    for ext in ("png", "svg"):
        p = f"{path_stem}.{ext}"
        fig.savefig(p, dpi=130)
        out.append(p)
    plt.close(fig)
    return out


def markdown(title: str, rows: list[dict], literature: list[dict], plots: dict,
             failures: list[str], notes: str = "") -> str:
    lines = [f"# {title}", "", notes, "", "## Networks", "",
             "| name | method | params | MACs | top-1 | top-5 | epochs | source |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["kind"] != "thin", r["macs"] or 0)):
        lines.append(
            f"| {r['name']} | {r['method']} | {r['params']:,} | {_fmt(r['macs'])} | "
            + (f"{r['top1']:.2f}%" if r["top1"] is not None else "-") + " | "
            + (f"{r['top5']:.2f}%" if r["top5"] is not None else "-") + " | "
            + (f"{r['epochs']:g}" if r["epochs"] is not None else "-") + f" | {r['source']} |")
    lines += ["", "## Accuracy against cost", ""]
    for key, files in plots.items():
        png = os.path.basename(files[0])
        lines.append(f"![top-1 against {key}]({png})  ")
        lines.append(f"({os.path.basename(files[1])} is the same as SVG)")
        lines.append("")
    lines += ["## At equal cost", ""]
    for key in ("macs", "params"):
        for s in comparisons(rows, key):
            lines.append(f"- {s}")
    if literature:
        lines += ["", "## Published results (original test sets)", "",
                  "| method | baseline top-1 | pruned top-1 | params | MACs | citation |",
                  "|---|---|---|---|---|---|"]
        for r in literature:
            p = f"{int(float(r['params'])):,}" if r.get("params") else "-"
            m = _fmt(float(r["macs"])) if r.get("macs") else "-"
            lines.append(f"| {r['method']} | {r.get('baseline_top1') or '-'} | "
                         f"{r.get('pruned_top1') or '-'} | {p} | {m} | {r['citation']} |")
    if failures:
        lines += ["", "## Runs that failed", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"
