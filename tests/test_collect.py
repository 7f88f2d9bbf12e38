import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli
from robopolicy import envs
from robopolicy.data.store import DemoStore


def _collect(*args):
    return subprocess.Popen([sys.executable, "-m", "robopolicy.cli", "collect", *args, "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_collect_images_stores_the_env_spec_and_rebuilds_the_task(tmp_path):
    out = tmp_path / "cue.zarr"
    result = run_cli("collect", "--task", "cue-reach", "--episodes", "3", "--obs", "image", "--image-size", "48",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "this run: 3 expert episodes, 3 successful" in result.stdout
    store = DemoStore.open(out)
    assert store.n_episodes == 3 and set(store.keys) == {"state", "corner2_image", "action", "success", "seed"}
    assert store.schema["corner2_image"].shape == (48, 48, 3) and store.fps == 80
    assert [int(store.episode(i)["seed"][0]) for i in range(3)] == [0, 1, 2]
    assert all(store.episode(i)["success"].any() for i in range(3))
    env = envs.make_from_spec(store.env_spec)
    obs, _ = env.reset(seed=1)
    assert np.array_equal(obs["corner2_image"], store.episode(1)["corner2_image"][0])  # same task, same seed
    env.close()


def test_collect_resumes_after_sigkill_with_the_same_episodes(tmp_path):
    clean = _collect("--task", "cue-reach", "--episodes", "40", "--out", str(tmp_path / "clean.zarr"))
    assert clean.wait(timeout=300) == 0, clean.stderr.read()
    out = tmp_path / "crash.zarr"
    proc = _collect("--task", "cue-reach", "--episodes", "40", "--out", str(out))
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once it has committed some episodes, mid-collection
        if (out / "zarr.json").exists() and DemoStore.open(out).n_episodes >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = DemoStore.open(out).n_episodes
    assert 5 <= partial < 40
    again = _collect("--task", "cue-reach", "--episodes", "40", "--out", str(out))
    assert again.wait(timeout=300) == 0, again.stderr.read()
    a, b = DemoStore.open(tmp_path / "clean.zarr"), DemoStore.open(out)
    assert b.n_episodes == 40 and np.array_equal(a.episode_ends, b.episode_ends)
    for key in a.keys:
        assert np.array_equal(a.load([key])[key], b.load([key])[key]), key


def test_collect_refuses_evaluation_seeds_and_a_foreign_store(tmp_path):
    result = run_cli("collect", "--task", "reach", "--episodes", "2", "--seed-start", str(envs.EVAL_SEED_START),
                     "--out", str(tmp_path / "x.zarr"))
    assert result.returncode == 2 and "evaluation seeds" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("collect", "--task", "reach", "--episodes", "1", "--out", str(tmp_path / "r.zarr")).returncode == 0
    result = run_cli("collect", "--task", "push", "--episodes", "2", "--out", str(tmp_path / "r.zarr"))
    assert result.returncode == 2 and "not what was asked now" in result.stderr
    result = run_cli("collect", "--task", "reach", "--episodes", "2", "--all", "--out", str(tmp_path / "r.zarr"))
    assert result.returncode == 2 and "keep failures" in result.stderr
    result = run_cli("collect", "--task", "nope", "--episodes", "2", "--out", str(tmp_path / "n.zarr"))
    assert result.returncode == 2 and "unknown task" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", list(envs.TASKS))
def test_collect_twenty_episodes_of_every_task(tmp_path, name):
    result = run_cli("collect", "--task", name, "--episodes", "20", "--out", str(tmp_path / f"{name}.zarr"),
                     "--quiet")
    assert result.returncode == 0, result.stderr
    assert DemoStore.open(tmp_path / f"{name}.zarr").n_episodes == 20


@pytest.mark.slow
@pytest.mark.parametrize("name", list(envs.TASKS))
def test_expert_success_over_50_seeds(name):
    from robopolicy.collect import run_episode

    env = envs.make(name)
    wins = sum(run_episode(env, seed)[1] for seed in range(50))
    env.close()
    print(f"\nexpert success {name}: {wins}/50")
    # ours (memory tasks, Lift): >= 95 %; Meta-World's own policies are theirs: peg-insert-side gets 45/50
    assert wins >= (48 if envs.get(name).kind != "metaworld" else 43)
