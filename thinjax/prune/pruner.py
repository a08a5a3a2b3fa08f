"""One pruning decision: criterion scores -> allocation -> masks (used by the training loop
and by `thinjax.convert`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from thinjax.plan import Plan
from thinjax.prune.allocate import Allocation, Target, allocate
from thinjax.prune.criteria import ScoreInputs, score_groups

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
