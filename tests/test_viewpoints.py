"""Tests of miras_ref.viewpoints: FTRL vs Learning-Retaining (Sec. 3), Eq. 7, Sec. 5.2 v3/v4."""

import numpy as np
import pytest

from miras_ref.viewpoints import (
    bregman_divergence,
    elastic_net_ftrl_argmin,
    elastic_net_ftrl_closed_form,
    ftrl_argmin,
    ftrl_iterates,
    learning_retaining_argmin,
    learning_retaining_iterates_for_ftrl,
    linearized_loss,
    local_global_retention,
    lq_ftrl_argmin,
    lq_ftrl_link,
    online_gd_as_ftrl,
    proposition_3_2,
)

SHAPE = (2, 2)
ETA = 0.7


# ------------------------------------------------------------------------------------------
# losses and regularisers used by the tests
# ------------------------------------------------------------------------------------------
def half_sq(W):
    return 0.5 * float(np.sum(W * W)), W.copy()


def quartic_R(W):
    # R(W) = sum(W^4/4 + W^2/2): strictly convex, not quadratic, grad R(0) = 0
    return float(np.sum(W**4 / 4 + W**2 / 2)), W**3 + W


def lse_R(W):
    # R(W) = logsumexp(W) + 1/2 ||W||^2: strictly convex, grad R(0) = 1/n != 0
    w = W.ravel()
    m = np.max(w)
    e = np.exp(w - m)
    return float(m + np.log(e.sum()) + 0.5 * w @ w), (e / e.sum() + w).reshape(W.shape)


def quad_loss(x, y):
    # l(W) = 1/2 (<W, x> - y)^2
    def f(W):
        r = float(np.sum(W * x)) - y
        return 0.5 * r * r, r * x

    return f


def logcosh_loss(x, y):
    # l(W) = log cosh(<W, x> - y)
    def f(W):
        r = float(np.sum(W * x)) - y
        return float(np.logaddexp(r, -r) - np.log(2.0)), np.tanh(r) * x

    return f


def make_losses(kind, T=6, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    maker = quad_loss if kind == "quad" else logcosh_loss
    return [maker(rng.normal(size=shape), 2.0 * rng.normal()) for _ in range(T)]


def fd_grad(f, W, h=1e-6):
    g = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        e = np.zeros_like(W)
        e[idx] = h
        g[idx] = (f(W + e)[0] - f(W - e)[0]) / (2 * h)
    return g


# ------------------------------------------------------------------------------------------
# Proposition 3.2
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, R",
    [("quad", half_sq), ("logcosh", quartic_R), ("logcosh", lse_R), ("quad", quartic_R)],
    ids=["quadratic+half_sq", "logcosh+quartic", "logcosh+lse", "quadratic+quartic"],
)
def test_proposition_3_2_holds(kind, R):
    losses = make_losses(kind)
    ftrl, lr, diff = proposition_3_2(losses, ETA, R, SHAPE)
    assert len(ftrl) == len(lr) == 6
    assert all(W.shape == SHAPE for W in ftrl + lr)
    assert diff < 1e-6
    # the iterates really move (the check is not vacuous)
    assert np.max(np.abs(ftrl[-1] - ftrl[0])) > 1e-2


def test_proposition_3_2_base_case_from_argmin_R():
    # App. B's base case "initialised at the same point": a Learning-Retaining step from
    # W_0 = argmin R with h_1 = R / eta reproduces FTRL's W_1, even when grad R(0) != 0.
    losses = make_losses("logcosh", seed=1)
    _, _, diff = proposition_3_2(losses, ETA, lse_R, SHAPE, init="argmin_R")
    assert diff < 1e-6


