import numpy as np
import pytest
import torch

from conftest import run_cli
from robopolicy.acting import Acting
from robopolicy.config import load_config, shipped_configs
from robopolicy.data.store import DemoStore
from robopolicy.data.windows import Window
from robopolicy.errors import ConfigError
from robopolicy.models.encoders import EncoderConfig, ObsEncoder
from robopolicy.policy import Policy


def _store(path, n=6, T=30, image=0):
    rng = np.random.default_rng(0)
    with DemoStore.create(path) as store:
        for _ in range(n):
            ep = {"state": rng.normal(size=(T, 5)).astype(np.float32),
                  "action": np.tanh(rng.normal(size=(T, 3))).astype(np.float32)}
            if image:
                ep["cam_image"] = rng.integers(0, 255, (T, image, image, 3), dtype=np.uint8)
            store.append_episode(ep)
    return path


SMALL = ["policy.diffusion.down_dims=[16,32]", "policy.diffusion.step_embed_dim=16", "data.batch_size=16",
         "train.log_every=5", "train.checkpoint_every=10"]


def test_configs_load_and_bad_ones_fail_clearly():
    assert "diffusion" in shipped_configs()
    cfg = load_config("diffusion", ["train.steps=7"])
    assert cfg.train.steps == 7 and cfg.data.n_action_steps == 8 and cfg.policy.diffusion.inference_steps == 10
    with pytest.raises(ConfigError, match="Did you mean"):
        load_config("diffusion", ["train.stepz=3"])
    with pytest.raises(ConfigError, match="shipped configs are"):
        load_config("nope")
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config("diffusion", ["train.steps"])


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_builds_a_policy_that_trains_one_step(tmp_path, name):
    from robopolicy.data.normalizer import Normalizer

    store = DemoStore.open(_store(tmp_path / "s.zarr", n=2, T=20, image=96))
    cfg = load_config(name)
    norm = Normalizer.fit(store.load(["state", "action"]), {"state": "minmax", "action": "minmax"})
    policy = Policy(cfg, store.schema, norm)
    assert policy.obs_keys == (["state"] if cfg.data.obs_keys == ["state"] else ["cam_image", "state"])
    H, To = cfg.data.horizon, cfg.data.n_obs
    batch = {"obs": {"state": torch.randn(2, To, 5), "cam_image": torch.randint(0, 255, (2, To, 96, 96, 3),
                                                                               dtype=torch.uint8)},
             "action": torch.rand(2, H, 3) * 2 - 1}
    policy.loss(batch).backward()
    assert all(p.grad is not None for p in policy.head.parameters())


def test_encoders_one_vector_per_frame_and_crops():
    cfg = EncoderConfig(trunk="small_cnn", crop=28)
    enc = ObsEncoder({"cam_image": 32}, {"state": 5}, cfg)
    obs = {"cam_image": torch.randint(0, 255, (2, 3, 32, 32, 3), dtype=torch.uint8), "state": torch.randn(2, 3, 5)}
    assert enc(obs).shape == (2, 3, 64 + 5) and enc.out_dim == 69
    enc.eval()
    assert torch.equal(enc(obs), enc(obs))  # center crop in eval
    enc.train()
    assert not torch.equal(enc(obs), enc(obs))  # random crop in training
    big = ObsEncoder({"cam_image": 84}, {}, EncoderConfig(trunk="resnet18", crop=76))
    assert big(obs | {"cam_image": torch.randint(0, 255, (1, 2, 84, 84, 3), dtype=torch.uint8)}).shape == (1, 2, 64)
    with pytest.raises(ConfigError, match="lacks"):
        enc({"state": obs["state"]})


def test_ema_follows_diffusion_policys_schedule():
    from robopolicy.train.trainer import EMA

    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, power=0.75, max_decay=0.9999)
    assert [ema.decay(n) for n in (0, 1)] == [0.0, 0.0]
    assert ema.decay(2) == pytest.approx(1 - 2**-0.75) and ema.decay(10**9) == 0.9999
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)  # decay 0: the EMA takes the weights
    assert ema.weights["weight"].item() == 2.0
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model)
    ema.update(model)  # decay 1 - 2^-0.75
    assert ema.weights["weight"].item() == pytest.approx(4.0)


