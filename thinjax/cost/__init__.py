"""Parameters and multiply-accumulates (MACs) of a plan, computed analytically.

Counts follow torchvision / fvcore conventions: parameters are the trainable tensors
(conv kernels, BN scale and bias, the head's kernel and bias; BN running statistics are
not parameters); MACs count convolutions and the classifier (one MAC per weight use),
not BN, ReLU, pooling or additions. FLOPs = 2 x MACs.

    python -m thinjax.cost --model=resnet50 --width=64 --input_size=224
    python -m thinjax.cost --plan=plan.json --input_size=32 --json   (or: thinjax-cost ...)

This package is the library (``count``, ``Cost``); the command is ``thinjax/cost/__main__.py``.
"""

from __future__ import annotations

import dataclasses

from thinjax.errors import ConfigError
from thinjax.plan import Plan


@dataclasses.dataclass(frozen=True)
class Cost:
    params: int
    macs: int
    input_size: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "flops": self.flops,
                "input_size": self.input_size}


MAX_INPUT_SIZE = 4096  # pixels a side: a 4096^2 ResNet input already needs GBs per image


def check_input_size(size: int | None, flag: str = "--input_size") -> None:
    """Refuses an input size below one pixel or above MAX_INPUT_SIZE (None: the plan's
    default), before anything is allocated."""
    if size is not None and not 1 <= size <= MAX_INPUT_SIZE:
        raise ConfigError(f"{flag}={size}: an input size is a number of pixels from 1 to "
                          f"{MAX_INPUT_SIZE}, e.g. 32 (CIFAR) or 224 (ImageNet)")


def conv_out(size: int, kernel: int, stride: int) -> int:
    pad = (kernel - 1) // 2
    return (size + 2 * pad - kernel) // stride + 1


def count(plan: Plan, input_size: int | None = None) -> Cost:
    """Params and MACs of `plan` on square `input_size` inputs (default 224 / 32 by stem)."""
    if input_size is None:
        input_size = 224 if plan.stem == "imagenet" else 32
    check_input_size(input_size, "input size")
    params = macs = 0
    hw = input_size

    def conv(cin, cout, k, stride):
        nonlocal params, macs, hw
        hw_out = conv_out(hw, k, stride)
        params += k * k * cin * cout
        macs += k * k * cin * cout * hw_out * hw_out
        return hw_out

    def bn(c):
        nonlocal params
        params += 2 * c

    if plan.stem == "imagenet":
        hw = conv(plan.in_channels, plan.stem_width, 7, 2)
        hw = conv_out(hw, 3, 2)  # max-pool
    else:
        hw = conv(plan.in_channels, plan.stem_width, 3, 1)
    bn(plan.stem_width)
    for _, cin, cout, stride, b in plan.blocks():
        hw_in = hw
        if b.proj:
            conv(cin, cout, 1, stride)
            bn(cout)
            hw = hw_in
        if b.removed:
            hw = conv_out(hw_in, 1, stride)
            continue
        if plan.block == "basic":
            hw = conv(cin, b.inner[0], 3, stride)
            bn(b.inner[0])
            conv(b.inner[0], cout, 3, 1)
            bn(cout)
        else:
            conv(cin, b.inner[0], 1, 1)
            bn(b.inner[0])
            hw = conv(b.inner[0], b.inner[1], 3, stride)
            bn(b.inner[1])
            conv(b.inner[1], cout, 1, 1)
            bn(cout)
    params += plan.feature_width * plan.num_classes + plan.num_classes
    macs += plan.feature_width * plan.num_classes
    return Cost(params, macs, input_size)


def format_cost(name: str, c: Cost) -> str:
    return (f"{name}: {c.params:,} params, {c.macs / 1e6:,.2f} M MACs "
            f"({c.flops / 1e9:,.3f} GFLOPs, FLOPs = 2 x MACs) at {c.input_size}x{c.input_size}")
