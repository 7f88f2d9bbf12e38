import numpy as np
import pytest

from robopolicy.data.loaders import InMemoryWindows, NaiveWindows, StreamingWindows, WindowGather, make_loader
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.store import DemoStore
from robopolicy.data.windows import WindowSpec, split_episodes, window_index
from robopolicy.errors import ConfigError

LENGTHS = [9, 30, 4, 17, 23]


def _indexed_store(path):
    """Episodes whose action at frame f is (f + 1, -(f + 1)) and whose 'frame' key is f: values are indices."""
    store = DemoStore.create(path)
    f0 = 0
    for T in LENGTHS:
        f = np.arange(f0, f0 + T)
        store.append_episode({"frame": f.astype(np.int64), "action": np.stack([f + 1, -(f + 1)], 1).astype(np.float32),
                              "image": np.broadcast_to((f % 251 + 1).astype(np.uint8)[:, None, None, None],
                                                       (T, 4, 4, 3)).copy()})
        f0 += T
    return store


def _episode_of(frame):
    return np.searchsorted(np.cumsum(LENGTHS), frame, side="right")


def test_check1_alignment_stride1():
    To, H = 3, 8
    idx = window_index(np.cumsum(LENGTHS), WindowSpec(To, H, 1))
    for t, acts in zip(idx.anchor, idx.action):
        ep = _episode_of(t)
        lo, hi = np.r_[0, np.cumsum(LENGTHS)][ep], np.cumsum(LENGTHS)[ep] - 1
        for i in range(H):
            want = t - To + 1 + i if i < To else t + (i - To + 1)
            assert acts[i] == np.clip(want, lo, hi)


def test_check1_alignment_strided_past_dense_future():
    To, H, s = 4, 10, 3
    idx = window_index(np.cumsum(LENGTHS), WindowSpec(To, H, s))
    t = 9 + 15  # inside episode 1 (frames 9..38), far enough from both edges
    row = np.where(idx.anchor == t)[0][0]
    assert list(idx.obs[row]) == [t - 9, t - 6, t - 3, t]
    assert list(idx.action[row][: To - 1]) == list(idx.obs[row][: To - 1])  # past token i at obs frame i's time
    assert list(idx.action[row][To - 1:]) == list(range(t, t + H - To + 1))  # current + dense future


def test_check2_edges_repeat_first_and_last_never_cross_episodes(tmp_path):
    store = _indexed_store(tmp_path / "s.zarr")
    spec = WindowSpec(5, 12, 2, past_act=True)
    data = InMemoryWindows(store, WindowGather(spec, ["frame", "image"]))
    assert len(data) == sum(LENGTHS)
    batch = data.batch(np.arange(len(data)))
    frames, actions = batch["obs"]["frame"].numpy(), batch["action"].numpy()
    for anchor, fr, act, pa in zip(data.index.anchor, frames, actions, batch["obs"]["past_act"].numpy()):
        ep = _episode_of(anchor)
        assert np.all(_episode_of(fr) == ep) and np.all(_episode_of(act[:, 0] - 1) == ep)
        start = np.r_[0, np.cumsum(LENGTHS)][ep]
        end = np.cumsum(LENGTHS)[ep] - 1
        if anchor == start:  # the first window repeats the first frame/action, never zeros
            assert np.all(fr == start) and np.all(act[:5, 0] == start + 1)
        if anchor == end:  # the last window repeats the last action into the future
            assert fr[-1] == end and np.all(act[4:, 0] == end + 1)
        # past_act: the action executed just before each observation frame; none before the episode's
        # first frame: the neutral action (0), never a_0, the label of frame 0, leaking into the input
        assert np.all(pa[:, 0] == np.where(fr == start, 0, fr))
    assert np.all(actions != 0)
    images = batch["obs"]["image"].numpy()
    assert images.dtype == np.uint8 and images.shape == (len(data), 5, 4, 4, 3)
    assert np.all(images[:, :, 0, 0, 0] == (frames % 251 + 1))


def test_split_by_episode_is_seeded_and_disjoint():
    train, val = split_episodes(20, 0.2, seed=3)
    assert len(val) == 4 and not set(train) & set(val) and set(train) | set(val) == set(range(20))
    assert np.array_equal(split_episodes(20, 0.2, seed=3)[1], val)
    assert not np.array_equal(split_episodes(20, 0.2, seed=4)[1], val)
    idx = window_index(np.cumsum(LENGTHS), WindowSpec(), episodes=np.array([1, 3]))
    assert set(_episode_of(idx.anchor)) == {1, 3} and len(idx) == LENGTHS[1] + LENGTHS[3]
    with pytest.raises(ConfigError):
        split_episodes(5, 1.0)


def test_future_pad_limits_anchors_like_pad_after():
    To, H = 2, 8
    full = window_index(np.cumsum(LENGTHS), WindowSpec(To, H))
    none = window_index(np.cumsum(LENGTHS), WindowSpec(To, H, future_pad=0))
    assert len(full) == sum(LENGTHS) and len(none) == sum(max(L - (H - To), 0) for L in LENGTHS)
    ends = np.cumsum(LENGTHS)[_episode_of(none.anchor)] - 1
    assert np.all(none.action[:, -1] == none.anchor + H - To) and np.all(none.action[:, -1] <= ends)


def test_bad_window_spec_is_a_config_error():
    with pytest.raises(ConfigError, match="horizon"):
        WindowSpec(n_obs=16, horizon=8)


