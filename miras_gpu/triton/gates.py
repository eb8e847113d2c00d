"""Device functions for a segment's learning-rate and retention gates, scalar per token
(``[B, T, H]``) or channel-wise (``[B, T, H, D]``, Sec 5.4), shared by the matrix and MLP
kernels. ``CW`` (a ``tl.constexpr``) picks the form.

A channel-wise gate scales one axis of each weight (:attr:`miras_ref.memory.MatrixMemory.gate_axes`,
:attr:`miras_ref.memory.MLPMemory.gate_axes`): the key axis of the matrix memory
``W [d_v, d_k]`` (``D = d_k``), the ``d`` axis of both MLP weights (the columns of
``W2 [Ed, d]`` and the rows of ``W1 [d, Ed]``, ``D = d``). With the log-decay from the
segment start ``lb_t[c] = Σ_{j<=t} log α_j[c]`` and the mask
``M[t, i, c] = η_i[c] exp(lb_t[c] - lb_i[c])`` (``i <= t``), Eq 29 is, channel by channel,

    Z_t[.., c] = exp(lb_t[c]) Z0[.., c] - Σ_{i<=t} M[t, i, c] G_i[.., c].

Scalar gates are the case of one value for every channel; then ``M`` is the ``[C, C]`` mask
of the dual form and every read is a matrix product. Channel-wise, the reads need the
``[C, C, D]`` mask, which no matrix product gives stably (factoring ``exp(lb_t - lb_i)`` into
``exp(lb_t) exp(-lb_i)`` overflows for small α): :func:`channel_scores` and
:func:`channel_mixed_read` sum it channel by channel, every exponent ``<= 0``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gate_tile(ptr, tok, mt, D, other, BD: tl.constexpr, CW: tl.constexpr):
    """One gate of the segment's tokens ``tok [BC]``: ``[BC]``, or ``[BC, BD]``
    channel-wise; ``other`` where the token is not valid (``mt``) or the channel padded."""
    if CW:
        rd = tl.arange(0, BD)
        m = mt[:, None] & (rd < D)[None, :]
        return tl.load(ptr + tok[:, None] * D + rd[None, :], mask=m, other=other)
    else:
        return tl.load(ptr + tok, mask=mt, other=other)


@triton.jit
def store_gate(ptr, x, tok, mt, D, BD: tl.constexpr, CW: tl.constexpr):
    """Store a gate's gradient ``x`` (``[BC]``, or ``[BC, BD]`` channel-wise) of the
    segment's tokens ``tok [BC]``: the twin of :func:`gate_tile`."""
    if CW:
        rd = tl.arange(0, BD)
        tl.store(ptr + tok[:, None] * D + rd[None, :], x, mask=mt[:, None] & (rd < D)[None, :])
    else:
        tl.store(ptr + tok, x, mask=mt)


@triton.jit
def gate_tiles(eta_ptr, alpha_ptr, tok, mt, D, BD: tl.constexpr, CW: tl.constexpr):
    """``(η, lb)`` of the segment's tokens ``tok [BC]`` (valid where ``mt``): ``[BC]`` each,
    or ``[BC, BD]`` channel-wise. Padded tokens get ``η = 0, α = 1``."""
    eta = gate_tile(eta_ptr, tok, mt, D, 0.0, BD, CW)
    lb = tl.cumsum(tl.log(gate_tile(alpha_ptr, tok, mt, D, 1.0, BD, CW)), axis=0)
    return eta, lb


@triton.jit
def token_row(x, rc, i, CW: tl.constexpr):
    """Token ``i`` of a gate tile from :func:`gate_tiles`: a scalar, or ``[BD]`` channel-wise."""
    if CW:
        return tl.sum(tl.where((rc == i)[:, None], x, 0.0), axis=0)
    else:
        return tl.sum(tl.where(rc == i, x, 0.0), axis=0)


@triton.jit
def token_gates(eta_ptr, alpha_ptr, ti, D, BD: tl.constexpr, CW: tl.constexpr):
    """``(α_t, η_t)`` of one token ``ti``: scalars, or ``[BD]`` channel-wise."""
    if CW:
        rd = tl.arange(0, BD)
        al = tl.load(alpha_ptr + ti * D + rd, mask=rd < D, other=1.0)
        et = tl.load(eta_ptr + ti * D + rd, mask=rd < D, other=0.0)
    else:
        al = tl.load(alpha_ptr + ti)
        et = tl.load(eta_ptr + ti)
    return al, et


