"""Check and time the Triton kernels of miras_gpu on a CUDA GPU; write a Markdown report.

    PYTHONPATH=. python scripts/gpu_kernels_check.py --report kernels_report.md

Sections (the report is rewritten after each one, so a run cut short still leaves one):

1. **Correctness** on the GPU, float32 and bfloat16: the triton backend against the torch
   backend in float64 (outputs, final states and every input gradient, by autograd) and
   miras_ref (outputs and final states): the benchmark's models in bf16 at D=64, chunk 64,
   T=150 (a partial last chunk), every configuration of tests/test_triton.py in float32 at
   the test size (D=16, chunk 16, T=37), then, while time allows, all of them at D=64 and a
   few at D=128. Every buffer of the
   backend is allocated filled with NaN, so a pass proves each element was written.
   float32: relative error ``‖mine - gold‖ / ‖gold‖ <= 1e-5`` (MLP memories: at most 3x the
   torch backend's own float32 error on the same inputs, at least 1e-5). bfloat16: relative
   RMS error ``rms(mine - gold) / rms(gold) <= 2e-2`` against float64 on the same
   bf16-rounded inputs.
2. **Stress**: T=65536 with value outliers (1% of tokens x30) and the ℓp bias at p=4
   (Moneta's MLP with ℓq, the MLP with ℓ2 retention, a matrix memory with ℓq), bf16,
   forward+backward: no NaN/inf wherever the exact (float64) result is inside float32's
   range.
3. **Benchmark**: benchmarks/bench_kernels.py at B=4, T=4096, H=16, D=64, expansion 4,
   chunk 64, bf16, with its T-scaling sweep at B=1.

``--budget`` (seconds, default 540) bounds the whole run: optional parts are skipped, and
said so in the report, once it is spent (Triton compiles each kernel variant on first use,
which takes most of the first minutes).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import traceback
import warnings
import zlib

if "--dry-run" in sys.argv:  # CPU smoke test of this script: Triton's interpreter
    os.environ["TRITON_INTERPRET"] = "1"

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import miras_ref  # noqa: E402
from miras_gpu import torch as torch_ops  # noqa: E402
from miras_gpu import triton as triton_ops  # noqa: E402
from miras_gpu.conformance import MAX_DRAWS, PROBE_SHARE  # noqa: E402
from miras_gpu.triton import chunked as tchunked  # noqa: E402
from miras_gpu.triton.cases import (  # noqa: E402
    float32_conditioning,
    gd_config,
    kernel_cases,
    kernel_inputs,
)
from miras_ref import zoo  # noqa: E402
from miras_ref.bias import LpBias  # noqa: E402
from miras_ref.memory import MatrixMemory, MLPMemory  # noqa: E402
from miras_ref.retention import L2Retention, LqRetention  # noqa: E402

FP32_TOL = 1e-5
BF16_TOL = 2e-2


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel(mine, gold) -> float:
    """``‖mine - gold‖ / ‖gold‖`` (= rms(mine - gold) / rms(gold)); inf if mine is not
    finite."""
    mine, gold = mine.detach().double(), gold.detach().double()
    if not torch.isfinite(mine).all():
        return float("inf")
    den = gold.norm().item()
    return (mine - gold).norm().item() / (den if den > 0 else 1.0)


def _grads(op, cfg, q, k, v, gates, init, dtype, chunk, cot_seed, **kw):
    """Run ``op`` on leaves of ``dtype``; return ``(y, final, grads by name)``."""
    names = ["q", "k", "v", *gates, *[f"init[{n}]" for n in init]]
    qkv = [x.detach().to(dtype).requires_grad_(True) for x in (q, k, v)]
    gl = {n: a.detach().to(torch.float64 if dtype == torch.float64 else torch.float32)
          .requires_grad_(True) for n, a in gates.items()}
    il = {n: a.detach().to(torch.float64 if dtype == torch.float64 else torch.float32)
          .requires_grad_(True) for n, a in init.items()}
    y, final = op(cfg, *qkv, gl, chunk_size=chunk, initial_state=il, output_final_state=True,
                  **kw)
    g = torch.Generator(device="cpu").manual_seed(cot_seed)
    cots = [torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device, y.dtype)]
    cots += [torch.randn(a.shape, generator=g, dtype=torch.float64).to(a.device, a.dtype)
             for a in final.values()]
    leaves = [*qkv, *gl.values(), *il.values()]
    grads = torch.autograd.grad([y, *final.values()], leaves, cots)
    return y, final, dict(zip(names, grads))


def _float32_bound(cfg, q, k, v, gates, init, chunk, gold) -> float:
    """The float32 bound: :data:`FP32_TOL`; for MLP memories, whose float32 is ill-conditioned
    (LayerNorm, softmax logits, tanh(10 e)), 3x the torch backend's own float32 error against
    ``gold`` (its float64 ``(y, final, grads)``), at least :data:`FP32_TOL`."""
    if isinstance(cfg.memory, MatrixMemory):
        return FP32_TOL
    gy, gf, gg = gold
    ty, tf, tg = _grads(torch_ops.scan_chunked, cfg, q, k, v, gates, init, torch.float32,
                        chunk, 5)
    worst = max([rel(ty, gy)] + [rel(tf[n], gf[n]) for n in gf]
                + [rel(tg[n], gg[n]) for n in gg])
    return max(FP32_TOL, 3 * worst)


def check_case(name, cfg, cw, dtype, size, device, dot_precision=None, cw_gates=False,
               backward="auto", hidden_split=None):
    """One configuration at one dtype (and, optionally, one ``tl.dot`` precision of the triton
    backend; ``cw_gates``: channel-wise η, α): the errors and whether they pass.

    float32 follows the conformance suite's policy: inputs on which float32 round-off alone
    could move the float64 results by a quarter of the bound
    (:func:`~miras_gpu.triton.cases.float32_conditioning`) are drawn again from another seed,
    at most ``MAX_DRAWS`` times; the row names the redrawn seeds."""
    b, t, h, chunk = size
    redrawn = []
    for draw in range(MAX_DRAWS):
        seed = zlib.crc32(name.encode()) % 1000 + 7919 * draw
        q, k, v, gates, init = kernel_inputs(cfg, t, cw, seed=seed, b=b, h=h, device=device,
                                             cw_gates=cw_gates)
        if dtype == torch.bfloat16:  # gold sees the same bf16-rounded inputs
            q, k, v = (x.to(torch.bfloat16).double() for x in (q, k, v))
        gold = _grads(torch_ops.scan_chunked, cfg, q, k, v, gates, init, torch.float64,
                      chunk, 5)
        if dtype != torch.float32:
            break
        tol_out = tol_grad = _float32_bound(cfg, q, k, v, gates, init, chunk, gold)
        if draw == MAX_DRAWS - 1:
            break
        probe = float32_conditioning(cfg, q, k, v, gates, init, chunk)
        if probe <= PROBE_SHARE * tol_out:
            break
        redrawn.append(f"seed {seed}: round-off could move results by {probe:.1e}")
    gy, gf, gg = gold
    t0 = time.perf_counter()
    kw = {"backward": backward}
    if dot_precision is not None:
        kw["dot_precision"] = dot_precision
    if hidden_split is not None:
        kw["hidden_split"] = hidden_split
    tchunked._noted.clear()  # every fallback of this case is noted, not only a first one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", triton_ops.TritonFallbackWarning)
        my, mf, mg = _grads(triton_ops.scan_chunked, cfg, q, k, v, gates, init, dtype, chunk,
                            5, **kw)
        _sync(device)
    fallbacks = [str(w.message) for w in caught
                 if issubclass(w.category, triton_ops.TritonFallbackWarning)]
    secs = time.perf_counter() - t0
    errs = {"y": rel(my, gy)}
    errs.update({f"state {n}": rel(mf[n], gf[n]) for n in gf})
    grad_errs = {f"d{n}": rel(mg[n], gg[n]) for n in gg}
    ref_errs = {}
    if dtype == torch.float32:
        ry, rf = miras_ref.scan_chunked(
            cfg, q.cpu().numpy(), k.cpu().numpy(), v.cpu().numpy(),
            {n: a.cpu().numpy() for n, a in gates.items()}, chunk,
            {n: a.cpu().numpy() for n, a in init.items()}, True)
        ref_errs["y vs miras_ref"] = rel(my.cpu(), torch.as_tensor(ry))
        ref_errs.update({f"state {n} vs miras_ref": rel(mf[n].cpu(), torch.as_tensor(rf[n]))
                         for n in rf})
    else:
        tol_out = tol_grad = BF16_TOL
    ok = (all(e <= tol_out for e in {**errs, **ref_errs}.values())
          and all(e <= tol_grad for e in grad_errs.values()))
    worst_out = max({**errs, **ref_errs}.values())
    worst_grad = max(grad_errs.values())
    worst_name = max(grad_errs, key=grad_errs.get)
    plan = triton_ops.plan_for(cfg)
    backward = "triton" if plan.backward_kernels(backward, cw_gates) else "torch recompute"
    if fallbacks:  # e.g. a kernel that does not fit the device: the row says so
        backward += " (fell back: " + "; ".join(fallbacks) + ")"
    return dict(name=name, dtype=str(dtype).replace("torch.", ""), size=size, d=cfg.memory.d_k,
                ok=ok, worst_out=worst_out, worst_grad=worst_grad, worst_grad_name=worst_name,
                tol_out=tol_out, tol_grad=tol_grad, seconds=secs,
                backward=backward, redrawn=redrawn,
                detail={**errs, **ref_errs, **grad_errs})


# --------------------------------------------------------------------------------------------
# report


class Report:
    def __init__(self, path):
        self.path = path
        self.sections: list[str] = []
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, text: str):
        self.sections.append(text)
        self.write()

    def write(self):
        if not self.path:
            return
        with open(self.path, "w") as f:
            f.write("\n".join(self.sections) + "\n")


def env_section(device) -> str:
    import triton

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev = (f"{props.name} (sm_{props.major}{props.minor}, "
               f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)")
    else:
        dev = f"{device} (dry run: Triton interpreter)"
    rows = {
        "device": dev,
        "torch": torch.__version__, "triton": triton.__version__,
        "CUDA (torch)": torch.version.cuda, "python": platform.python_version(),
        "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    lines = ["# Triton kernels: GPU check report", "",
             "Written by `scripts/gpu_kernels_check.py` (see its docstring and "
             "docs/kernels.md).", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines) + "\n"


def correctness_table(results, title) -> str:
    lines = [f"## {title}", "",
             "Errors are relative in norm against the torch backend in float64 (and miras_ref "
             "for outputs/final states in float32); `out` is the worst of the output and final "
             "states, `grad` the worst input gradient (named).", "",
             "| case | dtype | D | (B, T, H, chunk) | backward | out err | grad err (worst) | "
             "bounds (out / grad) | first call s | result |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['dtype']} | {r.get('d', '')} | {r.get('size', '')}"
                         f" | | | | | | ERROR: {r['error']} |")
            continue
        lines.append(
            f"| {r['name']} | {r['dtype']} | {r['d']} | {r['size']} | {r['backward']} | "
            f"{r['worst_out']:.2e} | {r['worst_grad']:.2e} ({r['worst_grad_name']}) | "
            f"{r['tol_out']:.0e} / {r['tol_grad']:.1e} | {r['seconds']:.1f} | "
            f"{'pass' if r['ok'] else 'FAIL'}"
            + (f" (inputs redrawn; {'; '.join(r['redrawn'])})" if r.get("redrawn") else "")
            + " |")
    n_ok = sum(1 for r in results if r.get("ok"))
    lines += ["", f"{n_ok} of {len(results)} passed.", ""]
    return "\n".join(lines)


def run_correctness(report, device, budget, dry_run=False, cw_gates=False, cases=None,
                    dot_precision=None, backward="auto"):
    """The plan below, each part while the budget lasts (skipped cases are reported);
    ``cw_gates``: every case with channel-wise η, α; ``cases``: only these case names;
    ``dot_precision``, ``backward``: passed to every call."""
    bench = ("deltanet", "gated_deltanet", "yaad", "moneta", "memora", "moneta_chunk",
             "memora_chunk")
    rest = ("huber_smooth_cw", "lq_simplified", "kl_all_lag")
    d64 = "D=64, chunk 64, T=150 (partial last chunk)"
    d128 = "D=128, chunk 64, T=100"
    # (title, D, (B, T, H, chunk), dtype, cases or None for all), in order of value per
    # compile-second: the benchmark's variants first (the benchmark reuses them), then every
    # case at the test size (16-wide tiles compile fast), then the larger sizes
    plan = [
        (d64, 64, (1, 150, 2, 64), torch.bfloat16, bench),
        ("test size: D=16, chunk 16, T=37", 16, (1, 37, 2, 16), torch.float32, None),
        (d64, 64, (1, 150, 2, 64), torch.float32, None),
        (d64, 64, (1, 150, 2, 64), torch.bfloat16, rest),
        (d128, 128, (1, 100, 2, 64), torch.float32, ("gated_deltanet", "yaad", "moneta")),
        (d128, 128, (1, 100, 2, 64), torch.bfloat16, ("gated_deltanet", "yaad", "moneta")),
    ]
    if dry_run:
        plan = [("dry run: D=16, chunk 16, T=20", 16, (1, 20, 1, 16), torch.float32,
                 ("gated_deltanet", "huber_smooth_cw", "kl_all_lag", "yaad"))]
    all_results, failed = [], 0
    tchunked.POISON_BUFFERS = True
    try:
        for title, d, size, dtype, only in plan:
            results = []
            for name, (cfg, cw) in kernel_cases(d).items():
                if (only is not None and name not in only) or (cases and name not in cases):
                    continue
                if report.elapsed() > budget:
                    results.append(dict(name=name, dtype=str(dtype), d=d, size=size,
                                        error="skipped (time budget)"))
                    continue
                try:
                    r = check_case(name, cfg, cw, dtype, size, device, dot_precision,
                                   cw_gates=cw_gates, backward=backward)
                except Exception as exc:
                    traceback.print_exc()
                    r = dict(name=name, dtype=str(dtype), d=d, size=size,
                             error=f"{type(exc).__name__}: {str(exc)[:200]}")
                results.append(r)
                status = ("skipped" if "error" in r and "skipped" in r["error"] else
                          "ERROR" if "error" in r else ("pass" if r["ok"] else "FAIL"))
                print(f"[{report.elapsed():6.0f}s] {title} {dtype} {name}: {status}",
                      flush=True)
            failed += sum(1 for r in results if not r.get("ok") and
                          "skipped" not in r.get("error", ""))
            all_results += results
            gates = ", channel-wise η, α" if cw_gates else ""
            report.add(correctness_table(
                results, f"Correctness: {title}, {str(dtype).replace('torch.', '')}{gates}"))
    finally:
        tchunked.POISON_BUFFERS = False
    return failed


#: the largest float32 (and bfloat16) value: an exact result beyond it cannot be finite there
FLOAT32_MAX = float(torch.finfo(torch.float32).max)

#: the stress rows: (name, config at head dim d, η range): Moneta's q=4 link at its stress
#: learning rate, and the ℓp(p=4) bias on the MLP kernels with ℓ2 retention and on the matrix
#: kernels with ℓq retention
STRESS = (
    ("moneta(p=4, q=4), MLP", lambda d: zoo.moneta(d, p=4.0), (0.005, 0.015)),
    ("MLP ℓp(p=4) + ℓ2", lambda d: gd_config(MLPMemory(d, 4), LpBias(4.0), L2Retention()),
     (1e-7, 3e-7)),
    ("matrix ℓp(p=4) + ℓq(q=4)", lambda d: gd_config(MatrixMemory(d, d), LpBias(4.0),
                                                      LqRetention(4.0)), (0.005, 0.015)),
)


def _stress_inputs(B, T, H, D, eta_range):
    """ℓ2-normalised q, k; values with 1% outliers x30; η uniform in ``eta_range``, α in
    [0.95, 1]; float32 CPU tensors from seed 0."""
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    v = torch.randn(B, T, H, D, generator=g)
    v = torch.where((torch.rand(B, T, H, generator=g) < 0.01)[..., None], 30 * v, v)
    lo, hi = eta_range
    gates = {"eta": lo + (hi - lo) * torch.rand(B, T, H, generator=g),
             "alpha": 0.95 + 0.05 * torch.rand(B, T, H, generator=g)}
    return q, k, v, gates


def _fwd_bwd(ops, cfg, qkv, gates, **kw):
    """``y``, final state and the gradients of ``mean(y²)`` with respect to q, k, v and the
    gates (leaves made here)."""
    leaves = [x.detach().requires_grad_(True) for x in qkv]
    gl = {n: a.detach().requires_grad_(True) for n, a in gates.items()}
    y, f = ops.scan_chunked(cfg, *leaves, gl, chunk_size=64, output_final_state=True, **kw)
    y.float().square().mean().backward()
    return y.detach(), f, [x.grad for x in (*leaves, *gl.values())]


def _top(tensors) -> float:
    """The largest ``|x|`` over ``tensors``; inf if any entry is NaN or inf."""
    return max((x.abs().max().item() if bool(torch.isfinite(x).all()) else math.inf)
               for x in tensors)


def stress_verdict(fwd_top: float, grad_top: float, exact_fwd: float,
                   exact_grad: float) -> tuple[bool, str]:
    """``(passed, text)`` of a stress row from the largest ``|x|`` (inf: a NaN or inf) of the
    kernel's forward (output, final state) and gradients and of the exact ones: the kernel's
    must be finite wherever the exact ones are below :data:`FLOAT32_MAX`."""
    fwd_due, grad_due = exact_fwd < FLOAT32_MAX, exact_grad < FLOAT32_MAX
    ok = ((math.isfinite(fwd_top) or not fwd_due)
          and (math.isfinite(grad_top) or not grad_due))
    text = "pass" if ok else "FAIL"
    if not fwd_due:
        text += " (exact result beyond float32: not checkable)"
    elif not grad_due:
        text += " (exact gradients beyond float32: not checkable)"
    return ok, text


def run_stress(report, device, budget, dry_run=False) -> int:
    """T=65536, outliers, p=4: outputs, final states and gradients finite wherever the exact
    (float64) ones are inside float32's range."""
    lines = ["## Stress: T=65536, value outliers, p=4", "",
             "B=1, H=4, D=64, chunk 64, bf16 inputs; 1% of the tokens have values x30; α in "
             "[0.95, 1], η uniform in the row's range. The triton backend's forward and "
             "backward (of `mean(y²)`) run next to the exact result: the torch backend in "
             "float64 on the same bf16-rounded inputs (chunk checkpoints). Pass: the forward "
             "(output, final state) and the gradients of the triton backend are finite "
             "wherever the exact ones are finite and below float32's largest value "
             f"({FLOAT32_MAX:.1e}); where they are not, no float32 or bfloat16 kernel can "
             "return them and the row says so.", "",
             "| case | η | fwd+bwd s | y, state finite | state max abs | grads finite | "
             "exact y, state max abs | exact grads max abs | result |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    failed = 0
    d = 16 if dry_run else 64
    dtype = torch.float32 if dry_run else torch.bfloat16
    B, T, H = (1, 300, 1) if dry_run else (1, 65536, 4)
    for name, make, eta_range in STRESS:
        eta_txt = f"{eta_range[0]:g}-{eta_range[1]:g}"
        if report.elapsed() > budget:
            lines.append(f"| {name} | {eta_txt} | - | - | - | - | - | - | skipped "
                         "(time budget) |")
            continue
        try:
            cfg = make(d)
            q, k, v, gates = _stress_inputs(B, T, H, d, eta_range)
            qkv = [x.to(device, dtype) for x in (q, k, v)]
            gates = {n: a.to(device) for n, a in gates.items()}
            t0 = time.perf_counter()
            y, f, grads = _fwd_bwd(triton_ops, cfg, qkv, gates)
            _sync(device)
            secs = time.perf_counter() - t0
            fwd_top, grad_top = _top([y, *f.values()]), _top(grads)
            ey, ef, egrads = _fwd_bwd(torch_ops, cfg, [x.double() for x in qkv],
                                      {n: a.double() for n, a in gates.items()},
                                      checkpoint=True)
            exact_fwd, exact_grad = _top([ey, *ef.values()]), _top(egrads)
            del ey, ef, egrads
            ok, result = stress_verdict(fwd_top, grad_top, exact_fwd, exact_grad)
            failed += not ok
            smax = max(a.abs().max().item() for a in f.values())
            lines.append(f"| {name} | {eta_txt} | {secs:.1f} | {math.isfinite(fwd_top)} | "
                         f"{smax:.3g} | {math.isfinite(grad_top)} | {exact_fwd:.3g} | "
                         f"{exact_grad:.3g} | {result} |")
        except Exception as exc:
            traceback.print_exc()
            failed += 1
            lines.append(f"| {name} | {eta_txt} | | | | | | | ERROR: {type(exc).__name__}: "
                         f"{str(exc)[:200]} |")
        print(f"[{report.elapsed():6.0f}s] stress {name}: {lines[-1]}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report.add("\n".join(lines) + "\n")
    return failed


def run_bench(report, budget, extra_args) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "benchmarks"))
    import bench_kernels

    left = budget - report.elapsed()
    if left < 30:
        report.add("## Benchmark\n\nskipped (time budget)\n")
        return
    args = bench_kernels.finish_args(bench_kernels.parser().parse_args(
        ["--time-budget", f"{left:.0f}", *extra_args]))
    # keep each sweep point inside a fraction of what is left
    args.sweep_budget = min(args.sweep_budget, max(5.0, left / 20))
    try:
        result = bench_kernels.run(args)
        report.add(bench_kernels.markdown(result, title="Benchmark"))
    except Exception as exc:
        traceback.print_exc()
        report.add(f"## Benchmark\n\nERROR: {type(exc).__name__}: {exc}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--report", required=True, help="Markdown report path")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run")
    p.add_argument("--skip", default="", help="comma list of sections to skip: "
                                               "correctness,stress,bench")
    p.add_argument("--bench-args", default="", help="extra arguments for bench_kernels.py")
    p.add_argument("--gates", default="scalar", choices=["scalar", "channel"],
                   help="η, α of the correctness cases: per token and head, or channel-wise")
    p.add_argument("--cases", default="",
                   help="comma list: run only these correctness cases (default: every case)")
    p.add_argument("--dot-precision", default=None,
                   help="'state,others' tl.dot precisions of every call (default: the "
                        "backend's choice, docs/kernels.md)")
    p.add_argument("--backward", default="auto", choices=["auto", "kernels", "torch"],
                   help="the backend's backward argument (kernels: the backward kernels "
                        "wherever they cover a case, Memora's included)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny sizes on the CPU under TRITON_INTERPRET=1 (tests this script)")
    args = p.parse_args(argv)
    cases = {c for c in args.cases.split(",") if c}
    known = set(kernel_cases(16))
    if cases - known:
        p.error(f"--cases: unknown case(s) {sorted(cases - known)}; known: {sorted(known)}")
    if args.dry_run:
        device = torch.device("cpu")
        args.bench_args = "--small --device cpu " + args.bench_args
    elif not torch.cuda.is_available():
        print("a CUDA device is needed (or --dry-run)", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    skip = set(args.skip.split(","))
    report = Report(args.report)
    report.add(env_section(device))
    failed = 0
    # correctness gets up to 45% of the budget, the stress run up to 60%, the benchmark the
    # rest; a section that runs last gets all that is left
    last = "bench" if "bench" not in skip else "stress" if "stress" not in skip else None
    if "correctness" not in skip:
        end = args.budget if last is None else 0.45 * args.budget
        prec = None if args.dot_precision is None else tuple(args.dot_precision.split(","))
        failed += run_correctness(report, device, end, args.dry_run, args.gates == "channel",
                                  cases, prec, args.backward)
    if "stress" not in skip:
        end = args.budget if last == "stress" else 0.6 * args.budget
        failed += run_stress(report, device, end, args.dry_run)
    if "bench" not in skip:
        run_bench(report, args.budget, args.bench_args.split())
    verdict = "All checks passed" if failed == 0 else f"{failed} check(s) failed"
    summary = f"## Summary\n\n{verdict}; total {report.elapsed():.0f} s.\n"
    report.add(summary)
    print(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
