"""Channel plans: the one shared description of a ResNet's shape.

A plan gives the output channel count of every convolution of a ResNet. Widths make
regular plans (`plan_from_width`), pruning makes irregular ones, the PyTorch importer
infers one from a state dict. The model, the cost counter, pruning groups and
checkpoints all read the same plan, so they cannot disagree.

    >>> p = plan_from_width("resnet20", 16)
    >>> [s.width for s in p.stages]
    [16, 32, 64]
    >>> p2 = Plan.from_json(p.to_json())
    >>> p2 == p
    True

Vocabulary:
  * ``block``: "basic" (two 3x3 convs, inner widths ``(c1,)``) or "bottleneck"
    (1x1, 3x3, 1x1; inner widths ``(c1, c2)``; stride on the 3x3 conv, "v1.5").
  * ``stem``: "imagenet" (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool) or
    "cifar" (3x3 stride-1 conv, BN, ReLU).
  * each stage has a residual-stream ``width`` (the output of every block in it), a
    ``stride`` (applied by its first block) and its blocks.
  * each block has inner widths and ``proj``: whether its shortcut is a 1x1 conv + BN.
    A projection is required where the stride or the channel count changes.
  * a block whose inner widths are all 0 has no residual branch: it is the identity.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from typing import Any, Literal

from thinjax import fs
from thinjax.errors import PlanError

BlockKind = Literal["basic", "bottleneck"]
StemKind = Literal["imagenet", "cifar"]


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    inner: tuple[int, ...]
    proj: bool = False

    @property
    def removed(self) -> bool:
        return all(c == 0 for c in self.inner)


@dataclasses.dataclass(frozen=True)
class StagePlan:
    width: int
    stride: int
    blocks: tuple[BlockPlan, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    block: BlockKind
    stem: StemKind
    stem_width: int
    stages: tuple[StagePlan, ...]
    num_classes: int
    in_channels: int = 3

    def __post_init__(self):
        validate(self)

    # -- derived quantities -------------------------------------------------------
    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def num_inner(self) -> int:
        return 2 if self.block == "bottleneck" else 1

    @property
    def depth(self) -> int:
        """The conventional depth (ResNet-20, -50, ...): weighted layers, counting the head."""
        per_block = 3 if self.block == "bottleneck" else 2
        return per_block * sum(len(s.blocks) for s in self.stages) + 2

    @property
    def feature_width(self) -> int:
        return self.stages[-1].width

    def blocks(self) -> Iterator[tuple[str, int, int, int, BlockPlan]]:
        """Yields (name, in_channels, out_channels, stride, block) in order."""
        cin = self.stem_width
        for si, stage in enumerate(self.stages):
            for bi, b in enumerate(stage.blocks):
                stride = stage.stride if bi == 0 else 1
                yield f"stage{si + 1}/block{bi}", cin, stage.width, stride, b
                cin = stage.width

    def stage_widths(self) -> list[int]:
        return [s.width for s in self.stages]

    def describe(self) -> str:
        """One line: stem width, then per stage 'width[inner widths of each block]'."""
        parts = [f"stem {self.stem_width}"]
        for i, s in enumerate(self.stages):
            inner = ",".join("x".join(str(c) for c in b.inner) + ("p" if b.proj else "")
                             for b in s.blocks)
            parts.append(f"stage{i + 1} {s.width}/{s.stride} [{inner}]")
        return f"{self.block}/{self.stem}: " + " | ".join(parts)

    # -- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "stem": self.stem,
            "stem_width": self.stem_width,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "stages": [
                {"width": s.width, "stride": s.stride,
                 "blocks": [{"inner": list(b.inner), "proj": b.proj} for b in s.blocks]}
                for s in self.stages
            ],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        try:
            stages = tuple(
                StagePlan(
                    width=int(s["width"]),
                    stride=int(s["stride"]),
                    blocks=tuple(BlockPlan(tuple(int(c) for c in b["inner"]), bool(b["proj"]))
                                 for b in s["blocks"]),
                )
                for s in d["stages"]
            )
            return cls(block=d["block"], stem=d["stem"], stem_width=int(d["stem_width"]),
                       stages=stages, num_classes=int(d["num_classes"]),
                       in_channels=int(d.get("in_channels", 3)))
        except (KeyError, TypeError) as e:
            raise PlanError(f"malformed plan dictionary: missing or bad field {e!s}; expected "
                            "keys block, stem, stem_width, num_classes, stages[{width, stride, "
                            "blocks[{inner, proj}]}]") from e

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str) -> None:
        fs.write_text(path, self.to_json(indent=1))

    @classmethod
    def load(cls, path: str) -> Plan:
        try:
            return cls.from_json(fs.read_text(path))
        except json.JSONDecodeError as e:
            raise PlanError(f"{path}: not a JSON plan ({e})") from e


def default_input_size(plan: Plan) -> int:
    """The input size a plan's stem is made for: 224 (ImageNet stem) or 32 (CIFAR stem)."""
    return 224 if plan.stem == "imagenet" else 32


