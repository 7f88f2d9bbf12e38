"""`robopolicy pipeline`: the recipe behind the project's figures (robopolicy/pipeline.py) on a user's own store,
or on expert demos it collects: train (one stage, or stage 1 -> embedding cache -> stage 2), then evaluate where
the store was recorded. Every step resumes; a finished one is skipped."""
from __future__ import annotations

import argparse
from pathlib import Path

from robopolicy.cli import options
from robopolicy.errors import RobopolicyError


def cmd_pipeline(args: argparse.Namespace) -> int:
    from robopolicy import pipeline
    from robopolicy.config import load_config
    from robopolicy.data.store import DemoStore

    run = Path(args.out)
    if (args.store is None) == (args.task is None):
        raise RobopolicyError("pass either --store S (your demonstrations) or --task T (expert demos collected "
                              "into OUT/demos.zarr)")
    if args.store is not None:
        store = Path(args.store)
        DemoStore.open(store).close()  # a missing or damaged store fails here, in one line
    else:
        store = pipeline.demos(args.task, args.demos, run / "demos.zarr", obs=args.obs, progress=not args.quiet)
    cfg = load_config(args.config, args.overrides)
    stage2 = None if args.stage2 is None else load_config(args.stage2, args.stage2_override)
    policy = pipeline.policy(cfg, run, store, stage2, progress=not args.quiet)
    print(f"policy: {policy}")
    if args.episodes == 0:
        return 0
    from robopolicy.eval.report import report
    from robopolicy.eval.runner import Plan, checkpoint_suite

    try:
        suite = checkpoint_suite(policy, episodes=args.episodes)
    except RobopolicyError as e:
        print(f"not evaluated: {e}")
        return 0
    folder = pipeline.evaluated(Plan(suite, {suite.tasks[0]: policy}, options.acting(args)), run / "eval",
                                workers=args.workers, progress=not args.quiet)
    print((report([folder]) / "report.md").read_text().split("\n![")[0])
    print(f"serve it: robopolicy serve --checkpoint {policy}")
    return 0


def add(sub) -> None:
    """The pipeline verb."""
    p = sub.add_parser("pipeline", help="the staged recipe on your store: train (stage 1 -> cache -> stage 2), "
                       "evaluate; resumable", description=" ".join(__doc__.split()) + " Layout: OUT/train (one "
                       "stage) or OUT/stage1, OUT/cache, OUT/stage2; OUT/eval; OUT/demos.zarr with --task.")
    p.add_argument("--config", required=True, help="shipped config name or YAML path (stage 1 with --stage2)")
    p.add_argument("--store", help="your demo store (`robopolicy info` it first)")
    p.add_argument("--task", help="or collect expert demos of this task into OUT/demos.zarr")
    p.add_argument("--demos", type=int, default=50, help="demos to collect with --task (default: %(default)s)")
    p.add_argument("--obs", choices=("state", "image"), default="state", help="observations to collect with --task "
                   "(default: %(default)s)")
    p.add_argument("--stage2", help="a config trained on the stage-1 encoder's embedding cache (e.g. ptp_stage2)")
    p.add_argument("--stage2-override", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted override of the stage-2 config (repeatable)")
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes on the store's task; 0: none "
                   "(default: %(default)s)")
    options.add_acting(p)
    p.add_argument("--workers", type=int, default=2, help="evaluation env workers (default: %(default)s)")
    p.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="dotted overrides of --config, key.sub=value")
    p.set_defaults(func=cmd_pipeline)
