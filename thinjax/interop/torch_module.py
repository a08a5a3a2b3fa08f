"""A pure-PyTorch ResNet built from any thinjax plan: ``TorchResNet(plan)``.

Irregular widths, removed blocks (the identity), basic and bottleneck blocks, CIFAR and
ImageNet stems: whatever `thinjax.plan.Plan` describes. Module names give the ThinResNet
release's state-dict keys (``embed.0``/``embed.1``, ``layerX.Y.convZ``/``bnZ``,
``layerX.Y.downsample.0/1``, ``fc``), so ``load_state_dict(strict=True)`` takes a release
checkpoint or a ``thinjax.export --format=torch`` file. A removed block has no parameters
and no keys. Convolutions pad symmetrically (PyTorch's own padding), as thinjax's do, so
both compute the same numbers.

    >>> from thinjax.interop.torch_module import TorchResNet, load_exported
    >>> model = load_exported("r56_pruned.pt")        # plan from r56_pruned.plan.json
    >>> logits = model(images_nchw)                   # eval mode, float32

This module needs PyTorch (``pip install 'thinjax[torch]'``); nothing else in thinjax
imports it unless asked to.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from thinjax.errors import require
from thinjax.interop.torch import to_state_dict
from thinjax.plan import BlockPlan, Plan

torch = require("torch", "torch", "PyTorch export")
nn = torch.nn

__all__ = ["TorchResNet", "from_variables", "load_exported", "plan_file_for"]


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, cin: int, inner: tuple[int, ...], out: int, stride: int, proj: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, inner[0], 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner[0])
        self.conv2 = nn.Conv2d(inner[0], out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = _projection(cin, out, stride) if proj else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + s)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1-BN (v1.5), shortcut, ReLU."""

    def __init__(self, cin: int, inner: tuple[int, ...], out: int, stride: int, proj: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, inner[0], 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner[0])
        self.conv2 = nn.Conv2d(inner[0], inner[1], 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner[1])
        self.conv3 = nn.Conv2d(inner[1], out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _projection(cin, out, stride) if proj else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + s)


def _projection(cin: int, out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))


def _block(plan: Plan, cin: int, b: BlockPlan, out: int, stride: int) -> nn.Module:
    if b.removed:  # no branch, no parameters: ReLU of a post-ReLU input, the identity
        return nn.ReLU()
    kind = Bottleneck if plan.block == "bottleneck" else BasicBlock
    return kind(cin, b.inner, out, stride, b.proj)


class TorchResNet(nn.Module):
    """The network of `plan` in PyTorch (NCHW input, float32 logits)."""

    def __init__(self, plan: Plan):
        super().__init__()
        self.plan = plan
        k, stride = (7, 2) if plan.stem == "imagenet" else (3, 1)
        stem: list[nn.Module] = [
            nn.Conv2d(plan.in_channels, plan.stem_width, k, stride, k // 2, bias=False),
            nn.BatchNorm2d(plan.stem_width), nn.ReLU()]
        if plan.stem == "imagenet":
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.embed = nn.Sequential(*stem)
        stages = []
        for name, cin, out, s, b in plan.blocks():
            si, bi = (int(part[5:]) for part in name.split("/"))
            if bi == 0:
                stages.append([])
            stages[si - 1].append(_block(plan, cin, b, out, s))
        for si, blocks in enumerate(stages):
            self.add_module(f"layer{si + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(plan.feature_width, plan.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for si in range(len(self.plan.stages)):
            x = getattr(self, f"layer{si + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def from_variables(plan: Plan, variables: Mapping) -> TorchResNet:
    """TorchResNet(plan) in eval mode holding thinjax's Flax `variables`."""
    sd = to_state_dict(plan, variables, style="release")
    model = TorchResNet(plan)
    model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in sd.items()},
                          strict=True)
    return model.eval()


def plan_file_for(path: str) -> str:
    """Where ``thinjax.export --format=torch`` puts the plan of the state dict at `path`."""
    root, _ = os.path.splitext(path)
    return root + ".plan.json"


def load_exported(path: str, plan: Plan | None = None) -> TorchResNet:
    """A TorchResNet (eval mode) from an exported state dict and its ``.plan.json``."""
    if plan is None:
        with open(plan_file_for(path)) as f:
            plan = Plan.from_dict(json.load(f))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = TorchResNet(plan)
    model.load_state_dict(sd, strict=True)
    return model.eval()
