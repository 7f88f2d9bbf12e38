"""The observation encoder's config: a plain dataclass (no torch), read by robopolicy.config."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EncoderConfig:
    trunk: str = "small_cnn"  # "resnet18" or "small_cnn"
    feature_dim: int = 64  # per camera
    keypoints: int = 32
    crop: int | None = None  # crop size (random in training, center in eval); None: no crop
