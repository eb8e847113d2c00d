"""Every token's read through a row-softmax of its own state, without forming the states
(Memora's KL link, Eq 19-21 and Eq 29).

Memora reads token ``t`` of a chunk with ``W_t = c · softmax(Z_t)`` over each row, where

``Z_t = d_t Z0 - Σ_{i<=t} m[t, i] l_i r_i^T``          (Eq 29, scalar gates)

so ``(W_t x_t)[r] = c Σ_s P_t[r, s] x_t[s]`` with ``P_t[r, :] = softmax(Z_t[r, :])``. Unlike
Moneta's scale (:mod:`~miras_gpu.triton.token_norms`) this needs every entry of every token's
state, not one number per token; the kernels form one block of rows of ``Z`` for all tokens
at once (``[C, C] @ [C, rows·s]``, as in :mod:`~miras_gpu.triton.token_norms`), take the
softmax of each row in registers and keep only the read ``y [C, R]``.

Backward, with ``g = ∂L/∂y``: ``∂L/∂Z_t[r, s] = g[t, r] P_t[r, s] (x_t[s] - y[t, r])``,
``∂L/∂x_t[s] = Σ_r g[t, r] P_t[r, s]``; ``∂L/∂Z`` goes through ``Z = d Z0 - M G`` as in
:func:`~miras_gpu.triton.token_norms.backprop_step`.

:func:`token_softmax_read` is a ``torch.library`` custom op with its autograd formula, out of
``torch.compile`` graphs like the norms op (:mod:`~miras_gpu.triton.token_norms` says why).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import custom_op

from ._math import mm
from .token_norms import PRECISIONS, WARPS, backprop_step, blocks, chunk_gates, store_partials
from .token_norms import subtile as _subtile


@triton.jit
def _softmax_rows(z0_ptr, left_ptr, right_ptr, d, m, xs, n, r0, C, R, S, SZ_N, SZ_R, SZ_S,
                  SL_N, SL_C, SL_R, SR_N, SR_C, SR_S, BC: tl.constexpr, RB: tl.constexpr,
                  BS: tl.constexpr, PREC: tl.constexpr):
    """Rows ``r0 .. r0+RB`` for every token: ``P [BC, RB, BS]`` (row softmax of ``Z_t``),
    ``y [BC, RB]`` (``Σ_s P x_t``), and the step's ``Z0 [F]``, ``G [BC, F]``, ``l``, ``r``."""
    z0, g, lb, rbk = _subtile(z0_ptr, left_ptr, right_ptr, n, r0, C, R, S, SZ_N, SZ_R, SZ_S,
                              SL_N, SL_C, SL_R, SR_N, SR_C, SR_S, BC, RB, BS)
    # Eq 29 for every token at once: Z[t, (r, s)] = d_t Z0[r, s] - Σ_i m[t, i] l_i[r] r_i[s]
    z = tl.reshape(d[:, None] * z0[None, :] - mm(m, g, PREC), (BC, RB, BS))
    ss = tl.arange(0, BS)
    z = tl.where((ss < S)[None, None, :], z, float("-inf"))
    e = tl.exp(z - tl.max(z, 2)[:, :, None])
    p = e / tl.sum(e, 2)[:, :, None]
    return p, tl.sum(p * xs[:, None, :], 2), z0, g, lb, rbk


@triton.jit
def _load_x(x_ptr, n, C, S, SX_N, SX_C, SX_S, BC: tl.constexpr, BS: tl.constexpr):
    cc = tl.arange(0, BC)
    ss = tl.arange(0, BS)
    return tl.load(x_ptr + n * SX_N + cc[:, None] * SX_C + ss[None, :] * SX_S,
                   mask=(cc < C)[:, None] & (ss < S)[None, :], other=0.0)


