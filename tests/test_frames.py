"""The server's per-connection frame cache: a long-context image policy encodes each frame once.

Claims: consecutive windows of one robot cost one new frame each (a padded first window: one); a frame's
features do not depend on the frames encoded with it, so a chunk from cached features equals the chunk
from freshly encoded ones bit for bit, and matches the plain (encode-the-window) path to float rounding;
through a real server on loopback the reply says how many frames were encoded, and connections do not
share caches.
"""
from __future__ import annotations

import numpy as np
import torch

from robopolicy.config import load_config
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.store import DemoStore
from robopolicy.data.windows import History, Window, WindowSpec
from robopolicy.policy import Policy
from robopolicy.serve.frames import FrameCache, attach_features


def _image_policy(tmp_path) -> tuple[Policy, DemoStore]:
    rng = np.random.default_rng(0)
    with DemoStore.create(tmp_path / "s.zarr") as store:
        for _ in range(2):
            store.append_episode({"state": rng.normal(size=(20, 5)).astype(np.float32),
                                  "action": np.tanh(rng.normal(size=(20, 3))).astype(np.float32),
                                  "cam_image": rng.integers(0, 255, (20, 16, 16, 3), dtype=np.uint8)})
    store = DemoStore.open(tmp_path / "s.zarr")
    cfg = load_config("diffusion_image", ["policy.diffusion.down_dims=[16,32]", "policy.encoder.crop=14",
                                          "data.n_obs=4", "data.horizon=16"])
    norm = Normalizer.fit(store.load(["state", "action"]), {"state": "minmax", "action": "minmax"})
    torch.manual_seed(0)
    return Policy(cfg, store.schema, norm).eval(), store


def _windows(policy: Policy, store: DemoStore, n: int) -> list[Window]:
    """The live windows of one episode at steps 0..n-1 (History, as the control loop builds them)."""
    d = policy.cfg.data
    h = History(WindowSpec(d.n_obs, d.horizon, d.stride), policy.action_dim)
    frame = {k: store.read(k, 0, 1)[0] for k in policy.obs_keys}
    h.start(frame)
    out = [h.window(policy.obs_keys)]
    for t in range(1, n):
        h.record(np.zeros(3, np.float32), {k: store.read(k, t, t + 1)[0] for k in policy.obs_keys})
        out.append(h.window(policy.obs_keys))
    return out


def test_consecutive_windows_encode_one_new_frame_and_act_as_if_encoded_afresh(tmp_path):
    policy, store = _image_policy(tmp_path)
    windows = _windows(policy, store, 6)
    cache = FrameCache(16)
    counts = [attach_features(policy, [w], [cache]) for w in windows]
    assert counts == [1, 1, 1, 1, 1, 1]  # the padded first window repeats one frame
    last = windows[-1]
    fresh = policy.frame_features({k: last.obs[k] for k in policy.obs_keys})
    assert torch.equal(last.features, fresh)
    # every chunk from cached features equals the chunk from freshly encoded ones, bit for bit
    again = Window(dict(last.obs), last.t, last.actions_before_frames, last.actions_at_past_frames, features=fresh)
    a = policy.act([last], generators=[torch.Generator().manual_seed(3)])[0]
    b = policy.act([again], generators=[torch.Generator().manual_seed(3)])[0]
    assert np.array_equal(a.plan, b.plan)
    plain = Window(dict(last.obs), last.t, last.actions_before_frames, last.actions_at_past_frames)
    c = policy.act([plain], generators=[torch.Generator().manual_seed(3)])[0]
    np.testing.assert_allclose(a.plan, c.plan, atol=1e-4)  # the encoder over the whole window: float rounding
    # a frame's features do not depend on what else was encoded with it
    one = policy.frame_features({k: last.obs[k][-1:] for k in policy.obs_keys})
    assert torch.equal(one[0], fresh[-1])


def test_the_cache_keeps_the_most_recently_used_frames():
    cache = FrameCache(2)
    for d in (b"a", b"b"):
        cache.put(d, torch.zeros(1))
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"c", torch.ones(1))
    assert cache.get(b"b") is None and cache.get(b"a") is not None and cache.get(b"c") is not None


