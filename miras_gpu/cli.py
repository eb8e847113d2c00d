"""The ``miras`` command: train, evaluate and plot MIRAS language models; run the demo.

::

    miras train --model moneta --size tiny --task mqar --steps 300 --out runs/moneta
    miras train --out runs/moneta --resume            # continue an interrupted run exactly
    torchrun --nproc_per_node 8 -m miras_gpu.cli train --model yaad --size 340M --task text ...
    miras eval runs/moneta --contexts 64,128,256       # accuracy / perplexity per length
    miras plot runs/moneta runs/yaad --out runs/plot.png
    miras demo                                         # five tiny models on MQAR, < 5 min CPU

A bad configuration (unknown model, size or task, a context <= 0, heads that do not divide
the width, a missing checkpoint or run directory) prints one line on stderr and exits with
status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

__all__ = ["DEMO", "main"]

#: The demo's two settings: ``cpu`` (< 5 minutes on 2 cores) and ``cuda`` (a larger run).
DEMO = {
    "cpu": {"models": ["moneta", "yaad", "memora", "gated_deltanet", "transformer"],
            "steps": {"default": 250}, "batch": 16, "context": 32, "num_pairs": 4,
            "vocab_size": 32, "lr": 1e-2, "warmup": 15, "chunk_size": 16,
            "eval_contexts": [32, 64, 128], "eval_batches": 4, "size": "tiny"},
    "cuda": {"models": ["moneta", "yaad", "memora", "gated_deltanet", "transformer"],
             "steps": {"default": 800}, "batch": 32, "context": 256, "num_pairs": 8,
             "vocab_size": 128, "lr": 3e-3, "warmup": 50, "chunk_size": 64,
             "eval_contexts": [256, 512, 1024], "eval_batches": 8, "size": "tiny",
             "d_model": 128, "n_heads": 4},
}


class UsageError(Exception):
    """A user error: printed as ``miras: error: ...`` with exit status 2."""


def _models_help() -> str:
    from miras_ref import zoo

    return ", ".join(list(zoo.ALL) + ["transformer"])


def _check_model(name: str) -> str:
    from miras_ref import zoo

    key = name.lower().replace("-", "_")
    if key != "transformer" and key not in zoo.ALL:
        raise UsageError(f"unknown model {name!r}; choose one of {_models_help()}")
    return key


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def _chunk(text: str):
    t = text.lower()
    if t in ("auto",):
        return "auto"
    if t in ("none", "0", "recurrent"):
        return None
    try:
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"chunk size must be an integer, 'auto' or 'none', "
                                         f"got {text!r}") from None


# ------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miras", description="Train and evaluate MIRAS models "
                                "(Moneta, Yaad, Memora and the Table 1 zoo) and baselines.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model on a task",
                       description="Train a MIRAS language model (or a Transformer) on a task.")
    t.add_argument("--model", default="moneta",
                   help="MIRAS memory (a miras_ref.zoo name) or 'transformer' (default moneta)")
    t.add_argument("--size", default="tiny", help="preset: tiny, 170M, 340M, 780M (Table 5)")
    t.add_argument("--task", default="mqar",
                   help="mqar, niah_passkey, niah_number, niah_word or text (default mqar)")
    t.add_argument("--steps", type=int, default=None,
                   help="training steps (default 200; with --resume: extend the run to N)")
    t.add_argument("--batch", type=int, default=32, help="global batch (split over processes)")
    t.add_argument("--context", type=int, default=64, help="tokens per example")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (preset's)")
    t.add_argument("--warmup", type=int, default=20)
    t.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: none)")
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps")
    t.add_argument("--eval-batches", type=int, default=4)
    t.add_argument("--checkpoint-every", type=int, default=0,
                   help="checkpoint every N steps (default: at each evaluation and the end)")
    t.add_argument("--out", default=None, help="output directory (default runs/MODEL-TASK)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--fsdp", action="store_true", help="shard with FSDP2 instead of DDP")
    t.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="bf16 autocast on CUDA (auto) or fp32")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"],
                   help="parameter dtype (float64 for exactness checks)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--hybrid", action="store_true", help="Samba-style MIRAS + SWA hybrid")
    t.add_argument("--window", type=int, default=512, help="sliding window of the hybrid")
    t.add_argument("--chunk-size", type=_chunk, default="auto",
                   help="chunk of the parallel form: an integer, 'auto' (64) or 'none'")
    t.add_argument("--link-at", default="token", choices=["token", "chunk"],
                   help="Moneta, Memora: apply the retention's link at every token's read "
                        "(token, default) or only at chunk starts (chunk, the paper's Sec 5.4)")
    t.add_argument("--rank", type=int, default=32, help="rank of the low-rank gates")
    t.add_argument("--d-model", type=int, default=None, help="override the preset's width")
    t.add_argument("--n-layers", type=int, default=None, help="override the preset's depth")
    t.add_argument("--n-heads", type=int, default=None, help="override the preset's heads")
    t.add_argument("--vocab-size", type=int, default=None, help="mqar vocabulary (64)")
    t.add_argument("--num-pairs", type=int, default=None,
                   help="mqar key-value pairs (context / 8)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="evaluate a trained run per context length",
                       description="Recall accuracy per context length and perplexity.")
    e.add_argument("run", help="a training output directory")
    e.add_argument("--contexts", type=_int_list, default=None,
                   help="comma-separated context lengths (default: the training one)")
    e.add_argument("--task", default=None, help="evaluate on another task")
    e.add_argument("--batches", type=int, default=4)
    e.add_argument("--batch", type=int, default=32)
    e.add_argument("--device", default="auto")

    pl = sub.add_parser("plot", help="plot loss curves and accuracy vs context length")
    pl.add_argument("runs", nargs="+", help="training output directories")
    pl.add_argument("--out", default="plot.png", help="PNG to write")
    pl.add_argument("--title", default=None)

    d = sub.add_parser("demo", help="train five tiny models on MQAR and compare them",
                       description="Train tiny Moneta, Yaad, Memora, Gated DeltaNet (in the "
                       "MIRAS layer) and a Transformer on multi-query associative recall; print "
                       "a comparison table and write a plot.")
    d.add_argument("--device", default="cpu", help="cpu (under 5 minutes) or cuda (larger)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--steps", type=int, default=None, help="steps per model")
    d.add_argument("--models", default=None, help="comma-separated subset of the models")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true")
    return p


# ------------------------------------------------------------------------------------------
# commands


def cmd_train(a) -> int:
    from .train import TrainConfig, train

    if a.resume:
        if a.out is None:
            raise UsageError("--resume needs --out, the directory of the run to continue")
        ck = Path(a.out) / "checkpoint.pt"
        if not ck.is_file():
            raise UsageError(f"cannot resume: no checkpoint at {ck}")
        cfg = TrainConfig(out=a.out, progress=not a.no_progress)
        summary = train(cfg, resume=True, steps=a.steps)
        cfg.out = a.out
    else:
        model = _check_model(a.model)
        cfg = TrainConfig(
            model=model, size=a.size, task=a.task, context=a.context, steps=a.steps or 200,
            batch=a.batch, lr=a.lr, warmup=a.warmup, clip=a.clip, weight_decay=a.weight_decay,
            eval_every=a.eval_every, eval_batches=a.eval_batches,
            checkpoint_every=a.checkpoint_every, seed=a.seed,
            out=a.out or f"runs/{model}-{a.task}", device=a.device, fsdp=a.fsdp,
            precision=a.precision, dtype=a.dtype, hybrid=a.hybrid, window=a.window,
            chunk_size=a.chunk_size, link_at=a.link_at,
            rank=a.rank, d_model=a.d_model, n_layers=a.n_layers, n_heads=a.n_heads,
            vocab_size=a.vocab_size, num_pairs=a.num_pairs, progress=not a.no_progress)
        summary = train(cfg)
    if _is_main():
        ev = summary.get("eval") or {}
        print(f"done: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
              f"{summary['tok_per_s']:.0f} tokens/s"
              + (f", eval accuracy {ev['accuracy']:.3f}" if ev else "")
              + f"; outputs in {cfg.out}")
    if summary.get("world_size", 1) > 1:
        _leave_finished_rank()
    return 0


def _leave_finished_rank():
    """End one process of a finished ``torchrun`` job at once, without interpreter teardown.

    ``train`` has written every output and destroyed the process group, but DTensor's caches
    keep FSDP's device mesh, and with it the backend object, alive until the interpreter tears
    down. A 2-process gloo FSDP run once aborted at its end ("terminate called without an
    active exception"), which made a finished job fail; leaving with ``os._exit`` skips that
    teardown.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def cmd_eval(a) -> int:
    from .train.loop import evaluate_run

    if not Path(a.run).is_dir():
        raise UsageError(f"no run directory {a.run!r}")
    res = evaluate_run(a.run, a.contexts, a.task, a.batches, a.batch, a.device)
    print(f"{'context':>8} {'loss':>8} {'ppl':>9} {'token acc':>9} {'exact':>7} {'accuracy':>8}")
    for r in res:
        print(f"{r['context']:>8} {r['loss']:>8.4f} {r['ppl']:>9.3f} {r['token_acc']:>9.3f} "
              f"{r['exact']:>7.3f} {r['accuracy']:>8.3f}")
    print(f"wrote {Path(a.run) / 'eval.json'}")
    return 0


def cmd_plot(a) -> int:
    from .train.plot import plot_runs

    for r in a.runs:
        if not (Path(r) / "log.jsonl").is_file():
            raise UsageError(f"{r} has no log.jsonl (is it a training output directory?)")
    out = plot_runs(a.runs, a.out, a.title)
    print(f"wrote {out}")
    return 0


def _table(rows: list[dict]) -> str:
    head = f"{'model':<16} {'params':>8} {'final loss':>10} {'recall acc':>10} {'tokens/s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<16} {r['params']:>8,} {r['final_loss']:>10.3f} "
                     f"{_acc(r['accuracy']):>10} {r['tok_per_s']:>9.0f}")
    return "\n".join(lines)


