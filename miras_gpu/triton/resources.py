"""Shared memory and registers of every Triton kernel the ``triton`` backend launches, on a
machine without a GPU.

A kernel whose tiles need more shared memory than the device has fails at its first launch
(``OutOfResources``), and one that needs more than 255 registers per thread spills to local
memory. Both are known before any GPU runs: Triton compiles for a named target (here Hopper,
``sm_90``) on the CPU, and ``ptxas`` reports registers and spills. This module

1. runs the backend's own ops under the interpreter with every kernel launch intercepted and
   recorded, not executed (:func:`record`: kernel, argument types, constexprs, warps,
   stages), so the launches are exactly those the backend makes for a configuration;
2. compiles each distinct launch for the target (:func:`compile_launch`) and reads the
   shared memory from Triton's metadata and the registers and spills from ``ptxas -v``.

::

    python -m miras_gpu.triton.resources --dims 16,32,64,128 --out kernel_resources.md

Recording needs ``TRITON_INTERPRET=1`` and compiling needs it unset (the kernels' modules
are imported one way or the other), so :func:`main` records in a child process.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import io
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

import torch

#: shared memory per block of an H100/H200 (sm_90): 227 KiB
SM90_SHARED_BYTES = 227 * 1024
#: the models of the report: the paper's three and the matrix memories fla also has
MODELS = ("moneta", "yaad", "memora", "deltanet", "gated_deltanet")
#: torch dtype -> Triton's pointer element type
_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
          torch.float64: "fp64", torch.int32: "i32", torch.int64: "i64", torch.bool: "i1"}


# --------------------------------------------------------------------------------------------
# 1. recording launches (TRITON_INTERPRET=1)


def _describe(value):
    """One launch argument as JSON: a pointer's element type, or a scalar's value."""
    if isinstance(value, torch.Tensor):
        return {"ptr": _TYPES[value.dtype]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot record a kernel argument of type {type(value).__name__}")


@contextlib.contextmanager
def _intercepted(launches: list):
    """Record every kernel launch into ``launches`` instead of running it."""
    from triton.runtime.interpreter import InterpretedFunction

    def run(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        bound = dict(zip(self.arg_names, args)) | kwargs
        launches.append({"module": self.fn.__module__, "kernel": self.fn.__name__,
                         "args": {k: _describe(v) for k, v in bound.items()}, **options})

    real = InterpretedFunction.run
    InterpretedFunction.run = run
    try:
        yield
    finally:
        InterpretedFunction.run = real


def record(models=MODELS, dims=(64,), dtypes=("float32", "bfloat16"), chunk: int = 64,
           tokens: int | None = None, gates=("scalar",)) -> list[dict]:
    """The launches of the ``triton`` backend's chunked op, forward and backward, for each
    model (a name of :func:`miras_gpu.triton.cases.kernel_cases`), head dim, input dtype and
    form of the η, α gates (``"scalar"`` per token, ``"channel"``-wise), plus the torch
    backend's fused norms op for Moneta. Needs ``TRITON_INTERPRET=1``.

    Returns one dict per launch: ``model, dim, dtype, module, kernel, args, num_warps,
    num_stages`` (``args``: name -> ``{"ptr": type}`` or ``{"value": v}``).
    """
    from .chunked import interpreting

    if not interpreting():
        raise RuntimeError("record() intercepts the interpreter's launches: set "
                           "TRITON_INTERPRET=1 before importing miras_gpu.triton")
    from .. import torch as torch_ops
    from ..torch import chunked as torch_chunked
    from . import plan_for, scan_chunked
    from .cases import kernel_cases, kernel_inputs

    out = []
    for name, d, dtype, form in itertools.product(models, dims, dtypes, gates):
        cfg = kernel_cases(d)[name][0]
        dt = getattr(torch, dtype)
        q, k, v, gate_values, init = kernel_inputs(cfg, tokens or chunk + 3, h=1,
                                                   cw_gates=form == "channel")
        leaves = [x.to(dt).requires_grad_(True) for x in (q, k, v)]
        gl = {n: g.float().requires_grad_(True) for n, g in gate_values.items()}
        ops = [("triton", scan_chunked)]
        plan = plan_for(cfg)
        cw = form == "channel"
        if plan.backward_kernels("kernels", cw) and not plan.backward_kernels("auto", cw):
            # backward kernels that the default leaves out (Memora's): asked for by name
            ops.append(("triton, backward kernels",
                        functools.partial(scan_chunked, backward="kernels")))
        if name == "moneta" and form == "scalar":
            ops.append(("torch, fused norms", torch_ops.scan_chunked))
        model = name if form == "scalar" else f"{name} (channel-wise η, α)"
        for label, op in ops:
            launches: list = []
            with _intercepted(launches), _fused_norms(torch_chunked, dt):
                y, _ = op(cfg, *leaves, gl, chunk_size=chunk,
                          initial_state={n: a.float() for n, a in init.items()},
                          output_final_state=True)
                y.float().sum().backward()
            out += [{"model": model, "op": label, "dim": d, "dtype": dtype, **r}
                    for r in launches]
    return out


@contextlib.contextmanager
def _fused_norms(torch_chunked, dtype):
    """The torch backend's fused-norm switches set to its own choice for ``dtype`` on a CUDA
    device (the recorded calls run on the CPU, where it would not use the op)."""
    saved = torch_chunked.FUSED_POWER_SUMS, torch_chunked.FUSED_PRECISION
    precision = torch_chunked.fused_precision(dtype, torch.device("cuda"))
    torch_chunked.FUSED_POWER_SUMS = precision is not None
    torch_chunked.FUSED_PRECISION = precision
    try:
        yield
    finally:
        torch_chunked.FUSED_POWER_SUMS, torch_chunked.FUSED_PRECISION = saved


# --------------------------------------------------------------------------------------------
# 2. compiling launches for a target (interpreter off)


def _signature(fn, args: dict) -> tuple[dict, dict]:
    """Triton's ``(signature, constexprs)`` of one recorded launch of ``fn``."""
    sig, const = {}, {}
    params = inspect.signature(fn.fn).parameters
    for i, p in enumerate(fn.params):
        a = args.get(p.name)
        if a is None:  # not passed: the parameter's default
            a = {"value": params[p.name].default}
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            const[(i,)] = a["value"]
        elif "ptr" in a:
            sig[p.name] = "*" + a["ptr"]
        elif isinstance(a["value"], bool):
            sig[p.name] = "i1"
        elif isinstance(a["value"], int):
            sig[p.name] = "i32" if -2**31 <= a["value"] < 2**31 else "i64"
        elif isinstance(a["value"], float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.fn.__name__}: cannot type argument {p.name}={a!r}")
    return sig, const


