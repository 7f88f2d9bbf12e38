"""Importers: robomimic hdf5 files and Diffusion Policy zarr stores into a DemoStore.

Both copy values exactly (same dtypes, same bytes) and keep episode boundaries; what the source
says about its environment is kept as the store's env spec so evaluation can rebuild the task.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robopolicy.data.store import DemoStore, _open_zarr_group
from robopolicy.errors import ImportFormatError, StoreError

# robomimic per-step datasets beside obs/, renamed to the store's singular convention
ROBOMIMIC_STEP_KEYS = {"actions": "action", "rewards": "reward", "dones": "done", "states": "sim_state"}


def _demo_number(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else -1, name)


def import_robomimic(src: str | Path, out: str | Path, progress: bool = True) -> DemoStore:
    """robomimic layout: data/demo_i/{obs/<key>, actions, rewards, dones, states}, data.attrs['env_args'],
    mask/<filter_key> (lists of demo names). Demos go in robomimic's order (by number)."""
    import h5py

    src = Path(src)
    if not src.is_file():
        raise ImportFormatError(f"{src}: no such file. Pass the path of a robomimic .hdf5 file.")
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise ImportFormatError(f"{src}: not a readable HDF5 file ({e}).") from None
    with f:
        if "data" not in f or not any(k.startswith("demo") for k in f["data"]):
            raise ImportFormatError(f"{src}: not a robomimic file (it needs a data/ group of demo_<i> groups).")
        demos = sorted(f["data"].keys(), key=_demo_number)
        env_args = f["data"].attrs.get("env_args")
        env_args = json.loads(env_args) if env_args is not None else None
        masks = {k: [_decode(n) for n in f["mask"][k][:]] for k in f["mask"]} if "mask" in f else {}
        position = {name: i for i, name in enumerate(demos)}
        unknown = {k: [n for n in v if n not in position] for k, v in masks.items()}
        unknown = {k: v for k, v in unknown.items() if v}
        if unknown:
            raise ImportFormatError(f"{src}: mask/ names demos that data/ lacks: {unknown}.")
        fps = (env_args or {}).get("env_kwargs", {}).get("control_freq")
        store = DemoStore.create(out, fps=fps,
                                 env_spec={"type": "robomimic", "env_args": env_args} if env_args else None,
                                 extra={"source": {"format": "robomimic", "path": str(src.resolve()),
                                                   "episode_names": demos},
                                        "filter_keys": {k: sorted(position[n] for n in v) for k, v in masks.items()}})
        with store:
            for name in tqdm(demos, desc=f"import {src.name}", disable=not progress, unit="episode"):
                g = f["data"][name]
                if "actions" not in g or "obs" not in g:
                    raise ImportFormatError(f"{src}: data/{name} lacks actions or obs/; the store at {out} holds "
                                            f"the {store.n_episodes} demos before it.")
                try:
                    episode = {out_key: g[k][()] for k, out_key in ROBOMIMIC_STEP_KEYS.items() if k in g}
                    clash = set(g["obs"]) & set(episode)
                    episode.update({k: g["obs"][k][()] for k in g["obs"]})
                except OSError as e:
                    raise ImportFormatError(f"{src}: data/{name} cannot be read ({e}); the file is damaged. The store "
                                            f"at {out} holds the {store.n_episodes} demos before it.") from None
                if clash:
                    raise ImportFormatError(f"{src}: obs keys {sorted(clash)} clash with step keys; rename them.")
                store.append_episode(episode)
        return DemoStore.open(out)


def import_diffusion_policy(src: str | Path, out: str | Path, progress: bool = True) -> DemoStore:
    """Diffusion Policy's ReplayBuffer layout (data/<key>, meta/episode_ends), zarr 2 or 3, folder or .zip."""
    src = Path(src)
    _register_optional_codecs()
    try:
        group = _open_zarr_group(src, writable=False)
    except StoreError as e:
        raise ImportFormatError(str(e)) from None
    if "data" not in group or "meta" not in group or "episode_ends" not in group["meta"]:
        raise ImportFormatError(f"{src}: not a Diffusion Policy replay buffer (it needs data/<key> and "
                                "meta/episode_ends).")
    ends = np.asarray(group["meta/episode_ends"][:], np.int64)
    arrays = {k: a for k, a in group["data"].arrays()}
    if len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)
                      or any(a.shape[0] < ends[-1] for a in arrays.values())):
        raise ImportFormatError(f"{src}: meta/episode_ends does not fit the data arrays; the source is damaged.")
    store = DemoStore.create(out, extra={"source": {"format": "diffusion_policy", "path": str(src.resolve()),
                                                     "zarr_format": group.metadata.zarr_format}})
    with store:
        starts = np.concatenate([[0], ends[:-1]])
        for s, e in tqdm(list(zip(starts, ends)), desc=f"import {src.name}", disable=not progress, unit="episode"):
            try:
                episode = {k: np.asarray(a[s:e]) for k, a in arrays.items()}
            except Exception as err:
                raise ImportFormatError(f"{src}: frames {s}-{e - 1} cannot be read ({type(err).__name__}: {err}). "
                                        f"{_codec_hint(err)}The store at {out} holds the episodes before it.") \
                    from None
            store.append_episode(episode)
    return DemoStore.open(out)


def _decode(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _register_optional_codecs() -> None:
    """Diffusion Policy's image datasets use JPEG2000 from imagecodecs, when it is installed."""
    try:
        from imagecodecs.numcodecs import register_codecs
    except ImportError:
        return
    register_codecs()


def _codec_hint(err: Exception) -> str:
    if "codec" in str(err).lower():
        return "Its images use a codec from imagecodecs: `pip install imagecodecs` and run the import again. "
    return ""


__all__ = ["import_robomimic", "import_diffusion_policy"]
