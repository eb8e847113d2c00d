"""``Σ|Z_t|^q`` of every token's state in a chunk, without forming the states (Eq 24, Eq 29).

Moneta's link ``ψ(A) = A / ‖A‖_q^{q-2}`` scales each token's state by one number. The chunked
form reads in the dual form (:func:`miras_gpu.torch.chunked.outer_read`), so the only thing
that needs the per-token states

``Z_t = d_t Z0 - Σ_{i<=t} m[t, i] l_i r_i^T``          (Eq 29, scalar gates)

is ``n_t = Σ_{rs} |Z_t[r, s]|^q``. Formed by autograd, the ``C`` states of a chunk are ``C``
copies of the memory written to and read from memory (17 GB per parameter for a B=4, T=4096,
H=16 sequence of Moneta), twice more in the backward pass. The kernels here form one block of
rows of ``Z_t`` at a time in registers, one token after another (one ``[BR, C] @ [C, S]``
product per token), and keep only the sums.

Backward, with ``Φ_t = g_t q sign(Z_t) |Z_t|^{q-1}`` (``g_t = ∂L/∂n_t``):

* ``∂L/∂Z0 = Σ_t d_t Φ_t``, ``∂L/∂d_t = <Z0, Φ_t>``,
* ``∂L/∂l_i = -Σ_t m[t, i] Φ_t r_i``, ``∂L/∂r_i = -Σ_t m[t, i] Φ_t^T l_i``,
* ``∂L/∂m[t, i] = -l_i^T Φ_t r_i``.

Each program owns a block of rows ``r``: the row-block's parts of ``n_t``, ``∂L/∂d``,
``∂L/∂m`` and ``∂L/∂r`` are written per block and summed by torch; ``∂L/∂Z0`` and ``∂L/∂l``
are the block's own.

:func:`token_power_sums` is a ``torch.library`` custom op with its autograd formula
registered, launching the kernels itself on tensors of any strides. ``torch.compile`` does not
trace it (``torch.compiler.disable``: a graph break, so ``fullgraph=True`` refuses it): inside
one compiled graph of two chunks, inductor's use of the op gave wrong gradients on an H200
(torch 2.11; right on the CPU). CUDA-graph captures take it like any other op.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import custom_op

from ._math import abs_pow, mm, q_int

#: ``tl.dot`` precisions of the op (see :func:`miras_gpu.triton._math.mm`)
PRECISIONS = ("ieee", "tf32")


@triton.jit
def _subtile(z0_ptr, left_ptr, right_ptr, n, r0, C, R, S, SZ_N, SZ_R, SZ_S, SL_N, SL_C, SL_R,
             SR_N, SR_C, SR_S, BC: tl.constexpr, RB: tl.constexpr, BS: tl.constexpr):
    """Rows ``r0 .. r0+RB`` of ``Z0`` flattened to ``[F = RB·BS]``, the rank-1 factors
    ``G[i, (r, s)] = l_i[r] r_i[s]`` of those rows ``[BC, F]``, and ``l [BC, RB]``,
    ``r [BC, BS]``; zero outside the shapes. ``S*_*``: the tensors' strides."""
    rr = r0 + tl.arange(0, RB)
    ss = tl.arange(0, BS)
    cc = tl.arange(0, BC)
    rm, sm, cm = rr < R, ss < S, cc < C
    z0 = tl.load(z0_ptr + n * SZ_N + rr[:, None] * SZ_R + ss[None, :] * SZ_S,
                 mask=rm[:, None] & sm[None, :], other=0.0)
    lb = tl.load(left_ptr + n * SL_N + cc[:, None] * SL_C + rr[None, :] * SL_R,
                 mask=cm[:, None] & rm[None, :], other=0.0)
    rb = tl.load(right_ptr + n * SR_N + cc[:, None] * SR_C + ss[None, :] * SR_S,
                 mask=cm[:, None] & sm[None, :], other=0.0)
    g = tl.reshape(lb[:, :, None] * rb[:, None, :], (BC, RB * BS))
    return tl.reshape(z0, (RB * BS,)), g, lb, rb


