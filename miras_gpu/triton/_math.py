"""Device functions (``@triton.jit``) shared by the Triton kernels: element-wise helpers and
the per-segment loads of the token tiles.

Everything here is plain ``tl`` arithmetic (exp, log, sigmoid, where, sums), present in every
Triton from 3.0 on and in the CPU interpreter (``TRITON_INTERPRET=1``). Constants are the ones
of :mod:`miras_ref` (GELU tanh form, Remark 5 smoothing); the float parameters of the biases and
gates (``p``, sharpness ``a``, ``ε``, ``q``, ``c``) are kernel arguments read from the config.

Integer codes (``tl.constexpr`` kernel arguments; the Python side picks them in
:func:`miras_gpu.triton.chunked.plan_for`):

===========  ==================================================================
``BIAS``     0 dot product, 1 ℓ2, 2 ℓp smooth (Remark 5), 3 ℓp exact,
             4 Huber mixture smooth (Eq 16), 5 Huber mixture exact
``LINK``     0 identity (ℓ2 retention), 1 ℓq simplified ``A/‖A‖_q^{q-2}`` (Eq 24),
             2 ℓq exact p-norm link, 3 KL ``c·softmax`` over the last axis (rows),
             4 KL ``c·softmax`` over all entries of a parameter
===========  ==================================================================
"""

from __future__ import annotations

import triton
import triton.language as tl

SQRT_2_OVER_PI = 0.7978845608028654
GELU_CUBIC = 0.044715


@triton.jit
def mm(a, b, PREC: tl.constexpr):
    """``a @ b`` accumulated in float32. ``PREC``: ``"ieee"`` (full float32, FMA units),
    ``"tf32x3"`` (three TF32 tensor-core products, about float32's accuracy), ``"tf32"``, or
    ``"bf16"`` (both operands rounded to bfloat16, one tensor-core product)."""
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def tanh(x):
    """``tanh(x)`` without cancellation near 0 (odd Taylor series for ``|x| < 0.1``)."""
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    big = (1.0 - e) / (1.0 + e)
    x2 = ax * ax
    small = ax * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333
                                                          + x2 * -0.05396825396825397)))
    r = tl.where(ax < 0.1, small, big)
    return tl.where(x < 0.0, -r, r)


@triton.jit
def sign(x):
    return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, -1.0, 0.0))


@triton.jit
def powabs(x, y):
    """``|x|^y`` with ``0^0 = 1`` and ``0^y = 0`` for ``y > 0`` (as ``torch.pow``)."""
    ax = tl.abs(x)
    safe = tl.where(ax > 0.0, ax, 1.0)
    r = tl.exp(y * tl.log(safe))
    return tl.where(ax > 0.0, r, tl.where(y == 0.0, 1.0, 0.0))


def q_int(q: float) -> int:
    """The ``QI`` argument of :func:`abs_pow` for the exponent ``q`` (host side): ``q`` as an
    integer when it is one (2 <= q <= 8), else 0."""
    return int(q) if float(q).is_integer() and 2 <= q <= 8 else 0


@triton.jit
def abs_pow(z, Q, QI: tl.constexpr):
    """``|z|^Q``; by ``QI - 1`` products when ``Q`` is the integer ``QI > 0`` (:func:`q_int`)."""
    a = tl.abs(z)
    if QI > 0:
        r = a
        for _ in tl.static_range(QI - 1):
            r = r * a
    else:
        r = tl.where(a > 0.0, tl.exp2(Q * tl.log2(tl.where(a > 0.0, a, 1.0))), 0.0)
    return r


@triton.jit
def gelu(x):
    """GELU, tanh form: ``½x(1 + tanh(u)) = x σ(2u)``, ``u = √(2/π)(x + 0.044715 x³)``."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x * tl.sigmoid(tl.minimum(tl.maximum(2.0 * u, -60.0), 60.0))


@triton.jit
def gelu_grad(x):
    """``σ'(x)`` of :func:`gelu`: ``σ(2u) + 2 x σ(2u)(1 - σ(2u)) u'``."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    s = tl.sigmoid(tl.minimum(tl.maximum(2.0 * u, -60.0), 60.0))
    du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    return s + 2.0 * x * s * (1.0 - s) * du


