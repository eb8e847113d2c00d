"""Triton kernels of the chunked MIRAS form for the 2-layer MLP memory (Sec 5.3).

``M(x) = x + LN(W1 σ(W2 x))`` with ``W2 in R^{Ed x d}``, ``W1 in R^{d x Ed}``, σ = GELU
(tanh form), LN without affine parameters (as :class:`miras_ref.memory.MLPMemory`). The state
of every segment start lives in fp32 *slots* in global memory,
``s1 [B, H, NSEG + 1, d, Ed]`` and ``s2 [B, H, NSEG + 1, Ed, d]`` (slot 0: the initial state,
slot ``NSEG``: the final state); the hidden axis ``Ed`` is processed in blocks of ``BH``.

Per segment, with the anchor ``A = ψ(Z0)`` (Eq 28) and the decay/mask of
:mod:`miras_gpu.triton.matrix`:

* forward at the anchor: ``H = K A2ᵀ``, ``Â = σ(H)``, ``u = LN(Â A1ᵀ)``, ``dY = ∇L(K + u; V)``,
  ``dZ = LN'ᵀ dY``, ``dH = (dZ A1) ⊙ σ'(H)``: the per-token gradients are ``dZ_i â_iᵀ`` (W1)
  and ``dH_i k_iᵀ`` (W2);
* :func:`mlp_state_kernel` (grid ``B·H``, sequential): stores ``dZ`` and the segment-end
  state ``Z_end = E_C Z0 - (w ⊙ G)ᵀ X`` into the next slot (and, for the backward kernels,
  ``u = LN(Â A1ᵀ)`` and its ``rstd``);
* :func:`mlp_output_kernel` (grid ``NSEG × B·H``): the reads
  ``y_t = q_t + LN(ψ(Z1_t) σ(ψ(Z2_t) q_t))``. Identity link: both layers read in the dual
  form ``Z_t x_t = E_t Z0 x_t - Σ_i M[t,i] (r_i·x_t) l_i`` (all ``tl.dot``). ℓq simplified
  link (Moneta): the same dual-form reads scaled by ``‖Z_t‖_q^{2-q}``, whose per-token norms
  come, with scalar gates, from every token's state formed one row of a block per product
  (:func:`_token_norms_block`), with channel-wise gates from the rank-1 recurrence
  ``Z_t = α_t Z_{t-1} - η_t l_t r_tᵀ`` over each block.
  KL link (Memora, softmax over each row): the per-token states are formed by that
  recurrence, ``W2_t`` rows are softmaxed inside a block, ``W1_t`` rows (over ``Ed``) by an
  online softmax across blocks.

Sec 5.4's chunk form (``link_at="chunk"``) reads the anchor after plain steps,
``W_t = E_t A - Σ_i M[t,i] l_i r_iᵀ``: the state kernel also stores every segment's anchor
``A = ψ(Z0)`` (``SAVE_ANCHOR``) into slots of their own, and the identity link's reads run on
them. A lag token still reads its own ``ψ(Z_t)``: the segment-parallel kernels take
``SEGMENTS`` (:func:`_skips`) so that one launch does the lag tokens and another the rest.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._math import (
    abs_pow,
    bias_grad,
    bias_grad_bwd,
    delta_tile,
    gelu,
    gelu_grad,
    gelu_grad2,
    inv_pow_norm,
    link,
    mm,
    qnorm_join,
    qnorm_update,
    segment_tiles,
    sign,
    token_qnorm_update,
)
from .exchange import (
    all_sum,
    arrive,
    part_blocks,
    part_of,
    put,
    region,
    split_program,
    stored_by,
    total,
)
from .gates import (
    anchor_scale,
    channel_mixed_read,
    channel_reads_grad,
    channel_scores,
    decay_mask,
    gate_tile,
    gate_tiles,
    scale_cols,
    scale_rows,
    scale_tokens,
    store_gate,
    token_gates,
    token_row,
)


@triton.jit
def _w2_tile(j0, D, HD, BD: tl.constexpr, BH: tl.constexpr):
    """Offsets and validity mask of rows ``j0 .. j0+BH`` of ``W2 [Ed, d]`` (``[BH, BD]``)."""
    rj = j0 + tl.arange(0, BH)
    rd = tl.arange(0, BD)
    return rj[:, None] * D + rd[None, :], (rj < HD)[:, None] & (rd < D)[None, :]


@triton.jit
def _w1_tile(j0, D, HD, BD: tl.constexpr, BH: tl.constexpr):
    """Offsets and validity mask of columns ``j0 .. j0+BH`` of ``W1 [d, Ed]`` (``[BD, BH]``)."""
    rj = j0 + tl.arange(0, BH)
    rd = tl.arange(0, BD)
    return rd[:, None] * HD + rj[None, :], (rd < D)[:, None] & (rj < HD)[None, :]


@triton.jit
def _load_w2(s2_ptr, base, j0, D, HD, BD: tl.constexpr, BH: tl.constexpr):
    """Rows ``j0 .. j0+BH`` of ``W2 [Ed, d]``: ``[BH, BD]`` and its validity mask."""
    off, m = _w2_tile(j0, D, HD, BD, BH)
    return tl.load(s2_ptr + base + off, mask=m, other=0.0), m


@triton.jit
def _load_w1(s1_ptr, base, j0, D, HD, BD: tl.constexpr, BH: tl.constexpr):
    """Columns ``j0 .. j0+BH`` of ``W1 [d, Ed]``: ``[BD, BH]`` and its validity mask."""
    off, m = _w1_tile(j0, D, HD, BD, BH)
    return tl.load(s1_ptr + base + off, mask=m, other=0.0), m


@triton.jit
def _store_w2(s2_ptr, base, j0, w, D, HD, BD: tl.constexpr, BH: tl.constexpr):
    off, m = _w2_tile(j0, D, HD, BD, BH)
    tl.store(s2_ptr + base + off, w, mask=m)


@triton.jit
def _store_w1(s1_ptr, base, j0, w, D, HD, BD: tl.constexpr, BH: tl.constexpr):
    off, m = _w1_tile(j0, D, HD, BD, BH)
    tl.store(s1_ptr + base + off, w, mask=m)


@triton.jit
def _no_stats(BD: tl.constexpr):
    """Empty :func:`_anchor_partials` accumulators: ``(0, 0, 0, 0, -inf [BD], 0 [BD])``."""
    zero = tl.zeros([], dtype=tl.float32)
    return (zero, zero, zero, zero, tl.full([BD], float("-inf"), tl.float32),
            tl.zeros([BD], dtype=tl.float32))


@triton.jit
def _anchor_partials(s1_ptr, s2_ptr, base, D, HD, j0, j1, LINK: tl.constexpr, LQ,
                     BD: tl.constexpr, BH: tl.constexpr):
    """Whole-parameter statistics of the anchor link at one slot, over hidden blocks
    ``j0 .. j1`` (a part of the hidden axis, :mod:`~miras_gpu.triton.exchange`).

    ℓq (LINK 1): ``‖Z1‖_q``, ``‖Z2‖_q`` as :func:`~._math.qnorm_update` accumulators
    ``(mx1, ac1, mx2, ac2)`` (scalars). KL (LINK 3): the row maxima ``m1 [BD]`` and sums of
    ``exp(Z1 - m1)`` ``l1 [BD]`` of ``Z1 [d, Ed]`` over ``Ed`` (online over the blocks).
    """
    mx1, ac1, mx2, ac2, m1, l1 = _no_stats(BD)
    if LINK == 1:
        for jb in range(j0, j1):
            z2b, _ = _load_w2(s2_ptr, base, jb * BH, D, HD, BD, BH)
            z1b, _ = _load_w1(s1_ptr, base, jb * BH, D, HD, BD, BH)
            mx2, ac2 = qnorm_update(mx2, ac2, z2b, LQ)
            mx1, ac1 = qnorm_update(mx1, ac1, z1b, LQ)
    if LINK == 3:
        for jb in range(j0, j1):
            z1b, m1k = _load_w1(s1_ptr, base, jb * BH, D, HD, BD, BH)
            zm = tl.where(m1k, z1b, float("-inf"))
            m1, l1 = _lse_merge(m1, l1, zm)
    return mx1, ac1, mx2, ac2, m1, l1


@triton.jit
def _lse_merge(m, l, zb):
    """Row-wise online ``(max, Σ exp(· - max))`` accumulators ``m, l [BD]`` with the block
    ``zb [BD, BH]`` added (masked entries ``-inf``)."""
    mn = tl.maximum(m, tl.max(zb, axis=1))
    mns = tl.where(mn == float("-inf"), 0.0, mn)
    return mn, l * tl.exp(m - mns) + tl.sum(tl.exp(zb - mns[:, None]), axis=1)


@triton.jit
def _lse_join(m, l, mb, lb):
    """Two row-wise ``(max, Σ exp(· - max))`` accumulators ``[BD]`` joined."""
    mn = tl.maximum(m, mb)
    mns = tl.where(mn == float("-inf"), 0.0, mn)
    return mn, l * tl.exp(m - mns) + lb * tl.exp(mb - mns)


@triton.jit
def _anchor_scales(mx1, ac1, mx2, ac2, LINK: tl.constexpr, LQ):
    """Moneta's anchor scales ``‖Z1‖_q^{2-q}``, ``‖Z2‖_q^{2-q}`` (LINK 1; else 1)."""
    sc1 = 1.0
    sc2 = 1.0
    if LINK == 1:
        sc1 = inv_pow_norm(mx1, ac1, LQ, LQ - 2.0)
        sc2 = inv_pow_norm(mx2, ac2, LQ, LQ - 2.0)
    return sc1, sc2


@triton.jit
def _anchor_stats(s1_ptr, s2_ptr, base, D, HD, NB, LINK: tl.constexpr, LQ,
                  BD: tl.constexpr, BH: tl.constexpr):
    """The anchor link's statistics over the whole hidden axis: the scales of
    :func:`_anchor_scales` and KL's row statistics ``m1, l1`` (:func:`_anchor_partials`)."""
    mx1, ac1, mx2, ac2, m1, l1 = _anchor_partials(s1_ptr, s2_ptr, base, D, HD, 0, NB, LINK, LQ,
                                                  BD, BH)
    sc1, sc2 = _anchor_scales(mx1, ac1, mx2, ac2, LINK, LQ)
    return sc1, sc2, m1, l1


