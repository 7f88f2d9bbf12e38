"""EBT-Policy head: faithfulness checks 14-26 of algorithms.md §4 that concern training and sampling,
each able to fail. Where a check is a function (``*_holds``), its test runs it on the real code and on
broken variants of the property, and asserts that each broken variant fails it."""
import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import fit_one_chunk
from robopolicy.acting import Acting
from robopolicy.config import load_config
from robopolicy.data.store import DemoStore
from robopolicy.errors import ConfigError
from robopolicy.heads.ebt import EBTHead, EBTHeadConfig
from robopolicy.models.energy import EnergyTransformer
from robopolicy.train.trainer import train

TP, DA, TO, D = 8, 3, 2, 5


def _head(cls=EBTHead, **kw):
    torch.manual_seed(0)
    cfg = dict(n_layer=1, obs_layers=1, n_head=2, n_emb=16)
    cfg.update(kw)
    return cls(DA, TP, TO, D, EBTHeadConfig(**cfg))


class _Quadratic(torch.nn.Module):
    """A known energy, E = mean((a - target)^2) + 0 * obs, counting its calls."""

    def __init__(self, target):
        super().__init__()
        self.target, self.calls = target, 0

    def forward(self, actions, tokens):
        self.calls += 1
        return ((actions - self.target) ** 2).mean(dim=(-1, -2)) + 0 * tokens.sum(dim=(-1, -2))


@contextlib.contextmanager
def _recorded_steps(head):
    """Every (a, v, energy, grad) that head._step returns while inside, graphs and all."""
    steps, real = [], head._step

    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        steps.append(out)
        return out

    head._step = step
    try:
        yield steps
    finally:
        del head._step


def _batch(b=4):
    return torch.randn(b, TO, D), torch.rand(b, TP, DA) * 2 - 1


# ------------------------------------------------------------------------------------------- check 19
class _Summed(EnergyTransformer):
    """Broken check 19: the energy is the sum over the Tp x Da outputs (the mean times Tp x Da)."""

    def forward(self, actions, obs_tokens):
        return super().forward(actions, obs_tokens) * actions.shape[1] * actions.shape[2]


class _SummedOverDa(EnergyTransformer):
    """Broken check 19: a mean over Tp, but a sum over Da."""

    def forward(self, actions, obs_tokens):
        return super().forward(actions, obs_tokens) * actions.shape[2]


def energy_is_the_mean_of_the_outputs_holds(net) -> bool:
    """Check 19: one scalar per sample, the mean over the (Tp x Da) outputs of the final layer, and dE/da has
    the trajectory's shape. The outputs are read by a hook on the final layer, as the forward computes them."""
    seen = []
    handle = net.final.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        a = torch.randn(4, TP, DA, requires_grad=True)
        energy = net(a, torch.randn(4, TO, 16))
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(energy.sum(), a)
    return (energy.shape == (4,) and seen[0].shape == (4, TP, DA) and grad.shape == a.shape
            and torch.allclose(energy, seen[0].mean(dim=(-1, -2)), atol=1e-6))


@pytest.mark.parametrize("net_class, holds", [(EnergyTransformer, True), (_Summed, False), (_SummedOverDa, False)],
                         ids=["real", "broken-sum", "broken-sum-over-Da"])
def test_check19_energy_is_the_mean_over_the_tp_x_da_outputs(net_class, holds):
    torch.manual_seed(0)
    assert energy_is_the_mean_of_the_outputs_holds(net_class(DA, TP, TO, 16, 1, 2)) is holds


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


# ------------------------------------------------------------------------------------ checks 15 + 22
class _LastStepOnly(EBTHead):
    """Broken checks 15 + 22: the same unroll, but the loss supervises only the final iterate (truncated)."""

    def _step(self, *args, **kwargs):
        out = super()._step(*args, **kwargs)
        self.last_iterate = out[0]
        return out

    def loss(self, cond, actions):
        super().loss(cond, actions)
        return F.mse_loss(self.last_iterate, actions)


class _OnlyThroughGradient(torch.nn.Module):
    """E = net(a) - net(a.detach()): its value is 0, and at a fixed a so is its derivative in the net's
    parameters, but dE/da is the net's. So the parameters reach the loss only through dE/da, which autograd
    differentiates only under create_graph=True. (The plain net also reaches the loss through alpha_eff =
    alpha exp(E) / T, so its parameters get gradients even from a first-order unroll.)"""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, actions, tokens):
        return self.net(actions, tokens) - self.net(actions.detach(), tokens)


