import numpy as np
import pytest

from conftest import run_cli
from robopolicy import envs
from robopolicy.envs import memory
from robopolicy.envs.proofs import CUE_TOL, IMAGE_TOL, STATE_TOL, compare, cue_region, prove, rollout
from robopolicy.errors import ConfigError

MEMORY_TASKS = [n for n, t in envs.TASKS.items() if t.kind == "memory"]
METAWORLD_TASKS = [n for n, t in envs.TASKS.items() if t.kind == "metaworld"]
CUE_TASKS = [n for n in MEMORY_TASKS if envs.get(n).factory.hidden_per_seed]  # a cue shows the hidden variable


def test_tasks_cli_lists_the_suite():
    result = run_cli("tasks")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if len(line.split()) > 2]
    kinds = [row[1] for row in rows]
    assert kinds.count("metaworld") >= 8 and kinds.count("memory") >= 3 and kinds.count("robosuite") >= 1
    assert all(any(cell.startswith("L=") for cell in row) for row in rows if row[1] == "memory")
    assert any(row[0] == "lift" for row in rows)


def test_every_memory_span_fits_the_shipped_long_context_and_not_a_short_one():
    for name in MEMORY_TASKS:
        span = envs.get(name).memory_span
        assert 1 < span <= (16 - 1) * envs.CONTEXT_STRIDE, name  # To=16 with its stride sees it; To=2 does not


@pytest.mark.parametrize("name", list(envs.TASKS))
def test_initial_condition_is_a_function_of_the_seed(name):
    a, b = envs.make(name), envs.make(name)
    first, _ = a.reset(seed=5)
    a.reset(seed=6)
    for _ in range(20):
        a.step(a.action_space.sample())
    again, _ = a.reset(seed=5)  # whatever ran before in this env ...
    fresh, _ = b.reset(seed=5)  # ... or in another one
    assert np.array_equal(first["state"], again["state"]) and np.array_equal(first["state"], fresh["state"])
    other, _ = b.reset(seed=7)
    assert np.abs(other["state"] - first["state"]).max() > 1e-2
    a.close()
    b.close()


def test_collection_and_evaluation_seeds_are_disjoint_and_workers_never_repeat():
    collected = set(envs.collection_seeds(0, 5000))
    assert not collected & set(envs.eval_seeds(500))
    with pytest.raises(ConfigError, match="evaluation seeds"):
        envs.collection_seeds(envs.EVAL_SEED_START - 3, 10)
    seeds = envs.collection_seeds(100, 1000)
    shares = [set(envs.worker_seeds(seeds, w, 3)) for w in range(3)]
    assert set().union(*shares) == set(seeds) and sum(map(len, shares)) == len(seeds)


@pytest.mark.parametrize("name, camera", [("pick-place", "corner2"), ("lift", "agentview")])
def test_image_observations_are_upright_and_change_with_the_scene(name, camera):
    env = envs.make(name, obs="image", image_size=64)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"state", f"{camera}_image"} and env.observation_space.contains(obs)
    img = obs[f"{camera}_image"]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 10
    # upright: the light floor or table in the lower-left corner, the grey wall or the robot in the upper-left
    assert img[-8:, :16].mean() > img[:8, :16].mean() + 20
    first = img.astype(int)
    for _ in range(15):
        obs, *_ = env.step(np.r_[1.0, np.zeros(env.action_space.shape[0] - 1)])
    assert np.abs(obs[f"{camera}_image"].astype(int) - first).mean() > 0.2  # the arm moved in the picture
    env.close()


@pytest.mark.parametrize("name", [n if n == "cue-reach" else pytest.param(n, marks=pytest.mark.slow)  # 10-25 s each
                                  for n in MEMORY_TASKS])
def test_memory_proof(name):
    """Histories that differ only in the hidden variable look the same at the decision step (and the step
    before: a To=2 window), while the expert acts differently there; the deciding information lies
    within the declared span, and a To=16 window with the shipped stride reaches it."""
    task = envs.get(name)
    for seed in (0, 4, 8):
        proof = prove(task.factory, seed=seed)
        assert proof.state_diff <= STATE_TOL and proof.image_mean_diff <= IMAGE_TOL and proof.cue_diff <= CUE_TOL, proof
        assert proof.action_diff > 0.5, proof
        assert proof.measured_span is not None and 1 < proof.measured_span <= task.memory_span, proof
        assert proof.long_context_sees and proof.holds(task.memory_span), proof


