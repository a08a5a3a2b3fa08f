"""PyTorch twins of the example CNNs (MobileNetV2, ConvNeXt, U-Net) and ``to_torch``, which
builds the twin of a Flax module and copies its variables, so both compute the same logits.

A twin's module names are the Flax module paths with ``.`` for ``/``: Flax
``params/block3/dw/conv/kernel`` is the ``weight`` of torch module ``block3.dw.conv``
(`flax_tensors` gives the whole correspondence, layouts included). Twins run NCHW; the
Flax models run NHWC. Needs the ``torch`` extra: imported by the tests alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flax import traverse_util

from thinjax.errors import ConfigError, require
from thinjax.models.examples.common import scaled
from thinjax.models.examples.convnext import ConvNeXt
from thinjax.models.examples.mobilenet_v2 import MobileNetV2, block_table
from thinjax.models.examples.unet import UNet

torch = require("torch", "torch", "the PyTorch twins of the example networks")
nn = torch.nn


class ConvBN(nn.Module):
    """``conv`` (bias-free, padding k // 2), ``bn``, then ReLU6 if `act`."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1,
                 groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = ConvBN(cin, hidden) if expansion != 1 else None
        self.dw = ConvBN(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.dw(x if self.expand is None else self.expand(x)))
        return x + y if self.residual else y


class TorchMobileNetV2(nn.Module):
    """`thinjax.models.examples.mobilenet_v2.MobileNetV2` in PyTorch."""

    def __init__(self, m: MobileNetV2):
        super().__init__()
        c = scaled(32, m.width)
        self.stem = ConvBN(3, c, 3, m.stem_stride)
        self.blocks = []
        for i, (cout, t, s) in enumerate(block_table(m.width, m.strides)):
            self.add_module(f"block{i}", InvertedResidual(c, cout, t, s))
            self.blocks.append(f"block{i}")
            c = cout
        last = scaled(1280 * max(1.0, m.width), 1.0)
        self.last = ConvBN(c, last)
        self.head = nn.Linear(last, m.num_classes)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = getattr(self, b)(x)
        return self.head(self.last(x).mean((2, 3)))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (torchvision's ConvNeXt)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.fc2(nn.functional.gelu(self.fc1(y)))
        return x + y.permute(0, 3, 1, 2)


class CNStage(nn.Module):
    def __init__(self, cin: int, dim: int, depth: int, downsample: bool):
        super().__init__()
        self.down_norm = LayerNorm2d(cin, eps=1e-6) if downsample else None
        self.down = nn.Conv2d(cin, dim, 2, 2) if downsample else None
        self.depth = depth
        for j in range(depth):
            self.add_module(f"block{j}", CNBlock(dim))

    def forward(self, x):
        x = x if self.down is None else self.down(self.down_norm(x))
        for j in range(self.depth):
            x = getattr(self, f"block{j}")(x)
        return x


class TorchConvNeXt(nn.Module):
    """`thinjax.models.examples.convnext.ConvNeXt` in PyTorch."""

    def __init__(self, m: ConvNeXt):
        super().__init__()
        dims = [scaled(d, m.width) for d in m.dims]
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(3, dims[0], m.patch, m.patch))
        self.stem.add_module("norm", LayerNorm2d(dims[0], eps=1e-6))
        self.stages = len(dims)
        for s, (depth, dim) in enumerate(zip(m.depths, dims, strict=True)):
            self.add_module(f"stage{s}", CNStage(dims[max(s - 1, 0)], dim, depth, s > 0))
        self.head_norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], m.num_classes)

    def forward(self, x):
        x = self.stem(x)
        for s in range(self.stages):
            x = getattr(self, f"stage{s}")(x)
        return self.head(self.head_norm(x.mean((2, 3))))


class DoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x)))


