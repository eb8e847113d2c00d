"""Tests of miras_ref.retention: the retention gates (Sec 3.3, Sec 5.2, Eq 18-24).

Every closed-form update is checked against a numeric argmin of the objective it claims to
solve (scipy: BFGS for the unconstrained gates, SLSQP with the equality constraint and bounds for
the scaled simplex, L-BFGS-B in the box for sigmoid-Bregman, bounded Brent per coordinate for the
separable non-smooth elastic nets). Gradients handed to the optimisers are central differences of
the objective, never a closed form. Then the properties the paper states are checked.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar

from miras_ref.retention import (
    RETENTIONS,
    ElasticNetFTRLRetention,
    ElasticNetRetention,
    FDivergenceRetention,
    KLRetention,
    L2Retention,
    LqRetention,
    SigmoidBregmanRetention,
    smooth_soft_threshold,
    soft_threshold,
)

SHAPE = (3, 5)  # a small parameter matrix (own_ndim = 2)
OWN = 2
GATES = [(0.3, 1.0), (0.7, 0.9), (1.5, 0.5)]  # (eta, alpha) pairs
TOL = 1e-6


# ------------------------------------------------------------------------------------------
# numeric argmins (scipy), all with finite-difference gradients of the given objective
# ------------------------------------------------------------------------------------------
def argmin_free(f, x0, fd_grad):
    """Unconstrained argmin of ``f`` over arrays of ``x0``'s shape (BFGS)."""
    shape = x0.shape

    def flat(x):
        return f(x.reshape(shape))

    res = minimize(flat, x0.ravel(), jac=lambda x: fd_grad(flat, x), method="BFGS",
                   options={"gtol": 1e-10, "maxiter": 5000})
    return res.x.reshape(shape)


def argmin_scaled_simplex(f, c, axis, fd_grad):
    """Argmin of ``f`` over ``{W >= 0, ΣW = c}`` (per row for axis=-1, in all for None), SLSQP."""
    n = SHAPE[0] * SHAPE[1]
    if axis is None:
        a_eq = np.ones((1, n))
    else:
        a_eq = np.kron(np.eye(SHAPE[0]), np.ones((1, SHAPE[1])))  # one constraint per row
    x0 = np.full(n, c / (a_eq.shape[1] / a_eq.shape[0]))

    def flat(x):
        return f(x.reshape(SHAPE))

    cons = [{"type": "eq", "fun": lambda x: a_eq @ x - c, "jac": lambda x: a_eq}]
    res = minimize(flat, x0, jac=lambda x: fd_grad(flat, x), method="SLSQP", constraints=cons,
                   bounds=[(1e-12, c)] * n, options={"ftol": 1e-16, "maxiter": 1000})
    return res.x.reshape(SHAPE)


def argmin_box(f, fd_grad):
    """Argmin of ``f`` over the box ``(0, 1)^n`` (L-BFGS-B on ``[1e-4, 1 - 1e-4]``).

    The bounds keep the central differences (ε = 1e-6) inside the domain; callers check that
    the argmin is not on them.
    """
    n = SHAPE[0] * SHAPE[1]

    def flat(x):
        return f(x.reshape(SHAPE))

    res = minimize(flat, np.full(n, 0.5), jac=lambda x: fd_grad(flat, x), method="L-BFGS-B",
                   bounds=[(1e-4, 1 - 1e-4)] * n,
                   options={"ftol": 1e-16, "gtol": 1e-12, "maxiter": 5000})
    x = res.x.reshape(SHAPE)
    assert np.all((x > 2e-4) & (x < 1 - 2e-4)), "argmin on the box bounds"
    return x


def argmin_separable(f, base, bound):
    """Argmin of a coordinate-separable ``f`` (possibly non-smooth), one coordinate at a time.

    For ``f(W) = Σ_i f_i(W_i)``, minimising over each coordinate with the others held fixed gives
    the joint argmin; each 1-D problem is solved by bounded Brent on ``[-bound, bound]``.
    """
    w = base.copy()
    out = np.empty_like(base)
    for i in np.ndindex(*base.shape):

        def f1(t, i=i):
            w_i = w.copy()
            w_i[i] = t
            return f(w_i)

        res = minimize_scalar(f1, bounds=(-bound, bound), method="bounded",
                              options={"xatol": 1e-12, "maxiter": 1000})
        out[i] = res.x
    return out


