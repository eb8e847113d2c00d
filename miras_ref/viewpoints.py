r"""The two optimisation viewpoints of MIRAS (Sec. 3.2-3.4), solved numerically.

Each memory update is written here as the explicit optimisation problem of the paper and
solved with :mod:`scipy.optimize` to tight tolerances, so the closed-form update rules
elsewhere in the library can be checked against the problem they claim to solve.

**FTRL viewpoint** (Sec. 3.2, Eq. 7 generalised):

.. math::

    W_t = \arg\min_{W} \sum_{i=1}^{t} \hat\ell_i(W) + \frac{1}{\eta} R(W).

With :math:`W_0 = 0`, linearised losses
:math:`\hat\ell_i(W) = \langle W - W_{i-1}, \nabla\ell(W_{i-1})\rangle` and
:math:`R(W) = \tfrac12\|W\|_2^2` this is online gradient descent
:math:`W_t = W_{t-1} - \eta\nabla\ell(W_{t-1})` (Eq. 5 = Eq. 7).

**Learning-Retaining viewpoint** (Sec. 3.3):

.. math::

    W_t = \arg\min_{W} \tilde\ell_t(W) + \mathrm{Ret}_t(W, W_{t-1}),\qquad
    \mathrm{Ret}_t(W, W') = \frac{1}{\eta_t} D_t(W, W') + \frac{1}{\alpha_t} G_t(W).

**Proposition 3.2** (proof in App. B): with
:math:`h_t(W) = \sum_{i=1}^{t-1}\hat\ell_i(W) + \frac1\eta R(W)` strictly convex,
:math:`\mathrm{Ret}_t = D_{h_t}` (Bregman divergence) and :math:`\tilde\ell_t = \hat\ell_t`,
both viewpoints produce the same iterates when started from the same :math:`W_1`.

Also here: Sec. 5.2 variant 3 (elastic-net FTRL, Eq. 23) and variant 4 (:math:`\ell_q`
FTRL), each as a numeric argmin next to its closed form, with the paper's errata documented
in the function docstrings.

Conventions: a *loss callable* takes a float64 array ``W`` of the parameter shape and returns
``(value, gradient)`` with ``gradient.shape == W.shape``; a *retention callable* takes
``(W, W_prev)`` and returns ``(value, gradient with respect to W)``. Parameters may have any
shape; they are flattened internally for the solver.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import minimize, root

from ._checks import as_array, as_scalar, check_positive_int

__all__ = [
    "bregman_divergence",
    "elastic_net_ftrl_argmin",
    "elastic_net_ftrl_closed_form",
    "ftrl_argmin",
    "ftrl_iterates",
    "learning_retaining_argmin",
    "learning_retaining_iterates_for_ftrl",
    "linearized_loss",
    "local_global_retention",
    "lq_ftrl_argmin",
    "lq_ftrl_link",
    "online_gd_as_ftrl",
    "proposition_3_2",
]

LossFn = Callable[[np.ndarray], tuple[float, np.ndarray]]
RetentionFn = Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]

# Solver tolerances: gradient-norm target of the quasi-Newton stage and the accepted residual.
_GTOL = 1e-12
_ACCEPT_RTOL = 1e-7


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------
def _scalar(x, name: str, positive: bool = True) -> float:
    """Return ``x`` as a finite float (``> 0`` if ``positive``) or raise naming ``name``."""
    return as_scalar(x, name, 0.0 if positive else None, None, low_open=True)


def _array(x, name: str) -> np.ndarray:
    """Return ``x`` as a finite, non-empty float64 array or raise naming ``name``."""
    if callable(x):
        raise TypeError(f"{name} must be a real array, got {type(x).__name__}")
    arr = as_array(x, name)
    if arr.size == 0:
        raise ValueError(f"{name} must have at least one entry, got shape {arr.shape}")
    return arr


def _shape(shape, name: str) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of positive ints or raise naming ``name``."""
    if isinstance(shape, (numbers.Integral, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    if not isinstance(shape, (tuple, list)) or not all(
        isinstance(s, (numbers.Integral, np.integer)) and not isinstance(s, bool) for s in shape
    ):
        raise TypeError(f"{name} must be a tuple of ints, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    if any(s < 1 for s in shape):
        raise ValueError(f"{name} must have positive entries, got {shape}")
    return shape


def _callable(f, name: str) -> None:
    if not callable(f):
        raise TypeError(f"{name} must be callable returning (value, gradient), got "
                        f"{type(f).__name__}")


def _callables(fs, name: str) -> list:
    """Validate a sequence of loss callables."""
    if isinstance(fs, (str, bytes)) or not isinstance(fs, Sequence):
        raise TypeError(f"{name} must be a sequence of callables, got {type(fs).__name__}")
    for i, f in enumerate(fs):
        _callable(f, f"{name}[{i}]")
    return list(fs)


def _q(q) -> float:
    q = _scalar(q, "q")
    if not 1.0 < q <= 2.0:
        raise ValueError(f"q must be in (1, 2], got {q}")
    return q


def _eval(f, args: tuple, shape: tuple[int, ...], name: str) -> tuple[float, np.ndarray]:
    """Call a (value, gradient) callable and check what it returns."""
    out = f(*args)
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(f"{name} must return a (value, gradient) tuple")
    value, grad = out
    value = np.asarray(value, dtype=np.float64)
    if value.size != 1:
        raise ValueError(f"{name} returned a value of shape {value.shape}, expected a scalar")
    value = float(value.reshape(()))
    grad = np.asarray(grad, dtype=np.float64)
    if grad.shape != shape:
        raise ValueError(f"{name} returned a gradient of shape {grad.shape}, expected {shape}")
    if not np.isfinite(value) or not np.all(np.isfinite(grad)):
        raise ValueError(f"{name} returned a non-finite value or gradient")
    return value, grad


# ----------------------------------------------------------------------------------------------
# the numeric solver
# ----------------------------------------------------------------------------------------------
def _argmin_smooth(fun: LossFn, x0: np.ndarray, what: str) -> np.ndarray:
    """Minimise a smooth, strictly convex ``fun`` (value, grad) over arrays shaped like ``x0``.

    Quasi-Newton (BFGS, ``gtol=1e-12``) followed by a Powell-hybrid root polish of the
    first-order optimality condition :math:`\\nabla f(W) = 0`; the better of the two points
    (smaller gradient) is returned. Raises ``RuntimeError`` if the gradient is not small.
    """
    shape = x0.shape

    def f_flat(x):
        v, g = fun(x.reshape(shape))
        return v, g.ravel()

    def g_flat(x):
        return f_flat(x)[1]

    scale = 1.0 + np.max(np.abs(g_flat(x0.ravel())))
    res = minimize(f_flat, x0.ravel(), jac=True, method="BFGS",
                   options={"gtol": _GTOL, "maxiter": 50_000})
    best_x = res.x
    best_g = np.max(np.abs(g_flat(best_x)))
    # optimality condition  \nabla f(W) = 0  polished by a root finder
    pol = root(g_flat, best_x, method="hybr", options={"xtol": 1e-15})
    if np.all(np.isfinite(pol.x)):
        pol_g = np.max(np.abs(g_flat(pol.x)))
        if pol_g < best_g:
            best_x, best_g = pol.x, pol_g
    if not best_g <= _ACCEPT_RTOL * scale:
        raise RuntimeError(f"{what}: solver did not converge (max |grad| = {best_g:.3e})")
    return best_x.reshape(shape)


def _ftrl_objective(loss_hats: list, eta: float, R: LossFn, shape: tuple[int, ...]) -> LossFn:
    r"""The FTRL objective :math:`\sum_i \hat\ell_i(W) + \frac1\eta R(W)` as a callable."""

    def objective(W):
        # \sum_{i} \hat\ell_i(W) + (1/\eta) R(W)
        value, grad = _eval(R, (W,), shape, "R")
        value, grad = value / eta, grad / eta
        for i, lh in enumerate(loss_hats):
            v, g = _eval(lh, (W,), shape, f"loss_hats[{i}]")
            value, grad = value + v, grad + g
        return value, grad

    return objective


# ----------------------------------------------------------------------------------------------
# FTRL viewpoint
# ----------------------------------------------------------------------------------------------
def ftrl_argmin(loss_hats: Sequence[LossFn], eta: float, R: LossFn,
                W0_shape: tuple[int, ...], x0: np.ndarray | None = None) -> np.ndarray:
    r"""One FTRL step (Sec. 3.2, the (FTRL Viewpoint) equation), solved numerically.

    .. math:: W_t = \arg\min_W \sum_{i=1}^{t} \hat\ell_i(W) + \frac{1}{\eta} R(W)

    Parameters
    ----------
    loss_hats : sequence of callables
        :math:`\hat\ell_1, \dots, \hat\ell_t`; each maps ``W`` (shape ``W0_shape``) to
        ``(value, gradient)``. May be empty, giving :math:`\arg\min_W R(W)`.
    eta : float
        :math:`\eta > 0`, the (constant) learning rate / inverse regularisation strength.
    R : callable
        The memory-stability regulariser :math:`R(W)`, returning ``(value, gradient)``.
    W0_shape : tuple of int
        Shape of the parameter :math:`W`.
    x0 : ndarray, optional
        Starting point of the solver (shape ``W0_shape``); zeros by default. It does not
        change the answer when the objective is strictly convex.

    Returns
    -------
    ndarray, shape ``W0_shape``
        The minimiser :math:`W_t`.
    """
    loss_hats = _callables(loss_hats, "loss_hats")
    eta = _scalar(eta, "eta")
    _callable(R, "R")
    shape = _shape(W0_shape, "W0_shape")
    if x0 is None:
        x0 = np.zeros(shape)
    else:
        x0 = _array(x0, "x0")
        if x0.shape != shape:
            raise ValueError(f"x0 must have shape {shape}, got {x0.shape}")
    # W_t = argmin_W \sum_{i=1}^t \hat\ell_i(W) + (1/\eta) R(W)
    objective = _ftrl_objective(loss_hats, eta, R, shape)
    return _argmin_smooth(objective, x0, "ftrl_argmin")


def ftrl_iterates(loss_hats: Sequence[LossFn], eta: float, R: LossFn,
                  shape: tuple[int, ...]) -> list[np.ndarray]:
    r"""All FTRL iterates :math:`W_1, \dots, W_T` (Sec. 3.2, (FTRL Viewpoint)).

    :math:`W_t = \arg\min_W \sum_{i=1}^{t} \hat\ell_i(W) + \frac1\eta R(W)` for
    :math:`t = 1, \dots, T`; each solve is warm-started at :math:`W_{t-1}`.

    Parameters
    ----------
    loss_hats : sequence of T callables
        :math:`\hat\ell_1, \dots, \hat\ell_T`, each ``W -> (value, gradient)``.
    eta : float
        :math:`\eta > 0`.
    R : callable
        Regulariser :math:`R(W)` returning ``(value, gradient)``.
    shape : tuple of int
        Shape of :math:`W`.

    Returns
    -------
    list of T ndarrays of shape ``shape``
    """
    loss_hats = _callables(loss_hats, "loss_hats")
    eta = _scalar(eta, "eta")
    _callable(R, "R")
    shape = _shape(shape, "shape")
    out: list[np.ndarray] = []
    x0 = np.zeros(shape)
    for t in range(1, len(loss_hats) + 1):
        # W_t = argmin_W \sum_{i=1}^t \hat\ell_i(W) + (1/\eta) R(W)
        x0 = ftrl_argmin(loss_hats[:t], eta, R, shape, x0=x0)
        out.append(x0)
    return out


# ----------------------------------------------------------------------------------------------
# Learning-Retaining viewpoint
# ----------------------------------------------------------------------------------------------
def learning_retaining_argmin(loss_tilde: LossFn, retention: RetentionFn,
                              W_prev: np.ndarray) -> np.ndarray:
    r"""One Learning-Retaining step (Sec. 3.3, (Learning-Retaining Viewpoint)), numerically.

    .. math:: W_t = \arg\min_W \tilde\ell_t(W) + \mathrm{Ret}_t(W, W_{t-1})

    Parameters
    ----------
    loss_tilde : callable
        :math:`\tilde\ell_t`, ``W -> (value, gradient)``.
    retention : callable
        :math:`\mathrm{Ret}_t`, ``(W, W_prev) -> (value, gradient wrt W)``; e.g. from
        :func:`local_global_retention` or :func:`bregman_divergence`.
    W_prev : ndarray, any shape
        :math:`W_{t-1}`; also the solver's starting point.

    Returns
    -------
    ndarray, shape ``W_prev.shape``
    """
    _callable(loss_tilde, "loss_tilde")
    _callable(retention, "retention")
    W_prev = _array(W_prev, "W_prev")
    shape = W_prev.shape

    def objective(W):
        # \tilde\ell_t(W) + Ret_t(W, W_{t-1})
        v1, g1 = _eval(loss_tilde, (W,), shape, "loss_tilde")
        v2, g2 = _eval(retention, (W, W_prev), shape, "retention")
        return v1 + v2, g1 + g2

    return _argmin_smooth(objective, W_prev.copy(), "learning_retaining_argmin")


def local_global_retention(eta: float, alpha: float | None, D: RetentionFn,
                           G: LossFn | None = None) -> RetentionFn:
    r"""Local + global retention (Sec. 3.3): :math:`\mathrm{Ret}_t = \frac1\eta D + \frac1\alpha G`.

    .. math:: \mathrm{Ret}_t(W, W') = \frac{1}{\eta} D(W, W') + \frac{1}{\alpha} G(W)

    Parameters
    ----------
    eta : float
        :math:`\eta_t > 0`, weight :math:`1/\eta` of the local retention (premetric) ``D``.
    alpha : float or None
        :math:`\alpha_t > 0`, weight :math:`1/\alpha` of the global retention ``G``; ignored
        (may be ``None``) when ``G`` is ``None``.
    D : callable
        Local retention :math:`D(W, W')`, ``(W, W_prev) -> (value, gradient wrt W)``.
    G : callable, optional
        Global retention :math:`G(W)`, ``W -> (value, gradient)``; omitted means no global term.

    Returns
    -------
    callable
        ``(W, W_prev) -> (value, gradient wrt W)``.
    """
    eta = _scalar(eta, "eta")
    _callable(D, "D")
    if G is not None:
        _callable(G, "G")
        alpha = _scalar(alpha, "alpha")

    def retention(W, W_prev):
        W = np.asarray(W, dtype=np.float64)
        # Ret_t(W, W') = (1/\eta) D(W, W') + (1/\alpha) G(W)
        v, g = _eval(D, (W, W_prev), W.shape, "D")
        value, grad = v / eta, g / eta
        if G is not None:
            vg, gg = _eval(G, (W,), W.shape, "G")
            value, grad = value + vg / alpha, grad + gg / alpha
        return value, grad

    return retention


def bregman_divergence(h: LossFn) -> RetentionFn:
    r"""The Bregman divergence of ``h`` (Prop. 3.2 / Sec. 5.2 variant 5).

    .. math:: D_h(W, W') = h(W) - h(W') - \langle \nabla h(W'), W - W' \rangle,
              \qquad \nabla_W D_h(W, W') = \nabla h(W) - \nabla h(W')

    Parameters
    ----------
    h : callable
        A (strictly) convex function ``W -> (value, gradient)``.

    Returns
    -------
    callable
        ``(W, W_prev) -> (D_h(W, W_prev), gradient wrt W)``, arrays of one common shape.
    """
    _callable(h, "h")

    def divergence(W, W_prev):
        W = np.asarray(W, dtype=np.float64)
        W_prev = np.asarray(W_prev, dtype=np.float64)
        if W.shape != W_prev.shape:
            raise ValueError(f"W_prev must have the shape of W {W.shape}, got {W_prev.shape}")
        hv, hg = _eval(h, (W,), W.shape, "h")
        hv0, hg0 = _eval(h, (W_prev,), W.shape, "h")
        # D_h(W, W') = h(W) - h(W') - <\nabla h(W'), W - W'>
        value = hv - hv0 - float(np.sum(hg0 * (W - W_prev)))
        # \nabla_W D_h(W, W') = \nabla h(W) - \nabla h(W')
        return value, hg - hg0

    return divergence


def linearized_loss(grad_at_prev: np.ndarray, W_prev: np.ndarray) -> LossFn:
    r"""Linear approximation of a loss around :math:`W_{i-1}` (Eq. 7, Sec. 3.3, Sec. 5.2).

    .. math:: \tilde\ell(W) = \langle W - W_{i-1}, g \rangle,\qquad g = \nabla\ell(W_{i-1})

    Parameters
    ----------
    grad_at_prev : ndarray
        :math:`g = \nabla\ell(W_{i-1}; k_i, v_i)`, same shape as ``W_prev``.
    W_prev : ndarray
        The linearisation point :math:`W_{i-1}`.

    Returns
    -------
    callable
        ``W -> (value, gradient)`` with gradient the constant ``g``.
    """
    g = _array(grad_at_prev, "grad_at_prev")
    W_prev = _array(W_prev, "W_prev")
    if g.shape != W_prev.shape:
        raise ValueError(f"grad_at_prev must have the shape of W_prev {W_prev.shape}, "
                         f"got {g.shape}")

    def loss(W):
        W = np.asarray(W, dtype=np.float64)
        # \tilde\ell(W) = <W - W_{i-1}, g>
        return float(np.sum((W - W_prev) * g)), g.copy()

    return loss


# ----------------------------------------------------------------------------------------------
# Proposition 3.2
# ----------------------------------------------------------------------------------------------
def learning_retaining_iterates_for_ftrl(loss_hats: Sequence[LossFn], eta: float, R: LossFn,
                                         shape: tuple[int, ...],
                                         init: str = "ftrl") -> list[np.ndarray]:
    r"""Learning-Retaining iterates built as in Proposition 3.2 (Sec. 3.4, proof in App. B).

    For :math:`t \ge 2`:

    .. math::

        h_t(W) = \sum_{i=1}^{t-1} \hat\ell_i(W) + \frac1\eta R(W),\qquad
        \tilde W_t = \arg\min_W \hat\ell_t(W) + D_{h_t}(W, \tilde W_{t-1}).

    **Initialisation.** App. B proves the claim by induction whose base case is
    ":math:`\tilde W_1 = \hat W_1` since both sequences are initialized at the same point", i.e.
    the Learning-Retaining sequence is *started at FTRL's first iterate*. That is the default
    ``init="ftrl"``. The base case can also be produced by a Learning-Retaining step from a
    :math:`W_0` with :math:`h_1 = \frac1\eta R`: :math:`\tilde W_1 = \arg\min_W \hat\ell_1(W)
    + D_{R/\eta}(W, W_0)`, which equals :math:`\hat W_1` iff :math:`\nabla R(W_0) = 0`, i.e.
    :math:`W_0 = \arg\min R` (``init="argmin_R"``). With the paper's usual :math:`W_0 = 0`
    (``init="zero"``) the two sequences agree only when :math:`\nabla R(0) = 0`; otherwise,
    by the telescoping optimality conditions, every Learning-Retaining iterate is the FTRL
    iterate for the regulariser :math:`D_R(W, 0)` instead of :math:`R(W)` (a constant linear
    tilt :math:`-\langle\nabla R(0), W\rangle/\eta` that never decays).

    Parameters
    ----------
    loss_hats : sequence of T callables
        :math:`\hat\ell_1, \dots, \hat\ell_T`, each ``W -> (value, gradient)``; with
        :math:`\tilde\ell_t = \hat\ell_t`.
    eta : float
        :math:`\eta > 0` (constant, as the proposition requires).
    R : callable
        Regulariser :math:`R(W)` returning ``(value, gradient)``; :math:`h_t` must be strictly
        convex.
    shape : tuple of int
        Shape of :math:`W`.
    init : {"ftrl", "argmin_R", "zero"}
        How :math:`\tilde W_1` is obtained (see above).

    Returns
    -------
    list of T ndarrays of shape ``shape``
    """
    loss_hats = _callables(loss_hats, "loss_hats")
    eta = _scalar(eta, "eta")
    _callable(R, "R")
    shape = _shape(shape, "shape")
    if init not in ("ftrl", "argmin_R", "zero"):
        raise ValueError(f"init must be 'ftrl', 'argmin_R' or 'zero', got {init!r}")
    if not loss_hats:
        return []
    if init == "ftrl":
        # \tilde W_1 = \hat W_1 = argmin_W \hat\ell_1(W) + (1/\eta) R(W)
        W = ftrl_argmin(loss_hats[:1], eta, R, shape)
        out, start = [W], 1
    else:
        # W_0 = argmin_W (1/\eta) R(W)  or  W_0 = 0
        W = ftrl_argmin([], eta, R, shape) if init == "argmin_R" else np.zeros(shape)
        out, start = [], 0
    for t in range(start, len(loss_hats)):
        # h_t(W) = \sum_{i<t} \hat\ell_i(W) + (1/\eta) R(W);  Ret_t = D_{h_t}
        h_t = _ftrl_objective(loss_hats[:t], eta, R, shape)
        # \tilde W_t = argmin_W \hat\ell_t(W) + D_{h_t}(W, \tilde W_{t-1})
        W = learning_retaining_argmin(loss_hats[t], bregman_divergence(h_t), W)
        out.append(W)
    return out


def proposition_3_2(loss_hats: Sequence[LossFn], eta: float, R: LossFn,
                    shape: tuple[int, ...], init: str = "ftrl"
                    ) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    r"""Numerical check of Proposition 3.2: FTRL iterates vs. Learning-Retaining with Bregman.

    Runs :func:`ftrl_iterates` and :func:`learning_retaining_iterates_for_ftrl` on the same
    losses and reports :math:`\max_t \max_j |\hat W_t - \tilde W_t|_j`.

    Parameters
    ----------
    loss_hats : sequence of T callables
        :math:`\hat\ell_1, \dots, \hat\ell_T`.
    eta : float
        :math:`\eta > 0`.
    R : callable
        Regulariser :math:`R(W)`.
    shape : tuple of int
        Shape of :math:`W`.
    init : {"ftrl", "argmin_R", "zero"}
        Passed to :func:`learning_retaining_iterates_for_ftrl`.

    Returns
    -------
    ftrl_list, lr_list : lists of T ndarrays
    max_abs_diff : float
    """
    ftrl_list = ftrl_iterates(loss_hats, eta, R, shape)
    lr_list = learning_retaining_iterates_for_ftrl(loss_hats, eta, R, shape, init=init)
    # max_t || \hat W_t - \tilde W_t ||_\infty
    diff = max((float(np.max(np.abs(a - b))) for a, b in zip(ftrl_list, lr_list)), default=0.0)
    return ftrl_list, lr_list, diff


# ----------------------------------------------------------------------------------------------
# Eq. 7: online gradient descent is FTRL with linearised losses
# ----------------------------------------------------------------------------------------------
def _half_sq_norm(W):
    # R(W) = 1/2 ||W||_2^2
    return 0.5 * float(np.sum(W * W)), W.copy()


def online_gd_as_ftrl(grads_fn: Callable[[np.ndarray, int], np.ndarray], eta: float, T: int,
                      shape: tuple[int, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    r"""Eq. 7 vs. Eq. 5: FTRL with linearised losses and :math:`R = \frac12\|W\|^2` is online GD.

    FTRL (Eq. 7), :math:`W_0 = 0`, solved numerically:

    .. math::

        W_t = \arg\min_W \sum_{i=1}^{t} \langle W - W_{i-1}, \nabla\ell(W_{i-1}; k_i, v_i)\rangle
              + \frac{1}{2\eta}\|W\|_2^2,

    with each gradient taken at the previous *FTRL* iterate; online GD (Eq. 5):
    :math:`W_t = W_{t-1} - \eta\nabla\ell(W_{t-1}; k_t, v_t)`.

    Parameters
    ----------
    grads_fn : callable
        ``grads_fn(W_prev, i) -> ndarray`` of shape ``shape``: :math:`\nabla\ell(W_{i-1};
        k_i, v_i)` for step ``i`` in ``1..T``.
    eta : float
        :math:`\eta > 0`.
    T : int
        Number of steps (>= 1).
    shape : tuple of int
        Shape of :math:`W`.

    Returns
    -------
    ftrl_list, gd_list : lists of T ndarrays
        :math:`W_1, \dots, W_T` from Eq. 7 (numeric argmin) and from Eq. 5.
    """
    _callable(grads_fn, "grads_fn")
    eta = _scalar(eta, "eta")
    T = check_positive_int(T, "T")
    shape = _shape(shape, "shape")

    def grad(W, i):
        g = _array(grads_fn(W, i), "grads_fn output")
        if g.shape != shape:
            raise ValueError(f"grads_fn returned shape {g.shape}, expected {shape}")
        return g

    ftrl_list: list[np.ndarray] = []
    losses: list[LossFn] = []
    W = np.zeros(shape)
    for i in range(1, T + 1):
        # \hat\ell_i(W) = <W - W_{i-1}, \nabla\ell(W_{i-1}; k_i, v_i)>
        losses.append(linearized_loss(grad(W, i), W))
        # W_i = argmin_W \sum_{j<=i} \hat\ell_j(W) + 1/(2\eta) ||W||^2
        W = ftrl_argmin(losses, eta, _half_sq_norm, shape, x0=W)
        ftrl_list.append(W)

    gd_list: list[np.ndarray] = []
    W = np.zeros(shape)
    for i in range(1, T + 1):
        # W_i = W_{i-1} - \eta \nabla\ell(W_{i-1}; k_i, v_i)   (Eq. 5)
        W = W - eta * grad(W, i)
        gd_list.append(W)
    return ftrl_list, gd_list


# ----------------------------------------------------------------------------------------------
# Sec. 5.2 variant 3: elastic-net FTRL (Eq. 23)
# ----------------------------------------------------------------------------------------------
def _soft_threshold(z: np.ndarray, gamma: float) -> np.ndarray:
    # S_\gamma(z) = sign(z) max(|z| - \gamma, 0)
    return np.sign(z) * np.maximum(np.abs(z) - gamma, 0.0)



def _elastic_net_args(G_sum, eta, l1, quad_coef):
    """Checked ``(G, η, λ1, c)`` of the elastic-net FTRL step."""
    l1 = _scalar(l1, "l1", positive=False)
    if l1 < 0:
        raise ValueError(f"l1 must be >= 0, got {l1}")
    return _array(G_sum, "G_sum"), _scalar(eta, "eta"), l1, _scalar(quad_coef, "quad_coef")

def elastic_net_ftrl_argmin(G_sum: np.ndarray, eta: float, l1: float,
                            quad_coef: float = 0.5) -> np.ndarray:
    r"""Elastic-net FTRL step (Sec. 5.2 variant 3, Eq. 23), solved numerically.

    .. math::

        W_t = \arg\min_W \langle W, G_t\rangle + \frac{c}{\eta}\|W\|_2^2 + \lambda_1\|W\|_1,
        \qquad G_t = \sum_{i\le t}\nabla\ell(W_{i-1}),

    the FTRL objective with linearised losses (the constants
    :math:`-\langle W_{i-1}, \nabla\ell(W_{i-1})\rangle` do not move the argmin). The
    non-smooth :math:`\ell_1` term is handled by splitting :math:`W = P - N`,
    :math:`P, N \ge 0`, :math:`\|W\|_1 = \sum (P + N)` at the optimum, and solving the smooth
    bound-constrained problem with L-BFGS-B to about 1e-9.

    The paper writes :math:`\frac1\eta R = \frac1\eta\|W\|^2 + \frac1\alpha\|W\|_1` (i.e.
    ``quad_coef=1``, ``l1=1/alpha``); its claimed solution :math:`S_{\eta/\alpha}(A_t)`,
    :math:`A_t = -\eta G_t`, is the argmin only with ``quad_coef=0.5``
    (see :func:`elastic_net_ftrl_closed_form`).

    Parameters
    ----------
    G_sum : ndarray, any shape
        :math:`G_t`, the running sum of loss gradients.
    eta : float
        :math:`\eta > 0`.
    l1 : float
        :math:`\lambda_1 = 1/\alpha \ge 0`, weight of :math:`\|W\|_1`.
    quad_coef : float
        :math:`c > 0` in :math:`\frac{c}{\eta}\|W\|^2`; 0.5 (default) is the form whose closed
        form is Eq. 23, 1.0 is the paper's literal objective.

    Returns
    -------
    ndarray, shape ``G_sum.shape``
    """
    G, eta, l1, c = _elastic_net_args(G_sum, eta, l1, quad_coef)
    g = G.ravel()
    n = g.size

    def objective(z):
        P, N = z[:n], z[n:]
        W = P - N
        # <W, G> + (c/\eta) ||W||^2 + l1 * sum(P + N)
        value = float(g @ W + (c / eta) * (W @ W) + l1 * np.sum(z))
        dW = g + (2.0 * c / eta) * W
        return value, np.concatenate([dW + l1, -dW + l1])

    # start at the ridge solution W = -\eta G / (2c) split into its positive and negative parts
    W0 = -eta * g / (2.0 * c)
    z0 = np.concatenate([np.maximum(W0, 0.0), np.maximum(-W0, 0.0)])
    res = minimize(objective, z0, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * (2 * n),
                   options={"ftol": 1e-16, "gtol": 1e-13, "maxiter": 50_000, "maxcor": 30})
    W = res.x[:n] - res.x[n:]
    return W.reshape(G.shape)


def elastic_net_ftrl_closed_form(G_sum: np.ndarray, eta: float, l1: float,
                                 quad_coef: float = 0.5) -> np.ndarray:
    r"""Closed form of the elastic-net FTRL step (Sec. 5.2 variant 3, Eq. 23).

    .. math::

        \arg\min_W \langle W, G_t\rangle + \frac{c}{\eta}\|W\|_2^2 + \lambda_1\|W\|_1
        = S_{\eta\lambda_1/(2c)}\!\left(\frac{A_t}{2c}\right),\qquad A_t = -\eta G_t,

    with :math:`S_\gamma(z) = \mathrm{sign}(z)\max(|z| - \gamma, 0)` element-wise. With
    :math:`c = \tfrac12` and :math:`\lambda_1 = 1/\alpha` this is Eq. 23,
    :math:`W_t = S_{\eta/\alpha}(A_t)`, :math:`A_t = A_{t-1} - \eta\nabla\ell(W_{t-1})`.

    **Erratum.** The paper writes the regulariser as
    :math:`\frac1\eta\|W\|^2 + \frac1\alpha\|W\|_1` (``quad_coef=1``), whose argmin is
    :math:`S_{\eta/(2\alpha)}(A_t/2)`, not the stated :math:`S_{\eta/\alpha}(A_t)`; the stated
    closed form needs :math:`\frac{1}{2\eta}\|W\|^2` (``quad_coef=0.5``, the default).

    Parameters
    ----------
    G_sum : ndarray, any shape
        :math:`G_t = \sum_{i \le t}\nabla\ell(W_{i-1})`.
    eta : float
        :math:`\eta > 0`.
    l1 : float
        :math:`\lambda_1 = 1/\alpha \ge 0`.
    quad_coef : float
        :math:`c > 0` (0.5 = Eq. 23's form, 1.0 = the paper's literal regulariser).

    Returns
    -------
    ndarray, shape ``G_sum.shape``
    """
    G, eta, l1, c = _elastic_net_args(G_sum, eta, l1, quad_coef)
    # A_t = -\eta G_t
    A = -eta * G
    # W_t = S_{\eta l1 / (2c)}(A_t / (2c))    (c = 1/2: W_t = S_{\eta/\alpha}(A_t), Eq. 23)
    return _soft_threshold(A / (2.0 * c), eta * l1 / (2.0 * c))


# ----------------------------------------------------------------------------------------------
# Sec. 5.2 variant 4: l_q memory stability
# ----------------------------------------------------------------------------------------------
def lq_ftrl_argmin(A: np.ndarray, q: float) -> np.ndarray:
    r"""The :math:`\ell_q` FTRL step (Sec. 5.2 variant 4), solved numerically.

    .. math::

        W_t = \arg\min_W -\langle W, A_t\rangle + \frac{1}{2(q-1)}\|W\|_q^2,
        \qquad 1 < q \le 2,

    which is the FTRL objective :math:`\sum_i\langle W, \nabla\ell_i\rangle +
    \frac{1}{2\eta(q-1)}\|W\|_q^2` multiplied by :math:`\eta`, with
    :math:`A_t = -\eta\sum_{i\le t}\nabla\ell(W_{i-1})`.

    Parameters
    ----------
    A : ndarray, any shape
        :math:`A_t`.
    q : float
        Norm exponent, :math:`1 < q \le 2`.

    Returns
    -------
    ndarray, shape ``A.shape``
    """
    A = _array(A, "A")
    q = _q(q)
    if not np.any(A):
        return np.zeros_like(A)

    def objective(W):
        absW = np.abs(W)
        nq = float(np.sum(absW**q)) ** (1.0 / q)
        # -<W, A> + ||W||_q^2 / (2(q-1))
        value = -float(np.sum(W * A)) + nq**2 / (2.0 * (q - 1.0))
        # \nabla: -A + ||W||_q^{2-q} sign(W) |W|^{q-1} / (q-1)
        grad = -A
        if nq > 0:
            grad = grad + nq ** (2.0 - q) * np.sign(W) * absW ** (q - 1.0) / (q - 1.0)
        return value, grad

    # start from the q = 2 solution W = A (same signs as the answer, no zero entries)
    return _argmin_smooth(objective, A.copy(), "lq_ftrl_argmin")


def lq_ftrl_link(A: np.ndarray, q: float, simplified: bool = False) -> np.ndarray:
    r"""Closed form of the :math:`\ell_q` FTRL step (Sec. 5.2 variant 4).

    The minimiser of :math:`-\langle W, A\rangle + f(W)`,
    :math:`f(W) = \frac{1}{2(q-1)}\|W\|_q^2`, is :math:`\nabla f^*(A)`. Since the conjugate of
    :math:`\frac12\|\cdot\|_q^2` is :math:`\frac12\|\cdot\|_p^2`, :math:`p = q/(q-1)`, and
    :math:`(c\,\phi)^*(A) = c\,\phi^*(A/c)`, we get :math:`f^*(A) = \frac{q-1}{2}\|A\|_p^2`,
    hence (exact link)

    .. math:: W = (q-1)\,\|A\|_p^{2-p}\,\mathrm{sign}(A)\odot|A|^{p-1}.

    **Erratum.** The paper's simplified update :math:`W_t = A_t / \|A_t\|_p^{p-2}`
    (``simplified=True``) drops the element-wise power :math:`|A|^{p-1}` and the factor
    :math:`q-1`; it equals the exact link only at :math:`q = p = 2` (where both are
    :math:`W = A`). (The paper's first form, :math:`-\eta\theta_t/\|\theta_t\|_p^{p-2}` with
    :math:`A_t = -\eta\theta_t`, also differs from its recursive form by
    :math:`\eta^{p-2}`.)

    Parameters
    ----------
    A : ndarray, any shape
        :math:`A_t = -\eta\sum_{i \le t}\nabla\ell(W_{i-1})`.
    q : float
        :math:`1 < q \le 2`.
    simplified : bool
        Return the paper's simplified form instead of the exact link.

    Returns
    -------
    ndarray, shape ``A.shape``
    """
    A = _array(A, "A")
    q = _q(q)
    # p = q / (q - 1)
    p = q / (q - 1.0)
    m = float(np.max(np.abs(A)))
    if m == 0.0:
        return np.zeros_like(A)
    # ||A||_p, computed as m ||A/m||_p to avoid overflow of |A|^p
    normp = m * float(np.sum((np.abs(A) / m) ** p)) ** (1.0 / p)
    if simplified:
        # W = A / ||A||_p^{p-2}     (paper's form)
        return A / normp ** (p - 2.0)
    # W = (q-1) ||A||_p^{2-p} sign(A) |A|^{p-1}
    return (q - 1.0) * normp ** (2.0 - p) * np.sign(A) * np.abs(A) ** (p - 1.0)
