"""Retention gates: the third MIRAS choice (Sec 3.3, Sec 5.2).

A retention gate is the regulariser ``Ret_t(W, W_{t-1}) = (1/η_t) D_t(W, W_{t-1}) +
(1/α_t) G_t(W)`` of the Learning-Retaining viewpoint (or ``R_t`` of the FTRL viewpoint). With
the linearised bias ``ℓ̃_t(W) = ⟨W - W_{t-1}, g_t⟩`` each gate has a closed-form update; this
module gives that update *and* the objective it solves, so ``tests/test_retention.py`` checks
every closed form against a numeric argmin (scipy).

Every gate keeps a state ``Z`` per memory parameter and reads the memory through a link
``W = ψ(Z)``:

* most gates are *dual-linear*: ``Z_t = α_t Z_{t-1} - η_t g_t`` with a fixed link ψ
  (identity for ℓ2, ``A/‖A‖^{q-2}`` for ℓq, ``c·softmax`` for KL, sigmoid for Bregman,
  soft thresholding for FTRL elastic net). Their chunk-parallel form (Eq 28-32) is exact
  algebra inside a chunk, with ψ applied when the memory is read;
* the f-divergence gate (Eq 18) and the Learning-Retaining elastic net (Eq 22) are not, and
  have no chunked form.

Parametrisation: every gate takes a learning rate ``η_t > 0`` and a retention ``α_t in (0, 1]``
(decoupled, as in Yaad/Memora, Sec 5.3); the docstrings give the map to the paper's
coefficients. ``α_t = 1`` means no global retention ("-" in Table 1). Arguments named
``own_ndim`` count the parameter's own axes (2 for a matrix, 1 for a vector); the leading axes
are batch axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ._checks import as_scalar

_TINY = 1e-300


def _own_axes(own_ndim: int) -> tuple[int, ...]:
    return tuple(range(-own_ndim, 0))


def _norm(a: np.ndarray, p: float, own_ndim: int) -> np.ndarray:
    """Entry-wise ``‖A‖_p`` over the parameter's own axes, kept for broadcasting."""
    return np.sum(np.abs(a) ** p, axis=_own_axes(own_ndim), keepdims=True) ** (1.0 / p)


def soft_threshold(z: np.ndarray, gamma) -> np.ndarray:
    """Soft thresholding ``S_γ(z) = sign(z) max(|z| - γ, 0)`` (Eq 22)."""
    return np.sign(z) * np.maximum(np.abs(z) - gamma, 0.0)


def smooth_soft_threshold(z: np.ndarray, gamma) -> np.ndarray:
    """The paper's smooth surrogate of ``S_γ`` (Sec 5.2 variant 2): ``|z| arctan(z/γ) / (π/2)``.

    Note: for ``|z| >> γ`` it equals ``z - sign(z) 2γ/π``, a shrinkage by ``2γ/π`` rather than
    γ (docs/paper-notes.md).
    """
    return np.abs(z) * np.arctan(z / gamma) / (np.pi / 2)


class RetentionGate:
    """Base class. Subclasses define :meth:`link`, :meth:`update` and :meth:`objective`."""

    name: ClassVar[str] = "base"
    #: ``Z_t = α Z_{t-1} - η g`` with a fixed link (chunkable)
    dual_linear: ClassVar[bool] = True
    #: take the gradient at ``ψ(α_t Z_{t-1})`` (scaled-prior ℓ2) instead of ``ψ(Z_{t-1})``
    decayed_anchor: ClassVar[bool] = False

    def link(self, z: np.ndarray, own_ndim: int) -> np.ndarray:
        """Memory weights ``W = ψ(Z)``."""
        return z

    def anchor(self, z: np.ndarray, alpha: np.ndarray, own_ndim: int) -> np.ndarray:
        """The weights at which the step's gradient is taken."""
        return self.link(alpha * z if self.decayed_anchor else z, own_ndim)

    def update(self, z, g, eta, alpha, own_ndim: int):
        """Dual-linear update ``Z_t = α_t Z_{t-1} - η_t g_t``."""
        return alpha * z - eta * g

    def check_gates(self, eta: np.ndarray, alpha: np.ndarray) -> None:
        """Validate gate values for this retention (overridden where α is constrained)."""


