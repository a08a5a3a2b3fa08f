"""Study results -> CSV, Pareto fronts, accuracy-vs-cost plots and a Markdown report.

Rows are dicts with the CSV columns (`COLUMNS`): what a network is (name, method, kind,
arm, target, criterion), what it costs (params, macs), what it scores (top1, top5) and the
training budget that produced it (`BUDGET`: init source and its epochs, epochs here, images
seen, recipe, seed, EMA or raw weights). The report compares two networks only when their
budgets are equal (`budget_key`) and their costs agree within `COST_TOLERANCE`; a network
with no equal-budget partner is placed against the interpolated ThinResNet sweep, and the
sentence says the budgets differ. Several seeds of one network give a spread (max - min),
drawn as error bars; a difference is decided only from >= 3 paired seeds (`verdict`).
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics

from thinjax import stats

BUDGET = ("init", "init_epochs", "epochs", "images_seen", "recipe", "seed", "weights")
COLUMNS = ("name", "method", "kind", "arm", "target", "criterion", "params", "macs", "top1",
           "top5") + BUDGET + ("source",)
KINDS = ("thin", "pruned", "extra")
# arms that are uniform ThinResNets: the reference each other arm of equal budget meets
REFERENCE_ARMS = ("release", "thin", "thin+ft", "scratch-uniform")
COST_TOLERANCE = 0.03   # networks within 3% of each other's cost count as equal cost
EXTRAPOLATE = 0.15  # compare up to 15% beyond the sweep's cheapest / dearest network
_INTS = ("params", "macs", "images_seen")
_FLOATS = ("top1", "top5", "init_epochs", "epochs")


def write_csv(path: str, rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> None:
    """`rows` as a CSV with `columns` (None as empty), written atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
    os.replace(tmp, path)


def read_csv(path: str) -> list[dict]:
    """The rows of a results.csv, numbers parsed; budget columns an older file lacks are
    None (fill them with `fill_budget`)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in COLUMNS:
            r.setdefault(k, "")
        for k in _INTS:
            r[k] = int(float(r[k])) if r.get(k) not in (None, "") else None
        for k in _FLOATS:
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
        for k in ("init", "recipe", "seed", "weights", "arm", "target", "criterion"):
            r[k] = r[k] if r.get(k) not in (None, "") else None
    return rows


def fill_budget(row: dict, base: str, base_epochs: float, finetune_recipe: str,
                train_images: int) -> dict:
    """Budget columns for a row written before they existed (a release ThinResNet or a
    wide network pruned from `base`, trained `base_epochs`, then maybe fine-tuned with
    `finetune_recipe`)."""
    r = dict(row)
    if r.get("arm"):
        return r
    ep = r.get("epochs") or 0.0
    if r["kind"] == "thin":
        r.update(arm="release", init=r["source"], init_epochs=ep, epochs=0.0, images_seen=0,
                 recipe="-", weights="ema")
    elif r["kind"] == "pruned":
        m = re.search(r"@ (.*?) (macs|params)", r["name"])
        r.update(arm="pruned+ft" if ep else "pruned", init=os.path.basename(base),
                 init_epochs=base_epochs, epochs=ep, images_seen=int(ep * train_images),
                 recipe=finetune_recipe if ep else "-", weights="raw" if ep else "ema",
                 criterion=r["method"].split()[0], target=m.group(1) if m else None)
    r.setdefault("seed", None)
    return r


def interpolate(curve: list[tuple[float, float]], x: float,
                extrapolate: float = 0.0) -> float | None:
    """Top-1 of the curve [(cost, top1), ...] at cost x, linear in log10(cost). Points of
    equal cost (two networks of one cost, or one network listed twice) count as one point,
    their mean; the curve need not be monotone (each segment joins neighbours in cost).
    Outside the curve's range: None, unless x is within `extrapolate` (relative) of the
    nearest end, where the end segment is extended (flat if there is only one point)."""
    pts = _merge_equal_costs(curve)
    if not pts:
        return None
    for c, a in pts:
        if math.isclose(c, x, rel_tol=1e-9):
            return a
    for p0, p1 in zip(pts, pts[1:]):
        if p0[0] <= x <= p1[0]:
            return _on_segment(p0, p1, x)
    lo, hi = pts[0][0], pts[-1][0]
    near = x < lo and x >= lo * (1 - extrapolate) or x > hi and x <= hi * (1 + extrapolate)
    if not near:
        return None
    if len(pts) == 1:
        return pts[0][1]
    return _on_segment(*((pts[0], pts[1]) if x < lo else (pts[-2], pts[-1])), x)


def _merge_equal_costs(curve) -> list[tuple[float, float]]:
    by: dict[float, list[float]] = {}
    for c, a in curve:
        if c and c > 0 and a is not None:
            key = next((k for k in by if math.isclose(k, c, rel_tol=1e-9)), c)
            by.setdefault(key, []).append(float(a))
    return sorted((c, sum(a) / len(a)) for c, a in by.items())


def _on_segment(p0, p1, x) -> float:
    (c0, a0), (c1, a1) = p0, p1
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


# -- budgets, seeds and noise -------------------------------------------------------------
def budget_key(r: dict) -> tuple:
    """Two rows have equal budgets when these agree: the epochs behind the initial weights,
    the epochs here, the recipe and the weights scored (EMA or raw)."""
    return (r.get("init_epochs"), r.get("epochs"), r.get("recipe"), r.get("weights"))


def budget_text(r: dict) -> str:
    ie, e = r.get("init_epochs"), r.get("epochs")
    return f"{'?' if ie is None else f'{ie:g}'} + {'?' if e is None else f'{e:g}'} epochs"


def budget_long(r: dict) -> str:
    rec = r.get("recipe") or "-"
    return (f"{budget_text(r)} ({'recipe ' + rec + ', ' if rec != '-' else ''}"
            f"{r.get('weights') or '?'} weights)")


def aggregate(rows: list[dict]) -> list[dict]:
    """Rows of one network trained with several seeds (same name and budget) as one group:
    mean top-1, number of seeds and spread (max - min; None for one seed)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("top1") is not None:
            groups.setdefault((r["name"], budget_key(r)), []).append(r)
    out = []
    for (_, key), rs in groups.items():
        accs = [r["top1"] for r in rs]
        g = dict(rs[0])
        g.update(top1=statistics.fmean(accs), n=len(rs), rows=rs, key=key,
                 spread=max(accs) - min(accs) if len(rs) > 1 else None,
                 seeds=[r.get("seed") for r in rs],
                 macs=round(statistics.fmean(r["macs"] for r in rs)) if rs[0]["macs"] else None,
                 params=round(statistics.fmean(r["params"] for r in rs))
                 if rs[0]["params"] else None)
        out.append(g)
    return out


