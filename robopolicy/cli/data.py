"""`robopolicy quickstart | tasks | collect | info | import`: demonstrations in, stores summarized."""
from __future__ import annotations

import argparse
from pathlib import Path

from robopolicy.errors import RobopolicyError

QUICKSTART_OUT = Path("datasets") / "quickstart.zarr"


def cmd_quickstart(args: argparse.Namespace) -> int:
    """The README's main job, for now: collect image demonstrations of a history-dependent task
    (cue-reach: reach the target a cue showed only in the first steps) and summarize them."""
    args.task, args.obs, args.seed_start, args.image_size, args.all, args.quiet = \
        "cue-reach", "image", 0, 96, False, False
    return cmd_collect(args)


def cmd_tasks(args: argparse.Namespace) -> int:
    from robopolicy import envs

    print(f"{'task':<20} {'kind':<10} {'obs keys (--obs image)':<32} {'action':<8} {'Hz':>4} {'steps':>5}  "
          f"{'memory':<8} what")
    for name, task in envs.TASKS.items():
        cls = task.factory
        keys = f"state({cls.state_dim}), {cls.default_camera}_image"
        memory = f"L={task.memory_span}" if task.memory_span else "-"
        print(f"{name:<20} {task.kind:<10} {keys:<32} {f'Box({cls.action_dim})':<8} "
              f"{cls.control_hz:>4g} {task.max_episode_steps:>5}  {memory:<8} {task.description}")
    print(f"\nmemory: history-dependent; L = steps back to the deciding information (the shipped long context, "
          f"To=16 with stride {envs.CONTEXT_STRIDE}, covers {15 * envs.CONTEXT_STRIDE}).")
    print(f"seeds: collection below {envs.EVAL_SEED_START:,}, evaluation from there up.")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from robopolicy.collect import collect
    from robopolicy.data.summary import summarize

    store, tried, succeeded = collect(args.task, args.episodes, args.out, obs=args.obs, seed_start=args.seed_start,
                                      image_size=args.image_size, keep_failures=args.all, progress=not args.quiet)
    with store:
        if tried:
            print(f"this run: {tried} expert episodes, {succeeded} successful")
        print(summarize(store))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from robopolicy.data.store import DemoStore
    from robopolicy.data.summary import summarize

    with DemoStore.open(args.store) as store:
        print(summarize(store, action_key=args.action_key))
        if args.check:
            problems = store.check(progress=True)
            if problems:
                raise RobopolicyError(f"{store.path}: {len(problems)} damaged chunk(s):\n  " + "\n  ".join(problems)
                                      + "\nRe-collect or re-import the store, or restore it from a copy.")
            print("check     every chunk reads back")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from robopolicy.data import importers
    from robopolicy.data.summary import summarize

    fn = {"robomimic": importers.import_robomimic, "dp": importers.import_diffusion_policy}[args.format]
    with fn(args.src, args.out, progress=not args.quiet) as store:
        print(summarize(store))
    return 0


def add(sub) -> None:
    """The data verbs."""
    p = sub.add_parser("quickstart", help="collect demonstrations of a history-dependent task and summarize them",
                       description=cmd_quickstart.__doc__)
    p.add_argument("--episodes", type=int, default=20, help="episodes to collect (default: %(default)s)")
    p.add_argument("--out", default=str(QUICKSTART_OUT), help="store to write (default: %(default)s)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("tasks", help="list the registered tasks", description="Tasks with observation keys, "
                       "action space, control rate, episode limit, and which are history-dependent (with L).")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("collect", help="collect scripted-expert demonstrations into a demo store",
                       description="Run a task's scripted expert on consecutive seeds and store its successful "
                                   "episodes (or all, with --all). Re-running the same command after an "
                                   "interruption continues where the store left off.")
    p.add_argument("--task", required=True, help="task name (see `robopolicy tasks`)")
    p.add_argument("--episodes", type=int, required=True, help="episodes the store should hold")
    p.add_argument("--obs", choices=("state", "image"), default="state", help="observations (default: %(default)s)")
    p.add_argument("--seed-start", type=int, default=0, help="first episode seed (default: %(default)s)")
    p.add_argument("--image-size", type=int, help="camera image size (default: the task's, 96 or 84)")
    p.add_argument("--all", action="store_true", help="also store the expert's failed episodes")
    p.add_argument("--out", required=True, help="store to write or continue, e.g. datasets/TASK.zarr")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("info", help="summarize a demo store", description="Episodes, lengths, keys, shapes, "
                       "dtypes, size on disk and action statistics of a demo store (folder or .zarr.zip).")
    p.add_argument("store", help="path of the store")
    p.add_argument("--check", action="store_true", help="also read every chunk and report missing or damaged ones")
    p.add_argument("--action-key", default="action", help="key to print statistics of (default: %(default)s)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import", help="import demonstrations from another format",
                       description="Copy demonstrations into a new demo store, exactly (dtypes, values, episode "
                                   "boundaries), keeping the source's environment description.")
    fmt = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, help_text in (("robomimic", "a robomimic .hdf5 file (data/demo_i/{obs/*,actions}, mask/*)"),
                            ("dp", "a Diffusion Policy replay buffer (.zarr folder or .zarr.zip, zarr 2 or 3)")):
        q = fmt.add_parser(name, help=help_text, description=f"Import {help_text}.")
        q.add_argument("src", help="source file or folder")
        q.add_argument("--out", required=True, help="new store to write (must not exist)")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        q.set_defaults(func=cmd_import)
