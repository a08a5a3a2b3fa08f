"""A PyTorch ResNet written after the ThinResNet release and torchvision (test oracle).

Module names give the release's state-dict keys (embed.0/embed.1, layerX.Y.convZ,
downsample.0/1, fc); `strict=True` loading proves that thinjax's plan covers every key.
"""

import torch
from torch import nn


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, inner, out, stride, proj):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, inner[0], 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner[0])
        self.conv2 = nn.Conv2d(inner[0], out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                        nn.BatchNorm2d(out)) if proj else None

    def forward(self, x):
        s = self.downsample(x) if self.downsample is not None else x
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + s)


class Bottleneck(nn.Module):
    def __init__(self, cin, inner, out, stride, proj):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, inner[0], 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner[0])
        self.conv2 = nn.Conv2d(inner[0], inner[1], 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner[1])
        self.conv3 = nn.Conv2d(inner[1], out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                        nn.BatchNorm2d(out)) if proj else None

    def forward(self, x):
        s = self.downsample(x) if self.downsample is not None else x
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + s)


class TorchResNet(nn.Module):
    def __init__(self, plan):
        super().__init__()
        k, st = (7, 2) if plan.stem == "imagenet" else (3, 1)
        layers = [nn.Conv2d(plan.in_channels, plan.stem_width, k, st, k // 2, bias=False),
                  nn.BatchNorm2d(plan.stem_width), nn.ReLU()]
        if plan.stem == "imagenet":
            layers.append(nn.MaxPool2d(3, 2, 1))
        self.embed = nn.Sequential(*layers)
        block = Bottleneck if plan.block == "bottleneck" else Basic
        cin = plan.stem_width
        for si, s in enumerate(plan.stages):
            blocks = []
            for bi, b in enumerate(s.blocks):
                if b.removed:  # no branch, no parameters: the identity (on post-ReLU input)
                    blocks.append(nn.ReLU())
                else:
                    blocks.append(block(cin, b.inner, s.width, s.stride if bi == 0 else 1,
                                        b.proj))
                cin = s.width
            setattr(self, f"layer{si + 1}", nn.Sequential(*blocks))
        self.n_stages = len(plan.stages)
        self.fc = nn.Linear(cin, plan.num_classes)

    def forward(self, x):
        x = self.embed(x)
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))
