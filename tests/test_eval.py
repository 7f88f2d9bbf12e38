"""`robopolicy eval`: per-episode results independent of the number of workers, resume after a kill,
honest counting of crashed workers, shards that merge into the full run, and one clear error for bad
input before any rollout. One small diffusion policy, trained here on reach, serves every test: its
success lies between 0.2 and 0.8 (asserted), so equal results across runs mean something. The tests
that run the 8 episodes several times are slow (CI runs them too); the smoke suite and the errors are
in the default suite."""
import functools
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli
from robopolicy.acting import Acting
from robopolicy.errors import ConfigError

EPISODES = 8


@pytest.fixture(scope="module")
def run(reach_run):
    return reach_run


def _plan(run, episodes=EPISODES, k=1, shard=(0, 1), **suite):
    from robopolicy.eval.runner import Plan, resolve_checkpoints
    from robopolicy.eval.suite import task_suite

    s = task_suite("reach", episodes=episodes, **suite)
    return Plan(s, resolve_checkpoints(s, str(run), None), acting=Acting(k=k), shard=shard)


def _results(folder):
    from robopolicy.eval.runner import read_records

    return {(r["task"], r["seed"]): (r["success"], r["length"], r["actions_hash"], r["error"])
            for r in read_records(folder)}


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory):
    from robopolicy.eval.runner import evaluate

    out = evaluate(_plan(run), tmp_path_factory.mktemp("ref"), workers=2, progress=False)
    return _results(out)


@pytest.mark.slow
def test_per_episode_results_are_identical_for_1_2_and_4_workers(run, reference, tmp_path):
    from robopolicy.eval.runner import evaluate

    rate = sum(r[0] for r in reference.values()) / len(reference)
    assert len(reference) == EPISODES and 0.2 <= rate <= 0.8, rate  # a policy that always fails proves nothing
    for workers in (1, 4):
        assert _results(evaluate(_plan(run), tmp_path / f"w{workers}", workers=workers, progress=False)) == reference
    # with K=2 candidates chosen by the verifier (coherence with the queued actions), too
    k2 = [_results(evaluate(_plan(run, episodes=4, k=2), tmp_path / f"k2w{w}", workers=w, progress=False))
          for w in (1, 2)]
    assert k2[0] == k2[1] and k2[0] != {key: reference[key] for key in k2[0]}  # K=2 changed what was executed


def test_smoke_suite_from_the_command_line_with_2_workers(run, tmp_path):
    """What CI runs: a freshly trained policy on the shipped smoke suite, reported, with a video and the
    rollouts saved as a demo store."""
    result = run_cli("eval", "--checkpoint", str(run), "--suite", "smoke", "--workers", "2", "--out",
                     str(tmp_path / "smoke"), "--video", "1", "--save-rollouts", str(tmp_path / "rollouts.zarr"))
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    assert "| reach |" in result.stdout and "95% Wilson" in result.stdout
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    assert summary["tasks"]["reach"]["episodes"] == 4 and summary["seeds_kind"] == "evaluation"
    assert (tmp_path / "smoke" / "success.png").stat().st_size > 1000
    assert any(p.suffix == ".mp4" and p.stat().st_size > 1000 for p in (tmp_path / "smoke" / "videos").iterdir())
    records = [json.loads(line) for line in (tmp_path / "smoke" / "episodes.jsonl").read_text().splitlines()]
    assert {"task", "seed", "success", "length", "actions_hash", "latency_ms", "scores"} <= set(records[0])
    assert all(r["length"] <= 60 for r in records)  # the suite's max_steps
    from robopolicy.data.store import DemoStore

    with DemoStore.open(tmp_path / "rollouts.zarr") as store:
        assert store.n_episodes == 4 and list(store.episode_lengths) == [r["length"] for r in records]
        assert store.env_spec["task"] == "reach"


