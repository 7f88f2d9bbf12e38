"""Options more than one verb takes, defined once: how a policy acts (robopolicy/acting.py), so `eval`, `run` and
`pipeline` offer the same set and a served policy can do whatever an evaluated one does."""
from __future__ import annotations

import argparse

from robopolicy.acting import Acting


def add_acting(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=1, metavar="K",
                   help="K candidates per chunk, the verifier executes the best (default: 1)")
    p.add_argument("--retry-above", type=float, default=None, metavar="SCORE",
                   help="draw a chunk again (once) when its best candidate scores above SCORE (EBT: its energy; the "
                        "verifier's score acted on). Default: off")
    p.add_argument("--refine-above", type=float, default=None, metavar="SCORE",
                   help="optimize a chunk a few steps more when its best candidate scores above SCORE (heads that "
                        "refine: EBT). Default: off")
    p.add_argument("--inpaint-past", action="store_true",
                   help="an experiment: inpaint the executed actions at the chunk's past tokens (does a long-context "
                        "policy trained without PTP recover with its true past?)")


def acting(args: argparse.Namespace) -> Acting:
    """The options given, checked (a bad one is one line naming it)."""
    return Acting(k=args.samples, retry_above=args.retry_above, refine_above=args.refine_above,
                  inpaint_past=args.inpaint_past)
