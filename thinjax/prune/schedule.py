"""When to prune, and how much of the final target each pruning event reaches.

``prune.schedule``:
  ``oneshot``    one event at ``start_epoch`` (0: before the first step), then fine-tune;
  ``iterative``  ``num_events`` events every ``every_epochs`` from ``start_epoch``, each
                 removing an equal share (event k of n reaches k/n of the way);
  ``gradual``    the polynomial ramp of Zhu & Gupta (2017): events every ``every_epochs``
                 from ``start_epoch`` to ``end_epoch``, event k of n reaching
                 1 - (1 - k/n)^3 of the way (fast at first, gentle at the end);
  ``soft``       soft filter pruning (He et al. 2018): events every ``every_epochs`` from
                 ``start_epoch`` to ``end_epoch``, each at the full target. Every event but
                 the last is *soft* (`is_soft`): the lowest-scoring channels are scored
                 afresh and their filters zeroed (`thinjax.prune.soft.soft_event`), but no
                 mask is kept, so they train on and may recover; the last event is the
                 ordinary hard one (masks kept, then materialised).
"""

from __future__ import annotations

import math

from thinjax.prune.allocate import Target

SCHEDULES = ("none", "oneshot", "iterative", "gradual", "soft")


def events(cfg, steps_per_epoch: int, total_steps: int) -> list[tuple[int, float]]:
    """[(step, progress in (0, 1])]: prune when `step` optimizer steps have been taken."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"prune.schedule {cfg.schedule!r} unknown; use one of "
                         f"{', '.join(SCHEDULES)}")
    if cfg.schedule == "none":
        return []
    at = lambda epoch: int(round(epoch * steps_per_epoch))  # noqa: E731
    start = at(cfg.start_epoch)
    if cfg.schedule == "oneshot":
        out = [(start, 1.0)]
    elif cfg.schedule == "iterative":
        n = int(cfg.num_events)
        if n < 1:
            raise ValueError(f"prune.num_events must be >= 1, got {n}")
        out = [(start + at(k * cfg.every_epochs), (k + 1) / n) for k in range(n)]
    elif cfg.schedule == "soft":
        out = _soft_events(start, at(cfg.end_epoch), max(1, at(cfg.every_epochs)), cfg)
    else:
        end = at(cfg.end_epoch)
        every = max(1, at(cfg.every_epochs))
        if end <= start:
            raise ValueError(f"prune.end_epoch ({cfg.end_epoch}) must come after "
                             f"prune.start_epoch ({cfg.start_epoch}) for a gradual schedule")
        n = max(1, math.ceil((end - start) / every))
        out = [(min(start + k * every, end), 1 - (1 - k / n) ** 3) for k in range(1, n + 1)]
    if out[-1][0] >= total_steps:
        raise ValueError(f"the last pruning event (step {out[-1][0]}) is not before the end of "
                         f"training (step {total_steps}); prune earlier or train longer")
    return out


def _soft_events(start: int, end: int, every: int, cfg) -> list[tuple[int, float]]:
    """Soft filter pruning: an event every `every` steps from `start` to `end` (inclusive),
    each at the full target."""
    if end <= start:
        raise ValueError(f"prune.end_epoch ({cfg.end_epoch}) must come after "
                         f"prune.start_epoch ({cfg.start_epoch}) for a soft schedule")
    n = math.ceil((end - start) / every)
    steps = sorted({min(start + k * every, end) for k in range(n + 1)})
    return [(s, 1.0) for s in steps]


def is_soft(cfg, k: int, n: int) -> bool:
    """Whether event `k` (0-based) of `n` is a soft one: every event of a ``soft`` schedule
    but its last."""
    return cfg.schedule == "soft" and k < n - 1


def step_target(final: Target, progress: float, start_params: int, start_macs: int) -> Target:
    """The target of an intermediate event: `progress` of the way from the network at the
    start of pruning to the final target."""
    kind, value = final.absolute(start_params, start_macs)
    if progress >= 1.0:
        return Target(kind, value)
    if kind == "ratio":
        return Target("ratio", value * progress)
    start = start_params if kind == "params" else start_macs
    return Target(kind, start - progress * (start - value))
