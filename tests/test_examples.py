"""The example networks (thinjax.models.examples): their sizes against torchvision's
published parameter counts, the width multiplier, their PyTorch twins' logits, and the
Torch-Pruning oracle's channel groups in Flax terms, checked by hand on one block each.

Variables are random draws of the shapes ``init`` gives (``jax.eval_shape``: nothing to
compile) with non-trivial BatchNorm statistics, layer scales and biases, so a mistake in
a layout or a statistic shows in the logits."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from thinjax.errors import ConfigError
from thinjax.models.examples import (
    ConvNeXt,
    MobileNetV2,
    UNet,
    ViT,
    make_divisible,
    param_count,
)
from thinjax.models.examples.mobilenet_v2 import IMAGENET_STRIDES

X = (2, 32, 32, 3)
SMALL = {"mobilenet_v2": MobileNetV2(width=0.25), "convnext": ConvNeXt(width=0.125),
         "unet": UNet(width=0.25)}


def shapes(module, shape=X) -> dict:
    """{variable path ('params/stem/conv/kernel'): shape} of `module`, from shapes alone."""
    v = jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                       jax.ShapeDtypeStruct(shape, jnp.float32))
    return {k: a.shape for k, a in traverse_util.flatten_dict(v, sep="/").items()}


def random_variables(module, shape=X, seed=0) -> dict:
    """Variables of `module` drawn at random: kernels N(0, 2/fan_in), BatchNorm variances
    in [0.5, 2], scales and layer scales in [0.5, 1.5], everything else N(0, 0.1)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        leaf = path.rsplit("/", 1)[-1]
        if leaf == "kernel":
            return rng.normal(0, math.sqrt(2 / math.prod(s[:-1])), s)  # He: ReLUs keep scale
        if leaf == "var":
            return rng.uniform(0.5, 2.0, s)
        if leaf in ("scale", "gamma"):
            return rng.uniform(0.5, 1.5, s)
        return rng.normal(0, 0.1, s)

    flat = {k: draw(k, s).astype(np.float32) for k, s in shapes(module, shape).items()}
    return traverse_util.unflatten_dict(flat, sep="/")


def twins():
    return pytest.importorskip("thinjax.models.examples.torch_twins")


def oracle():
    twins()
    pytest.importorskip("torch_pruning")
    import thinjax.models.examples.torch_pruning_oracle as o  # torch-pruning: test extra
    return o


# --- sizes and widths ---------------------------------------------------------------------

def test_imagenet_configurations_have_torchvisions_parameter_counts():
    imagenet = (1, 224, 224, 3)
    mobilenet = MobileNetV2(num_classes=1000, stem_stride=2, strides=IMAGENET_STRIDES)
    assert param_count(mobilenet, imagenet) == 3_504_872             # mobilenet_v2
    convnext_t = ConvNeXt(num_classes=1000, depths=(3, 3, 9, 3), patch=4)
    assert param_count(convnext_t, imagenet) == 28_589_128           # convnext_tiny
    vit_b16 = ViT(num_classes=1000, image=224, patch=16, depth=12, heads=12, head_dim=64)
    assert param_count(vit_b16, imagenet) == 86_567_656              # vit_b_16


def test_unet_parameter_count_by_hand():
    def double(cin, c):  # two bias-free 3x3 convs, two BatchNorms (scale, bias)
        return 9 * cin * c + 9 * c * c + 4 * c
    f = [32, 64, 128, 256]
    expected = double(3, 32) + sum(double(f[i - 1], f[i]) for i in (1, 2, 3))
    expected += sum(4 * f[i + 1] * f[i] + f[i] + double(2 * f[i], f[i]) for i in (0, 1, 2))
    expected += 32 * 2 + 2  # the 1x1 head
    assert param_count(UNet(), X) == expected == 1_927_042


def test_make_divisible_is_torchvisions_rounding():
    # nearest multiple of 8, never 10% below the value
    assert [make_divisible(v) for v in (11.2, 12, 20, 19.9, 32, 36, 1280)] == \
        [16, 16, 24, 24, 32, 40, 1280]
    assert make_divisible(3) == 8 and make_divisible(4, min_value=4) == 8