@contextlib.contextmanager
def _first_order():
    """Broken checks 15 + 22: every torch.autograd.grad runs with create_graph=False. retain_graph=True keeps
    the graph that alpha_eff still needs, so this variant trains (plain create_graph=False crashes backward)."""
    real = torch.autograd.grad
    torch.autograd.grad = lambda *args, **kw: real(*args, **{**kw, "create_graph": False, "retain_graph": True})
    try:
        yield
    finally:
        torch.autograd.grad = real


@contextlib.contextmanager
def _create_graph_flags():
    """The create_graph argument of every torch.autograd.grad call while inside."""
    flags, real = [], torch.autograd.grad

    def spy(*args, **kw):
        flags.append(bool(kw.get("create_graph", False)))
        return real(*args, **kw)

    torch.autograd.grad = spy
    try:
        yield flags
    finally:
        torch.autograd.grad = real


def loss_is_the_mean_over_every_step_holds(head) -> bool:
    """Checks 15 + 22: the training loss is the mean over every unrolled step (6..10) of MSE(a_i, a*)."""
    torch.manual_seed(0)
    cond, actions = _batch()
    with _recorded_steps(head) as steps:
        loss = head.loss(cond, actions)
    per_step = torch.stack([F.mse_loss(a, actions) for a, *_ in steps])
    return 6 <= len(steps) <= 10 and torch.allclose(loss, per_step.mean(), rtol=1e-5)


def loss_is_second_order_holds(head) -> bool:
    """Checks 15 + 22: the loss backpropagates into the energy net through dE/da (second order), and
    inference asks for no graph of the gradient (create_graph=False)."""
    net = head.energy
    head.energy = _OnlyThroughGradient(net)
    try:
        torch.manual_seed(0)
        head.zero_grad()
        loss = head.loss(*_batch())
        loss.backward()
    finally:
        head.energy = net
    reached = sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None)
    with _create_graph_flags() as flags:
        head.sample(_batch()[0], 2)
    return bool(torch.isfinite(loss)) and reached > 1e-4 and bool(flags) and not any(flags)


@pytest.mark.parametrize("variant, every_step, second_order", [
    ("real", True, True),
    ("broken-last-step-only", False, True),
    ("broken-create_graph-False", True, False),
])
def test_check15_and_22_loss_is_the_mean_over_steps_and_second_order(variant, every_step, second_order):
    head = _head(cls=_LastStepOnly if variant == "broken-last-step-only" else EBTHead)
    with _first_order() if variant == "broken-create_graph-False" else contextlib.nullcontext():
        assert loss_is_the_mean_over_every_step_holds(head) is every_step
        assert loss_is_second_order_holds(head) is second_order


def test_check22_six_to_ten_unrolled_steps_resampled_each_batch():
    head = _head()
    counts = []
    real_forward = head.energy.forward

    def counting(actions, tokens):
        counts[-1] += 1
        return real_forward(actions, tokens)

    head.energy.forward = counting
    cond, actions = _batch()
    for seed in range(40):
        counts.append(0)
        torch.manual_seed(seed)
        head.loss(cond, actions)
    assert set(counts) == {6, 7, 8, 9, 10}  # 6 + U{0..4}, resampled each batch


# ------------------------------------------------------------------------------------------- check 21
class _NoDetach(EBTHead):
    """Broken check 21: each step normalizes the incoming iterate itself rather than its detached copy, so
    gradients run back along the trajectory (values are unchanged)."""

    def _step(self, a, v, *args, **kwargs):
        self.incoming = a
        return super()._step(a, v, *args, **kwargs)

    def _normalize(self, a):
        # _step hands over a.detach(); use the iterate itself once it carries a graph (every step but the first)
        return super()._normalize(self.incoming if self.incoming.requires_grad else a)


def trajectory_is_detached_each_step_holds(head) -> bool:
    """Check 21 (§2.3): in the training unroll, iterate a_{i+1} does not depend on a_i through autograd (each
    step starts from a.detach()), while the velocity keeps its graph across steps (the paper snapshot)."""
    torch.manual_seed(0)
    with _recorded_steps(head) as steps:
        head.loss(*_batch(2))
    for (a, v, *_), (a_next, *_) in zip(steps, steps[1:]):
        through_a, through_v = torch.autograd.grad(a_next.sum(), (a, v), retain_graph=True, allow_unused=True)
        if through_a is not None or through_v is None:
            return False
    return len(steps) >= 6


