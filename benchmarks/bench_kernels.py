"""Time the triton backend's chunked kernels next to the torch backend and the peers.

In one process on one device, at the reference configuration of docs/kernels.md (B=4, T=4096,
H=16, D=64, MLP expansion 4, chunk 64, bf16 inputs, float32 memory state), forward and
forward+backward of ``miras_gpu.scan_chunked(..., backend="triton")`` and ``backend="torch"``
for matrix memories (DeltaNet, Gated DeltaNet in their chunked MIRAS form) and MLP memories
(Yaad, Moneta, Memora; Moneta and Memora also in Sec 5.4's chunk form, ``link_at="chunk"``,
as ``moneta_chunk``, ``memora_chunk``), and, when they are installed, titans-pytorch's
``NeuralMemory(dim=1024, heads=16, dim_head=64, chunk_size=64, momentum=False)`` (MLP memory)
and flash-linear-attention's ``chunk_delta_rule`` (matrix memory, exact delta rule). Prints
tokens/s, peak memory, speed ratios and achieved TFLOP/s (model FLOPs, counted in
docs/kernels.md, the same numerator for every implementation of a memory kind) with their
fraction of the matmul peak measured in the same process (:func:`matmul_peak`), then a
T-scaling sweep at B=1 of the triton backend (1K tokens up to 1M, stopping at the first
out-of-memory or when a run would exceed the time budget).

    python benchmarks/bench_kernels.py --out bench.md            # GPU
    python benchmarks/bench_kernels.py --small                    # CPU smoke test

``--small`` uses tiny sizes, skips the peers, and on a CPU runs the kernels in Triton's
interpreter (``TRITON_INTERPRET=1``, set before triton is imported).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

if "--small" in sys.argv and "--device" not in sys.argv:  # CPU smoke test: Triton interpreter
    try:
        import torch as _torch

        if not _torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
    except ImportError:  # pragma: no cover
        pass

import _common
import torch  # noqa: E402
from _common import is_oom, make_inputs, time_fn, timed, titans_passes  # noqa: E402

from miras_ref import zoo  # noqa: E402

MATRIX_MODELS = ("deltanet", "gated_deltanet")
#: ``<model>_chunk``: the model in Sec 5.4's chunk form (``link_at="chunk"``)
MLP_MODELS = ("yaad", "moneta", "memora", "moneta_chunk", "memora_chunk")
CHUNK_FORM = "_chunk"
FULL = dict(B=4, T=4096, H=16, D=64, expansion=4, chunk=64)
SMALL = dict(B=1, T=40, H=2, D=16, expansion=2, chunk=16)
SWEEP_T = (1024, 4096, 16384, 65536, 262144, 1048576)
TITANS = "titans-pytorch NeuralMemory"
#: its weights updated after every chunk (``batch_size=chunk``), the chunked form's dependency
TITANS_EVERY_CHUNK = "titans-pytorch NeuralMemory, batch_size=chunk"


@dataclasses.dataclass
class Row:
    name: str
    kind: str  # "matrix" or "mlp"
    mode: str  # "fwd" or "fwd+bwd"
    seconds: float | None
    tokens: int
    flops: float  # model FLOPs of this pass
    peak_bytes: int | None
    note: str = ""

    @property
    def tokens_per_s(self):
        return None if self.seconds is None else self.tokens / self.seconds

    @property
    def tflops(self):
        return None if self.seconds is None else self.flops / self.seconds / 1e12


# --------------------------------------------------------------------------------------------
# FLOP counts (docs/kernels.md, "FLOP count")


def forward_flops(kind: str, B: int, T: int, H: int, d: int, expansion: int, chunk: int) -> float:
    """Model FLOPs of one chunked forward (matmuls only, 2 per multiply-add).

    Matrix memory, per token and head: ``6 d² + 4 C d`` (``K Aᵀ``, ``dYᵀ K``, ``Q Z0ᵀ``;
    ``Q Kᵀ`` and ``(M ⊙ P) dY`` over the chunk). MLP memory with hidden width ``h = E d``:
    ``14 d h + 4 C (h + d)`` (forward at the anchor ``4dh``, ``dH`` ``2dh``, the two
    chunk-end updates ``4dh``, the two dual-form reads ``4dh``, and the four ``C x C``
    products of the reads).
    """
    C = min(chunk, T)
    if kind == "matrix":
        per = 6 * d * d + 4 * C * d
    else:
        h = expansion * d
        per = 14 * d * h + 4 * C * (h + d)
    return float(B * T * H * per)


def pass_flops(kind, size, mode) -> float:
    f = forward_flops(kind, size["B"], size["T"], size["H"], size["D"], size["expansion"],
                      size["chunk"])
    return f if mode == "fwd" else 3 * f  # backward counted as twice the forward


# --------------------------------------------------------------------------------------------
# timing


# --------------------------------------------------------------------------------------------
# inputs and the runs


def config_for(model, size):
    if model.endswith(CHUNK_FORM):  # the link at chunk starts only
        return zoo.get(model.removesuffix(CHUNK_FORM), size["D"], expansion=size["expansion"],
                       link_at="chunk")
    if model in MLP_MODELS:
        return zoo.get(model, size["D"], expansion=size["expansion"])
    return zoo.get(model, size["D"])


def _ops(backend):
    if backend == "triton":
        from miras_gpu import triton as ops
    else:
        from miras_gpu import torch as ops
    return ops


def miras_passes(model, backend, size, device, dtype, checkpoint=False, dot_precision=None,
                 torch_compile=False, channel_gates=False, hidden_split=None):
    """``(fwd, fwd_bwd)`` closures of one model on one backend (``torch_compile``: the torch
    backend's ``compile_chunks``; ``channel_gates``: η, α ``[B, T, H, D]``; ``hidden_split``:
    the triton backend's, None for its default)."""
    cfg = config_for(model, size)
    q, k, v, gates = make_inputs(cfg, size, device, dtype, gate_dtype=torch.float32,
                                 channel_gates=channel_gates)
    opts = {"checkpoint": True} if (backend == "torch" and checkpoint) else {}
    if backend == "torch" and torch_compile:
        opts["compile_chunks"] = torch_compile
    if backend == "triton" and dot_precision is not None:
        opts["dot_precision"] = dot_precision
    if backend == "triton" and hidden_split is not None:
        opts["hidden_split"] = hidden_split
    # the backends' own ops (the registry would refuse triton on a CPU, even interpreted)
    op = _ops(backend).scan_chunked

    def fwd():
        with torch.no_grad():
            op(cfg, q, k, v, gates, chunk_size=size["chunk"], **opts)

    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    gl = {n: a.detach().clone().requires_grad_(True) for n, a in gates.items()}

    def fwd_bwd():
        y, _ = op(cfg, *leaves, gl, chunk_size=size["chunk"], **opts)
        y.float().square().mean().backward()
        for x in (*leaves, *gl.values()):
            x.grad = None

    return fwd, fwd_bwd


def fla_passes(size, device, dtype):
    from fla.ops.delta_rule import chunk_delta_rule

    q, k, v, gates = make_inputs(zoo.deltanet(size["D"]), size, device, dtype,
                                 gate_dtype=torch.float32)
    beta = gates["eta"].to(dtype)

    import inspect

    # [B, T, H, D] layout; older fla versions default to head-first unless told otherwise
    extra = ({"head_first": False}
             if "head_first" in inspect.signature(chunk_delta_rule).parameters else {})

    def call(*args):
        return chunk_delta_rule(*args, **extra)

    def fwd():
        with torch.no_grad():
            call(q, k, v, beta)

    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v, beta)]

    def fwd_bwd():
        o = call(*leaves)[0]
        o.float().square().mean().backward()
        for x in leaves:
            x.grad = None

    return fwd, fwd_bwd