@functools.lru_cache(maxsize=64)
def streams(plan: Plan) -> dict[str, tuple[str, ...]]:
    """The residual streams of `plan`: name -> the width variables ("stem", "stage1", ...)
    it joins. Identity shortcuts join a block's input and output into one stream, named by
    its variables joined with '+' (a CIFAR ResNet's stem and stage 1: ``stem+stage1``)."""
    parent: dict[str, str] = {}

    def find(v: str) -> str:
        while parent.setdefault(v, v) != v:
            v = parent[v]
        return v

    names = ["stem"] + [f"stage{i + 1}" for i in range(len(plan.stages))]
    prev = "stem"
    for si, s in enumerate(plan.stages):
        var = f"stage{si + 1}"
        for bi, b in enumerate(s.blocks):
            if not b.proj:
                parent[find(prev if bi == 0 else var)] = find(var)
        prev = var
    classes: dict[str, list[str]] = {}
    for n in names:
        classes.setdefault(find(n), []).append(n)
    return {"+".join(m): tuple(m) for m in classes.values()}


def stream_of(plan: Plan) -> dict[str, str]:
    """Width variable ("stem", "stage2", ...) -> the name of its residual stream."""
    return {w: name for name, ws in streams(plan).items() for w in ws}


def validate(plan: Plan) -> None:
    """Raises PlanError naming the first place where `plan` cannot build a ResNet."""
    if plan.block not in ("basic", "bottleneck"):
        raise PlanError(f"plan.block must be 'basic' or 'bottleneck', got {plan.block!r}")
    if plan.stem not in ("imagenet", "cifar"):
        raise PlanError(f"plan.stem must be 'imagenet' or 'cifar', got {plan.stem!r}")
    if plan.stem_width < 1:
        raise PlanError(f"stem width must be >= 1, got {plan.stem_width}")
    if plan.num_classes < 1 or plan.in_channels < 1:
        raise PlanError(f"num_classes and in_channels must be >= 1, got {plan.num_classes}, "
                        f"{plan.in_channels}")
    if not plan.stages:
        raise PlanError("a plan needs at least one stage")
    for si, s in enumerate(plan.stages):
        if s.width < 1:
            raise PlanError(f"stage{si + 1}: residual width must be >= 1, got {s.width}")
        if s.stride not in (1, 2):
            raise PlanError(f"stage{si + 1}: stride must be 1 or 2, got {s.stride}")
        if not s.blocks:
            raise PlanError(f"stage{si + 1}: a stage needs at least one block")
    n_inner = plan.num_inner
    for name, cin, cout, stride, b in plan.blocks():
        if len(b.inner) != n_inner:
            raise PlanError(f"{name}: a {plan.block} block has {n_inner} inner width(s), "
                            f"got {list(b.inner)}")
        if any(c < 0 for c in b.inner):
            raise PlanError(f"{name}: inner widths must be >= 0, got {list(b.inner)}")
        if 0 in b.inner and not b.removed:
            raise PlanError(f"{name}: inner widths {list(b.inner)} are partly 0; set all of "
                            "them to 0 to remove the block's branch, or none")
        needs_proj = stride != 1 or cin != cout
        if needs_proj and not b.proj:
            raise PlanError(f"{name}: input {cin} channels, output {cout}, stride {stride}: "
                            "the shortcut needs a projection (set proj=True)")
        if b.removed and b.proj:
            raise PlanError(f"{name}: inner widths are 0 (branch removed) but the block has a "
                            f"projection ({cin}->{cout} channels, stride {stride}); only a "
                            "block whose input and output shapes agree can be removed")


