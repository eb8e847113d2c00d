"""Tests of miras_gpu.train: tasks, exact resumption, DDP against one process, learning MQAR."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from miras_gpu.train import IGNORE, TrainConfig, make_task, read_log, train  # noqa: E402
from miras_gpu.train.loop import ConfigError, lr_lambda  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# A very small model in float64, so that runs compare to ~1e-12 and take a second.
SMALL = dict(model="gated_deltanet", size="tiny", d_model=16, n_heads=2, n_layers=1, rank=4,
             task="mqar", context=16, vocab_size=16, num_pairs=2, batch=4, warmup=2,
             chunk_size=4, dtype="float64", progress=False, device="cpu", lr=1e-2)


# --------------------------------------------------------------------------------------------
# tasks


def test_mqar_examples_are_seeded_and_answer_the_paired_value():
    task = make_task("mqar", 64, seed=3, num_pairs=6, vocab_size=40)
    x, y = task.example(7)
    x2, y2 = task.example(7)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, task.example(8)[0])
    assert not np.array_equal(x, task.example(7, "eval")[0])
    pairs = dict(zip(x[0:12:2].tolist(), x[1:12:2].tolist()))
    asked = np.flatnonzero(y != IGNORE)
    assert len(asked) == 6  # every key queried once
    for t in asked:
        assert y[t] == pairs[int(x[t])] == x[t + 1]
        assert 1 <= x[t] < 20 <= y[t] < 40
    xb, yb = task.batch(range(3))
    assert xb.shape == yb.shape == (3, 64) and xb.dtype == torch.int64


@pytest.mark.parametrize("name", ["niah_passkey", "niah_number", "niah_word"])
def test_needle_tasks_hide_the_answer_once_and_ask_for_it_at_the_end(name):
    task = make_task(name, 300, seed=1)
    x, y = task.example(0)
    text = bytes(x.astype(np.uint8)).decode()
    answer = bytes(y[y != IGNORE].astype(np.uint8)).decode()
    assert len(text) == 300 and answer
    assert np.all(y[-len(answer):] != IGNORE) and np.all(y[:-len(answer)] == IGNORE)
    assert text.count(f"is {answer}") + text.count(f"is: {answer}") >= 1  # the needle
    assert "What is the" in text[-len(answer) - 100:]
    with pytest.raises(ValueError, match="too short"):
        make_task(name, 50)


def test_text_task_uses_the_shipped_text_and_disjoint_splits():
    import hashlib

    from miras_gpu.data import ALICE_SHA256, raw_bytes

    assert hashlib.sha256(raw_bytes()).hexdigest() == ALICE_SHA256
    task = make_task("text", 32, seed=0)
    x, y = task.example(0)
    assert np.array_equal(x[1:], y[:-1]) and (y != IGNORE).all()
    assert "Alice" in bytes(task.batch(range(200))[0].numpy().astype(np.uint8).ravel()).decode()


def test_unknown_task_and_bad_context():
    with pytest.raises(ValueError, match="unknown task"):
        make_task("nope", 10)
    with pytest.raises(ValueError, match="context"):
        make_task("mqar", 0)


@pytest.mark.parametrize("model", ["moneta", "memora"])
def test_link_at_reaches_the_memory_of_every_layer(model):
    from miras_gpu.nn import build_model
    from miras_gpu.train.loop import check_config

    _, lm = check_config(TrainConfig(**{**SMALL, "model": model, "link_at": "chunk"}))
    net = build_model(lm)
    configs = [m.config for m in net.modules() if hasattr(m, "config")
               and hasattr(m.config, "link_at")]
    assert configs and all(c.link_at == "chunk" and c.name == model for c in configs)


def test_schedule_warms_up_then_decays_to_the_floor():
    f = lr_lambda(warmup=4, total=20, min_ratio=0.1)
    assert [round(f(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(20) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 25))


# --------------------------------------------------------------------------------------------
# the loop


def _losses(out):
    return [r["loss"] for r in read_log(out) if "loss" in r]


def test_resume_continues_exactly(tmp_path):
    full = TrainConfig(**SMALL, steps=6, out=str(tmp_path / "full"), eval_every=3)
    train(full)
    part = TrainConfig(**SMALL, steps=6, out=str(tmp_path / "part"), eval_every=3)
    train(part, stop_at=4)  # "interrupted" after step 4: a checkpoint at step 4
    ck = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 4 and {"model", "optimizer", "scheduler", "rng"} <= set(ck)
    assert len(ck["optimizer"]["state"]) > 0  # Adam moments are saved
    train(TrainConfig(out=str(tmp_path / "part"), progress=False), resume=True)
    assert len(_losses(tmp_path / "part")) == 6
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    evals = [r["step"] for r in read_log(tmp_path / "part") if "eval" in r]
    assert evals == [3, 6]
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(TrainConfig(out=str(tmp_path / "none")), resume=True)


def _without_warnings(stderr: str) -> str:
    """stderr of a torchrun job less its warnings (each warning line and the indented source
    line Python prints after it), so that a failure message shows the ranks' own output."""
    keep, after_warning = [], False
    for line in stderr.splitlines():
        source = after_warning and line[:1].isspace()
        after_warning = "Warning:" in line
        if not (after_warning or source):
            keep.append(line)
    return "\n".join(keep)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_ddp_two_processes_equal_one_process_on_the_combined_batch(tmp_path, mode):
    """torchrun with 2 CPU processes (gloo): each rank reads half of every global batch; the
    parameters after 3 steps equal those of one process on the whole batch (DDP, and FSDP2
    with --fsdp)."""
    args = ["--model", "gated_deltanet", "--d-model", "16", "--n-heads", "2", "--n-layers", "1",
            "--rank", "4", "--context", "16", "--vocab-size", "16", "--num-pairs", "2",
            "--batch", "4", "--steps", "3", "--warmup", "2", "--lr", "1e-2",
            "--chunk-size", "4", "--dtype", "float64", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "miras_gpu.cli", "train", *args, "--out", str(tmp_path / "ddp")]
    cmd += ["--fsdp"] if mode == "fsdp" else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, _without_warnings(proc.stderr)[-6000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2

    cfg = TrainConfig(**{**SMALL, "steps": 3}, out=str(tmp_path / "one"))
    train(cfg)
    a = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["model"]
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-10, msg=k)
    la, lb = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    np.testing.assert_allclose(la, lb, rtol=1e-12)


