"""Retention gates in torch: the twin of :mod:`miras_ref.retention` (Sec 3.3, Sec 5.2).

Each gate keeps a state ``Z`` per memory parameter, read through a link ``W = ψ(Z)``. The
dual-linear gates update ``Z_t = α_t Z_{t-1} - η_t g_t`` and differ only in ψ:

==========================  =====================================================
gate                        link ``ψ(Z)``
==========================  =====================================================
``L2Retention``             identity (both anchors: ``previous`` and ``decayed``)
``LqRetention``             ``A / ‖A‖_q^{q-2}`` (Eq 24) or the exact p-norm link
``KLRetention``             ``c · softmax(L)`` over a row or the whole parameter (Eq 21)
``ElasticNetFTRLRetention`` soft thresholding ``S_γ`` or its arctan surrogate (Eq 23)
``SigmoidBregmanRetention`` ``σ(z)`` (Sec 5.2 variant 5)
==========================  =====================================================

``ElasticNetRetention`` (Eq 22, Learning-Retaining view) is not dual-linear: its update is
``W_t = S_γ(α_t W_{t-1} - η_t g_t)`` with an identity link; it runs in the recurrent scan only.
``FDivergenceRetention`` (Eq 18) needs a root solve per memory slot and is not implemented in
torch yet (a clear ``ValueError``; use the ``numpy`` backend).

Norms are over each parameter's own axes (``own_ndim`` trailing axes), per batch and head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from miras_ref import retention as ref

from .memory import lookup


def _own_axes(own_ndim: int) -> tuple[int, ...]:
    return tuple(range(-own_ndim, 0))


def _scaled_norm(a, p: float, own_ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry-wise ``‖A‖_p = m · n`` over the parameter's own axes, kept for broadcasting:
    ``m = max|A|``, a constant for autograd, and ``n = ‖A/m‖_p >= 1``; ``m = n = 1`` where
    ``A = 0`` (:func:`root`).

    ``Σ|A|^p`` itself overflows float32 once ``|A|`` passes ``1e38^{1/p}`` (1e9 for ``p = 4``),
    which Moneta's accumulator reaches on long sequences, and so would the powers of ``‖A‖``
    in the links' gradients; the links below raise only ``m`` and ``n`` to powers. Gradients
    are exact: ``m · ‖A/m‖_p = ‖A‖_p`` for any constant ``m > 0``.
    """
    axes = _own_axes(own_ndim)
    m = a.detach().abs().amax(dim=axes, keepdim=True)
    m = torch.where(m > 0, m, torch.ones_like(m))
    return m, root(((a / m).abs() ** p).sum(dim=axes, keepdim=True), p)


def root(total: torch.Tensor, p: float) -> torch.Tensor:
    """``total^{1/p}``, and 1 where ``total = 0``, with finite gradients there.

    ``total = 0`` means ``A = 0``, where the ℓq links are 0 whatever the norm (miras_ref
    divides by ``max(‖A‖, 1e-30)^{q-2}``, a number float32 cannot hold); 1 keeps the link 0
    and its derivatives finite.
    """
    ok = total > 0
    return torch.where(ok, torch.where(ok, total, torch.ones_like(total)) ** (1.0 / p), 1.0)


def soft_threshold(z, gamma):
    """``S_γ(z) = sign(z) max(|z| - γ, 0)`` (Eq 22-23)."""
    return torch.sign(z) * (z.abs() - gamma).clamp_min(0.0)


def smooth_soft_threshold(z, gamma):
    """The paper's smooth surrogate of ``S_γ``: ``|z| arctan(z/γ) / (π/2)``."""
    return z.abs() * torch.atan(z / gamma) / (math.pi / 2)


def identity_link(ret, z, own_ndim):
    return z


def lq_link(ret, z, own_ndim):
    """ℓq (Sec 5.2 variant 4). ``simplified``: ``W = A / ‖A‖_q^{q-2}`` (Eq 24); ``exact``:
    ``W = (q-1) ‖A‖_p^{2-p} sign(A) |A|^{p-1}`` with ``p = q/(q-1)``. Both written with
    ``A = m Â``, ``‖A‖ = m n`` (:func:`_scaled_norm`)."""
    q = ret.q
    if ret.link_kind == "simplified":
        m, s_hat = lq_scale(ret, z, own_ndim)
        return (z / m) * s_hat  # s(A) A = (ŝ / m)(m Â) = ŝ Â
    p = q / (q - 1)
    m, n = _scaled_norm(z, p, own_ndim)
    # (q-1) (m n)^{2-p} sign(A) (m |Â|)^{p-1} = (q-1) m n^{2-p} sign(A) |Â|^{p-1}
    return (q - 1) * m * n ** (2 - p) * torch.sign(z) * (z / m).abs() ** (p - 1)


