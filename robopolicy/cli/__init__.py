"""`robopolicy <verb>`: the command line. One module per group of verbs, each with its parsers beside its
handlers; the handlers parse, call the library and print."""
from __future__ import annotations

import argparse
import sys

from robopolicy.cli import bench, data, evaluation, pipeline, results, serve, train
from robopolicy.errors import RobopolicyError

GROUPS = (data, train, pipeline, evaluation, serve, results, bench)  # in the order `robopolicy --help` lists them


def build_parser() -> argparse.ArgumentParser:
    from robopolicy import __version__

    parser = argparse.ArgumentParser(prog="robopolicy", description="robopolicy: robot visuomotor policies on "
                                     "demo stores. Run `robopolicy VERB --help` for each verb.")
    parser.add_argument("--version", action="version", version=f"robopolicy {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in GROUPS:
        group.add(sub)
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