class TorchUNet(nn.Module):
    """`thinjax.models.examples.unet.UNet` in PyTorch (concatenation: upsampled, skip)."""

    def __init__(self, m: UNet):
        super().__init__()
        self.f = f = [scaled(c, m.width) for c in m.features]
        for i, c in enumerate(f):
            self.add_module(f"enc{i}", DoubleConv(f[i - 1] if i else 3, c))
        for i in range(len(f) - 1):
            self.add_module(f"dec{i}_up", nn.ConvTranspose2d(f[i + 1], f[i], 2, 2))
            self.add_module(f"dec{i}", DoubleConv(2 * f[i], f[i]))
        self.head = nn.Conv2d(f[0], m.num_classes, 1)

    def forward(self, x):
        skips = []
        for i in range(len(self.f)):
            x = getattr(self, f"enc{i}")(nn.functional.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for i in reversed(range(len(self.f) - 1)):
            up = getattr(self, f"dec{i}_up")(x)
            x = getattr(self, f"dec{i}")(torch.cat([up, skips[i]], 1))
        return self.head(x)


TWINS = {MobileNetV2: TorchMobileNetV2, ConvNeXt: TorchConvNeXt, UNet: TorchUNet}


def twin_of(module) -> nn.Module:
    """The PyTorch twin of Flax `module` (random weights), in eval mode."""
    if type(module) not in TWINS:
        raise ConfigError(f"no PyTorch twin for {type(module).__name__}: twins exist for "
                          f"{', '.join(t.__name__ for t in TWINS)} (torch_twins.TWINS)")
    return TWINS[type(module)](module).eval()


def _conv(a):        # HWIO -> OIHW (a depthwise kernel (kh, kw, 1, C) -> (C, 1, kh, kw))
    return a.transpose(3, 2, 0, 1)


def _conv_transpose(a):  # Flax (kh, kw, in, out), unflipped -> torch (in, out, kh, kw)
    return a[::-1, ::-1].transpose(2, 3, 0, 1)


def flax_tensors(name: str, module: nn.Module) -> dict[str, tuple[str, Callable]]:
    """{torch attribute of `module` (named `name` in its network): (the Flax variable's path
    in the variables dict, e.g. ``params/stem/conv/kernel``, a function from the Flax
    array to the torch tensor's layout)} for its own parameters and buffers."""
    p = "/".join(["params"] + ([name.replace(".", "/")] if name else []))
    same = lambda a: a  # noqa: E731
    if isinstance(module, nn.ConvTranspose2d):
        out = {"weight": (f"{p}/kernel", _conv_transpose)}
    elif isinstance(module, nn.Conv2d):
        out = {"weight": (f"{p}/kernel", _conv)}
    elif isinstance(module, nn.Linear):
        out = {"weight": (f"{p}/kernel", np.transpose)}
    elif isinstance(module, nn.BatchNorm2d):
        s = p.replace("params/", "batch_stats/", 1)
        return {"weight": (f"{p}/scale", same), "bias": (f"{p}/bias", same),
                "running_mean": (f"{s}/mean", same), "running_var": (f"{s}/var", same)}
    elif isinstance(module, nn.LayerNorm):
        return {"weight": (f"{p}/scale", same), "bias": (f"{p}/bias", same)}
    else:  # a bare parameter (ConvNeXt's gamma): same path, same layout
        return {n: (f"{p}/{n}", same) for n, _ in module.named_parameters(recurse=False)}
    if module.bias is not None:
        out["bias"] = (f"{p}/bias", same)
    return out


def to_torch(module, variables) -> nn.Module:
    """The PyTorch twin of Flax `module` holding `variables` (float32, eval mode)."""
    net = twin_of(module)
    flat = traverse_util.flatten_dict(dict(variables), sep="/")
    used = set()
    with torch.no_grad():
        for name, m in net.named_modules():
            tensors = dict(m.named_parameters(recurse=False)) | dict(m.named_buffers(
                recurse=False))
            for attr, (path, convert) in flax_tensors(name, m).items():
                value = np.array(convert(np.asarray(flat[path], np.float32)), order="C")
                tensors[attr].copy_(torch.from_numpy(value))
                used.add(path)
    if used != set(flat):
        raise ConfigError(f"{type(module).__name__}'s variables do not fit its twin: "
                          f"unused {sorted(set(flat) - used)[:5]}")
    return net