def test_param_groups_cover_every_parameter_once(tmp_path):
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.train.trainer import param_groups

    store = DemoStore.open(_store(tmp_path / "s.zarr", image=16))
    cfg = load_config("diffusion", SMALL + ["policy.diffusion.denoiser=transformer", "policy.diffusion.n_layer=1",
                                            "policy.diffusion.n_emb=16", "policy.diffusion.n_head=2",
                                            "train.optim.weight_decay=1e-3", "train.optim.encoder_weight_decay=1e-6"])
    norm = Normalizer.fit(store.load(["state", "action"]), {"state": "minmax", "action": "minmax"})
    policy = Policy(cfg, store.schema, norm)
    groups = param_groups(policy, cfg)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(policy.parameters()))
    decay, no_decay, encoder = groups
    head = dict(policy.head.named_parameters())
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0 and encoder["weight_decay"] == 1e-6
    assert any(p is head["denoiser.action_pos"] for p in no_decay["params"])  # position embeddings: no decay
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 or p.shape[0] == 1 for p in no_decay["params"])


def test_checkpoint_roundtrip_and_strict_loading(tmp_path):
    store = DemoStore.open(_store(tmp_path / "s.zarr", image=16))
    cfg = load_config("diffusion", SMALL + ["policy.encoder.keypoints=8"])
    from robopolicy.data.normalizer import Normalizer

    norm = Normalizer.fit(store.load(["state", "action"]), {"state": "minmax", "action": "minmax"})
    policy = Policy(cfg, store.schema, norm)
    policy.save(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"model.safetensors", "config.yaml", "schema.json"}
    loaded = Policy.load(tmp_path / "ckpt")
    window = {k: store.read(k, 0, 2) for k in ("state", "cam_image")}
    a = policy.eval().act([Window(window)], generators=[torch.Generator().manual_seed(3)])[0]
    b = loaded.act([Window(window)], generators=[torch.Generator().manual_seed(3)])[0]
    assert np.array_equal(a.actions, b.actions) and a.actions.shape == (8, 3)
    other = Policy(load_config("diffusion", SMALL + ["policy.diffusion.down_dims=[16,48]"]), store.schema, norm)
    with pytest.raises(ConfigError, match="shape mismatches"):
        other.load_weights(loaded.state_dict())
    with pytest.raises(ConfigError, match="not a policy checkpoint"):
        Policy.load(tmp_path)