def closed_form(gate, z_prev, g, eta, alpha):
    """``(W_prev, W_new) = (ψ(Z_prev), ψ(update(Z_prev, g, η, α)))`` through the gate's link."""
    return gate.link(z_prev, OWN), gate.link(gate.update(z_prev, g, eta, alpha, OWN), OWN)


def softmax(x, axis):
    """Independent softmax over ``axis`` (None: all entries)."""
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


# ------------------------------------------------------------------------------------------
# every closed-form update against the numeric argmin of its objective
# ------------------------------------------------------------------------------------------
def test_every_retention_with_objective_is_covered():
    with_objective = {k for k, cls in RETENTIONS.items() if hasattr(cls, "objective")}
    assert with_objective == {"l2", "kl", "fdiv", "elastic", "sigmoid_bregman"}


@pytest.mark.parametrize("anchor_at", ["previous", "decayed"])
@pytest.mark.parametrize("eta,alpha", GATES)
def test_l2_retention_update_is_argmin_of_objective(anchor_at, eta, alpha, rng, fd_grad):
    gate = L2Retention(anchor_at=anchor_at)
    z_prev = rng.standard_normal(SHAPE)  # state = the weights (identity link)
    g = rng.standard_normal(SHAPE)
    w_prev, w_new = closed_form(gate, z_prev, g, eta, alpha)
    np.testing.assert_array_equal(w_prev, z_prev)
    num = argmin_free(lambda w: gate.objective(w, w_prev, g, eta, alpha), w_prev, fd_grad)
    np.testing.assert_allclose(w_new, num, atol=TOL)
    # W_t = α W_{t-1} - η g in both forms
    np.testing.assert_allclose(w_new, alpha * w_prev - eta * g, rtol=1e-14)


def test_l2_retention_anchor_is_previous_or_decayed_state(rng):
    z = rng.standard_normal(SHAPE)
    np.testing.assert_array_equal(L2Retention("previous").anchor(z, 0.7, OWN), z)
    np.testing.assert_allclose(L2Retention("decayed").anchor(z, 0.7, OWN), 0.7 * z, rtol=1e-15)


@pytest.mark.parametrize("axis", [-1, None])
@pytest.mark.parametrize("eta,alpha", GATES)
def test_kl_retention_update_is_argmin_on_scaled_simplex(axis, eta, alpha, rng, fd_grad):
    c = 2.5
    gate = KLRetention(c=c, axis=axis)
    z_prev = rng.standard_normal(SHAPE)  # state = logits
    g = rng.standard_normal(SHAPE)
    w_prev, w_new = closed_form(gate, z_prev, g, eta, alpha)

    def obj(w):
        return gate.objective(w, w_prev, g, eta, alpha)

    num = argmin_scaled_simplex(obj, c, axis, fd_grad)
    np.testing.assert_allclose(w_new, num, atol=TOL)
    assert obj(w_new) <= obj(num) + 1e-12
    np.testing.assert_allclose(np.sum(w_new, axis=axis), c, rtol=1e-13)


@pytest.mark.parametrize("divergence", ["kl", "burg"])
@pytest.mark.parametrize("eta", [0.3, 0.7, 1.5])
def test_f_divergence_update_is_argmin_on_scaled_simplex_eq18(divergence, eta, rng, fd_grad):
    c = 2.5
    gate = FDivergenceRetention(divergence=divergence, c=c)
    w_prev = c * softmax(0.5 * rng.standard_normal(SHAPE), None)  # state = the weights, ΣW = c
    g = rng.standard_normal(SHAPE)
    w_prev2, w_new = closed_form(gate, w_prev, g, eta, 1.0)
    np.testing.assert_array_equal(w_prev2, w_prev)

    def obj(w):
        return gate.objective(w, w_prev, g, eta, 1.0)

    num = argmin_scaled_simplex(obj, c, None, fd_grad)
    np.testing.assert_allclose(w_new, num, atol=TOL)
    assert obj(w_new) <= obj(num) + 1e-12
    np.testing.assert_allclose(np.sum(w_new), c, rtol=1e-13)


