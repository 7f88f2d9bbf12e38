"""Reading the artifacts the table stands on: each recounted from its per-episode records and refused (with the
file and the fix) where its summary disagrees with them, it names no commit, or it ran another definition of
its cell; the studies the prose quotes, recounted from their per-seed records alike."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from robopolicy import provenance
from robopolicy.errors import ConfigError, RobopolicyError
from robopolicy.results.plan import Cell, ResultsPlan


class ArtifactError(RobopolicyError):
    """An artifact the table cannot stand on: its summary disagrees with its episode records, it names no
    commit, or it was made for another definition of its cell."""


def read_artifacts(plan: ResultsPlan) -> dict[str, dict]:
    """The plan's artifacts, each refused unless its summary agrees with its episode records, it names its
    commit and it ran the cell the plan defines (so the table never prints a figure it cannot recount)."""
    out = {}
    for cell in plan.cells:
        path = plan.artifacts / f"{cell.name}.json"
        if path.exists():
            try:
                out[cell.name] = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: not valid JSON ({e}); remove it and rerun `robopolicy results run`"
                                  ) from None
            _vet(plan, cell, out[cell.name], path)
    return out


def counts(a: dict) -> tuple[int, int]:
    """(successes, trials), counted from the episode records, never read from the summary."""
    return sum(bool(e["success"]) for e in a["episodes"]), len(a["episodes"])


def _vet(plan: ResultsPlan, cell: Cell, a: dict, path: Path) -> None:
    where, fix = relative(path, plan.root), f"delete it and run `robopolicy results run --only {cell.name}`"
    commit = a.get("commit")
    if not provenance.known_commit(commit):
        raise ArtifactError(f"{where}: its commit is {commit!r}, so nothing names the code that made it; "
                            f"remake it from a git checkout: {fix}")
    episodes = a.get("episodes") or []
    seeds = [e.get("seed") for e in episodes]
    if not episodes or len(set(seeds)) != len(seeds):
        raise ArtifactError(f"{where}: its episode records are missing or repeat seeds; {fix}")
    successes, trials = counts(a)
    for key, recount in (("trials", trials), ("successes", successes)):
        if a.get(key) != recount:
            raise ArtifactError(f"{where}: `{key}` says {a.get(key)} but its episode records count {recount}; "
                                f"the artifact contradicts itself: {fix}")
    ran, planned = a.get("cell") or {}, asdict(cell)
    for key in planned.keys() - {"label", "group"}:  # fields added since an older artifact was made: skipped
        if key in ran and ran[key] != planned[key]:
            raise ArtifactError(f"{where}: it ran {key}={ran[key]!r} but the plan's cell says {planned[key]!r}; "
                                f"restore the plan or remake the cell: {fix}")


def discordant(a: dict, b: dict) -> tuple[int, int, int]:
    """Seeds only A won, seeds only B won, and how many seeds they share, from the episode records."""
    won_a = {e["seed"]: bool(e["success"]) for e in a["episodes"]}
    won_b = {e["seed"]: bool(e["success"]) for e in b["episodes"]}
    seeds = set(won_a) & set(won_b)
    return (sum(won_a[s] and not won_b[s] for s in seeds), sum(won_b[s] and not won_a[s] for s in seeds),
            len(seeds))


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def read_studies(plan, found: dict[str, dict]) -> dict[str, dict]:
    """Each study of the plan, its rows recounted from their per-seed records; refused (ArtifactError) where
    its summary disagrees with them or it names no commit."""
    out = {}
    for name, path in plan.studies.items():
        where = relative(path, plan.root)
        if not Path(path).is_file():
            raise ConfigError(f"{where}: no such file (study {name!r} of {plan.path})")
        data = json.loads(Path(path).read_text())
        fix = "rerun the command recorded in its `command` field"
        if not provenance.known_commit(data.get("commit")):
            raise ArtifactError(f"{where}: its commit is {data.get('commit')!r}, so nothing names the code that "
                                f"made it; {fix}, from a git checkout")
        out[name] = {"data": data, "rows": _recount(where, data, found, fix)}
    return out


def _recount(where: str, data: dict, found: dict[str, dict], fix: str) -> dict[tuple[str, str], dict]:
    from robopolicy.eval.stats import mcnemar_exact

    rows = {}
    for policy, entry in (data.get("policies") or {}).items():
        runs = entry.get("rows") or {}
        base = (runs.get("as it happened") or {}).get("success_by_seed")
        cell = found.get(entry.get("cell"))
        for name, row in runs.items():
            won = row.get("success_by_seed")
            if won is None:
                continue
            got = {"successes": sum(map(bool, won.values())), "trials": len(won)}
            said = {"successes": row.get("successes"), "trials": row.get("trials")}
            versus = row.get("vs_as_it_happened")
            if versus is not None and base is not None:
                shared = won.keys() & base.keys()
                got["gained"] = sum(bool(won[s]) and not base[s] for s in shared)
                got["lost"] = sum(bool(base[s]) and not won[s] for s in shared)
                got["p"] = mcnemar_exact(got["gained"], got["lost"])
                said.update(gained=versus.get("gained"), lost=versus.get("lost"), p=versus.get("mcnemar_p"))
            if "agrees_with_cell_seeds" in row and cell is not None:
                theirs = {str(e["seed"]): bool(e["success"]) for e in cell["episodes"]}
                got["agrees"] = sum(bool(won[s]) == theirs.get(s) for s in won)
                said["agrees"] = row["agrees_with_cell_seeds"]
            for key, value in said.items():
                if value is None or abs(value - got[key]) > 1e-9:
                    raise ArtifactError(f"{where}: `policies.{policy}.rows.{name}.{key}` says {value} but its "
                                        f"per-seed records count {got[key]:.3g}; {fix}")
            rows[(policy, name)] = got
    return rows