@pytest.mark.parametrize("head_class, holds", [(EBTHead, True), (_NoDetach, False)], ids=["real", "broken-no-detach"])
def test_check21_the_trajectory_is_detached_at_each_step(head_class, holds):
    assert trajectory_is_detached_each_step_holds(_head(cls=head_class)) is holds


def test_check23_exactly_two_inference_steps_and_early_stop_when_allowed_more():
    """Energy-gradient steps are the energy calls with autograd on; one more call, without, scores the
    actions returned (what is executed is what is scored)."""
    head = _head(step_size=0.05)  # a step the quadratic stays finite under
    quadratic = head.energy = _Quadratic(torch.zeros(1, TP, DA))
    grad_on = []
    head.energy.register_forward_pre_hook(lambda *_: grad_on.append(torch.is_grad_enabled()))
    actions, info = head.sample(torch.randn(1, TO, D), 1, torch.Generator().manual_seed(0))
    assert grad_on == [True, True, False]  # the early-stop test never runs before the first step
    returned = F.rms_norm(actions[:, 0], (TP, DA))  # the returned actions, normalized as every energy input
    assert torch.allclose(info["energy"], quadratic(returned, torch.zeros(1, TO, 16)))
    head.energy = _Quadratic(torch.zeros(1, TP, DA))
    head.energy.forward = lambda a, t, e=head.energy: (e.__setattr__("calls", e.calls + 1), 0 * a.sum((-1, -2)))[1]
    head.sample(torch.randn(1, TO, D), k=1, steps=20)  # a flat energy: gradient 0 <= min_grad after step 1
    assert head.energy.calls == 3  # 1 step, the final step, the score
    a = torch.Generator().manual_seed(1)
    b = torch.Generator().manual_seed(1)
    head = _head()
    cond = torch.randn(2, TO, D)
    assert torch.equal(head.sample(cond, 3, a)[0], head.sample(cond, 3, b)[0])


# ------------------------------------------------------------------------------------------- check 24
def _moved(f, x, index) -> list[bool]:
    """For each output token of f(x): does it change when input token ``index`` of x is perturbed?"""
    with torch.no_grad():
        base = f(x)
        x = x.clone()
        x[:, index] += 1.0
        out = f(x)
    return [not torch.allclose(base[:, t], out[:, t], atol=1e-6) for t in range(base.shape[1])]


def _output_of(module, run):
    """What ``module`` outputs while ``run()`` runs, read by a forward hook."""
    seen = []
    handle = module.register_forward_hook(lambda m, inputs, output: seen.append(output))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def attention_masks_hold(head) -> bool:
    """Check 24, by perturbing inputs: the observation temporal encoder is causal (frame s moves output tokens
    t >= s only); the energy net's action self-attention is unmasked (every action token moves every token of
    the first block's self-attention output); its cross-attention lets action token t see observation step s
    iff t >= s (observation token s moves the first block's cross-attention output at t >= s only; that output
    does not depend on the observations otherwise, since self-attention comes first)."""
    torch.manual_seed(0)
    cond, a = torch.randn(1, TO, D), torch.randn(1, TP, DA)
    with torch.no_grad():
        tokens = head.obs_encoder(cond)
    block = head.energy.blocks[0]
    causal = all(_moved(head.obs_encoder, cond, s) == [t >= s for t in range(TO)] for s in range(TO))
    bidirectional = all(all(_moved(lambda x: _output_of(block.attn, lambda: head.energy(x, tokens)), a, j))
                        for j in range(TP))
    cross = all(_moved(lambda c: _output_of(block.cross, lambda: head.energy(a, c)), tokens, s)
                == [t >= s for t in range(TP)] for s in range(TO))
    return causal and bidirectional and cross


def _causal_action_self_attention(head):
    mask = torch.ones(TP, TP, dtype=torch.bool).tril()
    for block in head.energy.blocks:
        block.forward = lambda x, self_mask=None, *rest, f=block.forward: f(x, mask, *rest)


