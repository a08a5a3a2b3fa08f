"""The committed ResNet studies' pruning decisions are the same when the channel groups come
from the trace (issue 29's "the ResNet results of the committed studies are unchanged").

Each committed study (configs/study_cifar10_r56.py, configs/study_cifar10_r20_budget.py)
prunes the release's w=16 network one-shot with global allocation and round_to 1 to the
MACs of a thinner ThinResNet; here the same decision is made twice on the release weights,
from the plan's declared groups and from `thinjax.trace`'s groups: the masks and the
materialised variables are bit for bit the same, so every row those studies report (the
one-shot networks and what their fine-tuning starts from) is unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import release_path
from thinjax import trace as T
from thinjax.checkpoint import load_model
from thinjax.cost import count
from thinjax.models.resnet import ResNet
from thinjax.plan import plan_from_width
from thinjax.prune.groups import channel_groups, flatten
from thinjax.prune.materialize import materialize as plan_materialize
from thinjax.prune.pruner import compute_masks as plan_masks
from thinjax.prune.spec import PruneSpec

# (study config, release network, target widths, its data-free criteria)
STUDIES = [
    ("study_cifar10_r56", "resnet56", (8,), ("l1", "bn_scale")),
    ("study_cifar10_r20_budget", "resnet20", (6, 8), ("l1", "bn_scale", "fpgm")),
]
CASES = [(s, arch, w, c) for s, arch, ws, cs in STUDIES for w in ws for c in cs]


@pytest.mark.parametrize("study,arch,width,criterion", CASES)
def test_a_committed_studys_one_shot_decision_is_the_same_from_the_trace(
        study, arch, width, criterion):
    plan, v, _ = load_model(release_path(f"{arch}_width16_cifar10_ema.pt"))
    spec = PruneSpec(criterion=criterion, allocation="global", round_to=1,
                     target_kind="macs", target=float(count(plan_from_width(arch, width)).macs))
    target = spec.goal()
    planned = plan_masks(plan, v, spec, target, input_size=32)
    tr = T.trace(ResNet(plan), v, np.zeros((1, 32, 32, 3), np.float32))
    traced = T.compute_masks(tr.net(), v, spec, target)
    # the same groups in the same order (the trace names a residual stream by its first
    # producer, the plan by its stages)
    members = [sorted(g.producers + g.consumers) for g in channel_groups(plan).values()]
    assert [sorted(g.producers + g.consumers) for g in tr.net().groups.values()] == members
    assert len(planned.masks) == len(traced.masks) == len(members)
    for (name, m), t in zip(planned.masks.items(), traced.masks.values()):
        np.testing.assert_array_equal(np.asarray(m), np.asarray(t),
                                      err_msg=f"{study}: group {name}")
    new_plan, pv = plan_materialize(plan, planned.masks, v)
    _, tv = T.materialize(tr, traced.masks, v)
    a, b = flatten(pv), flatten(tv)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = count(new_plan, 32)
    assert (traced.params, traced.macs) == (c.params, c.macs)
    assert c.macs < count(plan, 32).macs / 2     # it did prune (to 14-25% of the MACs)
