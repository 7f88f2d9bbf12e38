"""EBT-Policy head: faithfulness checks 14-26 of algorithms.md §4 that concern training and sampling,
each able to fail."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import fit_one_chunk
from robopolicy.errors import ConfigError
from robopolicy.heads.ebt import EBTHead, EBTHeadConfig
from robopolicy.models.energy import EnergyTransformer

TP, DA, TO, D = 8, 3, 2, 5


def _head(**kw):
    torch.manual_seed(0)
    cfg = dict(n_layer=1, obs_layers=1, n_head=2, n_emb=16)
    cfg.update(kw)
    return EBTHead(DA, TP, TO, D, EBTHeadConfig(**cfg))


class _Quadratic(torch.nn.Module):
    """A known energy, E = mean((a - target)^2) + 0 * obs, counting its calls."""

    def __init__(self, target):
        super().__init__()
        self.target, self.calls = target, 0

    def forward(self, actions, tokens):
        self.calls += 1
        return ((actions - self.target) ** 2).mean(dim=(-1, -2)) + 0 * tokens.sum(dim=(-1, -2))


def test_check19_energy_is_one_scalar_per_sample_with_a_trajectory_shaped_gradient():
    net = EnergyTransformer(DA, TP, TO, 16, 1, 2)
    a = torch.randn(4, TP, DA, requires_grad=True)
    energy = net(a, torch.randn(4, TO, 16))
    assert energy.shape == (4,)
    (grad,) = torch.autograd.grad(energy.sum(), a)
    assert grad.shape == a.shape


def test_check20_actions_outside_minus_one_one_are_refused():
    head = _head()
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        head.loss(torch.randn(2, TO, D), torch.full((2, TP, DA), 1.5))


def test_check21_and_23_one_inference_step_in_the_reference_order():
    """No noise, no alpha jitter at inference: y = rms_norm(a); look = y + mu v; E; alpha_eff = alpha exp(E) / T;
    v <- mu v - alpha_eff dE/dlook; a <- y + v."""
    head = _head(step_size=0.3, energy_temperature=2.0)
    target = torch.randn(1, TP, DA) * 0.3
    head.energy = _Quadratic(target)
    tokens = torch.randn(2, TO, 16)
    a, v = torch.randn(2, TP, DA), torch.randn(2, TP, DA) * 0.1
    got_a, got_v, got_e, _ = head._step(a, v, tokens, 0, 2, train=False)
    y = F.rms_norm(a, (TP, DA))
    look = y + 0.9 * v
    energy = ((look - target) ** 2).mean(dim=(-1, -2))
    grad = 2 * (look - target) / (TP * DA)
    v_new = 0.9 * v - (0.3 * torch.exp(energy) / 2.0)[:, None, None] * grad
    assert torch.allclose(got_e, energy, atol=1e-6)
    assert torch.allclose(got_v, v_new, atol=1e-6) and torch.allclose(got_a, y + v_new, atol=1e-6)


def test_check21_training_step_adds_annealed_noise_and_jitters_alpha():
    a, v, tokens = torch.randn(64, TP, DA), torch.zeros(64, TP, DA), torch.zeros(64, TO, 16)
    head = _head(step_size=1e-4)  # steps negligible: what moves the iterate is the Langevin noise
    head.energy = _Quadratic(torch.zeros(1, TP, DA))
    base, _, _, _ = head._step(a, v, tokens, 0, 10, train=False)
    first = (head._step(a, v, tokens, 0, 10, train=True)[0] - base).std().item()
    last = (head._step(a, v, tokens, 9, 10, train=True)[0] - base).std().item()
    sigma_last = 0.002 + 0.5 * (0.2 - 0.002) * (1 + math.cos(math.pi * 9 / 10))  # cosine from 0.2 to 0.002
    assert first == pytest.approx(0.2, rel=0.05) and last == pytest.approx(sigma_last, rel=0.05)

    head = _head(step_size=0.5, langevin_max=0.0, langevin_min=0.0)  # no noise: what varies is alpha
    head.energy = _Quadratic(torch.ones(1, TP, DA))
    _, v_infer, _, _ = head._step(a, v, tokens, 0, 10, train=False)
    _, v_train, _, _ = head._step(a, v, tokens, 0, 10, train=True)
    ratio = (v_train / v_infer).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1], rtol=1e-4)  # one alpha per sample
    assert ratio.min() >= 1 / 1.5 - 1e-4 and ratio.max() <= 1.5 + 1e-4 and ratio[:, 0].std() > 0.1


def test_check15_and_22_unrolled_steps_every_one_supervised_second_order():
    head = _head()
    counts = []
    real_forward = head.energy.forward

    def counting(actions, tokens):
        counts[-1] += 1
        return real_forward(actions, tokens)

    head.energy.forward = counting
    cond, actions = torch.randn(4, TO, D), torch.rand(4, TP, DA) * 2 - 1
    for seed in range(40):
        counts.append(0)
        torch.manual_seed(seed)
        head.loss(cond, actions)
    assert set(counts) == {6, 7, 8, 9, 10}  # 6 + U{0..4}, resampled each batch
    head.zero_grad()
    head.loss(cond, actions).backward()
    # the loss is MSE of iterates; the energy net reaches it only through dE/da: second order
    grads = [p.grad for p in head.energy.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_check23_exactly_two_inference_steps_and_early_stop_when_allowed_more():
    head = _head()
    head.energy = _Quadratic(torch.zeros(1, TP, DA))
    head.sample(torch.randn(1, TO, D), k=1, generator=torch.Generator().manual_seed(0))
    assert head.energy.calls == 2  # the early-stop test never runs before the first step
    head.energy = _Quadratic(torch.zeros(1, TP, DA))
    head.energy.forward = lambda a, t, e=head.energy: (e.__setattr__("calls", e.calls + 1), 0 * a.sum((-1, -2)))[1]
    head.sample(torch.randn(1, TO, D), k=1, steps=20)  # a flat energy: gradient 0 <= min_grad after step 1
    assert head.energy.calls == 2
    a = torch.Generator().manual_seed(1)
    b = torch.Generator().manual_seed(1)
    head = _head()
    cond = torch.randn(2, TO, D)
    assert torch.equal(head.sample(cond, k=3, generator=a)[0], head.sample(cond, k=3, generator=b)[0])


def test_check24_cross_attention_mask():
    net = EnergyTransformer(DA, TP, TO, 16, 1, 2)
    assert net.cross_mask.tolist() == [[t >= s for s in range(TO)] for t in range(TP)]
    outputs = {}
    net.final.register_forward_hook(lambda m, i, o: outputs.__setitem__("tokens", o))
    a, tokens = torch.randn(1, TP, DA), torch.randn(1, TO, 16)
    net(a, tokens)
    base = outputs["tokens"].clone()
    changed = tokens.clone()
    changed[:, 1] += 2.0
    net(a, changed)
    # only action token 0 cannot see observation step 1; self-attention then mixes tokens (bidirectional),
    # so compare the first block's cross-attention output directly
    block = net.blocks[0]
    x = net.inp(a) + net.pos
    h = block.norm1(x)
    x = x + block.attn(h, h, None)
    c0 = block.cross(block.norm_cross(x), tokens, net.cross_mask)
    c1 = block.cross(block.norm_cross(x), changed, net.cross_mask)
    assert torch.allclose(c0[:, 0], c1[:, 0], atol=1e-6) and not torch.allclose(c0[:, 1:], c1[:, 1:])
    assert not torch.allclose(outputs["tokens"], base)


def test_sampling_is_batch_invariant_and_the_reference_norm_is_not():
    cond = torch.randn(5, TO, D)
    init = torch.randn(5, 1, TP, DA)
    head = _head(step_size=0.5)
    together, info = head.sample(cond, k=1, init=init)
    alone, _ = head.sample(cond[2:3], k=1, init=init[2:3])
    assert torch.allclose(together[2], alone[0], atol=1e-5)
    assert info["energy"].shape == (5, 1) and torch.equal(info["scores"], info["energy"])
    reference = _head(step_size=0.5, batch_rms_norm=True)
    together, _ = reference.sample(cond, k=1, init=init)
    alone, _ = reference.sample(cond[2:3], k=1, init=init[2:3])
    assert not torch.allclose(together[2], alone[0], atol=1e-3)  # whole-batch RMS norm couples samples


def test_sampling_runs_under_inference_mode_and_warm_starts():
    head = _head(step_size=0.5)
    cond = torch.randn(1, TO, D)
    with torch.inference_mode():
        cond_inf = cond.clone()
        out, info = head.sample(cond_inf, k=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 2, TP, DA) and torch.isfinite(info["energy"]).all()
    init = torch.zeros(1, 1, TP, DA)
    warm_a, _ = head.sample(cond, k=1, init=init)
    warm_b, _ = head.sample(cond, k=1, init=init + 0.5)
    assert not torch.allclose(warm_a, warm_b)  # the start matters: it is used, not replaced by noise


def test_energy_drops_and_the_last_iterate_beats_the_first_check25():
    """Check 25, after fitting one demonstration chunk: the energy after optimization is below the initial one,
    and the 2-step result is closer to the demonstration than the 1-step one."""
    torch.manual_seed(0)
    head = EBTHead(2, 8, 2, 4, EBTHeadConfig(n_layer=1, obs_layers=1, n_head=2, n_emb=32))
    cond, actions = fit_one_chunk(head, n_obs=2, steps=200, lr=3e-3, batch=16, clip=1.0)
    samples, info = head.sample(cond, k=16, generator=torch.Generator().manual_seed(0))
    first, _ = head.sample(cond, k=16, generator=torch.Generator().manual_seed(0), steps=1)
    assert ((samples[0] - actions) ** 2).mean() < ((first[0] - actions) ** 2).mean()
    with torch.no_grad():
        tokens = head.obs_encoder(cond).repeat_interleave(16, dim=0)
        start = torch.randn((16, 8, 2), generator=torch.Generator().manual_seed(0))  # what sample started from
        energy = lambda a: head.energy(F.rms_norm(a, a.shape[1:]), tokens)  # noqa: E731
        assert energy(samples[0]).mean() < energy(start).mean()


@pytest.mark.slow
def test_overfits_a_single_demo():
    """Acceptance (90 s): one demonstration chunk learned to normalized MSE <= 0.01 by what the policy
    executes with K=16 two-step candidates (the lowest final energy), and by 16 candidates given 4 steps (mean).
    The mean two-step candidate of this tiny head stays near 0.01-0.02 (measured; see the issue notes)."""
    torch.manual_seed(0)
    head = EBTHead(2, 8, 2, 4, EBTHeadConfig(n_layer=1, obs_layers=1, n_head=2, n_emb=32))
    cond, actions = fit_one_chunk(head, n_obs=2, steps=1000, lr=1e-3, batch=16, clip=1.0)
    samples, info = head.sample(cond, k=16, generator=torch.Generator().manual_seed(0))
    errors = ((samples[0] - actions) ** 2).mean(dim=(1, 2))
    assert errors[info["scores"][0].argmin()] <= 0.01
    assert errors[info["scores"][0].argmin()] <= errors.median()  # the energy ranks candidates usefully
    four, _ = head.sample(cond, k=16, generator=torch.Generator().manual_seed(0), steps=4)
    assert ((four[0] - actions) ** 2).mean() <= 0.01


def test_check14_step_size_is_clamped_at_1e_4():
    head = _head(step_size=0.0)
    target = torch.randn(1, TP, DA)
    head.energy = _Quadratic(target)
    a, v, tokens = torch.randn(2, TP, DA), torch.zeros(2, TP, DA), torch.randn(2, TO, 16)
    got_a, _, energy, grad = head._step(a, v, tokens, 0, 2, train=False)
    y = F.rms_norm(a, (TP, DA))
    assert torch.allclose(got_a, y - (1e-4 * torch.exp(energy))[:, None, None] * grad, atol=1e-7)
    assert not torch.allclose(got_a, y, atol=1e-9)  # a step was taken: alpha is 1e-4, not 0


def test_check18_the_policy_executes_the_candidate_of_lowest_final_energy():
    import numpy as np

    from robopolicy.config import load_config
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.data.store import Field
    from robopolicy.policy import Policy

    cfg = load_config("ebt", ["policy.ebt.n_layer=1", "policy.ebt.obs_layers=1", "policy.ebt.n_emb=16",
                              "policy.ebt.n_head=2"])
    schema = {"state": Field((5,), np.dtype("float32")), "action": Field((3,), np.dtype("float32"))}
    data = {"state": np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32),
            "action": np.random.default_rng(1).uniform(-2, 2, (50, 3)).astype(np.float32)}
    torch.manual_seed(0)
    policy = Policy(cfg, schema, Normalizer.fit(data, {"state": "minmax", "action": "minmax"}))
    window = {"state": data["state"][:2]}
    chunk = policy.act(window, k=6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cond = policy.eval().condition({k: v[None] for k, v in policy.normalized_obs(window).items()})
    candidates, info = policy.head.sample(cond, k=6, generator=torch.Generator().manual_seed(3))
    best = int(info["scores"][0].argmin())
    assert np.allclose(chunk.scores, info["scores"][0].numpy(), atol=1e-6)
    expected = policy.normalizer.unnormalize("action", candidates[0, best].numpy())[1:9]  # a[To-1 : To-1+Ta]
    assert np.allclose(chunk.actions, expected, atol=1e-5)
    others = [policy.normalizer.unnormalize("action", candidates[0, i].numpy())[1:9] for i in range(6) if i != best]
    assert not any(np.allclose(chunk.actions, o, atol=1e-5) for o in others)