@pytest.mark.slow
def test_an_interrupted_eval_resumes_and_counts_every_episode_once(run, reference, tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "robopolicy.cli", "eval", "--checkpoint", str(run), "--episodes", str(EPISODES),
            "--workers", "2", "--out", str(out), "--quiet"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(_lines(out)) < 2:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(_lines(out))
    assert 2 <= finished < EPISODES, finished
    with (out / "episodes.jsonl").open("a") as f:
        f.write('{"task": "reach", "seed": 10000')  # a record cut by the kill mid-write: not an episode
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(_lines(out)) == EPISODES and _results(out) == reference  # each once, as an uninterrupted run
    other_k = subprocess.run(args[:-1] + ["--samples", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert other_k.returncode == 2 and "different k" in other_k.stderr


def _lines(out):
    path = out / "episodes.jsonl"
    return [line for line in path.read_text().splitlines() if line.endswith("}")] if path.exists() else []


@pytest.mark.slow
def test_a_dead_worker_is_retried_once_then_counted_as_a_failure(run, reference, tmp_path):
    from eval_helpers import crashing_env

    from robopolicy import envs
    from robopolicy.eval.report import report
    from robopolicy.eval.runner import evaluate

    seeds = list(envs.eval_seeds(EPISODES))
    always = functools.partial(crashing_env, crash_seed=seeds[1])
    got = _results(evaluate(_plan(run), tmp_path / "always", workers=2, progress=False, make_env=always))
    assert got.pop(("reach", seeds[1]))[:1] == (False,) and "died" in json.dumps(_errors(tmp_path / "always"))
    assert got == {k: v for k, v in reference.items() if k != ("reach", seeds[1])}  # the others untouched
    summary = json.loads((report([tmp_path / "always"]) / "summary.json").read_text())
    assert summary["tasks"]["reach"]["episodes"] == EPISODES and len(summary["tasks"]["reach"]["errors"]) == 1
    once = functools.partial(crashing_env, crash_seed=seeds[2], marker=str(tmp_path / "crashed"))
    got = _results(evaluate(_plan(run), tmp_path / "once", workers=2, progress=False, make_env=once))
    assert (tmp_path / "crashed").exists() and got == reference  # the retry on a fresh worker counts


def _errors(folder):
    from robopolicy.eval.runner import read_records

    return [r["error"] for r in read_records(folder) if r["error"]]


@pytest.mark.slow
def test_shards_merge_into_the_full_run(run, reference, tmp_path):
    from robopolicy.eval.runner import evaluate

    for i in range(2):
        evaluate(_plan(run, shard=(i, 2)), tmp_path / f"shard{i}", workers=1, progress=False)
    assert not set(_results(tmp_path / "shard0")) & set(_results(tmp_path / "shard1"))
    result = run_cli("report", str(tmp_path / "shard0"), str(tmp_path / "shard1"), "--out", str(tmp_path / "all"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["tasks"]["reach"]["episodes"] == EPISODES
    assert summary["tasks"]["reach"]["successes"] == sum(r[0] for r in reference.values())
    evaluate(_plan(run, episodes=2, k=2), tmp_path / "k2", workers=1, progress=False)
    refused = run_cli("report", str(tmp_path / "shard0"), str(tmp_path / "k2"))
    assert refused.returncode == 2 and "not shards of one evaluation" in refused.stderr


def test_bad_input_is_one_clear_error_before_any_rollout(run, tmp_path, capsys):
    import shutil

    from robopolicy.cli import main
    from robopolicy.eval.runner import Plan, evaluate
    from robopolicy.eval.suite import task_suite

    cases = [(["--checkpoint", str(run), "--suite", "nope"], "no suite 'nope'"),
             (["--checkpoint", str(run), "--task", "reachh"], "unknown task 'reachh'"),
             (["--suite", "memory", "--checkpoints", str(tmp_path)], "no checkpoint for task 'cue-reach'"),
             (["--checkpoint", str(tmp_path)], "not a policy checkpoint"),
             (["--checkpoint", str(run), "--shard", "2/2"], "--shard takes i/n"),
             (["--checkpoint", str(run), "--samples", "0"], "--samples and --workers must be >= 1"),
             (["--checkpoint", str(run), "--seed-start", "-5"], "seed_start must be >= 0"),
             (["--checkpoint", str(run), "--task", "cue-reach"], "trained on 'reach', not 'cue-reach'")]
    for args, message in cases:
        assert main(["eval", *args, "--out", str(tmp_path / "bad")]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)  # one line, no traceback
    assert not (tmp_path / "bad").exists()  # nothing started, nothing written
    # a checkpoint that does not say where it was trained, whose observations the task does not produce
    # (reach's 39-d state vs cue-reach's 10-d), is refused before any rollout, and the whole suite with it
    anonymous = tmp_path / "anonymous"
    shutil.copytree(run / "policy", anonymous)
    (anonymous / "task.json").unlink()
    suite = task_suite("cue-reach", episodes=2)
    with pytest.raises(ConfigError, match="does not fit task 'cue-reach'.*'state' is"):
        evaluate(Plan(suite, {"cue-reach": anonymous}), tmp_path / "mismatch", workers=1, progress=False)
    assert not (tmp_path / "mismatch").exists()


def test_training_rolls_out_every_n_steps_into_tensorboard(tmp_path):
    """eval.every: rollouts of the EMA weights at those steps, success in log.jsonl and TensorBoard (and the
    validation loss at the checkpoints they make)."""
    from robopolicy.collect import collect
    from robopolicy.config import load_config
    from robopolicy.eval.training import PeriodicRollouts
    from robopolicy.train.trainer import train

    store, _, _ = collect("reach", 10, tmp_path / "reach.zarr", progress=False)  # 1 held out
    store.close()
    cfg = load_config("diffusion", ["train.steps=20", "train.log_every=10", "data.batch_size=16",
                                    "policy.diffusion.down_dims=[16,32]", "eval.every=10", "eval.suite=smoke",
                                    "eval.episodes=1", "eval.workers=1"])
    train(cfg, tmp_path / "reach.zarr", tmp_path / "run", progress=False, rollouts=PeriodicRollouts(cfg))
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_success" in r]
    assert [r["step"] for r in evals] == [10, 20] and all(set(r["eval_success"]) == {"reach"} for r in evals)
    val = [r for r in rows if "val_loss" in r]  # the held-out episodes' loss at each checkpoint
    assert [r["step"] for r in val] == [10, 20] and all(0 < r["val_loss"] < 10 for r in val)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/reach/success")] == [10, 20]


@pytest.mark.slow
def test_robomimic_round_trip_lift_demos_imported_trained_and_evaluated_in_the_rebuilt_env(tmp_path):
    """Lift demos from its scripted expert, written in robomimic's hdf5 layout (obs/<robomimic keys>, actions,
    rewards, dones, env_args), imported, trained briefly, and evaluated with no --task: the checkpoint says
    where it was trained, and the env is rebuilt from the stored spec."""
    import h5py
    import numpy as np

    from robopolicy import envs
    from robopolicy.envs.lift import DEFAULT_ENV_ARGS, ROBOMIMIC_KEYS

    env = envs.make_from_spec({"type": "robomimic", "env_args": DEFAULT_ENV_ARGS})
    with h5py.File(tmp_path / "lift.hdf5", "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(DEFAULT_ENV_ARGS)
        for n in range(6):
            obs, _ = env.reset(seed=n)
            expert = env.make_expert()
            expert.reset()
            frames, actions, rewards = [], [], []
            for _ in range(env.max_episode_steps):
                action = expert.act(env)
                frames.append(obs)
                actions.append(action)
                obs, reward, done, truncated, _ = env.step(action)
                rewards.append(reward)
                if done or truncated:
                    break
            g = data.create_group(f"demo_{n}")
            for name, _, _ in ROBOMIMIC_KEYS:
                g.create_dataset(f"obs/{name}", data=np.stack([o[name] for o in frames]))
            g.create_dataset("actions", data=np.stack(actions))
            g.create_dataset("rewards", data=np.array(rewards))
            g.create_dataset("dones", data=np.eye(1, len(actions), len(actions) - 1)[0])
            g.attrs["num_samples"] = len(actions)
    env.close()
    assert run_cli("import", "robomimic", str(tmp_path / "lift.hdf5"), "--out", str(tmp_path / "lift.zarr"),
                   "--quiet").returncode == 0
    keys = ",".join(name for name, _, _ in ROBOMIMIC_KEYS)
    trained = run_cli("train", "--config", "diffusion", "--store", str(tmp_path / "lift.zarr"), "--out",
                      str(tmp_path / "run"), "--quiet", "train.steps=30", "data.batch_size=16",
                      "policy.diffusion.down_dims=[16,32]", f"data.obs_keys=[{keys}]", "train.tensorboard=false")
    assert trained.returncode == 0, trained.stderr
    card = json.loads((tmp_path / "run" / "policy" / "task.json").read_text())
    assert card["task"] == "lift" and card["env_spec"]["type"] == "robomimic" and card["control_hz"] == 20
    assert card["action_semantics"][-1] == "gripper" and len(card["action_semantics"]) == 7
    result = run_cli("eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "2", "--workers", "1",
                     "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert meta["env_specs"]["lift"]["type"] == "robomimic"  # rebuilt from the stored spec
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["tasks"]["lift"]["episodes"] == 2 and not summary["tasks"]["lift"]["errors"]


def test_a_chunk_records_what_physics_executed_clipped_to_the_action_space():
    """Executed actions are what the env stepped with (clipped to its action space, as the safety shield
    clamps on the served path): eval's and the served loop's records and PTP's past agree (EBT's actions can
    leave [-1, 1]; without the clip the two records differ though the physics is the same)."""
    from robopolicy import envs
    from robopolicy.eval.rollout import run_chunk

    env = envs.make("reach")
    env.reset(seed=0)
    result = run_chunk(env, np.array([[2.0, -3.0, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4]], np.float32))
    assert np.array_equal(np.stack(result.actions), np.array([[1.0, -1.0, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4]],
                                                              np.float32))
    env.close()


def test_run_episodes_shows_the_policy_the_window_that_window_of_builds(run):
    """The hook an experiment uses to show a policy an altered history (benchmarks/noptp_stall.py): by default
    the episode's own window, and when given, exactly what it returns, at every chunk."""
    from dataclasses import replace

    from robopolicy import envs
    from robopolicy.eval.rollout import LocalEnv, run_episodes
    from robopolicy.policy import Policy

    policy, seeds = Policy.load(run / "policy"), list(envs.eval_seeds(2))

    def episodes(**kw):
        return sorted(run_episodes(policy, [LocalEnv(envs.make("reach"))], seeds, **kw), key=lambda e: e.seed)

    shown = []

    def frozen(history, keys):  # the first observation forever: a policy that never sees itself move
        w = history.window(keys)
        shown.append(replace(w, obs={k: np.repeat(history.obs[0][k][None], len(v), 0) for k, v in w.obs.items()}))
        return shown[-1]

    plain, blind = episodes(), episodes(window_of=frozen)
    assert len(shown) == sum(len(e.latency_ms) for e in blind)
    assert all(a.actions_hash != b.actions_hash for a, b in zip(plain, blind))


def _noptp_stall():
    import importlib.util

    spec = importlib.util.spec_from_file_location("noptp_stall", ROOT / "benchmarks" / "noptp_stall.py")
    stall = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stall)
    return stall


def test_the_clock_shift_lengthens_or_shortens_the_wait_and_keeps_the_rest():
    """benchmarks/noptp_stall.py's history surgery: frame decide-1 repeated, or the frames before decide left
    out; the action taken at each kept frame stays with it."""
    from robopolicy.data.windows import History, WindowSpec

    stall = _noptp_stall()
    history = History(WindowSpec(n_obs=4, horizon=8, stride=2), 1)
    history.start({"state": np.array([0.0])})
    for t in range(1, 12):
        history.record(np.array([t - 1.0]), {"state": np.array([float(t)])})
    later, earlier = stall.shifted_history(history, 3, 6), stall.shifted_history(history, -3, 6)
    frames = lambda h: [o["state"][0] for o in h.obs]  # noqa: E731
    assert frames(later) == [0, 1, 2, 3, 4, 5, 5, 5, 5, 6, 7, 8, 9, 10, 11]
    assert frames(earlier) == [0, 1, 2, 6, 7, 8, 9, 10, 11]
    assert [a[0] for a in later.actions] == [0, 1, 2, 3, 4, 5, 5, 5, 5, 6, 7, 8, 9, 10]
    assert [a[0] for a in earlier.actions] == [0, 1, 2, 6, 7, 8, 9, 10]
    assert later.window().obs["state"][:, 0].tolist() == [5, 7, 9, 11]  # the last frame is still now
    assert frames(stall.shifted_history(history, 0, 6)) == list(range(12))


def test_the_clock_shift_applies_once_the_hand_has_left_and_keeps_the_real_step_and_plan():
    from robopolicy.data.windows import History, WindowSpec

    stall = _noptp_stall()
    decide, shift = 6, 1
    history = History(WindowSpec(n_obs=4, horizon=6, stride=2), 4)
    history.start({"state": np.zeros(4, np.float32)})
    for t in range(1, 10):  # waits until step 5, then moves 1 cm a step: more than 2 cm from the wait at step 8
        history.record(np.full(4, t - 1.0, np.float32),
                       {"state": np.array([max(t - decide + 1, 0) * 0.01, 0, 0, t], np.float32)})  # + the step
    history.plan(np.ones((5, 4), np.float32), 8)
    window_of = stall.window_with_clock_shift(shift, decide)
    real, shown = history.window(), window_of(history, ["state"])
    assert shown.t == real.t == 9 and np.array_equal(shown.queued, real.queued)
    assert shown.obs["state"][:, 3].tolist() == [4, 5, 7, 9] and real.obs["state"][:, 3].tolist() == [3, 5, 7, 9]
    early = History(history.spec, 4)
    early.obs, early.actions = history.obs[:8], history.actions[:7]  # step 7: 2 cm from the wait, not past it
    assert np.array_equal(window_of(early, ["state"]).obs["state"], early.window().obs["state"])
