"""The shared trainer's plumbing: DDP through torchrun (gloo, 2 processes), TensorBoard scalars and the
data-wait fraction, bf16 autocast, torch.compile, a wall-clock budget."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from robopolicy.config import load_config
from robopolicy.data.store import DemoStore
from robopolicy.policy import Policy
from robopolicy.train.trainer import train

SMALL = ["policy.diffusion.down_dims=[16,32]", "policy.diffusion.step_embed_dim=16", "data.batch_size=16",
         "train.log_every=4", "train.checkpoint_every=8", "data.val_fraction=0"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("trainer") / "s.zarr"
    rng = np.random.default_rng(0)
    with DemoStore.create(path) as s:
        for _ in range(6):
            s.append_episode({"state": rng.normal(size=(30, 5)).astype(np.float32),
                              "action": np.tanh(rng.normal(size=(30, 3))).astype(np.float32)})
    return path


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_time_budget_stops_training_anneals_by_time_and_is_spent_across_resumes(store, tmp_path):
    """train.minutes: training stops at the budget with a checkpoint, the LR schedule runs on the clock
    (a budget far short of train.steps still anneals), and a resumed run counts the time already spent."""
    overrides = [*SMALL, "train.steps=1000000", "train.minutes=0.03", "train.optim.warmup_steps=0",
                 "train.log_every=1", "train.tensorboard=false"]
    cfg = load_config("diffusion", overrides)
    run = tmp_path / "run"
    train(cfg, store, run, progress=False)
    rows = _log(run)
    stops = [r for r in rows if r.get("stopped")]
    trained = [r for r in rows if "loss" in r]
    assert len(stops) == 1 and stops[0]["wall_s"] >= 1.8 and stops[0]["step"] == trained[-1]["step"] < 10**6
    assert trained[0]["lr"] > 0.5 * cfg.train.optim.lr and trained[-1]["lr"] < 0.1 * cfg.train.optim.lr
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["step"] == stops[0]["step"] and state["wall_s"] >= 1.8
    assert (run / "policy" / "model.safetensors").exists()
    train(cfg, store, run, resume=True, progress=False)  # the budget is spent: one step at most
    again = [r for r in _log(run) if r.get("stopped")]
    assert len(again) == 2 and again[1]["step"] - again[0]["step"] <= 1


def test_ddp_with_torchrun_two_processes_on_gloo(store, tmp_path):
    """Two processes, each on its share of every epoch's batches; gradients averaged (DDP), so both end
    with equal weights (the trainer checks that and fails otherwise); rank 0 alone writes the run."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "robopolicy.cli", "train", "--config", "diffusion", "--store", str(store), "--out",
           str(tmp_path / "ddp"), "--quiet", "train.steps=16", *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("policy (EMA weights)") == 1  # printed by rank 0 only
    state = torch.load(tmp_path / "ddp/train_state.pt", weights_only=True)
    assert state["step"] == 16 and len(state["rng"]) == 2  # both processes' RNG, for resume
    # 6 episodes x 30 windows = 180 per epoch, 11 batches of 16, 5 per process: 16 steps run into epoch 3
    assert state["epoch"] == 3 and state["position"] == 1
    assert [row["step"] for row in _log(tmp_path / "ddp")] == [4, 8, 12, 16]
    Policy.load(tmp_path / "ddp/policy")

    # the same run on one process sees other batches: the two runs differ (the shards are not both the whole)
    train(load_config("diffusion", ["train.steps=16", *SMALL]), store, tmp_path / "one", progress=False)
    one = torch.load(tmp_path / "one/train_state.pt", weights_only=True)
    assert (one["epoch"], one["position"]) == (1, 5)  # 11 batches per epoch on one process
    assert not all(torch.equal(one["model"][k], state["model"][k]) for k in one["model"])


def test_tensorboard_scalars_and_data_wait(store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(load_config("diffusion", ["train.steps=8", *SMALL]), store, tmp_path / "run", progress=False)
    rows = _log(tmp_path / "run")
    assert all(0.0 <= r["data_wait"] <= 1.0 and r["samples_s"] > 0 for r in rows)
    events = EventAccumulator(str(tmp_path / "run/tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/lr", "train/samples_s", "train/data_wait"}
    assert [e.step for e in events.Scalars("train/loss")] == [4, 8]
    assert events.Scalars("train/loss")[-1].value == pytest.approx(rows[-1]["loss"])


def test_bf16_autocast_trains(store, tmp_path):
    """precision=bf16 (the default on CUDA) runs the forward under bf16 autocast; weights stay fp32."""
    train(load_config("diffusion", ["train.steps=8", "train.precision=bf16", *SMALL]), store, tmp_path / "run",
          progress=False)
    rows = _log(tmp_path / "run")
    assert all(np.isfinite(r["loss"]) for r in rows)
    policy = Policy.load(tmp_path / "run/policy")
    assert all(p.dtype == torch.float32 for p in policy.parameters())


@pytest.mark.slow
def test_torch_compile_trains(store, tmp_path):
    """train.compile=true: the model runs through torch.compile (inductor; minutes to compile on a CPU).
    Its losses are not the eager run's: compiled code draws the diffusion noise with its own RNG."""
    import torch._dynamo

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    train(load_config("diffusion", ["train.steps=4", "train.compile=true", *SMALL]), store, tmp_path / "c",
          progress=False)
    assert counters["stats"]["unique_graphs"] >= 1  # something was compiled
    assert all(np.isfinite(r["loss"]) for r in _log(tmp_path / "c"))
    Policy.load(tmp_path / "c/policy")


def test_ddp_trains_the_ebt_head_through_its_second_order_gradients(store, tmp_path):
    """EBT's loss backpropagates through dE/da (create_graph inside the forward): DDP must average those
    gradients too, so both processes end with equal weights (the trainer checks) and the run loads."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "robopolicy.cli", "train", "--config", "ebt", "--store", str(store), "--out",
           str(tmp_path / "ddp"), "--quiet", "train.steps=4", "data.batch_size=16", "train.log_every=2",
           "train.checkpoint_every=4", "data.val_fraction=0", "policy.ebt.n_layer=1", "policy.ebt.obs_layers=1",
           "policy.ebt.n_emb=16", "policy.ebt.n_head=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(tmp_path / "ddp/train_state.pt", weights_only=True)
    assert state["step"] == 4
    policy = Policy.load(tmp_path / "ddp/policy")
    assert policy.cfg.policy.head == "ebt"