def test_proposition_3_2_zero_init_is_tilted_ftrl():
    # W_0 = 0 with grad R(0) != 0: the sequences differ, and the Learning-Retaining one is
    # exactly FTRL for the regulariser D_R(W, 0) (a constant linear tilt).
    losses = make_losses("logcosh", seed=2)
    ftrl, lr, diff = proposition_3_2(losses, ETA, lse_R, SHAPE, init="zero")
    assert diff > 1e-3
    D_R0 = bregman_divergence(lse_R)

    def tilted_R(W):
        return D_R0(W, np.zeros(SHAPE))

    tilted = ftrl_iterates(losses, ETA, tilted_R, SHAPE)
    assert max(np.max(np.abs(a - b)) for a, b in zip(tilted, lr)) < 1e-6
    # with grad R(0) = 0 the W_0 = 0 start is fine
    _, _, diff0 = proposition_3_2(losses, ETA, quartic_R, SHAPE, init="zero")
    assert diff0 < 1e-6


def test_proposition_3_2_negative_control_plain_euclidean_retention():
    # Ret = 1/(2 eta) ||W - W'||^2 is not D_{h_t} for non-quadratic losses: no equivalence.
    losses = make_losses("logcosh", seed=3)
    ftrl = ftrl_iterates(losses, ETA, quartic_R, SHAPE)
    ret = local_global_retention(ETA, None, bregman_divergence(half_sq))
    W, lr = ftrl[0], [ftrl[0]]
    for lh in losses[1:]:
        W = learning_retaining_argmin(lh, ret, W)
        lr.append(W)
    diff = max(np.max(np.abs(a - b)) for a, b in zip(ftrl, lr))
    assert diff > 1e-3


def test_learning_retaining_iterates_explicit_matches_ftrl_argmin():
    losses = make_losses("quad", T=5, shape=(3,), seed=4)
    lr = learning_retaining_iterates_for_ftrl(losses, ETA, half_sq, (3,))
    # quadratic case in closed form: W_t = -(sum x x^T + I/eta)^{-1} (-sum y x)
    rng = np.random.default_rng(4)
    data = [(rng.normal(size=(3,)), 2.0 * rng.normal()) for _ in range(5)]
    for t in range(1, 6):
        H = sum(np.outer(x, x) for x, _ in data[:t]) + np.eye(3) / ETA
        b = sum(y * x for x, y in data[:t])
        np.testing.assert_allclose(lr[t - 1], np.linalg.solve(H, b), atol=1e-8)


# ------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------
def test_bregman_divergence_properties():
    rng = np.random.default_rng(5)
    W, Wp = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    D = bregman_divergence(quartic_R)
    v, g = D(W, Wp)
    assert v > 0
    np.testing.assert_allclose(g, fd_grad(lambda X: D(X, Wp), W), atol=1e-6)
    v0, g0 = D(Wp, Wp)
    assert abs(v0) < 1e-12 and np.max(np.abs(g0)) < 1e-12
    # D of 1/2 ||.||^2 is 1/2 ||W - W'||^2
    vq, gq = bregman_divergence(half_sq)(W, Wp)
    np.testing.assert_allclose(vq, 0.5 * np.sum((W - Wp) ** 2), rtol=1e-12)
    np.testing.assert_allclose(gq, W - Wp, atol=1e-12)


def test_local_global_retention_combines_terms():
    rng = np.random.default_rng(6)
    W, Wp = rng.normal(size=(4,)), rng.normal(size=(4,))
    D = bregman_divergence(half_sq)
    ret = local_global_retention(0.5, 2.0, D, quartic_R)
    v, g = ret(W, Wp)
    np.testing.assert_allclose(v, D(W, Wp)[0] / 0.5 + quartic_R(W)[0] / 2.0, rtol=1e-12)
    np.testing.assert_allclose(g, fd_grad(lambda X: ret(X, Wp), W), atol=1e-6)


def test_ftrl_argmin_any_shape_and_x0_independent():
    losses = make_losses("logcosh", T=3, shape=(2, 1, 2), seed=7)
    a = ftrl_argmin(losses, ETA, quartic_R, (2, 1, 2))
    b = ftrl_argmin(losses, ETA, quartic_R, (2, 1, 2), x0=np.full((2, 1, 2), 3.0))
    assert a.shape == (2, 1, 2) and a.dtype == np.float64
    np.testing.assert_allclose(a, b, atol=1e-9)
    # first-order optimality condition
    grad = quartic_R(a)[1] / ETA + sum(lh(a)[1] for lh in losses)
    assert np.max(np.abs(grad)) < 1e-9


