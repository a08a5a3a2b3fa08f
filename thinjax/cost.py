"""Parameters and multiply-accumulates (MACs) of a plan, computed analytically.

Counts follow torchvision / fvcore conventions: parameters are the trainable tensors
(conv kernels, BN scale and bias, the head's kernel and bias; BN running statistics are
not parameters); MACs count convolutions and the classifier (one MAC per weight use),
not BN, ReLU, pooling or additions. FLOPs = 2 x MACs.

    python -m thinjax.cost --model=resnet50 --width=64 --input-size=224
    python -m thinjax.cost --plan=plan.json --input-size=32 --json
"""

from __future__ import annotations

import dataclasses
import json
import sys

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


def conv_out(size: int, kernel: int, stride: int) -> int:
    pad = (kernel - 1) // 2
    return (size + 2 * pad - kernel) // stride + 1


def count(plan: Plan, input_size: int | None = None) -> Cost:
    """Params and MACs of `plan` on square `input_size` inputs (default 224 / 32 by stem)."""
    if input_size is None:
        input_size = 224 if plan.stem == "imagenet" else 32
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


def main(argv=None) -> int:
    import argparse
    from thinjax.plan import ARCHS, plan_from_width, PlanError
    ap = argparse.ArgumentParser(prog="python -m thinjax.cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(ARCHS), help="a regular ThinResNet")
    ap.add_argument("--width", type=int, default=None, help="width w (default 16 CIFAR, 64)")
    ap.add_argument("--base-width", type=int, default=None,
                    help="bottleneck inner width = planes*base_width/64 (default: = width)")
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--plan", help="a plan JSON file instead of --model")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    a = ap.parse_args(argv)
    try:
        if a.plan:
            plan, name = Plan.load(a.plan), a.plan
        elif a.model:
            plan = plan_from_width(a.model, a.width, a.num_classes, a.base_width)
            name = f"{a.model} w={plan.stem_width}"
        else:
            ap.error("give --model or --plan")
    except (PlanError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    c = count(plan, a.input_size)
    print(format_cost(name, c))
    print(plan.describe())
    if a.json:
        print(json.dumps({"name": name, **c.to_dict(), "plan": plan.to_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