# streamed (workers=1) is slow: forkserver workers start per epoch; the in-memory loader runs by default
@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_train_cli_resume_after_sigkill_is_exact(tmp_path, workers):
    import json
    import signal
    import subprocess
    import sys
    import time

    store = _store(tmp_path / "s.zarr")
    args = ["train", "--config", "diffusion", "--store", str(store), "--quiet", "train.steps=60", *SMALL,
            f"data.num_workers={workers}"]
    full = run_cli(*args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([sys.executable, "-m", "robopolicy.cli", *args, "--out", str(tmp_path / "cut")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = tmp_path / "cut" / "train_state.pt"
    deadline = time.time() + 120
    while not state_file.exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # killed right after its first checkpoint (step 10)
    proc.wait()
    cut = torch.load(state_file, weights_only=True)["step"]
    assert cut < 60
    resumed = run_cli(*args, "--out", str(tmp_path / "cut"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "full" / "train_state.pt", weights_only=True)
    b = torch.load(state_file, weights_only=True)
    assert a["step"] == b["step"] == 60
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    rows = {run: [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("full", "cut")}
    losses = [{r["step"]: r["loss"] for r in rows[run] if "loss" in r and r["step"] > cut} for run in ("full", "cut")]
    assert len(losses[0]) >= 10 and all(losses[1][k] == v for k, v in losses[0].items())  # the next 50 steps
    val = [{r["step"]: r["val_loss"] for r in rows[run] if "val_loss" in r and r["step"] > cut} for run in rows]
    assert val[0] and val[0] == val[1]  # the held-out loss at the checkpoints after the kill, equal too
    again = run_cli(*args, "--out", str(tmp_path / "full"))
    assert again.returncode == 2 and "--resume" in again.stderr


@pytest.mark.parametrize("name,extra", [
    ("diffusion", []), ("diffusion", ["policy.diffusion.sampler=ddpm", "policy.diffusion.train_steps=20"]),
    ("ptp", ["policy.ptp.n_layer=1", "policy.ptp.n_emb=32", "data.n_obs=4", "data.horizon=12"]),
    ("ebt", ["policy.ebt.n_layer=1", "policy.ebt.obs_layers=1", "policy.ebt.n_emb=32"]),
    ("diffusion_image", ["policy.diffusion.down_dims=[16,32]", "policy.encoder.crop=14"])])
def test_acting_on_a_batch_gives_each_row_exactly_what_it_gets_alone(tmp_path, name, extra):
    """Bit for bit, per head: each row of a batch of 5 windows (its own generator; K=3 candidates where it has
    evidence to choose with: executed past actions for PTP, queued actions for diffusion, always for EBT,
    one candidate where it has none) equals that window acted on alone. (CPU kernels change their
    arithmetic with the batch: measured here, the U-Net's last row of an unpadded batch of 4 differs from
    the same row alone; act pads every call to 8 windows.)"""
    store = DemoStore.open(_store(tmp_path / "s.zarr", n=2, T=20, image=16 if name.endswith("image") else 0))
    from robopolicy.data.normalizer import Normalizer

    cfg = load_config(name, extra + ([] if name.endswith("image") else ["data.obs_keys=[state]"]))
    norm = Normalizer.fit(store.load(["state", "action"]), {"state": "minmax", "action": "minmax"})
    torch.manual_seed(0)
    policy = Policy(cfg, store.schema, norm).eval()
    To, rng = cfg.data.n_obs, np.random.default_rng(1)
    evidence = [{}, {"actions_at_past_frames": rng.uniform(-1, 1, (To - 1, 3)).astype(np.float32)},
                {"queued": rng.uniform(-1, 1, (5, 3)).astype(np.float32)}, {},
                {"actions_at_past_frames": rng.uniform(-1, 1, (To - 1, 3)).astype(np.float32),
                 "queued": rng.uniform(-1, 1, (5, 3)).astype(np.float32)}]
    windows = [Window({k: store.read(k, i, i + To) for k in policy.obs_keys}, t=i, **evidence[i]) for i in range(5)]
    seeds = [11, 12, 13, 14, 15]
    together = policy.act(windows, acting=Acting(k=3), generators=[torch.Generator().manual_seed(s) for s in seeds])
    for i in range(5):
        alone = policy.act([windows[i]], acting=Acting(k=3), generators=[torch.Generator().manual_seed(seeds[i])])[0]
        assert np.array_equal(together[i].actions, alone.actions), i
        assert (alone.scores is None) == (together[i].scores is None) and alone.method == together[i].method
        if alone.scores is not None:
            assert np.array_equal(together[i].scores, alone.scores)
    scored = [len(c.scores) if c.scores is not None else 1 for c in together]
    assert scored == {"ebt": [3] * 5, "ptp": [1, 3, 1, 1, 3]}.get(name, [1, 1, 3, 1, 3]), scored
    assert not np.array_equal(together[0].actions, together[1].actions)


def test_coherence_scores_candidates_against_the_queued_actions_aligned_by_timestep():
    """Backward coherence: the queued action due now lines up with the chunk's current token (To-1)."""
    from robopolicy import verify

    To, H, Da = 3, 12, 2
    candidates = torch.randn(1, 4, H, Da)
    queued = candidates[0, 2, To - 1: To - 1 + 5].clone()  # candidate 2's actions from now on
    scores = verify.scores("coherence", candidates, {}, 0, verify.Evidence(queued=queued), To)
    assert scores.shape == (4,) and int(scores.argmin()) == 2 and float(scores[2]) == 0.0
    shifted = candidates[0, 2, To: To + 5].clone()  # one step late: no candidate matches exactly
    assert float(verify.scores("coherence", candidates, {}, 0, verify.Evidence(queued=shifted), To).min()) > 0


def test_history_queues_the_plan_from_the_step_it_was_made_for():
    from robopolicy.data.windows import History, WindowSpec

    history = History(WindowSpec(2, 16), action_dim=1)
    history.start({"state": np.zeros(1)})
    plan = np.arange(9, dtype=np.float32)[:, None]  # planned for steps 0..8
    history.plan(plan, t=0)
    assert np.array_equal(history.window().queued, plan)
    for t in range(3):
        history.record(plan[t], {"state": np.zeros(1)})
    assert np.array_equal(history.window().queued, plan[3:])  # due from step 3 on: not yet executed
    for t in range(3, 9):
        history.record(plan[t], {"state": np.zeros(1)})
    assert history.window().queued is None  # the plan ran out