def test_a_tiny_model_learns_mqar_well_below_chance(tmp_path):
    cfg = TrainConfig(model="gated_deltanet", size="tiny", d_model=32, n_heads=2, n_layers=1,
                      rank=8, task="mqar", context=16, vocab_size=16, num_pairs=2, batch=16,
                      steps=80, lr=1e-2, warmup=10, chunk_size=16, progress=False,
                      device="cpu", eval_every=80, eval_batches=2, out=str(tmp_path / "r"))
    s = train(cfg)
    chance = math.log(8)  # 8 possible values: chance loss ln 8, chance accuracy 1/8
    assert s["eval"]["loss"] < 0.6 * chance, s["eval"]
    assert s["eval"]["accuracy"] > 0.4, s["eval"]


def test_divergence_stops_with_a_clear_error(tmp_path, monkeypatch, capsys):
    """A non-finite loss stops training before the update, naming the step and the last
    checkpoint; the ``miras`` command prints it without a traceback and exits with 1."""
    from miras_gpu.cli import main
    from miras_gpu.train import TrainingDiverged, loop

    real = loop.token_loss_sum
    calls = []

    def poisoned(logits, targets):
        calls.append(1)
        loss, n = real(logits, targets)
        return (loss * float("nan") if len(calls) == 3 else loss), n

    monkeypatch.setattr(loop, "token_loss_sum", poisoned)
    cfg = TrainConfig(**{**SMALL, "steps": 5, "checkpoint_every": 2},
                      out=str(tmp_path / "run"))
    with pytest.raises(TrainingDiverged, match="step 3: the loss is nan.*checkpoint.pt"):
        train(cfg)
    calls.clear()
    argv = ["train", "--model", "yaad", "--steps", "4", "--d-model", "16", "--n-heads", "2",
            "--n-layers", "1", "--rank", "4", "--context", "16", "--vocab-size", "16",
            "--num-pairs", "2", "--batch", "4", "--chunk-size", "8", "--device", "cpu",
            "--no-progress", "--out", str(tmp_path / "cli")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "training diverged at step 3" in err and "Traceback" not in err


def test_non_finite_activations_stop_with_a_clear_error(tmp_path, monkeypatch):
    """A NaN reaching a memory op (a diverged layer) is reported as divergence too."""
    import torch

    from miras_gpu.train import TrainingDiverged

    cfg = TrainConfig(**{**SMALL, "steps": 2}, out=str(tmp_path / "run"))
    real_embedding = torch.nn.functional.embedding

    def nan_embedding(*args, **kwargs):
        return real_embedding(*args, **kwargs) * float("nan")

    monkeypatch.setattr(torch.nn.functional, "embedding", nan_embedding)
    with pytest.raises(TrainingDiverged, match="step 1: .*contains NaN or inf"):
        train(cfg)
