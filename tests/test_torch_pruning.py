"""thinjax's channel groups and importance scores against Torch-Pruning's own (DepGraph).

The release's PyTorch ResNet-56 w=16 (tests/torch_reference.py, the shared checkpoint) is
traced by Torch-Pruning's DependencyGraph; each of its dependency groups is matched to the
thinjax group (thinjax.prune.groups, derived from the plan) with exactly the same members,
and Torch-Pruning's importances are compared with thinjax's criteria on the imported
network. Differences by design, and the thinjax options that remove them:

* Torch-Pruning reduces a score over *every* member of a group: producer convs (output
  channels), producer BatchNorms (|gamma|^p; not FPGM), consumer convs' input channels and
  the classifier's input rows. thinjax scores the producer filters by default
  (``prune.score_members="producers"``); ``"all"`` is Torch-Pruning's member set.
* MagnitudeImportance(p=2) sums *squared* entries per member: thinjax's ``l2`` is a norm
  per member, so the match is ``group_norm`` (DepGraph's group norm): its square divided by
  the number of members is Torch-Pruning's mean-reduced score.
* FPGMImportance(p) measures distances between |w|^p, not between the filters (the paper):
  ``prune.fpgm_p=p`` matches it, the default ``fpgm_p=0`` is the paper's.
* Torch-Pruning normalises each group's scores by their mean by default; thinjax does that
  at allocation (``prune.normalization="mean"``, `thinjax.prune.criteria.normalize`).
  Scores are compared raw (normalizer=None), and once normalised.

Torch-Pruning runs in float64 here (its float32 ``cdist`` takes a matrix-product shortcut
that is off by ~3e-5); scores then agree to 1e-5 relative to each group's largest.
"""

import re

import numpy as np
import pytest

from tests.conftest import release_path
from thinjax.interop.torch import import_checkpoint, load_state_dict
from thinjax.prune.criteria import ScoreInputs, normalize, score_groups
from thinjax.prune.groups import Group, channel_groups

torch = pytest.importorskip("torch")
tp = pytest.importorskip("torch_pruning")
from tests.torch_reference import TorchResNet  # noqa: E402

RTOL = 1e-5


def thinjax_path(module: str) -> str:
    """A torch module name of the release's ResNet -> the thinjax parameter it holds."""
    if module == "fc":
        return "head/kernel"
    p = module.replace("embed.0", "stem/conv").replace("embed.1", "stem/bn")
    p = re.sub(r"^layer(\d+)\.(\d+)\.", r"stage\1/block\2/", p)
    p = p.replace("downsample.0", "proj/conv").replace("downsample.1", "proj/bn")
    return p + ("/scale" if p.rsplit("/", 1)[-1].startswith("bn") else "/kernel")


def tp_members(group, names: dict) -> frozenset:
    """{(thinjax path, 'out' | 'in')} of a Torch-Pruning group's parametric members."""
    out = set()
    for dep, _ in group:
        if isinstance(dep.layer, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)):
            side = "in" if "in_channels" in dep.pruning_fn.__name__ else "out"
            out.add((thinjax_path(names[dep.layer]), side))
    return frozenset(out)


def tj_members(g: Group) -> frozenset:
    return frozenset({(p, "out") for p in g.kernels + g.bn_scales}
                     | {(p, "in") for p, _ in g.consumers})