@triton.jit
def anchor_scale(alpha_ptr, ti, D, BD: tl.constexpr, DECAYED: tl.constexpr,
                 CW: tl.constexpr):
    """The anchor's scale ``s`` in ``A = s ⊙ Z0`` (Eq 28): ``α`` of the segment's first token
    ``ti`` for the decayed-anchor ℓ2 gate, else 1; a scalar, or ``[BD]`` channel-wise."""
    if DECAYED:
        if CW:
            rd = tl.arange(0, BD)
            return tl.load(alpha_ptr + ti * D + rd, mask=rd < D, other=1.0)
        else:
            return tl.load(alpha_ptr + ti)
    else:
        if CW:
            return tl.full([BD], 1.0, tl.float32)
        else:
            return 1.0


@triton.jit
def scale_cols(z, g, CW: tl.constexpr):
    """``z [R, BD]`` with column ``c`` scaled by ``g[c]`` (channel-wise) or all by ``g``."""
    if CW:
        return z * g[None, :]
    else:
        return z * g


@triton.jit
def scale_rows(z, g, CW: tl.constexpr):
    """``z [BD, S]`` with row ``c`` scaled by ``g[c]`` (channel-wise) or all by ``g``."""
    if CW:
        return z * g[:, None]
    else:
        return z * g


@triton.jit
def scale_tokens(x, w, CW: tl.constexpr):
    """``x [BC, BD]`` times a per-token weight: ``w [BC]`` (a row each) or ``[BC, BD]``."""
    if CW:
        return x * w
    else:
        return x * w[:, None]


@triton.jit
def decay_mask(lb, mt, BC: tl.constexpr):
    """``exp(lb_t - lb_i)`` for ``i <= t`` with token ``i`` valid (``mt``), else 0
    (``[BC, BC]`` from one channel's log-decays ``lb [BC]``); every exponent is ``<= 0``."""
    rc = tl.arange(0, BC)
    causal = (rc[None, :] <= rc[:, None]) & mt[None, :]
    return tl.where(causal, tl.exp(tl.where(causal, lb[:, None] - lb[None, :], 0.0)), 0.0)


@triton.jit
def _channel_mask(eta_ptr, alpha_ptr, tok, mt, c, D, BC: tl.constexpr):
    """``M[:, :, c]``: ``η_i[c] exp(lb_t[c] - lb_i[c])`` for ``i <= t``, else 0 (``[BC, BC]``)."""
    eta = tl.load(eta_ptr + tok * D + c, mask=mt, other=0.0)
    lb = tl.cumsum(tl.log(tl.load(alpha_ptr + tok * D + c, mask=mt, other=1.0)), axis=0)
    return decay_mask(lb, mt, BC) * eta[None, :]


@triton.jit
def channel_scores(q_ptr, k_ptr, eta_ptr, alpha_ptr, tok, mt, D, BC: tl.constexpr):
    """The dual-form scores of channel-wise gates,
    ``P[t, i] = Σ_c q_t[c] k_i[c] M[t, i, c]`` (``[BC, BC]``), so that a read of the gated
    axis is ``Z_t x_t = (E_t ⊙ x_t) Z0ᵀ - Σ_i P[t, i] l_i`` for writes ``G_i = l_i k_iᵀ``.
    ``q, k [B, T, H, D]`` of the tokens ``tok`` (any pair of token tiles in memory)."""
    p = tl.zeros([BC, BC], dtype=tl.float32)
    for c in range(0, D):
        qc = tl.load(q_ptr + tok * D + c, mask=mt, other=0.0).to(tl.float32)
        kc = tl.load(k_ptr + tok * D + c, mask=mt, other=0.0).to(tl.float32)
        p += qc[:, None] * kc[None, :] * _channel_mask(eta_ptr, alpha_ptr, tok, mt, c, D, BC)
    return p


