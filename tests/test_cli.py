"""Tests of the ``miras`` command: a short train → eval → plot round, the demo's plumbing, and
clear errors (stderr, exit status 2, no traceback) for bad configurations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from miras_gpu.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--rank", "4", "--context", "16",
        "--vocab-size", "16", "--num-pairs", "2", "--batch", "4", "--chunk-size", "8",
        "--device", "cpu", "--no-progress"]


def test_train_eval_plot_round(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "yaad", "--steps", "3", "--eval-every", "3",
                 "--eval-batches", "1", *TINY, "--out", str(out)]) == 0
    assert "final loss" in capsys.readouterr().out
    for f in ("log.jsonl", "checkpoint.pt", "summary.json", "train_config.json",
              "model/config.json", "model/model.safetensors"):
        assert (out / f).is_file(), f
    assert main(["train", "--out", str(out), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    assert main(["eval", str(out), "--contexts", "16,32", "--batches", "1", "--batch", "4"]) == 0
    text = capsys.readouterr().out
    assert "context" in text and "accuracy" in text
    res = json.loads((out / "eval.json").read_text())["results"]
    assert [r["context"] for r in res] == [16, 32]
    assert main(["plot", str(out), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_plumbing(tmp_path, capsys):
    """Two models for two steps each: the table, the plot and demo.json are written."""
    assert main(["demo", "--steps", "2", "--models", "transformer,gated_deltanet", "--out",
                 str(tmp_path / "demo"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "recall acc" in text and "tokens/s" in text and "gated_deltanet" in text
    assert (tmp_path / "demo" / "demo.png").is_file()
    rows = json.loads((tmp_path / "demo" / "demo.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["transformer", "gated_deltanet"]


def test_demo_reports_a_diverged_context_instead_of_crashing(tmp_path, capsys, monkeypatch):
    """A model whose activations turn non-finite at a long evaluation context is reported
    ("n/a" and the error) and the demo still finishes."""
    from miras_gpu.train import loop

    real = loop.evaluate_run

    def evaluate_run(run_dir, contexts, **kw):
        if contexts[0] > 32:
            raise ValueError("q contains NaN or inf")
        return real(run_dir, contexts, **kw)

    monkeypatch.setattr(loop, "evaluate_run", evaluate_run)
    assert main(["demo", "--steps", "2", "--models", "gated_deltanet", "--out",
                 str(tmp_path / "demo"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "n/a" in text and "at context 64: q contains NaN or inf" in text
    row = json.loads((tmp_path / "demo" / "demo.json").read_text())["rows"][0]
    assert row["by_context"]["64"] is None and row["by_context"]["32"] is not None


@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "nosuch"], "unknown model"),
    (["train", "--context", "0"], "context"),
    (["train", "--context", "-5"], "context"),
    (["train", "--d-model", "30", "--n-heads", "4"], "must divide"),
    (["train", "--size", "huge"], "unknown size"),
    (["train", "--task", "nosuch"], "unknown task"),
    (["train", "--model", "titans_lmm", "--chunk-size", "16"], "no chunk-parallel form"),
    (["train", "--resume", "--out", "{tmp}/none"], "no checkpoint"),
    (["eval", "{tmp}/none"], "no run directory"),
    (["eval", "{tmp}"], "not a finished training run"),
    (["plot", "{tmp}"], "no log.jsonl"),
    (["demo", "--models", "moneta,nosuch"], "unknown model"),
    (["train", "--device", "tpu"], "device"),
    (["train", "--model", "yaad", "--link-at", "chunk"], "link_at='chunk' applies to moneta"),
])
def test_bad_configuration_exits_2_with_a_clear_message(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv + (["--out", str(tmp_path / "x")] if argv[0] == "train"
                        and "--out" not in argv else [])) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("miras ")


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--steps", "many"])
    assert e.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_console_script_reports_errors_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "miras_gpu.cli", "train", "--model", "nosuch",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    assert "unknown model 'nosuch'" in proc.stderr and "Traceback" not in proc.stderr