@dataclass(frozen=True)
class L2Retention(RetentionGate):
    """ℓ2 retention: local ``½‖W - W_{t-1}‖²`` plus global ``½‖W‖²`` (Titans, Sec 4).

    Update ``W_t = α_t W_{t-1} - η_t ∇ℓ(W_{t-1})`` solves (``anchor="previous"``)

    ``argmin_W ⟨W - W_{t-1}, g⟩ + α/(2η) ‖W - W_{t-1}‖² + (1-α)/(2η) ‖W‖²``,

    i.e. ``1/η_paper = α/η`` and ``1/α_paper = (1-α)/η``. With ``anchor="decayed"`` the gate is
    the scaled prior ``Ret = 1/(2η)‖W - α W_{t-1}‖²`` of Sec 4 (Mamba2, Gated DeltaNet): the
    loss is linearised at ``α W_{t-1}`` and ``W_t = α W_{t-1} - η ∇ℓ(α W_{t-1})``. The two
    coincide for gradients that do not depend on W (dot-product bias).
    """

    anchor_at: str = "previous"
    name: ClassVar[str] = "l2"

    def __post_init__(self):
        if self.anchor_at not in ("previous", "decayed"):
            raise ValueError(f"anchor_at must be 'previous' or 'decayed', got {self.anchor_at!r}")

    @property
    def decayed_anchor(self) -> bool:  # type: ignore[override]
        return self.anchor_at == "decayed"

    def objective(self, w, w_prev, g, eta, alpha):
        """Learning-Retaining objective (scalar) whose argmin is :meth:`update`."""
        if self.decayed_anchor:
            prior = alpha * w_prev
            return np.sum((w - prior) * g) + np.sum((w - prior) ** 2) / (2 * eta)
        return (np.sum((w - w_prev) * g) + alpha / (2 * eta) * np.sum((w - w_prev) ** 2)
                + (1 - alpha) / (2 * eta) * np.sum(w**2))


@dataclass(frozen=True)
class LqRetention(RetentionGate):
    """ℓq memory stability (Sec 5.2 variant 4; Moneta's gate, Eq 24).

    FTRL with ``R(W) = 1/(2(q-1)) ‖W‖_q²``: accumulate ``A_t = α_t A_{t-1} - η_t g_t`` and read

    * ``link="exact"``: ``W = ∇R*(A) = (q-1) ‖A‖_p^{2-p} sign(A) |A|^{p-1}``, ``p = q/(q-1)``,
      the argmin of ``-⟨W, A⟩ + R(W)`` for ``1 < q <= 2``;
    * ``link="simplified"``: the paper's ``W = A / ‖A‖_q^{q-2}`` (Eq 24, Moneta uses q = 4),
      which equals the exact link only at q = 2 (docs/paper-notes.md).

    The norm is taken over each parameter matrix (per batch and head). α_t < 1 adds Moneta's
    ℓ2 retention ``1/β ‖W‖²`` on the accumulator.
    """

    q: float = 4.0
    link_kind: str = "simplified"
    name: ClassVar[str] = "lq"

    def __post_init__(self):
        if self.link_kind not in ("exact", "simplified"):
            raise ValueError(f"link_kind must be 'exact' or 'simplified', got {self.link_kind!r}")
        if self.link_kind == "exact":
            as_scalar(self.q, "q", 1.0, 2.0, low_open=True)
        else:
            as_scalar(self.q, "q", 1.0, None, low_open=True)

    def link(self, z, own_ndim):
        q = self.q
        if self.link_kind == "simplified":
            # Eq 24: W = A / ‖A‖_q^{q-2}
            return z / np.maximum(_norm(z, q, own_ndim), 1e-30) ** (q - 2)
        p = q / (q - 1)
        # W = (q-1) ‖A‖_p^{2-p} sign(A) |A|^{p-1}
        n = np.maximum(_norm(z, p, own_ndim), 1e-30)
        return (q - 1) * n ** (2 - p) * np.sign(z) * np.abs(z) ** (p - 1)

    def link_objective(self, w, a):
        """``-⟨W, A⟩ + 1/(2(q-1)) ‖W‖_q²`` whose argmin is the exact link."""
        return -np.sum(w * a) + np.sum(np.abs(w) ** self.q) ** (2 / self.q) / (2 * (self.q - 1))


