"""Past-Token Prediction head: faithfulness checks of algorithms.md §4 (PTP) that concern training and
sampling, each able to fail."""
import numpy as np
import pytest
import torch

from conftest import fit_one_chunk
from robopolicy.acting import Acting
from robopolicy.config import load_config
from robopolicy.data.normalizer import Normalizer
from robopolicy.data.store import Field
from robopolicy.data.windows import Window
from robopolicy.errors import ConfigError
from robopolicy.heads.ptp import PTPHead, PTPHeadConfig
from robopolicy.policy import Policy

H, DA, TO, D = 12, 3, 5, 6


def _head(**kw):
    torch.manual_seed(0)
    cfg = PTPHeadConfig(n_layer=1, n_head=2, n_emb=16, p_drop_attn=0.0, sampler="ddim", inference_steps=5, **kw)
    return PTPHead(DA, H, TO, D, cfg)


class _Recorder(torch.nn.Module):
    """Predicts a given tensor and records what the denoiser was given."""

    def __init__(self, pred):
        super().__init__()
        self.pred, self.inputs = pred, []

    def forward(self, x, t, cond):
        self.inputs.append((x.clone(), t.clone(), cond.clone()))
        return self.pred


def _loss_with(head, token=None, delta=0.5, seed=1):
    actions, cond = torch.rand(2, H, DA) * 2 - 1, torch.randn(2, TO, D)
    torch.manual_seed(seed)
    noise = torch.randn_like(actions)  # the loss draws exactly this first
    pred = noise.clone()
    if token is not None:
        pred[:, token] += delta
    head.denoiser = _Recorder(pred)
    torch.manual_seed(seed)
    return head.loss(cond, actions).item()


@pytest.mark.parametrize("kw, first", [({}, 0), ({"past_action_pred": False}, TO - 1),
                                       ({"past_steps_reg": 2}, TO - 1 - 2), ({"past_steps_reg": 0}, TO - 1)])
def test_check3_loss_mask(kw, first):
    """PTP: all H tokens; no-PTP: [To-1, H); past_steps_reg=K: [To-1-K, H). An error on an excluded
    token leaves the loss unchanged; on the first supervised token it does not."""
    head = _head(**kw)
    base = _loss_with(head)
    assert base == pytest.approx(0.0, abs=1e-12)
    if first > 0:
        assert _loss_with(head, token=first - 1) == base
    assert _loss_with(head, token=first) > base


def test_check4_one_past_and_one_future_token_weigh_the_same():
    head = _head()
    past, future = _loss_with(head, token=1), _loss_with(head, token=H - 1)
    assert past == pytest.approx(future, rel=1e-6) and past == pytest.approx(0.5**2 / H, rel=1e-5)


def test_check5_past_tokens_are_noised_targets_never_clean_inputs():
    head = _head()
    actions, cond = torch.rand(4, H, DA) * 2 - 1, torch.randn(4, TO, D)
    head.denoiser = _Recorder(torch.zeros(4, H, DA))
    torch.manual_seed(3)
    head.loss(cond, actions)
    torch.manual_seed(3)
    noise = torch.randn_like(actions)
    steps = torch.randint(0, 100, (4,))
    x, t, _ = head.denoiser.inputs[0]
    assert torch.equal(t, steps)
    assert torch.allclose(x, head.noise_schedule.add_noise(actions, noise, steps), atol=1e-6)
    assert not torch.allclose(x[:, : TO - 1], actions[:, : TO - 1], atol=1e-3)  # the past is noised, not given


def test_check6_and_8_ddpm_100_epsilon_per_frame_condition():
    head = PTPHead(DA, H, TO, D, PTPHeadConfig(n_layer=1, n_head=2, n_emb=16))
    assert head.cfg.sampler == "ddpm" and len(head._sampler().timesteps) == 100
    cfg = head.noise_schedule.config
    assert (cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type, cfg.clip_sample) == \
        (100, "squaredcos_cap_v2", "epsilon", True)
    assert head.denoiser.cond_pos.shape == (1, 1 + TO, 16)  # step token + one token per frame


def test_check7_masks_hold_in_the_ptp_head():
    head = _head().eval()
    x, step, cond = torch.randn(2, H, DA), torch.tensor([9]), torch.randn(2, TO, D)
    base = head.denoiser(x, step, cond)
    for j in range(1, TO):
        changed = cond.clone()
        changed[:, j] -= 2.0
        out = head.denoiser(x, step, changed)
        assert torch.allclose(out[:, :j], base[:, :j], atol=1e-6) and not torch.allclose(out[:, j:], base[:, j:])


