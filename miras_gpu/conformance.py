"""Conformance suite: every backend against the float64 reference :mod:`miras_ref`.

One list of cases, walked by ``tests/test_conformance.py`` under pytest and by
``python -m miras_gpu.conformance --report PATH [--device cuda]`` outside it (a Markdown
report with the device, the versions, each case's errors and the totals):

    op        scan, scan_chunked with chunk sizes 1 and 16
    model     every configuration of miras_ref.zoo.ALL the op supports, plus a few extra
              configurations (EXTRA) that reach the biases and retention gates no zoo model
              uses
    backend   the available backends among torch, triton, cupy
    dtype     float64, float32; bfloat16 on CUDA only
    size      odd sizes: [B, T, H, D] = [2, 63, 2, 24] and [1, 1, 3, 16]

Each case draws fresh random inputs from its own seed (never zeros: ℓ2-normalised q and k as
in the MIRAS layer, random gates inside their ranges, a random non-zero initial state), rounds
them to the case's dtype, and compares

* the output and every entry of the final state with ``miras_ref`` in float64 on the same
  (rounded) inputs: float64 and float32 by the normalised max error
  ``max|out - ref| / max|ref|`` (bounds :data:`FORWARD_BOUNDS`: 1e-10, 1e-5; the MLP memory
  gets :data:`MLP_FLOAT32_SLACK`), bfloat16 by the relative RMS error
  ``rms(out - ref) / rms(ref)`` (1e-2);
* for torch-based backends and float32/bfloat16, the gradient of a random linear function of
  the output and final state with respect to every input (q, k, v, each gate, each
  initial-state entry) with the torch float64 autograd gradient of the same op
  (:data:`GRAD_BOUNDS`: float32 1e-5 max error, 5e-4 for the MLP memory; bfloat16 3e-2
  RMS). The float64 torch op itself is checked by ``torch.autograd.gradcheck`` on tiny sizes
  for :data:`GRADCHECK_CASES`.

A NaN or inf anywhere, or a shape mismatch, gives an infinite error: it never passes.

Float32 is only judged on inputs where float32 round-off could meet the bounds at all: before
a float32 case runs, the float64 op is run again on inputs with noise of float32's rounding
size (:func:`ill_conditioned`). Where that alone moves a result by more than a quarter of its
bound (a chaotic trajectory of an MLP memory, or a residual of a Huber-type bias within
round-off of its threshold δ, where the gradient jumps), the case draws new inputs from the
next seed; the report lists every redrawn case and why.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

import miras_ref
from miras_ref import zoo
from miras_ref.algorithms import GD, ClosedForm, Momentum, MultiStepGD, NonParametric
from miras_ref.bias import (
    HuberCoordinateBias,
    HuberNormBias,
    L1Bias,
    L2Bias,
    LpBias,
    ValueShiftRobustBias,
)
from miras_ref.config import MirasConfig
from miras_ref.memory import MatrixMemory, MLPMemory, VectorMemory
from miras_ref.recurrent import initial_memory_state
from miras_ref.retention import (
    ElasticNetFTRLRetention,
    ElasticNetRetention,
    KLRetention,
    L2Retention,
    LqRetention,
    SigmoidBregmanRetention,
)

from .backends import available_backends, get_backend

# --------------------------------------------------------------------------------------------
# what is checked, and to what bound

OPS = (("scan", None), ("scan_chunked", 1), ("scan_chunked", 16))
KERNEL_BACKENDS = ("torch", "triton", "cupy")
SIZES = ((2, 63, 2, 24), (1, 1, 3, 16))  # [B, T, H, D]
#: output and final state against miras_ref: (metric, bound)
FORWARD_BOUNDS = {"float64": ("max", 1e-10), "float32": ("max", 1e-5),
                  "bfloat16": ("rms", 1e-2)}
#: input gradients against torch float64 autograd: (metric, bound)
GRAD_BOUNDS = {"float32": ("max", 1e-5), "bfloat16": ("rms", 3e-2)}
#: float32 bounds are multiplied by these for the MLP memory: its recurrence (LayerNorm of
#: small pre-activations) amplifies round-off; over 63 tokens and 6 seeds the worst float32
#: errors seen were 1.1e-5 (output) and 1.7e-4 (gradients, on an H200; 3e-5 on CPU), against
#: 3e-7 and 5e-7 for the matrix memories
MLP_FLOAT32_SLACK = {"forward": 3.0, "grad": 50.0}


def _extra_configs(d: int) -> dict[str, MirasConfig]:
    """Configurations beyond the zoo, one for each bias/retention no zoo model uses."""
    mat = MatrixMemory(d, d)
    gd = {"eta": 0.1, "alpha": 0.99}
    return {
        "x_l1_kl_global": MirasConfig("x_l1_kl_global", mat, L1Bias(), KLRetention(c=2.0,
                                      axis=None), GD(), gd),
        "x_lp_exact_lq_exact": MirasConfig("x_lp_exact_lq_exact", MLPMemory(d, 2),
                                           LpBias(3.0, smooth=False),
                                           LqRetention(1.5, "exact"), GD(),
                                           {"eta": 0.02, "alpha": 0.99}),
        "x_huber_coord_ftrl": MirasConfig("x_huber_coord_ftrl", mat, HuberCoordinateBias(),
                                          ElasticNetFTRLRetention(1e-3), GD(), gd),
        "x_value_shift_sigmoid": MirasConfig("x_value_shift_sigmoid", mat,
                                             ValueShiftRobustBias(), SigmoidBregmanRetention(),
                                             GD(), gd),
        "x_huber_norm_vector": MirasConfig("x_huber_norm_vector", VectorMemory(d),
                                           HuberNormBias(), L2Retention("decayed"), GD(), gd),
        "x_elastic_lr_smooth": MirasConfig("x_elastic_lr_smooth", mat, L2Bias(),
                                           ElasticNetRetention(0.05, smooth=True), GD(), gd),
        "x_ftrl_smooth_momentum": MirasConfig("x_ftrl_smooth_momentum", mat, L2Bias(),
                                              ElasticNetFTRLRetention(0.05, smooth=True),
                                              Momentum(), {**gd, "mu": 0.9}),
        # Memora with one gate per head (the zoo case has channel-wise α): on CUDA the torch
        # backend's chunked reads then run through the fused op miras_gpu.triton.softmax_reads
        "x_memora_head_gates": replace(zoo.memora(d), name="x_memora_head_gates"),
        # the link applied at chunk starts only (Sec 5.4): the reads of an identity link
        "x_moneta_link_chunk": replace(zoo.moneta(d), name="x_moneta_link_chunk",
                                       link_at="chunk"),
        "x_memora_link_chunk": replace(zoo.memora(d), name="x_memora_link_chunk",
                                       link_at="chunk"),
        "x_l2_lq_matrix_link_chunk": MirasConfig("x_l2_lq_matrix_link_chunk", mat, L2Bias(),
                                                 LqRetention(3.0), GD(), gd, link_at="chunk"),
    }


#: extra configurations (names start with ``x_``); see :func:`_extra_configs`
EXTRA = tuple(_extra_configs(4))

#: non-scalar gate shapes per model: "channel" = [B, T, H, D], "element" = [B, T, H, D, D]
GATE_KINDS = {
    "gla": {"alpha": "channel"},
    "hgrn2": {"alpha": "channel"},
    "rwkv7": {"alpha": "channel", "eta": "channel"},
    "dfw": {"alpha": "element"},
    "ttt_mlp": {"eta": "channel"},
    "memora": {"alpha": "channel"},
    "x_memora_link_chunk": {"alpha": "channel"},
    "x_huber_coord_ftrl": {"delta": "channel"},
}

#: learning rates below the model's default where the default makes the memory's trajectory
#: chaotic on these inputs (float64 round-off amplified ~1e3 over 63 tokens), so that float32
#: can be compared with float64 at all: eta = scale * default * U(0.5, 1.5). Memora with
#: ``link_at="chunk"`` reads weights that leave the softmax simplex inside a chunk, through a
#: LayerNorm of a nearly constant vector (|u| / std(u) in the hundreds): at 0.3 its float32
#: reads erred by up to 4.3e-5 over 8 draws (the dual form and the per-token states alike),
#: at 0.1 by up to 1.1e-5
ETA_SCALES = {"moneta": 0.1, "yaad": 0.1, "memora": 0.3, "x_memora_head_gates": 0.3,
              "x_moneta_link_chunk": 0.1, "x_memora_link_chunk": 0.1,
              "ttt_mlp": 0.3, "titans_lmm": 0.3,
              "x_lp_exact_lq_exact": 0.03}

#: the float64 torch op checked by torch.autograd.gradcheck: (op, chunk_size, model)
GRADCHECK_CASES = (
    ("scan", None, "deltanet"),
    ("scan_chunked", 2, "gated_deltanet"),
    ("scan_chunked", 2, "moneta"),
    ("scan_chunked", 2, "yaad"),
    ("scan_chunked", 2, "memora"),
    ("scan", None, "titans_lmm"),
)


def make_config(model: str, d: int) -> MirasConfig:
    """A zoo configuration or one of :data:`EXTRA`, with ``d = d_k = d_v``."""
    if model in zoo.ALL:
        return zoo.get(model, d)
    return _extra_configs(d)[model]


def supports(op: str, config: MirasConfig) -> bool:
    """Whether ``miras_ref`` defines ``op`` for ``config`` (the chunked form: GD through a
    dual-linear retention gate). The recurrence ignores ``link_at``, so its cases are those
    of ``link_at="token"``."""
    if op == "scan":
        return config.link_at == "token"
    alg = config.algorithm
    return type(alg) is GD and config.retention.dual_linear


# --------------------------------------------------------------------------------------------
# cases


@dataclass(frozen=True)
class Case:
    """One conformance check."""

    op: str
    chunk_size: int | None
    model: str
    backend: str
    dtype: str
    size: tuple[int, int, int, int]  # B, T, H, D
    device: str = "cpu"
    base_seed: int = 0

    @property
    def id(self) -> str:
        op = self.op if self.chunk_size is None else f"{self.op}[c{self.chunk_size}]"
        B, T, H, D = self.size
        return f"{op}-{self.model}-{self.backend}-{self.dtype}-B{B}T{T}H{H}D{D}"

    @property
    def seed(self) -> int:
        return (self.base_seed * 1_000_003 + zlib.crc32(self.id.encode())) % 2**32


def kernel_backends() -> list[str]:
    """The available backends among torch, triton and cupy."""
    return [name for name in available_backends() if name in KERNEL_BACKENDS]


def dtypes_for(device: str) -> tuple[str, ...]:
    return ("float64", "float32", "bfloat16") if device.startswith("cuda") else (
        "float64", "float32")


def cases(device: str = "cpu", backends=None, base_seed: int = 0) -> list[Case]:
    """Every conformance case for ``device`` (see the module docstring)."""
    backends = kernel_backends() if backends is None else list(backends)
    out = []
    for op, chunk in OPS:
        for model in (*zoo.ALL, *EXTRA):
            if not supports(op, make_config(model, 4)):
                continue
            for backend in backends:
                for dtype in dtypes_for(device):
                    for size in SIZES:
                        out.append(Case(op, chunk, model, backend, dtype, size, device,
                                        base_seed))
    return out


# --------------------------------------------------------------------------------------------
# inputs


def make_inputs(config: MirasConfig, model: str, size, seed: int) -> dict:
    """Random float64 inputs for one case: ``{"q", "k", "v", "gates", "initial_state"}``."""
    rng = np.random.default_rng(seed)
    B, T, H, D = size
    multi = isinstance(config.algorithm, MultiStepGD)
    kv_shape = (B, T, H, config.algorithm.n_steps, D) if multi else (B, T, H, D)

    def unit(shape):
        x = rng.standard_normal(shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    q, k, v = unit((B, T, H, D)), unit(kv_shape), rng.standard_normal(kv_shape)
    kinds = GATE_KINDS.get(model, {})
    defaults = {"eta": 0.1, "alpha": 1.0, "delta": 1.0, "mu": 0.9, **config.gate_defaults}
    gates = {}
    for name in config.required_gates:
        shape = {"channel": (B, T, H, D), "element": (B, T, H, D, D)}.get(kinds.get(name),
                                                                          (B, T, H))
        if name == "eta":
            scale = ETA_SCALES.get(model, 1.0) * defaults["eta"]
            gates[name] = scale * rng.uniform(0.5, 1.5, shape)
        elif name == "alpha":
            gates[name] = rng.uniform(0.9, 1.0, shape)
        elif name == "delta":
            # far below or far above any error norm (~1-10), so that float32 and float64
            # take the same branch of the Huber-type biases (their gradient jumps at δ)
            small = rng.uniform(size=shape) < 0.5
            gates[name] = np.where(small, rng.uniform(0.05, 0.2, shape),
                                   rng.uniform(20.0, 40.0, shape))
        else:  # mu
            gates[name] = rng.uniform(0.5, 0.95, shape)
    return {"q": q, "k": k, "v": v, "gates": gates,
            "initial_state": make_initial_state(config, B, H, rng)}


def make_initial_state(config: MirasConfig, B: int, H: int, rng) -> dict:
    """A random non-zero state with the keys and shapes of the config's default state."""
    alg = config.algorithm
    if isinstance(alg, NonParametric):
        S = 3
        K = rng.standard_normal((B, H, S, config.memory.d_k))
        return {"K": K / np.linalg.norm(K, axis=-1, keepdims=True),
                "V": rng.standard_normal((B, H, S, config.memory.d_v))}
    if isinstance(alg, ClosedForm):
        dk, dv = config.memory.d_k, config.memory.d_v
        X = rng.standard_normal((B, H, dk, 2 * dk)) / math.sqrt(2 * dk)
        return {"P": 0.1 * rng.standard_normal((B, H, dv, dk)), "Q": X @ X.swapaxes(-1, -2)}
    default = initial_memory_state(config, None, B, H)
    state = {}
    for name, a in default.items():
        scale = 0.01 if name.startswith("mom_") else 0.1
        state[name] = a + scale * rng.standard_normal(a.shape)
    return state