BROKEN_MASKS = {  # each breaks one mask of check 24
    "broken-obs-encoder-flipped": lambda h: setattr(h.obs_encoder, "mask", h.obs_encoder.mask.T.clone()),
    "broken-obs-encoder-unmasked": lambda h: setattr(h.obs_encoder, "mask", torch.ones_like(h.obs_encoder.mask)),
    "broken-action-self-attention-causal": _causal_action_self_attention,
    # time-reversed: the last action token is the one blind to the newest observation (t <= s would leave
    # tokens that see nothing)
    "broken-cross-attention-flipped": lambda h: setattr(h.energy, "cross_mask", h.energy.cross_mask.flip(0)),
    "broken-cross-attention-unmasked": lambda h: setattr(h.energy, "cross_mask", torch.ones_like(h.energy.cross_mask)),
}


@pytest.mark.parametrize("variant", ["real", *BROKEN_MASKS])
def test_check24_attention_masks(variant):
    head = _head()
    if variant != "real":
        BROKEN_MASKS[variant](head)
    assert attention_masks_hold(head) is (variant == "real")


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
        out, info = head.sample(cond_inf, 2, torch.Generator().manual_seed(0))
    assert out.shape == (1, 2, TP, DA) and torch.isfinite(info["energy"]).all()
    init = torch.zeros(1, 1, TP, DA)
    warm_a, _ = head.sample(cond, k=1, init=init)
    warm_b, _ = head.sample(cond, k=1, init=init + 0.5)
    assert not torch.allclose(warm_a, warm_b)  # the start matters: it is used, not replaced by noise


# ------------------------------------------------------------------------------------------- check 25
def _chunks(n, seed):
    """n (condition, chunk) pairs of one task: 8 steps of 2-d actions, a tanh ramp set by the last frame."""
    cond = torch.randn(n, 2, 4, generator=torch.Generator().manual_seed(seed))
    ramp = torch.linspace(-1, 1, 8)[None, :, None]
    return cond, torch.tanh(0.8 * (cond[:, -1:, :2] + cond[:, -1:, 2:] * ramp))


def _held_out_head():
    torch.manual_seed(0)
    return EBTHead(2, 8, 2, 4, EBTHeadConfig(n_layer=1, obs_layers=1, n_head=2, n_emb=16))


@pytest.fixture(scope="module")
def fitted_on_other_chunks():
    """A tiny head after a short fit (60 steps, about 7 s) on 64 chunks; 32 other chunks held out."""
    head = _held_out_head()
    cond, actions = _chunks(64, seed=1)
    optim = torch.optim.AdamW(head.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, 60)
    draw = torch.Generator().manual_seed(3)
    for _ in range(60):
        rows = torch.randint(0, 64, (8,), generator=draw)
        loss = head.loss(cond[rows], actions[rows])
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optim.step()
        schedule.step()
    held_cond, held_actions = _chunks(32, seed=2)
    assert not any(torch.allclose(c, h) for c in cond for h in held_cond)  # held out: none trained on
    return head, held_cond, held_actions


def optimization_improves_on_held_out_holds(head, cond, actions) -> bool:
    """Check 25 on held-out chunks, each optimized from the same start: the energy after optimization (the
    policy's reported energy) is below the energy at the start (what the first step evaluates), on average:
    init_final_pred_energies_gap > 0; and the final iterate's MSE is below the first iterate's."""
    start = torch.randn(actions.shape, generator=torch.Generator().manual_seed(0))[:, None]
    first, _ = head.sample(cond, 1, init=start, steps=1)
    final, info = head.sample(cond, 1, init=start)
    with torch.no_grad():
        initial = head.energy(head._normalize(start[:, 0]), head.obs_encoder(cond))
    gap = (initial - info["energy"][:, 0]).mean()
    return bool(gap > 0) and bool(((final[:, 0] - actions) ** 2).mean() < ((first[:, 0] - actions) ** 2).mean())


@contextlib.contextmanager
def _gradient_ascent():
    """Broken check 25: sampling steps along +dE/da."""
    real = torch.autograd.grad
    torch.autograd.grad = lambda *args, **kw: tuple(-g for g in real(*args, **kw))
    try:
        yield
    finally:
        torch.autograd.grad = real


@pytest.mark.parametrize("variant", ["fitted", "broken-untrained", "broken-gradient-ascent"])
def test_check25_energy_drops_and_the_last_iterate_beats_the_first_on_held_out_chunks(variant,
                                                                                     fitted_on_other_chunks):
    head, cond, actions = fitted_on_other_chunks
    if variant == "broken-untrained":  # it lowers the energy, but its iterates move away from the data
        head = _held_out_head()
    with _gradient_ascent() if variant == "broken-gradient-ascent" else contextlib.nullcontext():
        assert optimization_improves_on_held_out_holds(head, cond, actions) is (variant == "fitted")