@triton.jit
def _stats_exchange(mx1, ac1, mx2, ac2, m1, l1, x_ptr, cnt_ptr, bh, part, n, XS,
                    LINK: tl.constexpr, LQ, BD: tl.constexpr, SPLIT: tl.constexpr):
    """:func:`_anchor_partials` of every part of the hidden axis joined (exchange ``n``, one
    for the ℓq and KL links, none for the others: returns the next exchange's number)."""
    if SPLIT > 1 and LINK != 0:
        reg = region(bh, n, XS, SPLIT)
        rd = tl.arange(0, BD)
        if LINK == 1:
            put(x_ptr, reg, part, XS, 0, mx1, SPLIT)
            put(x_ptr, reg, part, XS, 1, ac1, SPLIT)
            put(x_ptr, reg, part, XS, 2, mx2, SPLIT)
            put(x_ptr, reg, part, XS, 3, ac2, SPLIT)
        else:
            put(x_ptr, reg, part, XS, rd, m1, SPLIT)
            put(x_ptr, reg, part, XS, BD + rd, l1, SPLIT)
        arrive(cnt_ptr, bh, n, SPLIT)
        mx1, ac1, mx2, ac2, m1, l1 = _no_stats(BD)
        for p in tl.static_range(SPLIT):
            if LINK == 1:
                mx1, ac1 = qnorm_join(mx1, ac1, part_of(x_ptr, reg, p, XS, 0),
                                      part_of(x_ptr, reg, p, XS, 1), LQ)
                mx2, ac2 = qnorm_join(mx2, ac2, part_of(x_ptr, reg, p, XS, 2),
                                      part_of(x_ptr, reg, p, XS, 3), LQ)
            else:
                m1, l1 = _lse_join(m1, l1, part_of(x_ptr, reg, p, XS, rd),
                                   part_of(x_ptr, reg, p, XS, BD + rd))
        n += 1
    return mx1, ac1, mx2, ac2, m1, l1, n


@triton.jit
def _w1_softmax(z1b, m1k, m1, l1, KLC):
    """Block ``Z1b [BD, BH]`` of ``A1 = c softmax(Z1)`` by rows (over all of ``Ed``), from the
    rows' maxima and sums of ``exp`` ``m1, l1 [BD]`` (:func:`_anchor_stats`); ``m1k``: the
    block's valid entries."""
    m1s = tl.where(m1 == float("-inf"), 0.0, m1)
    a1b = KLC * tl.exp(tl.where(m1k, z1b, float("-inf")) - m1s[:, None])
    return tl.where(m1k, a1b / tl.where(l1 > 0.0, l1, 1.0)[:, None], 0.0)


@triton.jit
def _block(s1_ptr, s2_ptr, base, jb, kt, s_anchor, sc1, sc2, m1, l1, D, HD,
           LINK: tl.constexpr, LQ, KLC, BD: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr,
           CW: tl.constexpr):
    """One hidden block at the anchor: ``Z2b, Z1b`` (raw state), ``H = K A2bᵀ``, ``σ(H)``,
    ``A1b``, ``A2b`` and the masks. ``s_anchor``: :func:`~miras_gpu.triton.gates.anchor_scale`."""
    z2b, m2 = _load_w2(s2_ptr, base, jb * BH, D, HD, BD, BH)
    z1b, m1k = _load_w1(s1_ptr, base, jb * BH, D, HD, BD, BH)
    if LINK == 0:
        a2b = scale_cols(z2b, s_anchor, CW)
        a1b = scale_rows(z1b, s_anchor, CW)
    elif LINK == 1:
        a2b = z2b * sc2
        a1b = z1b * sc1
    else:
        a2b = link(z2b, m2, 3, LQ, KLC)
        a1b = _w1_softmax(z1b, m1k, m1, l1, KLC)
    hb = mm(kt, tl.trans(a2b), PREC)
    act = gelu(hb)
    return z2b, m2, z1b, m1k, hb, act, a1b, a2b


@triton.jit
def _layer_norm(z, cm, D, LN_EPS):
    """LayerNorm (no affine) over the valid columns ``cm``; returns ``(LN(z), rstd)``."""
    mean = tl.sum(z, axis=1) / D
    zc = tl.where(cm[None, :], z - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, axis=1) / D + LN_EPS)
    return zc * rstd[:, None], rstd