def test_sample_exposes_each_candidates_past():
    head = _head()
    chunks, info = head.sample(torch.randn(2, TO, D), k=3, generators=torch.Generator().manual_seed(0))
    assert chunks.shape == (2, 3, H, DA) and info["past"].shape == (2, 3, TO - 1, DA)
    assert torch.equal(info["past"], chunks[:, :, : TO - 1])
    assert not torch.equal(chunks[:, 0], chunks[:, 1])  # independent noise per candidate


def test_check13_baselines_are_configs_of_the_same_head():
    schema = {"state": Field((4,), np.dtype(np.float32)), "action": Field((DA,), np.dtype(np.float32))}
    norm = Normalizer({"state": np.ones(4), "action": np.ones(DA)}, {"state": np.zeros(4), "action": np.zeros(DA)})
    small = ["policy.head=ptp", "policy.ptp.n_layer=1", "policy.ptp.n_emb=16", "policy.ptp.n_head=2",
             "data.obs_keys=[state]"]
    no_ptp = Policy(load_config("diffusion", small + ["policy.ptp.past_action_pred=false", "data.n_obs=16",
                                                      "data.horizon=32"]), schema, norm)
    no_history = Policy(load_config("diffusion", small + ["data.n_obs=2"]), schema, norm)
    past_act = Policy(load_config("diffusion", small + ["data.n_obs=16", "data.horizon=32", "data.past_act=true"]),
                      schema, norm)
    assert [type(p.head).__name__ for p in (no_ptp, no_history, past_act)] == ["PTPHead"] * 3
    assert no_ptp.head.token_weight[:15].sum() == 0 and no_ptp.head.token_weight[15:].all()
    assert no_history.head.token_weight.all()
    # executed past actions join each frame's features and are required at act time
    assert past_act.head.denoiser.cond_in.in_features == 4 + DA
    window = {"state": np.zeros((16, 4), np.float32)}
    with pytest.raises(ConfigError, match="actions executed before each frame"):
        past_act.eval().act([Window(window)])
    chunk = past_act.act([Window(window, 0, np.zeros((16, DA), np.float32))],
                         generators=[torch.Generator().manual_seed(0)])[0]
    assert chunk.actions.shape == (8, DA)


def test_overfits_a_single_demo():
    """Acceptance: one demonstration chunk (past tokens included) learned until sampled chunks match it."""
    torch.manual_seed(0)
    head = PTPHead(2, 8, 3, 4, PTPHeadConfig(n_layer=2, n_head=2, n_emb=32, p_drop_attn=0.0, sampler="ddim",
                                             inference_steps=10))
    cond, actions = fit_one_chunk(head, n_obs=3, steps=800, lr=3e-3, batch=64)
    samples, info = head.sample(cond, k=16, generators=torch.Generator().manual_seed(0))
    assert ((samples[0] - actions) ** 2).mean() < 0.01
    assert ((info["past"][0] - actions[:, :2]) ** 2).mean() < 0.01  # the past is learned too


def _small_ptp_policy(n_obs=4, stride=3):
    schema = {"state": Field((4,), np.dtype(np.float32)), "action": Field((DA,), np.dtype(np.float32))}
    norm = Normalizer({"state": np.ones(4), "action": np.full(DA, 2.0)}, {"state": np.zeros(4), "action": np.ones(DA)})
    torch.manual_seed(0)
    return Policy(load_config("ptp", ["policy.ptp.n_layer=1", "policy.ptp.n_emb=16", "policy.ptp.n_head=2",
                                      f"data.n_obs={n_obs}", f"data.stride={stride}", "data.horizon=12"]), schema, norm)


