"""The prose under the results tables: the plan's ``prose:``, markdown whose every figure is a placeholder
that `robopolicy results table` fills from the artifacts, so that no figure in the README is typed by hand.

A placeholder is ``{{kind|argument|...}}``:

- ``{{successes|CELL}}``, ``{{trials|CELL}}``, ``{{rate|CELL}}``: counted from the cell's episode records;
- ``{{a_only|A|B}}``, ``{{b_only|A|B}}``, ``{{p|A|B}}``: the seeds only A (only B) won among those both ran,
  and the exact McNemar p of the two, from the episode records;
- ``{{cell|CELL|field}}``, ``{{config|CELL|dotted.key}}``: what the artifact says it ran (demos, steps, ...);
- ``{{dependency|CELL|rollouts}}`` (or ``expert``): the copycat measure the artifact recorded;
- ``{{STUDY|key}}``, ``{{STUDY|POLICY|ROW|field}}``: a study of the plan's ``studies:`` (so far the no-PTP
  stall study): a top-level number, or a row's successes, trials, gained, lost, p (against its "as it
  happened" row) or agrees (seeds whose outcome equals the cell's artifact), recounted from its per-seed
  records.

Digits typed in the template are refused, but for the names of settings (To=16, K=8, seed 1, stage 2,
R^2), code spans and link targets.
"""
from __future__ import annotations

import re

from robopolicy.errors import ConfigError
from robopolicy.results.plan import KINDS

PLACEHOLDER = re.compile(r"\{\{([^{}]+)\}\}")
NAMES = re.compile(r"(?:\bTo=|\bK=|\bseed[- ]|\bstage[- ]|\bR\^)\d+")  # settings' names, not results
CODE, LINK = re.compile(r"`[^`]*`"), re.compile(r"\]\([^)]*\)")
WIDTH = 110  # the README's line length
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def render(plan, found: dict[str, dict], studies: dict[str, dict]) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """The prose's lines with every placeholder filled, and per line the figures filled: (value, placeholder)."""
    bare = plan.prose
    for allowed in (PLACEHOLDER, CODE, LINK, NAMES):  # blanked, not removed: positions keep their lines
        bare = allowed.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), bare)
    typed = re.search(r"\S*\d\S*", bare)
    if typed:
        line = plan.prose[:typed.start()].count("\n") + 1
        raise ConfigError(f"{plan.path}: prose line {line}: {typed.group()!r} is a figure typed by hand; write "
                          "it as a placeholder such as {{successes|CELL}} (robopolicy/results/prose.py lists them), so "
                          "that it comes from an artifact")
    lines, figures = [], []
    for block in re.split(r"\n[ \t]*\n", plan.prose.strip("\n")):
        if lines:
            lines.append("")
            figures.append([])
        indent = re.match(r"[ \t]*", block).group()
        if block.lstrip().startswith(("#", "![")):  # a heading or a picture: one line, as written
            items = [(block.strip(), indent, indent, True)]
        else:  # a paragraph or list items, each reflowed (the figures' widths vary)
            items = [(text, indent + ("- " if bullet else ""), indent + ("  " if bullet else ""), False)
                     for bullet, text in re.findall(r"(^[ \t]*- )?((?:(?!^[ \t]*- ).)+)", block, re.M | re.S)]
        for text, first, rest, whole in items:
            wrapped, filled = wrap(text, first, rest, whole, lambda m: _value(m.group(1), plan, found, studies))
            lines += wrapped
            figures += filled
    return lines, figures


def wrap(text: str, first: str, rest: str, whole: bool, value) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """``text`` filled and wrapped at WIDTH (unless ``whole``), and per line the figures filled there."""
    # a placeholder is one word, even with spaces in it
    words = [text] if whole else re.findall(r"(?:\{\{[^{}]*\}\}|\S)+", text)
    lines, figures, line, found, empty = [], [], first, [], True
    for word in words:
        here = [(value(m), m.group(0)) for m in PLACEHOLDER.finditer(word)]
        word = PLACEHOLDER.sub(lambda m: value(m), word)
        if not empty and len(line) + 1 + len(word) > WIDTH:
            lines.append(line)
            figures.append(found)
            line, found, empty = rest, [], True
        line += ("" if empty else " ") + word
        found, empty = found + here, False
    return [*lines, line], [*figures, found]


