"""Attentional biases: the second MIRAS choice (Sec 3, Def 3.1; Sec 5.1).

An attentional bias is the memory's inner objective ``ℓ(W; k, v) = L(M(W, k); v)``. Each class
gives the loss ``L(y; v)`` and its gradient with respect to the memory output ``y = M(W, k)``;
the gradient with respect to the memory parameters is then ``memory.vjp(W, k, grad)``.

All functions take ``y, v`` of shape ``[..., d_v]`` and return a loss ``[...]`` or a gradient
``[..., d_v]``. The threshold ``delta`` (Huber δ_t, robustness radius Δ) is ``[...]`` (one per
token and head) or ``[..., d_v]`` (channel-wise), always broadcastable against ``y``.

Smooth approximations (Remark 5): ``Sign(x) ≈ tanh(a x)`` and ``|x| ≈ sqrt(x² + ε)``; this
library uses ``a = 10`` and ``ε = 1e-6`` (docs/paper-notes.md) and exposes both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import as_scalar, check_range

SIGN_SHARPNESS = 10.0
ABS_EPS = 1e-6
_TINY = 1e-12


def smooth_sign(x: np.ndarray, sharpness: float = SIGN_SHARPNESS) -> np.ndarray:
    """Remark 5: ``Sign(x) ≈ tanh(a x)``."""
    return np.tanh(sharpness * x)


def smooth_abs(x: np.ndarray, eps: float = ABS_EPS) -> np.ndarray:
    """Remark 5: ``|x| ≈ sqrt(x² + ε)``."""
    return np.sqrt(x * x + eps)


def _delta(delta, y: np.ndarray, name: str = "delta") -> np.ndarray:
    """Broadcast a per-token ``[...]`` or channel-wise ``[..., d]`` threshold against ``y``."""
    if delta is None:
        raise ValueError(f"{name} is required by this attentional bias")
    d = np.asarray(delta, dtype=np.float64)
    check_range(d, name, 0.0, None, low_open=True)
    if d.ndim == 0 or d.ndim == y.ndim:  # scalar, or already aligned with y
        return d
    return d[..., None]  # one value per token: [...] -> [..., 1]


def _is_channelwise(delta: np.ndarray, y: np.ndarray) -> bool:
    return delta.ndim == y.ndim and delta.shape[-1] == y.shape[-1] and y.shape[-1] > 1


@dataclass(frozen=True)
class DotProductBias:
    """Dot-product similarity (Hebbian rule, Sec 4): ``ℓ = -⟨M(W, k), v⟩``.

    The paper writes ``-2⟨M k, v⟩`` next to an un-halved retention ``‖M - α M_{t-1}‖²``; with
    the library's ``1/(2η)`` retention the factor 2 is absorbed: one GD step gives
    ``M_t = α M_{t-1} + η v k^T`` (Eq 8 with ``η = 1``).
    """

    name: str = "dot"

    def loss(self, y, v, delta=None):
        return -np.sum(y * v, axis=-1)

    def grad(self, y, v, delta=None):
        # ∂/∂y of -⟨y, v⟩
        return -v + 0.0 * y


@dataclass(frozen=True)
class L2Bias:
    """ℓ2 regression (delta rule, Eq 9): ``ℓ = ½‖M(W, k) - v‖²``, gradient ``y - v``."""

    name: str = "l2"

    def loss(self, y, v, delta=None):
        return 0.5 * np.sum((y - v) ** 2, axis=-1)

    def grad(self, y, v, delta=None):
        return y - v


@dataclass(frozen=True)
class LpBias:
    """ℓp attentional bias (Eq 10-11): ``ℓ = ‖M(W, k) - v‖_p^p``, ``p >= 1``.

    Gradient (Eq 11): ``p Sign(e) ⊙ |e|^{p-1}`` with ``e = y - v``. With ``smooth=True`` the
    Remark 5 approximations are used: ``p tanh(a e) ⊙ (e² + ε)^{(p-1)/2}``; the matching loss
    is ``Σ (e² + ε)^{p/2}`` (its exact gradient replaces ``tanh(a e)`` by ``e/sqrt(e²+ε)``;
    both tend to the exact form as ``a -> ∞``, ``ε -> 0``).

    Parameters
    ----------
    p : float
        Norm exponent, ``p >= 1`` (Moneta uses 3).
    smooth : bool
        Use the smooth Sign/|·| of Remark 5 (default) or the exact non-smooth forms.
    """

    p: float = 3.0
    smooth: bool = True
    sharpness: float = SIGN_SHARPNESS
    eps: float = ABS_EPS
    name: str = "lp"

    def __post_init__(self):
        as_scalar(self.p, "p", 1.0, None)
        as_scalar(self.sharpness, "sharpness", 0.0, None, low_open=True)
        as_scalar(self.eps, "eps", 0.0, None, low_open=True)

    def loss(self, y, v, delta=None):
        e = y - v
        a = smooth_abs(e, self.eps) if self.smooth else np.abs(e)
        return np.sum(a**self.p, axis=-1)

    def grad(self, y, v, delta=None):
        """Eq 11: ``∂ℓ/∂y = p Sign(e) ⊙ |e|^{p-1}`` (Remark 5 if ``smooth``); ``[..., d_v]``."""
        e = y - v
        if self.smooth:
            # Eq 11 with Remark 5: p tanh(a e) (e² + ε)^{(p-1)/2}
            return self.p * smooth_sign(e, self.sharpness) * smooth_abs(e, self.eps) ** (self.p - 1)
        # Eq 11: p Sign(e) |e|^{p-1}
        return self.p * np.sign(e) * np.abs(e) ** (self.p - 1)


@dataclass(frozen=True)
class L1Bias:
    """ℓ1 bias, the "value-less" memory (Eq 12): ``ℓ = ‖M(W, k) - v‖_1``, gradient ``Sign(e)``.

    With ``smooth=True`` the gradient is ``tanh(a e)``, the exact gradient of the loss
    ``Σ log cosh(a e) / a``, which is what :meth:`loss` returns in that case.
    """

    smooth: bool = True
    sharpness: float = SIGN_SHARPNESS
    name: str = "l1"

    def loss(self, y, v, delta=None):
        e = y - v
        if self.smooth:
            a = self.sharpness
            # log cosh(a e) computed stably: |a e| + log1p(exp(-2|a e|)) - log 2
            ae = np.abs(a * e)
            return np.sum(ae + np.log1p(np.exp(-2 * ae)) - np.log(2.0), axis=-1) / a
        return np.sum(np.abs(e), axis=-1)

    def grad(self, y, v, delta=None):
        e = y - v
        # Eq 12: Sign(M(k) - v)
        return smooth_sign(e, self.sharpness) if self.smooth else np.sign(e)


def huber(a: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Huber function (Eq 13): ``½a²`` if ``|a| <= δ`` else ``δ(|a| - ½δ)``."""
    absa = np.abs(a)
    return np.where(absa <= delta, 0.5 * a * a, delta * (absa - 0.5 * delta))