def verdict(a: dict, ref: dict) -> str:
    """Whether two groups differ: decided only from >= 3 paired seeds (the seeds both ran),
    by the 95% t-interval of the mean paired difference (`thinjax.stats`); otherwise
    "undecided". No equivalence is claimed here: that needs a margin declared in advance,
    which a protocol study has (thinjax.protocol)."""
    ra = {r.get("seed"): r["top1"] for r in a.get("rows", [a])}
    rb = {r.get("seed"): r["top1"] for r in ref.get("rows", [ref])}
    seeds = sorted(s for s in set(ra) & set(rb) if s is not None)
    if len(seeds) < 3:
        return (f"undecided: {len(seeds)} paired seed(s), a verdict needs >= 3 "
                "(docs/study.md, the protocol)")
    iv = stats.paired_interval([ra[s] for s in seeds], [rb[s] for s in seeds])
    where = "excludes 0: differs" if iv.lo > 0 or iv.hi < 0 else "includes 0: undecided"
    return (f"paired over {iv.n} seeds {iv.mean:+.2f} points, 95% interval "
            f"[{iv.lo:+.2f}, {iv.hi:+.2f}] {where}")


def _seeds(g: dict) -> str:
    return f"{g['n']} seed{'s' if g['n'] > 1 else ''}"


def _close(a: float | None, b: float | None, tol: float = COST_TOLERANCE) -> bool:
    return bool(a and b) and abs(a / b - 1) <= tol


