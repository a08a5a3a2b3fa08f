"""When to prune, and how much of the final target each pruning event reaches.

``prune.schedule``:
  ``oneshot``    one event at ``start_epoch`` (0: before the first step), then fine-tune;
  ``iterative``  ``num_events`` events every ``every_epochs`` from ``start_epoch``, each
                 removing an equal share (event k of n reaches k/n of the way);
  ``gradual``    the polynomial ramp of Zhu & Gupta (2017): events every ``every_epochs``
                 from ``start_epoch`` to ``end_epoch``, event k of n reaching
                 1 - (1 - k/n)^3 of the way (fast at first, gentle at the end).
"""

from __future__ import annotations

import math

from thinjax.prune.allocate import Target

SCHEDULES = ("none", "oneshot", "iterative", "gradual")


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
