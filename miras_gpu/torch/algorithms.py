"""Memory learning algorithms in torch: the twin of :mod:`miras_ref.algorithms` (Sec 4,
choice 4).

One recurrent step of each algorithm, vectorised over batch and heads. ``state`` is a dict of
tensors ``[B, H, *shape]`` (the retention gate's variables ``Z``, plus ``mom_<name>`` for
momentum), ``k [B, H, d_k]``, ``v [B, H, d_v]``, and the token's gates ``[B, H]`` or
``[B, H, D]`` (or element-wise). :data:`STEPS` maps each parametric algorithm class to its
step; :func:`closed_form_step`/:func:`closed_form_read` (Mesa) and :func:`attention`
(softmax attention, Eq 1-2) are the non-parametric ones.
"""

from __future__ import annotations

import math

import torch

from miras_ref import algorithms as ref
from miras_ref.bias import L2Bias
from miras_ref.memory import MatrixMemory
from miras_ref.retention import L2Retention

from . import bias as biases
from . import memory as memories
from . import retention as retentions


def own_ndims(config) -> dict[str, int]:
    """Number of own axes of each memory parameter (2 for a matrix)."""
    return {n: len(s) for n, s in config.memory.shapes.items()}


def memory_weights(config, z: dict) -> dict:
    """``W = ψ(Z)`` for each parameter."""
    return {n: retentions.link(config.retention, z[n], nd) for n, nd in own_ndims(config).items()}


def token_delta(delta, lead: int):
    """Shape the threshold δ to broadcast against ``y [*lead, N, d_v]``: per-token
    ``[*lead]`` -> ``[*lead, 1, 1]``, channel-wise ``[*lead, d_v]`` -> ``[*lead, 1, d_v]``."""
    if delta is None:
        return None
    return delta[..., None, None] if delta.ndim == lead else delta[..., None, :]


def bias_gradient(config, weights: dict, k, v, delta) -> dict:
    """``∇_W ℓ(W; k, v) = J_M(W, k)^T ∇_y L(M(W, k); v)`` for one token per ``[B, H]``."""
    x = k[..., None, :]
    y = memories.forward(config.memory, weights, x)
    dy = biases.grad(config.bias, y, v[..., None, :], token_delta(delta, 2))
    return memories.vjp(config.memory, weights, x, dy)


def gd_gradients(config, state, k, v, gates):
    """The GD gradient at the anchor ``ψ(Z_{t-1})`` (or ``ψ(α_t Z_{t-1})``)."""
    alpha = memories.gates_for(config.memory, gates["alpha"])
    own = own_ndims(config)
    anchor = {n: retentions.anchor(config.retention, state[n], alpha[n], nd)
              for n, nd in own.items()}
    return bias_gradient(config, anchor, k, v, gates.get("delta")), alpha, own


def gd_step(config, state, k, v, gates):
    """GD through the retention gate (Eq 5): ``Z_t = update(Z_{t-1}, g_t, η_t, α_t)``."""
    g, alpha, own = gd_gradients(config, state, k, v, gates)
    eta = memories.gates_for(config.memory, gates["eta"])
    new = dict(state)
    for n, nd in own.items():
        new[n] = retentions.update(config.retention, state[n], g[n], eta[n], alpha[n], nd)
    return new


def momentum_step(config, state, k, v, gates):
    """Titans-LMM: ``u_t = μ_t u_{t-1} + η_t ∇ℓ(W_{t-1})``, ``W_t = α_t W_{t-1} - u_t``."""
    g, alpha, own = gd_gradients(config, state, k, v, gates)
    eta = memories.gates_for(config.memory, gates["eta"])
    mu = memories.gates_for(config.memory, gates["mu"])
    new = dict(state)
    for n, nd in own.items():
        new["mom_" + n] = mu[n] * state["mom_" + n] + eta[n] * g[n]
        new[n] = retentions.update(config.retention, state[n], new["mom_" + n], 1.0, alpha[n],
                                   nd)
    return new