def lq_scale(ret, z, own_ndim):
    """The scale of the simplified ℓq link, ``ψ(A) = s(A) A`` with ``s(A) = ‖A‖_q^{2-q}``
    (Eq 24), one number per parameter, as the pair ``(m, ŝ)`` with ``s = ŝ / m``
    (:func:`lq_scale_of_norm`), each ``[..., 1, ..., 1]``."""
    m, n = _scaled_norm(z, ret.q, own_ndim)
    return m, lq_scale_of_norm(ret, m, n)


def lq_scale_of_norm(ret, m, n):
    """``ŝ = m^{3-q} n^{2-q}`` from ``‖A‖_q = m · n`` (``m`` a constant, :func:`_scaled_norm`;
    any shapes that broadcast), so that ``s(A) = ‖A‖_q^{2-q} = ŝ / m``.

    ``ψ(A) x = ŝ · (A x / m)``: both factors stay in float32's range for ``max|A|`` up to
    ``1e38^{1/(q-3)}``, while ``s`` itself underflows once ``max|A|`` passes ``1e45^{1/(q-2)}``
    (3e22 for ``q = 4``, which Moneta's first layer reaches after about 20,000 tokens of the
    GPU stress run).
    """
    return m ** (3 - ret.q) * n ** (2 - ret.q)


def scalar_link(ret) -> Callable | None:
    """``scale(ret, z, own_ndim) -> (m, ŝ)`` when the link is ``ψ(Z) = s(Z) Z`` with one
    number ``s(Z) = ŝ / m`` per parameter (the simplified ℓq link of Moneta, :func:`lq_scale`),
    else None.

    With such a link the chunked form reads in the dual form (``ψ(Z_t) x = s_t (Z_t x)``) and
    needs each token's state only for the number ``s_t``.
    """
    if isinstance(ret, ref.LqRetention) and ret.link_kind == "simplified":
        return lq_scale
    return None


def kl_link(ret, z, own_ndim):
    """KL (Eq 19-21): ``W = c · softmax(L)`` over ``ret.axis`` (``None``: the whole
    parameter, the exact ``‖W‖₁ = c`` of Eq 20)."""
    if ret.axis is None:
        flat = z.flatten(start_dim=z.ndim - own_ndim)
        return ret.c * torch.softmax(flat, dim=-1).reshape(z.shape)
    return ret.c * torch.softmax(z, dim=ret.axis)


def ftrl_link(ret, z, own_ndim):
    """Elastic net, FTRL view (Eq 23): ``W = S_γ(A)`` (or the smooth surrogate)."""
    shrink = smooth_soft_threshold if ret.smooth else soft_threshold
    return shrink(z, ret.gamma)


def sigmoid_link(ret, z, own_ndim):
    """Sigmoid Bregman (Sec 5.2 variant 5): ``W = σ(z)``, written as miras_ref writes it."""
    return 0.5 * (1.0 + torch.tanh(0.5 * z))


def dual_linear_update(ret, z, g, eta, alpha, own_ndim):
    """``Z_t = α_t Z_{t-1} - η_t g_t``."""
    return alpha * z - eta * g


def elastic_update(ret, z, g, eta, alpha, own_ndim):
    """Eq 22: ``W_t = S_γ(α_t W_{t-1} - η_t g_t)`` (hard and soft forgetting)."""
    shrink = smooth_soft_threshold if ret.smooth else soft_threshold
    return shrink(alpha * z - eta * g, ret.gamma)


@dataclass(frozen=True)
class RetentionOps:
    link: Callable
    update: Callable = dual_linear_update
    #: ψ is the identity: the chunked form can read without forming per-token states
    identity_link: bool = False


RETENTION_OPS: dict[type, RetentionOps] = {
    ref.L2Retention: RetentionOps(identity_link, identity_link=True),
    ref.LqRetention: RetentionOps(lq_link),
    ref.KLRetention: RetentionOps(kl_link),
    ref.ElasticNetFTRLRetention: RetentionOps(ftrl_link),
    ref.SigmoidBregmanRetention: RetentionOps(sigmoid_link),
    ref.ElasticNetRetention: RetentionOps(identity_link, elastic_update, identity_link=True),
}


def ops_for(ret) -> RetentionOps:
    """The torch twin of a retention gate (``ValueError`` for the f-divergence gate)."""
    return lookup(RETENTION_OPS, ret, "retention")


def link(ret, z, own_ndim: int):
    """Memory weights ``W = ψ(Z)``."""
    return ops_for(ret).link(ret, z, own_ndim)


def anchor(ret, z, alpha, own_ndim: int):
    """The weights at which a step's gradient is taken: ``ψ(Z)``, or ``ψ(α Z)`` for the
    decayed-anchor ℓ2 gate (scaled prior; Mamba2, Gated DeltaNet)."""
    return link(ret, alpha * z if ret.decayed_anchor else z, own_ndim)


def update(ret, z, g, eta, alpha, own_ndim: int):
    """One step of the gate's state."""
    return ops_for(ret).update(ret, z, g, eta, alpha, own_ndim)
