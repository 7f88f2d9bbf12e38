"""Known actions (real-time chunking): one head contract to condition a new chunk on actions already fixed.

The claims tested: every head returns the known tokens exactly and a row without known tokens gets bit
for bit what it gets without the argument (so batching RTC rows with others changes nothing); the free
tokens follow on from the known ones (a bimodal task: inpainting one mode's start yields that mode, where
replacement alone would not); PTP's past stays free, so verification still tells candidates apart; the
rtc scheduler commits what runs before the reply and drops none of it; in the loop the chunk that comes
back starts with the queue it was asked to keep, and the arm executes those actions seamlessly.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robopolicy.acting import Acting
from robopolicy.heads.diffusion import DiffusionHead, DiffusionHeadConfig
from robopolicy.heads.ebt import EBTHead, EBTHeadConfig
from robopolicy.heads.ptp import PTPHead, PTPHeadConfig
from robopolicy.heads.sampling import Known

H, TO, DA = 8, 2, 2


def _heads():
    return {
        "diffusion": lambda: DiffusionHead(DA, H, TO, 4, DiffusionHeadConfig(down_dims=(16, 32), step_embed_dim=16,
                                                                              n_groups=4)),
        "ptp": lambda: PTPHead(DA, H, 3, 4, PTPHeadConfig(n_layer=1, n_emb=32, sampler="ddim", inference_steps=5)),
        "ebt": lambda: EBTHead(DA, H, TO, 4, EBTHeadConfig(n_layer=1, obs_layers=1, n_emb=32)),
    }


def _known(batch: int, first: int, lengths: list[int]) -> Known:
    values = torch.rand(batch, H, DA) * 1.6 - 0.8
    mask = torch.zeros(batch, H, dtype=torch.bool)
    for r, n in enumerate(lengths):
        mask[r, first: first + n] = True
    return Known(values, mask)


@pytest.mark.parametrize("name", ["diffusion", "ptp", "ebt"])
def test_known_tokens_come_back_exactly_and_rows_without_any_are_untouched(name):
    torch.manual_seed(0)
    head = _heads()[name]().eval()
    n_obs = head.n_obs
    cond = torch.randn(3, n_obs, 4)
    known = _known(3, n_obs - 1, [3, 0, 1])  # row 1: nothing known
    known.values[~known.mask] = float("nan")  # read only where the mask says: NaN elsewhere must not leak

    def gens():
        return [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    plain, _ = head.sample(cond, k=2, generators=gens())
    with_known, _ = head.sample(cond, k=2, generators=gens(), known=known)
    assert torch.isfinite(with_known).all()
    for r, n in enumerate([3, 0, 1]):
        fixed = with_known[r, :, n_obs - 1: n_obs - 1 + n]
        assert torch.equal(fixed, known.values[r, n_obs - 1: n_obs - 1 + n].expand_as(fixed))
    assert torch.equal(with_known[1], plain[1])  # a row without known tokens: bit for bit its plain result
    # the known tokens shape the free ones (not a final overwrite): row 0's free tokens moved
    assert not torch.allclose(with_known[0, :, n_obs + 2:], plain[0, :, n_obs + 2:], atol=1e-4)


def _bimodal(batch: int) -> torch.Tensor:
    """Chunks that are one of two modes, +ramp or -ramp, with equal odds under one condition."""
    sign = torch.where(torch.rand(batch, 1, 1) < 0.5, 1.0, -1.0)
    return sign * (0.5 + 0.3 * torch.linspace(0, 1, H)[None, :, None]).expand(batch, H, DA)


def _follow_share(head, guidance_of=None) -> tuple[float, float]:
    """Share of 64 candidates whose free tokens take the positive mode, without and with the first two
    future tokens known to be the positive mode's."""
    cond = torch.zeros(1, TO, 4)
    free, _ = head.sample(cond, k=64, generators=[torch.Generator().manual_seed(1)])
    values = torch.zeros(1, H, DA)
    values[0] = _bimodal(1).abs()[0]
    mask = torch.zeros(1, H, dtype=torch.bool)
    mask[0, TO - 1: TO + 1] = True
    out, _ = head.sample(cond, k=64, generators=[torch.Generator().manual_seed(1)], known=Known(values, mask))

    def share(x):
        return float((x[0, :, TO + 1:].mean(dim=(1, 2)) > 0).float().mean())
    return share(free), share(out)


