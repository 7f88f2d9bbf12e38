"""A demo store's summary, as `robopolicy info` prints it."""
from __future__ import annotations

import json

import numpy as np

from robopolicy.data.store import DemoStore


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return ""


def summarize(store: DemoStore, action_key: str = "action") -> str:
    lengths = store.episode_lengths
    lines = [f"store     {store.path}",
             f"episodes  {store.n_episodes}   frames {store.n_frames}"
             + (f"   length min/mean/max {lengths.min()}/{lengths.mean():.1f}/{lengths.max()}" if len(lengths) else ""),
             f"on disk   {_size(store.size_on_disk())}" + (f"   fps {store.fps:g}" if store.fps else "")]
    if store.env_spec:
        lines.append(f"env spec  {json.dumps(store.env_spec, sort_keys=True)[:200]}")
    filters = store.extra.get("filter_keys") or {}
    if filters:
        lines.append("filters   " + ", ".join(f"{k} ({len(v)})" for k, v in sorted(filters.items())))
    lines.append("keys")
    for key, field in store.schema.items():
        arr = store.array(key)
        kind = "image" if field.is_image else "low-dim"
        lines.append(f"  {key:<24} {str(field.shape):<16} {field.dtype.name:<8} {kind:<8} "
                     f"chunk {arr.chunks[0]} frames")
    if action_key in store.keys and store.n_frames:
        a = store.read(action_key, 0, store.n_frames).reshape(store.n_frames, -1).astype(np.float64)
        lines.append(f"{action_key} statistics (per dimension)")
        lines.append(f"  {'dim':>4} {'min':>10} {'max':>10} {'mean':>10} {'std':>10}")
        for d in range(a.shape[1]):
            col = a[:, d]
            lines.append(f"  {d:>4} {col.min():>10.4g} {col.max():>10.4g} {col.mean():>10.4g} {col.std():>10.4g}")
    return "\n".join(lines)
