"""Env factories for the evaluation tests, importable by the worker processes (they run there)."""
import os
from pathlib import Path


def crashing_env(spec: dict, crash_seed: int, marker: str | None = None):
    """The task of ``spec``, whose process aborts (SIGABRT, like a segfault) 5 steps into episode
    ``crash_seed``: every time, or with ``marker``, only the first time (the marker file remembers)."""
    import gymnasium as gym

    from robopolicy import envs

    class Crashing(gym.Wrapper):
        def reset(self, *, seed=None, options=None):
            self.crash = seed == crash_seed and (marker is None or not Path(marker).exists())
            self.t = 0
            return self.env.reset(seed=seed, options=options)

        def step(self, action):
            self.t += 1
            if self.crash and self.t == 5:
                if marker is not None:
                    Path(marker).write_text("crashed once")
                os.abort()
            return self.env.step(action)

    return Crashing(envs.make_from_spec(spec))
