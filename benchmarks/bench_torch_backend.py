"""Time the torch backend's chunked Moneta, Yaad and Memora next to titans-pytorch.

In one process on one device: the forward and the forward+backward of
``miras_gpu.scan_chunked(..., backend="torch")`` for Moneta, Yaad and Memora at the reference
configuration of docs (B=4, T=4096, H=16, D=64, MLP expansion 4, chunk 64, bf16 inputs; the
memory state is float32), and titans-pytorch's ``NeuralMemory(dim=1024, heads=16,
dim_head=64, chunk_size=64, momentum=False)`` on the same ``[B, T, H*D]`` tokens (under bf16
autocast) when it is installed. Prints tokens/s, peak memory and ratios, and writes the same
as Markdown to ``--out``.

    python benchmarks/bench_torch_backend.py --out results.md          # GPU
    python benchmarks/bench_torch_backend.py --small --out /tmp/b.md   # CPU smoke test

Memora reads through a softmax link. On CUDA its reads come from the fused Triton op
:mod:`miras_gpu.triton.softmax_reads`, which keeps no per-token state; where that op does
not run (the CPU), each chunk forms per-token memory states and the forward+backward runs with
``checkpoint=True`` (each chunk is recomputed in the backward pass) unless ``--checkpoint
off``. Yaad (identity link) and Moneta (the ℓq link is one scale per
weight matrix) read in the dual form and keep no per-token state; on CUDA, Moneta's per-token
scales come from the fused Triton op :mod:`miras_gpu.triton.token_norms` (``--norms torch``
or ``both`` times the path that forms the states with torch instead). ``--link-at token,chunk``
adds rows for Moneta and Memora with the link applied at chunk starts only (Sec 5.4's chunk
form, ``link_at="chunk"``), which read in the dual form of an identity link.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import _common
import numpy as np
import torch
from _common import make_inputs, timed, titans_passes

import miras_gpu
from miras_gpu.torch import chunked as torch_chunked
from miras_gpu.torch import retention as torch_retention
from miras_gpu.torch.chunked import has_fast_read, softmax_reads_apply
from miras_ref import zoo

MODELS = ("moneta", "yaad", "memora")
DEFAULT_NORM_BLOCK = torch_chunked.NORM_BLOCK
FULL = dict(B=4, T=4096, H=16, D=64, expansion=4, chunk=64)
SMALL = dict(B=1, T=128, H=2, D=16, expansion=2, chunk=16)


@dataclasses.dataclass
class Row:
    name: str
    mode: str  # "fwd" or "fwd+bwd"
    seconds: float | None
    tokens: int
    peak_bytes: int | None
    note: str = ""

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.seconds is None else self.tokens / self.seconds


def bench_miras(model, size, device, dtype, args, compiled=False, fused=None,
                norm_block="default", fused_reads=None, link_at="token") -> list[Row]:
    """``compiled``: False (eager) or an inductor mode for ``compile_chunks``; ``fused``:
    :data:`miras_gpu.torch.chunked.FUSED_POWER_SUMS` for this row (``False``: Moneta's
    per-token norms from states formed by torch); ``norm_block``:
    :data:`miras_gpu.torch.chunked.NORM_BLOCK` for this row (``"default"``: the module's);
    ``fused_reads``: :data:`miras_gpu.torch.chunked.FUSED_SOFTMAX_READS` (``False``: Memora's
    reads from states formed by torch); ``link_at``: the configuration's
    :attr:`~miras_ref.config.MirasConfig.link_at`."""
    cfg = dataclasses.replace(zoo.get(model, size["D"], expansion=size["expansion"]),
                              link_at=link_at)
    torch_chunked.FUSED_POWER_SUMS = fused
    torch_chunked.FUSED_SOFTMAX_READS = fused_reads
    torch_chunked.NORM_BLOCK = DEFAULT_NORM_BLOCK if norm_block == "default" else norm_block
    label = f"miras torch {model}" + (f" (compiled, {compiled})" if compiled else "")
    if link_at != "token":
        label += f" [link at {link_at}]"
    if fused is False:
        label += " [norms: torch]"
    if fused_reads is False:
        label += " [reads: torch]"
    elif norm_block != "default":
        label += f" [norm block {norm_block}]"
    if all(size is not s for s in (FULL, SMALL)):
        label += f" [B=1, T={size['T']}]"
    q, k, v, gates = make_inputs(cfg, size, device, dtype)
    tokens = size["B"] * size["T"]
    # per-token states are kept unless the reads are in the dual form or fused
    keeps_states = not (has_fast_read(cfg) or softmax_reads_apply(cfg, device))
    ckpt = {"on": True, "off": False, "auto": keeps_states}[args.checkpoint]
    if compiled == "reduce-overhead":  # CUDA graphs cannot be replayed by a recomputation
        ckpt = False
    op = miras_gpu.scan_chunked
    rows = []

    def fwd():
        with torch.no_grad():
            op(cfg, q, k, v, gates, chunk_size=size["chunk"], backend="torch",
               compile_chunks=compiled)

    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    gleaves = {n: a.detach().clone().requires_grad_(True) for n, a in gates.items()}

    def fwd_bwd(check=False):
        y, _ = op(cfg, *leaves, gleaves, chunk_size=size["chunk"], backend="torch",
                  checkpoint=ckpt, compile_chunks=compiled)
        y.float().square().mean().backward()
        grads = [x.grad for x in (*leaves, *gleaves.values())]
        finite = check and all(bool(torch.isfinite(g).all()) for g in grads)
        for x in (*leaves, *gleaves.values()):
            x.grad = None
        return finite

    for mode, fn, note in (("fwd", fwd, ""), ("fwd+bwd", fwd_bwd,
                                               "checkpoint" if ckpt else "")):
        sec, peak, failure = timed(fn, device, args.warmup, args.iters)
        if mode == "fwd+bwd" and not failure and not fwd_bwd(check=True):
            note = ", ".join(filter(None, [note, "NON-FINITE gradients"]))
        rows.append(Row(label, mode, sec, tokens, peak, failure or note))
        print(_fmt_row(rows[-1]), flush=True)
    if compiled:  # free the compiled graphs (and their CUDA-graph pools) before the next row
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_titans(size, device, dtype, args) -> list[Row] | str:
    """titans-pytorch's NeuralMemory on the same tokens, or a note why it did not run."""
    try:
        fwd, fwd_bwd = titans_passes(size, device, dtype)
    except ImportError as err:
        return f"titans-pytorch is not installed ({err}); peer skipped"
    tokens = size["B"] * size["T"]
    rows = []

    for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        sec, peak, note = timed(fn, device, args.warmup, args.iters)
        rows.append(Row("titans-pytorch NeuralMemory", mode, sec, tokens, peak, note))
        print(_fmt_row(rows[-1]), flush=True)
    return rows


def _fmt_row(r: Row) -> str:
    if r.seconds is None:
        return f"{r.name:32s} {r.mode:8s} {'-':>12s} {r.note}"
    peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**30:.2f} GiB"
    return (f"{r.name:32s} {r.mode:8s} {r.seconds * 1e3:10.2f} ms {r.tokens_per_s:12.0f} tok/s "
            f"peak {peak} {r.note}")


