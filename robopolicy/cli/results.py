"""`robopolicy results`: the results table's cells made, the README's generated sections written or checked."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # the repository (an editable install)


def cmd_results(args: argparse.Namespace) -> int:
    from robopolicy import results
    from robopolicy.results import figures as readme_figures

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


def add(sub) -> None:
    """The results verb."""
    p = sub.add_parser("results", help="the results table: make its cells, regenerate it, check it",
                       description="`run` trains and evaluates every cell of the plan that has no artifact yet "
                                   "(each step resumes across interruptions and sessions) and regenerates the "
                                   "README's results section; `table` regenerates it from the artifacts; "
                                   "`--check` exits 1 when the README and the artifacts disagree (CI runs it). "
                                   "Both recount every figure from the artifacts' per-episode records and refuse "
                                   "(exit 2) an artifact that contradicts them or names no commit.")
    p.add_argument("action", nargs="?", choices=("run", "table", "check"), help="default: table")
    p.add_argument("--check", action="store_true", help="the same as the `check` action")
    p.add_argument("--plan", default=str(CHECKOUT / "benchmarks" / "results.yaml"), help="cells (default: the "
                   "repository's benchmarks/results.yaml)")
    p.add_argument("--readme", default=str(CHECKOUT / "README.md"), help="README to write or check (default: the "
                   "repository's)")
    p.add_argument("--only", help="cells whose name matches this glob, e.g. 'cue-reach.*'")
    p.add_argument("--workers", type=int, default=1, help="evaluation env workers (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_results)