def _as_rows(batch):
    """(anchor frame, bytes of the whole sample) per window, to compare loaders as multisets."""
    frames = batch["obs"]["frame"].numpy()
    out = []
    for i in range(len(frames)):
        sample = b"".join(v[i].numpy().tobytes() for v in batch["obs"].values()) + batch["action"][i].numpy().tobytes()
        out.append((int(frames[i, -1]), sample))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_and_naive_loaders_give_exactly_the_ram_windows(tmp_path, workers):
    store = _indexed_store(tmp_path / "s.zarr")
    norm = Normalizer.fit(store.load(["action"]), {"action": "minmax"})
    spec = WindowSpec(4, 10, 2, past_act=True)
    gather = WindowGather(spec, ["frame", "image"], "action", norm)
    episodes = np.array([0, 1, 3, 4])
    ram = InMemoryWindows(store, gather, episodes)
    expected = sorted(_as_rows(ram.batch(np.arange(len(ram)))))
    assert ram.batch(np.arange(4))["action"].abs().max() <= 1.0 + 1e-6  # normalized

    streamed = StreamingWindows(store.path, gather, batch_size=8, episodes=episodes, block_frames=8,
                                blocks_per_shuffle=3, seed=5, drop_last=False)
    loader = make_loader(streamed, num_workers=workers)
    epoch1 = [row for b in loader for row in _as_rows(b)]
    epoch2 = [row for b in loader for row in _as_rows(b)]
    assert sorted(epoch1) == expected and sorted(epoch2) == expected
    assert [r[0] for r in epoch1] != [r[0] for r in epoch2]  # reshuffled each epoch
    assert [r[0] for r in epoch1] != sorted(r[0] for r in epoch1)  # shuffled at all

    naive = make_loader(NaiveWindows(store.path, gather, episodes), num_workers=workers, batch_size=16)
    assert sorted(row for b in naive for row in _as_rows(b)) == expected


def test_streamed_drop_last_and_fresh_workers_reshuffle(tmp_path):
    import torch

    store = _indexed_store(tmp_path / "s.zarr")
    gather = WindowGather(WindowSpec(2, 4), ["frame"], "action")
    ds = StreamingWindows(store.path, gather, batch_size=8, block_frames=8, seed=1)
    batches = list(make_loader(ds, num_workers=0))
    assert len(batches) == len(ds) == sum(LENGTHS) // 8 and all(len(b["action"]) == 8 for b in batches)
    # plain DataLoader workers (not persistent): each epoch still gets its own order
    ds = StreamingWindows(store.path, gather, batch_size=8, block_frames=8, seed=1, drop_last=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="forkserver")
    orders = [[int(f) for b in loader for f in b["obs"]["frame"][:, -1]] for _ in range(2)]
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])


@pytest.mark.parametrize("To,H,stride", [(2, 16, 1), (4, 10, 3), (16, 32, 6)])
def test_replaying_an_episode_through_the_inference_path_gives_the_training_windows(tmp_path, To, H, stride):
    """A stored episode replayed step by step into a History, acted on through the policy's inference
    input path, gives frame for frame exactly the normalized windows training built from it: observation
    frames, the actions before each frame (past_act) and the actions at the past frames (PTP's past tokens)."""
    import torch

    from robopolicy.config import load_config
    from robopolicy.data.store import Field
    from robopolicy.data.windows import History
    from robopolicy.policy import Policy

    rng = np.random.default_rng(0)
    store = DemoStore.create(tmp_path / "s.zarr")
    for T in (7, 40):
        store.append_episode({"state": rng.normal(size=(T, 3)).astype(np.float32),
                              "action": rng.uniform(-2, 3, (T, 2)).astype(np.float32)})
    norm = Normalizer.fit(store.load(["state", "action"]), {"state": "minmax", "action": "minmax"})
    spec = WindowSpec(To, H, stride, past_act=True)
    training = InMemoryWindows(store, WindowGather(spec, ["state"], "action", norm))
    cfg = load_config("ptp", ["policy.ptp.n_layer=1", "policy.ptp.n_emb=16", "policy.ptp.n_head=2",
                              f"data.n_obs={To}", f"data.horizon={H}", f"data.stride={stride}", "data.past_act=true"])
    policy = Policy(cfg, {"state": Field((3,), np.dtype(np.float32)), "action": Field((2,), np.dtype(np.float32))},
                    norm).eval()
    starts = np.r_[0, store.episode_ends[:-1]]
    row = 0
    for e in range(store.n_episodes):
        episode = store.episode(e)
        history = History(WindowSpec(To, H, stride), action_dim=2)
        history.start({"state": episode["state"][0]})
        for t in range(len(episode["action"])):
            want = training.batch(np.array([row]))
            assert training.index.anchor[row] == starts[e] + t
            window = history.window(["state"])
            got = policy._obs_batch([window])
            assert torch.equal(got["state"], want["obs"]["state"]), (e, t)
            assert torch.equal(got["past_act"], want["obs"]["past_act"]), (e, t)
            if history.full and To > 1:
                past = torch.as_tensor(norm.normalize("action", window.actions_at_past_frames))
                assert torch.equal(past, want["action"][0, : To - 1]), (e, t)
            else:
                assert window.actions_at_past_frames is None and t < (To - 1) * stride
            if t + 1 < len(episode["action"]):
                history.record(episode["action"][t], {"state": episode["state"][t + 1]})
            row += 1
    assert row == len(training)