@pytest.mark.parametrize("eta,alpha", GATES)
def test_elastic_net_retention_update_is_argmin_eq22(eta, alpha, rng):
    gamma = 0.4
    gate = ElasticNetRetention(gamma=gamma, smooth=False)
    z_prev = rng.standard_normal(SHAPE)  # state = the weights
    g = rng.standard_normal(SHAPE)
    w_prev, w_new = closed_form(gate, z_prev, g, eta, alpha)
    assert np.any(w_new == 0.0) and np.any(w_new != 0.0)  # both branches of S_γ are exercised
    # the objective is a sum over entries (linear, squared, |.| terms): separable
    bound = np.max(np.abs(w_prev)) + eta * np.max(np.abs(g)) + 1.0
    num = argmin_separable(lambda w: gate.objective(w, w_prev, g, eta, alpha), w_prev, bound)
    np.testing.assert_allclose(w_new, num, atol=TOL)


@pytest.mark.parametrize("eta,alpha", GATES)
def test_sigmoid_bregman_update_is_argmin_in_unit_box(eta, alpha, rng, fd_grad):
    gate = SigmoidBregmanRetention()
    z_prev = rng.standard_normal(SHAPE)  # state = logits
    g = rng.standard_normal(SHAPE)
    w_prev, w_new = closed_form(gate, z_prev, g, eta, alpha)

    def obj(w):
        return gate.objective(w, w_prev, g, eta, alpha)

    num = argmin_box(obj, fd_grad)
    np.testing.assert_allclose(w_new, num, atol=TOL)
    # W_t = σ(α logit(W_{t-1}) - η g), written independently
    want = 1.0 / (1.0 + np.exp(-(alpha * np.log(w_prev / (1 - w_prev)) - eta * g)))
    np.testing.assert_allclose(w_new, want, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# lq memory stability (Sec 5.2 variant 4, Eq 24)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [1.3, 1.7, 2.0])
def test_lq_exact_link_is_argmin_of_link_objective(q, rng, fd_grad):
    gate = LqRetention(q=q, link_kind="exact")
    # |A| >= 0.4 keeps every W_j = O(|A_j|^{p-1}) well away from 0, where |W|^q has unbounded
    # curvature and central differences with ε = 1e-6 would straddle the kink of |W|^{q-1}
    a = rng.uniform(0.4, 2.0, SHAPE) * rng.choice([-1.0, 1.0], SHAPE)
    num = argmin_free(lambda w: gate.link_objective(w, a), np.zeros(SHAPE) + 0.1, fd_grad)
    np.testing.assert_allclose(gate.link(a, OWN), num, atol=TOL)


@pytest.mark.parametrize("q", [1.5, 2.0, 3.0, 4.0])
def test_lq_simplified_link_norm_is_bounded_by_accumulator_norm(q, rng):
    # Eq 24: W = A / ‖A‖_q^{q-2}, so ‖W‖_q = ‖A‖_q^{3-q} (per parameter matrix)
    gate = LqRetention(q=q, link_kind="simplified")
    a = rng.standard_normal((2, 3, *SHAPE)) * rng.uniform(0.2, 5.0, (2, 3, 1, 1))
    w = gate.link(a, OWN)

    def qnorm(x):
        return np.sum(np.abs(x) ** q, axis=(-2, -1)) ** (1 / q)

    np.testing.assert_allclose(qnorm(w), qnorm(a) ** (3 - q), rtol=1e-12)
    # direction unchanged: W is a positive multiple of A in every [B, H] slot
    ratio = w / a
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[..., :1, :1], ratio.shape),
                               rtol=1e-12)