@dataclass(frozen=True)
class HuberCoordinateBias:
    """Coordinate-wise Huber bias (Eq 13-14): ``ℓ = Σ_j H_δ(M(W, k)_j - v_j)``.

    Gradient: ``e ⊙ I(|e| <= δ) + δ Sign(e) ⊙ I(|e| > δ)``, i.e. ``clip(e, -δ, δ)``.
    """

    name: str = "huber_coord"

    def loss(self, y, v, delta=None):
        return np.sum(huber(y - v, _delta(delta, y)), axis=-1)

    def grad(self, y, v, delta=None):
        e = y - v
        d = _delta(delta, y)
        # Eq 14: e ⊙ I(|e| <= δ) + δ Sign(e) ⊙ I(|e| > δ)
        return np.where(np.abs(e) <= d, e, d * np.sign(e))


@dataclass(frozen=True)
class HuberNormBias:
    """ℓ2-norm Huber bias (Eq 15): ``ℓ = H_δ(‖M(W, k) - v‖₂)``.

    Gradient: ``e`` if ``‖e‖ <= δ`` else ``δ e / ‖e‖``. ``delta`` must be one value per token
    (shape ``[...]``), not channel-wise.
    """

    name: str = "huber_norm"

    def loss(self, y, v, delta=None):
        d = _delta(delta, y)
        if _is_channelwise(d, y):
            raise ValueError("delta must be one value per token for the norm Huber bias")
        n = np.linalg.norm(y - v, axis=-1, keepdims=True)
        return huber(n, d)[..., 0]

    def grad(self, y, v, delta=None):
        e = y - v
        d = _delta(delta, y)
        if _is_channelwise(d, y):
            raise ValueError("delta must be one value per token for the norm Huber bias")
        n = np.linalg.norm(e, axis=-1, keepdims=True)
        # Eq 15: e if ‖e‖ <= δ else δ e / ‖e‖
        return np.where(n <= d, e, d * e / np.maximum(n, _TINY))


