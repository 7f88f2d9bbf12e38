"""Offscreen MuJoCo rendering, headless and fast.

MUJOCO_GL is chosen (EGL unless the user chose otherwise) in robopolicy/envs/__init__.py, which runs
before this module and before anything imports mujoco.
Shadows and MSAA dominate the cost of a small frame (73 ms -> 11 ms for an 84x84 Meta-World frame on
2 CPU cores), so both are off: set on the model before the first renderer exists.
"""
from __future__ import annotations

import atexit
import importlib
import os
import weakref

import mujoco
import numpy as np


def _headless_gl() -> None:
    """If something imported mujoco before robopolicy.envs (robosuite does) with MUJOCO_GL unset, mujoco
    chose GLFW, which needs a display: switch it to the headless backend asked for now."""
    want = os.environ.get("MUJOCO_GL", "egl").lower()
    if want not in ("egl", "osmesa") or os.environ.get("DISPLAY"):
        return
    from mujoco import gl_context

    backend = importlib.import_module(f"mujoco.{want}")
    if gl_context.GLContext is not backend.GLContext:
        gl_context.GLContext = backend.GLContext


_headless_gl()


def make_fast(model: mujoco.MjModel) -> None:
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0


class Cameras:
    """Renders named cameras of one model to uint8 HxWx3 images, upright."""

    def __init__(self, model: mujoco.MjModel, names: tuple[str, ...], size: int, flip: bool = True):
        make_fast(model)
        missing = [n for n in names if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, n) < 0]
        if missing:
            known = [model.camera(i).name for i in range(model.ncam)]
            raise ValueError(f"unknown camera(s) {missing}; this scene has {known}")
        self.names, self.size, self.flip = names, size, flip
        self._renderer = mujoco.Renderer(model, size, size)
        if not _LIVE:  # registered after the GL display's own exit handler, so it runs before it
            atexit.register(_close_all)
        _LIVE.add(self)

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        out = {}
        for name in self.names:
            self._renderer.update_scene(data, camera=name)
            img = self._renderer.render()
            out[f"{name}_image"] = np.ascontiguousarray(img[::-1] if self.flip else img)
        return out

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


# Renderers left to the garbage collector at interpreter exit find EGL gone and print errors: close first.
_LIVE: weakref.WeakSet[Cameras] = weakref.WeakSet()


def _close_all() -> None:
    for cameras in list(_LIVE):
        cameras.close()