def test_learning_retaining_linearized_is_gd_step():
    # Sec. 3.3: argmin <W - W', g> + 1/(2 eta) ||W - W'||^2 = W' - eta g  (Eq. 5)
    rng = np.random.default_rng(8)
    Wp, g = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    ret = local_global_retention(ETA, None, bregman_divergence(half_sq))
    W = learning_retaining_argmin(linearized_loss(g, Wp), ret, Wp)
    np.testing.assert_allclose(W, Wp - ETA * g, atol=1e-8)


# ------------------------------------------------------------------------------------------
# Eq. 7
# ------------------------------------------------------------------------------------------
def test_eq7_online_gd_equals_ftrl_linearised_nonquadratic():
    rng = np.random.default_rng(9)
    ks = rng.normal(size=(6, 3))
    vs = rng.normal(size=(6, 2))

    def grads_fn(W, i):
        # l(W; k_i, v_i) = sum log cosh(W k_i - v_i), W of shape (2, 3)
        r = W @ ks[i - 1] - vs[i - 1]
        return np.outer(np.tanh(r), ks[i - 1])

    ftrl, gd = online_gd_as_ftrl(grads_fn, 0.4, 6, (2, 3))
    assert len(ftrl) == len(gd) == 6
    assert max(np.max(np.abs(a - b)) for a, b in zip(ftrl, gd)) < 1e-6
    assert np.max(np.abs(gd[-1])) > 1e-2


# ------------------------------------------------------------------------------------------
# Sec. 5.2 variant 3: elastic-net FTRL
# ------------------------------------------------------------------------------------------
def soft(z, gamma):
    return np.sign(z) * np.maximum(np.abs(z) - gamma, 0.0)


def test_elastic_net_numeric_equals_closed_form():
    rng = np.random.default_rng(10)
    G = rng.normal(size=(4, 5))
    eta, alpha = 0.8, 2.5
    num = elastic_net_ftrl_argmin(G, eta, 1 / alpha)
    cf = elastic_net_ftrl_closed_form(G, eta, 1 / alpha)
    np.testing.assert_allclose(num, cf, atol=1e-9)
    # Eq. 23: W = S_{eta/alpha}(A), A = -eta G
    np.testing.assert_allclose(cf, soft(-eta * G, eta / alpha), atol=1e-15)
    assert np.any(cf == 0.0) and np.any(cf != 0.0)


def test_elastic_net_erratum_paper_literal_objective():
    # Paper's literal (1/eta)||W||^2 + (1/alpha)||W||_1 has argmin S_{eta/(2 alpha)}(A/2),
    # not the stated S_{eta/alpha}(A).
    rng = np.random.default_rng(11)
    G = rng.normal(size=(12,))
    eta, alpha = 0.8, 2.5
    A = -eta * G
    literal = elastic_net_ftrl_argmin(G, eta, 1 / alpha, quad_coef=1.0)
    np.testing.assert_allclose(literal, soft(A / 2, eta / (2 * alpha)), atol=1e-9)
    np.testing.assert_allclose(
        elastic_net_ftrl_closed_form(G, eta, 1 / alpha, quad_coef=1.0), literal, atol=1e-9
    )
    assert np.max(np.abs(literal - soft(A, eta / alpha))) > 1e-2


def test_elastic_net_sparsity_grows_with_l1():
    rng = np.random.default_rng(12)
    G = rng.normal(size=(200,))
    fracs = [np.mean(elastic_net_ftrl_closed_form(G, 0.5, l1) == 0.0) for l1 in
             (0.0, 0.2, 0.5, 1.0, 2.0, 5.0)]
    assert fracs[0] == 0.0 and fracs[-1] > 0.9
    assert all(b > a for a, b in zip(fracs, fracs[1:]))