def matmul_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """Measured TFLOP/s of ``torch.matmul`` on square ``dtype`` matrices (``n = 8192`` on a
    GPU, 512 elsewhere; median of 10 after 3 warm-up runs, 2 FLOPs per multiply-add): the
    ceiling each row's achieved TFLOP/s is a fraction of. Returns it and its description."""
    n = 8192 if device.type == "cuda" else 512
    g = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
    sec, _ = time_fn(lambda: torch.matmul(a, b), device, 3, 10)
    return 2 * n ** 3 / sec / 1e12, f"torch.matmul, {n}x{n}x{n}, {str(dtype).split('.')[-1]}"


def _past_deadline(args) -> bool:
    return args.deadline is not None and time.perf_counter() > args.deadline


def measure(name, kind, passes, size, device, args) -> list[Row]:
    rows = []
    tokens = size["B"] * size["T"]
    if _past_deadline(args):
        rows = [Row(name, kind, m, None, tokens, 0.0, None, "skipped (time budget)")
                for m in ("fwd", "fwd+bwd")]
        print(f"{name}: skipped (time budget)", flush=True)
        return rows
    try:
        fwd, fwd_bwd = passes()
    except ImportError as exc:
        print(f"{name}: not installed ({exc}); skipped", flush=True)
        return rows
    except Exception as exc:  # a peer whose API changed: report, do not stop the run
        print(f"{name}: could not be set up ({type(exc).__name__}: {exc}); skipped", flush=True)
        return rows
    for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        sec, peak, note = timed(fn, device, args.warmup, args.iters)
        flops = 0.0 if sec is None else pass_flops(kind, size, mode)
        rows.append(Row(name, kind, mode, sec, tokens, flops, peak, note))
        print(fmt_row(rows[-1]), flush=True)
    return rows


