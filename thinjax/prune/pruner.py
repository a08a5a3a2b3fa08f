"""One pruning decision: criterion scores -> allocation -> masks (used by the training loop,
by `thinjax.convert` and by `thinjax.prune_model`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from thinjax.cost import count
from thinjax.errors import TargetError
from thinjax.plan import Plan
from thinjax.prune.allocate import Allocation, Target, allocate
from thinjax.prune.criteria import ScoreInputs, score_groups
from thinjax.prune.materialize import small_plan

if TYPE_CHECKING:  # spec imports the modules that import this one
    from thinjax.prune.spec import PruneSpec


def target_from_config(cfg) -> Target:
    return Target(cfg.target_kind, float(cfg.target))


def compute_masks(plan: Plan, variables: dict, cfg: PruneSpec, target: Target, *,
                  masks=None, model=None, batches=None, input_size: int = 32, seed: int = 0
                  ) -> Allocation:
    """Scores `variables` with ``cfg.criterion`` and allocates `target` (`cfg`: a
    `thinjax.prune.spec.PruneSpec`)."""
    inputs = ScoreInputs(plan, variables, masks=masks, model=model, batches=batches,
                         num_batches=cfg.taylor_batches, seed=seed,
                         members=cfg.score_members, fpgm_p=int(cfg.fpgm_p))
    scores = score_groups(inputs, cfg.criterion, cfg.reduce)
    return allocate(plan, scores, target, method=cfg.allocation, masks=masks,
                    round_to=cfg.round_to, allow_block_removal=cfg.allow_block_removal,
                    input_size=input_size, normalization=cfg.normalization,
                    group_ratios=tuple(tuple(x) for x in cfg.group_ratios))


def check_target(plan: Plan, masks: dict | None, size: int, kind: str | None,
                 target: float | None, prefix: str = "--") -> None:
    """Refuses a target the network already meets: pruning to it would remove nothing.
    The message spells the fields as flags (`prefix` ``--``) or, with ``prefix=""``, as
    keyword arguments."""
    if kind is None:
        return
    current = small_plan(plan, masks) if masks is not None else plan
    c, dense = count(current, size), count(plan, size)
    have = {"params": c.params, "macs": c.macs, "ratio": 0.0,
            "params_fraction": c.params / dense.params, "macs_fraction": c.macs / dense.macs}
    value = float(target)
    nothing = value <= 0 if kind == "ratio" else value >= have.get(kind, -1)
    if nothing:
        fields = f"{prefix}target_kind={kind}{' ' if prefix else ', '}{prefix}target={value:g}"
        raise TargetError(f"{fields}: the network already meets it ({c.params:,} params, "
                          f"{c.macs:,} MACs at {size}px), so there is nothing to prune; give "
                          "a target below its current cost")