@pytest.mark.slow
def test_overfits_a_single_demo():
    """Acceptance (90 s): one demonstration chunk learned to normalized MSE <= 0.01 by 16 candidates given 4
    steps (mean), and <= 0.02 by two-step candidates (mean; the level measured for this tiny head).

    Not asserted any more: that the lowest-energy two-step candidate is <= 0.01 and beats the median. That
    held while the score was the energy at the last step's look-ahead point; scored at the actions actually
    returned (the evaluation issue's fix), the 16 energies agree to 1e-4 and barely rank the candidates
    (correlation with their error 0.17, measured): at the minimum this head's energy is flat. Whether the
    energy ranks candidates of real policies is measured where it matters (the results issue), not here."""
    torch.manual_seed(0)
    head = EBTHead(2, 8, 2, 4, EBTHeadConfig(n_layer=1, obs_layers=1, n_head=2, n_emb=32))
    cond, actions = fit_one_chunk(head, n_obs=2, steps=1000, lr=1e-3, batch=16, clip=1.0)
    samples, info = head.sample(cond, 16, torch.Generator().manual_seed(0))
    assert ((samples[0] - actions) ** 2).mean() <= 0.02
    assert info["scores"].shape == (1, 16) and torch.isfinite(info["scores"]).all()
    four, _ = head.sample(cond, 16, torch.Generator().manual_seed(0), steps=4)
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


def _tiny_ebt_policy():
    """An untrained EBT policy on 5-d states and 3-d actions (To=2), and the data its normalizer saw."""
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
    return Policy(cfg, schema, Normalizer.fit(data, {"state": "minmax", "action": "minmax"})).eval(), data


def test_check18_the_policy_executes_the_candidate_of_lowest_final_energy():

    from robopolicy.data.windows import Window

    policy, data = _tiny_ebt_policy()
    window = {"state": data["state"][:2]}
    chunk = policy.act([Window(window)], acting=Acting(k=6), generators=[torch.Generator().manual_seed(3)])[0]
    with torch.no_grad():
        cond = policy.condition({k: v[None] for k, v in policy.normalized_obs(window).items()})
    candidates, info = policy.head.sample(cond, 6, torch.Generator().manual_seed(3))
    best = int(info["scores"][0].argmin())
    assert chunk.method == "score" and chunk.chosen == best
    assert np.allclose(chunk.scores, info["scores"][0].numpy(), atol=1e-5)
    expected = policy.normalizer.unnormalize("action", candidates[0, best].numpy())[1:9]  # a[To-1 : To-1+Ta]
    assert np.allclose(chunk.actions, expected, atol=1e-5)
    others = [policy.normalizer.unnormalize("action", candidates[0, i].numpy())[1:9] for i in range(6) if i != best]
    assert not any(np.allclose(chunk.actions, o, atol=1e-5) for o in others)


def test_a_high_energy_draws_again_and_keeps_the_best_of_both_and_only_when_asked():
    """The energy as live uncertainty acted on: with retry_above below every energy each row draws K new
    candidates from its own generator (continuing it) and executes the lowest energy of all 2K; above every
    energy (or off, the default) nothing changes, bit for bit; rows decide alone."""
    from robopolicy.data.windows import Window

    policy, data = _tiny_ebt_policy()
    windows = [Window({"state": data["state"][i: i + 2]}) for i in (0, 7)]

    def gens():
        return [torch.Generator().manual_seed(s) for s in (3, 4)]
    plain = policy.act(windows, acting=Acting(k=3), generators=gens())
    never = policy.act(windows, acting=Acting(k=3, retry_above=1e9), generators=gens())
    assert all(np.array_equal(a.plan, b.plan) and b.retried == 0 for a, b in zip(plain, never))
    # the second draw alone: the generators continued past the first draw
    g = gens()
    policy.act(windows, acting=Acting(k=3), generators=g)
    second = policy.act(windows, acting=Acting(k=3), generators=g)
    always = policy.act(windows, acting=Acting(k=3, retry_above=-1e9), generators=gens())
    for first, again, got in zip(plain, second, always):
        assert got.retried == 1
        want = again if again.scores.min() < first.scores.min() else first
        assert np.array_equal(got.plan, want.plan) and got.scores.min() == min(first.scores.min(), again.scores.min())
    assert any(not np.array_equal(a.plan, b.plan) for a, b in zip(plain, second))
    # a threshold between the rows' energies retries only the unsure row
    e0, e1 = (float(c.scores.min()) for c in plain)
    mid = policy.act(windows, acting=Acting(k=3, retry_above=(e0 + e1) / 2), generators=gens())
    unsure = int(e1 > e0)
    assert mid[unsure].retried == 1 and mid[1 - unsure].retried == 0
    assert np.array_equal(mid[1 - unsure].plan, plain[1 - unsure].plan)