@triton.jit
def _gates(decay_ptr, mask_ptr, n, C, SD_N, SD_C, SM_N, SM_T, SM_I, BC: tl.constexpr):
    """``decay [BC]`` and ``mask [BC, BC]`` of one chunk, zero outside ``C``."""
    cc = tl.arange(0, BC)
    cm = cc < C
    d = tl.load(decay_ptr + n * SD_N + cc * SD_C, mask=cm, other=0.0)
    m = tl.load(mask_ptr + n * SM_N + cc[:, None] * SM_T + cc[None, :] * SM_I,
                mask=cm[:, None] & cm[None, :], other=0.0)
    return d, m


@triton.jit
def token_power_sums_kernel(z0_ptr, decay_ptr, mask_ptr, left_ptr, right_ptr, out_ptr,
                            C, R, S, N_RB, SZ_N, SZ_R, SZ_S, SD_N, SD_C, SM_N, SM_T, SM_I,
                            SL_N, SL_C, SL_R, SR_N, SR_C, SR_S, Q: tl.constexpr, QI: tl.constexpr,
                            BC: tl.constexpr, RB: tl.constexpr, BS: tl.constexpr,
                            ROWS: tl.constexpr, PREC: tl.constexpr):
    """``out[n, rb, t] = Σ_{r in block rb, s} |Z_t[r, s]|^Q``; grid ``(N, N_RB)``, a block of
    ``ROWS`` rows per program, ``RB`` rows (all tokens at once) per step; ``out`` contiguous,
    the inputs of any strides."""
    n, rb = tl.program_id(0), tl.program_id(1)
    d, m = _gates(decay_ptr, mask_ptr, n, C, SD_N, SD_C, SM_N, SM_T, SM_I, BC)
    acc = tl.zeros((BC,), dtype=tl.float32)
    for r0 in range(rb * ROWS, tl.minimum(rb * ROWS + ROWS, R), RB):
        z0, g, _, _ = _subtile(z0_ptr, left_ptr, right_ptr, n, r0, C, R, S, SZ_N, SZ_R, SZ_S,
                               SL_N, SL_C, SL_R, SR_N, SR_C, SR_S, BC, RB, BS)
        # Eq 29 for every token at once: Z[t, (r, s)] = d_t Z0[r, s] - Σ_i m[t, i] l_i[r] r_i[s]
        z = d[:, None] * z0[None, :] - mm(m, g, PREC)
        acc += tl.sum(abs_pow(z, Q, QI), 1)
    cc = tl.arange(0, BC)
    tl.store(out_ptr + (n * N_RB + rb) * C + cc, acc, mask=cc < C)


