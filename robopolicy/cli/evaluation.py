"""`robopolicy eval | report`: checkpoints rolled out on a task or a suite; shards merged into one report."""
from __future__ import annotations

import argparse
from pathlib import Path

from robopolicy.cli import options
from robopolicy.errors import RobopolicyError


def _shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i = n = -1
    if not 0 <= i < n:
        raise RobopolicyError(f"--shard takes i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return i, n


def cmd_eval(args: argparse.Namespace) -> int:
    from robopolicy.eval.report import report
    from robopolicy.eval.runner import Plan, checkpoint_suite, evaluate, resolve_checkpoints
    from robopolicy.eval.suite import load_suite

    if args.samples < 1 or args.workers < 1:
        raise RobopolicyError(f"--samples and --workers must be >= 1, got {args.samples} and {args.workers}")

    overrides = {"episodes": args.episodes, "seed_start": args.seed_start,
                 "seeds": "collection" if args.collection_seeds else None}
    if args.suite:
        if args.task:
            raise RobopolicyError("pass --task or --suite, not both")
        suite = load_suite(args.suite, **overrides)
    else:
        source = args.checkpoint or (args.checkpoints and args.task and str(Path(args.checkpoints) / args.task))
        if not source:
            raise RobopolicyError("pass --checkpoint C (and optionally --task T), or --suite S --checkpoints DIR")
        suite = checkpoint_suite(source, args.task, args.obs, **overrides)
    plan = Plan(suite, resolve_checkpoints(suite, args.checkpoint, args.checkpoints),
                options.acting(args), shard=_shard(args.shard))
    out = Path(args.out or Path("runs") / f"eval-{suite.name}")
    evaluate(plan, out, workers=args.workers, device=args.device, progress=not args.quiet,
             save_rollouts=args.save_rollouts)
    folder = report([out], videos=args.video)
    print((folder / "report.md").read_text().split("\n![")[0])
    print(f"report: {folder / 'report.md'}  (summary.json, success.png, episodes.jsonl beside it)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from robopolicy.eval.report import report

    folder = report(args.folders, args.out, videos=args.video)
    print((folder / "report.md").read_text().split("\n![")[0])
    print(f"report: {folder / 'report.md'}")
    return 0


def add(sub) -> None:
    """The evaluation verbs."""
    p = sub.add_parser("eval", help="evaluate checkpoints on a task or a suite (parallel, resumable, reported)",
                       description="Roll a checkpoint out on a task (default: the one it was trained on) or a suite "
                                   "(eval/suites/*.yaml: smoke, metaworld-8, memory, memory-image, lift) with worker "
                                   "processes stepping the envs and batched inference. Writes one record per "
                                   "finished episode, then summary.json, report.md (success with 95% Wilson "
                                   "intervals, lengths, latency), charts and videos. Rerun the same command to "
                                   "resume an interrupted evaluation. Reports use the final EMA weights.")
    p.add_argument("--checkpoint", help="policy folder (RUN/policy or RUN) for a task, or for every suite task")
    p.add_argument("--checkpoints", help="folder of runs, one per suite task: DIR/<task>/policy")
    p.add_argument("--task", help="one task (default: the checkpoint's training task)")
    p.add_argument("--suite", help="a shipped suite name or a suite YAML path")
    p.add_argument("--obs", choices=("state", "image"), help="observations for --task (default: what the "
                   "checkpoint reads)")
    p.add_argument("--episodes", type=int, help="episodes per task (default: the suite's, 50 for --task)")
    p.add_argument("--seed-start", type=int, help="offset into the evaluation seeds (default: 0)")
    p.add_argument("--collection-seeds", action="store_true", help="evaluate on the demonstrations' seeds instead "
                   "(a train-init diagnostic, labelled as such everywhere)")
    p.add_argument("--workers", type=int, default=2, help="env worker processes (default: %(default)s)")
    options.add_acting(p)
    p.add_argument("--video", type=int, default=0, help="mp4s of this many successes and failures per task")
    p.add_argument("--save-rollouts", help="also write the episodes into this demo store")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default: %(default)s)")
    p.add_argument("--out", help="run folder (default: runs/eval-<suite>)")
    p.add_argument("--shard", help="i/n: evaluate the i-th of n disjoint shares of the seeds (merge with "
                   "`robopolicy report`)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="merge evaluation folders (shards) into one report",
                       description="Merge the folders of one evaluation (e.g. the --shard i/n runs of a cluster "
                                   "job) and write summary.json, report.md and charts. Refuses folders of "
                                   "different checkpoints, suites or K.")
    p.add_argument("folders", nargs="+", help="evaluation folders")
    p.add_argument("--out", help="where to write the report (default: the first folder)")
    p.add_argument("--video", type=int, default=0, help="mp4s of this many successes and failures per task")
    p.set_defaults(func=cmd_report)
