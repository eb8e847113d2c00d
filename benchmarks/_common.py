"""Helpers shared by the benchmark scripts: timing, inputs, the titans-pytorch peer, and the
reports' environment table and output."""

from __future__ import annotations

import platform
import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, warmup: int, iters: int) -> tuple[float, int | None]:
    """Median seconds of ``fn()`` over ``iters`` runs after ``warmup`` (CUDA events time the
    device), and the peak memory allocated over all runs, warm-up included, where CUDA graphs
    allocate their memory pool while recording (CUDA only, else None)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return statistics.median(times), peak


def environment(device: torch.device) -> dict:
    """The device, torch, triton and python of this run: the first rows of every report."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        platform.processor() or platform.machine())
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {"device": f"{device} ({name})", "torch": torch.__version__,
            "triton": triton_version, "python": platform.python_version()}


def report_head(title: str, script: str, env: dict) -> list[str]:
    """A Markdown report's first lines: ``title``, the script that wrote it, the ``env``
    table."""
    return [title, "", f"Written by `{script}`; every row ran in one process on one device.",
            "", "| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in env.items()]


def write_report(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def timed(fn, device: torch.device, warmup: int, iters: int):
    """:func:`time_fn` as ``(seconds, peak, note)``; a run out of memory or failing gives
    ``(None, None, note)`` saying which, so one row does not end the benchmark."""
    try:
        return (*time_fn(fn, device, warmup, iters), "")
    except Exception as exc:
        if is_oom(exc):
            torch.cuda.empty_cache()
            return None, None, "out of memory"
        return None, None, f"failed: {type(exc).__name__}: {str(exc)[:120]}"


#: the mean learning rate η of the inputs per model, where it differs from the config's default.
#: At the zoo's η = 0.1 the chunked recurrences of Yaad and Memora are chaotic over T = 4096
#: (a 1e-8 change of the first chunk's keys moves Yaad's outputs by O(1) ten chunks later) and
#: their float32 gradients overflow; at 1e-3 they stay finite. Moneta keeps its 0.05: at 1e-3
#: its accumulator decays towards 0, where the ℓq link ``A / ‖A‖_q²`` grows without bound and
#: the forward pass overflows. The time of a pass does not depend on η.
ETA = {"yaad": 1e-3, "memora": 1e-3}


def make_inputs(cfg, size: dict, device, dtype, gate_dtype=None, seed: int = 0,
                channel_gates: bool = False):
    """ℓ2-normalised q, k (as the MIRAS layer), random v ``[B, T, H, D]`` in ``dtype``, and
    per-head gates ``[B, T, H]`` inside their ranges in ``gate_dtype`` (default ``dtype``):
    ``η`` uniform in ``[0.5, 1.5]`` times its mean (:data:`ETA`, else the config's default).
    ``channel_gates``: ``η`` and ``α`` channel-wise ``[B, T, H, D]``, as the MIRAS layer
    makes them."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, T, H, D = size["B"], size["T"], size["H"], size["D"]
    q = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    v = torch.randn(B, T, H, D, generator=g)
    defaults = {"eta": 0.1, "alpha": 1.0, "delta": 1.0, **cfg.gate_defaults}
    defaults["eta"] = ETA.get(cfg.name, defaults["eta"])
    gates = {}
    for name in cfg.required_gates:
        per_channel = channel_gates and name in ("eta", "alpha")
        u = torch.rand(*((B, T, H, D) if per_channel else (B, T, H)), generator=g)
        gates[name] = {"eta": defaults["eta"] * (0.5 + u), "alpha": 0.9 + 0.1 * u,
                       "delta": 0.5 + u}[name]
    to = dict(device=device, dtype=dtype)
    gto = dict(device=device, dtype=gate_dtype or dtype)
    return q.to(**to), k.to(**to), v.to(**to), {n: a.to(**gto) for n, a in gates.items()}


def titans_passes(size: dict, device, dtype, every_chunk: bool = False):
    """``(fwd, fwd_bwd)`` closures of titans-pytorch's ``NeuralMemory(dim=H·D, heads=H,
    dim_head=D, chunk_size=chunk, momentum=False)`` on ``[B, T, H·D]`` tokens, under autocast
    to ``dtype`` unless it is float32. Raises ImportError when titans-pytorch is missing.

    By default (its ``batch_size=None``) NeuralMemory evaluates the gradient of every chunk at
    the weights it starts the call with and sums the updates with an associative scan: no
    chunk waits for another. ``every_chunk=True`` passes ``batch_size=chunk``: the weights are
    updated after every chunk and the next chunk's gradient is taken at them, the dependency
    of MIRAS's chunked form (Eq 28-32) at the same chunk size."""
    from titans_pytorch import NeuralMemory

    B, T, H, D = size["B"], size["T"], size["H"], size["D"]
    mem = NeuralMemory(dim=H * D, heads=H, dim_head=D, chunk_size=size["chunk"],
                       momentum=False, batch_size=size["chunk"] if every_chunk else None
                       ).to(device)
    x = torch.randn(B, T, H * D, device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def fwd():
        with torch.no_grad(), autocast:
            mem(x)

    xg = x.clone().requires_grad_(True)

    def fwd_bwd():
        with autocast:
            out, _ = mem(xg)
        out.float().square().mean().backward()
        xg.grad = None
        mem.zero_grad(set_to_none=True)

    return fwd, fwd_bwd