# -- regular plans -------------------------------------------------------------------

# name -> (block kind, blocks per stage, stem kind)
ARCHS: dict[str, tuple[BlockKind, tuple[int, ...], StemKind]] = {
    "resnet18": ("basic", (2, 2, 2, 2), "imagenet"),
    "resnet34": ("basic", (3, 4, 6, 3), "imagenet"),
    "resnet50": ("bottleneck", (3, 4, 6, 3), "imagenet"),
    "resnet101": ("bottleneck", (3, 4, 23, 3), "imagenet"),
    "resnet152": ("bottleneck", (3, 8, 36, 3), "imagenet"),
    "resnet20": ("basic", (3, 3, 3), "cifar"),
    "resnet32": ("basic", (5, 5, 5), "cifar"),
    "resnet44": ("basic", (7, 7, 7), "cifar"),
    "resnet56": ("basic", (9, 9, 9), "cifar"),
    "resnet110": ("basic", (18, 18, 18), "cifar"),
}
# The ImageNet depths with the CIFAR stem, for 32x32 inputs, as the study trains them.
for _n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    ARCHS[_n + "_cifar"] = (ARCHS[_n][0], ARCHS[_n][1], "cifar")

DEFAULT_WIDTH = {name: (16 if stem == "cifar" and len(blocks) == 3 else 64)
                 for name, (_, blocks, stem) in ARCHS.items()}


def plan_from_width(name: str, width: int | None = None, num_classes: int | None = None,
                    base_width: int | None = None) -> Plan:
    """The regular ThinResNet `name` at width `width`.

    Stem `width` channels, stages width * (1, 2, 4, 8) * expansion (three stages for the
    CIFAR family). Bottleneck inner widths follow torchvision's
    ``int(planes * base_width / 64)``; ``base_width`` defaults to ``width`` as in the
    study's ThinResNet-50 (so w=64 is torchvision's ResNet-50 and the release's w=16
    checkpoint loads); pass ``base_width=64`` to scale every channel linearly instead.
    """
    if name not in ARCHS:
        raise PlanError(f"unknown model {name!r}; available: {', '.join(sorted(ARCHS))}")
    kind, counts, stem = ARCHS[name]
    w = DEFAULT_WIDTH[name] if width is None else int(width)
    if w < 1:
        raise PlanError(f"width must be >= 1, got {w}")
    if num_classes is None:
        num_classes = 10 if stem == "cifar" else 1000
    bw = w if base_width is None else int(base_width)
    expansion = 4 if kind == "bottleneck" else 1
    stages, cin = [], w
    for i, n in enumerate(counts):
        planes = w * 2**i
        out = planes * expansion
        if kind == "bottleneck":
            inner = (int(planes * bw / 64),) * 2
            if inner[0] < 1:
                raise PlanError(f"{name} at width {w} with base_width {bw}: stage{i + 1} inner "
                                f"width int({planes} * {bw} / 64) is 0; use a larger width or "
                                "base_width")
        else:
            inner = (planes,)
        stride = 1 if i == 0 else 2
        blocks = tuple(BlockPlan(inner, proj=(j == 0 and (stride != 1 or cin != out)))
                       for j in range(n))
        stages.append(StagePlan(out, stride, blocks))
        cin = out
    return Plan(kind, stem, w, tuple(stages), num_classes)
