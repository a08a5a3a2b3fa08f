"""`ExampleNet`: what rebuilds one of `thinjax.models.examples` (dense or pruned) from a
checkpoint's metadata, as a `Plan` rebuilds a ThinResNet.

    net = example_net("mobilenetv2", width=0.5, num_classes=10)
    model = net.module()                      # MobileNetV2(width=0.5, num_classes=10)
    meta = network_meta(net)                  # {"example": {"name": "mobilenetv2",
                                              #  "args": {...}, "input_size": 32, "shapes": {}}}
    network_from_meta(meta) == net            # a ThinResNet's meta: {"plan": {...}} -> Plan

A pruned one also records the shape of every variable leaf that pruning narrowed
(``shapes``: ``"params/block3/dw/conv/kernel" -> [3, 3, 1, 58]``); its module is the dense
one rebuilt at those widths (`thinjax.trace.rebuild.Pruned`), so every later tool builds it
from the metadata alone. ``input_size`` is the square image size it was built and is
costed for (a ViT's position table depends on it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from thinjax import fs
from thinjax.errors import ConfigError
from thinjax.models.examples import ConvNeXt, MobileNetV2, ViT
from thinjax.plan import Plan
from thinjax.trace.graph import Leaf
from thinjax.trace.network import leaves_of
from thinjax.trace.rebuild import Pruned, shapes_table

# the classifiers the training loop and the prune command take (thinjax.models.examples;
# the U-Net labels pixels, which the training loop does not train)
EXAMPLES: dict[str, type[nn.Module]] = {"mobilenetv2": MobileNetV2, "convnext": ConvNeXt,
                                        "vit": ViT}


def _fields(cls: type[nn.Module]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}


def _typed(v: Any) -> Any:
    """A JSON value back in the field's type (lists -> tuples)."""
    return tuple(v) if isinstance(v, list) else v


@dataclasses.dataclass(frozen=True)
class ExampleNet:
    """An example network: its name in `EXAMPLES`, every constructor argument, the image
    size it is built for, and the leaves pruning narrowed (none: the dense network)."""
    name: str
    args: tuple[tuple[str, Any], ...]
    input_size: int = 32
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    in_channels = 3

    @property
    def num_classes(self) -> int:
        return int(dict(self.args)["num_classes"])

    @property
    def pruned(self) -> bool:
        return bool(self.shapes)

    def dense(self) -> nn.Module:
        return EXAMPLES[self.name](**dict(self.args))

    def module(self) -> nn.Module:
        """The linen module: the dense one, or it rebuilt at the pruned widths."""
        if not self.shapes:
            return self.dense()
        new = dict(self.shapes)
        leaves = dense_leaves(self)
        return Pruned(self.dense(), shapes_table(
            leaves, [new.get(f"{lf.col}/{lf.path}", lf.shape) for lf in leaves]))

    def with_shapes(self, leaves: tuple[Leaf, ...], shapes: list[tuple[int, ...]]
                    ) -> ExampleNet:
        """This network with `leaves` at `shapes` (only the narrowed ones are recorded)."""
        dense = {f"{lf.col}/{lf.path}": lf.shape for lf in dense_leaves(self)}
        changed = tuple(sorted((f"{lf.col}/{lf.path}", tuple(int(n) for n in s))
                               for lf, s in zip(leaves, shapes, strict=True)
                               if dense.get(f"{lf.col}/{lf.path}") != tuple(s)))
        return dataclasses.replace(self, shapes=changed)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.args if k in ("width", "num_classes"))
        more = f", pruned ({len(self.shapes)} leaves narrowed)" if self.shapes else ""
        return f"{self.name} ({args}{more})"

    def to_dict(self) -> dict:
        return {"name": self.name, "args": {k: list(v) if isinstance(v, tuple) else v
                                               for k, v in self.args},
                "input_size": self.input_size,
                "shapes": {k: list(s) for k, s in self.shapes}}

    def to_json(self) -> str:
        """Its file form (``plan.json`` of a run or a prune command's output)."""
        return json.dumps({"example": self.to_dict()}, indent=1)

    def save(self, path: str) -> None:
        fs.write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, d: dict, where: str = "the network's metadata") -> ExampleNet:
        try:
            net = example_net(d["name"], int(d.get("input_size", 32)), **d["args"])
            shapes = tuple(sorted((str(k), tuple(int(n) for n in s))
                                  for k, s in (d.get("shapes") or {}).items()))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"{where}: not an example network's description ({e!r}); "
                              "it should read {\"name\": NAME, \"args\": {...}, "
                              "\"input_size\": 32, \"shapes\": {...}}") from None
        return dataclasses.replace(net, shapes=shapes)


def network_meta(net: Plan | ExampleNet, prefix: str = "") -> dict:
    """The metadata entry that rebuilds `net`: ``{"plan": ...}`` or ``{"example": ...}``
    (`prefix` ``dense_``: the network a pruning run started from)."""
    if isinstance(net, Plan):
        return {f"{prefix}plan": net.to_dict()}
    return {f"{prefix}example": net.to_dict()}


def network_from_meta(meta: dict, prefix: str = "", where: str = "the metadata"
                      ) -> Plan | ExampleNet | None:
    """The network a checkpoint's (or a ``plan.json`` file's) `meta` describes; None when
    it holds neither entry."""
    if isinstance(meta.get(f"{prefix}example"), dict):
        return ExampleNet.from_dict(meta[f"{prefix}example"], where)
    if meta.get(f"{prefix}plan"):
        return Plan.from_dict(meta[f"{prefix}plan"])
    if not prefix and "block" in meta and "stages" in meta:   # a plan file's content
        return Plan.from_dict(meta)
    return None


def example_net(name: str, input_size: int = 32, **args: Any) -> ExampleNet:
    """The dense example `name` with constructor `args` (the rest at their defaults);
    ConfigError naming the argument for an unknown name, argument or width."""
    if name not in EXAMPLES:
        raise ConfigError(f"config.model.example={name!r}: unknown example network; use one "
                          f"of {', '.join(sorted(EXAMPLES))} (or '' for a ThinResNet)")
    fields = _fields(EXAMPLES[name])
    bad = sorted(set(args) - set(fields))
    if bad:
        raise ConfigError(f"{name}: no argument {bad[0]!r}; its arguments are "
                          f"{', '.join(fields)}")
    width = args.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) \
            or not math.isfinite(width) or width <= 0:
        raise ConfigError(f"config.model.width_mult={width!r}: the width multiplier of "
                          f"{name} must be a number > 0 (e.g. 0.5, 1.0)")
    n = args.get("num_classes", fields["num_classes"].default)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"config.model.num_classes={n!r}: must be a whole number >= 1")
    full = {k: _typed(args[k]) if k in args else f.default for k, f in fields.items()}
    full["width"] = float(width)
    return ExampleNet(name, tuple(sorted(full.items())), int(input_size))


@functools.lru_cache(maxsize=32)
def dense_leaves(net: ExampleNet) -> tuple[Leaf, ...]:
    """The variable leaves of `net`'s dense module (shapes alone: nothing is computed)."""
    dense = dataclasses.replace(net, shapes=())
    return leaves_of(abstract_variables(dense.module(), dense.input_size, dense.in_channels))


def abstract_variables(module: nn.Module, size: int, channels: int = 3) -> Any:
    """``module.init``'s variables as shapes, for a (1, size, size, channels) image."""
    x = jax.ShapeDtypeStruct((1, size, size, channels), np.float32)
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
