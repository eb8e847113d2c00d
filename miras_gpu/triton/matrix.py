"""Triton kernels of the chunked MIRAS form for the matrix memory ``M(W, k) = W k``.

``W in R^{d_v x d_k}``, one program per ``(batch, head)`` or per ``(segment, batch, head)``.
Inputs are ``[B, T, H, D]`` contiguous (any float dtype; loaded and computed in fp32), gates
fp32, ``[B, T, H]`` or, with ``GATE_CW``, channel-wise ``[B, T, H, d_k]``
(:mod:`miras_gpu.triton.gates`), the memory state fp32
``[B, H, d_v, d_k]``. A *segment* is a chunk (or, with Memora's lag token, the lag token or
the rest of a chunk); ``bounds`` holds the segment boundaries ``[NSEG + 1]`` (int32).

Notation per segment (``C`` tokens ``t' + 1 .. t' + C``, Eq 28-29): ``Z0`` the state at its
start, ``A = ψ(Z0)`` (or ``α_{t'+1} Z0`` for the decayed-anchor ℓ2 gate) the anchor,
``lb_t = Σ_{j<=t} log α_j`` from the segment start, ``E_t = exp(lb_t)`` the decay,
``M[t, i] = η_i exp(lb_t - lb_i)`` (``i <= t``) the mask ``E ⊙ B`` of the paper, and
``dY = ∇_y L(K Aᵀ; V)`` the per-token output gradients at the anchor.

Kernels:

* :func:`matrix_state_kernel` (grid ``B·H``, sequential over segments): stores ``Z0`` of every
  segment and ``dY``, and steps ``Z_end = E_C Z0 - (w ⊙ dY)ᵀ K`` with
  ``w_i = η_i exp(lb_C - lb_i)``;
* :func:`matrix_output_kernel` (grid ``NSEG × B·H``, parallel over segments): the reads
  ``y_t = ψ(Z_t) q_t``; for the identity link ``Y = E ⊙ (Q Z0ᵀ) - (M ⊙ Q Kᵀ) dY`` (all
  ``tl.dot``); for the other links each ``Z_t`` is formed by the rank-1 recurrence
  ``Z_t = α_t Z_{t-1} - η_t dY_t k_tᵀ`` (equal to Eq 29) and read through ψ;
* :func:`matrix_backward_state_kernel` (grid ``B·H``, segments in reverse) and
  :func:`matrix_backward_kernel` (grid ``NSEG × B·H``): the hand-written gradient of the
  identity-link forward (no lag token) with respect to the end state of every segment, then,
  in parallel, with respect to ``q, k, v, η, α, δ``; both recompute each segment from its
  stored ``Z0``. Channel-wise gates first run :func:`matrix_backward_reads_kernel` (grid
  ``NSEG × B·H``): the gradients through the reads, whose masks are summed channel by
  channel, so the sequential pass has no channel loop.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._math import bias_grad, bias_grad_bwd, delta_tile, link, mm, segment_tiles
from .gates import (
    anchor_scale,
    channel_reads_grad,
    channel_scores,
    decay_mask,
    gate_tile,
    gate_tiles,
    scale_cols,
    store_gate,
    token_gates,
    token_row,
)


@triton.jit(do_not_specialize=["T", "NSEG"])
def matrix_state_kernel(
    k_ptr, v_ptr, eta_ptr, alpha_ptr, delta_ptr, z0_ptr, bounds_ptr,
    states_ptr, dy_ptr, zt_ptr,
    T, H, DK, DV, NSEG,
    P, SHARP, EPS, LQ, KLC,
    BIAS: tl.constexpr, LINK: tl.constexpr, DECAYED: tl.constexpr, DELTA_CW: tl.constexpr,
    GATE_CW: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    rc = tl.arange(0, BC)
    rk = tl.arange(0, BK)
    rv = tl.arange(0, BV)
    zmask = (rv < DV)[:, None] & (rk < DK)[None, :]
    zoff = rv[:, None] * DK + rk[None, :]
    z = tl.load(z0_ptr + bh * DV * DK + zoff, mask=zmask, other=0.0)
    for s in range(0, NSEG):
        s0 = tl.load(bounds_ptr + s)
        s1 = tl.load(bounds_ptr + s + 1)
        tl.store(states_ptr + (bh * NSEG + s) * DV * DK + zoff, z, mask=zmask)
        t = s0 + rc
        mt = t < s1
        tok = (b * T + t) * H + h
        kt = segment_tiles(k_ptr, b, h, s0, s1, T, H, DK, BC, BK)
        vt = segment_tiles(v_ptr, b, h, s0, s1, T, H, DV, BC, BV)
        eta, lb = gate_tiles(eta_ptr, alpha_ptr, tok, mt, DK, BK, GATE_CW)
        delta = delta_tile(delta_ptr, tok, mt, rv, DV, DELTA_CW, BIAS)
        # Eq 28: every gradient of the segment at its starting state (the anchor)
        if DECAYED:
            a = scale_cols(z, anchor_scale(alpha_ptr, (b * T + s0) * H + h, DK, BK, True,
                                           GATE_CW), GATE_CW)
        else:
            a = link(z, zmask, LINK, LQ, KLC)
        yk = mm(kt, tl.trans(a), PREC)
        dy = bias_grad(yk - vt, vt, delta, BIAS, DELTA_CW, P, SHARP, EPS)
        ymask = mt[:, None] & (rv < DV)[None, :]
        dy = tl.where(ymask, dy, 0.0)
        tl.store(dy_ptr + tok[:, None] * DV + rv[None, :], dy, mask=ymask)
        # Eq 29 at the segment end: Z = (β_C/β_0) Z0 - Σ_i η_i (β_C/β_i) dY_i k_iᵀ
        lbl = token_row(lb, rc, s1 - s0 - 1, GATE_CW)
        w = eta * tl.exp(lbl - lb)
        if GATE_CW:  # the gates scale the key channels
            z = scale_cols(z, tl.exp(lbl), True) - mm(tl.trans(dy), kt * w, PREC)
        else:
            z = tl.exp(lbl) * z - mm(tl.trans(dy * w[:, None]), kt, PREC)
    tl.store(zt_ptr + bh * DV * DK + zoff, z, mask=zmask)


@triton.jit
def _segment(bounds_ptr, states_ptr, T, H, DK, DV, NSEG, BC: tl.constexpr, BK: tl.constexpr,
             BV: tl.constexpr):
    """The segment of a program of a grid ``NSEG × B·H``: its indices ``s, bh, b, h``, the
    tokens' rows ``tok`` and masks (``mt [BC]``, ``kmask [BC, BK]``, ``vmask [BC, BV]``), the
    state tile's mask and offsets ``[BV, BK]``, the bounds ``s0, s1`` and its start state
    ``Z0 [BV, BK]``."""
    s = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rc = tl.arange(0, BC)
    rk = tl.arange(0, BK)
    rv = tl.arange(0, BV)
    zmask = (rv < DV)[:, None] & (rk < DK)[None, :]
    zoff = rv[:, None] * DK + rk[None, :]
    s0 = tl.load(bounds_ptr + s)
    s1 = tl.load(bounds_ptr + s + 1)
    t = s0 + rc
    mt = t < s1
    tok = (b * T + t) * H + h
    kmask = mt[:, None] & (rk < DK)[None, :]
    vmask = mt[:, None] & (rv < DV)[None, :]
    z0 = tl.load(states_ptr + (bh * NSEG + s) * DV * DK + zoff, mask=zmask, other=0.0)
    return s, bh, b, h, tok, mt, kmask, vmask, zmask, zoff, s0, s1, z0


@triton.jit(do_not_specialize=["T", "NSEG"])
def matrix_output_kernel(
    q_ptr, k_ptr, eta_ptr, alpha_ptr, bounds_ptr, states_ptr, dy_ptr, y_ptr,
    T, H, DK, DV, NSEG, LQ, KLC,
    LINK: tl.constexpr, GATE_CW: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, PREC: tl.constexpr,
):
    s, bh, b, h, tok, mt, _, _, zmask, zoff, s0, s1, z0 = _segment(
        bounds_ptr, states_ptr, T, H, DK, DV, NSEG, BC, BK, BV)
    rk = tl.arange(0, BK)
    rv = tl.arange(0, BV)
    if LINK == 0:
        qt = segment_tiles(q_ptr, b, h, s0, s1, T, H, DK, BC, BK)
        kt = segment_tiles(k_ptr, b, h, s0, s1, T, H, DK, BC, BK)
        ymask = mt[:, None] & (rv < DV)[None, :]
        dy = tl.load(dy_ptr + tok[:, None] * DV + rv[None, :], mask=ymask, other=0.0)
        eta, lb = gate_tiles(eta_ptr, alpha_ptr, tok, mt, DK, BK, GATE_CW)
        # Y = E ⊙ (Q Z0ᵀ) - (M ⊙ Q Kᵀ) dY: the read of Z_t without forming it
        if GATE_CW:  # E and M per key channel: Y = (E ⊙ Q) Z0ᵀ - P dY
            scores = channel_scores(q_ptr, k_ptr, eta_ptr, alpha_ptr, tok, mt, DK, BC)
            y = mm(qt * tl.exp(lb), tl.trans(z0), PREC)
        else:
            scores = mm(qt, tl.trans(kt), PREC) * (decay_mask(lb, mt, BC) * eta[None, :])
            y = tl.exp(lb)[:, None] * mm(qt, tl.trans(z0), PREC)
        y = y - mm(scores, dy, PREC)
        tl.store(y_ptr + tok[:, None] * DV + rv[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=ymask)
    else:
        z = z0
        for i in range(0, s1 - s0):
            ti = (b * T + s0 + i) * H + h
            kt = tl.load(k_ptr + ti * DK + rk, mask=rk < DK, other=0.0).to(tl.float32)
            qt = tl.load(q_ptr + ti * DK + rk, mask=rk < DK, other=0.0).to(tl.float32)
            dyt = tl.load(dy_ptr + ti * DV + rv, mask=rv < DV, other=0.0)
            al, et = token_gates(eta_ptr, alpha_ptr, ti, DK, BK, GATE_CW)
            # Z_t = α_t Z_{t-1} - η_t dY_t k_tᵀ (= Eq 29 token by token); y_t = ψ(Z_t) q_t
            z = scale_cols(z, al, GATE_CW) - scale_cols(dyt[:, None] * kt[None, :], et, GATE_CW)
            wt = link(z, zmask, LINK, LQ, KLC)
            yt = tl.sum(wt * qt[None, :], axis=1)
            tl.store(y_ptr + ti * DV + rv, yt.to(y_ptr.dtype.element_ty), mask=rv < DV)


@triton.jit
def _recompute(q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, delta_ptr, gy_ptr, b, h, s0, s1, z0,
               T, H, DK, DV, P, SHARP, EPS,
               BIAS: tl.constexpr, DECAYED: tl.constexpr, DELTA_CW: tl.constexpr,
               GATE_CW: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
               PREC: tl.constexpr):
    """The forward quantities of one identity-link segment, recomputed from its ``Z0``. The
    gate tiles (``eta``, ``alpha``, ``lb``, ``el = E``, ``wl = exp(lb_C - lb)``) are ``[BC]``,
    or ``[BC, BK]`` with ``GATE_CW``; ``lbl`` and the anchor's scale ``s_anchor`` are scalars
    or ``[BK]``. For scalar gates the scores are ``pqk * mask`` with ``P = Q Kᵀ`` and the mask
    ``M = dec ⊙ η``; channel-wise gates have no ``[BC, BC]`` mask (their scores are summed
    channel by channel, by :func:`matrix_backward_reads_kernel`), and the three are 0."""
    rc = tl.arange(0, BC)
    rv = tl.arange(0, BV)
    t = s0 + rc
    mt = t < s1
    tok = (b * T + t) * H + h
    vmask = mt[:, None] & (rv < DV)[None, :]
    qt = segment_tiles(q_ptr, b, h, s0, s1, T, H, DK, BC, BK)
    kt = segment_tiles(k_ptr, b, h, s0, s1, T, H, DK, BC, BK)
    vt = segment_tiles(v_ptr, b, h, s0, s1, T, H, DV, BC, BV)
    gy = segment_tiles(gy_ptr, b, h, s0, s1, T, H, DV, BC, BV)
    eta = gate_tile(eta_ptr, tok, mt, DK, 0.0, BK, GATE_CW)
    alpha = gate_tile(alpha_ptr, tok, mt, DK, 1.0, BK, GATE_CW)
    delta = delta_tile(delta_ptr, tok, mt, rv, DV, DELTA_CW, BIAS)
    s_anchor = anchor_scale(alpha_ptr, (b * T + s0) * H + h, DK, BK, DECAYED, GATE_CW)
    a = scale_cols(z0, s_anchor, GATE_CW)
    e = mm(kt, tl.trans(a), PREC) - vt
    dy = tl.where(vmask, bias_grad(e, vt, delta, BIAS, DELTA_CW, P, SHARP, EPS), 0.0)
    lb = tl.cumsum(tl.log(alpha), axis=0)
    last = rc == s1 - s0 - 1
    lbl = token_row(lb, rc, s1 - s0 - 1, GATE_CW)
    if GATE_CW:
        dec = 0.0
        mask = 0.0
        pqk = 0.0
    else:
        dec = decay_mask(lb, mt, BC)
        mask = dec * eta[None, :]
        pqk = mm(qt, tl.trans(kt), PREC)
    el = tl.exp(lb)
    wl = tl.exp(lbl - lb)
    return (qt, kt, gy, eta, alpha, delta, s_anchor, a, e, dy, lb, last, lbl, dec, mask, pqk,
            el, wl)


@triton.jit
def _grad_dy(gdyr_ptr, tok, vmask, kt, gy, w, pqk, mask, gz, DV, GATE_CW: tl.constexpr,
             BV: tl.constexpr, PREC: tl.constexpr):
    """``gdY = -(M ⊙ P)ᵀ gY - (w ⊙ K) gZᵀ`` of one segment ``[BC, BV]`` (channel-wise gates:
    the first term is ``gdyr`` of :func:`matrix_backward_reads_kernel`) and, for scalar
    gates, ``K gZᵀ [BC, BV]`` (else 0)."""
    if GATE_CW:
        rv = tl.arange(0, BV)
        kgz = 0.0
        gdy = (tl.load(gdyr_ptr + tok[:, None] * DV + rv[None, :], mask=vmask, other=0.0)
               - mm(kt * w, tl.trans(gz), PREC))
    else:
        kgz = mm(kt, tl.trans(gz), PREC)
        gdy = -mm(tl.trans(pqk * mask), gy, PREC) - w[:, None] * kgz
    return gdy, kgz


@triton.jit(do_not_specialize=["T", "NSEG"])
def matrix_backward_reads_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, delta_ptr, bounds_ptr, states_ptr, gy_ptr,
    gq_ptr, gdyr_ptr, gkr_ptr, getar_ptr, glbr_ptr,
    T, H, DK, DV, NSEG,
    P, SHARP, EPS,
    BIAS: tl.constexpr, DECAYED: tl.constexpr, DELTA_CW: tl.constexpr,
    BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Channel-wise gates: the gradients through the reads ``Y = (E ⊙ Q) Z0ᵀ - S dY`` of
    one segment (grid ``NSEG × B·H``, every segment at once), which need no end-state
    gradient. With the scores ``S[t, i] = Σ_c q_t[c] k_i[c] M[t, i, c]`` and
    ``gS = -gY dYᵀ``: ``∂L/∂q`` = the share of ``gS``
    (:func:`~miras_gpu.triton.gates.channel_reads_grad`) ``+ E ⊙ (gY Z0)`` (final), and the
    read parts ``gdyr = -Sᵀ gY`` (of ``dY``), ``gkr``, ``getar``, ``glbr`` (of ``k``, ``η``
    and the log-decays, ``[B, T, H, d_k]`` float32) that :func:`matrix_backward_state_kernel`
    and :func:`matrix_backward_kernel` add to. The channel sums run here once, in parallel,
    not in the sequential state pass.
    """
    s, bh, b, h, tok, mt, kmask, vmask, zmask, zoff, s0, s1, z0 = _segment(
        bounds_ptr, states_ptr, T, H, DK, DV, NSEG, BC, BK, BV)
    rk = tl.arange(0, BK)
    rv = tl.arange(0, BV)
    (qt, kt, gy, eta, alpha, delta, s_anchor, a, e, dy, lb, last, lbl, dec, mask, pqk,
     el, wl) = _recompute(q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, delta_ptr, gy_ptr, b, h,
                          s0, s1, z0, T, H, DK, DV, P, SHARP, EPS, BIAS, DECAYED, DELTA_CW,
                          True, BC, BK, BV, PREC)
    scores = channel_scores(q_ptr, k_ptr, eta_ptr, alpha_ptr, tok, mt, DK, BC)
    tl.store(gdyr_ptr + tok[:, None] * DV + rv[None, :], -mm(tl.trans(scores), gy, PREC),
             mask=vmask)
    # M[t, i, c] = η_i[c] exp(lb_t[c] - lb_i[c]), channel by channel; E_t[c] = exp(lb_t[c])
    gq, gk, _, geta, glb = channel_reads_grad(-mm(gy, tl.trans(dy), PREC), k_ptr, 0.0, q_ptr,
                                              k_ptr, k_ptr, eta_ptr, alpha_ptr, tok, mt, DK,
                                              BC, BK, False)
    gyz = mm(gy, z0, PREC)  # [BC, BK]
    gq += el * gyz
    glb += el * gyz * qt
    koff = tok[:, None] * DK + rk[None, :]
    tl.store(gq_ptr + koff, gq.to(gq_ptr.dtype.element_ty), mask=kmask)
    tl.store(gkr_ptr + koff, gk, mask=kmask)
    tl.store(getar_ptr + koff, geta, mask=kmask)
    tl.store(glbr_ptr + koff, glb, mask=kmask)


