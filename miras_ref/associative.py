"""Associative memory, its objective and its simplest learning rules (Eq 3-5, 8, 9).

Single-step functions written exactly as the paper prints them (after fixing the matrix
orientation to ``W in R^{d_v x d_k}``), used by the tutorials and checked in
``tests/test_associative.py`` against the general machinery (:func:`miras_ref.scan`) and
against finite differences.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_array, as_scalar


def associative_objective(memory, params, bias, keys, values, delta=None):
    """Eq 4: the attentional bias ``L(M(W, K); V) = Σ_i ℓ(W; k_i, v_i)`` over a set of pairs.

    Parameters
    ----------
    memory : a memory architecture from :mod:`miras_ref.memory`
    params : dict of arrays (the memory's own shapes, no batch axes)
    bias : an attentional bias from :mod:`miras_ref.bias`
    keys : array ``[N, d_k]``; values : array ``[N, d_v]``

    Returns
    -------
    float
    """
    keys, values = as_array(keys, "keys", 2), as_array(values, "values", 2)
    return float(np.sum(bias.loss(memory.forward(params, keys), values, delta)))


def hebbian_update(M, k, v, alpha=1.0, eta=1.0):
    """Eq 3 / Eq 8: ``M_t = α M_{t-1} + η v_t k_t^T`` (``M [d_v, d_k]``).

    The dot-product bias ``ℓ = -⟨M k, v⟩`` with ℓ2 retention and one GD step.
    """
    M = as_array(M, "M", 2)
    alpha = as_scalar(alpha, "alpha", 0.0, 1.0, low_open=True)
    eta = as_scalar(eta, "eta", 0.0, None, low_open=True)
    return alpha * M + eta * np.outer(as_array(v, "v", 1), as_array(k, "k", 1))


def online_gd_step(memory, params, bias, k, v, eta, delta=None):
    """Eq 5: ``W_t = W_{t-1} - η_t ∇ℓ(W_{t-1}; k_t, v_t)`` for any memory and bias.

    ``params`` has the memory's own shapes (no batch axes); ``k [d_k]``, ``v [d_v]``.
    """
    eta = as_scalar(eta, "eta", 0.0, None, low_open=True)
    k, v = as_array(k, "k", 1), as_array(v, "v", 1)
    y = memory.forward(params, k[None])
    grad = memory.vjp(params, k[None], bias.grad(y, v[None], delta))
    return {n: params[n] - eta * grad[n] for n in params}


def delta_rule_update(M, k, v, eta, alpha=1.0):
    """Eq 9 (orientation fixed): ``M_t = α M_{t-1}(I - η k k^T) + η v k^T`` for ``M [d_v, d_k]``.

    The paper prints ``α(I - η_t k k^T) M_{t-1} + v k^T``; with ``M`` of shape ``[d_v, d_k]`` the
    projector acts on the key side, and the write is scaled by η (docs/paper-notes.md).
    """
    M = as_array(M, "M", 2)
    k, v = as_array(k, "k", 1), as_array(v, "v", 1)
    eta = as_scalar(eta, "eta", 0.0, None, low_open=True)
    alpha = as_scalar(alpha, "alpha", 0.0, 1.0, low_open=True)
    return alpha * M @ (np.eye(k.size) - eta * np.outer(k, k)) + eta * np.outer(v, k)
