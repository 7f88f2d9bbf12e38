"""What a new user tripped over (issue 20 §2), each checked as the user met it: one clear line naming the
problem and its fix, exit 2, no traceback; pictures and videos that show what they should."""
from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_cli
from robopolicy.cli import build_parser, main


def _one_clear_line(result: subprocess.CompletedProcess, *words: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), (words, err)
    return err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained state policy, saved as `robopolicy train` saves one (serve only needs to load it)."""
    from robopolicy.config import load_config
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.data.store import Field
    from robopolicy.policy import Policy

    schema = {"state": Field((4,), np.dtype(np.float32)), "action": Field((2,), np.dtype(np.float32))}
    norm = Normalizer({"state": np.ones(4), "action": np.ones(2)}, {"state": np.zeros(4), "action": np.zeros(2)})
    cfg = load_config("diffusion", ["policy.diffusion.down_dims=[16,32]", "policy.diffusion.step_embed_dim=16"])
    folder = tmp_path_factory.mktemp("ckpt") / "policy"
    Policy(cfg, schema, norm).save(folder)
    return folder


def test_serve_on_a_port_in_use_is_one_line_naming_the_port_and_the_fix(checkpoint):
    with socket.socket() as held:  # a real port held by a real listening socket
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run_cli("serve", "--checkpoint", str(checkpoint), "--port", str(port))
        _one_clear_line(result, f"port {port}", "in use", "--port", "stop what holds it")
        assert "serving" not in result.stdout  # never announced

        # the same from the server itself, should the port be taken between the CLI's check and its bind
        import asyncio

        from robopolicy.errors import ConfigError
        from robopolicy.policy import Policy
        from robopolicy.serve.server import PolicyServer, ServerConfig

        server = PolicyServer(Policy.load(checkpoint), ServerConfig("127.0.0.1", port))
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is in use"):
            asyncio.run(server.serve())


def test_train_resume_with_nothing_to_resume_refuses(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for out, words in ((tmp_path / "missing", ("does not exist", "drop --resume")),
                       (tmp_path / "empty", ("no train_state.pt", "drop --resume"))):
        assert main(["train", "--config", "diffusion", "--store", str(tmp_path / "s.zarr"), "--out", str(out),
                     "--resume"]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and all(w in err for w in words) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "missing").exists() and not any((tmp_path / "empty").iterdir())  # nothing trained


def test_an_override_of_the_wrong_type_names_the_key_and_its_type(capsys):
    assert main(["train", "--config", "diffusion", "--out", "unused", "train.steps=abc"]) == 2
    err = capsys.readouterr().err
    assert "train.steps" in err and "takes int" in err and "'abc'" in err, err


def test_a_missing_store_says_how_to_make_one(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.zarr")]) == 2
    err = capsys.readouterr().err
    assert "no such demo store" in err and "robopolicy collect" in err, err


def test_a_missing_checkpoint_does_not_exist_and_an_empty_folder_is_not_one(tmp_path, capsys):
    from robopolicy.errors import ConfigError
    from robopolicy.policy import Policy

    with pytest.raises(ConfigError, match="does not exist"):
        Policy.load(tmp_path / "nope")
    for args in (["serve", "--checkpoint"], ["eval", "--checkpoint"], ["cache", "--store", "s", "--checkpoint"]):
        assert main([*args, str(tmp_path / "nope")]) == 2, args
        err = capsys.readouterr().err
        assert "does not exist" in err and "not a" not in err, (args, err)
    assert main(["serve", "--checkpoint", str(tmp_path)]) == 2
    assert "not a policy checkpoint" in capsys.readouterr().err


def _parsers(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_no_help_prints_a_doubled_percent():
    doubled = [p.prog for p in _parsers(build_parser()) if "%%" in p.format_help()]
    assert not doubled, doubled


def test_scores_chart_keeps_its_labels_and_counts_chunks_in_whole_numbers(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from robopolicy.eval.report import _scores_chart

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rng = np.random.default_rng(0)
    records = [{"scores": [list(rng.normal(size=4)) for _ in range(n)], "chosen": [0] * n, "success": n % 2 == 0,
                "method": "coherence"} for n in (3, 4, 5)]  # the longest method name
    assert _scores_chart({}, records, tmp_path / "scores.png")
    (fig,) = figures
    ax = fig.axes[0]
    assert all(float(t).is_integer() for t in ax.get_xticks())
    fig.canvas.draw()
    inside = fig.bbox.expanded(1.001, 1.001)  # the saved figure's box: the y label lies wholly inside it
    label = ax.yaxis.label.get_window_extent()
    assert inside.x0 <= label.x0 and label.x1 <= inside.x1 and inside.y0 <= label.y0 and label.y1 <= inside.y1


@pytest.mark.parametrize("fps,size", [(80.0, (48, 64)), (20.0, (47, 63))])
def test_videos_are_h264_at_the_rate_asked(tmp_path, fps, size):
    import av

    from robopolicy.video import write_mp4

    frames = [np.full((*size, 3), i * 10, np.uint8) for i in range(12)]
    write_mp4(frames, tmp_path / "v.mp4", fps=fps)
    with av.open(str(tmp_path / "v.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert float(stream.average_rate) == fps
        assert stream.width % 2 == 0 and stream.height % 2 == 0 and stream.width >= size[1]
        assert sum(1 for _ in container.decode(stream)) == len(frames)


def test_a_videos_rate_is_its_tasks_control_rate():
    from robopolicy import envs
    from robopolicy.video import control_hz

    assert control_hz(envs.env_spec("reach", "state")) == envs.get("reach").factory.control_hz == 80.0
    assert control_hz(envs.env_spec("lift", "image")) == 20.0


def test_torch_threads_are_set_before_torch_starts():
    """The CLI sets torch's threads before torch loads (its servers and workers inherit them), as conftest does
    for this session."""
    import os

    import torch

    from robopolicy.threads import THREADS

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = "from robopolicy.cli import main; main(['tasks']); import torch; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    assert out.stdout.splitlines()[-1] == str(THREADS), out.stdout
    assert THREADS == 1  # one thread per process: robopolicy/threads.py says why
    if os.environ.get("OMP_NUM_THREADS") == str(THREADS):  # conftest set it (a user's own value wins)
        assert torch.get_num_threads() == THREADS