@triton.jit
def token_power_sums_backward_kernel(z0_ptr, decay_ptr, mask_ptr, left_ptr, right_ptr, g_ptr,
                                     gz0_ptr, gdecay_ptr, gmask_ptr, gleft_ptr, gright_ptr,
                                     C, R, S, N_RB, SZ_N, SZ_R, SZ_S, SD_N, SD_C, SM_N, SM_T,
                                     SM_I, SL_N, SL_C, SL_R, SR_N, SR_C, SR_S, SG_N, SG_C,
                                     Q: tl.constexpr, QI: tl.constexpr,
                                     BC: tl.constexpr, RB: tl.constexpr, BS: tl.constexpr,
                                     ROWS: tl.constexpr, PREC: tl.constexpr):
    """The gradients of :func:`token_power_sums_kernel` (module docstring); ``gdecay``,
    ``gmask`` and ``gright`` per row block, summed by the caller. Outputs contiguous, inputs
    of any strides."""
    n, rb = tl.program_id(0), tl.program_id(1)
    d, m = _gates(decay_ptr, mask_ptr, n, C, SD_N, SD_C, SM_N, SM_T, SM_I, BC)
    cc = tl.arange(0, BC)
    cm = cc < C
    gn = tl.load(g_ptr + n * SG_N + cc * SG_C, mask=cm, other=0.0)
    ss = tl.arange(0, BS)
    sm = ss < S
    gd = tl.zeros((BC,), dtype=tl.float32)
    gm = tl.zeros((BC, BC), dtype=tl.float32)
    gr = tl.zeros((BC, BS), dtype=tl.float32)
    for r0 in range(rb * ROWS, tl.minimum(rb * ROWS + ROWS, R), RB):
        z0, g, lb, rbk = _subtile(z0_ptr, left_ptr, right_ptr, n, r0, C, R, S, SZ_N, SZ_R,
                                  SZ_S, SL_N, SL_C, SL_R, SR_N, SR_C, SR_S, BC, RB, BS)
        z = d[:, None] * z0[None, :] - mm(m, g, PREC)
        # Φ[t, f] = g_t q sign(Z) |Z|^{q-1}
        if QI > 0:
            phi = (gn * Q)[:, None] * z * abs_pow(z, Q - 2.0, QI - 2)
        else:
            sg = tl.where(z > 0.0, 1.0, tl.where(z < 0.0, -1.0, 0.0))
            phi = (gn * Q)[:, None] * sg * abs_pow(z, Q - 1.0, 0)
        rr = r0 + tl.arange(0, RB)
        rm = rr < R
        gz0 = tl.reshape(tl.sum(d[:, None] * phi, 0), (RB, BS))
        tl.store(gz0_ptr + n * R * S + rr[:, None] * S + ss[None, :], gz0,
                 mask=rm[:, None] & sm[None, :])
        gd += tl.sum(z0[None, :] * phi, 1)
        gm -= mm(phi, tl.trans(g), PREC)  # ∂/∂m[t, i] = -Σ_f Φ[t, f] G[i, f]
        gg = tl.reshape(-mm(tl.trans(m), phi, PREC), (BC, RB, BS))  # ∂/∂G[i, (r, s)]
        gl = tl.sum(gg * rbk[:, None, :], 2)  # [BC, RB]: Σ_s ∂G[i, r, s] r_i[s]
        tl.store(gleft_ptr + n * C * R + cc[:, None] * R + rr[None, :], gl,
                 mask=cm[:, None] & rm[None, :])
        gr += tl.sum(gg * lb[:, :, None], 1)  # [BC, BS]: Σ_r ∂G[i, r, s] l_i[r]
    part = n * N_RB + rb
    tl.store(gdecay_ptr + part * C + cc, gd, mask=cm)
    tl.store(gmask_ptr + part * C * C + cc[:, None] * C + cc[None, :], gm,
             mask=cm[:, None] & cm[None, :])
    tl.store(gright_ptr + part * C * S + cc[:, None] * S + ss[None, :], gr,
             mask=cm[:, None] & sm[None, :])


#: the blocking of the kernels per padded chunk length ``BC``: ``(tokens x flattened entries
#: of one step (BC · RB · BS at most), rows of Z per program, (forward warps, backward
#: warps))``, the fastest of a sweep on an H200 for a ``256 x 64`` state and one TF32 product
#: (``BC = 16``: Moneta's blocks of :data:`miras_gpu.torch.chunked.NORM_BLOCK` tokens; other
#: lengths take the ``BC = 64`` entry)
BLOCKING = {16: (4096, 64, (2, 2)), 64: (4096, 16, (4, 4))}


