"""Time the fused per-token ops of Moneta and Memora next to forming the states with torch.

One chunk of one weight matrix at the reference sizes of docs (``N = B·H = 64`` heads and
sequences, ``C = 64`` tokens, a ``256 x 64`` and a ``64 x 256`` state), forward and
forward+backward, for every token's state ``Z_t = d_t Z0 - Σ_{i<=t} m[t, i] l_i r_i^T``
(Eq 29):

* Moneta's sums ``n_t = Σ|Z_t|^q`` (``q = 4``) by ``miras_gpu.triton.token_norms``;
* Memora's row-softmax reads ``y_t = softmax(Z_t) x_t`` by ``miras_gpu.triton.token_softmax``;

each at every ``tl.dot`` precision, and by torch: the states formed by one batched product
(``einsum``) and reduced, as the torch backend does without the ops,

in one process on one device, with each result's relative error against float64 autograd of
the formed states. Prints the table and writes it as Markdown to ``--out``.

    python benchmarks/bench_token_ops.py --out reports/bench_token_ops_h200.md   # GPU
    TRITON_INTERPRET=1 python benchmarks/bench_token_ops.py --small --iters 1      # CPU
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch
from _common import time_fn

from miras_gpu.triton.token_norms import PRECISIONS, token_power_sums
from miras_gpu.triton.token_softmax import token_softmax_read


def states(z0, decay, mask, left, right):
    """Every token's state ``Z_t [N, C, R, S]`` (Eq 29)."""
    return decay[..., None, None] * z0[:, None] - torch.einsum("nti,nir,nis->ntrs", mask, left,
                                                               right)


def formed_norms(z0, decay, mask, left, right, q=4.0):
    """``Σ|Z_t|^q`` from the formed states (the reference of the norms op)."""
    return (states(z0, decay, mask, left, right).abs() ** q).sum((-2, -1))


def formed_softmax_reads(z0, decay, mask, left, right, x):
    """``softmax(Z_t) x_t`` (rows) from the formed states (the reference of the softmax op)."""
    return (torch.softmax(states(z0, decay, mask, left, right), -1) * x[:, :, None]).sum(-1)


#: name: (the fused op at a precision, the formed-states reference, takes x)
OPS = {"Moneta Σ|Z_t|^4": (lambda *a, p: token_power_sums(*a, 4.0, p), formed_norms, False),
       "Memora softmax read": (lambda *a, p: token_softmax_read(*a, p), formed_softmax_reads,
                               True)}


def inputs(N, C, R, S, device, with_x, dtype=torch.float32, seed=0):
    """``z0, decay, mask, left, right`` (and ``x``) at the scales of a chunk (η ≈ 0.05)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    z0 = torch.randn(N, R, S, generator=g)
    decay = torch.rand(N, C, generator=g)
    mask = (0.05 * torch.rand(N, C, C, generator=g)).tril()
    left, right = 0.1 * torch.randn(N, C, R, generator=g), 0.1 * torch.randn(N, C, S, generator=g)
    x = [torch.randn(N, C, S, generator=g)] if with_x else []
    return [t.to(device, dtype).requires_grad_(True) for t in (z0, decay, mask, left, right, *x)]


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def bench_shape(N, C, R, S, device, args, name) -> list[str]:
    """The table rows of op ``name`` and one state shape ``R x S``: every precision of the
    op, then torch."""
    fused, formed, with_x = OPS[name]
    x = inputs(N, C, R, S, device, with_x)
    gold_in = [t.detach().double().requires_grad_(True) for t in x]
    gold = formed(*gold_in)
    cot = torch.randn(gold.shape, generator=torch.Generator().manual_seed(1),
                      dtype=torch.float64).to(device)
    gold_g = torch.autograd.grad(gold, gold_in, cot)
    impls = {f"fused op ({p})": lambda *a, p=p: fused(*a, p=p) for p in PRECISIONS}
    impls["torch, states formed"] = formed
    rows = []
    for label, fn in impls.items():
        grads = torch.autograd.grad(out := fn(*x), x, cot.float())
        err = rel(out, gold)
        gerr = max(rel(a, b) for a, b in zip(grads, gold_g))
        with torch.no_grad():
            t_fwd, _ = time_fn(lambda: fn(*x), device, 2, args.iters)  # noqa: B023
        t_bwd, _ = time_fn(lambda: torch.autograd.grad(fn(*x), x, cot.float()),  # noqa: B023
                           device, 2, args.iters)
        rows.append((label, t_fwd, t_bwd, err, gerr))
    base = rows[-1][2]
    return [f"| {name} | {R}x{S} | {label} | {t_fwd * 1e3:.3f} | {t_bwd * 1e3:.3f} | "
            f"{base / t_bwd:.2f}x | {err:.1e} | {gerr:.1e} |"
            for label, t_fwd, t_bwd, err, gerr in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results as Markdown here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--small", action="store_true",
                        help="tiny sizes (a CPU smoke test under TRITON_INTERPRET=1)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda":
        print("note: without a GPU the op runs only in Triton's interpreter "
              "(TRITON_INTERPRET=1), far too slowly to time", file=sys.stderr)
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    env = {"device": f"{device} ({name})", "torch": torch.__version__,
           "triton": triton.__version__, "python": platform.python_version(),
           "timing": f"median of {args.iters} after 2 warm-up runs"}
    print(" | ".join(f"{k}: {v}" for k, v in env.items()))
    lines = ["# Per-token ops: fused Triton ops against formed states", "",
             "Written by `benchmarks/bench_token_ops.py`; all rows ran in one process on one "
             "device.", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += ["", "| op | state | implementation | fwd ms | fwd+bwd ms | speed vs formed "
              "(fwd+bwd) | output error | gradients error (max) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    N, C, shapes = (2, 16, ((32, 16), (16, 32))) if args.small else (64, 64,
                                                                   ((256, 64), (64, 256)))
    for name in OPS:
        for R, S in shapes:
            for line in bench_shape(N, C, R, S, device, args, name):
                print(line, flush=True)
                lines.append(line)
    lines += ["", f"One chunk (N = B·H = {N}, C = {C}) of one weight matrix; errors are "
              "relative in norm against float64 autograd of the formed states."]
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
