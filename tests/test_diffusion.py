import pytest
import torch

from conftest import fit_one_chunk
from robopolicy.heads.diffusion import DiffusionHead, DiffusionHeadConfig
from robopolicy.models.unet1d import ConditionalUnet1D

H, DA, TO, D = 16, 3, 4, 5


def _head(**kw):
    torch.manual_seed(0)
    return DiffusionHead(DA, H, TO, D, DiffusionHeadConfig(down_dims=(16, 32), step_embed_dim=16, **kw))


def test_unet_shapes_and_horizon_check():
    net = ConditionalUnet1D(DA, 10, down_dims=(16, 32, 64), step_embed_dim=16)
    assert net(torch.randn(2, 16, DA), torch.tensor([5]), torch.randn(2, 10)).shape == (2, 16, DA)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(2, 10, DA), torch.tensor([5]), torch.randn(2, 10))


def test_check7_transformer_masks():
    """Changing frame j changes no prediction at tokens i < j; action self-attention is causal."""
    from robopolicy.models.transformer import TransformerDenoiser

    torch.manual_seed(0)
    net = TransformerDenoiser(DA, H, TO, D, n_layer=2, n_head=2, n_emb=32, p_drop_attn=0.0).eval()
    x, step, cond = torch.randn(2, H, DA), torch.tensor([7]), torch.randn(2, TO, D)
    base = net(x, step, cond)
    for j in range(1, TO):
        changed = cond.clone()
        changed[:, j] += 3.0
        out = net(x, step, changed)
        assert torch.allclose(out[:, :j], base[:, :j], atol=1e-6) and not torch.allclose(out[:, j:], base[:, j:])
    later = x.clone()
    later[:, 5] += 3.0
    out = net(later, step, cond)
    assert torch.allclose(out[:, :5], base[:, :5], atol=1e-6) and not torch.allclose(out[:, 5:], base[:, 5:])


def test_check8_transformer_conditions_on_one_token_per_frame():
    head = _head(denoiser="transformer", n_layer=1, n_head=2, n_emb=16)
    assert head.denoiser.cond_pos.shape == (1, 1 + TO, 16)  # step token + To frame tokens, no pooling
    loss = head.loss(torch.randn(4, TO, D), torch.rand(4, H, DA) * 2 - 1)
    loss.backward()
    samples, _ = head.sample(torch.randn(2, TO, D), k=3, generators=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 3, H, DA)


class _Fixed(torch.nn.Module):
    """A stand-in denoiser that predicts a given tensor, to probe the loss."""

    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, x, t, cond):
        return self.pred


def _loss_with(head, delta_token=None, delta=0.5):
    actions, cond = torch.rand(2, H, DA) * 2 - 1, torch.randn(2, TO, D)
    torch.manual_seed(1)
    noise = torch.randn_like(actions)  # the loss draws exactly this first
    pred = noise.clone()
    if delta_token is not None:
        pred[:, delta_token] += delta
    head.denoiser = _Fixed(pred)
    torch.manual_seed(1)
    return head.loss(cond, actions).item()


def test_check3_dp_supervises_only_current_and_future_tokens():
    head = _head(supervise_past=False)
    base = _loss_with(head)
    assert base == pytest.approx(0.0, abs=1e-12)
    assert _loss_with(head, delta_token=0) == base  # a past token: excluded
    assert _loss_with(head, delta_token=TO - 1) > base  # the current token: supervised


def test_check3_and_4_ptp_supervises_every_token_with_equal_weight():
    head = _head(supervise_past=True)
    past, future = _loss_with(head, delta_token=0), _loss_with(head, delta_token=H - 1)
    assert past > 0 and past == pytest.approx(future, rel=1e-6)  # no lambda: one token, one weight
    assert past == pytest.approx(0.5**2 / H, rel=1e-5)  # mean over all H tokens and dimensions


def test_sample_shapes_candidates_and_determinism():
    head = _head()
    cond = torch.randn(3, TO, D)
    a, _ = head.sample(cond, k=4, generators=torch.Generator().manual_seed(0))
    b, _ = head.sample(cond, k=4, generators=torch.Generator().manual_seed(0))
    assert a.shape == (3, 4, H, DA) and torch.equal(a, b)
    assert not torch.equal(a[:, 0], a[:, 1])  # independent noise per candidate
    assert a.abs().max() <= 1.0 + 1e-5  # clip_sample keeps the normalized range


def test_ddpm_runs_all_train_steps_ddim_its_own():
    assert len(_head(sampler="ddpm")._sampler().timesteps) == 100
    assert len(_head(sampler="ddim", inference_steps=10)._sampler().timesteps) == 10


def test_overfits_a_single_demo():
    """Acceptance: one demonstration chunk learned until sampled chunks match it (normalized MSE < 0.01)."""
    torch.manual_seed(0)
    head = DiffusionHead(2, 8, 1, 4, DiffusionHeadConfig(down_dims=(32, 64), step_embed_dim=32))
    cond, actions = fit_one_chunk(head, n_obs=1, steps=800, lr=3e-3, batch=64)
    samples, _ = head.sample(cond, k=16, generators=torch.Generator().manual_seed(0))
    assert ((samples[0] - actions) ** 2).mean() < 0.01
