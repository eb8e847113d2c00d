"""Every token's read through the row-softmax KL link, without forming the states
(Eq 21, Eq 29; Memora, Eq 27).

Memora's link ``ψ(Z) = c · softmax(Z)`` over each row is not linear, so each query of a chunk
must read its own token's state

``Z_t = α_t Z_{t-1} - η_t l_t r_t^T``,  ``Z_{-1} = Z0``          (Eq 29 as a recurrence)

``o_t[j] = c Σ_m softmax(Z_t[j, :])_m x_t[m]``                      (the read ``ψ(Z_t) x_t``)

Formed by autograd, the ``C`` states of a chunk are ``C`` copies of the memory written to and
read from memory (and kept, or recomputed, for the backward pass). The kernels here hold one
block of rows of the state in registers and step it token by token (one rank-1 update, one
row softmax and one row read per token, all in float32: no matrix product, so no TF32).

Backward, with ``P_t = softmax(Z_t)`` by rows, ``g_t = ∂L/∂o_t`` and ``Λ_t = ∂L/∂Z_t`` (the
total gradient of the state after token ``t``):

* ``∂L/∂x_t[m] = c Σ_j g_t[j] P_t[j, m]``,
* ``Λ_t = g_t[j] P_t[j, m] (c x_t[m] - o_t[j]) + α_{t+1} Λ_{t+1}``,  ``∂L/∂Z0 = α_0 Λ_0``,
* ``∂L/∂α_t = <Λ_t, Z_{t-1}>``, ``∂L/∂η_t = -l_t^T Λ_t r_t``,
* ``∂L/∂l_t = -η_t Λ_t r_t``, ``∂L/∂r_t = -η_t Λ_t^T l_t``.

The forward kernel also writes each row's log-sum-exp ``lse_t[j] = log Σ_m exp Z_t[j, m]``,
so the backward forms ``P_t = exp(Z_t - lse_t)`` and takes ``o_t`` from the output instead of
reducing each row three times again. The reverse walk needs the states in reverse order, and
stepping back by ``Z_{t-1} = (Z_t + η_t l_t r_t^T) / α_t`` would divide by the gate. Instead
the backward kernel first steps forward once, storing the state before every :data:`STEP`
tokens in a scratch buffer, then walks those groups from the last: it re-forms the group's
``STEP`` states in registers (unrolled) and goes back through them.

Each program owns a block of rows: ``o``, ``∂L/∂Z0`` and ``∂L/∂l`` are the block's own; its
parts of ``∂L/∂x``, ``∂L/∂r``, ``∂L/∂α`` and ``∂L/∂η`` are written per block and summed by
torch.

:func:`softmax_reads` is a ``torch.library`` custom op with its autograd formula registered;
``torch.compile`` does not trace it (``torch.compiler.disable``, a graph break, as
:func:`miras_gpu.triton.token_norms.token_power_sums`). CUDA-graph captures take it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import custom_op

#: tokens re-formed in registers per group of the backward walk (its code is unrolled for 4)
STEP = 4


@triton.jit
def _token(alpha_ptr, eta_ptr, l_ptr, r_ptr, x_ptr, n, t, C, R, S, rows, cols, rm, cm):
    """Gates ``α_t, η_t`` and the rows' ``l_t [BR]``, ``r_t, x_t [BS]`` of token ``t``; past
    the chunk's ``C`` tokens an identity step (``α = 1``, ``η = 0``, zero factors)."""
    tm = t < C
    last = tl.minimum(t, C - 1)  # an in-bounds address; the value is replaced past the chunk
    a = tl.where(tm, tl.load(alpha_ptr + n * C + last), 1.0)
    e = tl.where(tm, tl.load(eta_ptr + n * C + last), 0.0)
    rmt, cmt = rm & (rows * 0 + t < C), cm & (cols * 0 + t < C)  # as tensors (interpreter)
    lt = tl.load(l_ptr + (n * C + t) * R + rows, mask=rmt, other=0.0)
    rt = tl.load(r_ptr + (n * C + t) * S + cols, mask=cmt, other=0.0)
    xt = tl.load(x_ptr + (n * C + t) * S + cols, mask=cmt, other=0.0)
    return a, e, lt, rt, xt


