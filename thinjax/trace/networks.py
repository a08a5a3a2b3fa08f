"""The network a training run or the prune command prunes: one interface over a ThinResNet
built from a plan (`PlanNetwork`: the plan's declared groups, ``ResNet(masks=...)``) and an
example network whose groups come from a trace (`TracedNetwork`: masks applied by zeroing
the group members, the smaller network rebuilt by `thinjax.trace.rebuild.Pruned`).

    net = network(desc, template, input_size)    # desc: a Plan or an ExampleNet
    alloc = net.compute_masks(variables, spec, spec.goal())
    small = net.small(alloc.masks)               # the materialised network
    small_vars = {k: net.slice_tree(alloc.masks, t, small) for k, t in variables.items()}

Both answer the same questions: the module (`model`), what rebuilds it (`desc`, `meta`),
its groups and cost, how masks act on one collection's tree (`mask_tree`: params, batch
statistics, EMA, optimizer state; `masks_in_apply` says whether the module also takes
them), the criteria and allocation, a soft event, the regulariser, the smaller network and
its trees. `PlanNetwork` calls the plan functions the training loop
always called, so a ThinResNet run computes what it did before.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from thinjax.cost import Cost, count
from thinjax.models.resnet import ResNet
from thinjax.plan import Plan, default_input_size
from thinjax.prune import groups as plan_groups
from thinjax.prune import materialize as plan_materialize
from thinjax.prune import pruner, regularize, soft
from thinjax.prune.allocate import Allocation, Target
from thinjax.prune.recalibrate import recalibrate_bn
from thinjax.trace.example import ExampleNet, network_meta
from thinjax.trace.traced_network import TracedNetwork, check_target  # noqa: F401


@dataclasses.dataclass(frozen=True, eq=False)
class PlanNetwork:
    """A ThinResNet: `plan`, with the model options of `template` (a `ResNet`)."""
    plan: Plan
    template: ResNet | None = None
    input_size: int = 0                     # 0: the plan's (32 or 224)

    masks_in_apply = True                   # ResNet.apply(..., masks=masks)

    @property
    def desc(self) -> Plan:
        return self.plan

    @property
    def size(self) -> int:
        return self.input_size or default_input_size(self.plan)

    @functools.cached_property
    def model(self) -> ResNet:
        return ResNet(self.plan) if self.template is None else self.template.clone(
            plan=self.plan)

    @property
    def num_classes(self) -> int:
        return self.plan.num_classes

    @property
    def in_channels(self) -> int:
        return self.plan.in_channels

    @property
    def groups(self) -> dict[str, plan_groups.Group]:
        return plan_groups.channel_groups(self.plan)

    @property
    def source(self) -> Plan:
        """What the allocator and the regulariser read."""
        return self.plan

    def cost(self, size: int | None = None) -> Cost:
        return count(self.plan, size or self.size)

    def describe(self) -> str:
        return self.plan.describe()

    def at(self, plan: Plan) -> PlanNetwork:
        """The network `plan` describes, with these model options."""
        return dataclasses.replace(self, plan=plan)

    def keeps(self, reg: Any) -> bool:
        """Whether a regulariser (`thinjax.prune.regularize.Regularizer`) is this
        network's: built for its plan, not for the dense one it was cut from."""
        return getattr(reg, "plan", self.plan) == self.plan

    def meta(self, prefix: str = "") -> dict:
        return network_meta(self.plan, prefix)

    def init_masks(self) -> dict[str, np.ndarray]:
        return plan_groups.init_masks(self.plan)

    def mask_tree(self, tree: Any, masks: Mapping) -> Any:
        return plan_groups.mask_tree(self.plan, tree, masks)

    def compute_masks(self, variables: Any, spec, target: Target, *, masks=None,
                      batches: Iterable[dict] | None = None, seed: int = 0) -> Allocation:
        return pruner.compute_masks(self.plan, variables, spec, target, masks=masks,
                                    model=self.model, batches=batches,
                                    input_size=self.size, seed=seed)

    def soft_event(self, tree: Any, masks: Mapping) -> Any:
        return soft.soft_event(self.plan, tree, masks)

    def regularizer(self, spec, variables: Any, *, masks=None, batches=None, seed: int = 0):
        return regularize.build(self.plan, spec, variables, masks=masks, model=self.model,
                                batches=batches, input_size=self.size, seed=seed)

    def check_target(self, masks: Mapping | None, kind: str | None, target: float | None,
                     prefix: str = "--") -> None:
        pruner.check_target(self.plan, masks, self.size, kind, target, prefix)

    def small(self, masks: Mapping) -> PlanNetwork:
        return dataclasses.replace(self, plan=plan_materialize.small_plan(self.plan, masks))

    def slice_tree(self, masks: Mapping, tree: Any, small: PlanNetwork) -> Any:
        return plan_materialize.slice_tree(self.plan, masks, tree, small.plan)

    def slice_opt_state(self, masks: Mapping, opt_state: Any, new_init: Any,
                        small: PlanNetwork) -> Any:
        return plan_materialize.slice_opt_state(self.plan, masks, opt_state, new_init,
                                                small.plan)

    def recalibrate(self, variables: Any, batches: Iterable[dict], num_batches: int) -> Any:
        return recalibrate_bn(self.model, variables, batches, num_batches)


Network = PlanNetwork | TracedNetwork


def network(desc: Plan | ExampleNet | Network, template: nn.Module | None = None,
            input_size: int = 0) -> Network:
    """The network `desc` describes (a network as it is): a plan with the model options
    of `template` (a ResNet), or an example at `input_size` (0: its own)."""
    if isinstance(desc, (PlanNetwork, TracedNetwork)):
        return desc
    if isinstance(desc, Plan):
        return PlanNetwork(desc, template if isinstance(template, ResNet) else None,
                           input_size)
    return TracedNetwork(desc, input_size or desc.input_size)


def apply_kwargs(net: Network, masks: Mapping | None) -> dict:
    """The keyword arguments that run `net.model` masked by `masks` (none for a traced
    network: its masks are in its variables)."""
    return {"masks": masks} if masks and net.masks_in_apply else {}


__all__ = ["Network", "PlanNetwork", "TracedNetwork", "apply_kwargs", "check_target",
           "network"]
