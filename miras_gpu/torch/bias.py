"""Attentional biases in torch: the twin of :mod:`miras_ref.bias` (Sec 3, Def 3.1; Sec 5.1).

Each bias class of :mod:`miras_ref.bias` maps (in :data:`BIAS_GRADS`) to a function
``grad(bias, y, v, delta)`` returning ``∇_y L(y; v)`` for ``y, v [..., d_v]``; the memory's
VJP turns it into the parameter gradient. ``delta`` is already broadcastable against ``y``:
``[..., 1]`` (one threshold per token) or ``[..., d_v]`` (channel-wise), or ``None``.
The smooth Sign/|·| of Remark 5 use the constants stored on the bias object.
"""

from __future__ import annotations

import torch

from miras_ref import bias as ref

from .memory import lookup

_TINY = 1e-12  # as miras_ref.bias._TINY


def smooth_sign(x, sharpness):
    """Remark 5: ``Sign(x) ≈ tanh(a x)``."""
    return torch.tanh(sharpness * x)


def smooth_abs(x, eps):
    """Remark 5: ``|x| ≈ sqrt(x² + ε)``."""
    return torch.sqrt(x * x + eps)


def _need_delta(delta):
    if delta is None:
        raise ValueError("delta is required by this attentional bias")
    return delta


def _is_channelwise(delta, y) -> bool:
    return delta.ndim == y.ndim and delta.shape[-1] == y.shape[-1] and y.shape[-1] > 1


def _norm(e):
    return torch.linalg.vector_norm(e, dim=-1, keepdim=True)


def dot_grad(bias, y, v, delta=None):
    """Dot-product (Hebbian): ``∇_y -⟨y, v⟩ = -v``."""
    return torch.broadcast_to(-v, y.shape)


def l2_grad(bias, y, v, delta=None):
    """ℓ2 (Eq 9): ``y - v``."""
    return y - v


def lp_grad(bias, y, v, delta=None):
    """ℓp (Eq 11): ``p Sign(e) |e|^{p-1}``; smooth: ``p tanh(a e) (e² + ε)^{(p-1)/2}``."""
    e = y - v
    if bias.smooth:
        return bias.p * smooth_sign(e, bias.sharpness) * smooth_abs(e, bias.eps) ** (bias.p - 1)
    return bias.p * torch.sign(e) * e.abs() ** (bias.p - 1)


def l1_grad(bias, y, v, delta=None):
    """ℓ1 (Eq 12): ``Sign(e)`` (smooth: ``tanh(a e)``)."""
    e = y - v
    return smooth_sign(e, bias.sharpness) if bias.smooth else torch.sign(e)


def huber_coordinate_grad(bias, y, v, delta=None):
    """Coordinate-wise Huber (Eq 14): ``e`` where ``|e| <= δ``, else ``δ Sign(e)``."""
    e, d = y - v, _need_delta(delta)
    return torch.where(e.abs() <= d, e, d * torch.sign(e))


def huber_norm_grad(bias, y, v, delta=None):
    """ℓ2-norm Huber (Eq 15): ``e`` if ``‖e‖ <= δ`` else ``δ e / ‖e‖``."""
    e, d = y - v, _need_delta(delta)
    if _is_channelwise(d, y):
        raise ValueError("delta must be one value per token for the norm Huber bias")
    n = _norm(e)
    return torch.where(n <= d, e, d * e / n.clamp_min(_TINY))


def huber_mixture_grad(bias, y, v, delta=None):
    """Yaad's mixture (Eq 16): ``∇ℓ2 = e`` if ``‖e‖ <= δ`` (per coordinate for a
    channel-wise δ), else ``δ ∇ℓ1 = δ Sign(e)``."""
    e, d = y - v, _need_delta(delta)
    small = e.abs() <= d if _is_channelwise(d, y) else _norm(e) <= d
    sign = smooth_sign(e, bias.sharpness) if bias.smooth else torch.sign(e)
    return torch.where(small, e, d * sign)


def value_shift_grad(bias, y, v, delta=None):
    """Robust to value shifts (Eq 17): ``e + Δ e / ‖e‖``."""
    e, d = y - v, _need_delta(delta)
    return e + d * e / _norm(e).clamp_min(_TINY)


BIAS_GRADS = {
    ref.DotProductBias: dot_grad,
    ref.L2Bias: l2_grad,
    ref.LpBias: lp_grad,
    ref.L1Bias: l1_grad,
    ref.HuberCoordinateBias: huber_coordinate_grad,
    ref.HuberNormBias: huber_norm_grad,
    ref.HuberMixtureBias: huber_mixture_grad,
    ref.ValueShiftRobustBias: value_shift_grad,
}


def grad(bias, y: torch.Tensor, v: torch.Tensor, delta=None) -> torch.Tensor:
    """``∇_y L(y; v)`` of any :mod:`miras_ref.bias` class."""
    return lookup(BIAS_GRADS, bias, "bias")(bias, y, v, delta)
