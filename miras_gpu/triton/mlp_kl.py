"""The reads' backward of Memora's MLP memory: every token's state, in reverse (Eq 27, Eq 29).

With the KL link (softmax over each row, scale ``c``) every query of a segment reads its own
token's state, ``y_t = q_t + LN(zq_t)`` with

``Z_t = α_t Z_{t-1} - η_t l_t r_tᵀ``,  ``Z_{-1} = Z0``     (Eq 29 token by token, per layer:
``l, r = dH, k`` for ``Z2 [Ed, d]`` and ``dZ, Â`` for ``Z1 [d, Ed]``)

``W_t = c softmax(Z_t)`` by rows, ``h_t = W2_t q_t``, ``a_t = σ(h_t)``, ``zq_t = W1_t a_t``.

:func:`mlp_backward_kl_reads_kernel` (grid ``NSEG × B·H × NB``: one hidden block of one
segment per program) walks the segment's tokens from the last. With ``g_t = ∂L/∂zq_t``
(LayerNorm's backward, from the forward's stored ``zq_t``) and the row softmaxes' Jacobians,
the gradient of the read at token ``t`` with respect to its state is

``R1_t[j, m] = g_t[j] W1_t[j, m] (a_t[m] - zq_t[j] / c)``,
``R2_t[m, n] = gh_t[m] W2_t[m, n] (q_t[n] - h_t[m] / c)``,  ``gh_t = σ'(h_t) ⊙ W1_tᵀ g_t``,

and the total gradient of the state after token ``t`` (reads only) is
``Λ_t = R_t + α_{t+1} Λ_{t+1}``. From it, per token: ``∂L/∂l_t = -η_t Λ_t r_t``,
``∂L/∂r_t = -η_t Λ_tᵀ l_t``, ``∂L/∂η_t = -l_tᵀ Λ_t r_t``, ``∂L/∂log α_t = α_t <Λ_t, Z_{t-1}>``,
and ``∂L/∂Z0 = α_0 Λ_0``; ``∂L/∂q_t = gy_t + W2_tᵀ gh_t``. These are the read parts that
:func:`~miras_gpu.triton.mlp.mlp_backward_state_kernel` adds to (the log-decays' as the
gradient of the cumulative log-decay, ``glbr_t = ∂L/∂log α_t - ∂L/∂log α_{t+1}``).

Each token's state is formed afresh in the dual form, ``Z_t = E_t Z0 - Σ_{i<=t} M[t, i]
l_i r_iᵀ`` (one tensor-core product per layer), so the reverse walk neither stores states nor
divides by a gate. The parts over the hidden axis (``dH``, ``Â``, ``∂L/∂Z0``) are the
block's own; those over ``d`` and the scalars are summed over the blocks by atomic adds into
zeroed buffers (``gq`` into a float32 buffer that starts as ``gy``), relaxed: nothing in the
kernel reads them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._math import gelu, gelu_grad, link, mm
from .gates import gate_tiles
from .mlp import (
    _anchor_stats,
    _block,
    _hidden_tile,
    _segment,
    _skips,
    _store_w1,
    _store_w2,
)


@triton.jit(do_not_specialize=["T", "NSEG"])
def mlp_backward_kl_reads_kernel(
    q_ptr, k_ptr, eta_ptr, alpha_ptr, bounds_ptr, s1_ptr, s2_ptr, dz_ptr, reads_ptr, gy_ptr,
    gq_ptr, gkr_ptr, gdzr_ptr, gdhr_ptr, gactr_ptr, getar_ptr, glbr_ptr, gz1r_ptr, gz2r_ptr,
    T, H, D, HD, NSEG, KLC, LN_EPS,
    SEGMENTS: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr,
    PREC: tl.constexpr,
):
    """Memora's reads backward for hidden block ``program_id(2)`` of one segment (scalar
    gates; the segments :func:`~miras_gpu.triton.mlp._skips` leaves; the module docstring has
    the equations).

    ``reads [B, T, H, 2, d]``: every token's ``zq_t`` and the log-sum-exp of ``Z1_t``'s rows
    (over ``Ed``), stored by :func:`~miras_gpu.triton.mlp.mlp_output_kernel`. Writes the
    block's ``gdhr``, ``gactr`` (``[B, T, H, Ed]``) and ``gz1r``, ``gz2r`` (the segment's
    slot) and adds its shares to ``gq`` (float32, holding ``gy`` on entry), ``gkr``,
    ``gdzr`` (``[B, T, H, d]``), ``getar`` and ``glbr`` (``[B, T, H]``), zeroed on entry.
    """
    if _skips(tl.program_id(0), SEGMENTS):
        return
    b, h, s0, s1, tok, mt, _ymask, base, rbase, kt, dz = _segment(
        bounds_ptr, k_ptr, dz_ptr, T, H, D, HD, NSEG, BC, BD)
    jb = tl.program_id(2)
    NB = tl.cdiv(HD, BH)
    rc = tl.arange(0, BC)
    rd = tl.arange(0, BD)
    cm = rd < D
    hid = (jb * BH + tl.arange(0, BH)) < HD
    n = s1 - s0
    eta, lb = gate_tiles(eta_ptr, alpha_ptr, tok, mt, D, BD, False)
    # the block at the anchor A = c softmax(Z0) (W1's rows over every block: m1, l1); W1's
    # tiles are held transposed, [BH, BD] as W2's, so that both layers share one layout
    _sc1, _sc2, m1, l1 = _anchor_stats(s1_ptr, s2_ptr, base, D, HD, NB, 3, 2.0, BD, BH)
    z2b, valid, z1b, _m1k, hb, act, a1b, _a2b = _block(s1_ptr, s2_ptr, base, jb, kt, 1.0,
                                                       1.0, 1.0, m1, l1, D, HD, 3, 2.0, KLC,
                                                       BD, BH, PREC, False)
    z1t = tl.trans(z1b)
    dh = mm(dz, a1b, PREC) * gelu_grad(hb)
    # dH and Â go through the block's columns of gdhr and gactr, so that the walk loads a
    # token's row; each row is read before the walk writes its gradient over it
    pdh, hm = _hidden_tile(gdhr_ptr, tok, mt, jb * BH, HD, BH)
    pact, _hm = _hidden_tile(gactr_ptr, tok, mt, jb * BH, HD, BH)
    tl.store(pdh, dh, mask=hm)
    tl.store(pact, act, mask=hm)
    tl.debug_barrier()
    lam1 = tl.zeros([BH, BD], dtype=tl.float32)  # Λ1ᵀ_{t+1}, Λ2_{t+1}
    lam2 = tl.zeros([BH, BD], dtype=tl.float32)
    a_next = 1.0  # α_{t+1}
    gla_next = 0.0  # this block's share of ∂L/∂log α_{t+2}
    lbi = tl.sum(tl.where(rc == n - 1, lb, 0.0), axis=0)  # the cumulative log-decay at i
    rj = jb * BH + tl.arange(0, BH)
    for r in range(0, n):
        i = n - 1 - r
        ti = (b * T + s0 + i) * H + h
        lbi = lbi - tl.log(a_next)
        # Eq 29 in the dual form: Z_i = E_i Z0 - Σ_{j<=i} M[i, j] l_j r_jᵀ
        mrow = tl.where(rc <= i, eta * tl.exp(lbi - lb), 0.0)
        eli = tl.exp(lbi)
        z2 = eli * z2b - mm(tl.trans(dh * mrow[:, None]), kt, PREC)  # [BH, BD]
        z1 = eli * z1t - mm(tl.trans(act * mrow[:, None]), dz, PREC)  # Z1ᵀ [BH, BD]
        # ∂L/∂log α_{i+1} = α_{i+1} <Λ_{i+1}, Z_i>, as the cumulative log-decay's gradient
        gla = a_next * tl.sum(tl.sum(lam2 * z2 + lam1 * z1, axis=1), axis=0)
        first = rc == 0  # one lane: the add is skipped past the segment's last token
        tl.atomic_add(glbr_ptr + ti + H + rc * 0, gla - gla_next + rc * 0.0,
                      mask=first & (rc * 0 + r > 0), sem="relaxed")
        gla_next = gla
        # the read y_i = q_i + LN(zq_i), zq_i = W1_i σ(W2_i q_i): g = ∂L/∂zq_i
        qi = tl.load(q_ptr + ti * D + rd, mask=cm, other=0.0).to(tl.float32)
        gyi = tl.load(gy_ptr + ti * D + rd, mask=cm, other=0.0).to(tl.float32)
        zqi = tl.load(reads_ptr + (ti * 2) * D + rd, mask=cm, other=0.0)
        lse = tl.load(reads_ptr + (ti * 2 + 1) * D + rd, mask=cm, other=0.0)
        zc = tl.where(cm, zqi - tl.sum(zqi, axis=0) / D, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, axis=0) / D + LN_EPS)
        u = zc * rstd
        g = tl.where(cm, rstd * (gyi - tl.sum(gyi, axis=0) / D - u * tl.sum(gyi * u, axis=0) / D),
                     0.0)
        w2 = link(z2, valid, 3, 2.0, KLC)  # c softmax over each row (within the block)
        hh = tl.sum(w2 * qi[None, :], axis=1)  # [BH]
        w1 = tl.where(valid, KLC * tl.exp(z1 - lse[None, :]), 0.0)  # W1ᵀ: rows over all blocks
        gh = tl.where(hid, tl.sum(w1 * g[None, :], axis=1) * gelu_grad(hh), 0.0)
        tl.atomic_add(gq_ptr + ti * D + rd, tl.sum(w2 * gh[:, None], axis=0), mask=cm,
                      sem="relaxed")
        # Λ_i = R_i + α_{i+1} Λ_{i+1}
        lam1 = a_next * lam1 + w1 * g[None, :] * (gelu(hh)[:, None] - zqi[None, :] / KLC)
        lam2 = a_next * lam2 + gh[:, None] * w2 * (qi[None, :] - hh[:, None] / KLC)
        # the rank-1 factors' gradients
        ki = tl.load(k_ptr + ti * D + rd, mask=cm, other=0.0).to(tl.float32)
        dzi = tl.load(dz_ptr + ti * D + rd, mask=cm, other=0.0)
        dhi = tl.load(gdhr_ptr + ti * HD + rj, mask=hid, other=0.0)
        acti = tl.load(gactr_ptr + ti * HD + rj, mask=hid, other=0.0)
        etai = tl.load(eta_ptr + ti)
        r2 = tl.sum(lam2 * ki[None, :], axis=1)  # Λ2 k_i [BH]
        r1 = tl.sum(lam1 * acti[:, None], axis=0)  # Λ1 â_i [BD]
        tl.store(gdhr_ptr + ti * HD + rj, -etai * r2, mask=hid)
        tl.store(gactr_ptr + ti * HD + rj, -etai * tl.sum(lam1 * dzi[None, :], axis=1),
                 mask=hid)
        tl.atomic_add(gkr_ptr + ti * D + rd, -etai * tl.sum(lam2 * dhi[:, None], axis=0),
                      mask=cm, sem="relaxed")
        tl.atomic_add(gdzr_ptr + ti * D + rd, -etai * r1, mask=cm, sem="relaxed")
        tl.atomic_add(getar_ptr + ti, -(tl.sum(dhi * r2, axis=0) + tl.sum(dzi * r1, axis=0)),
                      sem="relaxed")
        a_next = tl.load(alpha_ptr + ti)
    # ∂L/∂log α_0 = α_0 <Λ_0, Z0>; ∂L/∂Z0 = α_0 Λ_0
    gla = a_next * tl.sum(tl.sum(lam2 * z2b + lam1 * z1t, axis=1), axis=0)
    tl.atomic_add(glbr_ptr + (b * T + s0) * H + h, gla - gla_next, sem="relaxed")
    _store_w1(gz1r_ptr, rbase, jb * BH, tl.trans(a_next * lam1), D, HD, BD, BH)
    _store_w2(gz2r_ptr, rbase, jb * BH, a_next * lam2, D, HD, BD, BH)
