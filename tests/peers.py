"""Peers' real clients in venvs of their own (their pins clash with ours), created once and cached.

openpi's client (``openpi-client`` on PyPI) pins numpy<2; robopolicy runs on numpy 2. Its venv lives in
``.venv-peers/openpi`` (git-ignored) and is rebuilt when the pin below changes. A failed install fails
the test that needs it, with pip's output: never a silent skip.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPENPI = "openpi-client==0.1.2 typing_extensions"  # its client imports typing_extensions without declaring it


def openpi_python() -> Path:
    venv = ROOT / ".venv-peers" / "openpi"
    python, stamp = venv / "bin" / "python", venv / ".installed"
    if stamp.is_file() and stamp.read_text() == OPENPI and python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", *OPENPI.split()], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"pip install {OPENPI} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    stamp.write_text(OPENPI)
    return python