@triton.jit(do_not_specialize=["T", "NSEG"])
def mlp_state_kernel(
    k_ptr, v_ptr, eta_ptr, alpha_ptr, delta_ptr, bounds_ptr, s1_ptr, s2_ptr, dz_ptr, u_ptr,
    rstd_ptr, a1_ptr, a2_ptr, x_ptr, cnt_ptr, T, H, D, HD, NSEG, XS,
    P, SHARP, EPS, LQ, KLC, LN_EPS,
    BIAS: tl.constexpr, LINK: tl.constexpr, DECAYED: tl.constexpr, DELTA_CW: tl.constexpr,
    GATE_CW: tl.constexpr, SAVE_LN: tl.constexpr, SAVE_ANCHOR: tl.constexpr,
    BC: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """The segments of one batch row and head in order (grid ``B·H·SPLIT``; the module
    docstring has the forms). With ``SAVE_ANCHOR`` (``link_at="chunk"``) it also stores each
    segment's anchor ``A = ψ(Z0)`` into ``a1, a2`` (the layout of ``s1, s2``), which the
    reads take as their start state.

    ``SPLIT`` programs share a row and head (:mod:`~miras_gpu.triton.exchange`: exchange
    regions ``x [B·H, 2, SPLIT, XS]``, counters ``cnt [B·H]``): each updates its own hidden
    blocks; the link's statistics and ``Â A1ᵀ`` are exchanged, and part 0 stores the
    per-token ``dZ, u, rstd``."""
    bh, part = split_program(SPLIT)
    b = bh // H
    h = bh % H
    j0, j1 = part_blocks(tl.cdiv(HD, BH), part, SPLIT)
    rc = tl.arange(0, BC)
    rd = tl.arange(0, BD)
    cm = rd < D
    size = D * HD
    n = 0  # exchanges so far
    for s in range(0, NSEG):
        base = (bh * (NSEG + 1) + s) * size
        s0 = tl.load(bounds_ptr + s)
        s1 = tl.load(bounds_ptr + s + 1)
        t = s0 + rc
        mt = t < s1
        tok = (b * T + t) * H + h
        ymask = mt[:, None] & cm[None, :]
        kt = segment_tiles(k_ptr, b, h, s0, s1, T, H, D, BC, BD)
        vt = segment_tiles(v_ptr, b, h, s0, s1, T, H, D, BC, BD)
        eta, lb = gate_tiles(eta_ptr, alpha_ptr, tok, mt, D, BD, GATE_CW)
        delta = delta_tile(delta_ptr, tok, mt, rd, D, DELTA_CW, BIAS)
        s_anchor = anchor_scale(alpha_ptr, (b * T + s0) * H + h, D, BD, DECAYED, GATE_CW)
        mx1, ac1, mx2, ac2, m1, l1 = _anchor_partials(s1_ptr, s2_ptr, base, D, HD, j0, j1,
                                                      LINK, LQ, BD, BH)
        mx1, ac1, mx2, ac2, m1, l1, n = _stats_exchange(mx1, ac1, mx2, ac2, m1, l1, x_ptr,
                                                        cnt_ptr, bh, part, n, XS, LINK, LQ, BD,
                                                        SPLIT)
        sc1, sc2 = _anchor_scales(mx1, ac1, mx2, ac2, LINK, LQ)
        # forward of the memory at the anchor: z = Â A1ᵀ, y = k + LN(z)
        zp = tl.zeros([BC, BD], dtype=tl.float32)
        for jb in range(j0, j1):
            z2b, m2, z1b, m1k, hb, act, a1b, a2b = _block(
                s1_ptr, s2_ptr, base, jb, kt, s_anchor, sc1, sc2, m1, l1, D, HD, LINK, LQ,
                KLC, BD, BH, PREC, GATE_CW)
            zp += mm(act, tl.trans(a1b), PREC)
            if SAVE_ANCHOR:
                _store_w2(a2_ptr, base, jb * BH, a2b, D, HD, BD, BH)
                _store_w1(a1_ptr, base, jb * BH, a1b, D, HD, BD, BH)
        zp, n = all_sum(x_ptr, cnt_ptr, bh, part, n, XS, rc[:, None] * BD + rd[None, :], zp,
                        SPLIT)
        u, rstd = _layer_norm(zp, cm, D, LN_EPS)
        mine = stored_by(t, s0, s1, part)
        if SAVE_LN:  # for mlp_backward_state_kernel: the same e = k + u - v, bit for bit
            tl.store(u_ptr + tok[:, None] * D + rd[None, :], u, mask=mine[:, None] & cm[None, :])
            tl.store(rstd_ptr + tok, rstd, mask=mine)
        e = tl.where(ymask, kt + u - vt, 0.0)
        dy = tl.where(ymask, bias_grad(e, vt, delta, BIAS, DELTA_CW, P, SHARP, EPS), 0.0)
        # dz = LN'(z)ᵀ dy
        dz = rstd[:, None] * (dy - (tl.sum(dy, axis=1) / D)[:, None]
                              - u * (tl.sum(dy * u, axis=1) / D)[:, None])
        dz = tl.where(ymask, dz, 0.0)
        tl.store(dz_ptr + tok[:, None] * D + rd[None, :], dz, mask=mine[:, None] & cm[None, :])
        # Eq 29 at the segment end, block by block of the hidden axis
        lbl = token_row(lb, rc, s1 - s0 - 1, GATE_CW)
        w = eta * tl.exp(lbl - lb)
        el = tl.exp(lbl)
        dzw = scale_tokens(dz, w, GATE_CW)
        for jb in range(j0, j1):
            z2b, m2, z1b, m1k, hb, act, a1b, _a2b = _block(
                s1_ptr, s2_ptr, base, jb, kt, s_anchor, sc1, sc2, m1, l1, D, HD, LINK, LQ,
                KLC, BD, BH, PREC, GATE_CW)
            dh = mm(dz, a1b, PREC) * gelu_grad(hb)
            if GATE_CW:  # the gates scale W2's columns: the keys' channels
                z2n = scale_cols(z2b, el, True) - mm(tl.trans(dh), kt * w, PREC)
            else:
                z2n = el * z2b - mm(tl.trans(dh * w[:, None]), kt, PREC)
            z1n = scale_rows(z1b, el, GATE_CW) - mm(tl.trans(dzw), act, PREC)
            _store_w2(s2_ptr, base + size, jb * BH, z2n, D, HD, BD, BH)
            _store_w1(s1_ptr, base + size, jb * BH, z1n, D, HD, BD, BH)
        # the next segment reads this slot: make every thread's stores visible
        tl.debug_barrier()


@triton.jit
def _row(x, rc, i):
    """Row ``i`` of a register tile ``x [BC, N]`` (a masked sum: no dynamic indexing)."""
    return tl.sum(tl.where((rc == i)[:, None], x, 0.0), axis=0)


@triton.jit
def _token_step(z2, z1, dh, act, k_ptr, eta_ptr, alpha_ptr, dz_ptr, ti, i, D,
                BC: tl.constexpr, BD: tl.constexpr, CW: tl.constexpr):
    """One token of the rank-1 recurrence for a hidden block's states (Eq 29 token by token):
    ``Z2_t = α_t Z2_{t-1} - η_t dH_t k_tᵀ``, ``Z1_t = α_t Z1_{t-1} - η_t dZ_t â_tᵀ``, with
    token ``i`` of the segment (``ti`` its index in ``[B, T, H]``) and ``dh, act [BC, BH]``
    the segment's ``dH`` and ``Â`` of the block; gates scalar or channel-wise (``CW``)."""
    rc = tl.arange(0, BC)
    rd = tl.arange(0, BD)
    al, et = token_gates(eta_ptr, alpha_ptr, ti, D, BD, CW)
    ki = tl.load(k_ptr + ti * D + rd, mask=rd < D, other=0.0).to(tl.float32)
    dzi = tl.load(dz_ptr + ti * D + rd, mask=rd < D, other=0.0)
    z2 = scale_cols(z2, al, CW) - scale_cols(_row(dh, rc, i)[:, None] * ki[None, :], et, CW)
    z1 = scale_rows(z1, al, CW) - scale_rows(dzi[:, None] * _row(act, rc, i)[None, :], et, CW)
    return z2, z1


@triton.jit
def _token_norms_block(mx1, ac1, mx2, ac2, s1_ptr, s2_ptr, base, jb, k_ptr, dz_ptr, tok, mt,
                       el, mask, dh, act, D, HD, LQ, QI: tl.constexpr, BH: tl.constexpr,
                       PREC: tl.constexpr):
    """Add hidden block ``jb`` of every token's state to the ``‖Z_t‖_q`` accumulators
    ``(mx, ac) [BC]`` of :func:`~._math.token_qnorm_update` (scalar gates).

    Eq 29 for all the segment's tokens at once, one row ``c`` of the block per product:
    ``Z1_t[c, j] = E_t Z1[c, j] - Σ_i M[t, i] dZ_i[c] â_i[j]`` and, for ``W2`` read by its
    columns, ``Z2_t[j, c] = E_t Z2[j, c] - Σ_i M[t, i] dH_i[j] k_i[c]``: ``[BC, BH]`` each
    (``el = E [BC]``, ``mask = M [BC, BC]``, ``dh, act [BC, BH]``). The rank-1 factors over
    ``c`` come from memory (``k``, ``dZ``), those over ``j`` are the block's tiles.
    """
    rj = jb * BH + tl.arange(0, BH)
    hm = rj < HD
    for c in range(0, D):
        kc = tl.load(k_ptr + tok * D + c, mask=mt, other=0.0).to(tl.float32)
        z0 = tl.load(s2_ptr + base + rj * D + c, mask=hm, other=0.0)
        z = el[:, None] * z0[None, :] - mm(mask, kc[:, None] * dh, PREC)
        mx2, ac2 = token_qnorm_update(mx2, ac2, z, LQ, QI)
        dzc = tl.load(dz_ptr + tok * D + c, mask=mt, other=0.0)
        z0 = tl.load(s1_ptr + base + c * HD + rj, mask=hm, other=0.0)
        z = el[:, None] * z0[None, :] - mm(mask, dzc[:, None] * act, PREC)
        mx1, ac1 = token_qnorm_update(mx1, ac1, z, LQ, QI)
    return mx1, ac1, mx2, ac2


@triton.jit
def _store_token_norms(norms_ptr, tok, mt, mx1, ac1, mx2, ac2):
    """Every token's ``‖Z1_t‖_q``, ``‖Z2_t‖_q`` accumulators into ``norms [B, T, H, 4]``
    (``m1, acc1, m2, acc2``), for :func:`mlp_backward_reads_kernel`."""
    tl.store(norms_ptr + tok * 4, mx1, mask=mt)
    tl.store(norms_ptr + tok * 4 + 1, ac1, mask=mt)
    tl.store(norms_ptr + tok * 4 + 2, mx2, mask=mt)
    tl.store(norms_ptr + tok * 4 + 3, ac2, mask=mt)


@triton.jit
def _load_token_norms(norms_ptr, tok, mt):
    """The accumulators :func:`_store_token_norms` stored: ``(m1, acc1, m2, acc2)``, ``[BC]``
    each (0 for padded tokens)."""
    m1 = tl.load(norms_ptr + tok * 4, mask=mt, other=0.0)
    acc1 = tl.load(norms_ptr + tok * 4 + 1, mask=mt, other=0.0)
    m2 = tl.load(norms_ptr + tok * 4 + 2, mask=mt, other=0.0)
    acc2 = tl.load(norms_ptr + tok * 4 + 3, mask=mt, other=0.0)
    return m1, acc1, m2, acc2


@triton.jit
def _skips(s, SEGMENTS: tl.constexpr):
    """Whether segment ``s`` is not among ``SEGMENTS``: 0 every segment, 1 the lag tokens
    only, 2 all but the lag tokens (with a lag token, segment ``2c`` is chunk ``c``'s lag
    token, ``chunked.segments``; ``chunked.Launch.read_segments``)."""
    return ((SEGMENTS == 1) & (s % 2 == 1)) | ((SEGMENTS == 2) & (s % 2 == 0))


@triton.jit
def _segment(bounds_ptr, k_ptr, dz_ptr, T, H, D, HD, NSEG, BC: tl.constexpr, BD: tl.constexpr):
    """The segment of a program whose grid starts ``NSEG × B·H``: its batch row and head
    ``b, h``, bounds ``s0, s1``, the tokens' rows ``tok [BC]`` and masks (``mt [BC]``,
    ``ymask [BC, BD]``), the offsets of its slot in the state slots (``base``) and in the
    per-segment read parts (``rbase``), its keys ``K`` and the forward's ``dZ`` (``[BC, BD]``
    each)."""
    s = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rc = tl.arange(0, BC)
    rd = tl.arange(0, BD)
    base = (bh * (NSEG + 1) + s) * D * HD
    rbase = (bh * NSEG + s) * D * HD
    s0 = tl.load(bounds_ptr + s)
    s1 = tl.load(bounds_ptr + s + 1)
    t = s0 + rc
    mt = t < s1
    tok = (b * T + t) * H + h
    ymask = mt[:, None] & (rd < D)[None, :]
    kt = segment_tiles(k_ptr, b, h, s0, s1, T, H, D, BC, BD)
    dz = tl.load(dz_ptr + tok[:, None] * D + rd[None, :], mask=ymask, other=0.0)
    return b, h, s0, s1, tok, mt, ymask, base, rbase, kt, dz


@triton.jit(do_not_specialize=["T", "NSEG"])
def mlp_output_kernel(
    q_ptr, k_ptr, eta_ptr, alpha_ptr, bounds_ptr, s1_ptr, s2_ptr, dz_ptr, y_ptr, reads_ptr,
    T, H, D, HD, NSEG,
    LQ, KLC, LN_EPS,
    LINK: tl.constexpr, DECAYED: tl.constexpr, GATE_CW: tl.constexpr, QI: tl.constexpr,
    SAVE_READS: tl.constexpr, SEGMENTS: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr,
    BH: tl.constexpr, PREC: tl.constexpr, NORM_PREC: tl.constexpr,
):
    """The reads of one segment (grid ``NSEG × B·H``; the module docstring has the forms), of
    the segments :func:`_skips` leaves.

    With ``SAVE_READS`` (for the backward kernels) it stores, per token, Moneta's norm
    accumulators (``reads [B, T, H, 4]``, :func:`_store_token_norms`) or Memora's
    ``zq_t`` and the log-sum-exp of ``Z1_t``'s rows (``reads [B, T, H, 2, d]``).
    """
    if _skips(tl.program_id(0), SEGMENTS):
        return
    b, h, s0, s1, tok, mt, ymask, base, _rbase, kt, dz = _segment(
        bounds_ptr, k_ptr, dz_ptr, T, H, D, HD, NSEG, BC, BD)
    NB = tl.cdiv(HD, BH)
    rc = tl.arange(0, BC)
    rd = tl.arange(0, BD)
    cm = rd < D
    n = s1 - s0
    qt = segment_tiles(q_ptr, b, h, s0, s1, T, H, D, BC, BD)
    eta, lb = gate_tiles(eta_ptr, alpha_ptr, tok, mt, D, BD, GATE_CW)
    el = tl.exp(lb)
    s_anchor = anchor_scale(alpha_ptr, (b * T + s0) * H + h, D, BD, DECAYED, GATE_CW)
    sc1, sc2, m1, l1 = _anchor_stats(s1_ptr, s2_ptr, base, D, HD, NB, LINK, LQ, BD, BH)
    if LINK == 3:
        # Memora: per-token states by the rank-1 recurrence; W1 rows by an online softmax
        mrun = tl.full([BC, BD], float("-inf"), tl.float32)
        lrun = tl.zeros([BC, BD], dtype=tl.float32)
        acc = tl.zeros([BC, BD], dtype=tl.float32)
        for jb in range(0, NB):
            z2, m2, z1, m1k, hb, act, a1b, _a2b = _block(
                s1_ptr, s2_ptr, base, jb, kt, s_anchor, sc1, sc2, m1, l1, D, HD, LINK, LQ,
                KLC, BD, BH, PREC, GATE_CW)
            dh = mm(dz, a1b, PREC) * gelu_grad(hb)
            hid = (jb * BH + tl.arange(0, BH)) < HD
            for i in range(0, n):
                ti = (b * T + s0 + i) * H + h
                qi = tl.load(q_ptr + ti * D + rd, mask=cm, other=0.0).to(tl.float32)
                z2, z1 = _token_step(z2, z1, dh, act, k_ptr, eta_ptr, alpha_ptr, dz_ptr, ti, i,
                                     D, BC, BD, GATE_CW)
                hh = tl.sum(link(z2, m2, 3, LQ, KLC) * qi[None, :], axis=1)
                ai = tl.where(hid, gelu(hh), 0.0)
                zm = tl.where(m1k, z1, float("-inf"))
                zm = tl.where(cm[:, None], zm, 0.0)
                sel = (rc == i)[:, None]
                m_old = tl.max(tl.where(sel, mrun, float("-inf")), axis=0)
                l_old = tl.sum(tl.where(sel, lrun, 0.0), axis=0)
                a_old = tl.sum(tl.where(sel, acc, 0.0), axis=0)
                mn = tl.maximum(m_old, tl.max(zm, axis=1))
                keep = tl.exp(m_old - mn)
                pz = tl.exp(zm - mn[:, None])
                mrun = tl.where(sel, mn[None, :], mrun)
                lrun = tl.where(sel, (l_old * keep + tl.sum(pz, axis=1))[None, :], lrun)
                acc = tl.where(sel, (a_old * keep + tl.sum(pz * ai[None, :], axis=1))[None, :],
                               acc)
        zq = KLC * acc / tl.where(lrun > 0.0, lrun, 1.0)
        if SAVE_READS:  # for mlp_kl.mlp_backward_kl_reads_kernel
            ptr = reads_ptr + (tok * 2)[:, None] * D + rd[None, :]
            tl.store(ptr, zq, mask=ymask)
            tl.store(ptr + D, mrun + tl.log(lrun), mask=ymask)
    else:
        if not GATE_CW:
            mask = decay_mask(lb, mt, BC) * eta[None, :]
        sct1 = tl.full([BC], 1.0, tl.float32)
        sct2 = tl.full([BC], 1.0, tl.float32)
        if LINK == 1:
            # Moneta: ‖Z_t‖_q of every token's state, in overflow-safe accumulators
            # (see _math.qnorm_update)
            mx1 = tl.zeros([BC], dtype=tl.float32)
            ac1 = tl.zeros([BC], dtype=tl.float32)
            mx2 = tl.zeros([BC], dtype=tl.float32)
            ac2 = tl.zeros([BC], dtype=tl.float32)
            for jb in range(0, NB):
                z2, m2, z1, m1k, hb, act, a1b, _a2b = _block(
                    s1_ptr, s2_ptr, base, jb, kt, s_anchor, sc1, sc2, m1, l1, D, HD, LINK, LQ,
                    KLC, BD, BH, PREC, GATE_CW)
                dh = mm(dz, a1b, PREC) * gelu_grad(hb)
                if GATE_CW:  # the rank-1 recurrence, token by token
                    for i in range(0, n):
                        ti = (b * T + s0 + i) * H + h
                        z2, z1 = _token_step(z2, z1, dh, act, k_ptr, eta_ptr, alpha_ptr, dz_ptr,
                                             ti, i, D, BC, BD, GATE_CW)
                        sel = rc == i
                        m2i, a2i = qnorm_update(tl.sum(tl.where(sel, mx2, 0.0), axis=0),
                                                tl.sum(tl.where(sel, ac2, 0.0), axis=0), z2, LQ)
                        m1i, a1i = qnorm_update(tl.sum(tl.where(sel, mx1, 0.0), axis=0),
                                                tl.sum(tl.where(sel, ac1, 0.0), axis=0), z1, LQ)
                        mx2 = tl.where(sel, m2i, mx2)
                        ac2 = tl.where(sel, a2i, ac2)
                        mx1 = tl.where(sel, m1i, mx1)
                        ac1 = tl.where(sel, a1i, ac1)
                else:  # every token at once, one row of the block per product
                    mx1, ac1, mx2, ac2 = _token_norms_block(
                        mx1, ac1, mx2, ac2, s1_ptr, s2_ptr, base, jb, k_ptr, dz_ptr, tok, mt,
                        el, mask, dh, act, D, HD, LQ, QI, BH, NORM_PREC)
            if SAVE_READS:
                _store_token_norms(reads_ptr, tok, mt, mx1, ac1, mx2, ac2)
            sct1 = inv_pow_norm(mx1, ac1, LQ, LQ - 2.0)
            sct2 = inv_pow_norm(mx2, ac2, LQ, LQ - 2.0)
        # dual-form reads: Z2_t q_t and Z1_t σ(h_t) without forming Z_t
        if GATE_CW:  # P[t, i] = Σ_c q_t[c] k_i[c] M[t, i, c]
            pm = channel_scores(q_ptr, k_ptr, eta_ptr, alpha_ptr, tok, mt, D, BC)
        else:
            pm = mm(qt, tl.trans(kt), PREC) * mask
        zq0 = tl.zeros([BC, BD], dtype=tl.float32)
        sa = tl.zeros([BC, BC], dtype=tl.float32)
        for jb in range(0, NB):
            z2b, m2, z1b, m1k, hb, act, a1b, _a2b = _block(
                s1_ptr, s2_ptr, base, jb, kt, s_anchor, sc1, sc2, m1, l1, D, HD, LINK, LQ,
                KLC, BD, BH, PREC, GATE_CW)
            dh = mm(dz, a1b, PREC) * gelu_grad(hb)
            if GATE_CW:
                hq = mm(qt * el, tl.trans(z2b), PREC)
            else:
                hq = el[:, None] * mm(qt, tl.trans(z2b), PREC)
            hq = (hq - mm(pm, dh, PREC)) * sct2[:, None]
            aq = gelu(hq)
            zq0 += mm(aq, tl.trans(z1b), PREC)
            sa += mm(aq, tl.trans(act), PREC)
        if GATE_CW:  # the gated axis of W1 is its output: Σ_i S[t, i] M[t, i, c] dZ_i[c]
            zq = zq0 * el - channel_mixed_read(sa, dz_ptr, eta_ptr, alpha_ptr, tok, mt, D, BC,
                                               BD)
        else:
            zq = el[:, None] * zq0 - mm(sa * mask, dz, PREC)
        zq = zq * sct1[:, None]
    zq = tl.where(ymask, zq, 0.0)
    u, _ = _layer_norm(zq, cm, D, LN_EPS)
    y = qt + u
    tl.store(y_ptr + tok[:, None] * D + rd[None, :], y.to(y_ptr.dtype.element_ty), mask=ymask)


@triton.jit
def _scratch(scr_ptr, base, which, jb, NBH, BC: tl.constexpr, BH: tl.constexpr):
    """Offsets of hidden block ``jb`` of scratch tile ``which`` (``[BC, NB·BH]`` each)."""
    rc = tl.arange(0, BC)
    rj = jb * BH + tl.arange(0, BH)
    return scr_ptr + base + which * BC * NBH + rc[:, None] * NBH + rj[None, :]


@triton.jit
def _hidden_tile(ptr, tok, mt, j0, HD, BH: tl.constexpr):
    """Offsets and mask of columns ``j0 .. j0+BH`` of a per-token ``[B, T, H, Ed]`` buffer."""
    rj = j0 + tl.arange(0, BH)
    return ptr + tok[:, None] * HD + rj[None, :], mt[:, None] & (rj < HD)[None, :]


@triton.jit
def _anchor_hidden(s1_ptr, s2_ptr, base, jb, kt, sa1, sa2, D, HD, BD: tl.constexpr,
                   BH: tl.constexpr, PREC: tl.constexpr, CW: tl.constexpr):
    """Hidden block ``jb`` of the forward at an anchor that scales the state,
    ``A1 = sa1 ⊙ Z1``, ``A2 = sa2 ⊙ Z2`` (the identity link's ``A = s ⊙ Z0`` of Eq 28, or
    Moneta's ``A = ‖Z0‖_q^{2-q} Z0`` of Eq 24, one scalar per layer): the raw state
    ``Z2b [BH, BD]``, ``Z1b [BD, BH]``, ``H = K A2bᵀ``, ``Â = σ(H)`` and ``A1b``."""
    z2b, _ = _load_w2(s2_ptr, base, jb * BH, D, HD, BD, BH)
    z1b, _ = _load_w1(s1_ptr, base, jb * BH, D, HD, BD, BH)
    a1b = scale_rows(z1b, sa1, CW)
    hb = mm(kt, tl.trans(scale_cols(z2b, sa2, CW)), PREC)
    return z2b, z1b, hb, gelu(hb), a1b


@triton.jit
def _anchor_layers(s1_ptr, s2_ptr, base, jb, kt, sa1, sa2, m1, l1, D, HD, LINK: tl.constexpr,
                   KLC, BD: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr,
                   CW: tl.constexpr):
    """Hidden block ``jb`` of the forward at the anchor, for the backward state kernel: the raw
    state ``Z2b [BH, BD]``, ``Z1b [BD, BH]``, the anchor ``A2b``, ``A1b``, ``H = K A2bᵀ`` and
    ``Â = σ(H)``. Memora's KL link (``LINK == 3``): ``A = c softmax(Z0)`` by rows (``W1``'s
    row statistics ``m1, l1 [BD]`` from :func:`_anchor_stats`); else the scaled state of
    :func:`_anchor_hidden`."""
    if LINK == 3:
        z2b, _m2, z1b, _m1k, hb, act, a1b, a2b = _block(s1_ptr, s2_ptr, base, jb, kt, 1.0, 1.0,
                                                       1.0, m1, l1, D, HD, 3, 2.0, KLC, BD, BH,
                                                       PREC, CW)
    else:
        z2b, z1b, hb, act, a1b = _anchor_hidden(s1_ptr, s2_ptr, base, jb, kt, sa1, sa2, D, HD,
                                                BD, BH, PREC, CW)
        a2b = scale_cols(z2b, sa2, CW)
    return z2b, z1b, a2b, a1b, hb, act


@triton.jit
def _norm_grad(gs, sc, mx, acc, LQ):
    """``(c, 1/m)`` with ``∂s/∂Z · gs = c · sign(Z) |Z/m|^{q-1}`` (:func:`_norm_dir`) for the
    scale ``s = ‖Z‖_q^{2-q}`` (Eq 24) from its :func:`~._math.qnorm_update` accumulator
    ``(m, acc)``: with ``‖Z‖_q^q = m^q acc``, ``∂s/∂Z = (2-q) s / (m acc) sign(Z)|Z/m|^{q-1}``
    (``c = 0`` for a zero state)."""
    den = mx * acc
    c = tl.where(den > 0.0, gs * (2.0 - LQ) * sc / tl.where(den > 0.0, den, 1.0), 0.0)
    return c, 1.0 / tl.where(mx > 0.0, mx, 1.0)


@triton.jit
def _norm_dir(z, inv, LQ, QM1: tl.constexpr):
    """``sign(Z) |Z · inv|^{q-1}`` (``inv = 1/m``; ``QM1``: :func:`~._math.q_int` of ``q-1``)."""
    return sign(z) * abs_pow(z * inv, LQ - 1.0, QM1)


@triton.jit(do_not_specialize=["T", "NSEG"])
def mlp_backward_reads_kernel(
    q_ptr, k_ptr, eta_ptr, alpha_ptr, bounds_ptr, s1_ptr, s2_ptr, dz_ptr, norms_ptr, gy_ptr,
    gq_ptr, gkr_ptr, gdzr_ptr, gdhr_ptr, gactr_ptr, getar_ptr, glbr_ptr, gz1r_ptr, gz2r_ptr,
    gs_ptr, T, H, D, HD, NSEG, LQ, LN_EPS,
    LINK: tl.constexpr, DECAYED: tl.constexpr, GATE_CW: tl.constexpr, SEGMENTS: tl.constexpr,
    BC: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr,
):
    """Gradients through the dual-form reads of one segment (grid ``NSEG × B·H``, every
    segment at once, those :func:`_skips` leaves): everything of the backward that does not
    depend on the gradient of the segment's end state.

    Recomputes the reads ``Zq = E ⊙ (Aq Z1ᵀ) - (M ⊙ Aq Âᵀ) dZ``, ``Hq = E ⊙ (Q Z2ᵀ) - (M ⊙ P)
    dH`` from the stored slot and the forward's ``dZ``, then back through ``y = q + LN(Zq)``.
    Writes ``∂L/∂q`` (final) and the read parts that :func:`mlp_backward_state_kernel` adds
    to: of ``k`` (``gkr``), ``dZ`` (``gdzr``), ``dH`` and ``Â`` (``gdhr``, ``gactr``, per
    token over ``Ed``), ``η`` and the log-decays (``getar``, ``glbr``; ``[B, T, H, d]``
    channel-wise), and the segment's start state (``gz1r``, ``gz2r``, one slot per segment).

    Channel-wise gates (``GATE_CW``): the reads are ``Hq = (E ⊙ Q) Z2ᵀ - P dH`` and
    ``Zq = E ⊙ (Aq Z1ᵀ) - R`` with the channel sums ``P`` (:func:`~.gates.channel_scores`)
    and ``R[t, c] = Σ_i S[t, i] M[t, i, c] dZ_i[c]`` (:func:`~.gates.channel_mixed_read`);
    ``∂L/∂S = Σ_c -gZq[t, c] dZ_i[c] M[t, i, c]`` and, after the hidden blocks, the mask's
    gradients by :func:`~.gates.channel_reads_grad`.

    Moneta's ℓq link (``LINK == 1``, scalar gates): the anchor is ``A = ‖Z0‖_q^{2-q} Z0``
    per layer and the reads are scaled, ``Hq ← s2_t Hq``, ``Zq ← s1_t Zq`` with
    ``s_t = ‖Z_t‖_q^{2-q}`` from the forward's accumulators (``norms [B, T, H, 4]``,
    :func:`_store_token_norms`). The scales' gradients ``∂L/∂s1_t = <∂L/∂Zq_t, Zq_t>``,
    ``∂L/∂s2_t = <∂L/∂Hq_t, Hq_t>`` go to ``gs [B, T, H, 2]``, for
    :func:`mlp_backward_norms_kernel`.
    """
    if _skips(tl.program_id(0), SEGMENTS):
        return
    b, h, s0, s1, tok, mt, ymask, base, rbase, kt, dz = _segment(
        bounds_ptr, k_ptr, dz_ptr, T, H, D, HD, NSEG, BC, BD)
    NB = tl.cdiv(HD, BH)
    rd = tl.arange(0, BD)
    cm = rd < D
    qt = segment_tiles(q_ptr, b, h, s0, s1, T, H, D, BC, BD)
    gy = segment_tiles(gy_ptr, b, h, s0, s1, T, H, D, BC, BD)
    eta, lb = gate_tiles(eta_ptr, alpha_ptr, tok, mt, D, BD, GATE_CW)
    s_anchor = anchor_scale(alpha_ptr, (b * T + s0) * H + h, D, BD, DECAYED, GATE_CW)
    el = tl.exp(lb)
    if LINK == 1:  # Moneta: the anchor's and every token's scales ‖Z‖_q^{2-q}
        sa1, sa2, _, _ = _anchor_stats(s1_ptr, s2_ptr, base, D, HD, NB, 1, LQ, BD, BH)
        mx1, ac1, mx2, ac2 = _load_token_norms(norms_ptr, tok, mt)
        sct1 = inv_pow_norm(mx1, ac1, LQ, LQ - 2.0)
        sct2 = inv_pow_norm(mx2, ac2, LQ, LQ - 2.0)
    else:
        sa1 = s_anchor
        sa2 = s_anchor
        sct1 = tl.full([BC], 1.0, tl.float32)
        sct2 = tl.full([BC], 1.0, tl.float32)
    if GATE_CW:  # the scores M ⊙ P, summed channel by channel
        pm = channel_scores(q_ptr, k_ptr, eta_ptr, alpha_ptr, tok, mt, D, BC)
    else:
        dec = decay_mask(lb, mt, BC)
        mask = dec * eta[None, :]
        pqk = mm(qt, tl.trans(kt), PREC)
    # ---- the dual-form reads
    zq0 = tl.zeros([BC, BD], dtype=tl.float32)
    sa = tl.zeros([BC, BC], dtype=tl.float32)
    for jb in range(0, NB):
        z2b, z1b, hb, act, a1b = _anchor_hidden(s1_ptr, s2_ptr, base, jb, kt, sa1, sa2, D, HD,
                                               BD, BH, PREC, GATE_CW)
        dh = mm(dz, a1b, PREC) * gelu_grad(hb)
        if GATE_CW:
            aq = gelu(mm(qt * el, tl.trans(z2b), PREC) - mm(pm, dh, PREC))
        else:
            hq = el[:, None] * mm(qt, tl.trans(z2b), PREC) - mm(pqk * mask, dh, PREC)
            aq = gelu(hq * sct2[:, None])
        zq0 += mm(aq, tl.trans(z1b), PREC)
        sa += mm(aq, tl.trans(act), PREC)
    if GATE_CW:
        zq = zq0 * el - channel_mixed_read(sa, dz_ptr, eta_ptr, alpha_ptr, tok, mt, D, BC, BD)
    else:
        zq = el[:, None] * zq0 - mm(sa * mask, dz, PREC)
    zq = tl.where(ymask, zq, 0.0)
    uq, rstdq = _layer_norm(zq * sct1[:, None], cm, D, LN_EPS)
    # ---- back through y = q + LN(s1 Zq) and Zq = E ⊙ (Aq Z1ᵀ) - (M ⊙ Aq Âᵀ) dZ
    gzq = rstdq[:, None] * (gy - (tl.sum(gy, axis=1) / D)[:, None]
                            - uq * (tl.sum(gy * uq, axis=1) / D)[:, None])
    gzq = tl.where(ymask, gzq, 0.0)
    gs1 = tl.sum(gzq * zq, axis=1)  # ∂L/∂s1_t (Moneta)
    gzq = gzq * sct1[:, None]
    gq = gy
    gp = tl.zeros([BC, BC], dtype=tl.float32)
    if GATE_CW:
        # ∂L/∂R = -gZq goes through memory for the channel loops: gdzr (written last) is
        # this program's scratch until then
        tl.store(gdzr_ptr + tok[:, None] * D + rd[None, :], -gzq, mask=ymask)
        tl.debug_barrier()
        gs = channel_scores(gdzr_ptr, dz_ptr, eta_ptr, alpha_ptr, tok, mt, D, BC)  # ∂L/∂S
        glb = el * gzq * zq0
        gqz = tl.zeros([BC, BD], dtype=tl.float32)
        for jb in range(0, NB):
            z2b, z1b, hb, act, a1b = _anchor_hidden(s1_ptr, s2_ptr, base, jb, kt, s_anchor,
                                                    s_anchor, D, HD, BD, BH, PREC, True)
            dh = mm(dz, a1b, PREC) * gelu_grad(hb)
            hq = mm(qt * el, tl.trans(z2b), PREC) - mm(pm, dh, PREC)
            aq = gelu(hq)
            # the gradient of Aq, then of Hq = (E ⊙ Q) Z2ᵀ - P dH
            ghq = (mm(gzq * el, z1b, PREC) + mm(gs, act, PREC)) * gelu_grad(hq)
            gqz += mm(ghq, z2b, PREC)
            gp -= mm(ghq, tl.trans(dh), PREC)
            ptr, hm = _hidden_tile(gdhr_ptr, tok, mt, jb * BH, HD, BH)
            tl.store(ptr, -mm(tl.trans(pm), ghq, PREC), mask=hm)
            ptr, hm = _hidden_tile(gactr_ptr, tok, mt, jb * BH, HD, BH)
            tl.store(ptr, mm(tl.trans(gs), aq, PREC), mask=hm)
            _store_w1(gz1r_ptr, rbase, jb * BH, mm(tl.trans(gzq * el), aq, PREC), D, HD, BD, BH)
            _store_w2(gz2r_ptr, rbase, jb * BH, mm(tl.trans(ghq), qt * el, PREC), D, HD, BD, BH)
        # the masks of both reads, channel by channel
        gqm, gkr, gdz, geta, glbm = channel_reads_grad(gp, gdzr_ptr, sa, q_ptr, k_ptr, dz_ptr,
                                                       eta_ptr, alpha_ptr, tok, mt, D, BC, BD,
                                                       True)
        tl.debug_barrier()
        gq += gqm + el * gqz
        glb += glbm + el * qt * gqz
        tl.store(gq_ptr + tok[:, None] * D + rd[None, :], gq.to(gq_ptr.dtype.element_ty),
                 mask=ymask)
        tl.store(gkr_ptr + tok[:, None] * D + rd[None, :], gkr, mask=ymask)
        tl.store(gdzr_ptr + tok[:, None] * D + rd[None, :], gdz, mask=ymask)
        tl.store(getar_ptr + tok[:, None] * D + rd[None, :], geta, mask=ymask)
        tl.store(glbr_ptr + tok[:, None] * D + rd[None, :], glb, mask=ymask)
    else:
        gr = -mm(gzq, tl.trans(dz), PREC)  # ∂L/∂(M ⊙ S)
        gs = gr * mask
        gm = gr * sa
        gdz = -mm(tl.trans(sa * mask), gzq, PREC)
        glb = el * tl.sum(gzq * zq0, axis=1)
        gs2 = tl.zeros([BC], dtype=tl.float32)  # ∂L/∂s2_t (Moneta)
        for jb in range(0, NB):
            z2b, z1b, hb, act, a1b = _anchor_hidden(s1_ptr, s2_ptr, base, jb, kt, sa1, sa2, D,
                                                    HD, BD, BH, PREC, False)
            dh = mm(dz, a1b, PREC) * gelu_grad(hb)
            qz2 = mm(qt, tl.trans(z2b), PREC)
            hq = el[:, None] * qz2 - mm(pqk * mask, dh, PREC)
            aq = gelu(hq * sct2[:, None])
            # the gradient of Aq, then of Hq = E ⊙ (Q Z2ᵀ) - (M ⊙ P) dH
            gaq = el[:, None] * mm(gzq, z1b, PREC) + mm(gs, act, PREC)
            ghq = gaq * gelu_grad(hq * sct2[:, None])
            if LINK == 1:
                gs2 += tl.sum(ghq * hq, axis=1)
                ghq = ghq * sct2[:, None]
            gq += el[:, None] * mm(ghq, z2b, PREC)
            glb += el * tl.sum(ghq * qz2, axis=1)
            gr2 = -mm(ghq, tl.trans(dh), PREC)
            gp += gr2 * mask
            gm += gr2 * pqk
            ptr, hm = _hidden_tile(gdhr_ptr, tok, mt, jb * BH, HD, BH)
            tl.store(ptr, -mm(tl.trans(pqk * mask), ghq, PREC), mask=hm)
            ptr, hm = _hidden_tile(gactr_ptr, tok, mt, jb * BH, HD, BH)
            tl.store(ptr, mm(tl.trans(gs), aq, PREC), mask=hm)
            # the start state's share: Z1 in E ⊙ (Aq Z1ᵀ), Z2 in E ⊙ (Q Z2ᵀ)
            _store_w1(gz1r_ptr, rbase, jb * BH, mm(tl.trans(gzq * el[:, None]), aq, PREC),
                      D, HD, BD, BH)
            _store_w2(gz2r_ptr, rbase, jb * BH, mm(tl.trans(ghq * el[:, None]), qt, PREC),
                      D, HD, BD, BH)
        if LINK == 1:  # for mlp_backward_norms_kernel
            tl.store(gs_ptr + tok * 2, gs1, mask=mt)
            tl.store(gs_ptr + tok * 2 + 1, gs2, mask=mt)
        # ---- P = Q Kᵀ and the gates' read parts
        gq += mm(gp, kt, PREC)
        gmm = gm * mask
        glb += tl.sum(gmm, axis=1) - tl.sum(gmm, axis=0)
        tl.store(gq_ptr + tok[:, None] * D + rd[None, :], gq.to(gq_ptr.dtype.element_ty),
                 mask=ymask)
        tl.store(gkr_ptr + tok[:, None] * D + rd[None, :], mm(tl.trans(gp), qt, PREC), mask=ymask)
        tl.store(gdzr_ptr + tok[:, None] * D + rd[None, :], gdz, mask=ymask)
        tl.store(getar_ptr + tok, tl.sum(gm * dec, axis=0), mask=mt)
        tl.store(glbr_ptr + tok, glb, mask=mt)


@triton.jit
def _norms_row_grad(z0, l_c, r, el, mask, dec_t, c, inv, LQ, QM1: tl.constexpr,
                    PREC: tl.constexpr):
    """One row ``c`` of :func:`mlp_backward_norms_kernel`: every token's state row
    ``Z_t[c, :] = E_t z0 - Σ_i M[t, i] l_i[c] r_i`` (Eq 29, ``[BC, BH]``), its share
    ``Φ = c_t sign(Z_t)|Z_t/m_t|^{q-1}`` of ``∂s_t/∂Z_t · ∂L/∂s_t``, and
    ``gld = -decᵀ Φ`` (``[BC, BH]``), so that ``∂L/∂r_i = η_i l_i[c] gld[i]``,
    ``∂L/∂l_i[c] = η_i <gld[i], r_i>`` and ``∂L/∂η_i`` gets ``l_i[c] <gld[i], r_i>``.
    Returns ``(Σ_t E_t Φ_t [BH], gld, <gld[i], r_i> [BC])``."""
    z = el[:, None] * z0[None, :] - mm(mask, l_c[:, None] * r, PREC)
    phi = c[:, None] * _norm_dir(z, inv[:, None], LQ, QM1)
    gld = -mm(dec_t, phi, PREC)
    return tl.sum(el[:, None] * phi, axis=0), gld, tl.sum(gld * r, axis=1)


@triton.jit(do_not_specialize=["T", "NSEG"])
def mlp_backward_norms_kernel(
    k_ptr, eta_ptr, alpha_ptr, bounds_ptr, s1_ptr, s2_ptr, dz_ptr, norms_ptr, gs_ptr,
    gkr_ptr, gdzr_ptr, gdhr_ptr, gactr_ptr, getar_ptr, glbr_ptr, gz1r_ptr, gz2r_ptr,
    T, H, D, HD, NSEG, LQ,
    QM1: tl.constexpr, SEGMENTS: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr,
    BH: tl.constexpr, PREC: tl.constexpr, NORM_PREC: tl.constexpr,
):
    """Moneta's ℓq link (scalar gates; the segments :func:`_skips` leaves): the gradient of
    every token's read scales
    ``s_t = ‖Z_t‖_q^{2-q}`` (Eq 24; ``∂L/∂s_t`` from :func:`mlp_backward_reads_kernel`) back
    through the per-token states ``Z_t = E_t Z0 - Σ_i M[t, i] l_i r_iᵀ`` (Eq 29; ``W1``:
    ``l = dZ``, ``r = Â``; ``W2`` read by its columns: ``l = k``, ``r = dH``), added to the
    reads kernel's parts (grid ``NSEG × B·H``, every segment at once). The row-wise parts
    (of ``Z0``'s rows and columns, of ``dZ[:, c]`` and ``k[:, c]``) are added by atomic adds,
    which do not wait for the memory as a load-add-store would; each program owns its
    segment's elements, so no two programs add to one.

    With ``∂s/∂Z = (2-q) s/(m acc) sign(Z)|Z/m|^{q-1} =: Φ/∂L/∂s`` (:func:`_norm_grad`),
    row by row of each hidden block, as in the forward's :func:`_token_norms_block`:
    ``∂Z0 += Σ_t E_t Φ_t``; ``∂l_i = -Σ_t M[t, i] Φ_t r_i``, ``∂r_i = -Σ_t M[t, i] Φ_tᵀ l_i``;
    ``∂η_i = -Σ_t dec[t, i] l_iᵀ Φ_t r_i``. The log-decays enter through ``E_t`` and
    ``M[t, i] = η_i exp(lb_t - lb_i)``: their share adds up to ``<Φ_t, Z_t> - η_t ∂η_t``,
    and ``<∂s/∂Z, Z> = (2-q) s`` (``s`` is homogeneous of degree ``2-q``), so
    ``∂lb_t = Σ_layers (2-q) s_t ∂L/∂s_t - η_t ∂η_t`` needs no sum over the state.
    """
    if _skips(tl.program_id(0), SEGMENTS):
        return
    b, h, s0, s1, tok, mt, _ymask, base, rbase, kt, dz = _segment(
        bounds_ptr, k_ptr, dz_ptr, T, H, D, HD, NSEG, BC, BD)
    NB = tl.cdiv(HD, BH)
    eta, lb = gate_tiles(eta_ptr, alpha_ptr, tok, mt, D, BD, False)
    el = tl.exp(lb)
    dec = decay_mask(lb, mt, BC)
    mask = dec * eta[None, :]
    dec_t = tl.trans(dec)
    sa1, sa2, m1u, l1u = _anchor_stats(s1_ptr, s2_ptr, base, D, HD, NB, 1, LQ, BD, BH)
    mx1, ac1, mx2, ac2 = _load_token_norms(norms_ptr, tok, mt)
    gs1 = tl.load(gs_ptr + tok * 2, mask=mt, other=0.0)
    gs2 = tl.load(gs_ptr + tok * 2 + 1, mask=mt, other=0.0)
    sct1 = inv_pow_norm(mx1, ac1, LQ, LQ - 2.0)
    sct2 = inv_pow_norm(mx2, ac2, LQ, LQ - 2.0)
    c1, inv1 = _norm_grad(gs1, sct1, mx1, ac1, LQ)
    c2, inv2 = _norm_grad(gs2, sct2, mx2, ac2, LQ)
    geta = tl.zeros([BC], dtype=tl.float32)
    for jb in range(0, NB):
        z2b, z1b, hb, act, a1b = _anchor_hidden(s1_ptr, s2_ptr, base, jb, kt, sa1, sa2, D, HD,
                                                BD, BH, PREC, False)
        dh = mm(dz, a1b, PREC) * gelu_grad(hb)
        rj = jb * BH + tl.arange(0, BH)
        hm = rj < HD
        pdh, hmt = _hidden_tile(gdhr_ptr, tok, mt, jb * BH, HD, BH)
        pact, hmt = _hidden_tile(gactr_ptr, tok, mt, jb * BH, HD, BH)
        gdh = tl.load(pdh, mask=hmt, other=0.0)
        gact = tl.load(pact, mask=hmt, other=0.0)
        for c in range(0, D):
            # W1, row c: Z1_t[c, :] = E_t Z1[c, :] - Σ_i M[t, i] dZ_i[c] â_i
            dzc = tl.load(dz_ptr + tok * D + c, mask=mt, other=0.0)
            z0 = tl.load(s1_ptr + base + c * HD + rj, mask=hm, other=0.0)
            gz0, gld, v = _norms_row_grad(z0, dzc, act, el, mask, dec_t, c1, inv1, LQ, QM1,
                                          NORM_PREC)
            tl.atomic_add(gz1r_ptr + rbase + c * HD + rj, gz0, mask=hm, sem="relaxed")
            gact += (eta * dzc)[:, None] * gld
            tl.atomic_add(gdzr_ptr + tok * D + c, eta * v, mask=mt, sem="relaxed")
            geta += dzc * v
            # W2, column c: Z2_t[:, c] = E_t Z2[:, c] - Σ_i M[t, i] k_i[c] dH_i
            kc = tl.load(k_ptr + tok * D + c, mask=mt, other=0.0).to(tl.float32)
            z0 = tl.load(s2_ptr + base + rj * D + c, mask=hm, other=0.0)
            gz0, gld, v = _norms_row_grad(z0, kc, dh, el, mask, dec_t, c2, inv2, LQ, QM1,
                                          NORM_PREC)
            tl.atomic_add(gz2r_ptr + rbase + rj * D + c, gz0, mask=hm, sem="relaxed")
            gdh += (eta * kc)[:, None] * gld
            tl.atomic_add(gkr_ptr + tok * D + c, eta * v, mask=mt, sem="relaxed")
            geta += kc * v
        tl.store(pdh, gdh, mask=hmt)
        tl.store(pact, gact, mask=hmt)
    glb = (2.0 - LQ) * (sct1 * gs1 + sct2 * gs2) - eta * geta
    tl.store(getar_ptr + tok, tl.load(getar_ptr + tok, mask=mt, other=0.0) + geta, mask=mt)
    tl.store(glbr_ptr + tok, tl.load(glbr_ptr + tok, mask=mt, other=0.0) + glb, mask=mt)


@triton.jit
def _grads_exchange(gk, gw, gend, ga_z1, ga_z2, ga_z1x, ga_a1, x_ptr, cnt_ptr, bh, part, n, XS,
                    BC: tl.constexpr, BD: tl.constexpr, CW: tl.constexpr,
                    SPLIT: tl.constexpr):
    """The sums over the hidden axis of :func:`mlp_backward_state_kernel` after B2, every
    part's joined (exchange ``n``; returns them and the next exchange's number): ``gk
    [BC, BD]``, the weights' and the end decay's gradients ``gw [BC]`` and ``gend`` (with
    channel-wise gates ``[BC, BD]`` and ``[BD]``), ``<G_A, Z0>``'s parts ``ga_z1, ga_z2 [BD]``
    and ``ga_z1x [BC]``, and KL's ``rowsum(A1 ⊙ G_A1)`` ``ga_a1 [BD]``. Needs
    ``XS >= 2·BC·BD + 4·BD + BC``."""
    if SPLIT > 1:
        rc = tl.arange(0, BC)
        rd = tl.arange(0, BD)
        tile = rc[:, None] * BD + rd[None, :]
        if CW:
            o_w = BC * BD + tile
            o_end = 2 * BC * BD + rd
        else:
            o_w = BC * BD + rc
            o_end = 2 * BC * BD
        o = 2 * BC * BD + BD
        reg = region(bh, n, XS, SPLIT)
        put(x_ptr, reg, part, XS, tile, gk, SPLIT)
        put(x_ptr, reg, part, XS, o_w, gw, SPLIT)
        put(x_ptr, reg, part, XS, o_end, gend, SPLIT)
        put(x_ptr, reg, part, XS, o + rd, ga_z1, SPLIT)
        put(x_ptr, reg, part, XS, o + BD + rd, ga_z2, SPLIT)
        put(x_ptr, reg, part, XS, o + 2 * BD + rc, ga_z1x, SPLIT)
        put(x_ptr, reg, part, XS, o + 2 * BD + BC + rd, ga_a1, SPLIT)
        arrive(cnt_ptr, bh, n, SPLIT)
        gk = total(x_ptr, reg, XS, tile, gk, SPLIT)
        gw = total(x_ptr, reg, XS, o_w, gw, SPLIT)
        gend = total(x_ptr, reg, XS, o_end, gend, SPLIT)
        ga_z1 = total(x_ptr, reg, XS, o + rd, ga_z1, SPLIT)
        ga_z2 = total(x_ptr, reg, XS, o + BD + rd, ga_z2, SPLIT)
        ga_z1x = total(x_ptr, reg, XS, o + 2 * BD + rc, ga_z1x, SPLIT)
        ga_a1 = total(x_ptr, reg, XS, o + 2 * BD + BC + rd, ga_a1, SPLIT)
        n += 1
    return gk, gw, gend, ga_z1, ga_z2, ga_z1x, ga_a1, n


@triton.jit(do_not_specialize=["T", "NSEG"])
def mlp_backward_state_kernel(
    k_ptr, v_ptr, eta_ptr, alpha_ptr, delta_ptr, bounds_ptr, s1_ptr, s2_ptr, dz_ptr, u_ptr,
    rstd_ptr, g1_ptr, g2_ptr, scr_ptr, x_ptr, cnt_ptr,
    gkr_ptr, gdzr_ptr, gdhr_ptr, gactr_ptr, getar_ptr, glbr_ptr, gz1r_ptr, gz2r_ptr,
    gk_ptr, gv_ptr, geta_ptr, galpha_ptr, gdelta_ptr,
    T, H, D, HD, NSEG, XS,
    P, SHARP, EPS, LQ, KLC,
    BIAS: tl.constexpr, LINK: tl.constexpr, DECAYED: tl.constexpr, DELTA_CW: tl.constexpr,
    GATE_CW: tl.constexpr, QM1: tl.constexpr, READS: tl.constexpr, BC: tl.constexpr,
    BD: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
):
    """The rest of the identity-link MLP backward, segments in reverse (grid ``B·H``): the
    gradient of each segment's end state flows back through the chunk-end updates
    ``Z_end = E_C Z0 - (w ⊙ G)ᵀ X`` and the forward at the anchor (including the second-order
    terms of ``dZ = LN'ᵀ dY`` and ``dH = (dZ A1) ⊙ σ'(H)``) to the segment's start state,
    adding the read parts of :func:`mlp_backward_reads_kernel`.

    The end-state gradient ``gZ`` lives in the ping-pong slots ``g1 [B, H, 2, d, Ed]``,
    ``g2 [B, H, 2, Ed, d]`` (slot 0 holds the final state's gradient on entry; the initial
    state's gradient is in slot ``NSEG % 2`` at the end); two ``[BC, Ed]`` scratch tiles per
    program carry per-block partial gradients from the first pass over the hidden blocks to
    the second. Channel-wise gates (``GATE_CW``) scale the ``d`` axis of both weights (the
    columns of ``Z2``, the rows of ``Z1``): the decays, the anchor's scale and the weights
    ``w`` become per channel, and so do the gradients of the gates.

    Moneta's ℓq link (``LINK == 1``, scalar gates): the anchor is ``A = s Z0`` with
    ``s = ‖Z0‖_q^{2-q}`` per layer, so the anchor's gradient ``G_A`` adds
    ``s G_A + <G_A, Z0> ∂s/∂Z0`` to the start state's (a third pass over the hidden blocks,
    after ``<G_A, Z0>`` is complete).

    Memora's KL link (``LINK == 3``, scalar gates): the anchor is ``A = c softmax(Z0)`` by
    rows, so ``G_A`` adds ``A ⊙ G_A - (A / c) ⊙ rowsum(A ⊙ G_A)`` (row softmax's Jacobian);
    ``W2``'s rows lie in one hidden block, ``W1``'s span them all (their sums complete
    after B2, a third pass as Moneta's).

    ``READS``: the segments that read the anchor after plain steps (``link_at="chunk"``), as a
    :func:`_skips` code, or -1 for none: their reads' share ``gz1r, gz2r`` is the anchor's and
    goes through the link with ``G_A``; the other segments' is ``Z0``'s.

    ``SPLIT`` programs share a row and head, each with its own hidden blocks, as in
    :func:`mlp_state_kernel`; they exchange the link's statistics, ``∂L/∂z``'s partial sums
    after B1 and every other sum over the hidden axis after B2 (:func:`_grads_exchange`), and
    part 0 stores the per-token gradients.
    """
    bh, part = split_program(SPLIT)
    b = bh // H
    h = bh % H
    NB = tl.cdiv(HD, BH)
    NBH = NB * BH
    j0, j1 = part_blocks(NB, part, SPLIT)
    n = 0  # exchanges so far
    rc = tl.arange(0, BC)
    rd = tl.arange(0, BD)
    cm = rd < D
    size = D * HD
    sbase = bh * 2 * BC * NBH
    for r in range(0, NSEG):
        s = NSEG - 1 - r
        base = (bh * (NSEG + 1) + s) * size
        rbase = (bh * NSEG + s) * size
        gin = (bh * 2 + r % 2) * size
        gout = (bh * 2 + (r + 1) % 2) * size
        s0 = tl.load(bounds_ptr + s)
        s1 = tl.load(bounds_ptr + s + 1)
        t = s0 + rc
        mt = t < s1
        tok = (b * T + t) * H + h
        ymask = mt[:, None] & cm[None, :]
        kt = segment_tiles(k_ptr, b, h, s0, s1, T, H, D, BC, BD)
        vt = segment_tiles(v_ptr, b, h, s0, s1, T, H, D, BC, BD)
        eta, lb = gate_tiles(eta_ptr, alpha_ptr, tok, mt, D, BD, GATE_CW)
        alpha = gate_tile(alpha_ptr, tok, mt, D, 1.0, BD, GATE_CW)
        delta = delta_tile(delta_ptr, tok, mt, rd, D, DELTA_CW, BIAS)
        s_anchor = anchor_scale(alpha_ptr, (b * T + s0) * H + h, D, BD, DECAYED, GATE_CW)
        # Moneta's anchor A = ‖Z0‖_q^{2-q} Z0, per layer; Memora's W1 row statistics
        mxa1, aca1, mxa2, aca2, m1, l1 = _anchor_partials(s1_ptr, s2_ptr, base, D, HD, j0, j1,
                                                          LINK, LQ, BD, BH)
        mxa1, aca1, mxa2, aca2, m1, l1, n = _stats_exchange(
            mxa1, aca1, mxa2, aca2, m1, l1, x_ptr, cnt_ptr, bh, part, n, XS, LINK, LQ, BD, SPLIT)
        if LINK == 1:
            sa1, sa2 = _anchor_scales(mxa1, aca1, mxa2, aca2, LINK, LQ)
        else:
            sa1 = s_anchor
            sa2 = s_anchor
        # Memora: rowsum(A1 ⊙ G_A1) over the blocks
        ga_a1 = tl.zeros([BD], dtype=tl.float32)
        if READS >= 0:  # the share of the reads' gradient gz1r, gz2r that is the anchor's
            ra = tl.where(_skips(s, READS), 0.0, 1.0)
        # <G_A1, Z1>, <G_A2, Z2>, the anchor scales' gradients (Moneta's per layer; the decayed
        # anchor's their sum), per channel of d; with scalar gates B1's share of the first per
        # token in ga_z1x
        ga_z1x = tl.zeros([BC], dtype=tl.float32)
        ga_z1 = tl.zeros([BD], dtype=tl.float32)
        ga_z2 = tl.zeros([BD], dtype=tl.float32)
        last = rc == s1 - s0 - 1
        lbl = token_row(lb, rc, s1 - s0 - 1, GATE_CW)
        elc = tl.exp(lbl)
        wl = tl.exp(lbl - lb)
        w = eta * wl
        # ---- the forward at the anchor, as mlp_state_kernel left it: u = LN(z), its rstd and
        # dZ; e and dY as it computed them (so every token keeps its Huber branch)
        u = tl.load(u_ptr + tok[:, None] * D + rd[None, :], mask=ymask, other=0.0)
        rstd = tl.load(rstd_ptr + tok, mask=mt, other=0.0)
        dz = tl.load(dz_ptr + tok[:, None] * D + rd[None, :], mask=ymask, other=0.0)
        e = tl.where(ymask, kt + u - vt, 0.0)
        dy = tl.where(ymask, bias_grad(e, vt, delta, BIAS, DELTA_CW, P, SHARP, EPS), 0.0)
        mdu = tl.sum(dy * u, axis=1) / D
        gdz = tl.zeros([BC, BD], dtype=tl.float32)  # the blocks' share; the reads' below
        gk = tl.zeros([BC, BD], dtype=tl.float32)
        if GATE_CW:  # per channel
            gw = tl.zeros([BC, BD], dtype=tl.float32)
            gend = tl.zeros([BD], dtype=tl.float32)
        else:
            gw = tl.zeros([BC], dtype=tl.float32)
            gend = 0.0
        # ---- B1: per hidden block, everything that does not need gz (the gradient of z)
        for jb in range(j0, j1):
            g2e, _ = _load_w2(g2_ptr, gin, jb * BH, D, HD, BD, BH)
            g1e, _ = _load_w1(g1_ptr, gin, jb * BH, D, HD, BD, BH)
            z2b, z1b, a2b, a1b, hb, act = _anchor_layers(
                s1_ptr, s2_ptr, base, jb, kt, sa1, sa2, m1, l1, D, HD, LINK, KLC, BD, BH, PREC,
                GATE_CW)
            if GATE_CW or LINK == 3:
                dza = mm(dz, a1b, PREC)
            else:  # dZ A1b = sa1 (dZ Z1b); <dZᵀ x, Z1b> = <x, dZ Z1b> below
                dzz = mm(dz, z1b, PREC)
                dza = sa1 * dzz
            dh = dza * gelu_grad(hb)
            # Z2_end = E_C Z2 - (w ⊙ dH)ᵀ K ; Z1_end = E_C Z1 - (w ⊙ dZ)ᵀ Â
            # (channel-wise: Z2_end = Z2 ⊙ E_C - dHᵀ (w ⊙ K), Z1_end = E_C ⊙ Z1 - (w ⊙ dZ)ᵀ Â)
            ptr, hm = _hidden_tile(gdhr_ptr, tok, mt, jb * BH, HD, BH)
            if GATE_CW:
                gdh = tl.load(ptr, mask=hm, other=0.0) - mm(kt * w, tl.trans(g2e), PREC)
                dhg2 = mm(dh, g2e, PREC)  # [BC, BD]
                gk -= w * dhg2
                gw -= kt * dhg2
                ag1 = mm(act, tl.trans(g1e), PREC)
                gdz -= w * ag1
                gw -= dz * ag1
                ptr, hm = _hidden_tile(gactr_ptr, tok, mt, jb * BH, HD, BH)
                gact = tl.load(ptr, mask=hm, other=0.0) - mm(dz * w, g1e, PREC)
            else:
                kg2 = mm(kt, tl.trans(g2e), PREC)
                gdh = tl.load(ptr, mask=hm, other=0.0) - w[:, None] * kg2
                gk -= w[:, None] * mm(dh, g2e, PREC)
                gw -= tl.sum(dh * kg2, axis=1)
                ag1 = mm(act, tl.trans(g1e), PREC)
                gdz -= w[:, None] * ag1
                gw -= tl.sum(dz * ag1, axis=1)
                ptr, hm = _hidden_tile(gactr_ptr, tok, mt, jb * BH, HD, BH)
                gact = tl.load(ptr, mask=hm, other=0.0) - w[:, None] * mm(dz, g1e, PREC)
            # dH = (dZ A1) ⊙ σ'(H)
            x = gdh * gelu_grad(hb)
            gdz += mm(x, tl.trans(a1b), PREC)
            gh_part = gdh * dza * gelu_grad2(hb)
            ga1 = mm(tl.trans(dz), x, PREC)  # [BD, BH]
            gz1r, _ = _load_w1(gz1r_ptr, rbase, jb * BH, D, HD, BD, BH)
            gz2r, _ = _load_w2(gz2r_ptr, rbase, jb * BH, D, HD, BD, BH)
            if READS >= 0:  # the anchor's share joins G_A1 (G_A2's in B2)
                ga1 += ra * gz1r
                if LINK == 1:
                    ga_z1 += ra * tl.sum(gz1r * z1b, axis=1)
                gz1r = (1.0 - ra) * gz1r
                gz2r = (1.0 - ra) * gz2r
            if GATE_CW:
                gz1 = (scale_rows(g1e, elc, True) + gz1r + scale_rows(ga1, s_anchor, True))
                gz2 = scale_cols(g2e, elc, True) + gz2r
                gend += tl.sum(g1e * z1b, axis=1) + tl.sum(g2e * z2b, axis=0)
                if DECAYED:
                    ga_z1 += tl.sum(ga1 * z1b, axis=1)
            else:
                if LINK == 3:
                    gz1 = elc * g1e + gz1r + a1b * ga1
                    ga_a1 += tl.sum(a1b * ga1, axis=1)
                else:
                    gz1 = elc * g1e + gz1r + sa1 * ga1
                gz2 = elc * g2e + gz2r
                # <G_A1, Z1b> of dZ = LN'ᵀ dY's share, per token (the same sum as <ga1, Z1b>:
                # summed over the tile, Triton 3.9's LLVM fails an assertion compiling it for
                # float32 inputs at d = 16)
                if LINK == 1 or DECAYED:
                    ga_z1x += tl.sum(x * dzz, axis=1)
                gend += tl.sum(tl.sum(g1e * z1b, axis=1), axis=0)
                gend += tl.sum(tl.sum(g2e * z2b, axis=1), axis=0)
            _store_w1(g1_ptr, gout, jb * BH, gz1, D, HD, BD, BH)
            _store_w2(g2_ptr, gout, jb * BH, gz2, D, HD, BD, BH)
            tl.store(_scratch(scr_ptr, sbase, 0, jb, NBH, BC, BH), gact)
            tl.store(_scratch(scr_ptr, sbase, 1, jb, NBH, BC, BH), gh_part)
        tl.debug_barrier()
        gdz, n = all_sum(x_ptr, cnt_ptr, bh, part, n, XS, rc[:, None] * BD + rd[None, :], gdz,
                         SPLIT)
        gdz += tl.load(gdzr_ptr + tok[:, None] * D + rd[None, :], mask=ymask, other=0.0)
        # ---- dZ = rstd (dY - mean dY - u mean(dY ⊙ u)) and u = LN(z): second-order terms
        gdy = rstd[:, None] * (gdz - (tl.sum(gdz, axis=1) / D)[:, None]
                               - u * (tl.sum(gdz * u, axis=1) / D)[:, None])
        gdy = tl.where(ymask, gdy, 0.0)
        grstd = tl.sum(gdz * dz, axis=1) / rstd
        gu = -rstd[:, None] * (gdz * mdu[:, None] + (tl.sum(gdz * u, axis=1) / D)[:, None] * dy)
        ge, gv, gdelta = bias_grad_bwd(e, gdy, delta, BIAS, DELTA_CW, P, SHARP, EPS)
        ge = tl.where(ymask, ge, 0.0)  # e = k + u - v: gk gets ge after the exchange
        gu += ge
        gz = rstd[:, None] * (gu - (tl.sum(gu, axis=1) / D)[:, None]
                              - u * (tl.sum(gu * u, axis=1) / D)[:, None])
        gz -= (grstd * rstd * rstd / D)[:, None] * u
        gz = tl.where(ymask, gz, 0.0)
        # ---- B2: z = Â A1ᵀ, Â = σ(H), H = K A2ᵀ
        for jb in range(j0, j1):
            z2b, z1b, a2b, a1b, hb, act = _anchor_layers(
                s1_ptr, s2_ptr, base, jb, kt, sa1, sa2, m1, l1, D, HD, LINK, KLC, BD, BH, PREC,
                GATE_CW)
            gact = tl.load(_scratch(scr_ptr, sbase, 0, jb, NBH, BC, BH))
            gact += mm(gz, a1b, PREC)
            gh = tl.load(_scratch(scr_ptr, sbase, 1, jb, NBH, BC, BH)) + gact * gelu_grad(hb)
            gk += mm(gh, a2b, PREC)
            ga2 = mm(tl.trans(gh), kt, PREC)  # [BH, BD]
            if READS >= 0:
                gz2r, _ = _load_w2(gz2r_ptr, rbase, jb * BH, D, HD, BD, BH)
                ga2 += ra * gz2r
            ga1 = mm(tl.trans(gz), act, PREC)  # [BD, BH]
            g1o, _ = _load_w1(g1_ptr, gout, jb * BH, D, HD, BD, BH)
            g2o, _ = _load_w2(g2_ptr, gout, jb * BH, D, HD, BD, BH)
            if LINK == 3:  # W2's rows: the softmax's Jacobian within the block
                ga_a1 += tl.sum(a1b * ga1, axis=1)
                g1o += a1b * ga1
                aga2 = a2b * ga2
                g2o += aga2 - a2b * (tl.sum(aga2, axis=1) / KLC)[:, None]
            else:
                g1o += scale_rows(ga1, sa1, GATE_CW)
                g2o += scale_cols(ga2, sa2, GATE_CW)
            _store_w1(g1_ptr, gout, jb * BH, g1o, D, HD, BD, BH)
            _store_w2(g2_ptr, gout, jb * BH, g2o, D, HD, BD, BH)
            if LINK == 1 or DECAYED:
                ga_z1 += tl.sum(ga1 * z1b, axis=1)
                ga_z2 += tl.sum(ga2 * z2b, axis=0)
        gk, gw, gend, ga_z1, ga_z2, ga_z1x, ga_a1, n = _grads_exchange(
            gk, gw, gend, ga_z1, ga_z2, ga_z1x, ga_a1, x_ptr, cnt_ptr, bh, part, n, XS, BC, BD,
            GATE_CW, SPLIT)
        if LINK == 1:  # ---- B3: the anchor scales' share, <G_A, Z0> ∂s/∂Z0
            tl.debug_barrier()  # B2's stores, read below
            ga1_z1 = tl.sum(ga_z1, axis=0) + tl.sum(ga_z1x, axis=0)
            c1, inv1 = _norm_grad(ga1_z1, sa1, mxa1, aca1, LQ)
            c2, inv2 = _norm_grad(tl.sum(ga_z2, axis=0), sa2, mxa2, aca2, LQ)
            for jb in range(j0, j1):
                z1b, _ = _load_w1(s1_ptr, base, jb * BH, D, HD, BD, BH)
                z2b, _ = _load_w2(s2_ptr, base, jb * BH, D, HD, BD, BH)
                g1o, _ = _load_w1(g1_ptr, gout, jb * BH, D, HD, BD, BH)
                g2o, _ = _load_w2(g2_ptr, gout, jb * BH, D, HD, BD, BH)
                _store_w1(g1_ptr, gout, jb * BH, g1o + c1 * _norm_dir(z1b, inv1, LQ, QM1), D,
                          HD, BD, BH)
                _store_w2(g2_ptr, gout, jb * BH, g2o + c2 * _norm_dir(z2b, inv2, LQ, QM1), D,
                          HD, BD, BH)
        if LINK == 3:  # ---- B3: W1's rows, -(A1 / c) ⊙ rowsum(A1 ⊙ G_A1)
            tl.debug_barrier()  # B2's stores, read below
            for jb in range(j0, j1):
                z1b, m1k = _load_w1(s1_ptr, base, jb * BH, D, HD, BD, BH)
                a1b = _w1_softmax(z1b, m1k, m1, l1, KLC)
                g1o, _ = _load_w1(g1_ptr, gout, jb * BH, D, HD, BD, BH)
                _store_w1(g1_ptr, gout, jb * BH, g1o - a1b * (ga_a1 / KLC)[:, None], D, HD, BD,
                          BH)
        # ---- add the read parts; the gates
        gk += ge + tl.load(gkr_ptr + tok[:, None] * D + rd[None, :], mask=ymask, other=0.0)
        if GATE_CW:
            geta = tl.load(getar_ptr + tok[:, None] * D + rd[None, :], mask=ymask, other=0.0)
            geta += gw * wl
            glb = tl.load(glbr_ptr + tok[:, None] * D + rd[None, :], mask=ymask, other=0.0)
            glb -= gw * w
            end = elc * gend + tl.sum(gw * w, axis=0)  # [BD]
            glb = tl.where(last[:, None], glb + end[None, :], glb)
        else:
            geta = tl.load(getar_ptr + tok, mask=mt, other=0.0) + gw * wl
            glb = tl.load(glbr_ptr + tok, mask=mt, other=0.0) - gw * w
            glb = tl.where(last, glb + elc * gend + tl.sum(gw * w, axis=0), glb)
        gla = tl.sum(glb, axis=0) - tl.cumsum(glb, axis=0) + glb
        galpha = gla / alpha
        if DECAYED:
            if GATE_CW:
                galpha = tl.where((rc == 0)[:, None], galpha + (ga_z1 + ga_z2)[None, :], galpha)
            else:
                ganch = tl.sum(ga_z1 + ga_z2, axis=0) + tl.sum(ga_z1x, axis=0)
                galpha = tl.where(rc == 0, galpha + ganch, galpha)
        mine = stored_by(t, s0, s1, part)
        tl.store(gk_ptr + tok[:, None] * D + rd[None, :], gk.to(gk_ptr.dtype.element_ty),
                 mask=mine[:, None] & cm[None, :])
        tl.store(gv_ptr + tok[:, None] * D + rd[None, :], gv.to(gv_ptr.dtype.element_ty),
                 mask=mine[:, None] & cm[None, :])
        store_gate(geta_ptr, geta, tok, mine, D, BD, GATE_CW)
        store_gate(galpha_ptr, galpha, tok, mine, D, BD, GATE_CW)
        if BIAS >= 4:
            store_gate(gdelta_ptr, gdelta, tok, mine, D, BD, DELTA_CW)
        # the next (earlier) segment reads this segment's start-state gradient
        tl.debug_barrier()