@dataclass(frozen=True)
class KLRetention(RetentionGate):
    """KL retention on the scaled simplex (Eq 19-21; Memora, Eq 27).

    State: logits ``L``; memory ``W = c · softmax(L)`` over ``axis`` (``None``: all entries of a
    parameter, the exact constraint ``‖W‖₁ = c`` of Eq 20; ``-1``: each row, "normalised per
    slice"). Update ``L_t = α_t L_{t-1} - η_t g_t`` is Eq 21 with ``α = 1 - λ``, ``η = η'``:
    since ``log(c softmax(L)) = L + const`` and softmax ignores constants, Eq 21 is *linear*
    in the logits. It solves

    ``argmin_{W >= 0, ΣW = c} ⟨W - W_{t-1}, g⟩ + α/η KL(W ‖ W_{t-1}) + (1-α)/η Σ W log W``.
    """

    c: float = 1.0
    axis: int | None = -1
    name: ClassVar[str] = "kl"

    def __post_init__(self):
        as_scalar(self.c, "c", 0.0, None, low_open=True)
        if self.axis is not None and (isinstance(self.axis, bool) or
                                      not isinstance(self.axis, int) or self.axis >= 0):
            raise ValueError(f"axis must be None or a negative int (a parameter axis), "
                             f"got {self.axis!r}")

    def _axes(self, own_ndim):
        return _own_axes(own_ndim) if self.axis is None else (self.axis,)

    def link(self, z, own_ndim):
        axes = self._axes(own_ndim)
        # W = c · softmax(L), computed stably
        zmax = np.max(z, axis=axes, keepdims=True)
        e = np.exp(z - zmax)
        return self.c * e / np.sum(e, axis=axes, keepdims=True)

    def objective(self, w, w_prev, g, eta, alpha):
        wl = np.log(np.maximum(w, _TINY))
        return (np.sum((w - w_prev) * g) + alpha / eta * np.sum(w * (wl - np.log(w_prev)))
                + (1 - alpha) / eta * np.sum(w * wl))


def _f_divergence(kind: str):
    """``(f, f', g = (f')^{-1}, domain upper bound of g's argument)`` for Eq 18."""
    if kind == "kl":
        # f(τ) = τ log τ, f'(τ) = log τ + 1, g(u) = exp(u - 1)
        return (lambda t: t * np.log(t), lambda u: np.exp(u - 1.0), np.inf)
    if kind == "burg":
        # f(τ) = τ - 1 - log τ, f'(τ) = 1 - 1/τ, g(u) = 1 / (1 - u) for u < 1
        return (lambda t: t - 1.0 - np.log(t), lambda u: 1.0 / (1.0 - u), 1.0)
    raise ValueError(f"divergence must be 'kl' or 'burg', got {kind!r}")


@dataclass(frozen=True)
class FDivergenceRetention(RetentionGate):
    """f-divergence retention on the scaled simplex (Eq 18).

    ``W_t = W_{t-1} ⊙ g(-ζ_t - η_t ∇ℓ)`` with ``g = (f')^{-1}`` and ζ_t solved (scipy ``brentq``)
    so that ``ΣW_t = c`` per parameter. It solves
    ``argmin_{W >= 0, ΣW = c} ⟨W - W_{t-1}, g⟩ + (1/η) Σ W'_{jl} f(W_{jl}/W'_{jl})``.
    ``divergence="kl"`` is ``f(τ) = τ log τ``; ``"burg"`` is ``f(τ) = τ - 1 - log τ``.
    Requires ``α_t = 1`` (no global term). Not dual-linear: no chunked form.
    """

    divergence: str = "kl"
    c: float = 1.0
    name: ClassVar[str] = "fdiv"
    dual_linear: ClassVar[bool] = False

    def __post_init__(self):
        _f_divergence(self.divergence)
        as_scalar(self.c, "c", 0.0, None, low_open=True)

    def check_gates(self, eta, alpha):
        if np.any(alpha != 1.0):
            raise ValueError("alpha must be 1 for the f-divergence retention gate (Eq 18)")

    def update(self, z, g, eta, alpha, own_ndim):
        from scipy.optimize import brentq

        _, ginv, umax = _f_divergence(self.divergence)
        if np.any(z <= 0):
            raise ValueError("the f-divergence gate needs a strictly positive memory state")
        z, g = np.broadcast_arrays(z, g)
        eta = np.broadcast_to(eta, z.shape)
        shape = z.shape
        own = shape[len(shape) - own_ndim:]
        zs = z.reshape(-1, *own)
        us = (-eta * g).reshape(-1, *own)
        out = np.empty_like(zs)
        for i in range(zs.shape[0]):
            u = us[i]

            # Eq 18: choose ζ with Σ W_{t-1} ⊙ g(u - ζ) = c
            def excess(zeta, u=u, w=zs[i]):
                return np.sum(w * ginv(u - zeta)) - self.c

            lo = np.max(u) - umax + 1e-12 if np.isfinite(umax) else np.max(u) - 50.0
            while np.isinf(umax) and excess(lo) < 0:
                lo -= 50.0
            hi = np.max(u) + 1.0
            while excess(hi) > 0:
                hi = hi + 2 * (hi - lo)
            zeta = brentq(excess, lo, hi, xtol=1e-15, rtol=1e-15, maxiter=500)
            out[i] = zs[i] * ginv(u - zeta)
        return out.reshape(shape)

    def objective(self, w, w_prev, g, eta, alpha=1.0):
        f, _, _ = _f_divergence(self.divergence)
        return np.sum((w - w_prev) * g) + np.sum(w_prev * f(np.maximum(w, _TINY) / w_prev)) / eta


