"""Chunk latency per head through the server, at batch 1 and batch 8 (issue 11 §5's GPU point).

    python benchmarks/serve_chunk_latency.py OUT.json [--device cuda] [--calls 50]

For the shipped state `diffusion` (DDIM-10 U-Net) and `ebt` (2 steps) configs, untrained (latency does not
depend on the weights), a reach-shaped policy (39-d state, 4-d action) is saved and served with
`robopolicy serve --device D --act-batch 1` (one robot) and `--act-batch 8` (eight robots asking at once,
one batched call). Reported per head and batch: the server's own inference time per call (p50 / p99) and
the client's round trip. One prepared run of a few minutes for a session that has a GPU; it also runs on a
CPU (`--device cpu`), which is how it was checked. CUDA-graph capture of the denoising loop is not built:
measure first whether launch overhead dominates.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from robopolicy import provenance


def _policy(config: str, folder: Path):
    import torch

    from robopolicy.config import load_config
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.data.store import Field
    from robopolicy.policy import Policy

    schema = {"state": Field((39,), np.dtype(np.float32)), "action": Field((4,), np.dtype(np.float32))}
    rng = np.random.default_rng(0)
    norm = Normalizer.fit({"state": rng.normal(size=(64, 39)), "action": rng.uniform(-1, 1, (64, 4))},
                          {"state": "minmax", "action": "minmax"})
    torch.manual_seed(0)
    policy = Policy(load_config(config), schema, norm)
    policy.task = {"task": "reach", "control_hz": 80.0, "action_semantics": None, "env_spec": None}
    policy.save(folder)
    return Policy.load(folder)


def _window(policy, i: int = 0):
    from robopolicy.data.windows import Window

    d = policy.cfg.data
    rng = np.random.default_rng(i)
    return Window({"state": rng.normal(size=(d.n_obs, 39)).astype(np.float32)}, 0)


def _pct(x, q):
    return float(np.percentile(np.asarray(x), q))


def measure(policy, url: str, batch: int, calls: int) -> dict:
    from robopolicy.serve import protocol
    from robopolicy.serve.client import PolicyClient

    clients = [PolicyClient(url, timeout_s=120) for _ in range(batch)]
    msgs = [protocol.act_request(_window(policy, i), i, seed=i) for i in range(batch)]
    for c, m in zip(clients, msgs):  # warm-up (allocators, cuDNN autotuning)
        c.request(m)
    infer, trips, sizes = [], [], []

    def one(i):
        t = time.perf_counter()
        r = clients[i].request(msgs[i])
        trips.append((time.perf_counter() - t) * 1000)
        infer.append(r["server_timing"]["infer_ms"])
        sizes.append(r["server_timing"]["batch"])
    for _ in range(calls):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(batch)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    for c in clients:
        c.close()
    return {"batch": batch, "calls": calls, "mean_rows_per_call": float(np.mean(sizes)),
            "infer_ms": {"p50": _pct(infer, 50), "p99": _pct(infer, 99)},
            "round_trip_ms": {"p50": _pct(trips, 50), "p99": _pct(trips, 99)}}


def main(argv: list[str]) -> None:
    import torch

    from robopolicy.bench.serve import start_server

    out = Path(argv[0])
    device = argv[argv.index("--device") + 1] if "--device" in argv else ("cuda" if torch.cuda.is_available()
                                                                          else "cpu")
    calls = int(argv[argv.index("--calls") + 1]) if "--calls" in argv else 50
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for config in ("diffusion", "ebt"):
            policy = _policy(config, Path(tmp) / config)
            for batch in (1, 8):
                proc, url = start_server(Path(tmp) / config, threads=os.cpu_count() or 1,
                                         args=["--device", device, "--act-batch", str(batch)])
                try:
                    r = measure(policy, url, batch, calls)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                r.update(config=config, head=policy.cfg.policy.head)
                rows.append(r)
                print(f"{config:9s} batch {batch}: server inference p50 {r['infer_ms']['p50']:.2f} ms, p99 "
                      f"{r['infer_ms']['p99']:.2f} ms; round trip p50 {r['round_trip_ms']['p50']:.2f} ms "
                      f"(rows per call {r['mean_rows_per_call']:.1f})", flush=True)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    result = {"command": "python benchmarks/serve_chunk_latency.py " + " ".join(argv),
              "commit": provenance.git("rev-parse", "HEAD"),
              "machine": provenance.machine(), "device": device, "gpu": gpu,
              "torch": torch.__version__, "wall_s": time.time() - t0, "rows": rows,
              "targets_ms": {"diffusion DDIM-10 batch 1": 10.0, "ebt 2 steps batch 1": 3.0}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