def _blocks(C: int, R: int, S: int) -> tuple[int, int, int, int, int, tuple[int, int]]:
    """``(BC, RB, BS, ROWS, row blocks, warps)``: whole ``C`` and ``S`` axes (powers of two,
    at least 16 for ``tl.dot``), ``RB`` rows per step, ``ROWS`` rows per program
    (:data:`BLOCKING`)."""
    BC = max(16, triton.next_power_of_2(C))
    BS = max(16, triton.next_power_of_2(S))
    step, rows, warps = BLOCKING.get(BC, BLOCKING[64])
    RB = max(1, step // (BC * BS))
    rows = max(RB, rows)
    return BC, RB, BS, rows, triton.cdiv(R, rows), warps


@custom_op("miras::token_power_sums", mutates_args=())
def _power_sums_op(z0: torch.Tensor, decay: torch.Tensor, mask: torch.Tensor,
                   left: torch.Tensor, right: torch.Tensor, q: float,
                   precision: str) -> torch.Tensor:
    N, R, S = z0.shape
    C = decay.shape[1]
    BC, RB, BS, rows, n_rb, warps = _blocks(C, R, S)
    part = torch.empty((N, n_rb, C), dtype=torch.float32, device=z0.device)
    token_power_sums_kernel[(N, n_rb)](
        z0, decay, mask, left, right, part, C, R, S, n_rb, *z0.stride(), *decay.stride(),
        *mask.stride(), *left.stride(), *right.stride(), Q=float(q), QI=q_int(q),
        BC=BC, RB=RB, BS=BS, ROWS=rows, PREC=precision, num_warps=warps[0])
    return part.sum(1)


@custom_op("miras::token_power_sums_backward", mutates_args=())
def _power_sums_backward_op(z0: torch.Tensor, decay: torch.Tensor, mask: torch.Tensor,
                            left: torch.Tensor, right: torch.Tensor, g: torch.Tensor,
                            q: float, precision: str) -> list[torch.Tensor]:
    N, R, S = z0.shape
    C = decay.shape[1]
    BC, RB, BS, rows, n_rb, warps = _blocks(C, R, S)
    f32, dev = torch.float32, z0.device
    gz0 = torch.empty((N, R, S), dtype=f32, device=dev)
    gleft = torch.empty((N, C, R), dtype=f32, device=dev)
    gdecay = torch.empty((N, n_rb, C), dtype=f32, device=dev)
    gmask = torch.empty((N, n_rb, C, C), dtype=f32, device=dev)
    gright = torch.empty((N, n_rb, C, S), dtype=f32, device=dev)
    token_power_sums_backward_kernel[(N, n_rb)](
        z0, decay, mask, left, right, g, gz0, gdecay, gmask, gleft, gright,
        C, R, S, n_rb, *z0.stride(), *decay.stride(), *mask.stride(), *left.stride(),
        *right.stride(), *g.stride(), Q=float(q), QI=q_int(q), BC=BC, RB=RB, BS=BS, ROWS=rows,
        PREC=precision, num_warps=warps[1])
    return [gz0, gdecay.sum(1), gmask.sum(1), gleft, gright.sum(1)]


@_power_sums_op.register_fake
def _(z0, decay, mask, left, right, q, precision):
    return decay.new_empty(decay.shape)


@_power_sums_backward_op.register_fake
def _(z0, decay, mask, left, right, g, q, precision):
    return [z0.new_empty(z0.shape), decay.new_empty(decay.shape), mask.new_empty(mask.shape),
            left.new_empty(left.shape), right.new_empty(right.shape)]


@torch.compiler.disable
def token_power_sums(z0: torch.Tensor, decay: torch.Tensor, mask: torch.Tensor,
                     left: torch.Tensor, right: torch.Tensor, q: float,
                     precision: str = "ieee") -> torch.Tensor:
    """``n[:, t] = Σ_{rs} |Z_t|^q`` with ``Z_t = decay[:, t] Z0 - Σ_i mask[:, t, i] l_i r_i^T``,
    differentiable in every tensor.

    Shapes: ``z0 [N, R, S]``, ``decay [N, C]``, ``mask [N, C, C]``, ``left [N, C, R]``,
    ``right [N, C, S]``, float32 -> ``[N, C]`` float32. ``q > 1``; ``precision`` one of
    :data:`PRECISIONS`. The sums are those of the transposed states, so the kernels run on
    whichever of ``Z``, ``Z^T`` has the shorter rows. Any strides: the kernels take each
    tensor's strides, so the transposed ``Z0`` is read in place.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if z0.shape[2] > z0.shape[1]:  # Σ|Z_t|^q = Σ|Z_t^T|^q, Z_t^T = d_t Z0^T - Σ_i m r_i l_i^T
        z0, left, right = z0.mT, right, left
    return _power_sums_op(z0, decay, mask, left, right, float(q), precision)


def _setup_context(ctx, inputs, output):
    z0, decay, mask, left, right, q, precision = inputs
    ctx.save_for_backward(z0, decay, mask, left, right)
    ctx.q, ctx.precision = q, precision


def _backward(ctx, g):
    grads = _power_sums_backward_op(*ctx.saved_tensors, g, ctx.q, ctx.precision)
    return (*grads, None, None)


_power_sums_op.register_autograd(_backward, setup_context=_setup_context)