def compile_launch(launch: dict, arch: int = 90) -> dict:
    """Compile one recorded launch for ``sm_<arch>``: ``{"shared": bytes, "registers": n,
    "spill_bytes": n}``, the shared memory from Triton's metadata, registers and spills from
    the log of Triton's own ``ptxas`` run. Needs the kernels imported without the
    interpreter."""
    import importlib

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(launch["module"]), launch["kernel"])
    if not isinstance(fn, triton.runtime.JITFunction):
        raise RuntimeError(f"{launch['kernel']} was imported under TRITON_INTERPRET=1; compile "
                           "in a process that imports the kernels without it")
    sig, const = _signature(fn, launch["args"])
    options = {k: launch[k] for k in ("num_warps", "num_stages") if k in launch}
    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True  # ptxas -v, printed
        knobs.compilation.always_compile = True  # not the cache: the log needs a compile
        kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                                target=GPUTarget("cuda", arch, 32), options=options)
    info = log.getvalue()
    regs = re.search(r"Used (\d+) registers", info)
    spills = re.search(r"(\d+) bytes spill stores", info)
    if regs is None:
        raise RuntimeError(f"no register count in the ptxas log of {launch['kernel']}: {info}")
    return {"shared": kernel.metadata.shared, "registers": int(regs.group(1)),
            "spill_bytes": int(spills.group(1)) if spills else 0}