def _evaluate_each(run_dir: str, spec: dict, device: str) -> list[dict]:
    """The demo's evaluation at each context; a context where the model's activations become
    non-finite is reported as ``accuracy: None`` with the error, instead of ending the demo."""
    from .train.loop import evaluate_run

    res = []
    for c in spec["eval_contexts"]:
        try:
            res += evaluate_run(run_dir, [c], n_batches=spec["eval_batches"],
                                batch=spec["batch"], device=device, write=False)
        except ValueError as err:
            res.append({"context": c, "accuracy": None, "error": str(err)})
    (Path(run_dir) / "eval.json").write_text(json.dumps({"task": "mqar", "results": res},
                                                        indent=2) + "\n")
    return res


def _acc(x) -> str:
    return f"{x:6.3f}" if x is not None else "   n/a"


def cmd_demo(a) -> int:
    import torch

    from .train import TrainConfig, train
    from .train.plot import plot_runs

    kind = "cuda" if a.device.startswith("cuda") else "cpu"
    if a.device not in ("cpu", "cuda") and not a.device.startswith("cuda:"):
        raise UsageError(f"device must be cpu or cuda, got {a.device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available")
    spec = DEMO[kind]
    models = spec["models"]
    if a.models:
        models = [_check_model(m) for m in a.models.split(",") if m.strip()]
    if a.steps is not None and a.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {a.steps}")
    out = Path(a.out)
    chance = math.log(spec["vocab_size"] // 2)
    print(f"miras demo ({kind}): {len(models)} models on MQAR, context {spec['context']}, "
          f"{spec['num_pairs']} key-value pairs, {spec['vocab_size'] // 2} possible values "
          f"(chance loss {chance:.2f}, chance accuracy {2 / spec['vocab_size']:.3f})",
          flush=True)
    t_start = time.perf_counter()
    rows, runs = [], []
    for m in models:
        steps = a.steps or spec["steps"].get(m, spec["steps"]["default"])
        cfg = TrainConfig(
            model=m, size=spec["size"], task="mqar", context=spec["context"], steps=steps,
            batch=spec["batch"], lr=spec["lr"], warmup=spec["warmup"], eval_every=0,
            seed=a.seed, out=str(out / m), device=kind, chunk_size=spec["chunk_size"],
            d_model=spec.get("d_model"), n_heads=spec.get("n_heads"),
            vocab_size=spec["vocab_size"], num_pairs=spec["num_pairs"],
            progress=not a.no_progress)
        s = train(cfg)
        res = _evaluate_each(cfg.out, spec, kind)
        at_train = next(r for r in res if r["context"] == spec["context"])
        rows.append({"model": m, "params": s["params"], "final_loss": s["final_loss"],
                     "accuracy": at_train["accuracy"], "tok_per_s": s["tok_per_s"],
                     "by_context": {r["context"]: r["accuracy"] for r in res},
                     "errors": {r["context"]: r["error"] for r in res if "error" in r}})
        runs.append(cfg.out)
    png = plot_runs(runs, out / "demo.png", title=f"miras demo ({kind}): MQAR, context "
                    f"{spec['context']}, {spec['num_pairs']} pairs", chance_loss=chance,
                    chance_accuracy=2 / spec["vocab_size"])
    elapsed = time.perf_counter() - t_start
    (out / "demo.json").write_text(json.dumps({"device": kind, "spec": spec, "rows": rows,
                                               "elapsed_s": elapsed}, indent=2) + "\n")
    print()
    print(_table(rows))
    ctx = spec["eval_contexts"]
    print("\nrecall accuracy by context length (trained at "
          f"{spec['context']}): " + ", ".join(str(c) for c in ctx))
    for r in rows:
        print(f"  {r['model']:<16}" + " ".join(_acc(r["by_context"][c]) for c in ctx))
    for r in rows:
        for c, err in r["errors"].items():
            print(f"  {r['model']} at context {c}: {err} (n/a above)")
    print(f"\nwrote {png} and {out / 'demo.json'} in {elapsed:.0f} s")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "demo": cmd_demo}


def main(argv=None) -> int:
    """Entry point of the ``miras`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .train.loop import ConfigError, TrainingDiverged

    try:
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, FileNotFoundError) as err:
        print(f"miras {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"miras {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"miras {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
