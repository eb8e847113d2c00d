"""Softmax attention as an associative memory (Eq 1-2; Sec 4 "Attention").

Attention is the *non-parametric* solution of the ℓ2 attentional bias: the memory keeps every
pair ``(k_j, v_j)`` and answers a query with the Nadaraya-Watson estimator, a softmax-weighted
average of the stored values.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_array


def qkv_projections(x, w_q, w_k, w_v):
    """Eq 1: ``Q = x W_Q``, ``K = x W_K``, ``V = x W_V``.

    Parameters
    ----------
    x : array ``[..., N, d_in]``
    w_q, w_k, w_v : array ``[d_in, d]``

    Returns
    -------
    (Q, K, V) : arrays ``[..., N, d]``
    """
    x = as_array(x, "x")
    return tuple(x @ as_array(w, name, 2) for w, name in ((w_q, "w_q"), (w_k, "w_k"),
                                                          (w_v, "w_v")))


def causal_softmax_attention(q, k, v, scale=None):
    """Eq 2: ``y_i = Σ_{j<=i} exp(q_i·k_j/√d) v_j / Σ_{l<=i} exp(q_i·k_l/√d)``.

    Parameters
    ----------
    q, k : array ``[..., N, d]``
    v : array ``[..., N, d_v]``
    scale : float, optional
        Score scale, default ``1/√d``.

    Returns
    -------
    y : ndarray ``[..., N, d_v]``
    """
    q, k, v = as_array(q, "q"), as_array(k, "k"), as_array(v, "v")
    if q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"q and k must have equal shapes and v the same [..., N], got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    n = q.shape[-2]
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.einsum("...id,...jd->...ij", q, k) * scale
    scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
    # softmax over j <= i, shifted by the row maximum for stability
    w = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return np.einsum("...ij,...jd->...id", w / w.sum(axis=-1, keepdims=True), v)


def attention(q, k, v, initial_state=None, output_final_state=False, scale=None):
    """Softmax attention through the MIRAS sequence-op API (``[B, T, H, d]`` layout).

    The memory is the set of pairs ``M_t = M_{t-1} ∪ {(k_t, v_t)}`` (Table 1, Transformer);
    ``initial_state = {"K": [B, H, S, d_k], "V": [B, H, S, d_v]}`` is a cache of earlier pairs.
    Returns ``(y [B, T, H, d_v], final_state)``.
    """
    from .recurrent import scan
    from .zoo import softmax_attention

    return scan(softmax_attention(np.shape(q)[-1], np.shape(v)[-1], scale), q, k, v, None,
                initial_state, output_final_state)