def _key(launch: dict) -> str:
    """What makes two launches compile to the same binary."""
    return json.dumps({k: launch[k] for k in ("module", "kernel", "args", "num_warps",
                                              "num_stages") if k in launch}, sort_keys=True)


def resources(launches: list[dict], arch: int = 90) -> list[dict]:
    """Each launch with its compiled resources (each distinct binary compiled once)."""
    done: dict[str, dict] = {}
    rows = []
    for launch in launches:
        key = _key(launch)
        if key not in done:
            done[key] = compile_launch(launch, arch)
        rows.append({**launch, **done[key]})
    return rows


def record_in_child(**kwargs) -> list[dict]:
    """:func:`record` in a child process with ``TRITON_INTERPRET=1``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.json")
        cmd = [sys.executable, "-m", "miras_gpu.triton.resources", "--record", path]
        for k, v in kwargs.items():
            cmd += [f"--{k}", ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
        subprocess.run(cmd, env={**os.environ, "TRITON_INTERPRET": "1"}, check=True)
        with open(path) as f:
            return json.load(f)


# --------------------------------------------------------------------------------------------
# the report


def table(rows: list[dict]) -> str:
    """A Markdown table, one line per model, op, dim, dtype and kernel."""
    lines = ["| model | op | head dim | inputs | kernel | warps | stages | precision | shared "
             "(KiB) | registers | spills (bytes) | fits sm_90 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    seen = set()
    for r in rows:
        prec = r["args"].get("PREC", {}).get("value", "")
        line = (f"| {r['model']} | {r['op']} | {r['dim']} | {r['dtype']} | `{r['kernel']}` "
                f"| {r.get('num_warps', 4)} | {r.get('num_stages', 3)} | {prec} "
                f"| {r['shared'] / 1024:.1f} | {r['registers']} | {r['spill_bytes']} "
                f"| {'yes' if r['shared'] <= SM90_SHARED_BYTES else '**no**'} |")
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return "\n".join(lines)


def _parse_list(text: str, kind=str) -> list:
    return [kind(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--dims", default="16,32,64,128")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--gates", default="scalar",
                        help="forms of the η, α gates: scalar, channel (comma-separated)")
    parser.add_argument("--out", help="write the table as Markdown here")
    parser.add_argument("--json", help="write every launch with its resources as JSON here")
    parser.add_argument("--record", help=argparse.SUPPRESS)  # the child: write launches here
    a = parser.parse_args(argv)
    spec = {"models": _parse_list(a.models), "dims": _parse_list(a.dims, int),
            "dtypes": _parse_list(a.dtypes), "chunk": a.chunk, "gates": _parse_list(a.gates)}
    if a.record:
        with open(a.record, "w") as f:
            json.dump(record(**spec), f)
        return 0
    import triton
    from triton.backends.nvidia.compiler import get_ptxas

    rows = resources(record_in_child(**spec))
    text = (f"Kernels of the `triton` backend compiled for sm_90 on the CPU by "
            f"`python -m miras_gpu.triton.resources` (Triton {triton.__version__}, ptxas "
            f"{get_ptxas(90).version}, torch {torch.__version__}), chunk {a.chunk}; shared "
            f"memory per block on an H100/H200: {SM90_SHARED_BYTES // 1024} KiB.\n\n"
            + table(rows) + "\n")
    print(text)
    for path, content in ((a.out, text), (a.json, json.dumps(rows, indent=1))):
        if path:
            with open(path, "w") as f:
                f.write(content)
    return 0 if all(r["shared"] <= SM90_SHARED_BYTES for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