def implicit_step(config, state, k, v, gates):
    """Longhorn's implicit step, matrix memory + ℓ2 bias closed form:
    ``W_t = W̃ - (W̃ k - v)(η ⊙ k)^T / (1 + k^T (η ⊙ k))``, ``W̃ = α W_{t-1}``.

    Other memories/biases need miras_ref's numeric (L-BFGS) solve: not in torch.
    """
    if not isinstance(config.retention, L2Retention):
        raise ValueError("ImplicitGD needs the ℓ2 retention gate")
    if not (isinstance(config.memory, MatrixMemory) and isinstance(config.bias, L2Bias)):
        raise ValueError("ImplicitGD in the torch backend has only the closed form of the "
                         "matrix memory with the ℓ2 bias; use backend='numpy' for the numeric "
                         "solve of other memories and biases")
    alpha = memories.gates_for(config.memory, gates["alpha"])["W"]
    eta = memories.gates_for(config.memory, gates["eta"])["W"]
    w0 = alpha * state["W"]
    ek = eta * k[..., None, :]  # η ⊙ k as a row [B, H, 1, d_k]
    denom = 1.0 + (ek[..., 0, :] * k).sum(-1)
    r = ((w0 @ k[..., None])[..., 0] - v) / denom[..., None]
    return {**state, "W": w0 - r[..., :, None] * ek}


def multistep_step(config, state, k, v, gates):
    """DeltaProduct: ``n`` GD steps on ``(k_{t,i}, v_{t,i})`` (``k [B, H, n, d_k]``); α_t is
    applied at the first step only."""
    ones = torch.ones_like(gates["alpha"])
    for i in range(config.algorithm.n_steps):
        g = dict(gates, alpha=gates["alpha"] if i == 0 else ones)
        state = gd_step(config, state, k[..., i, :], v[..., i, :], g)
    return state


STEPS = {
    ref.GD: gd_step,
    ref.Momentum: momentum_step,
    ref.ImplicitGD: implicit_step,
    ref.MultiStepGD: multistep_step,
}


def step(config, state, k, v, gates):
    """One recurrent step of ``config.algorithm``."""
    return memories.lookup(STEPS, config.algorithm, "algorithm")(config, state, k, v, gates)


def init_state(config, z: dict) -> dict:
    """Add the algorithm's own buffers to the memory state (momentum: zeros)."""
    state = dict(z)
    if isinstance(config.algorithm, ref.Momentum):
        for n in config.memory.shapes:
            state.setdefault("mom_" + n, torch.zeros_like(z[n]))
    return state


# --------------------------------------------------------------------------------------------
# closed form (Mesa) and non-parametric (softmax attention)


def closed_form_init(config, batch, heads, dtype, device) -> dict:
    dk, dv = config.memory.d_k, config.memory.d_v
    return {"P": torch.zeros(batch, heads, dv, dk, dtype=dtype, device=device),
            "Q": torch.zeros(batch, heads, dk, dk, dtype=dtype, device=device)}


def closed_form_step(state, k, v, alpha):
    """``P_t = α_t P_{t-1} + v_t k_t^T``, ``Q_t = α_t Q_{t-1} + k_t k_t^T``."""
    a = alpha[..., None, None]
    return {"P": a * state["P"] + v[..., :, None] * k[..., None, :],
            "Q": a * state["Q"] + k[..., :, None] * k[..., None, :]}


def closed_form_read(lam, state, q):
    """``y = P (Q + λI)^{-1} q`` (``torch.linalg.solve``)."""
    dk = state["Q"].shape[-1]
    eye = torch.eye(dk, dtype=q.dtype, device=q.device)
    x = torch.linalg.solve(state["Q"] + lam * eye, q[..., None])[..., 0]
    return (state["P"] @ x[..., None])[..., 0]


def attention(config, q, k, v, state):
    """Causal softmax attention (Eq 2) over a cache ``state = {"K", "V"}`` and the tokens.

    ``q, k [B, H, T, d_k]``, ``v [B, H, T, d_v]``, cache ``[B, H, S, d]``. Returns
    ``(y [B, H, T, d_v], {"K": [B, H, S+T, d_k], "V": ...})``.
    """
    K = torch.cat([state["K"], k], dim=2)
    V = torch.cat([state["V"], v], dim=2)
    S, T = state["K"].shape[2], q.shape[2]
    scale = config.algorithm.scale or 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ K.mT) * scale
    # token i sees the cache and tokens j <= i
    causal = (torch.arange(S + T, device=q.device)[None, :]
              <= (S + torch.arange(T, device=q.device))[:, None])
    scores = scores.masked_fill(~causal, float("-inf"))
    return torch.softmax(scores, dim=-1) @ V, {"K": K, "V": V}
