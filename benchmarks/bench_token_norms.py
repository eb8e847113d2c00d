"""Time the fused per-token norms of Moneta's link next to forming the states with torch.

One chunk of one weight matrix at the reference sizes of docs (``N = B·H = 64`` heads and
sequences, ``C = 64`` tokens, a ``256 x 64`` and a ``64 x 256`` state, ``q = 4``): the sums
``n_t = Σ|Z_t|^q`` of ``Z_t = d_t Z0 - Σ_{i<=t} m[t, i] l_i r_i^T`` (Eq 29), forward and
forward+backward, by

* ``miras_gpu.triton.token_norms.token_power_sums`` at each ``tl.dot`` precision, and
* torch: the states formed by one batched product (``einsum``) and reduced, as the torch
  backend does without the op,

in one process on one device, with each result's relative error against float64 autograd of
the formed states. Prints the table and writes it as Markdown to ``--out``.

    python benchmarks/bench_token_norms.py --out reports/bench_token_norms_h200.md   # GPU
    TRITON_INTERPRET=1 python benchmarks/bench_token_norms.py --small --iters 1      # CPU
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import environment, report_head, time_fn, write_report

from miras_gpu.triton.token_norms import PRECISIONS, token_power_sums


def formed_states(z0, decay, mask, left, right, q):
    """``Σ|Z_t|^q`` with every ``Z_t [N, C, R, S]`` formed (the reference of the op)."""
    z = decay[..., None, None] * z0[:, None] - torch.einsum("nti,nir,nis->ntrs", mask, left,
                                                            right)
    return (z.abs() ** q).sum((-2, -1))


def inputs(N, C, R, S, device, dtype=torch.float32, seed=0):
    """``z0, decay, mask, left, right`` at the scales of a Moneta chunk (η ≈ 0.05)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    z0 = torch.randn(N, R, S, generator=g)
    decay = torch.rand(N, C, generator=g)
    mask = (0.05 * torch.rand(N, C, C, generator=g)).tril()
    left, right = 0.1 * torch.randn(N, C, R, generator=g), 0.1 * torch.randn(N, C, S, generator=g)
    return [x.to(device, dtype).requires_grad_(True) for x in (z0, decay, mask, left, right)]


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def bench_shape(N, C, R, S, device, args) -> list[str]:
    """The table rows of one state shape ``R x S``: every precision of the op, then torch."""
    x = inputs(N, C, R, S, device)
    gold_in = [t.detach().double().requires_grad_(True) for t in x]
    gold = formed_states(*gold_in, args.q)
    cot = torch.randn(gold.shape, generator=torch.Generator().manual_seed(1),
                      dtype=torch.float64).to(device)
    gold_g = torch.autograd.grad(gold, gold_in, cot)
    impls = {f"fused op ({p})": lambda *a, p=p: token_power_sums(*a, args.q, p)
             for p in PRECISIONS}
    impls["torch, states formed"] = lambda *a: formed_states(*a, args.q)
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
    return [f"| {R}x{S} | {label} | {t_fwd * 1e3:.3f} | {t_bwd * 1e3:.3f} | {base / t_bwd:.2f}x "
            f"| {err:.1e} | {gerr:.1e} |" for label, t_fwd, t_bwd, err, gerr in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results as Markdown here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("-q", type=float, default=4.0)
    parser.add_argument("--small", action="store_true",
                        help="tiny sizes (a CPU smoke test under TRITON_INTERPRET=1)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda":
        print("note: without a GPU the op runs only in Triton's interpreter "
              "(TRITON_INTERPRET=1), far too slowly to time", file=sys.stderr)
    env = {**environment(device), "timing": f"median of {args.iters} after 2 warm-up runs",
           "q": f"{args.q:g}"}
    print(" | ".join(f"{k}: {v}" for k, v in env.items()))
    lines = report_head("# Moneta's per-token norms: fused op against formed states",
                        "benchmarks/bench_token_norms.py", env)
    lines += ["", "| state | implementation | fwd ms | fwd+bwd ms | speed vs formed (fwd+bwd) "
              "| sums error | gradients error (max) |", "| --- | --- | --- | --- | --- | --- | "
              "--- |"]
    N, C, shapes = (2, 16, ((32, 16), (16, 32))) if args.small else (64, 64,
                                                                   ((256, 64), (64, 256)))
    for R, S in shapes:
        for line in bench_shape(N, C, R, S, device, args):
            print(line, flush=True)
            lines.append(line)
    lines += ["", f"One chunk (N = B·H = {N}, C = {C}) of one weight matrix; errors are "
              "relative in norm against float64 autograd of the formed states."]
    if args.out:
        write_report(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