# ------------------------------------------------------------------------------------------
# Sec. 5.2 variant 4: l_q FTRL
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [1.2, 1.5, 2.0])
def test_lq_numeric_equals_exact_link(q):
    rng = np.random.default_rng(13)
    A = rng.normal(size=(3, 3))
    num = lq_ftrl_argmin(A, q)
    link = lq_ftrl_link(A, q)
    assert np.max(np.abs(num - link)) <= 1e-6 * np.max(np.abs(link))


def test_lq_simplified_link_erratum():
    rng = np.random.default_rng(14)
    A = rng.normal(size=(6,))
    np.testing.assert_allclose(lq_ftrl_link(A, 2.0, simplified=True), lq_ftrl_link(A, 2.0),
                               rtol=1e-14)
    np.testing.assert_allclose(lq_ftrl_link(A, 2.0), A, rtol=1e-14)
    exact = lq_ftrl_link(A, 1.5)
    simp = lq_ftrl_link(A, 1.5, simplified=True)
    assert np.max(np.abs(exact - simp)) > 1e-1 * np.max(np.abs(exact))
    np.testing.assert_allclose(lq_ftrl_argmin(A, 1.5), exact, rtol=1e-6, atol=1e-9)


def test_lq_zero_input():
    assert np.all(lq_ftrl_link(np.zeros(3), 1.5) == 0.0)
    assert np.all(lq_ftrl_argmin(np.zeros(3), 1.5) == 0.0)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, -1.0, np.nan, np.inf])
def test_bad_eta(eta):
    losses = make_losses("quad", T=2)
    with pytest.raises(ValueError, match="eta"):
        ftrl_argmin(losses, eta, half_sq, SHAPE)
    with pytest.raises(ValueError, match="eta"):
        local_global_retention(eta, None, bregman_divergence(half_sq))
    with pytest.raises(ValueError, match="eta"):
        elastic_net_ftrl_closed_form(np.ones(3), eta, 0.1)
    with pytest.raises(ValueError, match="eta"):
        proposition_3_2(losses, eta, half_sq, SHAPE)


@pytest.mark.parametrize("q", [1.0, 0.5, 2.5, -3.0])
def test_bad_q(q):
    with pytest.raises(ValueError, match="q"):
        lq_ftrl_link(np.ones(3), q)
    with pytest.raises(ValueError, match="q"):
        lq_ftrl_argmin(np.ones(3), q)


def test_bad_arrays_and_types():
    A = np.array([1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="A"):
        lq_ftrl_link(A, 1.5)
    with pytest.raises(ValueError, match="A"):
        lq_ftrl_argmin(A, 1.5)
    with pytest.raises(ValueError, match="G_sum"):
        elastic_net_ftrl_argmin(A, 0.5, 0.1)
    with pytest.raises(ValueError, match="l1"):
        elastic_net_ftrl_closed_form(np.ones(3), 0.5, -0.1)
    with pytest.raises(ValueError, match="W_prev"):
        learning_retaining_argmin(half_sq, bregman_divergence(half_sq), A)
    with pytest.raises(TypeError, match="R"):
        ftrl_argmin([], 0.5, "not callable", (2,))
    with pytest.raises(TypeError, match=r"loss_hats\[1\]"):
        ftrl_argmin([half_sq, 3.0], 0.5, half_sq, (2,))
    with pytest.raises(ValueError, match="W0_shape"):
        ftrl_argmin([], 0.5, half_sq, (2, 0))
    with pytest.raises(ValueError, match="grad_at_prev"):
        linearized_loss(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="init"):
        learning_retaining_iterates_for_ftrl([half_sq], 0.5, half_sq, (2,), init="bad")
    with pytest.raises(ValueError, match="loss_hats"):
        ftrl_argmin([lambda W: (0.0, np.ones(5))], 0.5, half_sq, (2,))
