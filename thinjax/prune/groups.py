"""Channel groups: the channels that must be removed together, derived from a plan.

A group is a set of channel indices shared by every tensor that touches them:

  * a **stream** group is a stage's residual stream: the outputs of its producers (the stem
    or a projection, and the last conv + BN of every block writing into the stream) and the
    inputs of its consumers (each reading block's first conv and projection, and for the
    last stage the classifier's input rows). Stages joined by identity shortcuts share one
    stream, so a CIFAR ResNet's stem and stage 1 form the group ``stem+stage1``;
  * an **inner** group is a block's hidden channels, named by the conv producing them
    (``stage2/block0/conv1``; a bottleneck also has ``.../conv2``).

Each member is a ``(leaf path, axis)`` pair on the ``/``-joined paths of the ``params`` and
``batch_stats`` trees (``stage1/block0/conv1/kernel``, axis 3), so the same description
masks, scores and slices parameters, BN statistics, EMA and optimizer state alike.

    >>> from thinjax.plan import plan_from_width
    >>> [g.name for g in channel_groups(plan_from_width("resnet20", 16)).values()][:3]
    ['stem+stage1', 'stage2', 'stage3']
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from thinjax.plan import (
    BlockPlan,
    Plan,
    PlanError,
    StagePlan,
    stream_of,  # noqa: F401 (re-exported: stream names are plan-level)
    streams,
)

BN_LEAVES = ("scale", "bias", "mean", "var")
Member = tuple[str, int]  # (leaf path, axis)


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    kind: str                        # "stream" | "inner"
    size: int                        # channels in the (unpruned) plan
    producers: tuple[Member, ...]    # conv kernels (out axis) and BN leaves (axis 0)
    consumers: tuple[Member, ...]    # conv kernels (in axis) and the head's kernel (axis 0)
    widths: tuple[str, ...]          # plan fields this group sets: "stem", "stage2", ...
    removable: bool = False          # may fall to 0 channels (a block the plan can drop)
    block: str | None = None         # inner groups: their block, "stage2/block0"

    @property
    def kernels(self) -> tuple[str, ...]:
        """Producer conv kernels (filters along the last axis)."""
        return tuple(p for p, _ in self.producers if p.endswith("kernel"))

    @property
    def bn_scales(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.producers if p.endswith("/scale"))

    @property
    def kernel_members(self) -> tuple[Member, ...]:
        """The producer kernels with their output axis (HWIO: the last)."""
        return tuple((p, 3) for p in self.kernels)

    def rows(self, path: str, axis: int) -> np.ndarray | None:
        """Where channel j sits on `axis` of member `path`: None for index j, as in every
        plan group (a traced group, `thinjax.trace`, may hold a channel at other or
        several indices: [size, multiplicity] indices)."""
        return None


def _conv_bn(prefix: str, conv: str, bn: str, axis_out: int = 3) -> list[Member]:
    return [(f"{prefix}/{conv}/kernel", axis_out)] + [(f"{prefix}/{bn}/{k}", 0)
                                                      for k in BN_LEAVES]


def _last(plan: Plan) -> tuple[str, str]:
    return ("conv3", "bn3") if plan.block == "bottleneck" else ("conv2", "bn2")


@functools.lru_cache(maxsize=64)
def channel_groups(plan: Plan) -> dict[str, Group]:
    """Every channel group of `plan`, streams first, then inner groups in block order."""
    names = ["stem"] + [f"stage{i + 1}" for i in range(len(plan.stages))]
    inputs = {}  # block -> width variable of its input
    prev = "stem"
    for si, s in enumerate(plan.stages):
        for bi in range(len(s.blocks)):
            inputs[f"stage{si + 1}/block{bi}"] = prev if bi == 0 else f"stage{si + 1}"
        prev = f"stage{si + 1}"

    producers: dict[str, list[Member]] = {n: [] for n in names}
    consumers: dict[str, list[Member]] = {n: [] for n in names}
    producers["stem"] += _conv_bn("stem", "conv", "bn")
    inner_groups = []
    last_conv, last_bn = _last(plan)
    for si, s in enumerate(plan.stages):
        var = f"stage{si + 1}"
        for bi, b in enumerate(s.blocks):
            block = f"{var}/block{bi}"
            if b.proj:
                producers[var] += _conv_bn(f"{block}/proj", "conv", "bn")
                consumers[inputs[block]].append((f"{block}/proj/conv/kernel", 2))
            if b.removed:
                continue
            producers[var] += _conv_bn(block, last_conv, last_bn)
            consumers[inputs[block]].append((f"{block}/conv1/kernel", 2))
            for k, width in enumerate(b.inner):
                inner_groups.append(Group(
                    name=f"{block}/conv{k + 1}", kind="inner", size=width,
                    producers=tuple(_conv_bn(block, f"conv{k + 1}", f"bn{k + 1}")),
                    consumers=((f"{block}/conv{k + 2}/kernel", 2),), widths=(),
                    removable=not b.proj, block=block))
    consumers[f"stage{len(plan.stages)}"].append(("head/kernel", 0))

    sizes = {"stem": plan.stem_width, **{f"stage{i + 1}": s.width
                                         for i, s in enumerate(plan.stages)}}
    groups = {}
    for members in streams(plan).values():
        widths = {sizes[n] for n in members}
        if len(widths) != 1:  # Plan.validate prevents this; keep the message anyway
            raise PlanError(f"{'+'.join(members)} share a residual stream but have widths "
                            f"{sorted(widths)}")
        name = "+".join(members)
        groups[name] = Group(
            name=name, kind="stream", size=widths.pop(),
            producers=tuple(m for n in members for m in producers[n]),
            consumers=tuple(m for n in members for m in consumers[n]), widths=tuple(members))
    for g in inner_groups:
        groups[g.name] = g
    return groups


def leaf_axes(plan: Plan) -> dict[str, list[tuple[int, str]]]:
    """Leaf path -> [(axis, group name)]: where each group's channels sit in each leaf."""
    out: dict[str, list[tuple[int, str]]] = {}
    for g in channel_groups(plan).values():
        for path, axis in g.producers + g.consumers:
            out.setdefault(path, []).append((axis, g.name))
    return out


