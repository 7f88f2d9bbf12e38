"""`robopolicy bench WHAT`: side-by-side benchmarks that print ratios."""
from __future__ import annotations

import argparse


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

        run_serve_bench(calls=args.calls, seconds=args.seconds, clients=args.clients, quick=args.quick, out=args.out,
                        configs=args.configs)
    elif args.what == "history":
        from robopolicy.bench.history import run_history_bench

        run_history_bench(task=args.task, episodes=args.episodes, seeds=args.seeds, config=args.config,
                          out=args.out, quick=args.quick, overrides=tuple(args.overrides))
    else:
        from robopolicy.bench.train import run_train_bench

        run_train_bench(config=args.config, batch=args.batch, seconds=args.seconds, calls=args.calls,
                        device=args.device, quick=args.quick, overrides=tuple(args.overrides))
    return 0


def add(sub) -> None:
    """The benchmark verbs."""
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
    q.add_argument("--configs", action="store_true", help="instead: per CPU-sized shipped config, its round trip at "
                   "act batch 1 and 8 against its chunk's span (does it fit real time on this machine?)")
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
