"""The ``triton`` backend's ops: chunk-parallel MIRAS with fused Triton kernels.

:func:`scan_chunked` has the signature and the semantics of :func:`miras_ref.scan_chunked`
(and :func:`miras_gpu.torch.scan_chunked`): same arguments, same outputs, same final state,
autograd-differentiable through :class:`ChunkedScan` (a ``torch.autograd.Function``).

What runs where (docs/kernels.md has the equations):

=============================  =============================  ================================
                               forward                        backward
=============================  =============================  ================================
ℓ2 retention (both anchors),   Triton (state pass + parallel  Triton (a state-gradient pass,
head dims <= 64 (matrix:       dual-form reads)               segments in reverse, and the
DeltaNet, Gated DeltaNet, GLA,                                segment-parallel gradients;
...; MLP: Yaad, TTT-MLP); MLP                                 for the MLP the reads first,
with Moneta's ℓq link and                                     Moneta's norms' gradient next,
scalar gates; with                                            then the state gradient;
``backward="kernels"`` MLP                                    Memora's reads: every token's
with Memora's KL link and                                     state in reverse, per hidden
scalar gates                                                  block, :mod:`.mlp_kl`)
ℓq / KL links (Memora, Moneta  Triton (state pass + reads;    torch autograd, chunk by chunk,
with channel-wise gates,       per-token states or norms      from the stored chunk states
...), or head dims above 64    where the link needs them)     (one CUDA graph on CUDA)
anything else                  torch backend (one-time note)  torch backend
=============================  =============================  ================================

A lag token (Memora's, Eq 30-32) makes each chunk two segments; every row above takes it.
Sec 5.4's chunk form (``link_at="chunk"``) of an MLP memory with Moneta's or Memora's link
reads the anchor ``ψ(Z0)`` after plain steps: the state pass stores the anchors and the
identity link's read kernels run on them (:attr:`Plan.reads_at_anchor`); its backward is
that of the link's row above, the reads' share of the anchor going through the link.

The Triton rows take scalar ``[B, T, H]`` or channel-wise ``[B, T, H, D]`` η, α: with
channel-wise gates the reads' masks are summed channel by channel (:mod:`.gates`), and the
backward kernels first run the gradients of those sums for every segment at once.

Covered by the kernels: plain GD (:class:`miras_ref.algorithms.GD`), the matrix memory with
``d_k, d_v <= 128`` and the MLP memory with ``d <= 128`` (at ``d = 128`` with 16-bit inputs
the state kernel needs 288 KiB of shared memory, more than Hopper's 227 KiB: those calls fall
back to the torch backend, :mod:`miras_gpu.triton.resources`); biases dot product, ℓ2, ℓp (smooth
or exact) and Huber mixture (smooth or exact, per-token or channel-wise δ); retention ℓ2 (both
anchors), ℓq (matrix: simplified and exact links; MLP: simplified, Moneta's) and KL (matrix:
softmax per row or over the whole matrix; MLP: per row, Memora's); per-token ``eta`` and
``alpha``, scalar ``[B, T, H]`` or channel-wise ``[B, T, H, D]`` (:mod:`.gates`); float32,
bfloat16 and float16 inputs on a CUDA device (or on the CPU under ``TRITON_INTERPRET=1``).
The memory state and every reduction are float32; the output has the dtype of ``q``, the
final state is float32 (as the torch backend); matrix
products run in float32 or, for 16-bit inputs where that is safe, TF32 (:func:`dot_precision`).

Everything else (element-wise ``alpha``, other biases and gates,
``link_at="chunk"`` with a non-identity link on a matrix memory,
momentum and the other algorithms, float64 inputs, CPU tensors without the interpreter, head
dims above 128) runs on :mod:`miras_gpu.torch`, with a :class:`TritonFallbackWarning` issued
once per reason.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass, replace

import torch
from triton.runtime.errors import OutOfResources

from miras_ref import bias as ref_bias
from miras_ref import retention as ref_ret
from miras_ref.algorithms import GD
from miras_ref.memory import MatrixMemory, MLPMemory

from .. import torch as torch_ops
from ..torch import chunked as torch_chunked
from ..torch._checks import check_positive_int, initial_memory_state, validate_inputs
from ..torch.scan import default_state

#: allocate every output and scratch buffer filled with NaN (tests: proves each is written)
POISON_BUFFERS = False
#: largest head dimension the kernels take (the state tile lives in registers)
MAX_DIM = 128


class TritonFallbackWarning(UserWarning):
    """Part of a call runs another way than the Triton kernels: on the torch backend where
    they do not cover it, or its backward's recomputation op by op where the CUDA-graph
    capture failed. Issued once per reason."""


_noted: set[str] = set()


def _note(reason: str, instead: str = "running this call on the torch backend "
                                      "(miras_gpu.torch) instead") -> None:
    """Warn once per distinct reason, saying what runs ``instead``."""
    if reason in _noted:
        return
    _noted.add(reason)
    warnings.warn(f"miras_gpu.triton: {reason}; {instead}", TritonFallbackWarning,
                  stacklevel=3)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------------------------
# what the kernels cover


BIAS_CODES = {"dot": 0, "l2": 1, "lp_smooth": 2, "lp_exact": 3, "huber_smooth": 4,
              "huber_exact": 5}
LINK_CODES = {"identity": 0, "lq_simplified": 1, "lq_exact": 2, "kl_row": 3, "kl_all": 4}
#: links whose backward kernels measured slower than the torch recomputation (H200, the
#: benchmark's size, docs/kernels.md): ``backward="auto"`` takes the recomputation for them
SLOWER_KERNEL_BACKWARD = frozenset({LINK_CODES["kl_row"]})


@dataclass(frozen=True)
class Plan:
    """Kernel selection for one configuration (built by :func:`plan_for`)."""

    config: object
    kind: str  # "matrix" or "mlp"
    bias: int
    link: int
    decayed: bool
    p: float = 2.0
    sharpness: float = 10.0
    eps: float = 1e-6
    q: float = 2.0
    c: float = 1.0

    @property
    def reads_at_anchor(self) -> bool:
        """Sec 5.4's chunk form (``link_at="chunk"``) with a non-identity link: the queries
        read the anchor ``ψ(Z0)`` after plain steps, by the identity link's read kernels on
        the stored anchors (a lag token still reads its own ``ψ(Z_t)``)."""
        return self.config.link_at == "chunk" and self.link != LINK_CODES["identity"]

    @property
    def triton_backward(self) -> bool:
        """The hand-written backward kernels cover this plan (else torch recomputation).

        Identity link (ℓ2 retention) or, for the MLP memory, Moneta's simplified ℓq link or
        Memora's row-softmax KL link; head dims up to 64 (at 128 the tiles of the gradient
        kernels need more shared memory than an H100 has). Moneta's and Memora's links need
        scalar gates as well (:meth:`Launch.kernel_backward`).
        """
        mem = self.config.memory
        dims = (mem.d_k, mem.d_v) if self.kind == "matrix" else (mem.d,)
        links = (0, 1, 3) if self.kind == "mlp" else (0,)
        return self.link in links and max(dims) <= 64

    def backward_kernels(self, backward: str, gate_cw: bool) -> bool:
        """Whether a call's gradients come from the backward kernels (else the torch
        recomputation), for :func:`scan_chunked`'s ``backward`` and channel-wise gates
        ``gate_cw``: the kernels must cover the plan (:attr:`triton_backward`; Moneta's and
        Memora's links with scalar gates only); ``"auto"`` also leaves out the links of
        :data:`SLOWER_KERNEL_BACKWARD`, ``"torch"`` takes none."""
        scalar_only = self.link in (LINK_CODES["lq_simplified"], LINK_CODES["kl_row"])
        covered = self.triton_backward and not (scalar_only and gate_cw)
        if backward == "auto":  # where the kernels are the faster way (docs/kernels.md)
            return covered and self.link not in SLOWER_KERNEL_BACKWARD
        return covered and backward == "kernels"


def _bias_code(bias) -> tuple[int, dict] | str:
    t = type(bias)
    if t is ref_bias.DotProductBias:
        return BIAS_CODES["dot"], {}
    if t is ref_bias.L2Bias:
        return BIAS_CODES["l2"], {}
    if t is ref_bias.LpBias:
        code = BIAS_CODES["lp_smooth" if bias.smooth else "lp_exact"]
        return code, {"p": float(bias.p), "sharpness": float(bias.sharpness),
                      "eps": float(bias.eps)}
    if t is ref_bias.HuberMixtureBias:
        code = BIAS_CODES["huber_smooth" if bias.smooth else "huber_exact"]
        return code, {"sharpness": float(bias.sharpness)}
    return f"the {getattr(bias, 'name', t.__name__)} attentional bias has no Triton kernel"


def _link_code(ret, kind: str) -> tuple[int, dict] | str:
    t = type(ret)
    if t is ref_ret.L2Retention:
        return LINK_CODES["identity"], {}
    if t is ref_ret.LqRetention:
        if ret.link_kind == "simplified":
            return LINK_CODES["lq_simplified"], {"q": float(ret.q)}
        if kind == "matrix":
            return LINK_CODES["lq_exact"], {"q": float(ret.q)}
        return "the exact ℓq link of an MLP memory has no Triton kernel"
    if t is ref_ret.KLRetention:
        if ret.axis == -1 or (kind == "matrix" and ret.axis == 1):
            return LINK_CODES["kl_row"], {"c": float(ret.c)}
        if kind == "matrix" and ret.axis is None:
            return LINK_CODES["kl_all"], {"c": float(ret.c)}
        return f"the KL retention with axis={ret.axis!r} on a {kind} memory has no Triton kernel"
    return f"the {getattr(ret, 'name', t.__name__)} retention gate has no Triton kernel"


def plan_for(config) -> Plan | str:
    """The kernel plan of ``config``, or a sentence saying why the kernels do not cover it."""
    if type(config.algorithm) is not GD:
        return f"the {config.algorithm.name} algorithm has no Triton kernel (plain GD only)"
    if config.key_from_alpha:
        return "keys tied to the retention gate (HGRN2) have no Triton kernel"
    mem = config.memory
    if type(mem) is MatrixMemory:
        kind = "matrix"
        if max(mem.d_k, mem.d_v) > MAX_DIM:
            return f"matrix memories with d_k or d_v above {MAX_DIM} have no Triton kernel"
    elif type(mem) is MLPMemory:
        kind = "mlp"
        if mem.d > MAX_DIM:
            return f"MLP memories with d above {MAX_DIM} have no Triton kernel"
    else:
        return f"the {getattr(mem, 'name', type(mem).__name__)} memory has no Triton kernel"
    b = _bias_code(config.bias)
    if isinstance(b, str):
        return b
    lk = _link_code(config.retention, kind)
    if isinstance(lk, str):
        return lk
    if config.link_at == "chunk" and lk[0] != LINK_CODES["identity"] and kind == "matrix":
        return "link_at='chunk' with a non-identity link on a matrix memory has no Triton kernel"
    decayed = bool(getattr(config.retention, "decayed_anchor", False))
    return Plan(config, kind, b[0], lk[0], decayed, **b[1], **lk[1])


def _input_reason(config, q, gates: dict) -> str | None:
    """Why these (validated) inputs cannot run on the kernels, or None."""
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"{q.dtype} inputs run on the torch backend (the kernels compute in float32)"
    if q.device.type != "cuda" and not interpreting():
        return (f"tensors on {q.device.type} need TRITON_INTERPRET=1 (the kernels run on CUDA "
                "devices)")
    for name in ("eta", "alpha"):
        if gates[name].ndim > 4:
            return (f"element-wise gates['{name}'] have no Triton kernel (scalar [B, T, H] "
                    "or channel-wise [B, T, H, d_k] gates only)")
    return None


# --------------------------------------------------------------------------------------------
# buffers and launches


def _pow2(n: int, low: int = 16) -> int:
    return max(low, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def _empty(shape, dtype, device) -> torch.Tensor:
    if POISON_BUFFERS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def segments(T: int, chunk_size: int, lag_token: bool) -> tuple[list[int], int]:
    """Segment boundaries ``[0, ..., T]`` and the number of chunks.

    A segment is a chunk; with Memora's lag token each chunk of two or more tokens is split
    into the lag token and the rest (Eq 30-32), so chunk ``c`` starts segment ``2c``.
    """
    bounds = [0]
    n_chunks = 0
    for s in range(0, T, chunk_size):
        e = min(s + chunk_size, T)
        n_chunks += 1
        if lag_token and e - s > 1:
            bounds.append(s + 1)
        bounds.append(e)
    return bounds, n_chunks


@dataclass
class Launch:
    """Sizes of one call."""

    B: int
    T: int
    H: int
    chunk_size: int
    bounds: torch.Tensor  # int32 [NSEG + 1] on the device
    n_seg: int
    n_chunks: int
    block_c: int
    prec_state: str  # tl.dot precision of the forward state pass
    prec: str  # and of the other kernels
    num_warps: int
    block_hidden: int = 64
    #: the ``backward`` argument of :func:`scan_chunked`: ``"auto"``, ``"kernels"``, ``"torch"``
    backward: str = "auto"
    #: channel-wise gates ``[B, T, H, D]`` (every kernel takes them)
    gate_cw: bool = False
    #: programs per batch row and head of the MLP memory's sequential kernels, each with its
    #: part of the hidden axis (:mod:`~miras_gpu.triton.exchange`, :func:`hidden_split`)
    split: int = 1

    @property
    def norm_prec(self) -> str:
        """``tl.dot`` precision of the products that form Moneta's per-token states for their
        norms (forward) and their gradients (backward): TF32, or ``ieee`` where the other
        kernels run in full float32."""
        return "ieee" if self.prec == "ieee" else "tf32"

    def read_segments(self, plan: Plan) -> tuple[int | None, int | None]:
        """Which segments read how, as ``SEGMENTS`` codes of :func:`~.mlp._skips` (0 every
        segment, 1 the lag tokens, 2 the rest; ``None``: no segment): ``(own, anchor)``, the
        segments whose queries read their own token's ``ψ(Z_t)`` and those that read the
        stored anchor after plain steps (:attr:`Plan.reads_at_anchor`). In the chunk form a
        lag token reads its own state, so at chunk size 1, where every segment is a lag
        token, no segment reads an anchor."""
        lag = plan.config.lag_token
        if not plan.reads_at_anchor or (lag and self.chunk_size == 1):
            return 0, None
        return (1, 2) if lag else (None, 0)

    def kernel_backward(self, plan: Plan) -> bool:
        """The gradients of this call come from the backward kernels (else the torch
        recomputation, :func:`_torch_backward`)."""
        return plan.backward_kernels(self.backward, self.gate_cw)


#: ``tl.dot`` precisions (see :func:`miras_gpu.triton._math.mm`), most exact first
DOT_PRECISIONS = ("ieee", "tf32x3", "tf32", "bf16")


def dot_precision(plan: Plan, dtype: torch.dtype, override=None) -> tuple[str, str]:
    """``tl.dot`` precisions of one call: ``(forward state pass, every other kernel)``.

    The forward state pass (``matrix_state_kernel``, ``mlp_state_kernel``) is the recurrence:
    its anchor outputs decide the attentional bias's branches and its rounding compounds over
    the segments. The output kernels and the backward kernels (which read the stored states,
    the forward's ``dY`` or ``dZ`` and, for the MLP, its ``LN`` output, so they decide no
    branch) feed nothing back.

    float32 inputs: full float32 (``"ieee"``) everywhere. 16-bit inputs: bf16 operands
    (float32 accumulation) for matrix memories without the Huber switch; else ``"tf32x3"``
    (about float32's accuracy on tensor cores) for the state pass and, for MLP memories with
    the identity link or Moneta's ℓq link, ``"tf32"`` for the other kernels. The reason is
    measured sensitivity:
    perturbing the inputs by TF32's relative rounding (2^-11) moves the outputs and states of
    the torch backend by about 5e-4 for Gated DeltaNet, but by 3e-2 for Yaad (tokens near the
    switch ``‖e‖ = δ`` of Eq 16 change branch) and 1e-2 for Memora; on an H200 plain TF32 in
    every kernel gives Yaad gradient errors of 0.3, TF32 outside the state pass 7e-3
    (docs/kernels.md). The matrix backward kernels recompute ``e`` and keep the state pass's
    precision. With Moneta's link, TF32 in the other kernels takes its forward+backward from
    101.5 to 77.7 ms (H200, the benchmark's size); with the KL link (gradients by the torch
    recomputation) TF32 makes the MLP output kernel slower (H200: Memora 31 -> 33 ms), so it
    keeps TF32x3. The products that form Moneta's per-token states for their norms and their
    gradients run in TF32, or ``ieee`` where the other kernels do (float32 inputs, or that
    override); they have no precision argument of their own. ``override``: one of
    :data:`DOT_PRECISIONS` for every kernel, or a pair ``(state pass, others)``; ``"bf16"``
    is refused for MLP memories: Triton 3.6 builds their backward kernel with bf16 operands
    into one that faults (an illegal memory access on an H200).
    """
    if override is None:
        if dtype == torch.float32:
            return ("ieee", "ieee")
        if plan.kind == "mlp":  # the faster one for the other kernels
            fast = plan.link in (LINK_CODES["identity"], LINK_CODES["lq_simplified"])
            return ("tf32x3", "tf32" if fast else "tf32x3")
        huber = plan.bias in (BIAS_CODES["huber_smooth"], BIAS_CODES["huber_exact"])
        return ("tf32x3", "tf32x3") if huber else ("bf16", "bf16")
    pair = (override, override) if isinstance(override, str) else tuple(override)
    if len(pair) != 2 or any(p not in DOT_PRECISIONS for p in pair):
        raise ValueError(f"dot_precision must be one of {DOT_PRECISIONS} or a pair (state "
                         f"pass, others) of them, got {override!r}")
    if "bf16" in pair and plan.kind == "mlp":
        raise ValueError("dot_precision='bf16' is not available for MLP memories (their "
                         "backward kernel faults with bf16 operands); use 'tf32x3', "
                         "'tf32' or 'ieee'")
    return pair


def _check_split(split) -> int:
    split = check_positive_int(split, "hidden_split")
    if split & (split - 1):
        raise ValueError(f"hidden_split must be a power of two, got {split}")
    return split


def hidden_split(B: int, H: int, n_blocks: int, device: torch.device,
                 requested: int | None = None) -> int:
    """Programs per batch row and head of the MLP memory's sequential kernels
    (:mod:`~miras_gpu.triton.exchange`): ``requested``, checked, or by default the largest
    power of two up to ``n_blocks`` (hidden blocks of the forward state kernel) whose
    ``B·H·split`` programs fit on the device's SMs, one each (their barriers need them all
    resident); 1 under the CPU interpreter, which runs programs one after another."""
    sms = 0
    if device.type == "cuda" and not interpreting():
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    if requested is None:
        split = 1
        while split * 2 <= n_blocks and B * H * split * 2 <= sms:
            split *= 2
        return split
    split = _check_split(requested)
    if split > 1 and sms == 0:
        raise ValueError(f"hidden_split={split} needs a CUDA device: the programs of one row "
                         "and head wait for each other, and the interpreter runs them in turn")
    if split > n_blocks:
        raise ValueError(f"hidden_split must be at most {n_blocks}, the state kernel's hidden "
                         f"blocks (E·d / block_hidden), got {split}")
    if B * H * split > sms and split > 1:
        raise ValueError(f"hidden_split={split} needs B·H·hidden_split = {B * H * split} "
                         f"programs resident at once; this device has {sms} SMs")
    return split


def _launch(plan: Plan, q: torch.Tensor, chunk_size: int, block_hidden: int | None,
            precision: str | None = None, split: int | None = None) -> Launch:
    B, T, H = q.shape[:3]
    bounds, n_chunks = segments(T, chunk_size, plan.config.lag_token)
    mem = plan.config.memory
    dims = (mem.d_k, mem.d_v) if plan.kind == "matrix" else (mem.d,)
    big = max(_pow2(d) for d in dims)
    hidden = 64
    if plan.kind == "mlp":
        # d = 128 with 64-wide hidden blocks needs more than the 227 KiB of shared memory
        # (with TF32x3 products, 16-bit inputs, 32-wide blocks do not fit either: 288 KiB)
        hidden = block_hidden or min(64 if big <= 64 else 32, _pow2(mem.hidden))
    prec_state, prec = dot_precision(plan, q.dtype, precision)
    block_c = _pow2(chunk_size)
    # full-float32 products are unrolled into FMAs: 8 warps halve each thread's share (and
    # the compile time) for 64-wide tiles; head dims of 128 need 8 warps for the state tile
    warps = 8 if big >= 128 or ("ieee" in (prec_state, prec) and min(block_c, big) >= 64) else 4
    hidden = _pow2(hidden)
    n_split = 1
    if plan.kind == "mlp":
        n_split = hidden_split(B, H, -(-mem.hidden // hidden), q.device, split)
    return Launch(B, T, H, chunk_size, _device_bounds(tuple(bounds), q.device),
                  len(bounds) - 1, n_chunks, block_c, prec_state, prec, warps, hidden,
                  split=n_split)


@functools.lru_cache(maxsize=64)
def _device_bounds(bounds: tuple, device: torch.device) -> torch.Tensor:
    """The segment boundaries as an int32 tensor on ``device``, made once per sequence layout
    (a fresh host-to-device copy per call costs a synchronising transfer). Read-only."""
    return torch.tensor(bounds, dtype=torch.int32, device=device)


def _bias_args(plan: Plan):
    return (plan.p, plan.sharpness, plan.eps)


def _matrix_forward(plan: Plan, L: Launch, q, k, v, eta, alpha, delta, z0):
    from .matrix import matrix_output_kernel, matrix_state_kernel

    mem = plan.config.memory
    dk, dv = mem.d_k, mem.d_v
    dev = q.device
    f32 = torch.float32
    states = _empty((L.B, L.H, L.n_seg, dv, dk), f32, dev)
    dy = _empty((L.B, L.T, L.H, dv), f32, dev)
    zt = _empty((L.B, L.H, dv, dk), f32, dev)
    y = _empty((L.B, L.T, L.H, dv), q.dtype, dev)
    bk, bv = _pow2(dk), _pow2(dv)
    delta_arg = eta if delta is None else delta
    cw = delta is not None and delta.ndim == 4
    matrix_state_kernel[(L.B * L.H,)](
        k, v, eta, alpha, delta_arg, z0[0], L.bounds, states, dy, zt,
        L.T, L.H, dk, dv, L.n_seg, *_bias_args(plan), plan.q, plan.c,
        BIAS=plan.bias, LINK=plan.link, DECAYED=plan.decayed, DELTA_CW=cw,
        GATE_CW=L.gate_cw, BC=L.block_c, BK=bk, BV=bv, PREC=L.prec_state,
        num_warps=L.num_warps, num_stages=1)
    matrix_output_kernel[(L.n_seg, L.B * L.H)](
        q, k, eta, alpha, L.bounds, states, dy, y,
        L.T, L.H, dk, dv, L.n_seg, plan.q, plan.c,
        LINK=plan.link, GATE_CW=L.gate_cw, BC=L.block_c, BK=bk, BV=bv, PREC=L.prec,
        num_warps=L.num_warps, num_stages=1)
    return y, (zt,), (states,)


def _input_grads(q, k, v, eta, alpha, delta) -> tuple:
    """Output buffers of the backward kernels: the gradients of q, k, v in their dtypes, of
    the gates in float32 (``None`` for an absent ``delta``)."""
    f32, dev = torch.float32, q.device
    return (_empty(q.shape, q.dtype, dev), _empty(k.shape, k.dtype, dev),
            _empty(v.shape, v.dtype, dev), _empty(eta.shape, f32, dev),
            _empty(alpha.shape, f32, dev),
            None if delta is None else _empty(delta.shape, f32, dev))


def _matrix_backward(plan: Plan, L: Launch, saved, gy, gzt):
    from .matrix import (
        matrix_backward_kernel,
        matrix_backward_reads_kernel,
        matrix_backward_state_kernel,
    )

    q, k, v, eta, alpha, delta, states = saved
    mem = plan.config.memory
    dk, dv = mem.d_k, mem.d_v
    dev = q.device
    f32 = torch.float32
    gzs = _empty((L.B, L.H, L.n_seg, dv, dk), f32, dev)
    gz0 = _empty((L.B, L.H, dv, dk), f32, dev)
    gq, gk, gv, geta, galpha, gdelta = _input_grads(q, k, v, eta, alpha, delta)
    gy = torch.zeros_like(v) if gy is None else gy.contiguous()
    cw = delta is not None and delta.ndim == 4
    delta_arg = eta if delta is None else delta
    consts = dict(BIAS=plan.bias, DECAYED=plan.decayed, DELTA_CW=cw, BC=L.block_c,
                  BK=_pow2(dk), BV=_pow2(dv), PREC=L.prec, num_warps=L.num_warps,
                  num_stages=1)
    grid = (L.n_seg, L.B * L.H)
    if L.gate_cw:  # the read parts of dY, k, η and the log-decays, every segment at once
        gdyr = _empty((L.B, L.T, L.H, dv), f32, dev)
        gkr, getar, glbr = (_empty((L.B, L.T, L.H, dk), f32, dev) for _ in range(3))
        matrix_backward_reads_kernel[grid](
            q, k, v, eta, alpha, delta_arg, L.bounds, states, gy, gq, gdyr, gkr, getar, glbr,
            L.T, L.H, dk, dv, L.n_seg, *_bias_args(plan), **consts)
    else:  # unused
        gdyr = gkr = getar = glbr = gy
    matrix_backward_state_kernel[(L.B * L.H,)](
        q, k, v, eta, alpha, delta_arg, L.bounds, states, gy, gdyr,
        gy if gzt is None else gzt.contiguous(), gzs, gz0,
        L.T, L.H, dk, dv, L.n_seg, *_bias_args(plan), HAS_GZT=gzt is not None,
        GATE_CW=L.gate_cw, **consts)
    matrix_backward_kernel[grid](
        q, k, v, eta, alpha, delta_arg, L.bounds, states, gzs, gy, gdyr, gkr, getar, glbr,
        gq, gk, gv, geta, galpha, geta if gdelta is None else gdelta,
        L.T, L.H, dk, dv, L.n_seg, *_bias_args(plan), GATE_CW=L.gate_cw, **consts)
    return gq, gk, gv, geta, galpha, gdelta, (gz0,)


#: without gradients, the MLP forward keeps at most this many segment states at a time (even:
#: with a lag token, the lag tokens are the even segments of every window, ``mlp._skips``)
MLP_WINDOW = 256


def _exchange(L: Launch, d: int, device: torch.device) -> tuple:
    """Arguments of one launch of a sequential MLP kernel split ``L.split`` ways
    (:mod:`~miras_gpu.triton.exchange`): ``(x, cnt, XS)``, the exchange regions
    ``x [B·H, 2, split, XS]`` with room for every exchange of either kernel, the barrier
    counters ``cnt [B·H]`` (zero: one per launch) and ``XS``."""
    xs = 2 * L.block_c * _pow2(d) + 4 * _pow2(d) + L.block_c
    n = L.B * L.H * 2 * L.split * xs if L.split > 1 else 1
    cnt = torch.zeros(L.B * L.H, dtype=torch.int32, device=device)
    return _empty((n,), torch.float32, device), cnt, xs


def _mlp_forward(plan: Plan, L: Launch, q, k, v, eta, alpha, delta, z0, keep_states=True,
                 save_ln=False):
    """MLP forward: ``(y, final state, start states, (dZ, u, rstd, reads, A1, A2))``. With
    ``keep_states`` (gradients needed) every segment's start state is kept for the backward;
    without, the segments run in windows of :data:`MLP_WINDOW`, so the state memory does not
    grow with ``T``. ``dZ [B, T, H, d]`` (float32) is the loss gradient at every token's
    anchor output; with ``save_ln`` (the backward kernels will run) also the anchor output's
    ``u = LN(z) [B, T, H, d]`` and ``rstd [B, T, H]``, which the backward kernels reuse, and
    what they read of every token's read: Moneta's norm accumulators ``[B, T, H, 4]``,
    Memora's ``zq`` and the log-sum-exp of ``W1``'s rows ``[B, T, H, 2, d]`` (else
    ``None``). ``A1, A2``: with :attr:`Plan.reads_at_anchor`, every segment's anchor
    ``ψ(Z0)`` in the layout of the start states, which the reads take as their start state
    (else ``None``); a lag token reads its own ``ψ(Z_t)``."""
    from ._math import q_int
    from .mlp import mlp_output_kernel, mlp_state_kernel

    mem = plan.config.memory
    d, hd = mem.d, mem.hidden
    dev = q.device
    f32 = torch.float32
    window = L.n_seg if keep_states else min(L.n_seg, MLP_WINDOW)
    # slots: the state at every segment start of a window, then the window's final state
    s1 = _empty((L.B, L.H, window + 1, d, hd), f32, dev)
    s2 = _empty((L.B, L.H, window + 1, hd, d), f32, dev)
    s1[:, :, 0] = z0[0]
    s2[:, :, 0] = z0[1]
    dz = _empty((L.B, L.T, L.H, d), f32, dev)
    u = _empty((L.B, L.T, L.H, d), f32, dev) if save_ln else None
    rstd = _empty((L.B, L.T, L.H), f32, dev) if save_ln else None
    y = _empty((L.B, L.T, L.H, d), q.dtype, dev)
    own, at_anchor = L.read_segments(plan)
    # what the backward kernels read of the tokens that read their own ψ(Z_t): Moneta's norm
    # accumulators, Memora's zq and the log-sum-exp of W1's rows
    reads = None
    if save_ln and own is not None and plan.link == LINK_CODES["lq_simplified"]:
        reads = _empty((L.B, L.T, L.H, 4), f32, dev)
    elif save_ln and own is not None and plan.link == LINK_CODES["kl_row"]:
        reads = _empty((L.B, L.T, L.H, 2, d), f32, dev)
    a1 = None if at_anchor is None else _empty(s1.shape, f32, dev)
    a2 = None if at_anchor is None else _empty(s2.shape, f32, dev)
    delta_arg = eta if delta is None else delta
    cw = delta is not None and delta.ndim == 4
    bd = _pow2(d)
    for w0 in range(0, L.n_seg, window):
        n = min(window, L.n_seg - w0)
        # a fresh (aligned) copy: an offset pointer would compile another kernel variant
        bounds = L.bounds if n == L.n_seg else L.bounds[w0:w0 + n + 1].clone()
        if w0 > 0:  # the previous window's final state starts this one
            s1[:, :, 0] = s1[:, :, window]
            s2[:, :, 0] = s2[:, :, window]
        x, cnt, xs = _exchange(L, d, dev)
        mlp_state_kernel[(L.B * L.H * L.split,)](
            k, v, eta, alpha, delta_arg, bounds, s1, s2, dz, dz if u is None else u,
            dz if rstd is None else rstd, dz if a1 is None else a1, dz if a2 is None else a2,
            x, cnt, L.T, L.H, d, hd, n, xs, *_bias_args(plan), plan.q, plan.c, float(mem.eps),
            BIAS=plan.bias, LINK=plan.link, DECAYED=plan.decayed, DELTA_CW=cw,
            GATE_CW=L.gate_cw, SAVE_LN=save_ln, SAVE_ANCHOR=a1 is not None, BC=L.block_c, BD=bd,
            BH=L.block_hidden, PREC=L.prec_state, SPLIT=L.split,
            num_warps=L.num_warps, num_stages=1)
        out = dict(GATE_CW=L.gate_cw, QI=q_int(plan.q), BC=L.block_c, BD=bd,
                   BH=L.block_hidden, PREC=L.prec, NORM_PREC=L.norm_prec,
                   num_warps=L.num_warps, num_stages=1)
        if at_anchor is not None:  # the anchors after plain steps: the identity link's reads
            mlp_output_kernel[(n, L.B * L.H)](
                q, k, eta, alpha, bounds, a1, a2, dz, y, dz, L.T, L.H, d, hd, n, plan.q,
                plan.c, float(mem.eps), LINK=LINK_CODES["identity"], DECAYED=False,
                SAVE_READS=False, SEGMENTS=at_anchor, **out)
        if own is not None:  # every token's own ψ(Z_t)
            mlp_output_kernel[(n, L.B * L.H)](
                q, k, eta, alpha, bounds, s1, s2, dz, y, dz if reads is None else reads,
                L.T, L.H, d, hd, n, plan.q, plan.c, float(mem.eps), LINK=plan.link,
                DECAYED=plan.decayed, SAVE_READS=reads is not None, SEGMENTS=own, **out)
        if n < window:  # a short last window: move its final state to the last slot
            s1[:, :, window] = s1[:, :, n]
            s2[:, :, window] = s2[:, :, n]
    final = (s1[:, :, window].clone(), s2[:, :, window].clone())
    return y, final, (s1[:, :, :-1], s2[:, :, :-1]), (dz, u, rstd, reads, a1, a2)


def _mlp_backward(plan: Plan, L: Launch, saved, anchor, gy, gzt):
    """Gradients of the identity-link MLP forward in two launches: the reads of every segment
    at once (:func:`~miras_gpu.triton.mlp.mlp_backward_reads_kernel`, grid ``NSEG × B·H``),
    then the end-state gradient back through the segments
    (:func:`~miras_gpu.triton.mlp.mlp_backward_state_kernel`, grid ``B·H``). ``anchor`` is
    the forward's ``(dZ, u, rstd, reads)`` (:func:`_mlp_forward` with ``save_ln``). Memora's KL
    link (scalar gates) takes :func:`~miras_gpu.triton.mlp_kl.mlp_backward_kl_reads_kernel`
    for the reads instead, one program per hidden block of each segment."""
    from ._math import q_int
    from .mlp import (
        mlp_backward_norms_kernel,
        mlp_backward_reads_kernel,
        mlp_backward_state_kernel,
    )

    q, k, v, eta, alpha, delta, s1, s2 = saved
    # token_reads: Moneta's norms or Memora's zq and lse; a1, a2: the anchors the reads take
    # (link_at="chunk"); else None
    dz, u, rstd, token_reads, a1, a2 = anchor
    mem = plan.config.memory
    d, hd = mem.d, mem.hidden
    dev = q.device
    f32 = torch.float32
    B, T, H = L.B, L.T, L.H
    # hidden blocks of 32 for the state kernel: at 64 it needs ~280 KiB of shared memory with
    # TF32x3 products (H100: 227) and, with TF32, it fits but runs slower (H200, d = 64: 14.9
    # against 11.5 ms). The reads kernel takes 64 with TF32 and scalar gates (8.1 against
    # 11.2 ms); with channel-wise gates it needs 192 KiB at 32. (Blocks of 16 would need less,
    # but Triton 3.6 builds their tf32x3 products into kernels that fault on an H200.)
    bhid = min(32, L.block_hidden)
    bh_reads = L.block_hidden if L.prec == "tf32" and not L.gate_cw else bhid
    n_blocks = -(-hd // bhid)
    # ping-pong slots of the end-state gradient; slot 0 starts as the final state's gradient
    g1 = _empty((B, H, 2, d, hd), f32, dev)
    g2 = _empty((B, H, 2, hd, d), f32, dev)
    for g, gt in ((g1, gzt[0]), (g2, gzt[1])):
        if gt is None:
            g[:, :, 0].zero_()
        else:
            g[:, :, 0] = gt
    scratch = _empty((B, H, 2, L.block_c, n_blocks * bhid), f32, dev)
    # the read parts, handed from the first kernel to the second
    gkr, gdzr = _empty((B, T, H, d), f32, dev), _empty((B, T, H, d), f32, dev)
    gdhr, gactr = _empty((B, T, H, hd), f32, dev), _empty((B, T, H, hd), f32, dev)
    gates = (B, T, H, d) if L.gate_cw else (B, T, H)  # η and log-decay parts, per channel
    getar, glbr = _empty(gates, f32, dev), _empty(gates, f32, dev)
    gz1r = _empty((B, H, L.n_seg, d, hd), f32, dev)
    gz2r = _empty((B, H, L.n_seg, hd, d), f32, dev)
    gq, gk, gv, geta, galpha, gdelta = _input_grads(q, k, v, eta, alpha, delta)
    gy = torch.zeros_like(v) if gy is None else gy.contiguous()
    cw = delta is not None and delta.ndim == 4
    reads = (gkr, gdzr, gdhr, gactr, getar, glbr, gz1r, gz2r)
    own, at_anchor = L.read_segments(plan)
    moneta = plan.link == LINK_CODES["lq_simplified"] and own is not None
    qm1 = q_int(plan.q - 1.0)  # sign(Z)|Z|^{q-1} by products where q is an integer
    gs = _empty((B, T, H, 2), f32, dev) if moneta else gq  # ∂L/∂(read scales), Moneta
    # 8 warps for the KL link at any chunk: with 4 (chunk <= 32), Triton 3.9's LLVM fails an
    # assertion (SLP vectorizer) compiling the state kernel for float32 at d = 16
    kl = plan.link == LINK_CODES["kl_row"]
    warps = 8 if L.block_c >= 64 or kl else L.num_warps
    consts = dict(DECAYED=plan.decayed, GATE_CW=L.gate_cw, BC=L.block_c, BD=_pow2(d),
                  PREC=L.prec, num_warps=warps, num_stages=1)
    if kl and own is not None:  # Memora: every token's state, block by block
        from .mlp_kl import mlp_backward_kl_reads_kernel

        gq32 = gy.to(f32, copy=True)  # ∂L/∂q = gy + the blocks' shares
        for buf in (gkr, gdzr, getar, glbr):
            buf.zero_()
        mlp_backward_kl_reads_kernel[(L.n_seg, B * H, n_blocks)](
            q, k, eta, alpha, L.bounds, s1, s2, dz, token_reads, gy, gq32, *reads, T, H, d, hd,
            L.n_seg, plan.c, float(mem.eps), SEGMENTS=own, BC=L.block_c, BD=_pow2(d),
            BH=bhid, PREC=L.prec,
            num_warps=4, num_stages=1)  # H200, TF32: 62.7 ms with 4 warps, 101.5 with 8
        gq = gq32  # the anchors' reads below store their tokens' rows into it
    elif own is not None:
        mlp_backward_reads_kernel[(L.n_seg, B * H)](
            q, k, eta, alpha, L.bounds, s1, s2, dz, gq if token_reads is None else token_reads,
            gy, gq, *reads, gs, T, H, d, hd, L.n_seg, plan.q, float(mem.eps), LINK=plan.link,
            SEGMENTS=own, BH=bh_reads, **consts)
    if at_anchor is not None:  # the anchors after plain steps: the identity link's reads
        mlp_backward_reads_kernel[(L.n_seg, B * H)](
            q, k, eta, alpha, L.bounds, a1, a2, dz, gq, gy, gq, *reads, gq, T, H, d, hd,
            L.n_seg, plan.q, float(mem.eps), LINK=LINK_CODES["identity"],
            SEGMENTS=at_anchor, BH=bh_reads, **{**consts, "DECAYED": False})
    if moneta:  # the read scales' gradients through every token's state
        mlp_backward_norms_kernel[(L.n_seg, B * H)](
            k, eta, alpha, L.bounds, s1, s2, dz, token_reads, gs, *reads, T, H, d, hd, L.n_seg,
            plan.q, QM1=qm1, SEGMENTS=own, BC=L.block_c, BD=_pow2(d), BH=bhid,
            PREC=L.prec, NORM_PREC=L.norm_prec, num_warps=L.num_warps,
            num_stages=1)
    x, cnt, xs = _exchange(L, d, dev)
    mlp_backward_state_kernel[(B * H * L.split,)](
        k, v, eta, alpha, eta if delta is None else delta, L.bounds, s1, s2, dz, u, rstd,
        g1, g2, scratch, x, cnt, *reads, gk, gv, geta, galpha,
        geta if gdelta is None else gdelta, T, H, d, hd, L.n_seg, xs, *_bias_args(plan),
        plan.q, plan.c, BIAS=plan.bias, LINK=plan.link, QM1=qm1, DELTA_CW=cw,
        READS=-1 if at_anchor is None else at_anchor, BH=bhid, SPLIT=L.split, **consts)
    gq = gq.to(q.dtype)
    last = L.n_seg % 2
    return gq, gk, gv, geta, galpha, gdelta, (g1[:, :, last], g2[:, :, last])


def _chunk_starts(plan: Plan, L: Launch, states) -> tuple:
    """The stored states at the start of every chunk: the segments whose first token is a
    multiple of the chunk size (with a lag token a chunk of two or more tokens is two
    segments, a chunk of one token is one, :func:`segments`)."""
    index = _chunk_start_index(L.T, L.chunk_size, plan.config.lag_token, states[0].device)
    return tuple(s.index_select(2, index) for s in states)


@functools.lru_cache(maxsize=64)
def _chunk_start_index(T: int, chunk_size: int, lag_token: bool,
                       device: torch.device) -> torch.Tensor:
    """The indices of the segments that start a chunk, on ``device``, made once per layout (a
    host-to-device copy cannot run inside a CUDA-graph capture). Read-only."""
    bounds, _ = segments(T, chunk_size, lag_token)
    first = [j for j, b in enumerate(bounds[:-1]) if b % chunk_size == 0]
    return torch.tensor(first, device=device)


#: the torch recomputation of the backward (:func:`_torch_backward`) compiles its chunk steps
#: on CUDA for sequences of at least this many tokens: the compilation takes tens of seconds
#: per configuration and chunk shape, which only long sequences (and repeated calls) repay
COMPILE_MIN_TOKENS = 2048
#: on CUDA the recomputation of the backward (:func:`_torch_backward`) runs as one CUDA graph,
#: captured once per call shape (:func:`_graphed_torch_backward`); ``False``: launched op by op
GRAPH_BACKWARD = True
#: configurations (by ``repr``) whose backward capture failed: they run op by op from then on
_UNGRAPHED: set[str] = set()
#: chunks whose reads :func:`_torch_backward` recomputes (and differentiates) as one batch:
#: the activations of the recomputation are those of this many chunks
BACKWARD_WINDOW = 16


def _torch_backward(plan: Plan, L: Launch, saved, gy, gzt):
    """Gradients by torch autograd on the torch backend's chunk step, recomputed in float32
    from the stored chunk start states, in windows of :data:`BACKWARD_WINDOW` chunks from the
    last.

    Chunk ``c`` maps its start state ``Z_c`` to its outputs ``y_c`` and its end state
    ``Z_{c+1}``, so ``∂L/∂Z_c = (∂y_c/∂Z_c)^T gy_c + (∂Z_{c+1}/∂Z_c)^T ∂L/∂Z_{c+1}``. The first
    term needs no other chunk: a window's chunks run as one batch
    (:func:`miras_gpu.torch.chunked.process_chunk` on the start states stacked on the batch
    axis, with the torch backend's fused ops where they apply) and are differentiated at
    once. Only the second term is sequential, and it needs only the chunk's writes
    (:func:`miras_gpu.torch.chunked.process_chunk_writes`), chunk after chunk. On CUDA for
    sequences of :data:`COMPILE_MIN_TOKENS` or more both go through ``torch.compile``.
    """
    q, k, v, eta, alpha, delta, *states = saved
    config = plan.config
    names = list(config.memory.shapes)
    starts = _chunk_starts(plan, L, states)
    f32 = torch.float32
    precision = torch_chunked.fused_precision(q.dtype, q.device)
    if q.device.type == "cuda" and L.T >= COMPILE_MIN_TOKENS:
        chunk_fn = torch_chunked.compiled_chunk_fn(config)
        write_fn = torch_chunked._compiled(torch_chunked.process_chunk_writes, config,
                                           "inductor")
    else:
        chunk_fn = functools.partial(torch_chunked.process_chunk, config)
        write_fn = functools.partial(torch_chunked.process_chunk_writes, config)
    inputs = {"q": q, "k": k, "v": v, "eta": eta, "alpha": alpha}
    if delta is not None:
        inputs["delta"] = delta
    gate_names = [n for n in ("eta", "alpha", "delta") if n in inputs]
    grads = {n: torch.zeros(x.shape, dtype=f32, device=x.device) for n, x in inputs.items()}
    gz = [torch.zeros(s.shape[:2] + s.shape[3:], dtype=f32, device=q.device)
          if g is None else g.to(f32) for s, g in zip(starts, gzt)]
    span = [(c * L.chunk_size, min((c + 1) * L.chunk_size, L.T)) for c in range(L.n_chunks)]

    def leaves(chunks):  # the chunks' inputs [len·B, H, C, ...] and start states, as leaves
        x = {n: torch.cat([t[:, s:e] for s, e in (span[c] for c in chunks)]).to(f32)
             .movedim(2, 1).detach().requires_grad_(True) for n, t in inputs.items()}
        z = {n: torch.cat([st[:, :, c] for c in chunks]).detach().requires_grad_(True)
             for n, st in zip(names, starts)}
        return x, z

    full = L.T // L.chunk_size  # chunks of chunk_size tokens (a shorter last one alone)
    windows = [range(c, min(c + BACKWARD_WINDOW, full)) for c in range(0, full, BACKWARD_WINDOW)]
    windows += [range(full, L.n_chunks)] if full < L.n_chunks else []
    for window in reversed(windows):
        # (∂y_c/∂Z_c)^T gy_c and the inputs' read parts, every chunk of the window at once
        x, z = leaves(window)
        if gy is not None:
            with torch.enable_grad():
                y, _ = chunk_fn(z, x["q"], x["k"], x["v"], {n: x[n] for n in gate_names},
                                norm_precision=precision)
            g_out = torch.cat([gy[:, s:e] for s, e in (span[c] for c in window)])
            res = torch.autograd.grad(y, [*x.values(), *z.values()],
                                      g_out.to(f32).movedim(2, 1), allow_unused=True)
        else:
            res = [None] * (len(x) + len(z))
        for j, c in enumerate(window):  # row block j of the batch is chunk c
            s, e = span[c]
            for (n, _), g in zip(x.items(), res):
                if g is not None:
                    grads[n][:, s:e] += g[j * L.B:(j + 1) * L.B].movedim(1, 2)
        read_gz = [None if g is None else g.unflatten(0, (len(window), L.B))
                   for g in res[len(x):]]
        # (∂Z_{c+1}/∂Z_c)^T ∂L/∂Z_{c+1}, chunk after chunk: the writes only
        for j, c in reversed(list(enumerate(window))):
            xc, zc = leaves([c])
            s, e = span[c]
            with torch.enable_grad():
                (lag, rest), = torch_chunked._chunk_parts(
                    config, xc["q"], xc["k"], xc["v"], {n: xc[n] for n in gate_names}, e - s)
                _, _, z_end = write_fn(zc, lag, None if rest is None else rest[1:])
            wrt = [xc[n] for n in ("k", "v", *gate_names)] + list(zc.values())
            res = torch.autograd.grad([z_end[n] for n in names], wrt, gz, allow_unused=True)
            for n, g in zip(("k", "v", *gate_names), res):
                if g is not None:
                    grads[n][:, s:e] += g.movedim(1, 2)
            gz = [_sum(zc[n], w, None if r is None else r[j])
                  for n, w, r in zip(names, res[-len(names):], read_gz)]
    out = [grads["q"].to(q.dtype), grads["k"].to(k.dtype), grads["v"].to(v.dtype),
           grads["eta"], grads["alpha"], grads.get("delta")]
    return (*out, tuple(gz))


def _graphed_torch_backward(plan: Plan, L: Launch, saved, gy, gzt):
    """:func:`_torch_backward` replayed from a CUDA graph captured once per call shape
    (:func:`miras_gpu.torch.graphed.graphed_call`): the recomputation is thousands of small
    kernels, chunk after chunk, whose launches (not their arithmetic) set its speed. The
    graph's memory pool holds its intermediates while it is cached
    (:func:`miras_gpu.torch.graphed.clear_graphs` frees it). Same values as
    :func:`_torch_backward`."""
    from ..torch.graphed import graphed_call

    flat = (*saved, gy, *gzt)
    present = tuple(t is not None for t in flat)
    n_saved = len(saved)

    def backward(*tensors):
        it = iter(tensors)
        args = [next(it) if p else None for p in present]
        *grads, gz = _torch_backward(plan, L, args[:n_saved], args[n_saved],
                                     tuple(args[n_saved + 1:]))
        return (*grads, *gz)

    out = graphed_call(("triton_backward", L.chunk_size, present), plan.config, backward,
                       tuple(t for t in flat if t is not None))
    return (*out[:6], tuple(out[6:]))


def _sum(like: torch.Tensor, *parts) -> torch.Tensor:
    """The sum of the gradients ``parts`` that exist (None: no dependence), zeros like
    ``like`` if none does."""
    parts = [p for p in parts if p is not None]
    return sum(parts[1:], parts[0]) if parts else torch.zeros_like(like)


class ChunkedScan(torch.autograd.Function):
    """``(y, *final_state) = ChunkedScan.apply(plan, launch, q, k, v, eta, alpha, delta,
    *initial_state)`` with Triton forward kernels and the backward of :class:`Plan`."""

    @staticmethod
    def forward(ctx, plan, launch, q, k, v, eta, alpha, delta, *z0):
        if plan.kind == "matrix":
            y, zt, states = _matrix_forward(plan, launch, q, k, v, eta, alpha, delta, z0)
        else:
            keep = any(ctx.needs_input_grad)
            kernels = keep and launch.kernel_backward(plan)
            y, zt, states, anchor = _mlp_forward(plan, launch, q, k, v, eta, alpha, delta, z0,
                                                 keep, save_ln=kernels)
            if not keep:
                states = ()
            elif kernels:  # the backward kernels reuse dZ, u, rstd, ...; torch does not
                states = (*states, *anchor)
        ctx.plan, ctx.launch = plan, launch
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, eta, alpha, delta, *states)
        return (y, *zt)

    @staticmethod
    def backward(ctx, gy, *gzt):
        plan, launch = ctx.plan, ctx.launch
        saved = ctx.saved_tensors
        kernels = launch.kernel_backward(plan)
        anchor = None
        if plan.kind == "mlp" and kernels:
            *saved, dz, u, rstd, token_reads, a1, a2 = saved
            anchor = (dz, u, rstd, token_reads, a1, a2)
        out = None
        if kernels:
            try:
                if plan.kind == "matrix":
                    out = _matrix_backward(plan, launch, saved, gy, gzt[0])
                else:
                    out = _mlp_backward(plan, launch, saved, anchor, gy, gzt)
            except OutOfResources as exc:  # e.g. a chunk of 128 with d = 128
                _note(f"the backward kernel does not fit this device ({exc})",
                      "the gradients are recomputed with torch")
        if (out is None and GRAPH_BACKWARD and saved[0].device.type == "cuda"
                and repr(plan.config) not in _UNGRAPHED):
            try:
                out = _graphed_torch_backward(plan, launch, saved, gy, gzt)
            except RuntimeError as exc:  # an op the capture refuses: launch op by op
                _UNGRAPHED.add(repr(plan.config))
                _note(f"the CUDA-graph capture of {plan.config.name}'s backward failed "
                      f"({str(exc)[:200]})", "its recomputation runs op by op")
        if out is None:
            out = _torch_backward(plan, launch, saved, gy, gzt)
        *first, gz0 = out
        return (None, None, *first, *gz0)


# --------------------------------------------------------------------------------------------
# public ops


def scan_chunked(config, q, k, v, gates=None, chunk_size=64, initial_state=None,
                 output_final_state=False, cu_seqlens=None, block_hidden=None,
                 backward="auto", dot_precision=None, hidden_split=None, **torch_options):
    """Chunk-parallel MIRAS forward (Eq 28-32) on the Triton kernels, any ``T``.

    Same arguments and returns as :func:`miras_gpu.torch.scan_chunked`, plus

    block_hidden : int, optional
        Hidden-axis block of the MLP kernels (a power of two; default ``min(64, E·d)``).
    backward : ``"auto"``, ``"kernels"`` or ``"torch"``
        Where the gradients come from: ``"torch"`` forces the chunk-by-chunk torch
        recomputation even where hand-written backward kernels exist (to check one against
        the other); ``"kernels"`` takes the backward kernels wherever they cover the call;
        ``"auto"`` takes them except where the recomputation measured faster
        (:data:`SLOWER_KERNEL_BACKWARD`).
    dot_precision : ``None``, one of :data:`DOT_PRECISIONS`, or a pair of them
        Precision of the kernels' matrix products; a pair gives ``(forward state pass, other
        kernels)`` (``None``: :func:`dot_precision` picks by the inputs' dtype and the
        configuration).
    hidden_split : int, optional
        Programs per batch row and head in the MLP memory's sequential kernels, each with a
        part of the hidden axis (a power of two; :func:`hidden_split` checks it and picks the
        default: as many as the device's SMs hold at once, 1 under the CPU interpreter).
    **torch_options
        Passed to the torch backend when a call falls back to it (``checkpoint``, ...).

    Returns ``(y [B, T, H, d_v], final_state or None)``; ``y`` in the dtype of ``q``, the
    final state in float32.
    """
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    if backward not in ("auto", "kernels", "torch"):
        raise ValueError(f"backward must be 'auto', 'kernels' or 'torch', got {backward!r}")
    if cu_seqlens is not None:
        from ..varlen import split_scan

        if not isinstance(q, torch.Tensor):
            raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
        return split_scan(scan_chunked, config, q, k, v, gates, chunk_size, initial_state,
                          output_final_state, cu_seqlens, torch.cat, block_hidden=block_hidden,
                          backward=backward, dot_precision=dot_precision,
                          hidden_split=hidden_split, **torch_options)
    if chunk_size is None:
        return scan(config, q, k, v, gates, initial_state, output_final_state)

    def fallback(reason):
        _note(reason)
        return torch_ops.scan_chunked(config, q, k, v, gates, chunk_size, initial_state,
                                      output_final_state, **torch_options)

    if not hasattr(config, "algorithm"):
        raise TypeError(f"config must be a MirasConfig, got {type(config).__name__}")
    if hidden_split is not None and _check_split(hidden_split) > 1:
        if not isinstance(getattr(config, "memory", None), MLPMemory):
            raise ValueError(f"hidden_split applies to the MLP memory, got {hidden_split} for "
                             f"{type(config.memory).__name__}")
    plan = plan_for(config)
    if isinstance(plan, str):
        return fallback(plan)
    torch_chunked.check_chunkable(config)
    inp = validate_inputs(config, q, k, v, gates)
    reason = _input_reason(config, q, inp.gates)
    if reason is not None:
        return fallback(reason)
    z0 = initial_memory_state(config, initial_state, inp, lambda: default_state(config, inp))
    names = list(config.memory.shapes)
    launch = _launch(plan, q, chunk_size, block_hidden, dot_precision, hidden_split)
    g = {n: a.movedim(1, 2) for n, a in inp.gates.items()}  # [B, T, H, ...]
    launch.gate_cw = g["eta"].ndim == 4 or g["alpha"].ndim == 4
    if launch.gate_cw:  # one layout for both: a scalar gate the same on every channel
        dk = config.memory.d_k
        for n in ("eta", "alpha"):
            g[n] = g[n] if g[n].ndim == 4 else g[n].unsqueeze(-1).expand(inp.B, inp.T, inp.H, dk)
    g = {n: a.contiguous() for n, a in g.items()}
    launch.backward = backward
    try:
        y, *zt = ChunkedScan.apply(plan, launch, q.contiguous(), k.contiguous(),
                                   v.contiguous(), g["eta"], g["alpha"], g.get("delta"),
                                   *[z0[n].contiguous() for n in names])
    except OutOfResources as exc:  # the tiles of this chunk size / head dim do not fit
        return fallback(f"the kernels do not fit this device at chunk_size={chunk_size} "
                        f"({exc})")
    final = dict(zip(names, zt)) if output_final_state else None
    return y, final


def scan(config, q, k, v, gates=None, initial_state=None, output_final_state=False):
    """The exact recurrence: the chunked kernels with chunk size 1 (equal to the recurrence,
    Sec 5.4) where they cover ``config``, else :func:`miras_gpu.torch.scan`."""
    if not hasattr(config, "algorithm"):
        raise TypeError(f"config must be a MirasConfig, got {type(config).__name__}")
    if config.link_at != "token":  # the recurrence reads ψ(Z_t) at every token
        config = replace(config, link_at="token")
    plan = plan_for(config)
    if isinstance(plan, str):
        _note(plan)
        return torch_ops.scan(config, q, k, v, gates, initial_state, output_final_state)
    return scan_chunked(config, q, k, v, gates, 1, initial_state, output_final_state)