def _round(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` (and back to float64): what the case feeds both sides."""
    import torch

    return torch.as_tensor(x).to(getattr(torch, dtype)).double().numpy()


# --------------------------------------------------------------------------------------------
# errors


def _comparable(out, ref):
    """``(out, ref)`` as float64 arrays, or ``None`` for NaN/inf or a shape mismatch."""
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape or not (np.all(np.isfinite(out)) and np.all(np.isfinite(ref))):
        return None
    return out, ref


def _relative(out, ref, size) -> float:
    """``size(out - ref) / size(ref)`` (``size(ref) = 0``: the absolute ``size(out - ref)``);
    ``inf`` for NaN/inf or a shape mismatch, 0 for empty arrays."""
    pair = _comparable(out, ref)
    if pair is None:
        return math.inf
    out, ref = pair
    if out.size == 0:
        return 0.0
    scale, diff = size(ref), size(out - ref)
    return float(diff / scale) if scale > 0 else float(diff)


def max_error(out, ref) -> float:
    """``max|out - ref| / max|ref|``; ``inf`` for NaN/inf or a shape mismatch."""
    return _relative(out, ref, lambda a: np.max(np.abs(a)))


def rms_error(out, ref) -> float:
    """``rms(out - ref) / rms(ref)``; ``inf`` for NaN/inf or a shape mismatch."""
    return _relative(out, ref, lambda a: np.sqrt(np.mean(a**2)))


METRICS = {"max": max_error, "rms": rms_error}


@dataclass
class Result:
    """Errors of one case: ``errors[name] = (error, bound)``."""

    case_id: str
    errors: dict = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""

    @property
    def passed(self) -> bool:
        # `not err <= bound` is also True for NaN
        return bool(self.errors) and all(err <= bound for err, bound in self.errors.values())

    def worst(self, prefix: str) -> tuple[float, str]:
        """The largest error whose name starts with ``prefix``, and that name."""
        items = [(err, n) for n, (err, _) in self.errors.items() if n.startswith(prefix)]
        return max(items, key=lambda t: (math.isnan(t[0]), t[0])) if items else (math.nan, "")

    def describe(self) -> str:
        lines = [f"{self.case_id}: {'pass' if self.passed else 'FAIL'} {self.note}"]
        for name, (err, bound) in self.errors.items():
            flag = "ok " if err <= bound else "BAD"
            lines.append(f"  {flag} {name}: {err:.3e} (bound {bound:.1e})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# running a case


def _to_torch(inputs: dict, dtype, device, requires_grad: bool):
    import torch

    def t(a):
        x = torch.as_tensor(a, dtype=dtype, device=device)
        return x.requires_grad_(requires_grad)

    return {"q": t(inputs["q"]), "k": t(inputs["k"]), "v": t(inputs["v"]),
            "gates": {n: t(a) for n, a in inputs["gates"].items()},
            "initial_state": {n: t(a) for n, a in inputs["initial_state"].items()}}


def _leaves(tin: dict) -> dict:
    """Every input tensor by its argument name."""
    out = {"q": tin["q"], "k": tin["k"], "v": tin["v"]}
    out.update({f"gates['{n}']": a for n, a in tin["gates"].items()})
    out.update({f"initial_state['{n}']": a for n, a in tin["initial_state"].items()})
    return out


def _call(case_op: str, chunk_size, config, tin: dict, backend: str):
    import miras_gpu

    kw = dict(gates=tin["gates"], initial_state=tin["initial_state"], output_final_state=True,
              backend=backend)
    if case_op == "scan":
        return miras_gpu.scan(config, tin["q"], tin["k"], tin["v"], **kw)
    return miras_gpu.scan_chunked(config, tin["q"], tin["k"], tin["v"], chunk_size=chunk_size,
                                  **kw)


def _results(case: Case, config, inputs: dict, weights: dict, dtype, backend: str,
             grads: bool) -> dict:
    """The op's output and final state on ``inputs`` (in ``dtype``, on ``backend``) and, with
    ``grads``, the gradients of ``Σ y·w_y + Σ_n state_n·w_n`` with respect to every input
    (None for an input the op does not read), all as float64 arrays by comparison name
    (``"y"``, ``"final_state['W']"``, ``"grad q"``, ...)."""
    import torch

    tin = _to_torch(inputs, dtype, case.device, requires_grad=grads)
    with torch.set_grad_enabled(grads):
        y, final = _call(case.op, case.chunk_size, config, tin, backend)
    out = {"y": y.detach().double().cpu().numpy()}
    out.update({f"final_state['{n}']": s.detach().double().cpu().numpy()
                for n, s in final.items()})
    if grads:
        loss = (y.double() * torch.as_tensor(weights["y"], device=case.device)).sum()
        for n, s in final.items():
            loss = loss + (s.double() * torch.as_tensor(weights[n], device=case.device)).sum()
        leaves = _leaves(tin)
        gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        out.update({f"grad {n}": None if g is None else g.double().cpu().numpy()
                    for n, g in zip(leaves, gs)})
    return out


def _input_gradients(case: Case, config, inputs: dict, dtype, weights: dict) -> dict:
    """Gradients of ``Σ y·w_y + Σ_n state_n·w_n`` with respect to every input (:func:`_results`
    on the case's backend), by input name."""
    res = _results(case, config, inputs, weights, dtype, case.backend, True)
    return {n[5:]: a for n, a in res.items() if n.startswith("grad ")}


def bounds(case: Case, config, what: str) -> tuple[str, float]:
    """``(metric, bound)`` of a case's ``what`` ("forward" or "grad") comparison."""
    metric, bound = (FORWARD_BOUNDS if what == "forward" else GRAD_BOUNDS)[case.dtype]
    if case.dtype == "float32" and isinstance(config.memory, MLPMemory):
        bound *= MLP_FLOAT32_SLACK[what]
    return metric, bound


def _rounded(inputs: dict, dtype: str) -> dict:
    """Every input of ``inputs`` rounded to ``dtype`` (:func:`_round`)."""
    return {"q": _round(inputs["q"], dtype), "k": _round(inputs["k"], dtype),
            "v": _round(inputs["v"], dtype),
            "gates": {n: _round(a, dtype) for n, a in inputs["gates"].items()},
            "initial_state": {n: _round(a, dtype) for n, a in inputs["initial_state"].items()}}


#: relative size of the input noise that probes a float32 case's conditioning, and the float32
#: rounding unit it stands for: a float32 run's own round-off acts like input noise of about
#: the rounding unit, so a float64 result that moves by ``m`` under noise ``PROBE_NOISE``
#: would move by about ``m · FLOAT32_UNIT / PROBE_NOISE`` under float32's
PROBE_NOISE = 1e-6
FLOAT32_UNIT = 6e-8
#: noise draws per probe, and the share of a bound that the probed round-off may reach
PROBES = 2
PROBE_SHARE = 0.25
#: draws of a float32 case's inputs before its last draw is taken as it is
MAX_DRAWS = 4


def ill_conditioned(case: Case, config, inputs: dict, weights: dict, grads: bool,
                    seed: int) -> str | None:
    """Why float32 round-off alone could break a bound on these inputs, or None.

    The float64 op runs again on ``q, k, v`` and the initial state times ``1 + PROBE_NOISE·n``
    (``n`` standard normal, :data:`PROBES` draws). Where its output, final state or a gradient
    moves by more than ``PROBE_SHARE`` of its float32 bound, scaled from ``PROBE_NOISE`` to
    :data:`FLOAT32_UNIT`, the inputs sit where the op amplifies round-off beyond the bound (a
    chaotic trajectory, or a residual at the kink of a Huber-type bias, where the gradient
    jumps): no float32 implementation could be judged there."""
    import torch

    def exact(x):  # the float64 torch op; inputs it does not read have no gradient
        return {n: a for n, a in _results(case, config, x, weights, torch.float64, "torch",
                                          grads).items() if a is not None}

    base = exact(inputs)
    rng = np.random.default_rng(seed + 2)

    def noisy(a):
        return a * (1.0 + PROBE_NOISE * rng.standard_normal(a.shape))

    for _ in range(PROBES):
        probe = {**inputs, "q": noisy(inputs["q"]), "k": noisy(inputs["k"]),
                 "v": noisy(inputs["v"]),
                 "initial_state": {n: noisy(a) for n, a in inputs["initial_state"].items()}}
        moved = exact(probe)
        for name, ref in base.items():
            metric, bound = bounds(case, config, "grad" if name.startswith("grad") else
                                   "forward")
            change = METRICS[metric](moved[name], ref) * FLOAT32_UNIT / PROBE_NOISE
            if not change <= PROBE_SHARE * bound:
                return (f"{name} moves by {change:.1e} under float32-size input noise "
                        f"(bound {bound:.0e})")
    return None


def draw_inputs(case: Case, config, seed: int) -> tuple:
    """``(inputs, y_ref, state_ref, weights)`` of one draw: the inputs from ``seed`` rounded to
    the case's dtype, ``miras_ref``'s float64 output and final state on them, and the weights
    of the linear function whose gradients are compared (from ``seed + 1``)."""
    inputs = _rounded(make_inputs(config, case.model, case.size, seed), case.dtype)
    ref_op = miras_ref.scan if case.op == "scan" else miras_ref.scan_chunked
    extra = {} if case.op == "scan" else {"chunk_size": case.chunk_size}
    y_ref, s_ref = ref_op(config, inputs["q"], inputs["k"], inputs["v"], inputs["gates"],
                          initial_state=inputs["initial_state"], output_final_state=True,
                          **extra)
    rng = np.random.default_rng(seed + 1)
    weights = {"y": rng.standard_normal(y_ref.shape)}
    weights.update({n: rng.standard_normal(a.shape) for n, a in s_ref.items()})
    return inputs, y_ref, s_ref, weights


def run_case(case: Case) -> Result:
    """Run one case; return its errors (never raises for a numeric mismatch).

    A float32 case whose inputs are ill-conditioned (:func:`ill_conditioned`) draws new ones
    from the next seed, at most :data:`MAX_DRAWS` times; the result's note says why."""
    import torch

    t0 = time.perf_counter()
    config = make_config(case.model, case.size[3])
    res = Result(case.id)
    torch_based = get_backend(case.backend).array_kind == "torch"
    grads = case.dtype != "float64" and torch_based
    redrawn = []
    for draw in range(MAX_DRAWS):
        seed = case.seed + 7919 * draw
        inputs, y_ref, s_ref, weights = draw_inputs(case, config, seed)
        why = (ill_conditioned(case, config, inputs, weights, grads, seed)
               if case.dtype == "float32" and draw < MAX_DRAWS - 1 else None)
        if why is None:
            break
        redrawn.append(f"seed {seed}: {why}")
    if redrawn:
        res.note = "inputs redrawn; " + "; ".join(redrawn)

    dtype = getattr(torch, case.dtype)
    metric, bound = bounds(case, config, "forward")
    with torch.no_grad():
        y, final = _call(case.op, case.chunk_size, config,
                         _to_torch(inputs, dtype, case.device, False), case.backend)
    res.errors["y"] = (METRICS[metric](y.double().cpu().numpy(), y_ref), bound)
    for n in s_ref:
        out = final[n].double().cpu().numpy() if n in final else np.full(1, np.nan)
        res.errors[f"final_state['{n}']"] = (METRICS[metric](out, s_ref[n]), bound)

    if grads:
        g_ref = _input_gradients(case, config, inputs, torch.float64, weights)
        g_out = _input_gradients(case, config, inputs, dtype, weights)
        gmetric, gbound = bounds(case, config, "grad")
        for n, ref in g_ref.items():
            if ref is None and g_out[n] is None:
                continue  # an input the op does not read (HGRN2's k)
            out = np.full(1, np.nan) if g_out[n] is None else g_out[n]
            ref = np.full(1, np.nan) if ref is None else ref
            res.errors[f"grad {n}"] = (METRICS[gmetric](out, ref), gbound)
    res.seconds = time.perf_counter() - t0
    return res


def run_gradcheck(op: str, chunk_size, model: str, device: str = "cpu") -> Result:
    """``torch.autograd.gradcheck`` of the float64 torch op, tiny sizes, every input."""
    import torch

    import miras_gpu

    t0 = time.perf_counter()
    size = (1, 5, 1, 4)
    config = make_config(model, size[3])
    if isinstance(config.memory, MLPMemory):
        config = MirasConfig(config.name, MLPMemory(size[3], 2), config.bias, config.retention,
                             config.algorithm, config.gate_defaults, config.key_from_alpha,
                             config.lag_token)
    cid = (f"gradcheck-{op}" + ("" if chunk_size is None else f"[c{chunk_size}]")
           + f"-{model}-torch-float64")
    inputs = make_inputs(config, model, size, zlib.crc32(cid.encode()))
    tin = _to_torch(inputs, torch.float64, device, requires_grad=True)
    names = list(_leaves(tin))
    gate_names, state_names = list(tin["gates"]), list(tin["initial_state"])

    def fn(*flat):
        q, k, v = flat[:3]
        gates = dict(zip(gate_names, flat[3:3 + len(gate_names)]))
        init = dict(zip(state_names, flat[3 + len(gate_names):]))
        kw = dict(gates=gates, initial_state=init, output_final_state=True, backend="torch")
        if op == "scan":
            y, final = miras_gpu.scan(config, q, k, v, **kw)
        else:
            y, final = miras_gpu.scan_chunked(config, q, k, v, chunk_size=chunk_size, **kw)
        return (y, *final.values())

    ok = torch.autograd.gradcheck(fn, tuple(_leaves(tin).values()), eps=1e-6, atol=1e-6,
                                  rtol=1e-4, raise_exception=False)
    res = Result(cid, {"gradcheck": (0.0 if ok else math.inf, 0.0)},
                 note=f"inputs: {', '.join(names)}")
    res.seconds = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------------------------
# report


def _environment(device: str) -> dict[str, str]:
    import torch

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else (
        platform.processor() or platform.machine() or "cpu")
    env = {"device": f"{device} ({name})", "torch": torch.__version__,
           "numpy": np.__version__, "python": platform.python_version(),
           "platform": platform.platform()}
    if device.startswith("cuda"):
        env["float32 matmuls"] = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return env


def write_report(path: str, device: str, results: list[Result], gradchecks: list[Result],
                 base_seed: int, seconds: float) -> None:
    """Write the Markdown report of a run."""
    env = _environment(device)
    n_fail = sum(not r.passed for r in results + gradchecks)
    lines = ["# MIRAS conformance report", "",
             "Each backend against `miras_ref` (float64) on fresh random inputs; written by "
             "`python -m miras_gpu.conformance`.", "",
             "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += [f"| base seed | {base_seed} |", f"| wall time | {seconds:.1f} s |",
              f"| cases | {len(results)} conformance + {len(gradchecks)} gradcheck |",
              f"| result | {'all passed' if n_fail == 0 else f'{n_fail} FAILED'} |", ""]
    lines += ["## Bounds", "",
              "| dtype | forward (output, final state) | input gradients |",
              "| --- | --- | --- |"]
    for dt, (m, b) in FORWARD_BOUNDS.items():
        gm, gb = GRAD_BOUNDS.get(dt, ("-", None))
        gtxt = "-" if gb is None else f"{gm} error <= {gb:g}"
        lines.append(f"| {dt} | {m} error <= {b:g} | {gtxt} |")
    slack = MLP_FLOAT32_SLACK
    lines += ["", "`max` error: `max|out - ref| / max|ref|`; `rms` error: "
              "`rms(out - ref) / rms(ref)`. Gradients are compared with torch float64 autograd "
              "of the same op. For the MLP memory the float32 bounds are "
              f"{slack['forward']:g}x (forward) and {slack['grad']:g}x (gradients) larger: its "
              "recurrence amplifies round-off. A float32 case whose inputs are "
              "ill-conditioned (the float64 op itself moves by more than a quarter of a bound "
              "under input noise of float32's rounding size) draws new inputs from the next "
              f"seed, at most {MAX_DRAWS - 1} times; the section *Inputs redrawn* lists them.",
              ""]
    lines += ["## Totals", "", "| dtype | cases | passed | max output error | "
              "max state error | max gradient error |", "| --- | --- | --- | --- | --- | --- |"]
    for dt in FORWARD_BOUNDS:
        rs = [r for r in results if f"-{dt}-" in r.case_id]
        if not rs:
            continue
        worst = {p: max((r.worst(p)[0] for r in rs), default=math.nan)
                 for p in ("y", "final_state", "grad")}
        fmt = {p: ("-" if math.isnan(w) else f"{w:.2e}") for p, w in worst.items()}
        lines.append(f"| {dt} | {len(rs)} | {sum(r.passed for r in rs)} | {fmt['y']} | "
                     f"{fmt['final_state']} | {fmt['grad']} |")
    lines += ["", "## Gradcheck (float64 torch op)", "", "| case | result | seconds |",
              "| --- | --- | --- |"]
    lines += [f"| {r.case_id} | {'pass' if r.passed else 'FAIL'} | {r.seconds:.1f} |"
              for r in gradchecks]
    lines += ["", "## Cases", "",
              "| case | output | final state (worst) | gradient (worst) | result | s |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        cols = []
        for p in ("y", "final_state", "grad"):
            err, name = r.worst(p)
            if math.isnan(err) and not name:
                cols.append("-")
            else:
                label = "" if p == "y" else f" {name.split(' ', 1)[-1]}"
                cols.append(f"{err:.2e}{label}")
        lines.append(f"| {r.case_id} | {cols[0]} | {cols[1]} | {cols[2]} | "
                     f"{'pass' if r.passed else '**FAIL**'} | {r.seconds:.2f} |")
    redrawn = [r for r in results if r.note.startswith("inputs redrawn")]
    lines += ["", "## Inputs redrawn", ""]
    lines += [f"- {r.case_id}: {r.note.split('; ', 1)[1]}" for r in redrawn] or ["none"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miras_gpu.conformance",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", required=True, help="path of the Markdown report")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the random inputs")
    parser.add_argument("-k", dest="keyword", default="", help="only cases whose id has this")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the tensors are tiny, and OpenMP "
                             "threads stall on a busy machine)")
    parser.add_argument("--tf32", action="store_true",
                        help="float32 matmuls of torch on TF32 tensor cores (CUDA), as "
                             "`miras train` runs them")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    t0 = time.perf_counter()
    results = []
    for case in cases(args.device, base_seed=args.seed):
        if args.keyword in case.id:
            try:
                r = run_case(case)
            except Exception as err:  # a crash is a failure, reported like one
                r = Result(case.id, {"exception": (math.inf, 0.0)}, note=repr(err))
            results.append(r)
            if not r.passed:
                print(r.describe(), file=sys.stderr)
    # the gradchecks test the float64 torch op: "-k torch" keeps them, "-k triton" does not
    gradchecks = [run_gradcheck(op, c, m, args.device) for op, c, m in GRADCHECK_CASES
                  if args.keyword in f"{op}-{m}-torch-float64"]
    write_report(args.report, args.device, results, gradchecks, args.seed,
                 time.perf_counter() - t0)
    n_fail = sum(not r.passed for r in results + gradchecks)
    print(f"{len(results)} cases, {len(gradchecks)} gradchecks, {n_fail} failed; "
          f"report: {args.report}")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