def fmt_row(r: Row) -> str:
    if r.seconds is None:
        return f"{r.name:34s} {r.mode:8s} {'-':>10s}    {r.note}"
    peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**30:.2f} GiB"
    return (f"{r.name:34s} {r.mode:8s} {r.seconds * 1e3:10.2f} ms {r.tokens_per_s:12.0f} tok/s "
            f"{r.tflops:7.3g} TFLOP/s  peak {peak} {r.note}")


def sweep(models, size, device, dtype, args) -> list[dict]:
    """Triton fwd and fwd+bwd at B=1 for growing T; stop at OOM or past the time budget."""
    out = []
    for model in models:
        kind = "mlp" if model in MLP_MODELS else "matrix"
        for mode in ("fwd", "fwd+bwd"):
            last, prev_t = None, 1
            for T in args.sweep_t:
                expected = None if last is None else last * T / prev_t
                if _past_deadline(args):
                    out.append(dict(model=model, mode=mode, T=T, seconds=None,
                                    note="skipped (time budget)"))
                    break
                if expected is not None and expected > args.sweep_budget:
                    out.append(dict(model=model, mode=mode, T=T, seconds=None,
                                    note=f"skipped: about {expected:.0f} s expected"))
                    print(f"sweep {model} {mode} T={T}: skipped (time budget)", flush=True)
                    break
                s = dict(size, B=1, T=T)
                try:
                    fwd, fwd_bwd = miras_passes(model, "triton", s, device, dtype,
                                                dot_precision=args.dot_precision,
                                                channel_gates=args.gates == "channel")
                    sec, peak = time_fn(fwd if mode == "fwd" else fwd_bwd, device, 1, 1)
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                    torch.cuda.empty_cache()
                    out.append(dict(model=model, mode=mode, T=T, seconds=None,
                                    note="out of memory"))
                    print(f"sweep {model} {mode} T={T}: out of memory", flush=True)
                    break
                flops = pass_flops(kind, s, mode)
                out.append(dict(model=model, mode=mode, T=T, seconds=sec, peak=peak,
                                tokens_per_s=T / sec, tflops=flops / sec / 1e12, note=""))
                print(f"sweep {model} {mode} T={T}: {sec * 1e3:.2f} ms, {T / sec:.0f} tok/s, "
                      f"peak {'n/a' if peak is None else f'{peak / 2**30:.2f} GiB'}", flush=True)
                last, prev_t = sec, T
    return out