def test_width_multiplier_scales_every_width():
    half, double = shapes(MobileNetV2(width=0.5)), shapes(MobileNetV2(width=2.0))
    assert half["params/stem/conv/kernel"] == (3, 3, 3, 16)
    assert half["params/block1/expand/conv/kernel"] == (1, 1, 8, 48)    # 16*0.5 -> 8
    assert half["params/block1/dw/conv/kernel"] == (3, 3, 1, 48)        # depthwise
    assert half["params/block16/project/conv/kernel"] == (1, 1, 480, 160)  # 6 * 80
    assert half["params/last/conv/kernel"] == (1, 1, 160, 1280)         # max(1, width)
    assert double["params/last/conv/kernel"] == (1, 1, 640, 2560)
    assert double["params/stem/conv/kernel"] == (3, 3, 3, 64)
    cn = shapes(ConvNeXt(width=0.5))
    assert [cn[f"params/stage{s}/block0/gamma"] for s in range(4)] == \
        [(48,), (96,), (192,), (384,)]
    assert cn["params/stage2/block0/fc1/kernel"] == (192, 768)          # 4x MLP
    un = shapes(UNet(width=0.5))
    assert [un[f"params/enc{i}/conv2/kernel"][-1] for i in range(4)] == [16, 32, 64, 128]
    assert un["params/dec0/conv1/kernel"] == (3, 3, 32, 16)             # concat: 2f in
    vt = shapes(ViT(width=0.5))                                         # 4 heads -> 2
    assert vt["params/block0/attn/q/kernel"] == (64, 2, 32)
    assert vt["params/block0/attn/out/kernel"] == (2, 32, 64)
    assert vt["params/block0/fc1/kernel"] == (64, 256) and vt["params/cls"] == (1, 1, 64)


@pytest.mark.parametrize("module, out", [
    (MobileNetV2(width=0.25), (2, 10)), (ConvNeXt(width=0.125), (2, 10)),
    (UNet(width=0.25, num_classes=3), (2, 32, 32, 3)), (ViT(width=0.5, pool="mean"), (2, 10)),
])
def test_logits_shapes(module, out):
    v = random_variables(module)
    y = jax.jit(module.apply)(v, np.ones(X, np.float32))
    assert y.shape == out and bool(jnp.all(jnp.isfinite(y)))


# --- PyTorch twins ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SMALL))
def test_torch_twin_computes_the_same_logits(name):
    tw = twins()
    module = SMALL[name]
    v = random_variables(module, seed=1)
    x = np.random.default_rng(2).normal(size=X).astype(np.float32)
    y = np.asarray(jax.jit(module.apply)(v, x))
    net = tw.to_torch(module, v)
    with tw.torch.no_grad():
        yt = net(tw.torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    yt = yt.transpose(0, 2, 3, 1) if yt.ndim == 4 else yt
    # relative to how much the logits of the two images differ (the input's part):
    # measured 4e-6 (MobileNetV2), 1e-6 (ConvNeXt), 6e-7 (U-Net)
    spread = np.abs(y[0] - y[1]).max()
    assert spread > 1 and np.abs(y - yt).max() <= 3e-5 * spread
    n_flax = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v["params"]))
    assert sum(p.numel() for p in net.parameters()) == n_flax


def test_a_model_without_twin_is_refused():
    with pytest.raises(ConfigError, match="no PyTorch twin for ViT"):
        twins().twin_of(ViT())


# --- the Torch-Pruning oracle -------------------------------------------------------------

def bn(path: str, c: int) -> set:
    """The entries of BatchNorm `path` ('block7/expand/bn') over channels [0, c)."""
    return {(f"{col}/{path}/{leaf}", 0, 0, c) for col, leaf in (
        ("params", "scale"), ("params", "bias"), ("batch_stats", "mean"),
        ("batch_stats", "var"))}


def group_of(groups: set, entry: tuple) -> frozenset:
    (g,) = [g for g in groups if entry in g]
    return g


@pytest.fixture(scope="module")
def oracle_small():
    o = oracle()
    return {name: o.oracle_groups(m) for name, m in SMALL.items()}


def test_every_group_entry_is_a_slice_of_a_flax_variable(oracle_small):
    # counts derived by hand (widths at 0.25 / 0.125, CIFAR strides):
    # MobileNetV2: 16 expanded hidden widths; streams: stem + stages 1-2 (stride 1, width 8
    #   throughout, so residuals tie them), stages 3..7, the last conv: 16 + 1 + 5 + 1
    # ConvNeXt (1,1,1,1): 4 stage streams + 4 MLP hidden widths
    # U-Net, 4 levels: 2 per encoder level + 3 per decoder level (up, conv1, conv2)
    assert {k: len(g) for k, g in oracle_small.items()} == \
        {"mobilenet_v2": 23, "convnext": 8, "unet": 17}
    for name, groups in oracle_small.items():
        s = shapes(SMALL[name])
        owner = {}
        for g in groups:
            sizes = {stop - start for _, _, start, stop in g}
            assert len(sizes) == 1, (name, sorted(g))      # one width per group
            for path, axis, start, stop in g:
                assert 0 <= start < stop <= s[path][axis], (name, path, axis)
                assert (path, axis, start) not in owner, (name, path)  # in one group only
                owner[(path, axis, start)] = g
            # the classifier's outputs are in no group (its input rows are)
            assert not {(p, a) for p, a, _, _ in g} & {("params/head/kernel", len(
                s["params/head/kernel"]) - 1), ("params/head/bias", 0)}, name
        # every kernel's output axis is in a group, but the classifier's
        outs = {p for p, a, _ in owner if p.endswith("kernel") and a == len(s[p]) - 1}
        kernels = {p for p in s if p.endswith("kernel") and not p.startswith("params/head")}
        assert outs == kernels, name


