"""The README's benchmark paragraphs: generated from templates whose every figure comes from an artifact, and
checked (`robopolicy results --check`) figure for figure."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import ROOT, run_cli
from robopolicy.errors import ConfigError
from robopolicy.results import figures as readme_figures

BLOCK = readme_figures.MARK.format("benchmarks/readme/bench.md") + "\n" + readme_figures.END
TEMPLATE = """`robopolicy bench thing` (`benchmarks/results/bench.json`): {{json|bench.json|runs.0.rate|.1f}} runs/s
against {{json|bench.json|runs.1.rate|.1f}}, {{ratio|bench.json|runs.0.rate|runs.1.rate|.2f}}× at batch 8;
{{json|bench.json|wall_s|.1f|/60}} min in all.

| setting | windows/s |
|---|---|
| To=2 | {{line|bench.txt|2 16|1|,.0f}} |

{{match|bench.txt|targets: (.*)}}
"""


def _repo(tmp_path, template=TEMPLATE):
    (tmp_path / "benchmarks" / "readme").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results").mkdir()
    (tmp_path / "benchmarks" / "readme" / "bench.md").write_text(template)
    (tmp_path / "benchmarks" / "results" / "bench.json").write_text(json.dumps(
        {"runs": [{"rate": 42.16}, {"rate": 10.13}], "wall_s": 90.0}))
    (tmp_path / "benchmarks" / "results" / "bench.txt").write_text(" To  H | windows/s\n  2  16 |   10519 (164.4)\n"
                                                                   "targets: met\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# a project\n\nSome prose with 3 typed numbers and no citation.\n\n{BLOCK}\n\n## After\n")
    return readme


def test_a_block_is_generated_from_its_template_and_a_changed_figure_fails_the_check_naming_it(tmp_path):
    readme = _repo(tmp_path)
    assert readme_figures.check(readme) is not None  # the block is empty until generated
    assert readme_figures.write(readme) == 1
    text = readme.read_text()
    # /60: seconds as minutes; paragraphs are reflowed
    assert "42.2 runs/s against 10.1, 4.16× at batch 8; 1.5 min in all." in " ".join(text.split())
    assert "| To=2 | 10,519 |" in text and "\nmet\n" in text
    assert readme_figures.check(readme) is None and readme_figures.write(readme) == 0
    # a figure changed by hand in the README
    readme.write_text(text.replace("| To=2 | 10,519 |", "| To=2 | 10,520 |"))
    problem = readme_figures.check(readme)
    assert problem is not None and "should read '10,519': it is {{line|bench.txt|2 16|1|,.0f}}" in problem
    assert "from benchmarks/results/bench.txt" in problem and "benchmarks/readme/bench.md" in problem
    # the artifact changed under an unchanged README
    readme.write_text(text)
    (tmp_path / "benchmarks" / "results" / "bench.json").write_text(json.dumps(
        {"runs": [{"rate": 40.0}, {"rate": 10.13}], "wall_s": 90.0}))
    problem = readme_figures.check(readme)
    assert problem is not None and "the figure '42.2' should read '40.0'" in problem
    assert "from benchmarks/results/bench.json" in problem


@pytest.mark.parametrize("typed, where", [
    ("about 12.5 s a step", "bench.md:3: '12.5'"),  # a figure typed in a template
    ("To=16 at stride 6 and batch 64, DDIM-10 on a 2-core H200 with 96×96 images, p99", None),  # names: allowed
])
def test_a_figure_typed_in_a_template_is_refused_and_settings_names_are_not(tmp_path, typed, where):
    readme = _repo(tmp_path, TEMPLATE.replace("min in all.", f"min in all, {typed}."))
    if where is None:
        readme_figures.write(readme)
        assert typed in " ".join(readme.read_text().split()) and readme_figures.check(readme) is None
    else:
        with pytest.raises(ConfigError, match=re.escape(where) + ".*typed by hand"):
            readme_figures.write(readme)


def test_a_paragraph_outside_the_blocks_that_cites_an_artifact_may_not_type_a_figure(tmp_path):
    readme = _repo(tmp_path)
    readme_figures.write(readme)
    text = readme.read_text()
    cited = "Serving costs 1.54 ms\n(`benchmarks/results/serve.json`).\n"
    readme.write_text(text.replace("## After\n", "## After\n\n" + cited))
    problem = readme_figures.check(readme)
    assert problem is not None and "'1.54' is a figure typed in a paragraph that cites benchmarks/results/" in problem
    # the same figure in a code block, or a paragraph that cites nothing, is not checked
    readme.write_text(text.replace("## After\n", "## After\n\n```\nserve.json says 1.54\n```\n"))
    assert readme_figures.check(readme) is None


def test_placeholders_that_name_nothing_fail_with_the_template_and_the_placeholder(tmp_path):
    for bad, message in [("{{json|bench.json|runs.7.rate}}", "has no 'runs.7.rate'"),
                         ("{{json|nothing.json|x}}", "nothing.json does not exist"),
                         ("{{line|bench.txt|To|9}}", "that line has"),
                         ("{{match|bench.txt|absent (x)}}", "matches nothing"),
                         ("{{sum|bench.json|x}}", "is not a placeholder")]:
        shutil.rmtree(tmp_path / "benchmarks", ignore_errors=True)
        readme = _repo(tmp_path, TEMPLATE + f"\n{bad}\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            readme_figures.write(readme)


def test_the_repository_readme_benchmark_paragraphs_are_generated_and_the_cli_check_fails_on_a_changed_one(tmp_path):
    readme = ROOT / "README.md"
    assert readme_figures.check(readme) is None
    text = readme.read_text()
    assert len(readme_figures.blocks(text)) >= 6
    # every cited artifact file exists, and every paragraph citing one is inside a block (check covers both)
    lines = text.splitlines()
    _, figures = readme_figures.generate(readme)
    at, value, spec = next((i, v, s) for i, found in sorted(figures.items()) for v, s in found
                           if re.fullmatch(r"\d+\.\d+", v) and len(re.findall(re.escape(v), lines[i])) == 1)
    lines[at] = lines[at].replace(value, value + "1")
    copy = tmp_path / "README.md"
    copy.write_text("\n".join(lines) + "\n")
    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks")
    got = run_cli("results", "--check", "--readme", str(copy))
    assert got.returncode == 1 and f"should read '{value}': it is {spec}" in got.stderr
