"""Tests of miras_ref.bias: the attentional biases (Sec 3 Def 3.1, Sec 4, Sec 5.1, Eq 9-17).

Gradients are checked against central finite differences of the losses, the closed forms against
the definitions (Huber Eq 13, the worst case of Eq 17 found numerically with scipy), and the
Remark 5 smooth approximations against the exact non-smooth forms they approximate.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from miras_ref.bias import (
    BIASES,
    DotProductBias,
    HuberCoordinateBias,
    HuberMixtureBias,
    HuberNormBias,
    L1Bias,
    L2Bias,
    LpBias,
    ValueShiftRobustBias,
    huber,
    smooth_abs,
    smooth_sign,
)

BATCH = (3, 5)  # leading axes: 3 heads x 5 tokens
D = 7  # value dimension
DELTA = 0.8  # Huber threshold / robustness radius used below


# ------------------------------------------------------------------------------------------
# helpers: errors e = y - v placed away from the kinks of each bias
# ------------------------------------------------------------------------------------------
def coordinate_errors(rng, delta=DELTA, shape=(*BATCH, D)):
    """Errors with every |e_j| in [0.1δ, 0.8δ] or [1.25δ, 3δ]: away from 0 and from ±δ."""
    small = rng.uniform(0.1, 0.8, shape)
    large = rng.uniform(1.25, 3.0, shape)
    mag = np.where(rng.random(shape) < 0.5, small, large) * delta
    return mag * rng.choice([-1.0, 1.0], shape)


def norm_errors(rng, delta=DELTA, shape=(*BATCH, D)):
    """Errors whose per-token norm ‖e‖ is in [0.3δ, 0.8δ] or [1.25δ, 3δ] (both regimes occur)."""
    e = rng.standard_normal(shape)
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    radius = np.where(rng.random(shape[:-1]) < 0.5, rng.uniform(0.3, 0.8, shape[:-1]),
                      rng.uniform(1.25, 3.0, shape[:-1])) * delta
    e *= radius[..., None]
    norms = np.linalg.norm(e, axis=-1)
    assert np.any(norms < delta) and np.any(norms > delta)
    return e


def y_and_v(rng, e):
    y = rng.standard_normal(e.shape)
    return y, y - e


def per_token_delta(rng, low=0.5, high=1.2):
    return rng.uniform(low, high, BATCH)


# Every bias in BIASES, with the options that make its loss differentiable where tested and
# an error generator keeping the test points away from its kinks.
CASES = {
    "dot": (DotProductBias(), lambda rng: rng.standard_normal((*BATCH, D)), None),
    "l2": (L2Bias(), lambda rng: rng.standard_normal((*BATCH, D)), None),
    "lp": (LpBias(p=3.0, smooth=False), coordinate_errors, None),
    "l1": (L1Bias(smooth=False), coordinate_errors, None),
    "huber_coord": (HuberCoordinateBias(), coordinate_errors, DELTA),
    "huber_norm": (HuberNormBias(), norm_errors, DELTA),
    "huber_mix": (HuberMixtureBias(smooth=False), norm_errors, DELTA),
    "value_shift": (ValueShiftRobustBias(), norm_errors, DELTA),
}


def test_every_bias_in_registry_has_a_gradient_test_case():
    assert set(CASES) == set(BIASES)
    for key, (bias, _, _) in CASES.items():
        assert isinstance(bias, BIASES[key])


def assert_grad_matches_fd(bias, y, v, delta, fd_grad, rtol=1e-6):
    """``bias.grad`` against central differences of each token's loss ``L(y_n; v_n)``.

    The rounding error of a central difference is about ``4 ulp(L) / ε ≈ 1e-9 |L|`` for
    ``ε = 1e-6``, so the absolute tolerance is ``1e-8 (1 + |L|)`` per token.
    """
    g = bias.grad(y, v, delta)
    assert g.shape == y.shape
    loss = bias.loss(y, v, delta)
    assert loss.shape == y.shape[:-1]
    for idx in np.ndindex(*y.shape[:-1]):
        # the token's own threshold: None, a shared scalar, a per-token scalar δ[idx] or a
        # channel-wise vector δ[idx] of length d
        d_n = delta if delta is None or np.ndim(delta) == 0 else np.asarray(delta)[idx]
        fd = fd_grad(lambda t, idx=idx, d_n=d_n: bias.loss(t, v[idx], d_n), y[idx])
        np.testing.assert_allclose(g[idx], fd, rtol=rtol, atol=1e-8 * (1 + abs(loss[idx])),
                                   err_msg=f"token {idx}")


# ------------------------------------------------------------------------------------------
# gradients of every bias against finite differences
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(CASES))
def test_bias_grad_matches_finite_differences(key, rng, fd_grad):
    bias, errors, delta = CASES[key]
    y, v = y_and_v(rng, errors(rng))
    assert_grad_matches_fd(bias, y, v, delta, fd_grad)


@pytest.mark.parametrize("key", ["huber_coord", "huber_norm", "huber_mix", "value_shift"])
def test_bias_grad_matches_finite_differences_with_per_token_delta(key, rng, fd_grad):
    bias, errors, _ = CASES[key]
    delta = per_token_delta(rng)
    # errors placed relative to each token's own threshold
    e = errors(rng, delta=1.0) * delta[..., None]
    y, v = y_and_v(rng, e)
    assert_grad_matches_fd(bias, y, v, delta, fd_grad)


@pytest.mark.parametrize("key", ["huber_coord", "huber_mix"])
def test_bias_grad_matches_finite_differences_with_channelwise_delta(key, rng, fd_grad):
    bias, _, _ = CASES[key]
    delta = rng.uniform(0.5, 1.2, (*BATCH, D))
    e = coordinate_errors(rng, delta=1.0) * delta
    y, v = y_and_v(rng, e)
    assert_grad_matches_fd(bias, y, v, delta, fd_grad)


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0, 4.0])
def test_lp_gradient_matches_finite_differences(p, rng, fd_grad):
    bias = LpBias(p=p, smooth=False)
    y, v = y_and_v(rng, coordinate_errors(rng))
    e = y - v
    # Eq 10: ℓ = ‖e‖_p^p
    np.testing.assert_allclose(bias.loss(y, v), np.sum(np.abs(e) ** p, axis=-1), rtol=1e-13)
    assert_grad_matches_fd(bias, y, v, None, fd_grad)


def test_l1_smooth_gradient_matches_finite_differences_of_smooth_loss(rng, fd_grad):
    bias = L1Bias(smooth=True)
    # include errors near 0 where tanh(a e) is far from Sign(e): the smooth loss is smooth there
    e = rng.uniform(0.01, 1.5, (*BATCH, D)) * rng.choice([-1.0, 1.0], (*BATCH, D))
    y, v = y_and_v(rng, e)
    # the smooth loss is Σ log cosh(a e) / a (written here independently)
    a = bias.sharpness
    np.testing.assert_allclose(bias.loss(y, v), np.sum(np.log(np.cosh(a * e)), axis=-1) / a,
                               rtol=1e-12)
    assert_grad_matches_fd(bias, y, v, None, fd_grad)


def test_lp_smooth_loss_gradient_is_remark5_form(rng, fd_grad):
    # LpBias(smooth=True).loss is Σ (e² + ε)^{p/2}; its exact gradient is p e (e²+ε)^{p/2-1}
    bias = LpBias(p=3.0, smooth=True)
    y, v = y_and_v(rng, coordinate_errors(rng))
    e = y - v
    fd = fd_grad(lambda t: np.sum(bias.loss(t, v)), y)
    np.testing.assert_allclose(fd, 3.0 * e * (e * e + bias.eps) ** 0.5, rtol=1e-6, atol=1e-8)
    # the Remark 5 gradient replaces e/sqrt(e²+ε) by tanh(a e): same sign everywhere
    assert np.all(np.sign(bias.grad(y, v)) == np.sign(fd))
    # Eq 11 with Sign(x) ≈ tanh(a x) and |x| ≈ sqrt(x² + ε), a = 10, ε = 1e-6
    np.testing.assert_allclose(bias.grad(y, v),
                               3.0 * np.tanh(10.0 * e) * np.sqrt(e * e + 1e-6) ** 2, rtol=1e-14)
    b2 = LpBias(p=1.5, smooth=True, sharpness=4.0, eps=1e-2)
    np.testing.assert_allclose(b2.grad(y, v), 1.5 * np.tanh(4.0 * e) * (e * e + 1e-2) ** 0.25,
                               rtol=1e-14)


# ------------------------------------------------------------------------------------------
# Remark 5: smooth Sign and |.|
# ------------------------------------------------------------------------------------------
def test_smooth_lp_gradient_converges_to_exact_gradient_remark5(rng):
    y, v = y_and_v(rng, coordinate_errors(rng))
    for p in (1.5, 3.0, 4.0):
        exact = LpBias(p=p, smooth=False).grad(y, v)
        errs = [
            np.max(np.abs(LpBias(p=p, smooth=True, sharpness=a, eps=eps).grad(y, v) - exact))
            for a, eps in [(3.0, 1e-1), (10.0, 1e-3), (30.0, 1e-5), (100.0, 1e-7), (300.0, 1e-9)]
        ]
        assert all(later < earlier for earlier, later in zip(errs, errs[1:])), errs
        assert errs[-1] < 1e-6


def test_smooth_sign_properties(rng):
    # |a x| <= 15 so that tanh(a x) is not rounded to ±1
    x = rng.uniform(0.01, 1.5, 41) * rng.choice([-1.0, 1.0], 41)
    s = smooth_sign(x)
    np.testing.assert_allclose(s, np.tanh(10.0 * x), rtol=1e-15)  # Remark 5, a = 10
    np.testing.assert_array_equal(smooth_sign(-x), -s)  # odd
    assert np.all(np.abs(s) < 1.0) and np.all(np.sign(s) == np.sign(x))
    xs = np.sort(x)
    assert np.all(np.diff(smooth_sign(xs)) > 0)  # strictly increasing
    # Sign(x) = lim_{a -> inf} tanh(a x), monotonically in a
    errs = [np.max(np.abs(smooth_sign(x, a) - np.sign(x))) for a in (1, 10, 100, 1000)]
    assert all(b < a for a, b in zip(errs, errs[1:])) and errs[-1] < 1e-8


def test_smooth_abs_properties(rng):
    x = rng.uniform(0.01, 3.0, 41) * rng.choice([-1.0, 1.0], 41)
    eps = 1e-6
    s = smooth_abs(x)
    np.testing.assert_allclose(s, np.sqrt(x * x + eps), rtol=1e-15)  # Remark 5, ε = 1e-6
    np.testing.assert_array_equal(smooth_abs(-x), s)  # even
    assert np.all(s > np.abs(x))
    # 0 < sqrt(x²+ε) - |x| = ε / (sqrt(x²+ε) + |x|) <= min(sqrt(ε), ε / (2|x|))
    gap = s - np.abs(x)
    assert np.all(gap <= np.minimum(np.sqrt(eps), eps / (2 * np.abs(x))) * (1 + 1e-6))
    # |x| = lim_{ε -> 0} sqrt(x² + ε)
    errs = [np.max(np.abs(smooth_abs(x, e) - np.abs(x))) for e in (1e-2, 1e-4, 1e-8, 1e-12)]
    assert all(b < a for a, b in zip(errs, errs[1:])) and errs[-1] < 1e-9
    # its derivative x / sqrt(x²+ε) (by central differences) tends to Sign(x)
    h = 1e-7
    deriv = (smooth_abs(x + h, 1e-10) - smooth_abs(x - h, 1e-10)) / (2 * h)
    np.testing.assert_allclose(deriv, np.sign(x), atol=1e-6)


# ------------------------------------------------------------------------------------------
# p = 2 and p = 1 special cases (Eq 9, 11, 12)
# ------------------------------------------------------------------------------------------
def test_lp_with_p2_is_delta_rule(rng):
    y, v = y_and_v(rng, rng.standard_normal((*BATCH, D)))
    g = LpBias(p=2.0, smooth=False).grad(y, v)
    np.testing.assert_allclose(g, 2.0 * (y - v), rtol=1e-14)
    np.testing.assert_allclose(g, 2.0 * L2Bias().grad(y, v), rtol=1e-14)
    np.testing.assert_allclose(LpBias(p=2.0, smooth=False).loss(y, v), 2.0 * L2Bias().loss(y, v),
                               rtol=1e-14)


def test_l1_value_less_memory_gradient_is_plus_minus_one(rng):
    # Eq 12: the update direction Sign(W k - v) has entries in {-1, +1} only
    y, v = y_and_v(rng, rng.uniform(0.01, 2.0, (*BATCH, D)) * rng.choice([-1.0, 1.0], (*BATCH, D)))
    g = L1Bias(smooth=False).grad(y, v)
    assert set(np.unique(g)) == {-1.0, 1.0}
    np.testing.assert_array_equal(g, np.where(y > v, 1.0, -1.0))
    # it is the p = 1 case of Eq 11
    np.testing.assert_array_equal(LpBias(p=1.0, smooth=False).grad(y, v), g)
    # the smooth version keeps the sign and approaches ±1 with sharpness
    gs = L1Bias(smooth=True, sharpness=1e4).grad(y, v)
    assert np.all(np.sign(gs) == g) and np.all(np.abs(gs) < 1.0 + 1e-15)
    np.testing.assert_allclose(gs, g, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Huber (Eq 13-16)
# ------------------------------------------------------------------------------------------
def test_huber_function_pieces_eq13(rng):
    delta = 0.7
    a = rng.uniform(0.01, 3.0, 51) * rng.choice([-1.0, 1.0], 51)
    inside = np.abs(a) <= delta
    assert inside.any() and (~inside).any()
    h = huber(a, delta)
    np.testing.assert_allclose(h[inside], 0.5 * a[inside] ** 2, rtol=1e-15)
    np.testing.assert_allclose(h[~inside], delta * (np.abs(a[~inside]) - 0.5 * delta), rtol=1e-15)


@pytest.mark.parametrize("delta", [0.3, 0.7, 2.1])
def test_huber_function_and_derivative_continuous_at_delta(delta):
    t = 1e-7
    for s in (-1.0, 1.0):
        at = s * delta
        # value: both pieces give ½δ² at |a| = δ; neighbours differ by slope * distance
        np.testing.assert_allclose(huber(np.array(at), delta), 0.5 * delta**2, rtol=1e-15)
        left = huber(np.array(at - t), delta)
        right = huber(np.array(at + t), delta)
        np.testing.assert_allclose(right - left, 2 * t * s * delta, rtol=1e-6)
        # derivative from inside and from outside both equal Sign(a) δ
        inner = at - s * 1e-3
        outer = at + s * 1e-3
        d_in = (huber(np.array(inner + t), delta) - huber(np.array(inner - t), delta)) / (2 * t)
        d_out = (huber(np.array(outer + t), delta) - huber(np.array(outer - t), delta)) / (2 * t)
        np.testing.assert_allclose(d_in, s * (delta - 1e-3), rtol=1e-7)
        np.testing.assert_allclose(d_out, s * delta, rtol=1e-7)


def test_huber_coordinate_grad_is_clip(rng):
    bias = HuberCoordinateBias()
    for delta in (DELTA, per_token_delta(rng), rng.uniform(0.5, 1.2, (*BATCH, D))):
        dfull = np.broadcast_to(np.asarray(delta)[..., None] if np.ndim(delta) == 2 else delta,
                                (*BATCH, D))
        # a closed form, not a difference quotient: errors may sit right next to ±δ
        mag = np.concatenate([rng.uniform(0.01, 3.0, (*BATCH, D - 2)),
                              np.broadcast_to([0.999, 1.001], (*BATCH, 2))], axis=-1)
        e = mag * rng.choice([-1.0, 1.0], (*BATCH, D)) * dfull
        y, v = y_and_v(rng, e)
        np.testing.assert_allclose(bias.grad(y, v, delta), np.clip(y - v, -dfull, dfull),
                                   rtol=1e-15)
        np.testing.assert_allclose(bias.loss(y, v, delta),
                                   np.sum(huber(y - v, dfull), axis=-1), rtol=1e-15)


def test_huber_norm_grad_matches_eq15_and_is_continuous_at_delta(rng, fd_grad):
    bias = HuberNormBias()
    y, v = y_and_v(rng, norm_errors(rng))
    e = y - v
    n = np.linalg.norm(e, axis=-1, keepdims=True)
    want = np.where(n <= DELTA, e, DELTA * e / n)  # Eq 15
    np.testing.assert_allclose(bias.grad(y, v, DELTA), want, rtol=1e-14)
    np.testing.assert_allclose(bias.loss(y, v, DELTA), huber(n[..., 0], DELTA), rtol=1e-14)
    # continuity of loss and gradient across ‖e‖ = δ
    unit = e / n
    for rel in (1e-6, 1e-9):
        v_in = y - unit * DELTA * (1 - rel)
        v_out = y - unit * DELTA * (1 + rel)
        np.testing.assert_allclose(bias.grad(y, v_in, DELTA), bias.grad(y, v_out, DELTA),
                                   atol=3 * rel * DELTA)
        np.testing.assert_allclose(bias.loss(y, v_in, DELTA), bias.loss(y, v_out, DELTA),
                                   atol=3 * rel * DELTA**2)
    assert_grad_matches_fd(bias, y, v, DELTA, fd_grad)


def test_huber_norm_rejects_channelwise_delta(rng):
    y, v = y_and_v(rng, norm_errors(rng))
    with pytest.raises(ValueError, match="delta"):
        HuberNormBias().grad(y, v, np.full((*BATCH, D), DELTA))


def test_huber_mixture_per_token_delta_uses_l2_norm_test(rng):
    # Eq 16 (Yaad): with one δ per token the switch is on ‖e‖₂. These errors have every
    # coordinate |e_j| < δ but ‖e‖₂ > δ, so the ℓ1 branch δ Sign(e) must be taken.
    bias = HuberMixtureBias(smooth=False)
    delta = per_token_delta(rng)
    e = rng.uniform(0.5, 0.9, (*BATCH, D)) * rng.choice([-1.0, 1.0], (*BATCH, D))
    e *= delta[..., None]
    assert np.all(np.abs(e) < delta[..., None])
    assert np.all(np.linalg.norm(e, axis=-1) > delta)
    y, v = y_and_v(rng, e)
    np.testing.assert_allclose(bias.grad(y, v, delta), delta[..., None] * np.sign(e), rtol=1e-15)
    np.testing.assert_allclose(bias.loss(y, v, delta),
                               delta * np.sum(np.abs(e), axis=-1), rtol=1e-14)


def test_huber_mixture_channelwise_delta_uses_coordinate_test(rng):
    # With a channel-wise δ [..., d] (Yaad's channel-wise δ_t, Sec 5.4) the library makes the
    # test per coordinate, |e_j| <= δ_j (docs/paper-notes.md): the same errors as above, with
    # the same δ repeated in every channel, now all take the ℓ2 branch e_j; mixed errors take
    # the branch of their own coordinate.
    bias = HuberMixtureBias(smooth=False)
    delta = per_token_delta(rng)
    dch = np.repeat(delta[..., None], D, axis=-1)
    e = rng.uniform(0.5, 0.9, (*BATCH, D)) * rng.choice([-1.0, 1.0], (*BATCH, D)) * dch
    y, v = y_and_v(rng, e)
    np.testing.assert_allclose(bias.grad(y, v, dch), e, rtol=1e-15)
    e2 = coordinate_errors(rng, delta=1.0) * dch
    y, v = y_and_v(rng, e2)
    small = np.abs(e2) <= dch
    assert small.any() and (~small).any()
    np.testing.assert_allclose(bias.grad(y, v, dch), np.where(small, e2, dch * np.sign(e2)),
                               rtol=1e-15)


def test_huber_mixture_reduces_to_l2_when_errors_are_small(rng):
    e = norm_errors(rng)
    e *= 0.9 * DELTA / np.linalg.norm(e, axis=-1, keepdims=True).max()  # all ‖e‖ < δ
    y, v = y_and_v(rng, e)
    for bias in (HuberMixtureBias(smooth=False), HuberMixtureBias(smooth=True)):
        np.testing.assert_allclose(bias.grad(y, v, DELTA), L2Bias().grad(y, v), rtol=1e-15)
        np.testing.assert_allclose(bias.loss(y, v, DELTA), L2Bias().loss(y, v), rtol=1e-15)
    # and so do the other two Huber biases
    np.testing.assert_allclose(HuberNormBias().grad(y, v, DELTA), y - v, rtol=1e-15)
    np.testing.assert_allclose(HuberCoordinateBias().grad(y, v, DELTA), y - v, rtol=1e-15)


# ------------------------------------------------------------------------------------------
# Robustness to value shifts (Eq 17)
# ------------------------------------------------------------------------------------------
def numeric_worst_case(y, v, radius, rng, starts=5):
    """``max_{‖δv‖ <= Δ} ½‖y - (v + δv)‖²`` by SLSQP with the ball constraint, best of starts."""

    def neg(dv):
        r = y - v - dv
        return -0.5 * float(r @ r)

    def neg_jac(dv):
        return y - v - dv

    ball = {"type": "ineq", "fun": lambda dv: radius**2 - float(dv @ dv),
            "jac": lambda dv: -2.0 * dv}
    best = None
    for _ in range(starts):
        x0 = rng.standard_normal(y.shape)
        x0 *= 0.5 * radius / np.linalg.norm(x0)
        res = minimize(neg, x0, jac=neg_jac, constraints=[ball], method="SLSQP",
                       options={"ftol": 1e-15, "maxiter": 500})
        if best is None or res.fun < best.fun:
            best = res
    return -best.fun, best.x


def test_value_shift_loss_equals_numeric_worst_case_eq17(rng):
    bias = ValueShiftRobustBias()
    for radius in (0.3, 1.1):
        for _ in range(3):
            y, v = y_and_v(rng, rng.standard_normal(5))
            worst, dv = numeric_worst_case(y, v, radius, rng)
            np.testing.assert_allclose(bias.loss(y, v, radius), worst, rtol=1e-9)
            dv_star = bias.optimal_perturbation(y, v, radius)
            np.testing.assert_allclose(dv_star, dv, atol=1e-6)


def test_value_shift_loss_equals_dense_circle_maximum_in_2d(rng):
    # in 2-D the boundary of the ball is a circle; the maximum of a convex function over the
    # disc is on it. 2·10^5 angles give the maximum to ~1e-9 relative.
    bias = ValueShiftRobustBias()
    theta = np.linspace(0.0, 2 * np.pi, 200_001)
    circle = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    for radius in (0.2, 0.9, 2.5):
        y, v = y_and_v(rng, rng.standard_normal(2))
        vals = 0.5 * np.sum((y - v - radius * circle) ** 2, axis=-1)
        np.testing.assert_allclose(bias.loss(y, v, radius), vals.max(), rtol=1e-9)


def test_value_shift_optimal_perturbation_attains_the_loss(rng):
    bias = ValueShiftRobustBias()
    delta = per_token_delta(rng)
    y, v = y_and_v(rng, rng.standard_normal((*BATCH, D)))
    dv = bias.optimal_perturbation(y, v, delta)
    np.testing.assert_allclose(np.linalg.norm(dv, axis=-1), delta, rtol=1e-14)  # on the sphere
    attained = 0.5 * np.sum((y - (v + dv)) ** 2, axis=-1)
    np.testing.assert_allclose(attained, bias.loss(y, v, delta), rtol=1e-14)
    # the closed form ½‖e‖² + Δ‖e‖ + ½Δ² = ½(‖e‖ + Δ)²
    n = np.linalg.norm(y - v, axis=-1)
    np.testing.assert_allclose(bias.loss(y, v, delta), 0.5 * (n + delta) ** 2, rtol=1e-14)


def test_value_shift_grad_matches_finite_differences(rng, fd_grad):
    bias = ValueShiftRobustBias()
    delta = per_token_delta(rng)
    y, v = y_and_v(rng, rng.standard_normal((*BATCH, D)))
    assert_grad_matches_fd(bias, y, v, delta, fd_grad)
    e = y - v
    n = np.linalg.norm(e, axis=-1, keepdims=True)
    np.testing.assert_allclose(bias.grad(y, v, delta), e + delta[..., None] * e / n, rtol=1e-14)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def test_lp_bias_rejects_p_below_one():
    with pytest.raises(ValueError, match="p must"):
        LpBias(p=0.5)


@pytest.mark.parametrize("cls", [HuberCoordinateBias, HuberNormBias, HuberMixtureBias,
                                 ValueShiftRobustBias])
@pytest.mark.parametrize("bad", [0.0, -0.5, None])
def test_threshold_biases_reject_nonpositive_or_missing_delta(cls, bad, rng):
    y, v = y_and_v(rng, rng.standard_normal((*BATCH, D)))
    with pytest.raises(ValueError, match="delta"):
        cls().grad(y, v, bad)
    with pytest.raises(ValueError, match="delta"):
        cls().loss(y, v, bad)