def run(args) -> dict:
    """Run the benchmark; returns ``{"env", "size", "rows", "sweep", "notes"}``."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    size = dict(SMALL if args.small else FULL)
    env = {**_common.environment(device), "input dtype": args.dtype,
           "mean η (x U[0.5, 1.5])": ", ".join(f"{m} {e:g}" for m, e in _common.ETA.items())
                                     + ", others the config's (benchmarks/_common.py)",
           "triton interpreter": os.environ.get("TRITON_INTERPRET", "0"),
           "triton dot precision": args.dot_precision or "backend default (docs/kernels.md)",
           "gates η, α": ("channel-wise [B, T, H, D] (triton: gradients by the backward "
                          "kernels where they cover the configuration, docs/kernels.md)"
                          if args.gates == "channel"
                          else "per token and head [B, T, H]"),
           "torch backend rows": (f"compile_chunks={args.torch_compile!r}"
                                  if args.torch_compile else "eager (Moneta, Memora with "
                                                             "checkpoint=True)"),
           "timing": f"median of {args.iters} after {args.warmup} warm-up runs"
                     + (" (CUDA events)" if device.type == "cuda" else "")}
    peak_tflops, how = matmul_peak(device, dtype)
    env["matmul peak (measured)"] = f"{peak_tflops:.4g} TFLOP/s ({how})"
    print(" | ".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    from miras_gpu.torch.graphed import clear_graphs

    rows = []
    models = [m for m in args.models.split(",") if m]
    for model in models:
        kind = "mlp" if model in MLP_MODELS else "matrix"
        for backend in ("triton", "torch"):
            if backend == "torch" and args.no_torch:
                continue
            graphs = backend == "torch" and args.torch_compile == "graphs"
            # eager Moneta and Memora form per-token states: checkpointed, they fit in memory
            ckpt = backend == "torch" and not graphs and model in ("moneta", "memora")
            label = f"miras {backend} {model}" + (f" ({args.torch_compile})"
                                                  if backend == "torch" and args.torch_compile
                                                  else "")
            rows += measure(label, kind,
                            lambda m=model, b=backend, c=ckpt: miras_passes(
                                m, b, size, device, dtype, c, args.dot_precision,
                                args.torch_compile, args.gates == "channel"),
                            size, device, args)
            # the memory pools of the captured graphs (the torch backend's with "graphs", the
            # triton backend's recomputed backward on CUDA), before the next row
            clear_graphs()
    notes = []
    if args.small or args.no_peers:
        notes.append("peers skipped (--small or --no-peers)")
    else:
        if any(m in MLP_MODELS for m in models):
            rows += measure(TITANS, "mlp", lambda: titans_passes(size, device, dtype),
                            size, device, args)
            rows += measure(TITANS_EVERY_CHUNK, "mlp",
                            lambda: titans_passes(size, device, dtype, every_chunk=True),
                            size, device, args)
        if any(m in MATRIX_MODELS for m in models):
            rows += measure("fla chunk_delta_rule", "matrix",
                            lambda: fla_passes(size, device, dtype), size, device, args)
    sweep_rows = []
    if not args.no_sweep:
        sweep_models = [m for m in args.sweep_models.split(",") if m]
        sweep_rows = sweep(sweep_models, size, device, dtype, args)
    return {"env": env, "size": size, "rows": rows, "sweep": sweep_rows, "notes": notes,
            "peak_tflops": peak_tflops}


def ratio_lines(rows: list[Row]) -> list[str]:
    """Speed of each triton row against the torch backend and the peer of its memory kind."""
    by = {(r.name, r.mode): r for r in rows if r.seconds}
    peers = {"mlp": (TITANS, TITANS_EVERY_CHUNK), "matrix": ("fla chunk_delta_rule",)}
    out = []
    for r in rows:
        if not r.name.startswith("miras triton") or not r.seconds:
            continue
        model = r.name.split()[-1]
        parts = []
        # the torch row of the model, in whichever compile_chunks mode it ran
        t = next((t for (name, mode), t in by.items() if mode == r.mode
                  and name.split(" (")[0] == f"miras torch {model}"), None)
        if t:
            parts.append(f"{t.seconds / r.seconds:.2f}x the torch backend")
        for name in peers[r.kind]:
            p = by.get((name, r.mode))
            if p:
                parts.append(f"{p.seconds / r.seconds:.2f}x {name}")
        if parts:
            out.append(f"{model} {r.mode}: " + ", ".join(parts))
    return out


def markdown(result: dict, title="Kernel benchmark") -> str:
    env, size, rows = result["env"], result["size"], result["rows"]
    lines = _common.report_head(f"## {title}", "benchmarks/bench_kernels.py", env)
    lines += [f"| sizes | B={size['B']}, T={size['T']}, H={size['H']}, D={size['D']}, MLP "
              f"expansion {size['expansion']}, chunk {size['chunk']} |", ""]
    lines += [f"Note: {n}." for n in result["notes"]]
    lines += ["", "| implementation | memory | pass | ms | tokens/s | model TFLOP/s | "
              "of matmul peak | peak memory | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r.seconds is None:
            lines.append(f"| {r.name} | {r.kind} | {r.mode} | - | - | - | - | - | {r.note} |")
            continue
        peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**30:.2f} GiB"
        lines.append(f"| {r.name} | {r.kind} | {r.mode} | {r.seconds * 1e3:.2f} | "
                     f"{r.tokens_per_s:.0f} | {r.tflops:.3g} | "
                     f"{100 * r.tflops / result['peak_tflops']:.3g}% | {peak} | {r.note} |")
    ratios = ratio_lines(rows)
    if ratios:
        lines += ["", "Speed ratios (other implementation's time / triton's time; above 1: "
                  "triton is faster):", ""] + [f"- {x}" for x in ratios]
    lines += ["", "Model TFLOP/s use the FLOP count of docs/kernels.md for every row of a memory "
              "kind (the backward is counted as twice the forward), so within a kind they "
              "compare like tokens/s; 'of matmul peak' divides them by the matmul peak "
              "measured in this run (above). titans-pytorch runs its own MLP memory and fla "
              "the exact delta rule: same sizes, not the same arithmetic. titans-pytorch's default "
              "(batch_size=None) takes every chunk's gradient at the weights the call starts "
              "with, all chunks at once; with batch_size=chunk it updates its weights after "
              "every chunk and takes the next chunk's gradient at them, the dependency of "
              "the chunked MIRAS form the miras rows compute."]
    if result["sweep"]:
        lines += ["", "### T-scaling sweep (triton, B=1)", "",
                  "| model | pass | T | ms | tokens/s | model TFLOP/s | peak memory | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in result["sweep"]:
            if s["seconds"] is None:
                lines.append(f"| {s['model']} | {s['mode']} | {s['T']} | - | - | - | - | "
                             f"{s['note']} |")
                continue
            peak = "n/a" if s["peak"] is None else f"{s['peak'] / 2**30:.2f} GiB"
            lines.append(f"| {s['model']} | {s['mode']} | {s['T']} | {s['seconds'] * 1e3:.2f} "
                         f"| {s['tokens_per_s']:.0f} | {s['tflops']:.3g} | {peak} | |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the results as Markdown here")
    p.add_argument("--small", action="store_true", help="tiny sizes, no peers (CPU smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--gates", default="scalar", choices=["scalar", "channel"],
                   help="η, α per token and head, or channel-wise (as the MIRAS layer's)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--models", default=",".join(MATRIX_MODELS + MLP_MODELS))
    p.add_argument("--no-torch", action="store_true", help="skip the torch backend rows")
    p.add_argument("--torch-compile", default=None,
                   help="compile_chunks of the torch backend rows (default: 'graphs' on CUDA, "
                        "its fastest mode, eager elsewhere; 'none' for eager)")
    p.add_argument("--no-peers", action="store_true", help="skip titans-pytorch and fla")
    p.add_argument("--no-sweep", action="store_true", help="skip the T-scaling sweep")
    p.add_argument("--sweep-models", default="gated_deltanet,yaad")
    p.add_argument("--sweep-t", default=None, help="comma-separated T values")
    p.add_argument("--dot-precision", choices=["ieee", "tf32x3", "tf32", "bf16"], default=None,
                   help="matrix-product precision of the triton kernels (default: the backend's "
                        "choice, docs/kernels.md)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds after which the remaining rows and sweep points are skipped")
    p.add_argument("--sweep-budget", type=float, default=20.0,
                   help="skip a sweep point expected to take longer (seconds)")
    return p


def finish_args(args):
    args.deadline = (time.perf_counter() + args.time_budget) if args.time_budget else None
    args.warmup = args.warmup if args.warmup is not None else (0 if args.small else 2)
    args.iters = args.iters if args.iters is not None else (1 if args.small else 5)
    if args.sweep_t is None:
        args.sweep_t = (16, 40) if args.small else SWEEP_T
    elif isinstance(args.sweep_t, str):
        args.sweep_t = tuple(int(x) for x in args.sweep_t.split(","))
    if args.torch_compile is None:
        args.torch_compile = "graphs" if torch.device(args.device).type == "cuda" else False
    elif args.torch_compile == "none":
        args.torch_compile = False
    if args.small and args.dtype == "bfloat16" and torch.device(args.device).type == "cpu":
        args.dtype = "float32"  # the interpreter computes bf16 wrongly; time fp32 instead
    return args


def main(argv=None) -> int:
    args = finish_args(parser().parse_args(argv))
    result = run(args)
    for line in ratio_lines(result["rows"]):
        print(line)
    if args.out:
        _common.write_report(args.out, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