@triton.jit(do_not_specialize=["T", "NSEG"])
def matrix_backward_state_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, delta_ptr, bounds_ptr, states_ptr,
    gy_ptr, gdyr_ptr, gzt_ptr, gzs_ptr, gz0_ptr,
    T, H, DK, DV, NSEG,
    P, SHARP, EPS,
    BIAS: tl.constexpr, DECAYED: tl.constexpr, DELTA_CW: tl.constexpr, HAS_GZT: tl.constexpr,
    GATE_CW: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr,
):
    """The gradient of every segment's end state, segments in reverse (grid ``B·H``).

    Stores ``gZ_end`` of segment ``s`` in ``gzs[b, h, s]`` and the initial state's gradient:
    ``gdY = -(M ⊙ P)ᵀ gY - (w ⊙ K) gZᵀ``, ``ge = J_eᵀ gdY``,
    ``gZ0 = gYᵀ (E ⊙ Q) + E_C ⊙ gZ + s0 ⊙ (geᵀ K)`` (``⊙`` on the key axis; channel-wise
    gates: ``-(M ⊙ P)ᵀ gY`` is ``gdyr`` of :func:`matrix_backward_reads_kernel`).
    """
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    rc = tl.arange(0, BC)
    rk = tl.arange(0, BK)
    rv = tl.arange(0, BV)
    zmask = (rv < DV)[:, None] & (rk < DK)[None, :]
    zoff = rv[:, None] * DK + rk[None, :]
    if HAS_GZT:
        gz = tl.load(gzt_ptr + bh * DV * DK + zoff, mask=zmask, other=0.0)
    else:
        gz = tl.zeros([BV, BK], dtype=tl.float32)
    for r in range(0, NSEG):
        s = NSEG - 1 - r
        s0 = tl.load(bounds_ptr + s)
        s1 = tl.load(bounds_ptr + s + 1)
        tl.store(gzs_ptr + (bh * NSEG + s) * DV * DK + zoff, gz, mask=zmask)
        z0 = tl.load(states_ptr + (bh * NSEG + s) * DV * DK + zoff, mask=zmask, other=0.0)
        (qt, kt, gy, eta, alpha, delta, s_anchor, a, e, dy, lb, last, lbl, dec, mask, pqk,
         el, wl) = _recompute(q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, delta_ptr, gy_ptr, b, h,
                          s0, s1, z0, T, H, DK, DV, P, SHARP, EPS, BIAS, DECAYED, DELTA_CW,
                          GATE_CW, BC, BK, BV, PREC)
        w = eta * wl
        vmask = (s0 + rc < s1)[:, None] & (rv < DV)[None, :]
        tok = (b * T + s0 + rc) * H + h
        gdy, _ = _grad_dy(gdyr_ptr, tok, vmask, kt, gy, w, pqk, mask, gz, DV, GATE_CW, BV, PREC)
        ge, gv, gdelta = bias_grad_bwd(e, gdy, delta, BIAS, DELTA_CW, P, SHARP, EPS)
        ge = tl.where(vmask, ge, 0.0)
        ga = mm(tl.trans(ge), kt, PREC)  # [BV, BK]
        # the gradient of the segment's start state is the previous segment's end gradient
        if GATE_CW:
            gz = (mm(tl.trans(gy), qt * el, PREC) + scale_cols(gz, tl.exp(lbl), True)
                  + scale_cols(ga, s_anchor, True))
        else:
            gz = (mm(tl.trans(gy * el[:, None]), qt, PREC)
                  + tl.exp(lbl) * gz + s_anchor * ga)
    tl.store(gz0_ptr + bh * DV * DK + zoff, gz, mask=zmask)