@dataclass(frozen=True)
class ElasticNetRetention(RetentionGate):
    """Elastic net in the Learning-Retaining view (Eq 22): hard and soft forgetting.

    ``W_t = S_γ(α_t W_{t-1} - η_t g_t)``, which solves
    ``argmin ⟨W - W_{t-1}, g⟩ + α/(2η)‖W - W_{t-1}‖² + (1-α)/(2η)‖W‖² + (γ/η)‖W‖₁``,
    i.e. the paper's ``λ = α``, ``ζ = η`` and ``1/α_paper = γ/η``. ``smooth=True`` uses the
    arctan surrogate of ``S_γ``. Not dual-linear: no chunked form.
    """

    gamma: float = 0.01
    smooth: bool = False
    name: ClassVar[str] = "elastic"
    dual_linear: ClassVar[bool] = False

    def __post_init__(self):
        as_scalar(self.gamma, "gamma", 0.0, None, low_open=True)

    def update(self, z, g, eta, alpha, own_ndim):
        shrink = smooth_soft_threshold if self.smooth else soft_threshold
        # Eq 22: W_t = S_γ(λ W_{t-1} - ζ ∇ℓ)
        return shrink(alpha * z - eta * g, self.gamma)

    def objective(self, w, w_prev, g, eta, alpha):
        return (np.sum((w - w_prev) * g) + alpha / (2 * eta) * np.sum((w - w_prev) ** 2)
                + (1 - alpha) / (2 * eta) * np.sum(w**2) + self.gamma / eta * np.sum(np.abs(w)))


@dataclass(frozen=True)
class ElasticNetFTRLRetention(RetentionGate):
    """Elastic net in the FTRL view (Eq 23): ``A_t = α_t A_{t-1} - η_t g_t``, ``W_t = S_γ(A_t)``.

    ``S_γ(A)`` is the argmin of ``-⟨W, A⟩ + ½‖W‖² + γ‖W‖₁`` (the paper's threshold ``η/α``
    is ``γ``; its regulariser needs the factor ½, docs/paper-notes.md).
    """

    gamma: float = 0.01
    smooth: bool = False
    name: ClassVar[str] = "elastic_ftrl"

    def __post_init__(self):
        as_scalar(self.gamma, "gamma", 0.0, None, low_open=True)

    def link(self, z, own_ndim):
        shrink = smooth_soft_threshold if self.smooth else soft_threshold
        return shrink(z, self.gamma)

    def link_objective(self, w, a):
        return -np.sum(w * a) + 0.5 * np.sum(w**2) + self.gamma * np.sum(np.abs(w))


@dataclass(frozen=True)
class SigmoidBregmanRetention(RetentionGate):
    """Bregman retention with the sigmoid mirror map (Sec 5.2 variant 5).

    ``φ(W) = Σ W log W + (1-W) log(1-W)`` so ``φ' = logit`` and ``g = σ``. State: logits
    ``z``; ``W = σ(z) in (0, 1)``; update ``z_t = α_t z_{t-1} - η_t g_t``, i.e.
    ``W_t = σ(α ln(W_{t-1}/(1-W_{t-1})) - η ∇ℓ)``, which solves
    ``argmin ⟨W - W_{t-1}, g⟩ + (α/η) D_φ(W, W_{t-1}) + ((1-α)/η) φ(W)``.
    """

    name: ClassVar[str] = "sigmoid_bregman"

    def link(self, z, own_ndim):
        # σ(z) without overflow or cancellation: 1/(1+e) for z >= 0, e/(1+e) for z < 0, with
        # e = exp(-|z|) (½(1 + tanh(z/2)) loses all digits for z << 0 and returns 0 at z < -38).
        # Where float64 rounds σ(z) to 0 or 1 (z < -745, z > 36.7) the nearest value strictly
        # inside (0, 1) is returned, so W stays in the open interval as Sec 5.2 states.
        e = np.exp(-np.abs(z))
        w = np.where(z >= 0, 1.0, e) / (1.0 + e)
        return np.clip(w, np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0))

    @staticmethod
    def phi(w):
        return np.sum(w * np.log(w) + (1 - w) * np.log(1 - w))

    def objective(self, w, w_prev, g, eta, alpha):
        logit_prev = np.log(w_prev / (1 - w_prev))
        bregman = self.phi(w) - self.phi(w_prev) - np.sum(logit_prev * (w - w_prev))
        return np.sum((w - w_prev) * g) + alpha / eta * bregman + (1 - alpha) / eta * self.phi(w)


RETENTIONS = {
    "l2": L2Retention,
    "lq": LqRetention,
    "kl": KLRetention,
    "fdiv": FDivergenceRetention,
    "elastic": ElasticNetRetention,
    "elastic_ftrl": ElasticNetFTRLRetention,
    "sigmoid_bregman": SigmoidBregmanRetention,
}