def test_a_high_energy_gets_more_optimization_steps_and_only_that_row():
    """Dynamic compute: with refine_above below a row's best energy its candidates are minimized
    refine_steps steps more from where they stood (the head's own continuation, sample(init=...)), and the
    verifier picks among the refined ones; a confident row (or refine_above off) is untouched, bit for bit."""
    from robopolicy.data.windows import Window

    policy, data = _tiny_ebt_policy()
    windows = [Window({"state": data["state"][i: i + 2]}) for i in (0, 7)]

    def gens():
        return [torch.Generator().manual_seed(s) for s in (3, 4)]
    plain = policy.act(windows, acting=Acting(k=3), generators=gens())
    assert all(np.array_equal(a.plan, b.plan) and not b.refined
               for a, b in zip(plain, policy.act(windows, acting=Acting(k=3, refine_above=1e9), generators=gens())))
    e0, e1 = (float(c.scores.min()) for c in plain)
    unsure = int(e1 > e0)
    mid = policy.act(windows, acting=Acting(k=3, refine_above=(e0 + e1) / 2, refine_steps=5), generators=gens())
    assert mid[unsure].refined and not mid[1 - unsure].refined
    assert np.array_equal(mid[1 - unsure].plan, plain[1 - unsure].plan)
    # the unsure row's chunk is the continuation of its own first candidates, 5 steps on
    w = windows[unsure]
    with torch.no_grad():
        cond = policy.condition({k: v[None] for k, v in policy.normalized_obs(w.obs).items()})
    first, _ = policy.head.sample(cond, 3, [gens()[unsure]])
    more, info = policy.head.sample(cond, 3, [torch.Generator().manual_seed(0)], init=first, steps=5)
    best = int(info["scores"][0].argmin())
    assert mid[unsure].chosen == best and np.allclose(mid[unsure].scores, info["scores"][0].numpy(), atol=1e-4)
    want = policy.normalizer.unnormalize("action", more[0, best].numpy())[1:]
    assert np.allclose(mid[unsure].plan, want, atol=1e-3)  # a batch of 1 here, act_batch rows in act()
    assert np.abs(mid[unsure].plan - plain[unsure].plan).max() > 1e-2  # the steps moved it


# ------------------------------------------------------------------------- gradient clipping (check 22)
def test_check22_the_ebt_configs_clip_gradients_at_1():
    assert [load_config(name).train.optim.grad_clip for name in ("ebt", "ebt_gpu", "ebt_image")] == [1.0] * 3


def _applied_gradient_norms(tmp_path) -> list[float]:
    """The gradient norm each optimizer step of a 3-step ebt run applies (read by a global step hook)."""

    rng = np.random.default_rng(0)
    with DemoStore.create(tmp_path / "s.zarr") as store:
        for _ in range(2):
            store.append_episode({"state": rng.normal(size=(30, 5)).astype(np.float32),
                                  "action": rng.uniform(-2, 2, (30, 3)).astype(np.float32)})
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    cfg = load_config("ebt", ["policy.ebt.n_layer=1", "policy.ebt.obs_layers=1", "policy.ebt.n_emb=16",
                              "policy.ebt.n_head=2", "train.steps=3", "data.batch_size=8", "train.tensorboard=false",
                              "train.optim.lr=1e-3", "train.optim.warmup_steps=1"])
    handle = register_optimizer_step_pre_hook(record)
    try:
        train(cfg, tmp_path / "s.zarr", tmp_path / "run", progress=False)
    finally:
        handle.remove()
    return norms


@pytest.mark.parametrize("clipping", [True, False])
def test_check22_the_trainer_clips_gradients_at_1(tmp_path, monkeypatch, clipping):
    """Every step the trainer applies has gradient norm <= 1.0; a trainer that skips clipping fails this
    (this tiny head's raw gradients are tens)."""
    if not clipping:
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda parameters, max_norm, *a, **kw: None)
    norms = _applied_gradient_norms(tmp_path)
    assert len(norms) == 3
    assert (max(norms) <= 1.0 + 1e-4) is clipping, norms