@pytest.mark.slow  # 15 s; the policy-level seam test below keeps DDIM's following in the default suite
def test_diffusion_inpainting_makes_the_free_tokens_follow_the_known_ones():
    """Bimodal demonstrations: unconditioned, both modes come out; with the start of the positive mode
    known, (nearly) every candidate continues it, with DDIM-10 and with DDPM-100 (where unscaled guidance
    would blow up at the noisiest steps). Replacement-only inpainting (guidance 0) does not: candidates
    still jump to the other mode, which is why the head guides."""
    torch.manual_seed(0)
    head = _heads()["diffusion"]()
    optim = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(400):
        loss = head.loss(torch.zeros(64, TO, 4), _bimodal(64))
        optim.zero_grad()
        loss.backward()
        optim.step()
    head.eval()
    free, guided = _follow_share(head)
    assert 0.25 < free < 0.75, f"the trained head should be bimodal, {free:.2f} positive"
    assert guided >= 0.95, f"DDIM-10: only {guided:.2f} of the candidates follow the known start"
    head.cfg.sampler = "ddpm"
    _, guided_ddpm = _follow_share(head)
    assert guided_ddpm >= 0.95, f"DDPM-100: only {guided_ddpm:.2f} of the candidates follow the known start"
    head.cfg.sampler, head.cfg.inpaint_guidance = "ddim", 0.0
    _, replaced = _follow_share(head)
    assert replaced < guided - 0.1, f"replacement alone {replaced:.2f}, guided {guided:.2f}"


def test_ebt_warm_start_training_mixes_in_committed_prefixes():
    """With warm_start_frac, a share of training samples has a committed prefix of 1..(H-To+1)/2 future
    tokens that is re-projected at every step; at 0 the loss starts every sample from noise."""
    torch.manual_seed(0)
    head = EBTHead(DA, H, TO, 4, EBTHeadConfig(n_layer=1, obs_layers=1, n_emb=32, warm_start_frac=0.5))
    actions = torch.rand(4000, H, DA) - 0.5
    known = head._training_known(actions)
    lengths = known.mask[..., 0].sum(1)
    assert 0.45 < float((lengths > 0).float().mean()) < 0.55
    assert not known.mask[:, : TO - 1].any()  # never the past
    starts = known.mask[..., 0].float().argmax(1)[lengths > 0]
    assert (starts == TO - 1).all() and lengths.max() == (H - TO + 1) // 2
    loss = head.loss(torch.randn(64, TO, 4), actions[:64])
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    head.cfg.warm_start_frac = 0.0
    assert head._training_known(actions) is None
    # re-projection: a step moves the free tokens and leaves the known ones at their values, velocity zero
    a, v = head._project(known, torch.randn_like(actions), torch.randn_like(actions))
    assert torch.equal(a[known.mask.expand_as(a)], actions[known.mask.expand_as(a)])
    assert (v[known.mask.expand_as(v)] == 0).all()


def _small_ptp_policy(*extra: str):
    """An untrained PTP policy at To=4 on 5-d states and 3-d actions, and the data its normalizer saw."""
    from robopolicy.config import load_config
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.data.store import Field
    from robopolicy.policy import Policy

    cfg = load_config("ptp", ["policy.ptp.n_layer=1", "policy.ptp.n_emb=32", "data.n_obs=4", "data.horizon=12",
                              "data.stride=1", *extra])
    schema = {"state": Field((5,), np.dtype("float32")), "action": Field((3,), np.dtype("float32"))}
    rng = np.random.default_rng(0)
    data = {"state": rng.normal(size=(50, 5)).astype(np.float32),
            "action": rng.uniform(-1, 1, (50, 3)).astype(np.float32)}
    torch.manual_seed(0)
    return Policy(cfg, schema, Normalizer.fit(data, {"state": "minmax", "action": "minmax"})).eval(), data, rng