def _value(spec: str, plan, found: dict[str, dict], studies: dict[str, dict]) -> str:
    from robopolicy.eval.stats import mcnemar_exact
    from robopolicy.results.artifacts import counts, discordant

    kind, *args = [part.strip() for part in spec.split("|")]
    names = {c.name for c in plan.cells}
    bad = ConfigError(f"{plan.path} prose: {{{{{spec}}}}} is not a placeholder (robopolicy/results/prose.py lists "
                      "them)")
    if kind in studies:
        study = studies[kind]
        if len(args) == 1 and isinstance(study["data"].get(args[0]), (int, float)):
            return _number(study["data"][args[0]])
        if len(args) != 3 or args[2] not in study["rows"].get(tuple(args[:2]), {}):
            raise bad
        value = study["rows"][tuple(args[:2])][args[2]]
        return f"{value:.2g}" if args[2] == "p" else _number(value)
    cells = args[:2] if kind in ("a_only", "b_only", "p") else args[:1]
    if kind not in KINDS or not cells or not set(cells) <= names:
        raise bad
    if any(c not in found for c in cells):
        return "pending"
    a = found[cells[0]]
    if kind in ("successes", "trials"):
        return _number(counts(a)[kind == "trials"])
    if kind == "rate":
        won, trials = counts(a)
        return f"{won / trials:.2f}"
    if kind in ("a_only", "b_only", "p"):
        only_a, only_b, _ = discordant(a, found[cells[1]])
        return {"a_only": str(only_a), "b_only": str(only_b), "p": f"{mcnemar_exact(only_a, only_b):.2g}"}[kind]
    if len(args) != 2:
        raise bad
    if kind == "dependency":
        value = (a.get("action_dependency") or {}).get(args[1])
        return "-" if value is None else f"{value:.2f}"
    value = a.get(kind) or {}
    for key in args[1].split("."):
        if not isinstance(value, dict) or key not in value:
            raise bad
        value = value[key]
    return _number(value)


def _number(x) -> str:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else f"{x:.3g}" if isinstance(x, float) \
        else str(x)


def source(spec: str, plan) -> str:
    """Where a placeholder's figure comes from, for the check's message."""
    from robopolicy.results.artifacts import relative

    kind, *args = [part.strip() for part in spec.strip("{}").split("|")]
    if kind in plan.studies:
        return f"{relative(plan.studies[kind], plan.root)}, recounted from its per-seed records"
    files = " and ".join(relative(plan.artifacts / f"{c}.json", plan.root) for c in
                         (args[:2] if kind in ("a_only", "b_only", "p") else args[:1]))
    return {"cell": f"the `cell` recorded in {files}", "config": f"the `config` recorded in {files}",
            "dependency": f"`action_dependency` in {files}"}.get(kind, f"the episode records of {files}")


def which_figure(plan, got: str, expected: str, figures: list[tuple[str, str]]) -> str:
    """'the figure X should read Y: it is {{...}}, from FILE' for the first figure of a line that differs."""
    have, want = NUMBER.findall(got), NUMBER.findall(expected)
    i = next((i for i, (x, y) in enumerate(zip(have, want)) if x != y), min(len(have), len(want)))
    if i >= len(want):
        return ""
    said = f"the figure {have[i]!r}" if i < len(have) else "a figure"
    spec = next((s for v, s in figures if v == want[i]), None) or next((s for v, s in figures if want[i] in v),
                                                                       None)
    where = f": it is {spec}, from {source(spec, plan)}" if spec else ""
    return f"{said} should read {want[i]!r}{where}\n"