def test_mobilenet_depthwise_conv_shares_the_expansion_group(oracle_small):
    # width 0.25: block7 (stage 4) maps 16 channels to 6 * 16 = 96 and back to 16
    groups, b = oracle_small["mobilenet_v2"], "block7"
    hidden = group_of(groups, (f"params/{b}/expand/conv/kernel", 3, 0, 96))
    assert hidden == frozenset(
        {(f"params/{b}/expand/conv/kernel", 3, 0, 96), (f"params/{b}/dw/conv/kernel", 3, 0, 96),
         (f"params/{b}/project/conv/kernel", 2, 0, 96)}
        | bn(f"{b}/expand/bn", 96) | bn(f"{b}/dw/bn", 96))
    # stage 4's stream: block6 starts it (stride 2), blocks 7-9 add their outputs to it
    stream = group_of(groups, ("params/block6/project/conv/kernel", 3, 0, 16))
    expected = {(f"params/block{i}/project/conv/kernel", 3, 0, 16) for i in (6, 7, 8, 9)}
    expected |= {(f"params/block{i}/expand/conv/kernel", 2, 0, 16) for i in (7, 8, 9, 10)}
    expected |= set().union(*(bn(f"block{i}/project/bn", 16) for i in (6, 7, 8, 9)))
    assert stream == frozenset(expected)


def test_unet_skip_channels_sit_after_the_upsampled_ones(oracle_small):
    # width 0.25: level 0 has 8 channels; dec0/conv1 reads concat([up (8), skip (8)])
    groups = oracle_small["unet"]
    skip = group_of(groups, ("params/enc0/conv2/kernel", 3, 0, 8))
    assert skip == frozenset({("params/enc0/conv2/kernel", 3, 0, 8),
                              ("params/enc1/conv1/kernel", 2, 0, 8),   # after max pooling
                              ("params/dec0/conv1/kernel", 2, 8, 16)}  # offset 8
                             | bn("enc0/bn2", 8))
    up = group_of(groups, ("params/dec0_up/kernel", 3, 0, 8))
    assert up == frozenset({("params/dec0_up/kernel", 3, 0, 8), ("params/dec0_up/bias", 0, 0, 8),
                            ("params/dec0/conv1/kernel", 2, 0, 8)})
    deeper = group_of(groups, ("params/enc2/conv2/kernel", 3, 0, 32))
    assert ("params/dec2/conv1/kernel", 2, 32, 64) in deeper


def test_convnext_stream_holds_norms_layer_scale_and_mlp(oracle_small):
    # width 0.125: stage 0 has 16 channels, its MLP 64
    groups = oracle_small["convnext"]
    p, b = "params", "params/stage0/block0"
    stream = group_of(groups, (f"{p}/stem/conv/kernel", 3, 0, 16))
    assert stream == frozenset(
        {(f"{p}/stem/conv/kernel", 3, 0, 16), (f"{p}/stem/conv/bias", 0, 0, 16),
         (f"{p}/stem/norm/scale", 0, 0, 16), (f"{p}/stem/norm/bias", 0, 0, 16),
         (f"{b}/dwconv/kernel", 3, 0, 16), (f"{b}/dwconv/bias", 0, 0, 16),
         (f"{b}/norm/scale", 0, 0, 16), (f"{b}/norm/bias", 0, 0, 16),
         (f"{b}/fc1/kernel", 0, 0, 16), (f"{b}/fc2/kernel", 1, 0, 16),
         (f"{b}/fc2/bias", 0, 0, 16), (f"{b}/gamma", 0, 0, 16),
         (f"{p}/stage1/down_norm/scale", 0, 0, 16), (f"{p}/stage1/down_norm/bias", 0, 0, 16),
         (f"{p}/stage1/down/kernel", 2, 0, 16)})
    mlp = group_of(groups, (f"{b}/fc1/kernel", 1, 0, 64))
    assert mlp == frozenset({(f"{b}/fc1/kernel", 1, 0, 64), (f"{b}/fc1/bias", 0, 0, 64),
                             (f"{b}/fc2/kernel", 0, 0, 64)})
    last = group_of(groups, (f"{p}/head/kernel", 0, 0, 96))  # the classifier's rows
    assert (f"{p}/head_norm/scale", 0, 0, 96) in last


def test_mobilenet_at_full_width_separates_the_stem_stream():
    # width 1: the stem's 32 channels feed block0 (32 -> 16, no residual), so the stem and
    # stages 1..7 are 8 streams; with the last conv and 16 hidden widths: 25 groups
    groups = oracle().oracle_groups(MobileNetV2())
    assert len(groups) == 25
    stem = group_of(groups, ("params/stem/conv/kernel", 3, 0, 32))
    assert ("params/block0/dw/conv/kernel", 3, 0, 32) in stem
    assert ("params/block0/project/conv/kernel", 2, 0, 32) in stem