def test_ptp_keeps_its_past_free_so_verification_still_tells_candidates_apart():
    """Through the policy: a window with an executed past and two committed queued actions. The chunk
    starts with the committed actions exactly; the known tokens the head gets start at To-1 (never the
    past), so each candidate's predicted past is its own and the verifier's past scores differ (had the
    executed past been inpainted, every candidate would score the same, zero)."""
    from robopolicy.data.windows import Window

    policy, data, rng = _small_ptp_policy()
    queued = rng.uniform(-0.5, 0.5, (6, 3)).astype(np.float32)
    window = Window({"state": data["state"][:4]}, t=3, actions_at_past_frames=data["action"][:3], queued=queued,
                    committed=2)
    known = policy._known([window])
    assert known.mask[0].nonzero().flatten().tolist() == [3, 4]  # tokens To-1, To: the committed queue only
    chunk = policy.act([window], acting=Acting(k=4), generators=[torch.Generator().manual_seed(0)])[0]
    assert chunk.method == "past" and np.array_equal(chunk.plan[:2], queued[:2])
    assert len(set(np.round(chunk.scores, 9).tolist())) == 4 and (chunk.scores > 1e-6).all()


def test_the_rtc_scheduler_commits_what_runs_before_the_reply_and_drops_none_of_it():
    from robopolicy.serve.scheduler import Scheduler

    replan, rtc = Scheduler("replan", 4), Scheduler("rtc", 4)
    plan = np.arange(16, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    for s in (replan, rtc):
        s.merge(0, plan, 0, 2)  # the first chunk, arriving at once: 4 + 2 actions kept
    assert replan.committed(4, 2) == 0 and rtc.committed(4, 2) == 2 and rtc.committed(5, 2) == 1
    # the request went out at step 4 with 2 queued; its chunk (computed at 4) arrives at step 6
    new = plan + 100
    replan.merge(4, new, 6, 2)
    rtc.merge(4, new, 6, 2, committed=2)
    assert replan.dropped == 2 and rtc.dropped == 0  # rtc's first two are the queue's own actions
    assert np.array_equal(rtc.action(6), new[2]) and rtc.remaining(6) == 4
    with pytest.raises(Exception, match="strategy"):
        Scheduler("bogus", 4)


def test_the_loop_with_rtc_gets_chunks_that_start_with_the_queue_it_keeps(reach_run):
    """Lockstep clock, latency of two control periods, through the in-process link: each request commits
    the queued actions due before its reply; the reply's first actions are exactly them, the arm executes
    them as queued, and no action is dropped or starved."""
    from robopolicy import envs
    from robopolicy.policy import Policy
    from robopolicy.serve.loop import LoopConfig
    from robopolicy.serve.run import run
    from robopolicy.serve.service import LocalLink

    policy = Policy.load(reach_run / "policy").eval()
    seen = []

    class Spy(LocalLink):
        def _call(self, request):
            reply = LocalLink._call(self, request)
            # what replan would have got for the same request (the same noise), nothing committed
            plain = LocalLink._call(self, {**request, "committed": 0}) if request.get("committed") else None
            seen.append((request, reply, plain))
            return reply
    link = Spy(policy)
    try:
        period = 1 / link.metadata["control_hz"]
        result = run(link, "sim:reach", list(envs.eval_seeds(1)), LoopConfig(strategy="rtc",
                                                                             inject_latency_s=2 * period),
                     lockstep=True, progress=False)
    finally:
        link.close()
    committed = [(req, rep, plain) for req, rep, plain in seen if req.get("committed")]
    assert len(committed) >= 6 and all(req["committed"] == 2 for req, _, _ in committed)
    for req, rep, _ in committed:
        assert np.array_equal(rep["plan"][:2], req["queued"][:2])
    # the chunks were generated from the committed actions, not pasted onto a plain chunk: the free actions
    # differ from replan's for the same request, and the seam (first free action vs last committed) is smaller
    assert all(np.abs(rep["plan"][2:] - plain["plan"][2:]).max() > 1e-4 for _, rep, plain in committed)
    seam = np.mean([np.abs(rep["plan"][2] - req["queued"][1]).max() for req, rep, _ in committed])
    seam_replan = np.mean([np.abs(plain["plan"][2] - req["queued"][1]).max() for req, _, plain in committed])
    print(f"through the loop: seam jump rtc {seam:.3f}, replan {seam_replan:.3f} (mean over {len(committed)} chunks)")
    assert seam < seam_replan, (seam, seam_replan)
    ep = result.episodes[0]
    assert ep.dropped == 0 and ep.starved == 0 and ep.ended == "done"
    # what the arm executed at the committed steps is the old queue itself
    for req, _, _ in committed:
        if req["t"] + 2 <= ep.length:
            np.testing.assert_allclose(ep.actions[req["t"]: req["t"] + 2], req["queued"][:2], atol=1e-6)


def test_inpainting_the_executed_past_is_an_experiment_the_policy_runs_on_request():
    """`inpaint_past` (the no-PTP mechanism experiment): the past tokens 0..To-2 become known actions, the ones
    executed at the past frames, and the future is denoised around them; a window without an executed past
    (the episode's start) and the default (off) are bit for bit the plain chunk."""
    from robopolicy.data.windows import Window

    policy, data, _ = _small_ptp_policy("policy.ptp.past_action_pred=false")
    full = Window({"state": data["state"][:4]}, t=3, actions_at_past_frames=data["action"][:3])
    start = Window({"state": data["state"][:4]}, t=0)
    known = policy._known([full, start], inpaint_past=True)
    assert known.mask[0].nonzero().flatten().tolist() == [0, 1, 2] and not known.mask[1].any()
    np.testing.assert_allclose(policy.normalizer.unnormalize("action", known.values[0, :3].numpy()),
                               data["action"][:3], atol=1e-6)

    def act(w, **kw):
        return policy.act([w], generators=[torch.Generator().manual_seed(1)], **kw)[0].plan
    assert not np.array_equal(act(full, acting=Acting(inpaint_past=True)), act(full))  # the true past shapes the future
    assert np.array_equal(act(start, acting=Acting(inpaint_past=True)), act(start))
    from robopolicy.eval.runner import comparable
    assert comparable({"k": 1}, {"k": 1, "inpaint_past": False}) == []  # runs recorded before the field resume
    assert comparable({"k": 1}, {"k": 1, "inpaint_past": True}) == ["inpaint_past"]


# ---------------------------------------------------------------- real-time chunking through the policy
POLICY_OVERRIDES = {
    "diffusion": ["policy.diffusion.down_dims=[16,32]", "policy.diffusion.step_embed_dim=16",
                  "policy.diffusion.n_groups=4"],
    "ptp": ["policy.ptp.n_layer=1", "policy.ptp.n_emb=32"],
    "ebt": ["policy.ebt.n_layer=1", "policy.ebt.obs_layers=1", "policy.ebt.n_emb=32"],
}


def _policy(head: str, *extra: str):
    """A small policy of ``head`` at To=2, H=8 on 5-d states and 2-d actions, its normalizer the identity
    on [-1, 1] (so the bimodal chunks below are its targets as they are)."""
    from robopolicy.config import load_config
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.data.store import Field
    from robopolicy.policy import Policy

    cfg = load_config(head, [*POLICY_OVERRIDES[head], "data.n_obs=2", f"data.horizon={H}", "data.stride=1",
                             "data.n_action_steps=4", "data.obs_keys=[state]", *extra])
    schema = {"state": Field((5,), np.dtype("float32")), "action": Field((DA,), np.dtype("float32"))}
    span = {"state": np.array([[-1.0] * 5, [1.0] * 5], np.float32), "action": np.array([[-1.0] * DA, [1.0] * DA],
                                                                                        np.float32)}
    torch.manual_seed(0)
    return Policy(cfg, schema, Normalizer.fit(span, {"state": "minmax", "action": "minmax"})).eval()


def _rtc_window(queued: np.ndarray, committed: int):
    from robopolicy.data.windows import Window

    return Window({"state": np.zeros((2, 5), np.float32)}, t=1, queued=queued, committed=committed)


@pytest.mark.parametrize("head", ["diffusion", "ptp", "ebt"])
def test_the_policy_hands_the_committed_actions_to_the_head_and_the_server_does_too(head):
    """Pasting the committed actions onto a chunk sampled without them would return them exactly too; what
    rules it out: with the same noise, other committed values give other free actions, through Policy.act and
    through a real server on loopback (which must return what Policy.act returns)."""
    from conftest import InProcessServer
    from robopolicy.serve import protocol, service
    from robopolicy.serve.client import PolicyClient

    policy = _policy(head)
    rng = np.random.default_rng(0)
    queues = [rng.uniform(-0.8, 0.8, (H - 1, DA)).astype(np.float32) for _ in range(2)]

    def act(queued, committed):
        return policy.act([_rtc_window(queued, committed)], generators=[service.generator(None, 5)])[0].plan
    a, b = act(queues[0], 2), act(queues[1], 2)
    assert np.array_equal(a[:2], queues[0][:2]) and np.array_equal(b[:2], queues[1][:2])
    assert np.abs(a[2:] - b[2:]).max() > 1e-3, "the free actions ignore the committed ones"
    free = act(queues[0], 0)  # the same queue, nothing committed: a plain chunk
    assert np.abs(a[2:] - free[2:]).max() > 1e-3
    with InProcessServer(policy) as server:
        client = PolicyClient(server.url)
        try:
            served = [client.request(protocol.act_request(_rtc_window(q, 2), i, seed=5))["plan"]
                      for i, q in enumerate(queues)]
        finally:
            client.close()
    assert np.array_equal(served[0], a.astype(np.float32)) and np.array_equal(served[1], b.astype(np.float32))


def _train_bimodal(policy, steps: int, batch: int):
    """Demonstrations that are one of two modes (+ramp, -ramp) under one observation; returns the policy."""
    policy.train()
    optim = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    obs = {"state": torch.zeros(batch, 2, 5)}
    for _ in range(steps):
        loss = policy.loss({"obs": obs, "action": _bimodal(batch)})
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optim.step()
    return policy.eval()


@pytest.mark.parametrize("head, steps, extra", [
    ("diffusion", 250, ()), ("ptp", 300, ()),
    # EBT's second-order training costs ~0.3 s a step here: shorter unrolls, more warm starts, in the slow suite
    pytest.param("ebt", 300, ("policy.ebt.train_steps=2", "policy.ebt.train_steps_extra=0",
                              "policy.ebt.warm_start_frac=0.5"), marks=pytest.mark.slow)])
def test_the_first_free_action_continues_from_the_last_committed_one(head, steps, extra):
    """A trained policy whose demonstrations go one of two ways from the same observation. The queue the arm
    is executing follows the positive mode and its first two actions are committed. The action after them
    (the seam) is measured against the last committed one: with real-time chunking the new chunk continues
    the mode, with replan (the same request, nothing committed) it jumps to the other mode about half the
    time. Pasting the committed actions onto a plain chunk would jump like replan."""
    torch.manual_seed(0)
    policy = _train_bimodal(_policy(head, *extra), steps, batch=32)
    queued = _bimodal(1).abs()[0, 1:].numpy()  # tokens To-1.. of the positive mode

    def jumps(committed):
        chunks = policy.act([_rtc_window(queued, committed)] * 32,
                            generators=[torch.Generator().manual_seed(s) for s in range(32)])
        return np.array([np.abs(c.plan[2] - queued[1]).max() for c in chunks])
    rtc, replan = jumps(2), jumps(0)
    print(f"{head}: seam jump (32 seeds) rtc mean {rtc.mean():.3f}, {(rtc > 0.5).mean():.0%} over 0.5; replan mean "
          f"{replan.mean():.3f}, {(replan > 0.5).mean():.0%} over 0.5")
    assert 0.15 < (replan > 0.5).mean() < 0.85, f"the trained {head} policy should be bimodal: {replan}"
    assert rtc.mean() < 0.5 * replan.mean() and (rtc > 0.5).mean() <= 0.5 * (replan > 0.5).mean(), (rtc, replan)