def test_lq_simplified_link_equals_exact_only_at_q2(rng):
    a = rng.standard_normal(SHAPE)
    np.testing.assert_allclose(LqRetention(q=2.0, link_kind="simplified").link(a, OWN),
                               LqRetention(q=2.0, link_kind="exact").link(a, OWN), rtol=1e-14)
    for q in (1.3, 1.5, 1.7):
        simp = LqRetention(q=q, link_kind="simplified")
        exact = LqRetention(q=q, link_kind="exact")
        ws, we = simp.link(a, OWN), exact.link(a, OWN)
        assert np.max(np.abs(ws - we)) > 1e-2
        # the exact link is the minimiser; the simplified one is strictly worse
        assert exact.link_objective(we, a) < exact.link_objective(ws, a) - 1e-6


# ------------------------------------------------------------------------------------------
# elastic net (Eq 22-23) and soft thresholding
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.1, 0.5])
def test_elastic_net_ftrl_link_is_argmin_of_link_objective_eq23(gamma, rng):
    gate = ElasticNetFTRLRetention(gamma=gamma)
    a = rng.standard_normal(SHAPE)
    w = gate.link(a, OWN)
    assert np.any(w == 0.0) and np.any(w != 0.0)
    num = argmin_separable(lambda x: gate.link_objective(x, a), a, np.max(np.abs(a)) + 1.0)
    np.testing.assert_allclose(w, num, atol=TOL)


def test_elastic_net_sparsity_grows_with_gamma(rng):
    z = rng.standard_normal((7, 5, 5))
    g = rng.standard_normal((7, 5, 5))
    fractions = [
        np.mean(ElasticNetRetention(gamma=gamma).update(z, g, 0.5, 0.9, OWN) == 0.0)
        for gamma in (0.01, 0.1, 0.3, 0.6, 1.0, 2.0)
    ]
    assert all(b > a for a, b in zip(fractions, fractions[1:])), fractions
    assert fractions[0] < 0.05 and fractions[-1] > 0.8


def test_soft_threshold_of_zero_is_zero_and_matches_definition(rng):
    assert soft_threshold(np.array(0.0), 0.3) == 0.0
    assert smooth_soft_threshold(np.array(0.0), 0.3) == 0.0
    z = rng.uniform(0.01, 2.0, 41) * rng.choice([-1.0, 1.0], 41)
    want = np.array([np.sign(t) * max(0.0, abs(t) - 0.3) for t in z])
    np.testing.assert_array_equal(soft_threshold(z, 0.3), want)


def test_smooth_soft_threshold_shrinks_by_two_gamma_over_pi_erratum():
    # the paper's surrogate |z| arctan(z/γ)/(π/2) tends to z - sign(z) 2γ/π for |z| >> γ, not to
    # S_γ(z) = z - sign(z) γ (a documented erratum); the gap to the asymptote is O(γ³/z²)
    gamma = 0.3
    errs = []
    for ratio in (10.0, 100.0, 1000.0):
        z = np.array([ratio * gamma, -ratio * gamma * 1.7])
        s = smooth_soft_threshold(z, gamma)
        asym = z - np.sign(z) * 2 * gamma / np.pi
        errs.append(np.max(np.abs(s - asym)))
        assert np.max(np.abs(s - asym)) < gamma / ratio**2
        # and it stays (1 - 2/π) γ away from the exact soft threshold
        np.testing.assert_allclose(np.abs(s - soft_threshold(z, gamma)),
                                   (1 - 2 / np.pi) * gamma, rtol=1 / ratio)
    assert errs[0] > errs[1] > errs[2]


# ------------------------------------------------------------------------------------------
# properties the paper states
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [-1, None])
def test_kl_retention_stays_on_scaled_simplex_after_many_updates(axis, rng):
    c = 3.0
    gate = KLRetention(c=c, axis=axis)
    z = rng.standard_normal((2, 3, *SHAPE))  # leading [B, H] axes
    for _ in range(300):
        g = rng.standard_normal(z.shape) * 5.0
        eta = rng.uniform(0.1, 2.0, (2, 3, 1, 1))
        alpha = rng.uniform(0.5, 1.0, (2, 3, 1, 1))
        z = gate.update(z, g, eta, alpha, OWN)
        w = gate.link(z, OWN)
        assert np.all(w >= 0.0)
        sums = np.sum(w, axis=-1) if axis == -1 else np.sum(w, axis=(-2, -1))
        np.testing.assert_allclose(sums, c, rtol=1e-13)