@triton.jit(do_not_specialize=["T", "NSEG"])
def matrix_backward_kernel(
    q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, delta_ptr, bounds_ptr, states_ptr, gzs_ptr,
    gy_ptr, gdyr_ptr, gkr_ptr, getar_ptr, glbr_ptr,
    gq_ptr, gk_ptr, gv_ptr, geta_ptr, galpha_ptr, gdelta_ptr,
    T, H, DK, DV, NSEG,
    P, SHARP, EPS,
    BIAS: tl.constexpr, DECAYED: tl.constexpr, DELTA_CW: tl.constexpr,
    GATE_CW: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr,
):
    """Input gradients of one identity-link segment (grid ``NSEG × B·H``).

    With ``gY`` the output gradient and ``gZ = gzs[s]`` the gradient of the segment's end
    state: ``gMP = -gY dYᵀ`` (the gradient of ``M ⊙ P``, ``P = Q Kᵀ``),
    ``gQ = (gMP ⊙ M) K + E ⊙ (gY Z0)``, ``gK = (gMP ⊙ M)ᵀ Q - w ⊙ (dY gZ) + ge A``,
    ``gV = -ge`` (``+gdY`` for the dot product), and the gate gradients through ``M``, ``E``
    and ``w`` (``lb`` to ``log α`` by a reverse cumulative sum). Channel-wise gates
    (``GATE_CW``) add to the read parts of :func:`matrix_backward_reads_kernel` (which also
    wrote ``∂L/∂q``) the terms of ``gZ``, with the gates as ``[BC, BK]`` tiles.
    """
    s, bh, b, h, tok, mt, kmask, vmask, zmask, zoff, s0, s1, z0 = _segment(
        bounds_ptr, states_ptr, T, H, DK, DV, NSEG, BC, BK, BV)
    rc = tl.arange(0, BC)
    rk = tl.arange(0, BK)
    rv = tl.arange(0, BV)
    gz = tl.load(gzs_ptr + (bh * NSEG + s) * DV * DK + zoff, mask=zmask, other=0.0)
    (qt, kt, gy, eta, alpha, delta, s_anchor, a, e, dy, lb, last, lbl, dec, mask, pqk,
     el, wl) = _recompute(q_ptr, k_ptr, v_ptr, eta_ptr, alpha_ptr, delta_ptr, gy_ptr, b, h,
                      s0, s1, z0, T, H, DK, DV, P, SHARP, EPS, BIAS, DECAYED, DELTA_CW,
                      GATE_CW, BC, BK, BV, PREC)
    w = eta * wl
    gdy, kgz = _grad_dy(gdyr_ptr, tok, vmask, kt, gy, w, pqk, mask, gz, DV, GATE_CW, BV, PREC)
    ge, gv, gdelta = bias_grad_bwd(e, gdy, delta, BIAS, DELTA_CW, P, SHARP, EPS)
    ge = tl.where(vmask, ge, 0.0)
    if GATE_CW:
        dygz = mm(dy, gz, PREC)  # [BC, BK]
        gk = tl.load(gkr_ptr + tok[:, None] * DK + rk[None, :], mask=kmask, other=0.0)
        gk -= w * dygz
    else:
        gmp = -mm(gy, tl.trans(dy), PREC)  # ∂L/∂(M ⊙ P)
        gp = gmp * mask
        gm = gmp * pqk
        gq = mm(gp, kt, PREC)
        gq += el[:, None] * mm(gy, z0, PREC)
        tl.store(gq_ptr + tok[:, None] * DK + rk[None, :], gq.to(gq_ptr.dtype.element_ty),
                 mask=kmask)
        gk = mm(tl.trans(gp), qt, PREC)
        gk -= w[:, None] * mm(dy, gz, PREC)
    gk += mm(ge, a, PREC)
    tl.store(gk_ptr + tok[:, None] * DK + rk[None, :], gk.to(gk_ptr.dtype.element_ty),
             mask=kmask)
    tl.store(gv_ptr + tok[:, None] * DV + rv[None, :], gv.to(gv_ptr.dtype.element_ty),
             mask=vmask)
    # gate gradients through M, E_t = exp(lb_t) and w_i = η_i exp(lb_C - lb_i); gw = ∂L/∂w
    if GATE_CW:
        gw = -kt * dygz
        geta = tl.load(getar_ptr + tok[:, None] * DK + rk[None, :], mask=kmask, other=0.0)
        geta += gw * wl
        glb = tl.load(glbr_ptr + tok[:, None] * DK + rk[None, :], mask=kmask, other=0.0)
        glb -= gw * w
        end = tl.exp(lbl) * tl.sum(gz * z0, axis=0) + tl.sum(gw * w, axis=0)  # [BK]
        glb = tl.where(last[:, None], glb + end[None, :], glb)
    else:  # M[t, i] = η_i exp(lb_t - lb_i)
        gw = -tl.sum(dy * kgz, axis=1)
        geta = tl.sum(gm * dec, axis=0) + gw * wl
        gmm = gm * mask
        qz = mm(qt, tl.trans(z0), PREC)
        glb = tl.sum(gmm, axis=1) - tl.sum(gmm, axis=0) + el * tl.sum(gy * qz, axis=1)
        glb = glb - gw * w
        end = tl.exp(lbl) * tl.sum(tl.sum(gz * z0, axis=1), axis=0) + tl.sum(gw * w, axis=0)
        glb = tl.where(last, glb + end, glb)
    gla = tl.sum(glb, axis=0) - tl.cumsum(glb, axis=0) + glb  # Σ_{t >= j} glb_t
    galpha = gla / alpha
    if DECAYED:  # the anchor α_{t'+1} Z0: one more term at the first token
        ga = mm(tl.trans(ge), kt, PREC)
        if GATE_CW:
            galpha = tl.where((rc == 0)[:, None], galpha + tl.sum(ga * z0, axis=0)[None, :],
                              galpha)
        else:
            galpha = tl.where(rc == 0, galpha + tl.sum(tl.sum(ga * z0, axis=1), axis=0),
                              galpha)
    store_gate(geta_ptr, geta, tok, mt, DK, BK, GATE_CW)
    store_gate(galpha_ptr, galpha, tok, mt, DK, BK, GATE_CW)
    if BIAS >= 4:
        store_gate(gdelta_ptr, gdelta, tok, mt, DV, BV, DELTA_CW)