@triton.jit
def gelu_grad2(x):
    """``σ''(x)`` of :func:`gelu`: ``s(1-s)(4u' + 4x(1-2s)u'² + 2x u'')`` with ``s = σ(2u)``."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    s = tl.sigmoid(tl.minimum(tl.maximum(2.0 * u, -60.0), 60.0))
    du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    ddu = 0.7978845608028654 * 6.0 * 0.044715 * x
    return s * (1.0 - s) * (4.0 * du + 4.0 * x * (1.0 - 2.0 * s) * du * du + 2.0 * x * ddu)


@triton.jit
def huber_switch(e, delta, DELTA_CW: tl.constexpr):
    """Eq 16's branch: ``(small, δ)`` broadcast against ``e [BC, BD]``; ``small`` where
    ``|e| <= δ`` per channel (``DELTA_CW``) or ``‖e‖ <= δ`` per token."""
    if DELTA_CW:
        return tl.abs(e) <= delta, delta
    else:
        return (tl.sqrt(tl.sum(e * e, axis=1)) <= delta)[:, None], delta[:, None]


@triton.jit
def bias_grad(e, v, delta, BIAS: tl.constexpr, DELTA_CW: tl.constexpr, P, SHARP, EPS):
    """``∇_y L(y; v)`` with ``e = y - v`` for the supported biases (Eq 9, 11, 16).

    ``e, v [BC, BD]``; ``delta [BC, BD]`` (channel-wise) or ``[BC]`` (per token; the test of
    Eq 16 is then on ``‖e‖₂`` of the row). Padded entries of ``e`` must be 0.
    """
    if BIAS == 0:  # dot product: ∇ = -v
        g = -v
    elif BIAS == 1:  # ℓ2 (Eq 9): e
        g = e
    elif BIAS == 2:  # ℓp, Remark 5: p tanh(a e) (e² + ε)^{(p-1)/2}
        g = P * tanh(SHARP * e) * tl.exp(0.5 * (P - 1.0) * tl.log(e * e + EPS))
    elif BIAS == 3:  # ℓp exact (Eq 11): p Sign(e) |e|^{p-1}
        g = P * sign(e) * powabs(e, P - 1.0)
    else:  # Huber mixture (Eq 16): e if small else δ Sign(e)
        small, d = huber_switch(e, delta, DELTA_CW)
        if BIAS == 4:
            sg = tanh(SHARP * e)
        else:
            sg = sign(e)
        g = tl.where(small, e, d * sg)
    return g


@triton.jit
def bias_grad_bwd(e, gd, delta, BIAS: tl.constexpr, DELTA_CW: tl.constexpr, P, SHARP, EPS):
    """Backward of :func:`bias_grad`: given ``gd = ∂L/∂(∇_y)``, return ``(ge, gv, gdelta)``.

    ``ge = J_e^T gd`` (``e = y - v``: ``gy = ge``, and ``gv = -ge`` except for the dot-product
    bias, whose gradient ``-v`` does not depend on ``e``). ``gdelta`` is ``[BC, BD]``
    (channel-wise) or ``[BC]``; zero for biases without a threshold. The branch of Eq 16 is
    piecewise constant (zero derivative), as in autograd.
    """
    zero = tl.zeros_like(e)
    gdel = zero
    if BIAS == 0:
        ge = zero
        gv = -gd
    elif BIAS == 1:
        ge = gd
        gv = -gd
    elif BIAS == 2:
        # d/de [p tanh(a e) s^{p-1}], s = sqrt(e² + ε)
        th = tanh(SHARP * e)
        ls = tl.log(e * e + EPS)
        spm1 = tl.exp(0.5 * (P - 1.0) * ls)
        spm3 = tl.exp(0.5 * (P - 3.0) * ls)
        ge = gd * P * (SHARP * (1.0 - th * th) * spm1 + th * (P - 1.0) * e * spm3)
        gv = -ge
    elif BIAS == 3:
        # d/de [p Sign(e) |e|^{p-1}] = p (p-1) |e|^{p-2}
        ge = gd * P * (P - 1.0) * powabs(e, P - 2.0)
        gv = -ge
    else:
        small, d = huber_switch(e, delta, DELTA_CW)
        if BIAS == 4:
            sg = tanh(SHARP * e)
            ge = tl.where(small, gd, gd * d * SHARP * (1.0 - sg * sg))
        else:
            sg = sign(e)
            ge = tl.where(small, gd, zero)
        gv = -ge
        gdel = tl.where(small, zero, gd * sg)
    if DELTA_CW:
        gdelta = gdel
    else:
        gdelta = tl.sum(gdel, axis=1)
    return ge, gv, gdelta


@triton.jit
def qnorm_update(m, acc, x, Q):
    """Add a tile ``x`` to an overflow-safe ``‖·‖_Q`` accumulator ``(m, acc)``.

    ``‖X‖_Q = m · acc^{1/Q}`` with ``m = max |X|`` and ``acc = Σ |X/m|^Q`` (so ``|A|^Q`` never
    overflows float32 even for state entries of 1e10); start from ``(0, 0)``.
    """
    mn = tl.maximum(m, tl.max(tl.max(tl.abs(x), axis=1), axis=0))
    safe = tl.where(mn > 0.0, mn, 1.0)
    # acc (m/mn)^Q + Σ |x/mn|^Q
    acc = acc * powabs(m / safe, Q) + tl.sum(tl.sum(powabs(x / safe, Q), axis=1), axis=0)
    return mn, acc


@triton.jit
def qnorm_join(m, acc, mb, accb, Q):
    """Two :func:`qnorm_update` accumulators of disjoint parts of one tensor joined."""
    mn = tl.maximum(m, mb)
    safe = tl.where(mn > 0.0, mn, 1.0)
    return mn, acc * powabs(m / safe, Q) + accb * powabs(mb / safe, Q)


@triton.jit
def token_qnorm_update(m, acc, z, Q, QI: tl.constexpr):
    """:func:`qnorm_update` for every token at once: row ``t`` of ``z [BC, F]`` holds entries
    of token ``t``'s state; ``m, acc [BC]`` its running ``max |Z_t|`` and ``Σ |Z_t / m|^Q``."""
    mn = tl.maximum(m, tl.max(tl.abs(z), axis=1))
    inv = 1.0 / tl.where(mn > 0.0, mn, 1.0)
    # acc (m/mn)^Q + Σ |z/mn|^Q
    acc = acc * abs_pow(m * inv, Q, QI) + tl.sum(abs_pow(z * inv[:, None], Q, QI), axis=1)
    return mn, acc


