"""Chunk-parallel training form of MIRAS memories (Sec 5.4, Eq 28-32).

The sequence is cut into chunks of ``b`` tokens. Inside a chunk every gradient is taken at the
chunk's starting state ``W_{t'}`` instead of ``W_{t-1}`` (Eq 28), so the recurrence inside the
chunk becomes linear in the gate's state ``Z`` and unrolls into one masked sum:

``Z_t = (β_t/β_{t'}) Z_{t'} - Σ_{i=t'+1..t} η_i (β_t/β_i) ∇ℓ(W_{t'}; k_i, v_i)``,
``β_t = Π_{j<=t} α_j`` (Eq 28-29).

The coefficients ``η_i β_t/β_i`` (``i <= t``) form the chunk's learning-rate/decay mask, the
paper's ``E_b ⊙ B_b`` (computed in log space, :func:`chunk_coefficients`). The non-linearity of
the gate (ℓq normalisation for Moneta, softmax for Memora, ...) is the link ``W = ψ(Z)``, applied
when the memory is read and at the chunk end, never inside the recurrence. Yaad's "dual
gradient" needs nothing special: both the ℓ2 and the ℓ1 branch are evaluated at ``W_{t'}``
and masked per token by ``‖M_{t'}(k_t) - v_t‖ <= δ_t``.

Memora's lag token (Eq 30-32): with ``config.lag_token`` the first token of every chunk takes
an exact recurrent step, and the rest of the chunk takes its gradients at that new state.

Decisions (docs/paper-notes.md): by default (``config.link_at == "token"``) queries read
``y_t = M(ψ(Z_t), q_t)`` with the chunk's own running state, and chunk size 1 equals
:func:`miras_ref.scan` exactly. With ``config.link_at == "chunk"`` the link is applied only at
chunk starts, as Sec 5.4 describes for Moneta and Memora ("we do not apply this non-linearity
inside each chunk and instead use it at the end of each chunk"): the queries read the
chunk-start memory after plain gradient steps, Eq 28 written on the memory itself,

``W_t = (β_t/β_{t'}) ψ(Z_{t'}) - Σ_{i=t'+1..t} η_i (β_t/β_i) ∇ℓ(W_{t'}; k_i, v_i)``,

while the state ``Z`` takes the same steps, so the next chunk starts from ``ψ(Z)`` at this
chunk's end. A partial last chunk is allowed.
"""

from __future__ import annotations

import numpy as np

from ._checks import check_positive_int
from .algorithms import GD, Momentum, gates_for, memory_weights
from .recurrent import _check_config, initial_memory_state, read, scan, validate_inputs


def chunk_coefficients(eta: np.ndarray, alpha: np.ndarray, own_ndim: int = 0):
    """The chunk's decay and learning-rate masks (Eq 28-29).

    Parameters
    ----------
    eta, alpha : ndarray ``[..., C, *g]``
        Gates of the ``C`` tokens of a chunk; ``g`` are ``own_ndim`` trailing axes that
        broadcast against one memory parameter.
    own_ndim : int
        Number of trailing parameter axes after the chunk axis.

    Returns
    -------
    decay : ndarray ``[..., C, *g]``
        ``β_t / β_{t'} = Π_{j<=t} α_j`` (from the chunk start).
    mask : ndarray ``[..., C, C, *g]``
        ``mask[t, i] = η_i β_t / β_i`` for ``i <= t`` and 0 above the diagonal
        (the paper's ``E_b ⊙ B_b``).
    """
    c_axis = alpha.ndim - own_ndim - 1
    log_beta = np.cumsum(np.log(alpha), axis=c_axis)  # log β_t, log-space cumulative decay
    C = alpha.shape[c_axis]
    causal = np.tril(np.ones((C, C), dtype=bool)).reshape((C, C) + (1,) * own_ndim)
    diff = np.expand_dims(log_beta, c_axis + 1) - np.expand_dims(log_beta, c_axis)
    # mask[t, i] = η_i exp(log β_t - log β_i) for i <= t
    mask = np.exp(np.where(causal, diff, -np.inf)) * np.expand_dims(eta, c_axis)
    return np.exp(log_beta), mask


def _chunk_gates(config, gate: np.ndarray) -> dict[str, np.ndarray]:
    """Broadcast ``[B, H, C, ...]`` gates to each parameter: ``[B, H, C, *g]``."""
    B, H, C = gate.shape[:3]
    flat = np.moveaxis(gate, 2, 0).reshape((C * B, H) + gate.shape[3:])
    out = {}
    for n, g in gates_for(config.memory, flat).items():
        out[n] = np.moveaxis(g.reshape((C, B, H) + g.shape[2:]), 0, 2)
    return out


