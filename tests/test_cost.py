import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import irregular_plan
from thinjax.cost import count
from thinjax.models.resnet import ResNet, variable_shapes
from thinjax.plan import Plan, plan_from_width

# (model, width, input size) -> (params, published MACs as printed, or None)
REFERENCE = {
    ("resnet18", 64, 224): (11_689_512, "1.814e9"),   # torchvision
    ("resnet34", 64, 224): (21_797_672, None),
    ("resnet50", 64, 224): (25_557_032, "4.089e9"),
    ("resnet101", 64, 224): (44_549_160, None),
    ("resnet152", 64, 224): (60_192_808, None),
    ("resnet20", 16, 32): (272_474, "40.8e6"),        # the study's release
    ("resnet56", 16, 32): (855_770, "125.75e6"),
    ("resnet50", 16, 224): (889_304, "87e6"),
    ("resnet50", 8, 224): (327_471, None),
}


def significant(s: str) -> int:
    return len(s.split("e")[0].replace(".", "").lstrip("0"))


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_counter_gives_the_published_figures(key):
    name, width, size = key
    params, macs = REFERENCE[key]
    c = count(plan_from_width(name, width), size)
    assert c.params == params
    if macs is not None:
        digits = significant(macs)  # compare to every digit the reference gives
        assert float(f"{c.macs:.{digits}g}") == float(macs)
    assert c.flops == 2 * c.macs


def xla_convention(plan, size):
    """(MACs without zero-padding taps, conv output elements): XLA's cost analysis counts
    only kernel taps that land inside the input; the counter follows torchvision/fvcore
    and counts every tap. Independent of thinjax.cost on purpose."""
    def taps(n, k, s):
        p = (k - 1) // 2
        out = (n + 2 * p - k) // s + 1
        return sum(sum(1 for i in range(k) if 0 <= o * s - p + i < n) for o in range(out)), out

    macs = acts = 0

    def conv(cin, cout, k, s, hw):
        nonlocal macs, acts
        t, out = taps(hw, k, s)
        macs += t * t * cin * cout
        acts += out * out * cout
        return out

    if plan.stem == "imagenet":
        hw = conv(3, plan.stem_width, 7, 2, size)
        hw = (hw + 2 - 3) // 2 + 1
    else:
        hw = conv(3, plan.stem_width, 3, 1, size)
    for _, cin, cout, s, b in plan.blocks():
        h0 = hw
        if b.proj:
            hw = conv(cin, cout, 1, s, h0)
        if b.removed:
            continue
        if plan.block == "basic":
            hw = conv(cin, b.inner[0], 3, s, h0)
            conv(b.inner[0], cout, 3, 1, hw)
        else:
            conv(cin, b.inner[0], 1, 1, h0)
            hw = conv(b.inner[0], b.inner[1], 3, s, h0)
            conv(b.inner[1], cout, 1, 1, hw)
    return macs + plan.feature_width * plan.num_classes, acts


def leaves_size(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("plan, size", [
    (plan_from_width("resnet18", 64), 224),
    (plan_from_width("resnet50", 16), 224),
    (plan_from_width("resnet56", 16), 32),
    (plan_from_width("resnet50_cifar", 16, base_width=64), 32),
    (irregular_plan(), 32),
    (irregular_plan(), 20),  # odd sizes through stride 2
], ids=["r18", "thin-r50-w16", "r56", "r50-cifar", "irregular32", "irregular20"])
def test_counter_agrees_with_the_tree_and_with_xla(plan, size):
    c = count(plan, size)
    shapes = variable_shapes(plan)
    assert leaves_size(shapes["params"]) == c.params
    model = ResNet(plan, conv_impl="xla")  # XLA counts its own convolutions, not custom calls
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    compiled = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = cost["flops"]
    valid_macs, acts = xla_convention(plan, size)
    # the counter's MACs minus the taps on zero padding...
    assert valid_macs <= c.macs <= 1.15 * valid_macs
    # ...is what XLA counts (2 flops per MAC), plus elementwise work (BN, ReLU, adds,
    # pooling) of at most 20 flops per activation
    assert 2 * valid_macs <= xla_flops <= 2 * valid_macs + 20 * acts, (xla_flops, valid_macs)
    if plan.stem_width == 64:
        assert xla_flops == pytest.approx(2 * valid_macs, rel=0.01)


def test_cost_command_prints_figures_and_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "thinjax.cost", "--model=resnet50", "--width=64",
                          "--input_size=224", "--json"], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()
    assert "25,557,032 params" in out[0] and "4,089.18 M MACs" in out[0]
    d = json.loads(out[-1])
    assert d["params"] == 25_557_032 and d["flops"] == 2 * d["macs"]
    p = tmp_path / "plan.json"
    irregular_plan().save(p)
    d2 = json.loads(subprocess.run([sys.executable, "-m", "thinjax.cost", f"--plan={p}",
                                    "--json"], capture_output=True, text=True,
                                   check=True).stdout.strip().splitlines()[-1])
    assert d2["params"] == count(irregular_plan()).params
    assert Plan.from_dict(d2["plan"]) == irregular_plan()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "thinjax.cost", f"--plan={bad}"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a JSON plan" in r.stderr
