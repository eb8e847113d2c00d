"""Where the triton backend's time goes: per-kernel device time of one model's forward and
forward+backward, for several ``tl.dot`` precisions, with each precision's error.

    PYTHONPATH=. python benchmarks/profile_kernels.py --models yaad --out profile.md

For every (model, precision): the relative RMS error of the outputs, final state and every
input gradient against the torch backend in float64 on the same bf16 inputs (D=64, chunk 64,
T=150, the check of ``scripts/gpu_kernels_check.py``), then the benchmark size (B=4, T=4096,
H=16, D=64, expansion 4, chunk 64, bf16) timed with CUDA events and profiled with
``torch.profiler``: the device time of each kernel per call. ``--num-warps`` overrides the
backend's choice of warps per program (a tuning aid); ``--hidden-splits 1,2`` profiles each
``hidden_split`` of the MLP memory's sequential kernels (default: the backend's choice).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections import defaultdict

import torch
from _common import time_fn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))

from bench_kernels import FULL, miras_passes  # noqa: E402
from gpu_kernels_check import check_case  # noqa: E402

from miras_gpu.triton import chunked as tchunked  # noqa: E402
from miras_gpu.triton.cases import kernel_cases  # noqa: E402


def kernel_times(fn, iters: int = 3) -> dict[str, float]:
    """Device milliseconds per call of every CUDA kernel that ``fn`` launches."""
    fn()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    out: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        dt = getattr(ev, "device_time_total", None)
        if dt is None:  # older torch
            dt = ev.cuda_time_total
        if dt > 0:
            out[ev.key[:60]] += dt / 1e3 / iters
    return dict(out)


def set_num_warps(n: int | None) -> None:
    if n is None:
        return
    launch = tchunked._launch

    def patched(*args, **kw):
        L = launch(*args, **kw)
        L.num_warps = n
        return L

    tchunked._launch = patched


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="yaad")
    p.add_argument("--precisions", default="ieee,tf32x3,tf32",
                   help="comma-separated; STATE/OTHERS: one for the forward state pass, one for "
                   "the other kernels; 'default': the backend's choice")
    p.add_argument("--num-warps", type=int, default=None)
    p.add_argument("--hidden-splits", default="default",
                   help="comma-separated hidden_split values ('default': the backend's)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    set_num_warps(args.num_warps)
    dev = torch.device("cuda")
    lines = [f"# Kernel profile ({torch.cuda.get_device_name()}, torch {torch.__version__}, "
             f"num_warps {args.num_warps or 'default'})", ""]

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)
        if args.out:  # rewritten each line: a run cut short still leaves its part
            with open(args.out, "w") as f:
                f.write("\n".join(lines) + "\n")

    for model in args.models.split(","):
        cfg, cw = kernel_cases(64)[model]
        for name, split in [(n, s) for n in args.precisions.split(",")
                            for s in args.hidden_splits.split(",")]:
            split = None if split == "default" else int(split)
            emit(f"## {model}, dot precision {name}, hidden_split {split or 'default'}")
            prec = tuple(name.split("/")) if "/" in name else None if name == "default" else name
            try:
                r = check_case(model, cfg, cw, torch.bfloat16, (1, 150, 2, 64), dev, prec,
                               hidden_split=split)
                worst = sorted(r["detail"].items(), key=lambda kv: -kv[1])[:4]
                emit(f"error vs float64 (bf16 inputs, T=150): out {r['worst_out']:.2e}, grad "
                     f"{r['worst_grad']:.2e} ({r['worst_grad_name']}); worst: "
                     + ", ".join(f"{n} {e:.2e}" for n, e in worst))
            except Exception:  # a precision that fails to compile or run is a finding
                emit("check failed:\n```\n" + traceback.format_exc()[-1500:] + "\n```")
                return 1
            fwd, fwd_bwd = miras_passes(model, "triton", FULL, dev, torch.bfloat16,
                                        dot_precision=prec, hidden_split=split)
            for name, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                secs, peak = time_fn(fn, dev, 1, 3)
                emit(f"- {name}: {secs * 1e3:.2f} ms, peak {peak / 2**30:.2f} GiB")
                for k, ms in sorted(kernel_times(fn).items(), key=lambda kv: -kv[1])[:6]:
                    emit(f"    - {ms:9.3f} ms  {k}")
            emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
