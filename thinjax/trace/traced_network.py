"""`TracedNetwork`: an example network pruned on the channel groups its trace finds (the
`thinjax.trace.networks` interface; `PlanNetwork` is the plan's).

The groups are traced once, in inference mode, on a (1, size, size, 3) image with the
variables as shapes (nothing is computed). Masks act on the variables: every member of a
pruned channel is zeroed (`thinjax.trace.masking.mask_tree`), which is the masked network
(`thinjax.trace.mask_variables`); a training step re-zeroes them after each update, as
`thinjax.train.step.apply_masks` does for a plan. The smaller network is an `ExampleNet`
recording the narrowed leaves, its module the dense one rebuilt at those widths.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from thinjax.cost import Cost
from thinjax.errors import TargetError
from thinjax.models.batchnorm import BatchNorm
from thinjax.prune import regularize, soft
from thinjax.prune.allocate import Allocation, Target
from thinjax.prune.groups import keep_counts
from thinjax.prune.recalibrate import average_batch_stats
from thinjax.trace import masking, rebuild, scores
from thinjax.trace.example import ExampleNet, abstract_variables, network_meta
from thinjax.trace.graph import TracedGroup
from thinjax.trace.network import Trace, TracedNet, trace


@dataclasses.dataclass(frozen=True, eq=False)
class TracedNetwork:
    """The example network `desc`, traced at `input_size`."""
    desc: ExampleNet
    input_size: int = 32

    masks_in_apply = False                  # masks live in the variables

    @property
    def plan(self) -> ExampleNet:           # the training loop's name for what rebuilds it
        return self.desc

    @property
    def size(self) -> int:
        return self.input_size

    @functools.cached_property
    def model(self) -> nn.Module:
        return self.desc.module()

    @property
    def num_classes(self) -> int:
        return self.desc.num_classes

    @property
    def in_channels(self) -> int:
        return self.desc.in_channels

    @functools.cached_property
    def trace(self) -> Trace:
        return _trace(self.model, self.input_size, self.in_channels)

    @functools.cached_property
    def source(self) -> TracedNet:
        """The exact groups (what the allocator, the criteria and the regulariser read)."""
        return self.trace.net()

    @property
    def groups(self) -> dict[str, TracedGroup]:
        return self.source.groups

    @functools.cached_property
    def _axes(self) -> masking.Axes:
        return masking.leaf_axes(self.groups)

    def cost(self, size: int | None = None) -> Cost:
        """Params and MACs at `size` (default: the input size it was traced at)."""
        if size and size != self.input_size:
            c = _trace(self.model, size, self.in_channels).net().cost()
        else:
            c = self.source.cost()
        return Cost(c.params, c.macs, size or self.input_size)

    def describe(self) -> str:
        return self.desc.describe()

    def at(self, desc: ExampleNet) -> TracedNetwork:
        """The network `desc` describes, at this input size."""
        return dataclasses.replace(self, desc=desc)

    def keeps(self, reg: Any) -> bool:
        """Whether a regulariser (`thinjax.prune.regularize.Regularizer`) is this
        network's: built on a trace of its module, not of the dense one it was cut from."""
        p = getattr(reg, "plan", None)
        return p is None or (isinstance(p, TracedNet) and p.trace.module == self.model)

    def meta(self, prefix: str = "") -> dict:
        return network_meta(self.desc, prefix)

    def init_masks(self) -> dict[str, np.ndarray]:
        return {n: np.ones((g.size,), np.float32) for n, g in self.groups.items()}

    def mask_tree(self, tree: Any, masks: Mapping) -> Any:
        return masking.mask_tree(self._axes, tree, masks)

    def compute_masks(self, variables: Any, spec, target: Target, *, masks=None,
                      batches: Iterable[dict] | None = None, seed: int = 0) -> Allocation:
        return scores.compute_masks(self.source, variables, spec, target, seed, masks=masks,
                                    module=self.model, batches=batches)

    def soft_event(self, tree: Any, masks: Mapping) -> Any:
        return soft.soft_event(self.source, tree, masks)

    def regularizer(self, spec, variables: Any, *, masks=None, batches=None, seed: int = 0):
        def select(net, v, cfg, target, *, masks, model, batches, input_size, seed):
            return self.compute_masks(v, cfg, target, masks=masks, batches=batches, seed=seed)
        return regularize.build(self.source, spec, variables, masks=masks, batches=batches,
                                seed=seed, select=select)

    def check_target(self, masks: Mapping | None, kind: str | None, target: float | None,
                     prefix: str = "--") -> None:
        now = self.source.with_counts(keep_counts(masks)) if masks else self.source
        check_target(now.cost(), self.cost(), self.input_size, kind, target, prefix)

    def _keep(self, masks: Mapping) -> dict[int, dict[int, np.ndarray]]:
        return rebuild.keep_axes(self.trace.leaves, self.groups,
                                 {k: np.asarray(v) for k, v in masks.items()})

    def small(self, masks: Mapping) -> TracedNetwork:
        """The materialised network: this one without the masked channels."""
        keep = self._keep(masks)
        shapes = [tuple(int(keep[k][a].sum()) if a in keep.get(k, {}) else n
                        for a, n in enumerate(leaf.shape))
                  for k, leaf in enumerate(self.trace.leaves)]
        return dataclasses.replace(self, desc=self.desc.with_shapes(self.trace.leaves, shapes))

    def slice_tree(self, masks: Mapping, tree: Any, small: TracedNetwork | None = None) -> Any:
        return masking.slice_tree(masking.path_keep(self.trace.leaves, self._keep(masks)), tree)

    def slice_opt_state(self, masks: Mapping, opt_state: Any, new_init: Any,
                        small: TracedNetwork | None = None) -> Any:
        pk = masking.path_keep(self.trace.leaves, self._keep(masks))
        return masking.slice_opt_state(pk, opt_state, new_init)

    def recalibrate(self, variables: Any, batches: Iterable[dict], num_batches: int) -> Any:
        return recalibrate_bn(self.model, variables, batches, num_batches)