@triton.jit
def channel_mixed_read(s, x_ptr, eta_ptr, alpha_ptr, tok, mt, D, BC: tl.constexpr,
                       BD: tl.constexpr):
    """``R[t, c] = Σ_i s[t, i] M[t, i, c] x_i[c]`` (``[BC, BD]``): the write part of a read
    through the gated *output* axis, ``Z_t a_t`` with writes ``G_i = x_i r_iᵀ`` and
    ``s[t, i] = r_i · a_t`` (the MLP's ``W1``). ``x [B, T, H, D]`` float32."""
    rd = tl.arange(0, BD)
    r = tl.zeros([BC, BD], dtype=tl.float32)
    for c in range(0, D):
        xc = tl.load(x_ptr + tok * D + c, mask=mt, other=0.0)
        col = tl.sum(s * _channel_mask(eta_ptr, alpha_ptr, tok, mt, c, D, BC) * xc[None, :],
                     axis=1)
        r = tl.where((rd == c)[None, :], col[:, None], r)
    return r


@triton.jit
def channel_reads_grad(gp, gr_ptr, s, q_ptr, k_ptr, x_ptr, eta_ptr, alpha_ptr, tok, mt, D,
                       BC: tl.constexpr, BD: tl.constexpr, MIXED: tl.constexpr):
    """The backward of the channel-wise reads, one pass over the channels: of the scores
    ``P[t, i] = Σ_c q_t[c] k_i[c] M[t, i, c]`` (:func:`channel_scores`; the matrix memory's
    read, the MLP's through ``W2``) for ``gp = ∂L/∂P``, and with ``MIXED`` of the mixed read
    ``R[t, c] = Σ_i s[t, i] M[t, i, c] x_i[c]`` (:func:`channel_mixed_read`, the MLP's through
    ``W1``) for ``gr = ∂L/∂R`` (without ``MIXED``, ``gr``, ``s`` and ``x`` are unused and
    ``gx`` is 0). ``q, k, gr, x [B, T, H, D]`` are read channel by channel from memory (a
    column of a register tile would cost a shared-memory copy of the tile per channel). With
    the mask's gradient
    ``gM[t, i, c] = gp[t, i] q_t[c] k_i[c] + gr[t, c] s[t, i] x_i[c]``:

        gq[t, c]  = Σ_i gp[t, i] M[t, i, c] k_i[c]      gk[i, c] = Σ_t gp[t, i] M[t, i, c] q_t[c]
        gx[i, c]  = Σ_t gr[t, c] s[t, i] M[t, i, c]
        gη[i, c]  = Σ_t gM[t, i, c] exp(lb_t[c] - lb_i[c])
        glb[t, c] = Σ_i gM[t, i, c] M[t, i, c] - Σ_i gM[i, t, c] M[i, t, c]

    (the gradient of ``s`` is :func:`channel_scores` of ``gr`` and ``x``). Returns
    ``gq, gk, gx, gη, glb``, ``[BC, BD]`` each."""
    rd = tl.arange(0, BD)
    gq = tl.zeros([BC, BD], dtype=tl.float32)
    gk = tl.zeros([BC, BD], dtype=tl.float32)
    gx = tl.zeros([BC, BD], dtype=tl.float32)
    geta = tl.zeros([BC, BD], dtype=tl.float32)
    glb = tl.zeros([BC, BD], dtype=tl.float32)
    for c in range(0, D):
        qc = tl.load(q_ptr + tok * D + c, mask=mt, other=0.0).to(tl.float32)
        kc = tl.load(k_ptr + tok * D + c, mask=mt, other=0.0).to(tl.float32)
        col = (rd == c)[None, :]
        eta = tl.load(eta_ptr + tok * D + c, mask=mt, other=0.0)
        lb = tl.cumsum(tl.log(tl.load(alpha_ptr + tok * D + c, mask=mt, other=1.0)), axis=0)
        dec = decay_mask(lb, mt, BC)
        m = dec * eta[None, :]
        gpm = gp * m
        gm = gp * qc[:, None] * kc[None, :]
        if MIXED:
            xc = tl.load(x_ptr + tok * D + c, mask=mt, other=0.0)
            sg = s * tl.load(gr_ptr + tok * D + c, mask=mt, other=0.0)[:, None]
            gm += sg * xc[None, :]
            gx = tl.where(col, tl.sum(sg * m, axis=0)[:, None], gx)
        gmm = gm * m
        gq = tl.where(col, tl.sum(gpm * kc[None, :], axis=1)[:, None], gq)
        gk = tl.where(col, tl.sum(gpm * qc[:, None], axis=0)[:, None], gk)
        geta = tl.where(col, tl.sum(gm * dec, axis=0)[:, None], geta)
        glb = tl.where(col, (tl.sum(gmm, axis=1) - tl.sum(gmm, axis=0))[:, None], glb)
    return gq, gk, gx, geta, glb