def test_the_proof_fails_when_nothing_differs():
    a = rollout(memory.CueReach, 0, obs="state")
    same = compare(a, a.decision_steps[0], a, a.decision_steps[0])
    assert same.measured_span is None and not same.long_context_sees and not same.holds(10**6)


@pytest.fixture(scope="module")
def cue_reach_pair():
    return rollout(memory.CueReach, 0), rollout(memory.CueReach, 1)


@pytest.mark.parametrize("name", CUE_TASKS)
def test_the_proof_cue_region_is_where_the_cue_shows(name):
    """The projected region holds every pixel the cue changes, and is a region: a few dozen pixels."""
    frames, regions = [], []
    for seed in (0, 1):  # the cue at either place, everything else the same
        env = envs.get(name).make(obs="image")
        obs, _ = env.reset(seed=seed)
        frames.append(obs["corner2_image"].astype(int))
        regions.append(cue_region(env)["corner2_image"])
        env.close()
    changed = np.abs(frames[0] - frames[1]).max(-1) > 0
    assert changed.sum() >= 20 and np.all((regions[0] | regions[1])[changed])
    assert all(20 <= r.sum() <= 100 for r in regions)  # of 9216: the cue's, not the picture's


def test_the_proof_cue_bound_catches_a_cue_the_mean_misses(cue_reach_pair):
    """Lined up while the cue still shows, the histories differ only in it: a dozen pixels, which pass the
    whole-image mean's tolerance and not the cue region's."""
    a, b = cue_reach_pair
    t = memory.CueReach.CUE_STEPS - 1  # the last frame with the cue (and the one before it)
    shown = compare(a, t, b, t)
    assert shown.image_mean_diff <= IMAGE_TOL / 4 and shown.cue_diff > 10 * CUE_TOL, shown
    assert not shown.holds(10**6)
    decided = compare(a, a.decision_steps[0], b, b.decision_steps[0])
    assert decided.cue_diff <= CUE_TOL and decided.holds(memory.CueReach.memory_span), decided


def test_memory_tasks_hide_the_variable_from_the_state_and_the_picture(cue_reach_pair):
    # with state observations the cue is in the first state and gone by the decision step ...
    s = rollout(memory.CueReach, 0, obs="state")
    assert np.any(s.obs[0]["state"][7:] != 0) and np.all(s.obs[s.decision_steps[0]]["state"][7:] == 0)
    # ... with images it is never in the state (the image memory task: it has to be seen)
    a, b = cue_reach_pair
    assert not any(o["state"][7:].any() for o in a.obs + b.obs)
    seen = np.abs(a.obs[0]["corner2_image"].astype(int) - b.obs[0]["corner2_image"]).max(-1)
    assert (seen > 100).sum() >= 10  # the cue is plainly in the picture at the start ...
    gone = np.abs(a.obs[a.decision_steps[0]]["corner2_image"].astype(int) - b.obs[b.decision_steps[0]]["corner2_image"])
    assert gone.max() == 0  # ... and nowhere at the decision step


@pytest.mark.parametrize("name", METAWORLD_TASKS + MEMORY_TASKS)
def test_expert_succeeds(name):
    rates = [rollout(envs.get(name).factory, seed, obs="state").success for seed in range(6)]
    assert sum(rates) >= 5, rates


ROBOMIMIC_OSC_POSE = {"type": "OSC_POSE", "input_max": 1, "input_min": -1,
                      "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
                      "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5], "kp": 150, "damping": 1,
                      "impedance_mode": "fixed", "kp_limits": [0, 300], "damping_limits": [0, 10],
                      "position_limits": None, "orientation_limits": None, "uncouple_pos_ori": True,
                      "control_delta": True, "interpolation": None, "ramp_ratio": 0.2}


