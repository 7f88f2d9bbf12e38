"""Videos of episodes, rendered afterwards: the episode's env rebuilt with cameras, reset to its seed, and
the actions physics was stepped with replayed (MuJoCo is deterministic, so the replay is the episode).
`robopolicy eval` and `robopolicy run` both render this way, so neither renders frames during the run."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def image_spec(spec: dict) -> dict:
    """The same env with camera observations on."""
    spec = dict(spec)
    if spec.get("type") == "robomimic":
        kwargs = {**spec["env_args"].get("env_kwargs", {}), "use_camera_obs": True}
        spec["env_args"] = {**spec["env_args"], "env_kwargs": kwargs}
    else:
        spec["obs"] = "image"
    return spec


def replay_frames(spec: dict, seed: int, actions: np.ndarray) -> list[np.ndarray]:
    """(H, W, 3) uint8 frames of the first camera of the env ``spec`` describes: the start, then after each
    executed action."""
    from robopolicy import envs

    env = envs.make_from_spec(image_spec(spec))
    try:
        obs, _ = env.reset(seed=int(seed))
        key = next(k for k in obs if k.endswith("_image"))
        frames = [obs[key]]
        for action in actions:
            obs, _, terminated, truncated, _ = env.step(action)
            frames.append(obs[key])
            if terminated or truncated:
                break
        return frames
    finally:
        env.close()


def write_mp4(frames: list[np.ndarray], path: str | Path, fps: float = 20.0) -> None:
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} (no mp4v encoder)")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
