"""`robopolicy train | cache`: a policy trained on a store, an encoder's embeddings cached."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from robopolicy.errors import RobopolicyError


def cmd_train(args: argparse.Namespace) -> int:
    from robopolicy.config import load_config
    from robopolicy.train.trainer import train

    out = Path(args.out)
    if args.resume and not (out / "train_state.pt").is_file():  # else --resume would silently start afresh
        if not out.exists():
            raise RobopolicyError(f"--resume: {out} does not exist, so there is no run to resume; drop --resume "
                                  "to start a fresh run there")
        raise RobopolicyError(f"--resume: {out} holds no train_state.pt (no run, or one stopped before its first "
                              "checkpoint); drop --resume to start a fresh run"
                              + (" (after deleting its files, or in another --out)" if any(out.iterdir()) else ""))
    cfg = load_config(args.config, args.overrides)
    rollouts = None
    if cfg.eval.every > 0:
        from robopolicy.eval.training import PeriodicRollouts

        rollouts = PeriodicRollouts(cfg)
    policy_dir = train(cfg, args.store, args.out, resume=args.resume, progress=not args.quiet,
                       embeddings=args.embeddings, rollouts=rollouts)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"policy (EMA weights): {policy_dir}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from robopolicy.data.store import DemoStore
    from robopolicy.data.summary import summarize
    from robopolicy.embeddings import write_cache

    path = write_cache(args.checkpoint, args.store, args.out, batch_frames=args.batch, device=args.device,
                       progress=not args.quiet)
    with DemoStore.open(path) as cache:
        print(summarize(cache, action_key=cache.extra["embedding_cache"]["action_key"]))
    print(f"embedding cache: {path}\ntrain on it: robopolicy train --config NAME --embeddings {path} --out DIR")
    return 0


def add(sub) -> None:
    """The training verbs."""
    p = sub.add_parser("train", help="train a policy on a demo store",
                       description="Train a policy: a shipped config by name (or a YAML path) with dotted "
                                   "overrides, e.g. `robopolicy train --config diffusion --store S --out D "
                                   "train.steps=500`. Writes D/policy (EMA weights), D/last, D/train_state.pt.")
    p.add_argument("--config", required=True, help="shipped config name or YAML path")
    p.add_argument("--store", help="demo store to train on (with --embeddings: optional, checked against the "
                   "cache's source)")
    p.add_argument("--embeddings", help="train the head on this embedding cache (`robopolicy cache`); the policy "
                   "keeps the cache's encoder, frozen, and acts on raw observations")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="dotted overrides, key.sub=value")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache", help="embed every frame of a store with a trained policy's encoder",
                       description="Run a trained policy's encoder (frozen, eval mode: center crop) on every "
                                   "frame of a store and write one embedding per frame beside it, tied to the "
                                   "encoder's hash. `robopolicy train --embeddings CACHE` then trains a head with "
                                   "any context on it without decoding an image. Re-running resumes.")
    p.add_argument("--checkpoint", required=True, help="policy folder whose encoder to use (RUN/policy)")
    p.add_argument("--store", required=True, help="demo store to embed")
    p.add_argument("--out", help="cache to write (default: beside the store, STORE.emb-<encoder hash>.zarr)")
    p.add_argument("--batch", type=int, default=256, help="frames per encoder call (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cache)