@triton.jit
def _step(z, alpha_ptr, eta_ptr, l_ptr, r_ptr, x_ptr, n, t, C, R, S, rows, cols, rm, cm):
    """Token ``t``'s update of the rows ``z [BR, BS]`` of the state, ``Z_t = α_t Z_{t-1} -
    η_t l_t r_t^T``; returns ``Z_t`` and the token's ``α_t, η_t, l_t, r_t, x_t``
    (:func:`_token`)."""
    a, e, lt, rt, xt = _token(alpha_ptr, eta_ptr, l_ptr, r_ptr, x_ptr, n, t, C, R, S, rows,
                              cols, rm, cm)
    return a * z - (e * lt)[:, None] * rt[None, :], a, e, lt, rt, xt


@triton.jit
def _softmax_rows(z, cm):
    """``softmax(z)`` over each row of ``z [BR, BS]``, columns outside ``cm`` excluded."""
    zm = tl.where(cm[None, :], z, float("-inf"))
    p = tl.exp(zm - tl.max(zm, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def softmax_reads_kernel(z0_ptr, alpha_ptr, eta_ptr, l_ptr, r_ptr, x_ptr, out_ptr, lse_ptr, C,
                         R, S, c, BR: tl.constexpr, BS: tl.constexpr):
    """Grid ``(N, row blocks)``: ``o_t`` and the rows' log-sum-exp ``log Σ_m exp Z_t[j, m]``
    of rows ``BR·pid1 ..`` for every token of chunk ``n``. ``z0 [N, R, S]``, ``alpha, eta
    [N, C]``, ``l [N, C, R]``, ``r, x [N, C, S]``, ``out, lse [N, C, R]``, contiguous
    float32."""
    n = tl.program_id(0)
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    cols = tl.arange(0, BS)
    rm, cm = rows < R, cols < S
    z = tl.load(z0_ptr + n * R * S + rows[:, None] * S + cols[None, :],
                mask=rm[:, None] & cm[None, :], other=0.0)
    for t in range(0, C):
        z, _, _, _, _, xt = _step(z, alpha_ptr, eta_ptr, l_ptr, r_ptr, x_ptr, n, t, C, R, S,
                                  rows, cols, rm, cm)
        # o_t = c softmax(Z_t) x_t, row by row
        zm = tl.where(cm[None, :], z, float("-inf"))
        top = tl.max(zm, axis=1)
        p = tl.exp(zm - top[:, None])
        total = tl.sum(p, axis=1)
        o = c * tl.sum(p * xt[None, :], axis=1) / total
        tl.store(out_ptr + (n * C + t) * R + rows, o, mask=rm)
        tl.store(lse_ptr + (n * C + t) * R + rows, top + tl.log(total), mask=rm)


@triton.jit
def _back_token(z, zp, lam, g_ptr, o_ptr, lse_ptr, gx_ptr, gl_ptr, gr_ptr, ga_ptr, ge_ptr, a,
                e, lt, rt, xt, n, pb, NB, t, C, R, S, c, rows, cols, rm, cm):
    """Token ``t`` of the reverse walk: ``z = Z_t``, ``zp = Z_{t-1}``, ``lam = α_{t+1}
    Λ_{t+1}``; stores the token's gradients and returns ``α_t Λ_t``. ``P_t`` comes from the
    forward pass's log-sum-exp of each row, ``o_t`` is its output."""
    tm = t < C  # past the chunk: an identity step with P = 0, nothing stored
    rmt, cmt = rm & (rows * 0 + t < C), cm & (cols * 0 + t < C)  # as tensors (interpreter)
    row = (n * C + t) * R + rows
    lse = tl.load(lse_ptr + row, mask=rmt, other=float("inf"))
    # P_t = exp(Z_t - lse_t), 0 outside the state
    p = tl.where(cm[None, :], tl.exp(z - lse[:, None]), 0.0)
    o = tl.load(o_ptr + row, mask=rmt, other=0.0)
    g = tl.load(g_ptr + row, mask=rmt, other=0.0)
    part = (n * NB + pb) * C + t  # this row block's part of a summed gradient
    # ∂L/∂x_t = c Σ_j g_t[j] P_t[j, :]
    tl.store(gx_ptr + part * S + cols, c * tl.sum(g[:, None] * p, axis=0), mask=cmt)
    # Λ_t = g_t P_t ⊙ (c x_t - o_t) + α_{t+1} Λ_{t+1}
    lam = g[:, None] * p * (c * xt[None, :] - o[:, None]) + lam
    lam_r = tl.sum(lam * rt[None, :], axis=1)  # Λ_t r_t
    tl.store(gl_ptr + row, -e * lam_r, mask=rmt)
    tl.store(gr_ptr + part * S + cols, -e * tl.sum(lam * lt[:, None], axis=0), mask=cmt)
    if tm:
        tl.store(ge_ptr + part, -tl.sum(lt * lam_r))
        tl.store(ga_ptr + part, tl.sum(tl.sum(lam * zp, axis=1)))
    return a * lam


@triton.jit
def softmax_reads_backward_kernel(z0_ptr, alpha_ptr, eta_ptr, l_ptr, r_ptr, x_ptr, g_ptr,
                                  o_ptr, lse_ptr, scratch_ptr, gz0_ptr, gx_ptr, gl_ptr, gr_ptr,
                                  ga_ptr, ge_ptr, C, R, S, c, NG, BR: tl.constexpr,
                                  BS: tl.constexpr):
    """Grid ``(N, row blocks)``: every gradient of the reads of rows ``BR·pid1 ..``.

    Inputs as :func:`softmax_reads_kernel`, walked in ``NG = ⌈C/4⌉`` groups of 4 tokens (the
    last group's tokens past ``C`` are identity steps),
    ``g, gl [N, C, R]``, the forward's ``o, lse [N, C, R]``; ``gz0 [N, R, S]``; the row
    blocks' parts ``gx, gr [N, NB, C, S]``, ``ga, ge [N, NB, C]``; ``scratch [N, NB, NG, BR,
    BS]`` holds the state before every group of :data:`STEP` (= 4) tokens."""
    n = tl.program_id(0)
    pb = tl.program_id(1)
    NB = tl.num_programs(1)
    rows = pb * BR + tl.arange(0, BR)
    cols = tl.arange(0, BS)
    rm, cm = rows < R, cols < S
    tile = rows[:, None] * S + cols[None, :]
    z = tl.load(z0_ptr + n * R * S + tile, mask=rm[:, None] & cm[None, :], other=0.0)
    own = tl.arange(0, BR)[:, None] * BS + cols[None, :]  # a tile of the scratch
    # forward once: the state before every group of 4 tokens
    for grp in range(0, NG):
        tl.store(scratch_ptr + ((n * NB + pb) * NG + grp) * BR * BS + own, z)
        for t in range(grp * 4, grp * 4 + 4):
            z, _, _, _, _, _ = _step(z, alpha_ptr, eta_ptr, l_ptr, r_ptr, x_ptr, n, t, C, R, S,
                                     rows, cols, rm, cm)
    tl.debug_barrier()  # the scratch is read back by other threads of the program
    lam = tl.zeros([BR, BS], dtype=tl.float32)
    for i in range(0, NG):
        grp = NG - 1 - i
        t0 = grp * 4
        z0 = tl.load(scratch_ptr + ((n * NB + pb) * NG + grp) * BR * BS + own)
        # the group's 4 states (unrolled: kept in registers)
        z1, a0, e0, l0, r0, x0 = _step(z0, alpha_ptr, eta_ptr, l_ptr, r_ptr, x_ptr, n, t0, C,
                                       R, S, rows, cols, rm, cm)
        z2, a1, e1, l1, r1, x1 = _step(z1, alpha_ptr, eta_ptr, l_ptr, r_ptr, x_ptr, n, t0 + 1,
                                       C, R, S, rows, cols, rm, cm)
        z3, a2, e2, l2, r2, x2 = _step(z2, alpha_ptr, eta_ptr, l_ptr, r_ptr, x_ptr, n, t0 + 2,
                                       C, R, S, rows, cols, rm, cm)
        z4, a3, e3, l3, r3, x3 = _step(z3, alpha_ptr, eta_ptr, l_ptr, r_ptr, x_ptr, n, t0 + 3,
                                       C, R, S, rows, cols, rm, cm)
        # back through them
        lam = _back_token(z4, z3, lam, g_ptr, o_ptr, lse_ptr, gx_ptr, gl_ptr, gr_ptr, ga_ptr,
                          ge_ptr, a3, e3, l3, r3, x3, n, pb, NB, t0 + 3, C, R, S, c, rows,
                          cols, rm, cm)
        lam = _back_token(z3, z2, lam, g_ptr, o_ptr, lse_ptr, gx_ptr, gl_ptr, gr_ptr, ga_ptr,
                          ge_ptr, a2, e2, l2, r2, x2, n, pb, NB, t0 + 2, C, R, S, c, rows,
                          cols, rm, cm)
        lam = _back_token(z2, z1, lam, g_ptr, o_ptr, lse_ptr, gx_ptr, gl_ptr, gr_ptr, ga_ptr,
                          ge_ptr, a1, e1, l1, r1, x1, n, pb, NB, t0 + 1, C, R, S, c, rows,
                          cols, rm, cm)
        lam = _back_token(z1, z0, lam, g_ptr, o_ptr, lse_ptr, gx_ptr, gl_ptr, gr_ptr, ga_ptr,
                          ge_ptr, a0, e0, l0, r0, x0, n, pb, NB, t0, C, R, S, c, rows,
                          cols, rm, cm)
    # ∂L/∂Z0 = α_0 Λ_0
    tl.store(gz0_ptr + n * R * S + tile, lam, mask=rm[:, None] & cm[None, :])


#: entries ``BR · BS`` of the state block a program steps (forward, backward) and warps of a
#: program (forward, backward): the fastest of a sweep on an H200 for Memora's ``256 x 64`` and
#: ``64 x 256`` states, 63 tokens, 4096 chunks a call (forward 4.3 and 3.8 ms, backward 15.0
#: and 14.9 ms; with 2 warps and 2048 entries the backward took 18.7 and 16.0 ms, with 4
#: warps 28.2 and 29.1 ms)
BLOCK_ENTRIES = (2048, 1024)
WARPS = (1, 1)
#: the most bytes of the backward's scratch (the states before every group of 4 tokens, a
#: state per group and chunk): a call with more chunks launches the kernel on slices of them
SCRATCH_BYTES = 256 * 2**20


def _blocks(R: int, S: int, entries: int) -> tuple[int, int, int]:
    """``(BR, BS, row blocks)``: whole rows (``BS`` a power of two), ``BR`` rows a program."""
    BS = triton.next_power_of_2(S)
    BR = min(max(1, entries // BS), triton.next_power_of_2(R))
    return BR, BS, triton.cdiv(R, BR)


@custom_op("miras::softmax_reads", mutates_args=())
def _reads_op(z0: torch.Tensor, alpha: torch.Tensor, eta: torch.Tensor, left: torch.Tensor,
              right: torch.Tensor, x: torch.Tensor, c: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reads ``[N, C, R]`` and the log-sum-exp of every row of every state ``[N, C, R]``
    (kept for the backward pass)."""
    N, R, S = z0.shape
    C = alpha.shape[1]
    BR, BS, nb = _blocks(R, S, BLOCK_ENTRIES[0])
    out = torch.empty((N, C, R), dtype=torch.float32, device=z0.device)
    lse = torch.empty_like(out)
    softmax_reads_kernel[(N, nb)](z0, alpha, eta, left, right, x, out, lse, C, R, S, c, BR=BR,
                                  BS=BS, num_warps=WARPS[0])
    return out, lse


@custom_op("miras::softmax_reads_backward", mutates_args=())
def _reads_backward_op(z0: torch.Tensor, alpha: torch.Tensor, eta: torch.Tensor,
                       left: torch.Tensor, right: torch.Tensor, x: torch.Tensor,
                       o: torch.Tensor, lse: torch.Tensor, g: torch.Tensor,
                       c: float) -> list[torch.Tensor]:
    N, R, S = z0.shape
    C = alpha.shape[1]
    BR, BS, nb = _blocks(R, S, BLOCK_ENTRIES[1])
    ng = triton.cdiv(C, STEP)
    f32, dev = torch.float32, z0.device
    gz0 = torch.empty((N, R, S), dtype=f32, device=dev)
    gl = torch.empty((N, C, R), dtype=f32, device=dev)
    gx = torch.empty((N, nb, C, S), dtype=f32, device=dev)
    gr = torch.empty((N, nb, C, S), dtype=f32, device=dev)
    ga = torch.empty((N, nb, C), dtype=f32, device=dev)
    ge = torch.empty((N, nb, C), dtype=f32, device=dev)
    g = g.contiguous()
    # launches of at most `step` chunks, so that the scratch stays under SCRATCH_BYTES
    step = max(1, min(N, SCRATCH_BYTES // (nb * ng * BR * BS * 4)))
    scratch = torch.empty((step, nb, ng, BR, BS), dtype=f32, device=dev)
    for n0 in range(0, N, step):
        part = slice(n0, min(N, n0 + step))
        softmax_reads_backward_kernel[(part.stop - n0, nb)](
            z0[part], alpha[part], eta[part], left[part], right[part], x[part], g[part],
            o[part], lse[part], scratch, gz0[part], gx[part], gl[part], gr[part], ga[part],
            ge[part], C, R, S, c, ng, BR=BR, BS=BS, num_warps=WARPS[1])
    return [gz0, ga.sum(1), ge.sum(1), gl, gr.sum(1), gx.sum(1)]


@_reads_op.register_fake
def _(z0, alpha, eta, left, right, x, c):
    return left.new_empty(left.shape), left.new_empty(left.shape)


@_reads_backward_op.register_fake
def _(z0, alpha, eta, left, right, x, o, lse, g, c):
    return [z0.new_empty(z0.shape), alpha.new_empty(alpha.shape), eta.new_empty(eta.shape),
            left.new_empty(left.shape), right.new_empty(right.shape), x.new_empty(x.shape)]


def _setup_context(ctx, inputs, output):
    *tensors, c = inputs
    ctx.save_for_backward(*tensors, *output)
    ctx.mark_non_differentiable(output[1])
    ctx.c = c


def _backward(ctx, g, _):
    return (*_reads_backward_op(*ctx.saved_tensors, g, ctx.c), None)


_reads_op.register_autograd(_backward, setup_context=_setup_context)


@torch.compiler.disable
def softmax_reads(z0: torch.Tensor, alpha: torch.Tensor, eta: torch.Tensor,
                  left: torch.Tensor, right: torch.Tensor, x: torch.Tensor,
                  c: float = 1.0) -> torch.Tensor:
    """``o[:, t] = c · softmax(Z_t) x[:, t]`` (softmax over each row of ``Z_t``) with
    ``Z_t = α_t Z_{t-1} - η_t l_t r_t^T`` from ``Z_{-1} = Z0``, differentiable in every tensor.

    Shapes: ``z0 [N, R, S]``, ``alpha, eta [N, C]``, ``left [N, C, R]``, ``right, x
    [N, C, S]`` -> ``[N, C, R]`` float32; every input is taken as contiguous float32 (a copy
    where it is not). ``c > 0``.
    """
    N, R, S = z0.shape
    C = alpha.shape[-1]
    want = {"z0": (N, R, S), "alpha": (N, C), "eta": (N, C), "left": (N, C, R),
            "right": (N, C, S), "x": (N, C, S)}
    got = {"z0": z0, "alpha": alpha, "eta": eta, "left": left, "right": right, "x": x}
    for name, t in got.items():
        if tuple(t.shape) != want[name]:
            raise ValueError(f"{name} must have shape {want[name]}, got {tuple(t.shape)}")
        if t.device != z0.device:
            raise ValueError(f"{name} is on {t.device}, z0 on {z0.device}")
    if not c > 0:
        raise ValueError(f"c must be positive, got {c!r}")
    args = [t.to(torch.float32).contiguous() for t in got.values()]
    return _reads_op(*args, float(c))[0]
