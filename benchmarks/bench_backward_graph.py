"""Time the triton backend's recomputed backward as one CUDA graph next to the same
recomputation launched op by op.

Moneta and Memora (and every configuration without a backward kernel) take their gradients
from the torch recomputation of ``miras_gpu.triton.chunked`` (``_torch_backward``). On CUDA it
runs as one CUDA graph per call shape (``GRAPH_BACKWARD = True``, the default); this script
times forward+backward (``mean(y²)``, bf16 inputs, chunk 64) both ways at each ``T``, in one
process on one device, and prints the ratio and the peak memory.

    python benchmarks/bench_backward_graph.py --out reports/bench_backward_graph_h200.md  # GPU
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import environment, report_head, time_fn, write_report
from bench_kernels import miras_passes

from miras_gpu.torch.graphed import clear_graphs
from miras_gpu.triton import chunked


def measure(model: str, size: dict, device, args) -> dict:
    """Median forward+backward seconds and peak bytes of ``model``, op by op and graphed."""
    out, default = {}, chunked.GRAPH_BACKWARD
    try:
        for graph in (False, True):
            chunked.GRAPH_BACKWARD = graph
            clear_graphs()
            _, fwd_bwd = miras_passes(model, "triton", size, device, torch.bfloat16)
            out[graph] = time_fn(fwd_bwd, device, args.warmup, args.iters)
    finally:
        chunked.GRAPH_BACKWARD = default
        clear_graphs()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="moneta,memora")
    p.add_argument("--t", default="512,1024,4096", help="comma-separated sequence lengths")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3,
                   help="runs before timing (the first captures the graph)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--out", help="write the table as Markdown here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("a CUDA device is needed: the graph is a CUDA graph", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    env = environment(device)
    env["sizes"] = f"B={args.batch}, H=16, D=64, MLP expansion 4, chunk 64, bf16 inputs"
    env["timing"] = (f"forward+backward of mean(y²), median of {args.iters} after "
                     f"{args.warmup} warm-up runs (CUDA events); peak memory over all runs")
    lines = report_head("## The triton backend's recomputed backward: CUDA graph against op "
                        "by op", "benchmarks/bench_backward_graph.py", env)
    lines += ["", "| model | T | op by op ms | graph ms | speed-up | op by op peak | graph peak |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for model in args.models.split(","):
        for T in (int(t) for t in args.t.split(",")):
            size = dict(B=args.batch, T=T, H=16, D=64, expansion=4, chunk=64)
            r = measure(model, size, device, args)
            (t0, m0), (t1, m1) = r[False], r[True]
            row = (f"| {model} | {T} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | {t0 / t1:.2f}x | "
                   f"{m0 / 2**30:.2f} GiB | {m1 / 2**30:.2f} GiB |")
            print(row, flush=True)
            lines.append(row)
    if args.out:
        write_report(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