def test_check11_self_verification_picks_the_candidate_whose_past_matches_the_executed_one():
    policy = _small_ptp_policy().eval()
    obs = {"state": np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)}
    executed = np.random.default_rng(1).uniform(-1, 3, (3, DA)).astype(np.float32)  # env action space
    g = lambda: [torch.Generator().manual_seed(5)]  # noqa: E731
    chunk = policy.act([Window(obs, 9, actions_at_past_frames=executed)], acting=Acting(k=6), generators=g())[0]
    # the same call by hand: 6 candidates, independent noise, scored in normalized action space
    with torch.no_grad():
        cond = policy.condition({k: v[None] for k, v in policy.normalized_obs(obs).items()})
    candidates, info = policy.head.sample(cond, k=6, generators=g())
    normalized = torch.as_tensor(policy.normalizer.normalize("action", executed))
    scores = ((info["past"][0] - normalized) ** 2).mean(dim=(1, 2))
    assert chunk.method == "past" and len(set(scores.tolist())) == 6
    assert np.allclose(chunk.scores, scores.numpy(), atol=1e-5) and chunk.chosen == int(scores.argmin())
    expected = policy.normalizer.unnormalize("action", candidates[0, chunk.chosen].numpy())[3:11]  # [To-1 : To-1+Ta]
    assert np.allclose(chunk.actions, expected, atol=1e-5)
    # without the executed past (history not full) there is nothing to verify with: one candidate, the baseline
    plain = policy.act([Window(obs, 9)], acting=Acting(k=6), generators=g())[0]
    base = policy.act([Window(obs, 9)], acting=Acting(k=1), generators=g())[0]
    assert plain.scores is None and np.array_equal(plain.actions, base.actions)
    # N=1 reproduces the baseline exactly, same seed
    one = policy.act([Window(obs, 9, actions_at_past_frames=executed)], acting=Acting(k=1), generators=g())[0]
    assert np.array_equal(one.actions, base.actions)
    with pytest.raises(ConfigError, match="actions_at_past_frames must be"):
        policy.act([Window(obs, 9, actions_at_past_frames=executed[:2])], acting=Acting(k=2))


def test_check12_verification_compares_with_actions_at_the_subsampled_timestamps():
    from robopolicy.data.windows import History, WindowSpec

    history = History(WindowSpec(n_obs=4, horizon=8, stride=3), action_dim=DA)
    history.start({"state": np.zeros(1)})
    for t in range(19):  # the action executed at step t is t
        history.record(np.full(DA, t, np.float32), {"state": np.full(1, t + 1.0)})
        window = history.window()
        if t + 1 == 8:
            assert window.actions_at_past_frames is None  # first frame padded: no verification yet
        if t + 1 == 9:
            assert window.actions_at_past_frames[:, 0].tolist() == [0, 3, 6]
    # window ending at step 19, To=4, stride 3: frames 10, 13, 16, 19; past tokens are the actions at 10, 13, 16
    assert window.obs["state"][:, 0].tolist() == [10, 13, 16, 19]
    assert window.actions_at_past_frames[:, 0].tolist() == [10, 13, 16]  # not the dense most recent 16, 17, 18
    assert window.actions_before_frames[:, 0].tolist() == [9, 12, 15, 18]  # one step earlier: the other kind


def test_rollout_with_candidates_verifies_once_the_history_is_full(monkeypatch):
    """In a real rollout (cue-reach), a K=3 PTP policy samples one candidate until the history reaches back
    To-1 strides, then 3, verified against the executed actions at the subsampled timestamps."""
    from robopolicy import envs
    from robopolicy.eval.rollout import rollout

    env = envs.make("cue-reach", obs="state")
    schema = {"state": Field((env.observation_space["state"].shape[0],), np.dtype(np.float32)),
              "action": Field((4,), np.dtype(np.float32))}
    norm = Normalizer({"state": np.ones(schema["state"].shape[0]), "action": np.ones(4)},
                      {"state": np.zeros(schema["state"].shape[0]), "action": np.zeros(4)})
    torch.manual_seed(0)
    policy = Policy(load_config("ptp", ["policy.ptp.n_layer=1", "policy.ptp.n_emb=16", "policy.ptp.n_head=2",
                                       "data.n_obs=3", "data.stride=4", "data.horizon=12"]), schema, norm).eval()
    calls, real_act = [], Policy.act

    def recording_act(self, windows, k=1, generators=None, **kw):
        chunks = real_act(self, windows, k, generators, **kw)
        calls.extend((w.t, w.actions_at_past_frames, c) for w, c in zip(windows, chunks))
        return chunks

    monkeypatch.setattr(Policy, "act", recording_act)
    try:
        rollout(policy, env, seed=0, acting=Acting(k=3))
    finally:
        env.close()
    (t0, past0, first), (t1, past1, second) = calls[:2]
    assert t0 == 0 and past0 is None and first.scores is None  # t=0 < (3-1)*4: one candidate, not verified
    assert t1 == 8 and past1.shape == (2, 4) and second.method == "past" and len(second.scores) == 3
    assert all(c.method == "past" and len(c.scores) == 3 for _, _, c in calls[1:])