def _trace(module: nn.Module, size: int, channels: int) -> Trace:
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    return trace(module, abstract_variables(module, size, channels), x, train=False)


def check_target(current: Cost, dense: Cost, size: int, kind: str | None,
                 target: float | None, prefix: str = "--") -> None:
    """Refuses a target the network (`current`, cut from `dense`) already meets, as
    `thinjax.prune.pruner.check_target` does for a plan."""
    if kind is None:
        return
    have = {"params": current.params, "macs": current.macs, "ratio": 0.0,
            "params_fraction": current.params / dense.params,
            "macs_fraction": current.macs / dense.macs}
    value = float(target)
    if value <= 0 if kind == "ratio" else value >= have.get(kind, -1):
        fields = f"{prefix}target_kind={kind}{' ' if prefix else ', '}{prefix}target={value:g}"
        raise TargetError(f"{fields}: the network already meets it ({current.params:,} "
                          f"params, {current.macs:,} MACs at {size}px), so there is nothing "
                          "to prune; give a target below its current cost")


def recalibrate_bn(module: nn.Module, variables: Any, batches: Iterable[dict],
                   num_batches: int) -> Any:
    """`variables` with every BatchNorm's statistics replaced by their average over
    `num_batches` batches, as `thinjax.prune.recalibrate.recalibrate_bn` does for a
    ResNet: each BatchNorm of any module runs with momentum 0 (its statistics := the
    batch's), through an interceptor, since the momentum is the layer's own field."""
    def momentum0(next_fun, args, kwargs, ctx):
        mod = ctx.module
        if isinstance(mod, (nn.BatchNorm, BatchNorm)) and mod.momentum != 0.0 \
                and ctx.method_name == "__call__":
            return mod.clone(parent=mod.scope, momentum=0.0)(*args, **kwargs)
        return next_fun(*args, **kwargs)

    @jax.jit
    def stats(v, x):
        with nn.intercept_methods(momentum0):
            _, upd = module.apply(v, x, train=True, mutable=["batch_stats"])
        return upd["batch_stats"]

    return average_batch_stats(stats, variables, batches, num_batches)