def test_through_the_server_each_connection_encodes_only_its_new_frames(tmp_path):
    from conftest import InProcessServer
    from robopolicy.serve import protocol, service
    from robopolicy.serve.client import PolicyClient

    policy, store = _image_policy(tmp_path)
    windows = _windows(policy, store, 4)
    with InProcessServer(policy) as server:
        first, second = (PolicyClient(server.url) for _ in range(2))
        encoded = [first.request(protocol.act_request(w, i, seed=0))["server_timing"]["encoded_frames"]
                   for i, w in enumerate(windows)]
        assert encoded == [1, 1, 1, 1]
        # another robot: its own cache (the same frames are new to it)
        reply = second.request(protocol.act_request(windows[-1], 9, seed=0))
        assert reply["server_timing"]["encoded_frames"] == 4
        expected = policy.act([Window(dict(windows[-1].obs), windows[-1].t, windows[-1].actions_before_frames,
                                      windows[-1].actions_at_past_frames,
                                      features=policy.frame_features(dict(windows[-1].obs)))],
                              generators=[service.generator(None, 0)])[0]
        assert np.array_equal(reply["plan"], expected.plan.astype(np.float32))
        first.close()
        second.close()


def test_an_evaluation_rollout_encodes_each_frame_once(tmp_path):
    """Evaluation (run_episodes) keeps a frame cache per episode like the server does: a To=16 stride-1
    image window shares 8 of its frames with the previous chunk's, so re-encoding the window every chunk
    would encode about twice the frames the episode has."""
    from robopolicy import envs
    from robopolicy.collect import collect
    from robopolicy.eval.rollout import LocalEnv, run_episodes

    store, _, _ = collect("cue-reach", 1, tmp_path / "s.zarr", obs="image", image_size=32, progress=False)
    cfg = load_config("diffusion_image", ["policy.diffusion.down_dims=[16,32]", "policy.encoder.crop=28",
                                          "data.n_obs=16", "data.horizon=24", "data.n_action_steps=8"])
    norm = Normalizer.fit(store.load(["state", "action"]), {"state": "minmax", "action": "minmax"})
    torch.manual_seed(0)
    policy = Policy(cfg, store.schema, norm).eval()
    encoded, encode = [], policy.frame_features
    policy.frame_features = lambda frames: (encoded.append(len(frames["state"])), encode(frames))[1]
    episode = run_episodes(policy, [LocalEnv(envs.make("cue-reach", obs="image", image_size=32))], [10**9])[0]
    chunks = len(episode.latency_ms)
    assert chunks >= 10 and len(encoded) == chunks  # one encoder call per chunk, for the new frames only
    assert 0 < sum(encoded) <= episode.length + 1 < 16 * chunks


def test_a_frame_is_its_whole_observation_images_and_state_alike(tmp_path):
    """The digest covers every observation key: a window whose picture repeats while the state moves (an arm
    moving out of the camera's view, a camera frame grabbed twice) gets fresh features, and so does one whose
    state repeats while the picture changes. Features keyed by the image alone would serve the stale state."""
    policy, store = _image_policy(tmp_path)
    rng = np.random.default_rng(1)
    image = store.read("cam_image", 0, 1)[0]
    state = store.read("state", 0, 1)[0]
    To = policy.cfg.data.n_obs

    def window(images, states):
        return Window({"cam_image": np.stack(images), "state": np.stack(states).astype(np.float32)}, t=To - 1)
    moving_state = window([image] * To, [state + 0.5 * i for i in range(To)])
    moving_image = window([rng.integers(0, 255, image.shape, dtype=np.uint8) for _ in range(To)], [state] * To)
    for w in (moving_state, moving_image):
        cache = FrameCache(16)
        assert attach_features(policy, [w], [cache]) == To  # every frame is new: all are encoded
        fresh = policy.frame_features(dict(w.obs))
        assert torch.equal(w.features, fresh)
        assert len({tuple(f.tolist()) for f in w.features}) == To  # and their features differ frame to frame