@pytest.fixture(scope="module")
def release_r56():
    """(plan, thinjax variables, {thinjax group: Torch-Pruning group}) for the release's
    ResNet-56 w=16, Torch-Pruning's copy in float64."""
    path = release_path("resnet56_width16_cifar10_ema.pt")
    plan, variables = import_checkpoint(path)
    sd = {k.removeprefix("module."): torch.from_numpy(np.asarray(v))
          for k, v in load_state_dict(path).items()
          if not k.endswith(("num_batches_tracked", "n_averaged"))}
    net = TorchResNet(plan).eval()
    net.load_state_dict(sd, strict=True)
    net = net.double()
    dg = tp.DependencyGraph().build_dependency(
        net, example_inputs=torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    names = {m: n for n, m in net.named_modules()}
    by_members = {tj_members(g): n for n, g in channel_groups(plan).items()}
    matched = {}
    for group in dg.get_all_groups(ignored_layers=[net.fc], root_module_types=[torch.nn.Conv2d]):
        m = tp_members(group, names)
        assert m in by_members, f"no thinjax group has the members {sorted(m)}"
        matched[by_members[m]] = group
    return plan, variables, matched


def same_ranking(a: np.ndarray, b: np.ndarray, rtol: float = RTOL) -> bool:
    """Ordering the channels by `a` orders `b` too (ties within rtol of the scale)."""
    order = np.argsort(a, kind="stable")
    return bool(np.all(np.diff(b[order]) >= -rtol * np.abs(b).max()))


def compare(scores: dict, matched: dict, importance, transform=lambda t, n: t) -> None:
    for n, group in matched.items():
        ref = transform(importance(group).numpy().astype(np.float64), n)
        np.testing.assert_allclose(scores[n], ref, rtol=0, atol=RTOL * np.abs(ref).max(),
                                   err_msg=n)
        assert same_ranking(scores[n], ref) and same_ranking(ref, scores[n]), n


def test_every_dependency_group_is_a_thinjax_group(release_r56):
    plan, _, matched = release_r56
    groups = channel_groups(plan)
    assert len(groups) == 3 + 27          # three residual streams, one inner group per block
    assert set(matched) == set(groups)    # one-to-one, members identical (the fixture)


def test_l1_equals_magnitude_p1_over_all_members(release_r56):
    plan, variables, matched = release_r56
    scores = score_groups(ScoreInputs(plan, variables, members="all"), "l1", "mean")
    compare(scores, matched, tp.importance.MagnitudeImportance(p=1, normalizer=None))
    # Torch-Pruning's default per-group mean normalisation == thinjax's at allocation
    compare(normalize(scores, None, "mean"), matched,
            tp.importance.MagnitudeImportance(p=1, group_reduction="mean"))
    # by design, the default (producer filters only) differs on the residual streams
    own = score_groups(ScoreInputs(plan, variables), "l1", "mean")
    ref = tp.importance.MagnitudeImportance(p=1, normalizer=None)(matched["stage3"]).numpy()
    assert not np.allclose(own["stage3"], ref, rtol=1e-2)


def test_group_norm_equals_magnitude_p2(release_r56):
    plan, variables, matched = release_r56
    groups = channel_groups(plan)
    scores = score_groups(ScoreInputs(plan, variables, members="all"), "group_norm")
    # Torch-Pruning: mean over the members of the squared L2 norms = group_norm^2 / members
    squared = {n: s ** 2 for n, s in scores.items()}
    compare(squared, matched, tp.importance.MagnitudeImportance(p=2, normalizer=None),
            lambda t, n: t * len(tj_members(groups[n])))  # (the same ranking as the norm)


def test_fpgm_equals_fpgm_importance(release_r56):
    plan, variables, matched = release_r56
    scores = score_groups(ScoreInputs(plan, variables, members="all", fpgm_p=2), "fpgm")
    compare(scores, matched, tp.importance.FPGMImportance(p=2, normalizer=None))
    # the paper's distances between raw filters (fpgm_p=0) are another score
    raw = score_groups(ScoreInputs(plan, variables, members="all"), "fpgm")
    assert not np.allclose(raw["stage2"], scores["stage2"], rtol=1e-2)


def test_bn_scale_equals_bn_scale_importance(release_r56):
    plan, variables, matched = release_r56
    for members in ("producers", "all"):  # BatchNorms are producers only
        scores = score_groups(ScoreInputs(plan, variables, members=members), "bn_scale")
        compare(scores, matched, tp.importance.BNScaleImportance(normalizer=None))