def equal_budget(rows: list[dict], key: str = "macs") -> tuple[list[str], set]:
    """One sentence per non-uniform network that has a uniform ThinResNet of equal budget
    and equal cost (within COST_TOLERANCE): the difference and its verdict. Also returns
    the names placed."""
    groups = aggregate(rows)
    unit = "MACs" if key == "macs" else "parameters"
    out, placed = [], set()
    for g in sorted(groups, key=lambda g: (g[key] or 0, str(g["key"]), g["name"])):
        if g["arm"] in REFERENCE_ARMS or not g[key]:
            continue
        refs = [h for h in groups if h["arm"] in REFERENCE_ARMS and h["key"] == g["key"]
                and _close(g[key], h[key])]
        if not refs:
            continue
        ref = min(refs, key=lambda h: abs(h[key] - g[key]))
        d = g["top1"] - ref["top1"]
        out.append(f"At {_fmt(g[key])} {unit} and {budget_long(g)}: {g['name']} reaches "
                   f"{g['top1']:.2f}% ({_seeds(g)}), {abs(d):.2f} points "
                   f"{'above' if d >= 0 else 'below'} {ref['name']} ({ref['top1']:.2f}%, "
                   f"{_seeds(ref)}, {_fmt(ref[key])} {unit}): {verdict(g, ref)}.")
        placed.add(g["name"])
    return out, placed


def comparisons(rows: list[dict], key: str = "macs", skip: set = frozenset()) -> list[str]:
    """One sentence per non-uniform network (not in `skip`): its distance to the
    interpolated ThinResNet sweep, naming both budgets and saying when they differ."""
    sweep = [r for r in rows if r.get("arm") in ("release", "thin") and r["top1"] is not None]
    curve = [(r[key], r["top1"]) for r in sweep]
    keys = {budget_key(r) for r in sweep}
    sweep_budget = budget_long(sweep[0]) if len(keys) == 1 else "mixed budgets"
    unit = "MACs" if key == "macs" else "parameters"
    out = []
    for g in aggregate(rows):
        if g["arm"] in REFERENCE_ARMS or not g[key] or g["name"] in skip:
            continue
        head = (f"At {_fmt(g[key])} {unit}, {g['name']} ({g['method']}; {budget_long(g)}; "
                f"{_seeds(g)}) reaches {g['top1']:.2f}%")
        ref = interpolate(curve, g[key], EXTRAPOLATE)
        if ref is None:
            out.append(head + "; that cost is outside the ThinResNet sweep's range, so there "
                       "is no curve value to compare with (add a width to the sweep).")
            continue
        d = g["top1"] - ref
        inside = interpolate(curve, g[key]) is not None
        same = keys == {g["key"]}
        out.append(head + f", {abs(d):.2f} points {'above' if d >= 0 else 'below'} the "
                   f"ThinResNet curve ({ref:.2f}%, "
                   + ("interpolated on the sweep" if inside else
                      "extrapolated slightly beyond the sweep")
                   + f"; sweep: {sweep_budget}): "
                   + ("equal budget." if same else "UNEQUAL BUDGET, so the gap measures the "
                      "difference in training as much as pruning."))
    return out


def _fmt(x: float) -> str:
    for unit, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= unit:
            return f"{x / unit:.2f} {s}"
    return f"{x:.0f}"


def drop_label(r: dict) -> str:
    acc, base = float(r["pruned_top1"]), r.get("baseline_top1")
    if not base:
        return f"{acc:.2f}" + (" (release)" if r["method"].startswith("ThinResNet") else
                               " (no baseline)")
    return f"{acc:.2f} (base {float(base):.2f}, {acc - float(base):+.2f})"


def limits(rows: list[dict], domain: str = "", not_run=(), failures=()) -> list[str]:
    """The report's "Limits" section: the budget of every arm, the data domain, the seeds
    and what was not run."""
    lines = ["## Limits", "", "Budgets per arm (init source and its epochs, epochs here, "
             "images seen here, recipe, seeds, weights scored):", ""]
    arms: dict[str, list[dict]] = {}
    for r in rows:
        arms.setdefault(r.get("arm") or r["kind"], []).append(r)
    for arm, rs in arms.items():
        lines.append(f"- {arm} ({len(rs)} network(s)): init {_vals(rs, 'init')}, "
                     f"{_vals(rs, 'init_epochs')} epochs; {_vals(rs, 'epochs')} epochs here, "
                     f"{_vals(rs, 'images_seen')} images seen; recipe {_vals(rs, 'recipe')}; "
                     f"seeds {_vals(rs, 'seed')}; {_vals(rs, 'weights')} weights.")
    lines += ["", f"- Data: {domain or 'not stated by the config.'}"]
    spreads = [g for g in aggregate(rows) if g["spread"] is not None]
    lines.append("- Seeds: " + ("; ".join(
        f"{g['name']} ({budget_text(g)}): {g['n']} seeds, spread {g['spread']:.2f} points"
        for g in spreads) + ". Every other network ran one seed. A spread of a few seeds is "
        "not a statistic: a difference is decided only from >= 3 paired seeds (a 95% "
        "t-interval of the paired differences); every other comparison is undecided."
        if spreads else "every network ran one seed, so no difference here is decided."))
    lines.append(f"- Equal cost means within {COST_TOLERANCE:.0%} of the MACs; comparisons "
                 "are made only between rows of equal budget, others are labelled.")
    left = list(not_run) + [f"failed: {f}" for f in failures]
    lines.append("- Not run: " + ("; ".join(left) if left else "nothing the config lists."))
    return lines