@triton.jit
def token_softmax_read_kernel(z0_ptr, decay_ptr, mask_ptr, left_ptr, right_ptr, x_ptr, y_ptr,
                              C, R, S, SZ_N, SZ_R, SZ_S, SD_N, SD_C, SM_N, SM_T, SM_I,
                              SL_N, SL_C, SL_R, SR_N, SR_C, SR_S, SX_N, SX_C, SX_S,
                              BC: tl.constexpr, RB: tl.constexpr, BS: tl.constexpr,
                              ROWS: tl.constexpr, PREC: tl.constexpr):
    """``y[n, t, r] = Σ_s softmax(Z_t[r, :])[s] x[n, t, s]``; grid ``(N, row blocks)``, ``y``
    contiguous ``[N, C, R]``."""
    n, rb = tl.program_id(0), tl.program_id(1)
    d, m = chunk_gates(decay_ptr, mask_ptr, n, C, SD_N, SD_C, SM_N, SM_T, SM_I, BC)
    xs = _load_x(x_ptr, n, C, S, SX_N, SX_C, SX_S, BC, BS)
    cc = tl.arange(0, BC)
    for r0 in range(rb * ROWS, tl.minimum(rb * ROWS + ROWS, R), RB):
        _, y, _, _, _, _ = _softmax_rows(z0_ptr, left_ptr, right_ptr, d, m, xs, n, r0, C, R, S,
                                         SZ_N, SZ_R, SZ_S, SL_N, SL_C, SL_R, SR_N, SR_C, SR_S,
                                         BC, RB, BS, PREC)
        rr = r0 + tl.arange(0, RB)
        tl.store(y_ptr + n * C * R + cc[:, None] * R + rr[None, :], y,
                 mask=(cc < C)[:, None] & (rr < R)[None, :])


@triton.jit
def token_softmax_read_backward_kernel(z0_ptr, decay_ptr, mask_ptr, left_ptr, right_ptr, x_ptr,
                                       gy_ptr, gz0_ptr, gdecay_ptr, gmask_ptr, gleft_ptr,
                                       gright_ptr, gx_ptr, C, R, S, N_RB, SZ_N, SZ_R, SZ_S,
                                       SD_N, SD_C, SM_N, SM_T, SM_I, SL_N, SL_C, SL_R, SR_N,
                                       SR_C, SR_S, SX_N, SX_C, SX_S, SG_N, SG_C, SG_R,
                                       BC: tl.constexpr, RB: tl.constexpr, BS: tl.constexpr,
                                       ROWS: tl.constexpr, PREC: tl.constexpr):
    """The gradients of :func:`token_softmax_read_kernel` (module docstring); ``gdecay``,
    ``gmask``, ``gright`` and ``gx`` per row block, summed by the caller."""
    n, rb = tl.program_id(0), tl.program_id(1)
    d, m = chunk_gates(decay_ptr, mask_ptr, n, C, SD_N, SD_C, SM_N, SM_T, SM_I, BC)
    xs = _load_x(x_ptr, n, C, S, SX_N, SX_C, SX_S, BC, BS)
    cc = tl.arange(0, BC)
    cm = cc < C
    gd = tl.zeros((BC,), dtype=tl.float32)
    gm = tl.zeros((BC, BC), dtype=tl.float32)
    gr = tl.zeros((BC, BS), dtype=tl.float32)
    gx = tl.zeros((BC, BS), dtype=tl.float32)
    for r0 in range(rb * ROWS, tl.minimum(rb * ROWS + ROWS, R), RB):
        p, y, z0, g, lb, rbk = _softmax_rows(z0_ptr, left_ptr, right_ptr, d, m, xs, n, r0, C,
                                             R, S, SZ_N, SZ_R, SZ_S, SL_N, SL_C, SL_R, SR_N,
                                             SR_C, SR_S, BC, RB, BS, PREC)
        rr = r0 + tl.arange(0, RB)
        gyb = tl.load(gy_ptr + n * SG_N + cc[:, None] * SG_C + rr[None, :] * SG_R,
                      mask=cm[:, None] & (rr < R)[None, :], other=0.0)  # [BC, RB]
        gp = gyb[:, :, None] * p  # g[t, r] P_t[r, s]
        gx += tl.sum(gp, 1)
        # ∂L/∂Z_t[r, s] = g[t, r] P_t[r, s] (x_t[s] - y[t, r])
        phi = tl.reshape(gp * (xs[:, None, :] - y[:, :, None]), (BC, RB * BS))
        gd, gm, gr = backprop_step(phi, z0, d, m, g, lb, rbk, gd, gm, gr, gz0_ptr, gleft_ptr,
                                   n, r0, C, R, S, BC, RB, BS, PREC)
    part = n * N_RB + rb
    store_partials(gd, gm, gr, gdecay_ptr, gmask_ptr, gright_ptr, part, C, S, BC, BS)
    ss = tl.arange(0, BS)
    tl.store(gx_ptr + part * C * S + cc[:, None] * S + ss[None, :], gx,
             mask=cm[:, None] & (ss < S)[None, :])