# -- masks -------------------------------------------------------------------------------

def init_masks(plan: Plan) -> dict[str, np.ndarray]:
    """All-ones (keep every channel) float32 masks, one vector per group."""
    return {n: np.ones((g.size,), np.float32) for n, g in channel_groups(plan).items()}


def check_masks(plan: Plan, masks: dict, where: str = "masks") -> None:
    """Raises ValueError if `masks` does not match `plan`'s groups (names and sizes)."""
    groups = channel_groups(plan)
    missing = [n for n in groups if n not in masks]
    extra = [n for n in masks if n not in groups]
    if missing or extra:
        raise PlanError(f"{where}: groups {missing or extra} "
                         f"{'missing' if missing else 'not in the plan'}; the plan's groups "
                         f"are {list(groups)}")
    for n, g in groups.items():
        if np.shape(masks[n]) != (g.size,):
            raise PlanError(f"{where}: mask {n!r} has shape {np.shape(masks[n])}, the plan's "
                             f"group has {g.size} channels")


def keep_counts(masks: dict) -> dict[str, int]:
    return {n: int(np.sum(np.asarray(m) > 0)) for n, m in masks.items()}


def _param_suffix(path: tuple) -> str:
    """'/'-joined dict keys of a tree path (optimizer states nest params under tuples)."""
    keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    return "/".join(keys)


def mask_tree(plan: Plan, tree: Any, masks: dict, axes: dict | None = None) -> Any:
    """Zeroes the pruned channels of every leaf of `tree` whose path (or the dict-key part
    of it, for optimizer states) is a member of a group: params, batch stats, EMA, momentum.
    Works under jit; leaves that no group touches pass through unchanged."""
    axes = leaf_axes(plan) if axes is None else axes

    def f(path, x):
        spec = axes.get(_param_suffix(path))
        if spec is None or not hasattr(x, "ndim") or x.ndim == 0:
            return x
        for axis, g in spec:
            shape = [1] * x.ndim
            shape[axis] = -1
            x = x * jnp.reshape(masks[g], shape).astype(x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(f, tree)


def plan_with_counts(plan: Plan, counts: dict[str, int]) -> Plan:
    """`plan` with each group's channel count replaced by `counts[group]` (missing groups
    keep their size). A block with an inner group at 0 loses its branch (all inner 0)."""
    groups = channel_groups(plan)
    width = {}
    for n, g in groups.items():
        c = int(counts.get(n, g.size))
        if g.kind == "stream":
            if c < 1:
                raise PlanError(f"group {n}: a residual stream needs at least 1 channel")
            width.update({w: c for w in g.widths})
    stages = []
    for si, s in enumerate(plan.stages):
        blocks = []
        for bi, b in enumerate(s.blocks):
            block = f"stage{si + 1}/block{bi}"
            if b.removed:
                blocks.append(b)
                continue
            inner = tuple(int(counts.get(f"{block}/conv{k + 1}", c)) for k, c in
                          enumerate(b.inner))
            if 0 in inner:
                if b.proj:
                    raise PlanError(f"{block}: its branch cannot be removed (it has a "
                                    "projection shortcut)")
                inner = (0,) * len(inner)
            blocks.append(BlockPlan(inner, b.proj))
        stages.append(StagePlan(width[f"stage{si + 1}"], s.stride, tuple(blocks)))
    return dataclasses.replace(plan, stem_width=width["stem"], stages=tuple(stages))


def flatten(tree: dict) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict[str, Any]) -> dict:
    return traverse_util.unflatten_dict(flat, sep="/")

