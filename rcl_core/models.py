"""MoCo v3 (Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021)
with small ResNet-style backbones sized for 8x8, 28x28 and 32x32 images.

Online encoder = backbone + projector + predictor; momentum encoder = EMA copy of backbone + projector,
its momentum rising from ``base_momentum`` to 1 on a cosine schedule.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


def stage_plan(image_size: int) -> list[int]:
    """Strides of the residual stages: down to a 4x4 (8x8 input) .. 8x8 (32x32 input) map."""
    return [1, 2] if image_size <= 8 else [1, 2, 2]


class Backbone(nn.Module):
    """A small ResNet: 3x3 stem, one residual block per stage, channels doubling per stride-2 stage.

    Input (B, C, S, S) with S in {8, 28, 32} (any S >= 4 works); output (B, out_dim) after global
    average pooling. ``out_dim = width * 2 ** (stages - 1)``.
    """

    def __init__(self, in_channels: int, image_size: int, width: int = 32):
        super().__init__()
        if in_channels < 1 or image_size < 4 or width < 1:
            raise ValueError(f"Backbone needs in_channels >= 1, image_size >= 4, width >= 1; got "
                             f"{in_channels}, {image_size}, {width}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        blocks, c = [], width
        for i, stride in enumerate(stage_plan(image_size)):
            cout = width * 2 ** i
            blocks.append(ResidualBlock(c, cout, stride))
            c = cout
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = c

    def forward(self, x):
        return self.blocks(self.stem(x)).mean((2, 3))


def mlp(in_dim: int, hidden: int, out: int, layers: int, last_bn: bool) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out, bias=not last_bn))
    if last_bn:
        # MoCo v3 ends projector and predictor with a BN without affine parameters.
        mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)


class MoCoV3(nn.Module):
    """Online and momentum encoders.

    ``forward(x1, x2)`` returns ``(q1, q2, k1, k2)``: queries (B, feature_dim) from the online encoder
    with predictor, keys (B, feature_dim) from the momentum encoder (no gradient).
    """

    def __init__(self, in_channels: int, image_size: int, width: int = 32, feature_dim: int = 128,
                 hidden_dim: int = 512, predictor_dim: int = 512):
        super().__init__()
        self.backbone = Backbone(in_channels, image_size, width)
        self.projector = mlp(self.backbone.out_dim, hidden_dim, feature_dim, 3, last_bn=True)
        self.predictor = mlp(feature_dim, predictor_dim, feature_dim, 2, last_bn=True)
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in self.momentum_parameters():
            p.requires_grad_(False)

    def momentum_parameters(self):
        yield from self.momentum_backbone.parameters()
        yield from self.momentum_projector.parameters()

    def online_parameters(self):
        yield from self.backbone.parameters()
        yield from self.projector.parameters()
        yield from self.predictor.parameters()

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        """EMA of the online backbone + projector into the momentum encoder (buffers copied)."""
        for online, target in ((self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)):
            po = list(online.parameters())
            pt = list(target.parameters())
            torch._foreach_mul_(pt, m)
            torch._foreach_add_(pt, po, alpha=1 - m)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        b = x1.shape[0]
        x = torch.cat([x1, x2])
        # BN statistics are per view in MoCo v3's per-GPU batches; a joint pass keeps one kernel launch and
        # lets BN see both views, which is what a single-device batch of 2B images does.
        q = self.predictor(self.projector(self.backbone(x)))
        with torch.no_grad():
            k = self.momentum_projector(self.momentum_backbone(x))
        return q[:b], q[b:], k[:b], k[b:]

    @torch.no_grad()
    def encode(self, x: torch.Tensor, momentum: bool = False, projected: bool = False) -> torch.Tensor:
        """Frozen features for evaluation: backbone output (or projector output with ``projected``)."""
        backbone = self.momentum_backbone if momentum else self.backbone
        h = backbone(x)
        if projected:
            h = (self.momentum_projector if momentum else self.projector)(h)
        return h


def momentum_at(progress: float, base: float) -> float:
    """MoCo v3 / BYOL schedule: base -> 1 on a half cosine over training progress in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1) / 2
