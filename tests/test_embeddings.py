"""Embedding cache and stage-2 training on it (checks 9-10 of algorithms.md §4)."""
import numpy as np
import pytest
import torch

from conftest import run_cli
from robopolicy import embeddings
from robopolicy.acting import Acting
from robopolicy.config import load_config
from robopolicy.data.store import DemoStore
from robopolicy.data.windows import Window
from robopolicy.errors import ConfigError, StoreError
from robopolicy.models.encoders import ObsEncoder
from robopolicy.policy import Policy
from robopolicy.train.trainer import train

IMAGE = 24
STAGE1 = ["policy.encoder.trunk=small_cnn", "policy.encoder.crop=20", "policy.encoder.feature_dim=8",
          "policy.encoder.keypoints=4", "policy.diffusion.down_dims=[16,32]", "policy.diffusion.step_embed_dim=16",
          "data.batch_size=16", "train.steps=6", "train.log_every=3", "train.checkpoint_every=6",
          "data.val_fraction=0.25"]
STAGE2 = ["data.n_obs=4", "data.stride=2", "policy.diffusion.down_dims=[16,32]", "policy.diffusion.step_embed_dim=16",
          "data.batch_size=16", "train.steps=6", "train.log_every=3", "train.checkpoint_every=6"]


def _episode(rng, T=25):
    return {"cam_image": rng.integers(0, 255, (T, IMAGE, IMAGE, 3), dtype=np.uint8),
            "state": rng.normal(size=(T, 5)).astype(np.float32),
            "action": np.tanh(rng.normal(size=(T, 3))).astype(np.float32)}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A small image store and a stage-1 policy trained end to end on it."""
    root = tmp_path_factory.mktemp("stage1")
    rng = np.random.default_rng(0)
    with DemoStore.create(root / "demos.zarr") as store:
        for _ in range(4):
            store.append_episode(_episode(rng))
    train(load_config("diffusion_image", STAGE1), root / "demos.zarr", root / "run", progress=False)
    return root


def test_cache_matches_the_encoder_on_held_out_frames_check10(stage1, tmp_path):
    cache_path = embeddings.write_cache(stage1 / "run/policy", stage1 / "demos.zarr", tmp_path / "c.zarr",
                                        batch_frames=16, progress=False)
    policy = Policy.load(stage1 / "run/policy")
    with DemoStore.open(cache_path) as cache, DemoStore.open(stage1 / "demos.zarr") as store:
        assert cache.n_episodes == store.n_episodes and np.array_equal(cache.episode_ends, store.episode_ends)
        assert set(cache.keys) == {"action", "embedding"}
        assert np.array_equal(cache.load(["action"])["action"], store.load(["action"])["action"])
        # one frame of the held-out (validation) episode, embedded alone: eval mode, center crop, normalized state
        frame = int(store.episode_starts[-1]) + 7
        raw = {k: store.read(k, frame, frame + 1) for k in policy.obs_keys}
        policy.eval()
        with torch.no_grad():
            expected = policy.encoder({"cam_image": torch.from_numpy(raw["cam_image"])[:, None],
                                       "state": torch.from_numpy(policy.normalizer.normalize("state",
                                                                                             raw["state"]))[:, None]})
        cached = cache.read("embedding", frame, frame + 1)
        assert np.abs(cached - expected[:, 0].numpy()).max() < 1e-5
        assert not np.allclose(cached, cache.read("embedding", frame + 1, frame + 2))  # frames differ


def test_stage2_never_runs_the_encoder_nor_reads_an_image_check9(stage1, tmp_path, monkeypatch):
    cache_path = embeddings.write_cache(stage1 / "run/policy", stage1 / "demos.zarr", tmp_path / "c.zarr",
                                        progress=False)
    read_keys = set()
    real_read = DemoStore.read

    def recording_read(self, key, start, stop):
        read_keys.add(key)
        return real_read(self, key, start, stop)

    def no_encoder(self, obs):
        raise AssertionError("the encoder ran during stage-2 training")

    monkeypatch.setattr(DemoStore, "read", recording_read)
    monkeypatch.setattr(ObsEncoder, "forward", no_encoder)
    policy_dir = train(load_config("diffusion", STAGE2), None, tmp_path / "run2", progress=False,
                       embeddings=cache_path)
    monkeypatch.undo()
    assert read_keys == {"embedding", "action"}, read_keys  # no image (nor state) is read, let alone decoded

    policy = Policy.load(policy_dir)
    stage1_policy = Policy.load(stage1 / "run/policy")
    assert policy.cfg.policy.freeze_encoder and policy.obs_keys == ["cam_image", "state"]
    assert policy.cfg.data.n_obs == 4
    assert all(not p.requires_grad for p in policy.encoder.parameters())
    for k, v in stage1_policy.encoder.state_dict().items():  # the same frozen encoder, carried along
        assert torch.equal(policy.encoder.state_dict()[k], v), k
    assert embeddings.encoder_hash(policy) == embeddings.encoder_hash(stage1_policy)

    # check 9: a forward pass with the images removed works and gives the encoder no gradient
    policy.train()
    assert not policy.encoder.training  # frozen stays in eval mode
    loss = policy.loss({"obs": {"embedding": torch.randn(2, 4, policy.encoder.out_dim)},
                        "action": torch.rand(2, 16, 3) * 2 - 1})
    loss.backward()
    assert all(p.grad is None for p in policy.encoder.parameters())
    assert all(p.grad is not None for p in policy.head.parameters())

    # it acts on raw observations, through the frozen encoder
    rng = np.random.default_rng(1)
    window = {"cam_image": rng.integers(0, 255, (4, IMAGE, IMAGE, 3), dtype=np.uint8),
              "state": rng.normal(size=(4, 5)).astype(np.float32)}
    chunk = policy.eval().act([Window(window)], generators=[torch.Generator().manual_seed(0)])[0]
    assert chunk.actions.shape == (8, 3) and np.all(np.isfinite(chunk.actions))


def test_stale_or_foreign_caches_are_refused(stage1, tmp_path):
    import shutil

    store_copy, ckpt_copy = tmp_path / "demos.zarr", tmp_path / "ckpt"
    shutil.copytree(stage1 / "demos.zarr", store_copy)
    shutil.copytree(stage1 / "run/policy", ckpt_copy)
    cache_path = embeddings.write_cache(ckpt_copy, store_copy, progress=False)
    assert cache_path.parent == tmp_path and cache_path.name.startswith("demos.emb-")
    embeddings.open_for_training(cache_path)[0].close()  # current: accepted
    with pytest.raises(ConfigError, match="not .*pass that store"):
        embeddings.open_for_training(cache_path, stage1 / "demos.zarr")

    # a cache interrupted after 2 episodes is refused until re-running finishes it
    partial = tmp_path / "partial.zarr"
    shutil.copytree(cache_path, partial)
    with DemoStore.open(partial, mode="a") as c:
        c._write_meta(n_episodes=2)
    with pytest.raises(ConfigError, match="incomplete"):
        embeddings.open_for_training(partial)
    embeddings.write_cache(ckpt_copy, store_copy, partial, progress=False)
    embeddings.open_for_training(partial)[0].close()

    # the store gains an episode: stale
    with DemoStore.open(store_copy, mode="a") as store:
        store.append_episode(_episode(np.random.default_rng(5)))
    with pytest.raises(ConfigError, match="stale cache.*changed since.*robopolicy cache"):
        embeddings.open_for_training(cache_path)
    # writing into the old cache with the changed store is refused, not mixed
    with pytest.raises(StoreError, match="another encoder or store version"):
        embeddings.write_cache(ckpt_copy, store_copy, cache_path, progress=False)

    # the checkpoint is retrained (other encoder weights): stale
    cache2 = embeddings.write_cache(ckpt_copy, store_copy, tmp_path / "c2.zarr", progress=False)
    policy = Policy.load(ckpt_copy)
    with torch.no_grad():
        next(policy.encoder.parameters()).add_(0.01)
    policy.save(ckpt_copy)
    with pytest.raises(ConfigError, match="stale cache.*another encoder"):
        embeddings.open_for_training(cache2)
    with pytest.raises(StoreError, match="not an embedding cache"):
        embeddings.open_for_training(store_copy)


def test_cache_and_train_on_it_from_the_command_line(stage1, tmp_path):
    r = run_cli("cache", "--checkpoint", str(stage1 / "run/policy"), "--store", str(stage1 / "demos.zarr"),
                "--out", str(tmp_path / "c.zarr"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "embedding cache:" in r.stdout and "embedding" in r.stdout
    r = run_cli("train", "--config", "diffusion", "--embeddings", str(tmp_path / "c.zarr"), "--out",
                str(tmp_path / "run"), "--quiet", *STAGE2)
    assert r.returncode == 0, r.stderr
    assert Policy.load(tmp_path / "run/policy").cfg.policy.freeze_encoder
    r = run_cli("train", "--config", "diffusion", "--out", str(tmp_path / "run3"), "--quiet")
    assert r.returncode == 2 and "pass --store" in r.stderr


TINY_ENCODER = ["policy.encoder.trunk=small_cnn", "policy.encoder.crop=20", "policy.encoder.feature_dim=8",
                "policy.encoder.keypoints=4"]
TINY_HEADS = {"ptp": ["policy.ptp.n_layer=1", "policy.ptp.n_head=2", "policy.ptp.n_emb=16"],
              "ebt": ["policy.ebt.n_layer=1", "policy.ebt.obs_layers=1", "policy.ebt.n_head=2", "policy.ebt.n_emb=16"]}
SHORT = ["data.batch_size=16", "train.steps=4", "train.log_every=2", "train.checkpoint_every=4",
         "train.optim.warmup_steps=1"]


@pytest.mark.parametrize("head, stage1_config, stage2_config, stage2_context",
                         [("ptp", "ptp_stage1", "ptp_stage2", ["data.n_obs=4", "data.stride=2", "data.horizon=12"]),
                          ("ebt", "ebt_image", "ebt", [])])
def test_ptp_and_ebt_train_on_images_end_to_end_then_on_their_cache(stage1, tmp_path, head, stage1_config,
                                                                      stage2_config, stage2_context):
    """The staged recipe for the other heads, through the same trainer and cache: images end to end (the
    encoder learns), `cache`, the head alone on embeddings (the encoder frozen), then acting on raw frames."""
    run1 = train(load_config(stage1_config, TINY_ENCODER + TINY_HEADS[head] + SHORT), stage1 / "demos.zarr",
                 tmp_path / "stage1", progress=False)
    first = Policy.load(run1)
    torch.manual_seed(first.cfg.train.seed)
    fresh = Policy(first.cfg, first.schema, first.normalizer)  # the weights stage 1 started from
    assert any(not torch.equal(a, b) for a, b in zip(first.encoder.state_dict().values(),
                                                      fresh.encoder.state_dict().values()))  # the encoder trained
    cache_path = embeddings.write_cache(run1, stage1 / "demos.zarr", tmp_path / "c.zarr", progress=False)
    run2 = train(load_config(stage2_config, TINY_HEADS[head] + SHORT + stage2_context), None, tmp_path / "stage2",
                 progress=False, embeddings=cache_path)
    policy = Policy.load(run2)
    assert policy.cfg.policy.head == head and policy.cfg.policy.freeze_encoder
    for k, v in first.encoder.state_dict().items():
        assert torch.equal(policy.encoder.state_dict()[k], v), k
    n_obs = policy.cfg.data.n_obs
    rng = np.random.default_rng(2)
    window = {"cam_image": rng.integers(0, 255, (n_obs, IMAGE, IMAGE, 3), dtype=np.uint8),
              "state": rng.normal(size=(n_obs, 5)).astype(np.float32)}
    chunk = policy.act([Window(window)], acting=Acting(k=3), generators=[torch.Generator().manual_seed(0)])[0]
    assert chunk.actions.shape == (policy.cfg.data.n_action_steps, 3) and np.all(np.isfinite(chunk.actions))
    assert chunk.scores is None or len(chunk.scores) == 3
