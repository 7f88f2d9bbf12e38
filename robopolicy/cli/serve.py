"""`robopolicy serve | run`: a policy behind a websocket; an arm driven by it at its control rate. `run` imports
no torch (the robot's side)."""
from __future__ import annotations

import argparse
import sys

from robopolicy.cli import options
from robopolicy.errors import RobopolicyError


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from robopolicy.checkpoints import checkpoint_hash, find_checkpoint
    from robopolicy.device import choose as choose_device
    from robopolicy.policy import Policy
    from robopolicy.serve.protocol import read_token
    from robopolicy.serve.server import PolicyServer, ServerConfig, check_bind, check_port

    token = read_token(args.token_file)
    check_bind(args.host, token)  # before loading anything: a refused bind costs nothing
    check_port(args.host, args.port)
    folder = find_checkpoint(args.checkpoint)
    policy = Policy.load(folder, map_location=str(choose_device(args.device)))
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
    from robopolicy.serve.protocol import read_token
    from robopolicy.serve.run import run

    if args.episodes < 1 or args.samples < 1:
        raise RobopolicyError("--episodes and --samples must be >= 1")
    if args.video and not args.out:
        raise RobopolicyError("--video needs --out (the videos go into the report folder)")
    link = RemoteLink(args.server, read_token(args.token_file))
    try:
        cfg = LoopConfig(strategy=args.strategy, acting=options.acting(args),
                         inject_latency_s=args.inject_latency / 1000, ttl_s=args.ttl)
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


def add(sub) -> None:
    """The serving verbs."""
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
    options.add_acting(p)
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
