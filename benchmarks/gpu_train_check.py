"""The trainer on a GPU: the paper-sized image config (ResNet-18 per camera, U-Net 256-512-1024) on a
synthetic 96x96 store, streamed by 4 worker processes, bf16 autocast; eager, then torch.compile.
Prints samples/s and the data-wait fraction from the run's log (median over the logged intervals after
the first). Run: python benchmarks/gpu_train_check.py [--steps 300]"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from robopolicy.bench.data import synthetic_store
from robopolicy.config import load_config
from robopolicy.policy import Policy
from robopolicy.train.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--config", default="diffusion_unet_gpu")
    parser.add_argument("--eager-only", action="store_true", help="skip the torch.compile run")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_store(tmp / "demos.zarr", 40, 200).close()
        for compile_ in (False,) if args.eager_only else (False, True):
            out = tmp / f"run-compile-{compile_}"
            t0 = time.perf_counter()
            overrides = [f"train.steps={args.steps}", "train.log_every=25", f"train.checkpoint_every={args.steps}",
                         f"train.compile={str(compile_).lower()}", "data.obs_keys=[image,state]"]
            train(load_config(args.config, overrides), tmp / "demos.zarr", out, progress=False)
            wall = time.perf_counter() - t0
            rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][1:]
            rate = statistics.median(r["samples_s"] for r in rows)
            wait = statistics.median(r["data_wait"] for r in rows)
            print(f"{args.config} compile={compile_}: {args.steps} steps in {wall:.0f} s (setup and compile "
                  f"included); {rate:.0f} samples/s, data wait {wait:.0%} (median of logged intervals after the "
                  f"first); final loss {rows[-1]['loss']:.4f}", flush=True)
            Policy.load(out / "policy")


if __name__ == "__main__":
    main()
