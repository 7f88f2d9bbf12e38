import pytest

from conftest import ROOT, run_cli

VERBS = [[], ["quickstart"], ["info"], ["import"], ["import", "robomimic"], ["import", "dp"], ["bench"],
         ["bench", "data"]]


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v) or "robopolicy")
def test_help_on_every_verb(verb):
    result = run_cli(*verb, "--help")
    assert result.returncode == 0 and "usage: robopolicy" in result.stdout


def test_quickstart_imports_the_bundled_demos_and_summarizes(tmp_path):
    result = run_cli("quickstart", "--out", str(tmp_path / "qs.zarr"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for words in ("episodes  6", "corner2_image", "(64, 64, 3)", "action statistics", "filters   train (5), valid (1)"):
        assert words in result.stdout
    again = run_cli("quickstart", "--out", str(tmp_path / "qs.zarr"), cwd=tmp_path)
    assert again.returncode == 0 and "exists already" in again.stdout and "episodes  6" in again.stdout
    assert (ROOT / "datasets" / "fixtures" / "reach_demos.hdf5").exists()


def test_bench_data_runs_and_prints_ratios():
    result = run_cli("bench", "data", "--quick")
    assert result.returncode == 0, result.stderr
    assert "streamed/naive" in result.stdout and "RAM/streamed" in result.stdout
    assert "targets (To=2)" in result.stdout
