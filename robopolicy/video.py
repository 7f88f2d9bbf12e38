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


def control_hz(spec: dict | None, default: float = 20.0) -> float:
    """The control rate of the env ``spec`` describes: one frame per action, so a video at this rate plays in
    real time."""
    from robopolicy import envs

    card = envs.task_card(spec) if spec else None
    return float(card["control_hz"]) if card and card.get("control_hz") else default


def write_mp4(frames: list[np.ndarray], path: str | Path, fps: float) -> None:
    """H.264 (yuv420p) MP4, what browsers play (OpenCV's wheels only write MPEG-4 Part 2, which they do not),
    at ``fps``: pass the task's control rate (`control_hz`) so the video plays in real time."""
    from fractions import Fraction

    import av

    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))  # yuv420p halves the chroma: even sizes only
    with av.open(str(path), "w", container_options={"movflags": "+faststart"}) as container:  # plays while loading
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        for frame in frames:
            image = np.pad(np.ascontiguousarray(frame), pad, mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())  # flush
