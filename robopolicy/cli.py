"""`robopolicy <verb>`: the command line. Each verb parses its arguments and calls the library."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from robopolicy.errors import RobopolicyError

QUICKSTART_OUT = Path("datasets") / "quickstart.zarr"


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


def cmd_quickstart(args: argparse.Namespace) -> int:
    """The README's main job, for now: collect image demonstrations of a history-dependent task
    (cue-reach: reach the target a cue showed only in the first steps) and summarize them."""
    args.task, args.obs, args.seed_start, args.image_size, args.all, args.quiet = \
        "cue-reach", "image", 0, 96, False, False
    return cmd_collect(args)


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


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from robopolicy.eval.runner import find_checkpoint
    from robopolicy.policy import Policy, checkpoint_hash
    from robopolicy.serve.server import PolicyServer, ServerConfig, check_bind, check_port, read_token
    from robopolicy.train.trainer import _device

    token = read_token(args.token_file)
    check_bind(args.host, token)  # before loading anything: a refused bind costs nothing
    check_port(args.host, args.port)
    folder = find_checkpoint(args.checkpoint)
    policy = Policy.load(folder, map_location=str(_device(args.device)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = PolicyServer(policy, ServerConfig(args.host, args.port, token, act_batch=args.act_batch),
                          checkpoint_hash(folder))

    async def serve() -> None:  # "serving" once the port is bound, never before an error
        ready = asyncio.Event()

        async def announce() -> None:
            await ready.wait()
            print(f"serving {folder} ({policy.cfg.policy.head}) on ws://{args.host}:{server.port}  (health: "
                  f"http://{args.host}:{server.port}/healthz; SIGTERM or Ctrl-C drains and exits)", flush=True)

        announcer = asyncio.create_task(announce())
        try:
            await server.serve(ready)
        finally:
            announcer.cancel()

    asyncio.run(serve())
    return 0


def _floats(text: str) -> float | list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a comma-separated list of numbers") from None
    return values[0] if len(values) == 1 else values


def cmd_run(args: argparse.Namespace) -> int:
    from robopolicy import envs
    from robopolicy.serve.client import RemoteLink
    from robopolicy.serve.loop import LoopConfig
    from robopolicy.serve.run import run
    from robopolicy.serve.server import read_token

    if args.episodes < 1 or args.samples < 1:
        raise RobopolicyError("--episodes and --samples must be >= 1")
    if args.video and not args.out:
        raise RobopolicyError("--video needs --out (the videos go into the report folder)")
    link = RemoteLink(args.server, read_token(args.token_file))
    try:
        cfg = LoopConfig(strategy=args.strategy, k=args.samples, inject_latency_s=args.inject_latency / 1000,
                         ttl_s=args.ttl, retry_above=args.retry_above)
        seeds = list(envs.eval_seeds(args.episodes, args.seed_start))
        result = run(link, args.robot, seeds, cfg, lockstep=args.lockstep, out=args.out, progress=not args.quiet,
                     videos=args.video, max_step=args.max_step)
    finally:
        link.close()
    from robopolicy.serve.run import summary

    s = summary(result.episodes, 1000 / link.metadata["control_hz"])
    print(f"success {s['success_rate']:.2f} over {s['episodes']} episodes; misses {s['misses']} of {s['ticks']} "
          f"ticks ({s['miss_rate']:.2%}: {s['late']} late, {s['starved']} starved); {s['shield']['clamped']} commands "
          f"clamped; round trip p50 {s['round_trip_ms']['p50'] or 0:.1f} ms"
          + (f"; report in {result.out}" if result.out else ""))
    if result.stopped:
        print(f"robopolicy: the arm was stopped ({result.stopped}); the run ended early", file=sys.stderr)
    return result.exit_code


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
    policy_dir = train(cfg, args.store, args.out, resume=args.resume, progress=not args.quiet,
                       embeddings=args.embeddings)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"policy (EMA weights): {policy_dir}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from robopolicy.data.embeddings import write_cache
    from robopolicy.data.store import DemoStore
    from robopolicy.data.summary import summarize

    path = write_cache(args.checkpoint, args.store, args.out, batch_frames=args.batch, device=args.device,
                       progress=not args.quiet)
    with DemoStore.open(path) as cache:
        print(summarize(cache, action_key=cache.extra["embedding_cache"]["action_key"]))
    print(f"embedding cache: {path}\ntrain on it: robopolicy train --config NAME --embeddings {path} --out DIR")
    return 0


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
    from robopolicy.eval.runner import Plan, evaluate, resolve_checkpoints
    from robopolicy.eval.suite import load_suite, task_suite

    if args.samples < 1 or args.workers < 1:
        raise RobopolicyError(f"--samples and --workers must be >= 1, got {args.samples} and {args.workers}")

    overrides = {"episodes": args.episodes, "seed_start": args.seed_start,
                 "seeds": "collection" if args.collection_seeds else None}
    if args.suite:
        if args.task:
            raise RobopolicyError("pass --task or --suite, not both")
        suite = load_suite(args.suite, **overrides)
    else:
        task, obs = args.task, args.obs
        if task is None or obs is None:  # what the checkpoint says: where it was trained, what it reads
            from robopolicy.eval.runner import find_checkpoint
            from robopolicy.policy import Policy

            source = args.checkpoint or (args.checkpoints and task and str(Path(args.checkpoints) / task))
            if not source:
                raise RobopolicyError("pass --checkpoint C (and optionally --task T), or --suite S --checkpoints DIR")
            policy = Policy.load(find_checkpoint(source))
            card = policy.task or {}
            if task is None:
                task = card.get("task")
                if task is None:
                    raise RobopolicyError(f"{args.checkpoint} does not say which task it was trained on (its store "
                                          "named no env): pass --task T")
            if obs is None:
                obs = "image" if any(policy.schema[k].is_image for k in policy.obs_keys) else "state"
        suite = task_suite(task, obs, **overrides)
    plan = Plan(suite, resolve_checkpoints(suite, args.checkpoint, args.checkpoints), k=args.samples,
                inpaint_past=args.inpaint_past,
                shard=_shard(args.shard))
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


def cmd_results(args: argparse.Namespace) -> int:
    from robopolicy.eval import readme_figures, results

    plan = results.load_plan(args.plan)
    action = "check" if args.check else args.action or "table"
    if action == "run":
        written = results.run(plan, args.only, workers=args.workers, progress=not args.quiet)
        print(f"{len(written)} cell(s) made; artifacts in {plan.artifacts}")
        action = "table"
    if action == "table":
        changed = results.write_readme(plan, args.readme)
        print(f"{args.readme}: results section {'regenerated' if changed else 'already up to date'}")
        blocks = readme_figures.write(args.readme)
        print(f"{args.readme}: {blocks} benchmark paragraph(s) regenerated" if blocks else
              f"{args.readme}: the benchmark paragraphs already up to date")
        return 0
    problem = results.check(plan, args.readme) or readme_figures.check(args.readme)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    print(f"{args.readme}: the results section matches the {len(results.read_artifacts(plan))} artifacts, and "
          f"its {len(readme_figures.blocks(Path(args.readme).read_text()))} benchmark paragraphs theirs")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "data":
        from robopolicy.bench.data import run_data_bench

        run_data_bench(store=args.store, quick=args.quick, workers=args.workers, seconds=args.seconds)
    elif args.what == "eval":
        from robopolicy.bench.eval import run_eval_bench

        run_eval_bench(checkpoint=args.checkpoint, task=args.task, episodes=args.episodes, workers=args.workers,
                       quick=args.quick, out=args.out)
    elif args.what == "serve":
        from robopolicy.bench.serve import run_serve_bench

        run_serve_bench(calls=args.calls, seconds=args.seconds, clients=args.clients, quick=args.quick, out=args.out)
    elif args.what == "history":
        from robopolicy.bench.history import run_history_bench

        run_history_bench(task=args.task, episodes=args.episodes, seeds=args.seeds, config=args.config,
                          out=args.out, quick=args.quick, overrides=tuple(args.overrides))
    else:
        from robopolicy.bench.train import run_train_bench

        run_train_bench(config=args.config, batch=args.batch, seconds=args.seconds, calls=args.calls,
                        device=args.device, quick=args.quick, overrides=tuple(args.overrides))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robopolicy", description="robopolicy: robot visuomotor policies on "
                                     "demo stores. Run `robopolicy VERB --help` for each verb.")
    from robopolicy import __version__

    parser.add_argument("--version", action="version", version=f"robopolicy {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

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
    p.add_argument("--samples", type=int, default=1, help="K candidates per chunk, the verifier picks (default: 1)")
    p.add_argument("--inpaint-past", action="store_true", help="an experiment: inpaint the executed actions at the "
                   "chunk's past tokens (does a long-context policy trained without PTP recover with its true past?)")
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

    p = sub.add_parser("serve", help="serve a policy over a websocket (robopolicy's loop, openpi's client)",
                       description="Serve a checkpoint: websocket + msgpack (typed arrays, never pickle), "
                                   "wire-compatible with openpi's client; inference off the event loop, batched "
                                   "across connections. Binds 127.0.0.1 unless told otherwise; any other bind "
                                   "needs --token-file. GET /healthz answers while chunks are computed.")
    p.add_argument("--checkpoint", required=True, help="policy folder (RUN/policy or RUN)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--token-file", help="file holding the token clients must send (Authorization: Api-Key ...)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default: %(default)s)")
    p.add_argument("--act-batch", type=int, default=8, help="rows per network call, padded (default: %(default)s, "
                   "as `robopolicy eval`: up to 8 robots share a call, each bit-exact with eval); 1: the lowest "
                   "latency for a single robot (deterministic, but not bit-exact with eval)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="drive an arm with a served policy at its control rate",
                       description="The robot-side control loop: absolute deadlines, asynchronous inference, "
                                   "stale actions dropped, the safety shield around the arm; writes a run report "
                                   "(jitter, round trips, misses, scores, success). Exit code 3: the arm was "
                                   "stopped (server lost, time-to-live expired) and the run ended early.")
    p.add_argument("--server", required=True, help="ws://host:port of `robopolicy serve`")
    p.add_argument("--token-file", help="the server's token")
    p.add_argument("--robot", required=True, help="sim:<task> (a task of `robopolicy tasks`)")
    p.add_argument("--strategy", default="replan", choices=("replan", "ensemble", "rtc"),
                   help="chunk execution (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=10, help="episodes (default: %(default)s)")
    p.add_argument("--seed-start", type=int, default=0, help="offset into the evaluation seeds (default: 0)")
    p.add_argument("--samples", type=int, default=1, help="K candidates per chunk, the verifier picks")
    p.add_argument("--retry-above", type=float, default=None, metavar="SCORE",
                   help="draw a chunk again (once) when its best candidate's score is above SCORE (EBT: its energy; "
                   "the verifier's score acted on). Default: off")
    p.add_argument("--inject-latency", type=float, default=0.0, help="ms added to every round trip")
    p.add_argument("--max-step", type=_floats, default=None, metavar="S[,S...]",
                   help="the shield's per-tick step limit, one value or one per action dimension (default: the "
                        "arm's own, from its action scale; `sim:` tasks: 1 unit per axis, 2 for the gripper)")
    p.add_argument("--ttl", type=float, default=0.5, help="seconds a command stays valid: the arm stops this long "
                   "after the last one (default: %(default)s)")
    p.add_argument("--lockstep", action="store_true", help="simulated time (deterministic) instead of the wall "
                   "clock: sims only")
    p.add_argument("--video", type=int, default=0, metavar="N", help="mp4s of the first N episodes in --out/videos, "
                   "rendered after the run from the executed actions (default: none)")
    p.add_argument("--out", help="report folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("results", help="the results table: make its cells, regenerate it, check it",
                       description="`run` trains and evaluates every cell of the plan that has no artifact yet "
                                   "(each step resumes across interruptions and sessions) and regenerates the "
                                   "README's results section; `table` regenerates it from the artifacts; "
                                   "`--check` exits 1 when the README and the artifacts disagree (CI runs it). "
                                   "Both recount every figure from the artifacts' per-episode records and refuse "
                                   "(exit 2) an artifact that contradicts them or names no commit.")
    p.add_argument("action", nargs="?", choices=("run", "table", "check"), help="default: table")
    p.add_argument("--check", action="store_true", help="the same as the `check` action")
    checkout = Path(__file__).resolve().parent.parent  # the repository (an editable install)
    p.add_argument("--plan", default=str(checkout / "benchmarks" / "results.yaml"), help="cells (default: the "
                   "repository's benchmarks/results.yaml)")
    p.add_argument("--readme", default=str(checkout / "README.md"), help="README to write or check (default: the "
                   "repository's)")
    p.add_argument("--only", help="cells whose name matches this glob, e.g. 'cue-reach.*'")
    p.add_argument("--workers", type=int, default=1, help="evaluation env workers (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("bench", help="side-by-side benchmarks that print ratios")
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = what.add_parser("data", help="training-batch throughput: in RAM vs streamed vs naive per-window reads",
                        description="Batches/s of collated, normalized training batches (batch 64, 96x96 images; "
                                    "To=2/H=16 and To=16/H=32), in RAM, streamed from disk by worker processes, "
                                    "and read per window from zarr (the naive baseline), on one store.")
    q.add_argument("--store", help="store to read (default: a synthetic 96x96 image store in a temp folder)")
    q.add_argument("--workers", type=int, default=2, help="loader worker processes (default: %(default)s)")
    q.add_argument("--seconds", type=float, default=4.0, help="time per measurement (default: %(default)s)")
    q.add_argument("--quick", action="store_true", help="tiny store and short runs (a smoke test)")
    q.set_defaults(func=cmd_bench)
    q = what.add_parser("train", help="training samples/s on images vs cached embeddings; chunk latency per sampler",
                        description="From one run on a synthetic 96x96 store: training samples/s at To=16 end to "
                                    "end on images vs on cached embeddings (and the ratio), and chunk latency at "
                                    "batch 1 for K=1 and K=8 candidates, DDIM-10 vs DDPM-100.")
    q.add_argument("--config", default="diffusion_image", help="image config to time (default: %(default)s; "
                   "diffusion_unet_gpu for the paper's ResNet-18)")
    q.add_argument("--batch", type=int, default=32, help="training batch (default: %(default)s)")
    q.add_argument("--seconds", type=float, default=6.0, help="time per training measurement (default: %(default)s)")
    q.add_argument("--calls", type=int, default=15, help="sampling calls per latency (default: %(default)s)")
    q.add_argument("--device", default="auto", help="cpu, cuda, or auto (default: %(default)s)")
    q.add_argument("--quick", action="store_true", help="tiny store and short runs (a smoke test)")
    q.add_argument("overrides", nargs="*", help="dotted config overrides, key.sub=value")
    q.set_defaults(func=cmd_bench)
    q = what.add_parser("eval", help="evaluation episodes/min with W workers vs 1; time in physics, rendering, "
                        "inference", description="Episodes/min of one checkpoint with 1, 2, ... W env workers on "
                        "the same code path and thread settings (the ratio against 1 worker), and where the time "
                        "goes: physics, rendering (in the workers) and inference (in this process).")
    q.add_argument("--checkpoint", help="policy to evaluate (default: a small diffusion policy trained here on "
                   "reach demos)")
    q.add_argument("--task", default="reach", help="task (default: %(default)s)")
    q.add_argument("--episodes", type=int, default=8, help="episodes per setting (default: %(default)s)")
    q.add_argument("--workers", type=int, default=2, help="the most workers to time (default: %(default)s)")
    q.add_argument("--out", help="folder for the trained policy and runs (default: a temp folder)")
    q.add_argument("--quick", action="store_true", help="2 episodes, a tiny policy (a smoke test)")
    q.set_defaults(func=cmd_bench)
    q = what.add_parser("serve", help="serving: loopback overhead, loop jitter beside a busy server, batching",
                        description="Side by side in one run: an act request over loopback vs in process (two "
                                    "96x96 cameras + state, a 16x7 chunk); a 50 Hz loop beside a busy server, "
                                    "absolute deadlines vs a naive relative sleep; N clients at once vs one by one "
                                    "against the ideal of one batched call.")
    q.add_argument("--calls", type=int, default=50, help="round trips timed (default: %(default)s)")
    q.add_argument("--seconds", type=float, default=60.0, help="each loop's run (default: %(default)s)")
    q.add_argument("--clients", type=int, default=4, help="clients sending at once (default: %(default)s)")
    q.add_argument("--out", help="write the figures as JSON here")
    q.add_argument("--quick", action="store_true", help="a few calls, 2 s loops (a smoke test)")
    q.set_defaults(func=cmd_bench)
    q = what.add_parser("history", help="success of one head at To=16 vs To=2 on a history-dependent task",
                        description="Collects a state store of a memory task, trains the config at To=16 and at "
                                    "To=2 on it, evaluates both on the same seeds (and the To=16 policy with K=8 "
                                    "self-verified candidates) and prints success with Wilson "
                                    "95% intervals, split by the task's hidden variable. Tens of minutes on a CPU; "
                                    "rerun with the same --out to resume.")
    q.add_argument("--task", default="cue-reach", help="memory task (default: %(default)s)")
    q.add_argument("--episodes", type=int, default=50, help="demonstrations (default: %(default)s)")
    q.add_argument("--seeds", type=int, default=50, help="evaluation seeds per variant (default: %(default)s)")
    q.add_argument("--config", default="ptp", help="config trained at both contexts (default: %(default)s)")
    q.add_argument("--out", help="run folder: store, policies, resume (default: a new temp folder)")
    q.add_argument("--quick", action="store_true", help="4 demos, 20 steps, 4 seeds (a smoke test)")
    q.add_argument("overrides", nargs="*", help="dotted config overrides, key.sub=value")
    q.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from robopolicy.threads import configure_threads

    configure_threads()  # before any verb imports torch
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RobopolicyError as e:
        print(f"robopolicy: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robopolicy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