def markdown(rows: list[Row], peer_note: str | None, env: dict, size: dict) -> str:
    peer = {r.mode: r for r in rows if r.name.startswith("titans") and r.seconds}
    lines = _common.report_head("# torch backend benchmark", "benchmarks/bench_torch_backend.py",
                                env)
    lines += [f"| sizes | B={size['B']}, T={size['T']}, H={size['H']}, D={size['D']}, "
              f"expansion {size['expansion']}, chunk {size['chunk']} |", ""]
    if peer_note:
        lines += [f"Peer: {peer_note}.", ""]
    lines += ["| implementation | pass | ms | tokens/s | peak memory | speed vs titans | note |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r.seconds is None:
            lines.append(f"| {r.name} | {r.mode} | - | - | - | - | {r.note} |")
            continue
        peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**30:.2f} GiB"
        same = r.mode in peer and peer[r.mode].tokens == r.tokens
        ratio = f"{peer[r.mode].seconds / r.seconds:.2f}x" if same else "-"
        lines.append(f"| {r.name} | {r.mode} | {r.seconds * 1e3:.2f} | {r.tokens_per_s:.0f} | "
                     f"{peak} | {ratio} | {r.note} |")
    lines += ["", "`speed vs titans` is titans-pytorch's time divided by this row's time "
              "(above 1: faster than the peer)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results as Markdown here")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--checkpoint", default="auto", choices=["auto", "on", "off"],
                        help="recompute chunks in the backward (auto: for non-identity links)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--compile", nargs="?", const="default", default="",
                        help="also time compile_chunks with these comma-separated inductor "
                             "modes (default: 'default'; e.g. default,reduce-overhead)")
    parser.add_argument("--no-peer", action="store_true", help="skip titans-pytorch")
    parser.add_argument("--norms", default="fused", choices=["fused", "torch", "both"],
                        help="Moneta's per-token Σ|Z_t|^q: the fused Triton op (default on "
                             "CUDA), torch (states formed), or rows for both")
    parser.add_argument("--softmax-reads", default="fused", choices=["fused", "torch", "both"],
                        help="Memora's per-token reads: the fused Triton op (default on "
                             "CUDA), torch (states formed), or rows for both")
    parser.add_argument("--norm-blocks", default="",
                        help="also time Moneta's fused norms with these comma-separated "
                             "blocks of tokens (chunked.NORM_BLOCK; 'none': one block per "
                             "chunk), in the --compile modes")
    parser.add_argument("--link-at", default="token",
                        help="comma-separated link_at values of the configurations: 'token' "
                             "(ψ at every read), 'chunk' (ψ at chunk starts only, Sec 5.4; "
                             "rows for the models with a non-identity link)")
    parser.add_argument("--tf32", action="store_true",
                        help="float32 matmuls on TF32 tensor cores (as `miras train` runs)")
    parser.add_argument("--long", default="",
                        help="also run B=1 at these comma-separated sequence lengths (e.g. "
                             "16384,65536), every chunk recomputed in the backward "
                             "(checkpoint), one timed run after one warm-up")
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.small else 2)
    args.iters = args.iters if args.iters is not None else (2 if args.small else 5)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    size = SMALL if args.small else FULL
    if device.type == "cpu" and not args.small:
        print("note: the full sizes on a CPU take very long; use --small", file=sys.stderr)

    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    norms = torch_chunked.fused_precision(dtype, device)
    env = {**_common.environment(device), "numpy": np.__version__,
           "Moneta's Σ|Z_t|^q": (f"fused Triton op ({norms} products, blocks of "
                                 f"{DEFAULT_NORM_BLOCK} tokens) unless the row says "
                                 "otherwise" if norms else "states formed by torch"),
           "Memora's reads": ("fused Triton op (float32)" if softmax_reads_apply(
               zoo.memora(8), device) else "states formed by torch") + " unless the row "
                                                                       "says otherwise",
           "input dtype": args.dtype, "float32 matmuls": "tf32" if args.tf32 else "ieee",
           "mean η (x U[0.5, 1.5])": ", ".join(f"{m} {e:g}" for m, e in _common.ETA.items())
                                     + ", others the config's (benchmarks/_common.py)",
           "timing": f"median of {args.iters} after {args.warmup} "
                                                 "warm-up runs"}
    print(" | ".join(f"{k}: {v}" for k, v in env.items()))
    rows = []
    choice = {"fused": [None], "torch": [False], "both": [None, False]}
    models = args.models.split(",")
    # before any row sets the switch: where the fused softmax reads run by default
    softmax_models = {m for m in models if softmax_reads_apply(zoo.get(m, 8), device)}
    for model in models:
        cfg = zoo.get(model, 8)
        scalar = torch_retention.scalar_link(cfg.retention) is not None
        softmax = model in softmax_models
        for fused in choice[args.norms] if scalar else [None]:
            for reads in choice[args.softmax_reads] if softmax else [None]:
                rows += bench_miras(model, size, device, dtype, args, fused=fused,
                                    fused_reads=reads)
                for mode in filter(None, args.compile.split(",")):
                    rows += bench_miras(model, size, device, dtype, args, compiled=mode,
                                        fused=fused, fused_reads=reads)
        identity = torch_retention.ops_for(cfg.retention).identity_link
        for link_at in filter(lambda a: a != "token" and not identity, args.link_at.split(",")):
            rows += bench_miras(model, size, device, dtype, args, link_at=link_at)
            for mode in filter(None, args.compile.split(",")):
                rows += bench_miras(model, size, device, dtype, args, compiled=mode,
                                    link_at=link_at)
        for block in filter(None, args.norm_blocks.split(",")) if scalar else []:
            block = None if block == "none" else int(block)
            for mode in filter(None, args.compile.split(",")):
                rows += bench_miras(model, size, device, dtype, args, compiled=mode,
                                    norm_block=block)
    long_args = argparse.Namespace(**{**vars(args), "warmup": 1, "iters": 1,
                                      "checkpoint": "on"})
    for T in (int(t) for t in filter(None, args.long.split(","))):
        for model in args.models.split(","):
            rows += bench_miras(model, dict(size, B=1, T=T), device, dtype, long_args)
    peer_note = "skipped (--no-peer)" if args.no_peer else None
    if not args.no_peer:
        peer = bench_titans(size, device, dtype, args)
        if isinstance(peer, str):
            peer_note = peer
            print(f"note: {peer}")
        else:
            rows += peer
            peer_note = ("titans-pytorch NeuralMemory(dim=H*D, heads=H, dim_head=D, "
                         "chunk_size=chunk, momentum=False) under bf16 autocast")
    peer = {r.mode: r for r in rows if r.name.startswith("titans") and r.seconds}
    for r in rows:
        if (r.mode in peer and r.seconds and not r.name.startswith("titans")
                and peer[r.mode].tokens == r.tokens):
            print(f"{r.name} {r.mode}: {peer[r.mode].seconds / r.seconds:.2f}x titans speed")
    if args.out:
        _common.write_report(args.out, markdown(rows, peer_note, env, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