def _vals(rs: list[dict], k: str) -> str:
    vs = []
    for r in rs:
        v = r.get(k)
        v = "-" if v is None or v == "" else (f"{v:g}" if isinstance(v, float) else
                                              f"{v:,}" if isinstance(v, int) else str(v))
        if v not in vs:
            vs.append(v)
    return "/".join(vs) if len(vs) <= 3 else f"{vs[0]} ... {vs[-1]} ({len(vs)} values)"


def markdown(title: str, rows: list[dict], literature: list[dict], plots: dict,
             failures: list[str], notes: str = "", domain: str = "",
             not_run=()) -> str:
    lines = [f"# {title}", "", notes, ""] + _table(rows) + ["", "## Accuracy against cost", ""]
    for key, files in plots.items():
        lines.append(f"![top-1 against {key}]({os.path.basename(files[0])})  ")
        lines.append(f"({os.path.basename(files[1])} is the same as SVG)")
        lines.append("")
    eq, placed = equal_budget(rows, "macs")
    lines += ["## At equal cost and equal budget", ""] + [f"- {s}" for s in eq or [
        "No network has a uniform ThinResNet of equal budget and equal cost here."]]
    lines += ["", "## Against the ThinResNet sweep (budgets named; unequal ones labelled)", ""]
    for key in ("macs", "params"):
        lines += [f"- {s}" for s in comparisons(rows, key, placed if key == "macs" else set())]
    if literature:
        lines += [""] + _literature_table(literature)
    lines += [""] + limits(rows, domain, not_run, failures)
    if failures:
        lines += ["", "## Runs that failed", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"


def _table(rows: list[dict]) -> list[str]:
    lines = ["## Networks", "",
             "| name | arm | params | MACs | top-1 | top-5 | init (epochs) | epochs here | "
             "images seen | recipe | seed | weights | source |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {a: i for i, a in enumerate(REFERENCE_ARMS)}
    for r in sorted(rows, key=lambda r: (r.get("target") or "", order.get(r.get("arm"), 9),
                                         r["macs"] or 0, r["name"])):
        pct = lambda v: f"{v:.2f}%" if v is not None else "-"  # noqa: E731
        ie = r.get("init_epochs")
        lines.append(
            f"| {r['name']} | {r.get('arm') or r['kind']} | {r['params']:,} | "
            f"{_fmt(r['macs'])} | {pct(r['top1'])} | {pct(r['top5'])} | "
            f"{r.get('init') or '-'} ({'?' if ie is None else f'{ie:g}'}) | "
            + (f"{r['epochs']:g}" if r.get("epochs") is not None else "-")
            + f" | {_vals([r], 'images_seen')} | {r.get('recipe') or '-'} | "
            f"{_vals([r], 'seed')} | {r.get('weights') or '-'} | {r['source']} |")
    return lines


def _literature_table(literature: list[dict]) -> list[str]:
    lines = ["## Published results (original test sets, their own baselines)", "",
             "| method | top-1 (baseline, drop) | params | MACs | citation |",
             "|---|---|---|---|---|"]
    for r in literature:
        p = f"{int(float(r['params'])):,}" if r.get("params") else "-"
        m = _fmt(float(r["macs"])) if r.get("macs") else "-"
        acc = drop_label(r) if r.get("pruned_top1") else "- (not stated)"
        lines.append(f"| {r['method']} | {acc} | {p} | {m} | {r['citation']} |")
    return lines