def _chunk_step(config, z: dict, q, k, v, gates: dict):
    """Process one chunk. ``q, k [B, H, C, d_k]``, ``v [B, H, C, d_v]``, gates ``[B, H, C, ...]``.

    Returns ``(y [B, H, C, d_v], z_end)``.
    """
    mem, ret = config.memory, config.retention
    own = {n: len(s) for n, s in mem.shapes.items()}
    eta = _chunk_gates(config, gates["eta"])
    alpha = _chunk_gates(config, gates["alpha"])
    # Eq 28: every gradient of the chunk at the chunk's starting state W_{t'}
    anchor = {n: ret.anchor(z[n], alpha[n][:, :, 0], own[n]) for n in own}
    delta = gates.get("delta")
    if delta is not None and delta.ndim == 3:
        delta = delta[..., None]  # [B, H, C] -> [B, H, C, 1]
    y_anchor = mem.forward(anchor, k)
    dy = config.bias.grad(y_anchor, v, delta)
    grads = mem.vjp(anchor, k, dy, per_token=True)  # [B, H, C, *shape]
    coeffs = {n: chunk_coefficients(eta[n], alpha[n], own[n]) for n in own}

    def unroll(x0):  # Eq 29: x_t = (β_t/β_{t'}) x_{t'} - Σ_i η_i (β_t/β_i) ∇ℓ(W_{t'}; k_i, v_i)
        return {n: decay * x0[n][:, :, None] - np.einsum("bhti...,bhi...->bht...", mask, grads[n])
                for n, (decay, mask) in coeffs.items()}

    z_t = unroll(z)
    if config.link_at == "chunk":
        # Sec 5.4: no link inside the chunk; its memory ψ(Z_{t'}) takes the plain steps (Eq 28)
        y = mem.forward(unroll(memory_weights(config, z)), q[..., None, :])[..., 0, :]
    else:
        y = read(config, z_t, q[..., None, :])[..., 0, :]  # y_t = M(ψ(Z_t), q_t)
    return y, {n: z_t[n][:, :, -1] for n in own}


def check_chunkable(config) -> None:
    """``ValueError`` unless ``config`` has a chunked form: plain GD (Eq 28 takes every
    gradient of a chunk at its starting state) and a retention gate linear in its state."""
    alg = config.algorithm
    if type(alg) is not GD or isinstance(alg, Momentum):
        raise ValueError(f"chunk_size: the chunked form is defined for plain GD, not "
                         f"{alg.name}; use chunk_size=None for the exact recurrence")
    if not config.retention.dual_linear:
        raise ValueError(f"chunk_size: the {config.retention.name} retention gate is not linear "
                         "in its state, so it has no chunked form; use chunk_size=None")


def scan_chunked(config, q, k, v, gates=None, chunk_size=64, initial_state=None,
                 output_final_state=False):
    """Chunk-parallel MIRAS forward (Eq 28-32), any ``T`` and any chunk size.

    Same arguments and returns as :func:`miras_ref.scan`, plus ``chunk_size`` (``None``: the
    exact recurrence). Defined for gradient descent with a dual-linear retention gate (all
    Table 1 GD models, Moneta, Yaad, Memora); chunk size 1 equals the recurrence.
    """
    _check_config(config)
    if chunk_size is None:
        return scan(config, q, k, v, gates, initial_state, output_final_state)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    check_chunkable(config)
    q, k, v, gates, B, T, H = validate_inputs(config, q, k, v, gates, initial_state)
    z = initial_memory_state(config, initial_state, B, H)
    ys = []
    for s in range(0, T, chunk_size):
        e = min(s + chunk_size, T)
        sl = slice(s, e)
        g = {name: a[:, :, sl] for name, a in gates.items()}
        if config.lag_token:
            # Eq 30: the lag token takes the exact non-linear step from M_0
            g0 = {name: a[:, :, 0] for name, a in g.items()}
            z = config.algorithm.step(config, z, k[:, :, s], v[:, :, s], g0)
            ys.append(read(config, z, q[:, :, s, None, :]))
            sl = slice(s + 1, e)
            g = {name: a[:, :, 1:] for name, a in g.items()}
            if e - s == 1:
                continue
        # Eq 31-32: the rest of the chunk at the (lag-token) chunk state
        y, z = _chunk_step(config, z, q[:, :, sl], k[:, :, sl], v[:, :, sl], g)
        ys.append(y)
    y = np.concatenate(ys, axis=2)
    return np.moveaxis(y, 1, 2), (z if output_final_state else None)
