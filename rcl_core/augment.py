"""Batched augmentations that run on the training device: one call transforms a whole batch, each
sample with its own random parameters, drawn from a ``torch.Generator`` so runs are reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; one preset per kind of data (see :data:`PRESETS`)."""

    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.8, 1.15)
    translate: float = 0.15  # fraction of the image half-width
    shear: float = 0.15
    hflip: float = 0.0
    brightness: float = 0.3
    contrast: float = 0.3
    colour: float = 0.0  # strength of a random per-sample colour mixing (RGB only)
    channel_shuffle: float = 0.0  # probability of permuting the RGB channels
    invert: float = 0.0  # probability of inverting the image (1 - x)
    grayscale: float = 0.0
    blur: float = 0.0  # probability of a 3x3 Gaussian blur
    noise_std: float = 0.05
    cutout: float = 0.3  # probability of erasing one square
    cutout_size: float = 0.3  # its side as a fraction of the image side


PRESETS: dict[str, AugmentConfig] = {
    # Handwriting: no flips (a flipped 2 is not a 2), mild geometry.
    "digits": AugmentConfig(),
    # Generated shapes: rotation and flips are nuisances the representation should ignore, and so is
    # colour: two views of one image share its foreground and background tints, so without strong
    # colour changes instance discrimination is solved by colour alone and shape is never learned
    # (colour statistics alone pick a view's partner among 256 for ~50% of views with geometry only,
    # ~1% with this preset; the weaker colour=0.6, grayscale=0.2 preset leaves kNN near 0.2, not 0.45).
    "shapes": AugmentConfig(rotation_deg=180.0, scale=(0.75, 1.2), translate=0.2, shear=0.1, hflip=0.5,
                            brightness=0.4, contrast=0.4, colour=0.8, channel_shuffle=0.8, invert=0.3,
                            grayscale=0.3, blur=0.2, noise_std=0.04, cutout=0.25, cutout_size=0.25),
    "natural": AugmentConfig(rotation_deg=10.0, scale=(0.6, 1.3), translate=0.25, shear=0.05, hflip=0.5,
                             brightness=0.4, contrast=0.4, colour=0.5, grayscale=0.2, blur=0.5,
                             noise_std=0.02, cutout=0.0),
}


def preset(name: str, **overrides) -> AugmentConfig:
    if name not in PRESETS:
        raise ValueError(f"augmentation preset must be one of {sorted(PRESETS)}, got {name!r}")
    return replace(PRESETS[name], **overrides)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Return a randomly transformed copy of the batch ``x`` (B, C, H, W) in [0, 1].

    ``generator`` must live on ``x``'s device.
    """
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, channels, height, width), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    dev, g = x.device, generator
    # Geometry: one affine matrix per sample, applied with a single grid_sample.
    angle = _uniform(b, -1, 1, g, dev) * math.radians(cfg.rotation_deg)
    scale = torch.exp(_uniform(b, math.log(cfg.scale[0]), math.log(cfg.scale[1]), g, dev))
    shear = _uniform(b, -cfg.shear, cfg.shear, g, dev)
    tx, ty = (_uniform(b, -cfg.translate, cfg.translate, g, dev) for _ in range(2))
    flip = torch.where(torch.rand(b, generator=g, device=dev) < cfg.hflip, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    # grid = A @ output coords: the inverse map, so dividing by scale enlarges the content.
    theta[:, 0, 0] = (cos * flip) / scale
    theta[:, 0, 1] = (-sin + shear) / scale
    theta[:, 1, 0] = (sin * flip) / scale
    theta[:, 1, 1] = cos / scale
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Pad with each image's own border colour so the background stays plausible.
    border = x[:, :, [0, -1], :].mean((2, 3), keepdim=True)
    out = F.grid_sample(x - border, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + border

    if c == 3 and cfg.colour > 0:
        mix = torch.eye(3, device=dev, dtype=x.dtype) + cfg.colour * (torch.rand(b, 3, 3, generator=g, device=dev) - 0.5)
        mix = mix / mix.sum(2, keepdim=True).clamp_min(0.2)
        out = torch.einsum("bij,bjhw->bihw", mix, out)
    if c == 3 and cfg.channel_shuffle > 0:
        perm = torch.argsort(torch.rand(b, 3, generator=g, device=dev), dim=1)
        shuffled = out.gather(1, perm[:, :, None, None].expand_as(out))
        pick = (torch.rand(b, 1, 1, 1, generator=g, device=dev) < cfg.channel_shuffle)
        out = torch.where(pick, shuffled, out)
    if cfg.invert > 0:
        pick = (torch.rand(b, 1, 1, 1, generator=g, device=dev) < cfg.invert)
        out = torch.where(pick, 1 - out.clamp(0, 1), out)
    if c == 3 and cfg.grayscale > 0:
        gray = out.mean(1, keepdim=True).expand_as(out)
        pick = (torch.rand(b, 1, 1, 1, generator=g, device=dev) < cfg.grayscale)
        out = torch.where(pick, gray, out)
    if cfg.brightness > 0 or cfg.contrast > 0:
        mean = out.mean((1, 2, 3), keepdim=True)
        con = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, g, dev).view(b, 1, 1, 1)
        bri = _uniform(b, -cfg.brightness, cfg.brightness, g, dev).view(b, 1, 1, 1) * 0.5
        out = (out - mean) * con + mean + bri
    if cfg.blur > 0:
        k = torch.tensor([1.0, 2.0, 1.0], device=dev, dtype=x.dtype)
        k2 = (k[:, None] * k[None]) / 16
        blurred = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), k2.expand(c, 1, 3, 3), groups=c)
        pick = (torch.rand(b, 1, 1, 1, generator=g, device=dev) < cfg.blur)
        out = torch.where(pick, blurred, out)
    if cfg.noise_std > 0:
        out = out + cfg.noise_std * torch.randn(out.shape, generator=g, device=dev, dtype=x.dtype)
    if cfg.cutout > 0:
        side = max(1, round(cfg.cutout_size * min(h, w)))
        cy = torch.randint(0, h, (b,), generator=g, device=dev)
        cx = torch.randint(0, w, (b,), generator=g, device=dev)
        ys = torch.arange(h, device=dev)[None, :, None]
        xs = torch.arange(w, device=dev)[None, None, :]
        box = ((ys - cy.view(b, 1, 1)).abs() <= side // 2) & ((xs - cx.view(b, 1, 1)).abs() <= side // 2)
        pick = (torch.rand(b, 1, 1, generator=g, device=dev) < cfg.cutout)
        out = out.masked_fill((box & pick)[:, None], 0.0) + (box & pick)[:, None] * border
    return out.clamp(0, 1)
