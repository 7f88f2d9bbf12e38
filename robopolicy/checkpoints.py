"""Checkpoint folders: where a policy is (a policy folder, or a run folder's ``policy/``) and what identifies it
in records and a server's metadata (its files' sha256). No torch: tools that only name checkpoints load none."""
from __future__ import annotations

import hashlib
from pathlib import Path

from robopolicy.errors import ConfigError

FILES = ("model.safetensors", "config.yaml", "schema.json", "task.json")


def checkpoint_folder(path: str | Path) -> Path | None:
    """A policy folder, or a run folder's ``policy/`` (its final EMA weights); None when neither."""
    for candidate in (Path(path), Path(path) / "policy"):
        if (candidate / "model.safetensors").is_file():
            return candidate
    return None


def find_checkpoint(path: str | Path) -> Path:
    """checkpoint_folder, or one ConfigError saying whether ``path`` is missing or holds no policy."""
    folder = checkpoint_folder(path)
    if folder is None:
        if not Path(path).exists():
            raise ConfigError(f"{path}: does not exist; pass the run folder `robopolicy train` wrote (or its "
                              "policy/)")
        raise ConfigError(f"{path}: not a policy checkpoint (no model.safetensors, nor in policy/); pass the "
                          "folder `robopolicy train` wrote")
    return folder


def checkpoint_hash(folder: str | Path) -> str:
    """What identifies a checkpoint in evaluation records and a server's metadata: its files' sha256."""
    h = hashlib.sha256()
    for name in FILES:
        if (Path(folder) / name).is_file():
            h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()[:16]


def weights_hash(folder: str | Path) -> str:
    """The weights' sha256 alone: the same policy even where its config file gained a field since."""
    return hashlib.sha256((Path(folder) / "model.safetensors").read_bytes()).hexdigest()[:16]