def test_sigmoid_bregman_stays_strictly_inside_unit_interval(rng):
    gate = SigmoidBregmanRetention()
    z = rng.standard_normal(SHAPE)
    for scale in (1e2, 1e4, 1e8):
        for _ in range(20):
            g = rng.choice([-1.0, 1.0], SHAPE) * scale * rng.uniform(0.5, 1.0, SHAPE)
            z = gate.update(z, g, 1.0, 0.9, OWN)
            w = gate.link(z, OWN)
            assert np.all(w > 0.0) and np.all(w < 1.0), (scale, w)


def test_sigmoid_bregman_link_is_accurate_sigmoid(rng):
    # σ(z) = 1/(1+exp(-z)) is computed without cancellation for z <= 30 by this formula
    z = np.concatenate([-rng.uniform(0.01, 700.0, 41), rng.uniform(0.01, 30.0, 41)])
    np.testing.assert_allclose(SigmoidBregmanRetention().link(z, 1), 1.0 / (1.0 + np.exp(-z)),
                               rtol=1e-14)


@pytest.mark.parametrize("axis", [-1, None])
def test_kl_update_is_softmax_of_scaled_log_eq21(axis, rng):
    # Eq 21: W_t = c Softmax((1-λ) log W_{t-1} - η' ∇ℓ), with λ = 1 - α and η' = η
    c = 1.7
    gate = KLRetention(c=c, axis=axis)
    z_prev = rng.standard_normal(SHAPE)
    g = rng.standard_normal(SHAPE)
    for eta, alpha in GATES:
        w_prev, w_new = closed_form(gate, z_prev, g, eta, alpha)
        lam = 1.0 - alpha
        want = c * softmax((1 - lam) * np.log(w_prev) - eta * g, axis)
        np.testing.assert_allclose(w_new, want, rtol=1e-12)


def test_f_divergence_kl_equals_kl_gate_with_alpha_one(rng):
    # Eq 18 with f(τ) = τ log τ on the simplex of all entries is the KL gate with α = 1
    c = 2.0
    z_prev = rng.standard_normal(SHAPE)
    g = rng.standard_normal(SHAPE)
    kl = KLRetention(c=c, axis=None)
    fdiv = FDivergenceRetention(divergence="kl", c=c)
    for eta in (0.3, 1.5):
        w_prev, w_kl = closed_form(kl, z_prev, g, eta, 1.0)
        w_f = fdiv.update(w_prev, g, eta, 1.0, OWN)
        np.testing.assert_allclose(w_f, w_kl, rtol=1e-12)


def test_f_divergence_rejects_alpha_below_one():
    with pytest.raises(ValueError, match="alpha"):
        FDivergenceRetention().check_gates(np.array(0.5), np.array(0.9))


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: LqRetention(q=2.5, link_kind="exact"), "q must"),
        (lambda: LqRetention(q=1.0), "q must"),
        (lambda: LqRetention(link_kind="x"), "link_kind"),
        (lambda: KLRetention(c=0.0), "c must"),
        (lambda: FDivergenceRetention(c=-1.0), "c must"),
        (lambda: ElasticNetRetention(gamma=-1.0), "gamma"),
        (lambda: ElasticNetFTRLRetention(gamma=0.0), "gamma"),
        (lambda: L2Retention(anchor_at="x"), "anchor_at"),
        (lambda: FDivergenceRetention(divergence="x"), "divergence"),
    ],
)
def test_retention_constructor_rejects_bad_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_retention_constructor_rejects_non_number_argument():
    with pytest.raises(TypeError, match="gamma"):
        ElasticNetRetention(gamma="big")
    with pytest.raises(TypeError, match="c must"):
        KLRetention(c=None)
