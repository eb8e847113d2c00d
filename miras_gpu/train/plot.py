"""Plots of training runs: loss curves and accuracy against context length (PNG, matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_runs", "run_label"]


def run_label(run_dir) -> str:
    """``model`` (``model-H`` for a hybrid) from a run's ``train_config.json``."""
    path = Path(run_dir) / "train_config.json"
    if not path.is_file():
        return Path(run_dir).name
    cfg = json.loads(path.read_text())
    return cfg.get("model", Path(run_dir).name) + ("-H" if cfg.get("hybrid") else "")


def _smooth(xs, k: int):
    if k <= 1 or len(xs) <= k:
        return xs
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= k:
            acc -= xs[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_runs(run_dirs, out, title: str | None = None, chance_loss: float | None = None,
              chance_accuracy: float | None = None) -> Path:
    """Write a two-panel PNG: training loss per step (smoothed) and accuracy per context length
    (from each run's ``eval.json``, written by ``miras eval``; runs without one are left out of
    the right panel). Returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .loop import read_log

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    any_acc = False
    all_ctx: set[int] = set()
    for run in run_dirs:
        run = Path(run)
        label = run_label(run)
        recs = [r for r in read_log(run) if "loss" in r]
        steps = [r["step"] for r in recs]
        losses = [r["loss"] for r in recs]
        line, = ax1.plot(steps, _smooth(losses, max(1, len(losses) // 40)), label=label)
        ev = run / "eval.json"
        if ev.is_file():
            res = json.loads(ev.read_text())["results"]
            ctx = [r["context"] for r in res]
            acc = [r["accuracy"] for r in res]
            ax2.plot(ctx, acc, marker="o", color=line.get_color(), label=label)
            all_ctx.update(ctx)
            any_acc = True
    if chance_loss is not None:
        ax1.axhline(chance_loss, color="grey", ls="--", lw=1, label="chance")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.set_title("Training loss")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("context length")
    ax2.set_ylabel("accuracy")
    ax2.set_title("Accuracy vs context length")
    ax2.set_ylim(-0.02, 1.02)
    ax2.grid(alpha=0.3)
    if any_acc:
        ax2.set_xscale("log", base=2)
        ticks = sorted(all_ctx)
        ax2.set_xticks(ticks, [str(c) for c in ticks])
        ax2.minorticks_off()
        if chance_accuracy is not None:
            ax2.axhline(chance_accuracy, color="grey", ls="--", lw=1, label="chance")
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no eval.json (run `miras eval`)", ha="center", va="center",
                 transform=ax2.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