@triton.jit
def inv_pow_norm(m, acc, Q, E):
    """``max(‖X‖_Q, 1e-30)^{-E}`` from a :func:`qnorm_update` accumulator (capped at e^88)."""
    logn = tl.log(tl.maximum(m, 1e-30)) + tl.log(tl.maximum(acc, 1e-30)) / Q
    logn = tl.maximum(logn, -69.07755278982137)  # log(1e-30)
    return tl.exp(tl.minimum(-E * logn, 88.0))


@triton.jit
def link(z, valid, LINK: tl.constexpr, LQ, KLC):
    """``W = ψ(Z)`` of a whole parameter tile ``z [R, S]`` (``valid``: its real entries).

    Norms and softmaxes run over the valid entries only; padded entries of the result are 0.
    """
    if LINK == 0:
        w = z
    elif LINK == 1:  # Eq 24: A / ‖A‖_q^{q-2}
        m, acc = qnorm_update(0.0, 0.0, z, LQ)
        w = z * inv_pow_norm(m, acc, LQ, LQ - 2.0)
    elif LINK == 2:  # exact: (q-1) ‖A‖_p^{2-p} sign(A) |A|^{p-1}, p = q/(q-1)
        p = LQ / (LQ - 1.0)
        m, acc = qnorm_update(0.0, 0.0, z, p)
        w = (LQ - 1.0) * inv_pow_norm(m, acc, p, p - 2.0) * sign(z) * powabs(z, p - 1.0)
    elif LINK == 3:  # c softmax over the last axis (each row)
        zm = tl.where(valid, z, float("-inf"))
        m = tl.max(zm, axis=1)
        m = tl.where(m == float("-inf"), 0.0, m)
        ez = tl.exp(zm - m[:, None])
        s = tl.sum(ez, axis=1)
        w = KLC * ez / tl.where(s > 0.0, s, 1.0)[:, None]
    else:  # c softmax over all entries
        zm = tl.where(valid, z, float("-inf"))
        m = tl.max(tl.max(zm, axis=1), axis=0)
        ez = tl.exp(zm - m)
        w = KLC * ez / tl.sum(tl.sum(ez, axis=1), axis=0)
    return tl.where(valid, w, 0.0)


# --------------------------------------------------------------------------------------------
# per-segment loads


@triton.jit
def segment_tiles(x_ptr, b, h, s0, s1, T, H, D, BC: tl.constexpr, BD: tl.constexpr):
    """Load rows ``s0 .. s1-1`` of ``x [B, T, H, D]`` for head ``h`` as an fp32 ``[BC, BD]``."""
    rc = tl.arange(0, BC)
    rd = tl.arange(0, BD)
    t = s0 + rc
    tok = (b * T + t) * H + h
    m = (t < s1)[:, None] & (rd < D)[None, :]
    return tl.load(x_ptr + tok[:, None] * D + rd[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def delta_tile(delta_ptr, tok, mt, rv, DV, DELTA_CW: tl.constexpr, BIAS: tl.constexpr):
    """The Huber threshold δ of the segment's tokens ``tok`` (valid where ``mt``): ``[BC, BV]``
    channel-wise (``DELTA_CW``) or ``[BC]`` per token; zeros for biases without one."""
    if BIAS >= 4:
        if DELTA_CW:
            return tl.load(delta_ptr + tok[:, None] * DV + rv[None, :],
                           mask=mt[:, None] & (rv < DV)[None, :], other=1.0)
        else:
            return tl.load(delta_ptr + tok, mask=mt, other=1.0)
    else:
        return tl.zeros_like(mt.to(tl.float32))
