"""`robopolicy results`: the results table, regenerated from committed artifacts.

A plan (``benchmarks/results.yaml``) lists cells: a task, a shipped config with overrides, how many expert
demos, a training seed, how many evaluation episodes (and K). ``run`` makes every cell that has no
artifact yet: it collects the demos, trains, evaluates, and writes ``<artifacts>/<cell>.json`` with the
per-episode records, the policy's weights hash, the config, the command, the commit and whether the tree
was clean, package versions, the machine and the training and evaluation wall-clock. Each step resumes (the
store continues, training resumes from its last checkpoint, evaluation from its records), so an interrupted
run, or one spread over sessions, picks up where it stopped; the work folder is git-ignored, the artifacts
are committed.
``table`` writes the README's results section from the artifacts alone, between two markers: the tables,
then the plan's ``prose:`` with each figure a placeholder filled from the artifacts (prose.py);
``check`` (in CI) fails when the README and the artifacts disagree. No figure is typed by hand. Both recount
every figure from the per-episode records and refuse an artifact whose summary disagrees with them, or that
does not name its commit.
"""
from robopolicy.results.artifacts import ArtifactError, counts, discordant, read_artifacts
from robopolicy.results.make import make_cell, run
from robopolicy.results.plan import Cell, ResultsPlan, load_plan, select
from robopolicy.results.table import BEGIN, END, check, generate, paired, table, write_readme

__all__ = ["BEGIN", "END", "ArtifactError", "Cell", "ResultsPlan", "check", "counts", "discordant", "generate",
           "load_plan", "make_cell", "paired", "read_artifacts", "run", "select", "table", "write_readme"]
