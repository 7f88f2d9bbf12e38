"""Where a figure came from: the code's git commit and whether its tree was clean, the package versions, the
machine. Every record that stands behind a figure (results cells, evaluation runs, benchmark artifacts) takes
these from here."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from robopolicy.errors import ConfigError

PACKAGES = ("robopolicy", "torch", "numpy", "mujoco", "metaworld", "robosuite", "diffusers", "zarr", "gymnasium")


def git(*args: str) -> str | None:
    """git's answer in this code's checkout; None when git is missing or this is not a checkout."""
    try:
        r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent)
    except OSError:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def commit() -> str:
    """The full hash of the code's commit; ConfigError when git cannot tell (a record must name its code)."""
    found = git("rev-parse", "HEAD")
    if not found:
        raise ConfigError("cannot determine the git commit of this code (`git rev-parse HEAD` failed): every "
                          "artifact names the code that made it, so run this from the repository's git checkout, "
                          "with git installed")
    return found


def known_commit(value) -> bool:
    """A full git hash (older code wrote "unknown" when git could not tell)."""
    return isinstance(value, str) and len(value) == 40 and all(ch in "0123456789abcdef" for ch in value)


def tree_clean(exclude: Path | None = None) -> bool:
    """No uncommitted change in the checkout, besides ``exclude`` (a folder a run writes into as it goes)."""
    top = git("rev-parse", "--show-toplevel")
    if top is None:
        return False
    skip = []
    if exclude is not None:
        try:
            skip = [f":(top,exclude){Path(exclude).resolve().relative_to(Path(top).resolve())}"]
        except ValueError:
            pass  # outside the checkout
    return git("status", "--porcelain", "--", ":(top)", *skip) == ""


def versions() -> dict[str, str]:
    """Python's and the named packages' versions."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine(node: bool = False) -> str:
    """"x86_64, 2 cores" (and the host's name with ``node``)."""
    return f"{platform.machine()}, {os.cpu_count()} cores" + (f", {platform.node()}" if node else "")