def test_lift_builds_from_a_robomimic_env_spec_and_its_expert_lifts():
    """robomimic's Lift env_args as its files store them (robosuite 1.4's arm-only controller config)."""
    spec = {"type": "robomimic", "env_args": {"env_name": "Lift", "type": 1, "env_kwargs": {
        "robots": ["Panda"], "control_freq": 20, "use_camera_obs": False, "has_renderer": True, "horizon": 500,
        "controller_configs": ROBOMIMIC_OSC_POSE, "reward_shaping": False, "use_object_obs": True,
        "has_offscreen_renderer": False, "ignore_done": True, "camera_names": ["agentview"]}}}
    env = envs.make_from_spec(spec)
    assert env.sim_env.control_freq == 20 and not env.sim_env.has_renderer  # ours: never an onscreen window
    successes = 0
    for seed in range(3):
        env.reset(seed=seed)
        expert = env.make_expert()
        expert.reset()
        for _ in range(env.max_episode_steps):
            _, _, done, truncated, info = env.step(expert.act(env))
            if done or truncated:
                break
        successes += info["success"]
    assert successes == 3
    first, _ = env.reset(seed=11)
    again, _ = env.reset(seed=11)
    assert np.array_equal(first["state"], again["state"])
    env.close()


def test_gymnasium_registration_and_the_documented_use():
    import gymnasium as gym

    env = gym.make("robopolicy/cue-reach", obs="state").unwrapped
    obs, info = env.reset(seed=2)
    assert obs["state"].shape == (envs.get("cue-reach").factory.state_dim,) and info["seed"] == 2
    expert = env.make_expert()
    expert.reset()
    obs, reward, terminated, truncated, info = env.step(expert.act(env))
    assert env.t == 1 and not truncated


def test_headless_rendering_needs_no_setup_even_after_robosuite_loaded_mujoco():
    """MUJOCO_GL unset and robosuite imported first (it imports mujoco, which then picks GLFW)."""
    import os
    import subprocess
    import sys

    script = ("import robosuite\nfrom robopolicy import envs\nenv = envs.make('cue-reach', obs='image')\n"
              "obs, _ = env.reset(seed=0)\nprint('mean', obs['corner2_image'].mean())\nenv.close()\n")
    environ = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environ, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split("mean")[-1]) > 50


def test_memory_outcomes_tell_a_wrong_way_failure_from_a_success():
    """``info["outcome"]`` (kept in eval records) says where a memory episode ended: the expert's reach is
    nearer the cued target, a reach driven to the other one is nearer that one; the expert presses twice."""
    from robopolicy.envs.sawyer import move
    from robopolicy.eval.rollout import run_chunk

    env = envs.make("cue-reach")
    for seed in (0, 1):
        env.reset(seed=seed)
        expert, last = env.make_expert(), None
        expert.reset()
        while last is None or not (last.ended):
            last = run_chunk(env, np.array([expert.act(env)]))
        assert last.outcome["cue"] == seed % 2 and last.outcome["nearer"] == seed % 2, last.outcome
        env.reset(seed=seed)
        other = env.TARGETS[1 - seed % 2]
        for _ in range(60):
            last = run_chunk(env, np.array([move(env.hand, other, -1.0)]))
        assert last.outcome["nearer"] == 1 - seed % 2 and last.outcome["distance"] < 0.05 and not last.success
    env.close()
    env = envs.make("button-twice")
    env.reset(seed=0)
    expert, done = env.make_expert(), False
    expert.reset()
    while not done:
        _, _, terminated, truncated, info = env.step(expert.act(env))
        done = terminated or truncated
    assert info["success"] and info["outcome"] == {"presses": 2, "away": True}
    env.close()


@pytest.mark.parametrize("name", ["cue-reach", "cue-pick-place"])
def test_with_images_the_cue_shows_only_in_the_pictures(name):
    """obs="image" is the image memory task: the state's cue slot stays zero, so the cue must be seen."""
    state_obs, _ = envs.make(name).reset(seed=0)
    image_obs, _ = envs.make(name, obs="image", image_size=32).reset(seed=0)
    assert np.abs(state_obs["state"][7:]).sum() > 0 and not image_obs["state"][7:].any()
    np.testing.assert_array_equal(image_obs["state"][:7], state_obs["state"][:7])
