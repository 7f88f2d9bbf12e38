"""The house's structure: what imports what. A robot's computer runs `robopolicy run` without torch; reading a
config loads no model code; no import circle, at module level or hidden in a function."""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from conftest import ROOT, InProcessServer

# the installed package's folders: robopolicy/, and eval/ and envs/ installed as robopolicy.eval, robopolicy.envs
PACKAGES = {"robopolicy": ROOT / "robopolicy", "robopolicy.eval": ROOT / "eval", "robopolicy.envs": ROOT / "envs"}
HEAVY = ("torch", "diffusers")


def _loaded(code: str) -> set[str]:
    """Which of HEAVY a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_reading_a_config_loads_no_torch_nor_diffusers():
    assert _loaded("import robopolicy.config as c; c.load_config('ptp', ['train.steps=5'])") == set()


def test_robopolicy_run_drives_an_arm_without_importing_torch(reach_run, tmp_path):
    """The whole of `robopolicy run` (client, loop, shield, sim driver, report) against a real server, in a
    process that reports at exit whether torch was ever imported."""
    from robopolicy.policy import Policy

    with InProcessServer(Policy.load(reach_run / "policy")) as server:
        argv = ["run", "--server", server.url, "--robot", "sim:reach", "--lockstep", "--episodes", "1",
                "--out", str(tmp_path / "run"), "--quiet"]
        code = ("import atexit, sys\n"
                f"atexit.register(lambda: print('heavy:', [m for m in {HEAVY!r} if m in sys.modules]))\n"
                f"from robopolicy.cli import main\nsys.exit(main({argv!r}))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "episodes.jsonl").read_text().strip()  # it did drive the arm
    assert "heavy: []" in out.stdout, out.stdout


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports, at module level or inside functions alike."""
    mods = _modules()

    def ours(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = defaultdict(set)
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([base] if base
                                                                                                       else [])])
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = ours(name)
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle in ``graph``, as a path, or None."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_circle_between_modules_nor_between_packages():
    graph = import_graph()
    assert graph["robopolicy.policy"] and graph["robopolicy.cli"]  # the walk sees imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    # packages (robopolicy.data, robopolicy.serve, robopolicy.eval, ...; top-level modules stand alone)
    def group(mod):
        return ".".join(mod.split(".")[:2])
    packages = defaultdict(set)
    for mod, targets in graph.items():
        for target in targets:
            if group(mod) != group(target):
                packages[group(mod)].add(group(target))
    assert _cycle(packages) is None, " -> ".join(_cycle(packages))


def test_the_circle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_the_library_is_over_four_hundred_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if p.is_relative_to(ROOT / "robopolicy") or p.is_relative_to(ROOT / "eval")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_every_package_of_the_library_is_listed_for_installation():
    """setup.cfg names its packages: a new folder left out works in an editable install and is missing from a
    wheel."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "robopolicy").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
