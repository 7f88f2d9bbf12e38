import json

import pytest

from conftest import ROOT, run_cli

VERBS = [[], ["quickstart"], ["tasks"], ["collect"], ["info"], ["import"], ["import", "robomimic"], ["import", "dp"],
         ["bench"], ["bench", "data"], ["bench", "train"], ["bench", "history"], ["bench", "eval"], ["train"],
         ["cache"], ["eval"], ["report"]]


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v) or "robopolicy")
def test_help_on_every_verb(verb):
    result = run_cli(*verb, "--help")
    assert result.returncode == 0 and "usage: robopolicy" in result.stdout


def test_quickstart_collects_a_memory_task_and_summarizes(tmp_path):
    result = run_cli("quickstart", "--episodes", "2", "--out", str(tmp_path / "qs.zarr"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for words in ("episodes  2", "corner2_image", "(96, 96, 3)", '"task": "cue-reach"', "action statistics"):
        assert words in result.stdout
    again = run_cli("quickstart", "--episodes", "2", "--out", str(tmp_path / "qs.zarr"), cwd=tmp_path)
    assert again.returncode == 0 and "episodes  2" in again.stdout and "this run" not in again.stdout


def test_import_the_bundled_robomimic_file(tmp_path):
    src = ROOT / "datasets" / "fixtures" / "reach_demos.hdf5"
    result = run_cli("import", "robomimic", str(src), "--out", str(tmp_path / "reach.zarr"))
    assert result.returncode == 0, result.stderr
    for words in ("episodes  6", "corner2_image", "(64, 64, 3)", "filters   train (5), valid (1)"):
        assert words in result.stdout


@pytest.mark.slow  # a benchmark's smoke run, half a minute (the default suite stays under 10 minutes)
def test_bench_data_runs_and_prints_ratios():
    result = run_cli("bench", "data", "--quick")
    assert result.returncode == 0, result.stderr
    assert "streamed/naive" in result.stdout and "RAM/streamed" in result.stdout
    assert "targets (To=2)" in result.stdout


@pytest.mark.slow  # a benchmark's smoke run, half a minute (the default suite stays under 10 minutes)
def test_bench_train_runs_and_prints_ratios():
    result = run_cli("bench", "train", "--quick")
    assert result.returncode == 0, result.stderr
    for words in ("end to end on images", "on cached embeddings", "cached / images", "DDIM-10", "DDPM-100",
                  "PTP", "EBT-2", "DDPM-100 / DDIM-10", "DDPM-100 / EBT-2", "DDIM-10 / EBT-2", "net calls"):
        assert words in result.stdout
    calls = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines()
             if line.strip().startswith(("DDIM-10 ", "DDPM-100 ", "PTP ", "EBT-2 ")) and "/" not in line}
    assert calls == {"DDIM-10": "10", "DDPM-100": "100", "PTP": "10", "EBT-2": "2+1"}  # check 26 (+1: the score)


@pytest.mark.slow  # a minute: two trainings and three evaluations, run twice
def test_bench_history_trains_both_contexts_evaluates_and_resumes(tmp_path):
    result = run_cli("bench", "history", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for words in ("cue-reach, 4 demos", "To=16", "To=16 K=8", "To=2", "[Wilson 95%]", "hidden=0", "To=16 - To=2:"):
        assert words in result.stdout
    assert (tmp_path / "to16" / "done.json").exists() and (tmp_path / "to2" / "done.json").exists()
    again = run_cli("bench", "history", "--quick", "--out", str(tmp_path))  # reuses store and policies
    assert again.returncode == 0 and "this run:" not in again.stdout + again.stderr
    assert again.stdout.split("run folder")[1] == result.stdout.split("run folder")[1]  # same seeds, same table


@pytest.mark.slow  # a benchmark's smoke run, half a minute (the default suite stays under 10 minutes)
def test_bench_eval_runs_and_prints_ratios(tmp_path):
    result = run_cli("bench", "eval", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for words in ("episodes/min", "vs 1", "per worker", "physics s", "render s", "inference s"):
        assert words in result.stdout
    assert "identical in every setting: yes" in result.stdout  # 1 and 2 workers, the same episodes
    rows = json.loads((tmp_path / "bench-eval.json").read_text())["rows"]
    assert [r["workers"] for r in rows] == [1, 2] and rows[0]["ratio"] == 1.0