@custom_op("miras::token_softmax_read", mutates_args=())
def _softmax_read_op(z0: torch.Tensor, decay: torch.Tensor, mask: torch.Tensor,
                     left: torch.Tensor, right: torch.Tensor, x: torch.Tensor,
                     precision: str) -> torch.Tensor:
    N, R, S = z0.shape
    C = decay.shape[1]
    BC, RB, BS, rows, n_rb = blocks(C, R, S)
    y = torch.empty((N, C, R), dtype=torch.float32, device=z0.device)
    token_softmax_read_kernel[(N, n_rb)](
        z0, decay, mask, left, right, x, y, C, R, S, *z0.stride(), *decay.stride(),
        *mask.stride(), *left.stride(), *right.stride(), *x.stride(), BC=BC, RB=RB, BS=BS,
        ROWS=rows, PREC=precision, num_warps=WARPS[0])
    return y


@custom_op("miras::token_softmax_read_backward", mutates_args=())
def _softmax_read_backward_op(z0: torch.Tensor, decay: torch.Tensor, mask: torch.Tensor,
                              left: torch.Tensor, right: torch.Tensor, x: torch.Tensor,
                              gy: torch.Tensor, precision: str) -> list[torch.Tensor]:
    N, R, S = z0.shape
    C = decay.shape[1]
    BC, RB, BS, rows, n_rb = blocks(C, R, S)
    f32, dev = torch.float32, z0.device
    gz0 = torch.empty((N, R, S), dtype=f32, device=dev)
    gleft = torch.empty((N, C, R), dtype=f32, device=dev)
    gdecay = torch.empty((N, n_rb, C), dtype=f32, device=dev)
    gmask = torch.empty((N, n_rb, C, C), dtype=f32, device=dev)
    gright = torch.empty((N, n_rb, C, S), dtype=f32, device=dev)
    gx = torch.empty((N, n_rb, C, S), dtype=f32, device=dev)
    token_softmax_read_backward_kernel[(N, n_rb)](
        z0, decay, mask, left, right, x, gy, gz0, gdecay, gmask, gleft, gright, gx,
        C, R, S, n_rb, *z0.stride(), *decay.stride(), *mask.stride(), *left.stride(),
        *right.stride(), *x.stride(), *gy.stride(), BC=BC, RB=RB, BS=BS, ROWS=rows,
        PREC=precision, num_warps=WARPS[1])
    return [gz0, gdecay.sum(1), gmask.sum(1), gleft, gright.sum(1), gx.sum(1)]


@_softmax_read_op.register_fake
def _(z0, decay, mask, left, right, x, precision):
    return x.new_empty((z0.shape[0], decay.shape[1], z0.shape[1]))


@_softmax_read_backward_op.register_fake
def _(z0, decay, mask, left, right, x, gy, precision):
    return [t.new_empty(t.shape) for t in (z0, decay, mask, left, right, x)]


def _setup_context(ctx, inputs, output):
    *tensors, precision = inputs
    ctx.save_for_backward(*tensors)
    ctx.precision = precision


def _backward(ctx, gy):
    return (*_softmax_read_backward_op(*ctx.saved_tensors, gy, ctx.precision), None)


_softmax_read_op.register_autograd(_backward, setup_context=_setup_context)


@torch.compiler.disable
def token_softmax_read(z0: torch.Tensor, decay: torch.Tensor, mask: torch.Tensor,
                       left: torch.Tensor, right: torch.Tensor, x: torch.Tensor,
                       precision: str = "ieee") -> torch.Tensor:
    """``y[:, t, r] = Σ_s softmax(Z_t[r, :])[s] x[:, t, s]`` with
    ``Z_t = decay[:, t] Z0 - Σ_i mask[:, t, i] l_i r_i^T``, differentiable in every tensor.

    Shapes: ``z0 [N, R, S]``, ``decay [N, C]``, ``mask [N, C, C]``, ``left [N, C, R]``,
    ``right [N, C, S]``, ``x [N, C, S]``, float32 of any strides -> ``[N, C, R]`` float32;
    ``precision`` one of :data:`~miras_gpu.triton.token_norms.PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return _softmax_read_op(z0, decay, mask, left, right, x, precision)
