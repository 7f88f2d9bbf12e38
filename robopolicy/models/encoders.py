"""Observation encoders: one vector per frame, from every camera and low-dim key.

Per camera: crop (random in training, center in eval), a conv trunk, spatial softmax keypoints,
a linear layer to ``feature_dim`` — Diffusion Policy's robomimic-style encoder. Trunks: ResNet-18
from scratch with GroupNorm instead of BatchNorm (the paper's), or a small CNN for CPU-sized runs.
Low-dim keys are concatenated after the camera features. Images arrive uint8 HWC and are scaled
here, on the device.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from einops import rearrange
from torch import nn

from robopolicy.errors import ConfigError
from robopolicy.models.config import EncoderConfig


class SpatialSoftmax(nn.Module):
    """Expected image coordinates of ``keypoints`` learned heat maps: (B, C, H, W) -> (B, 2K)."""

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.to_maps = nn.Conv2d(channels, keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.to_maps(x)
        b, k, h, w = maps.shape
        attention = maps.flatten(2).softmax(-1).view(b, k, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=attention.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=attention.dtype)
        return torch.cat([(attention.sum(2) * xs).sum(-1), (attention.sum(3) * ys).sum(-1)], dim=-1)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(channels // 16, 1), channels)


def resnet18_trunk() -> tuple[nn.Module, int]:
    import torchvision

    net = torchvision.models.resnet18(weights=None, norm_layer=_group_norm)
    return nn.Sequential(*list(net.children())[:-2]), 512  # drop the average pool and the classifier


def small_cnn_trunk() -> tuple[nn.Module, int]:
    layers, c_in = [], 3
    for c_out, stride in ((32, 2), (64, 2), (64, 1), (128, 2)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), _group_norm(c_out), nn.Mish()]
        c_in = c_out
    return nn.Sequential(*layers), c_in


TRUNKS = {"resnet18": resnet18_trunk, "small_cnn": small_cnn_trunk}


class CameraEncoder(nn.Module):
    def __init__(self, image_size: int, cfg: EncoderConfig):
        super().__init__()
        if cfg.trunk not in TRUNKS:
            raise ConfigError(f"encoder trunk must be one of {sorted(TRUNKS)}, got {cfg.trunk!r}")
        if cfg.crop is not None and not 0 < cfg.crop <= image_size:
            raise ConfigError(f"crop {cfg.crop} must be in (0, {image_size}] for {image_size}px images")
        self.crop = cfg.crop
        self.trunk, channels = TRUNKS[cfg.trunk]()
        self.keypoints = SpatialSoftmax(channels, cfg.keypoints)
        self.project = nn.Linear(2 * cfg.keypoints, cfg.feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> (N, feature_dim)."""
        x = rearrange(images, "n h w c -> n c h w").float() / 255.0
        if self.crop is not None and self.crop < x.shape[-1]:
            x = _random_crop(x, self.crop) if self.training else _center_crop(x, self.crop)
        return self.project(self.keypoints(self.trunk(x)))


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top: top + size, left: left + size]


def _random_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """An independent crop per image, as one batched gather."""
    n, _, h, w = x.shape
    top = torch.randint(0, h - size + 1, (n,), device=x.device)
    left = torch.randint(0, w - size + 1, (n,), device=x.device)
    rows = (top[:, None] + torch.arange(size, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(size, device=x.device))[:, None, None, :]
    return x[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[
        None, :, None, None], rows, cols]


class ObsEncoder(nn.Module):
    """obs dict of (B, To, ...) -> (B, To, D): camera features then low-dim keys, per frame."""

    def __init__(self, image_keys: Mapping[str, int], low_dim_keys: Mapping[str, int], cfg: EncoderConfig):
        super().__init__()
        self.image_keys, self.low_dim_keys = list(image_keys), list(low_dim_keys)
        self.cameras = nn.ModuleDict({k: CameraEncoder(size, cfg) for k, size in image_keys.items()})
        self.out_dim = cfg.feature_dim * len(image_keys) + sum(low_dim_keys.values())
        if self.out_dim == 0:
            raise ConfigError("the encoder needs at least one image or low-dim observation key")

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [k for k in self.image_keys + self.low_dim_keys if k not in obs]
        if missing:
            raise ConfigError(f"observation lacks {missing}; the encoder reads {self.image_keys + self.low_dim_keys}")
        parts = []
        for key in self.image_keys:
            images = obs[key]
            features = self.cameras[key](rearrange(images, "b t h w c -> (b t) h w c"))
            parts.append(rearrange(features, "(b t) f -> b t f", t=images.shape[1]))
        parts += [obs[k].float().flatten(2) for k in self.low_dim_keys]
        return torch.cat(parts, dim=-1)


__all__ = ["CameraEncoder", "EncoderConfig", "ObsEncoder", "SpatialSoftmax"]
