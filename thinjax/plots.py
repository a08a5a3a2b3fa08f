"""A study's accuracy-vs-cost figure: measured here (the ThinResNet sweep, every other arm
with its budget, seed spread, Pareto front) beside published results (`plot`)."""

from __future__ import annotations

from thinjax import figures
from thinjax.errors import require
from thinjax.report import aggregate, budget_key, budget_text, drop_label, pareto


def _label(g: dict, sweep_key) -> str:
    lab = f"{g['arm'] or g['kind']} {g.get('criterion') or ''}".strip()
    lab += f" [{budget_text(g)}]"
    return lab + (" (unequal budget to the sweep)" if sweep_key and g["key"] != sweep_key
                  else "")


def _measured_panel(ax, rows: list[dict], key: str) -> None:
    sweep = sorted((r[key], r["top1"]) for r in rows
                   if r.get("arm") in ("release", "thin") and r["top1"] is not None)
    sw = [r for r in rows if r.get("arm") in ("release", "thin")]
    sweep_key = budget_key(sw[0]) if sw else None
    if sweep:
        ax.plot(*zip(*sweep), "-o", color="C0", lw=2, ms=6,
                label=f"ThinResNet sweep [{budget_text(sw[0])}]")
    groups: dict[str, list] = {}
    for g in aggregate([r for r in rows if r.get("arm") not in ("release", "thin")]):
        groups.setdefault(_label(g, sweep_key), []).append(g)
    markers = "s^vD<>pPX*h"
    for i, (lab, gs) in enumerate(sorted(groups.items())):
        xs, ys = [g[key] for g in gs], [g["top1"] for g in gs]
        err = [g["spread"] / 2 if g["spread"] else 0 for g in gs]
        ax.errorbar(xs, ys, yerr=err, fmt=markers[i % len(markers)], color=f"C{i % 9 + 1}",
                    ms=7, label=lab, mfc="none" if "unequal" in lab else None)
    measured = [(r[key], r["top1"]) for r in rows if r["top1"] is not None and r[key]]
    front = sorted(measured[i] for i in pareto(measured))
    if front:
        ax.plot(*zip(*front), "o", mfc="none", mec="black", ms=14, mew=1.2,
                label="Pareto front")


def _published_panel(ax, literature: list[dict], key: str) -> None:
    """Published points, each labelled with its baseline and drop; the release's
    ThinResNet figures (original test set) as stars."""
    lit = [r for r in literature if r.get("pruned_top1") and r.get(key)]
    markers = "s^vD<>pPX*h"
    groups: dict[str, list] = {}
    for r in lit:
        groups.setdefault(r["method"], []).append(r)
    for i, (m, rs) in enumerate(sorted(groups.items())):
        pts = sorted((float(r[key]), float(r["pruned_top1"])) for r in rs)
        if m.startswith("ThinResNet"):
            ax.plot(*zip(*pts), "*", color="C0", ms=15, label=m + ", original test set")
        else:
            ax.plot(*zip(*pts), markers[i % len(markers)], color=f"C{(i % 9) + 1}", ms=7,
                    ls="none", label=m)
        for r in rs:
            ax.annotate(drop_label(r), (float(r[key]), float(r["pruned_top1"])),
                        fontsize=5.5, xytext=(3, 3), textcoords="offset points")
    pub = [(float(r[key]), float(r["pruned_top1"])) for r in lit]
    pfront = sorted(pub[i] for i in pareto(pub))
    if pfront:
        ax.plot(*zip(*pfront), "o", mfc="none", mec="black", ms=14, mew=1.2,
                label="Pareto front")


def plot(rows: list[dict], literature: list[dict], path_stem: str, key: str,
         title: str, eval_label: str) -> list[str]:
    """Two panels, log x: measured here (the ThinResNet sweep line, every other arm with
    its budget in the legend, open markers where the budget differs from the sweep's,
    seed spread as error bars, Pareto front ringed) and published (literature points with
    baseline and drop, the release's ThinResNet figures). Writes PNG and SVG."""
    matplotlib = require("matplotlib", "plot", "plotting")  # heavy: only when drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed
    unit = "MACs" if key == "macs" else "parameters"
    fig, axes = plt.subplots(1, 2, figsize=(17, 6.5), constrained_layout=True)
    _measured_panel(axes[0], rows, key)
    _published_panel(axes[1], literature, key)
    fig.suptitle(title, fontsize=13)
    axes[0].set_title(f"measured here ({eval_label})", fontsize=11)
    axes[1].set_title("published (original test sets; label: top-1 (baseline, drop))",
                      fontsize=11)
    for a in axes:
        a.set_xscale("log")
        a.set_xlabel(f"{unit} (log scale)")
        a.set_ylabel("top-1 accuracy (%)")
        a.grid(True, which="both", alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                     frameon=False)
    out = figures.save(fig, path_stem, dpi=130)
    plt.close(fig)
    return out