@dataclass(frozen=True)
class HuberMixtureBias:
    """Smooth-mixture Huber bias of Yaad (Eq 16).

    The memory takes an ℓ2 step when the error is small and a δ-scaled ℓ1 step otherwise:
    gradient ``∇ℓ2 = e`` if ``‖e‖ <= δ`` else ``δ ∇ℓ1 = δ Sign(e)``. It is the gradient of the
    piecewise loss ``½‖e‖²`` / ``δ‖e‖₁`` (what :meth:`loss` returns).

    With a per-token ``delta [...]`` the test is on ``‖e‖₂`` (Eq 16). With a channel-wise
    ``delta [..., d]`` (Yaad's channel-wise δ_t, Sec 5.4) the test is made per coordinate,
    ``|e_j| <= δ_j`` (docs/paper-notes.md). ``smooth=True`` uses ``tanh(a e)`` for Sign.
    """

    smooth: bool = True
    sharpness: float = SIGN_SHARPNESS
    name: str = "huber_mix"

    def _small(self, e, d):
        if _is_channelwise(d, e):
            return np.abs(e) <= d
        return np.linalg.norm(e, axis=-1, keepdims=True) <= d

    def loss(self, y, v, delta=None):
        e = y - v
        d = _delta(delta, y)
        return np.sum(np.where(self._small(e, d), 0.5 * e * e, d * np.abs(e)), axis=-1)

    def grad(self, y, v, delta=None):
        e = y - v
        d = _delta(delta, y)
        sign = smooth_sign(e, self.sharpness) if self.smooth else np.sign(e)
        # Eq 16: ∇ℓ2 if ‖M(k) - v‖ <= δ, else δ ∇ℓ1
        return np.where(self._small(e, d), e, d * sign)


@dataclass(frozen=True)
class ValueShiftRobustBias:
    """Memory robust to value shifts (Eq 17): ``max_{‖δv‖<=Δ} ½‖M(W, k) - (v + δv)‖²``.

    Closed form: ``½‖e‖² + Δ‖e‖ + ½Δ²`` with maximiser ``δv* = -Δ e/‖e‖`` (``e = y - v``);
    gradient ``e + Δ e/‖e‖``. ``delta`` is the radius Δ, one per token.
    """

    name: str = "value_shift"

    def loss(self, y, v, delta=None):
        d = _delta(delta, y)
        n = np.linalg.norm(y - v, axis=-1, keepdims=True)
        return (0.5 * n**2 + d * n + 0.5 * d**2)[..., 0]

    def grad(self, y, v, delta=None):
        e = y - v
        d = _delta(delta, y)
        n = np.linalg.norm(e, axis=-1, keepdims=True)
        # ∇ = e + Δ e / ‖e‖
        return e + d * e / np.maximum(n, _TINY)

    @staticmethod
    def optimal_perturbation(y, v, delta):
        """The maximiser of Eq 17: ``δv* = Δ (v - M(W, k)) / ‖M(W, k) - v‖``."""
        e = np.asarray(y, dtype=np.float64) - np.asarray(v, dtype=np.float64)
        n = np.linalg.norm(e, axis=-1, keepdims=True)
        return -_delta(delta, e) * e / np.maximum(n, _TINY)


BIASES = {
    "dot": DotProductBias,
    "l2": L2Bias,
    "lp": LpBias,
    "l1": L1Bias,
    "huber_coord": HuberCoordinateBias,
    "huber_norm": HuberNormBias,
    "huber_mix": HuberMixtureBias,
    "value_shift": ValueShiftRobustBias,
}
