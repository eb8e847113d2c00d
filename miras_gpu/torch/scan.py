"""The recurrent (token-by-token) MIRAS scan in torch: the twin of :func:`miras_ref.scan`.

For each token the memory takes one step of its learning algorithm on ``(k_t, v_t)`` and then
answers the query, ``y_t = M(ψ(Z_t), q_t)`` (read after write). A Python loop over tokens:
this is the exact recurrence, for decoding and for checking; train with
:func:`miras_gpu.torch.scan_chunked`.
"""

from __future__ import annotations

import torch

from miras_ref.algorithms import ClosedForm, NonParametric

from . import algorithms as algs
from . import memory as memories
from ._checks import Inputs, initial_memory_state, validate_inputs


def default_state(config, inp: Inputs) -> dict:
    """The state a sequence starts from when no ``initial_state`` is given."""
    alg = config.algorithm
    if isinstance(alg, ClosedForm):
        return algs.closed_form_init(config, inp.B, inp.H, inp.dtype, inp.device)
    if isinstance(alg, NonParametric):
        return {"K": inp.q.new_zeros(inp.B, inp.H, 0, config.memory.d_k),
                "V": inp.q.new_zeros(inp.B, inp.H, 0, config.memory.d_v)}
    z = memories.default_state(config.memory, inp.B, inp.H, inp.dtype, inp.device)
    return algs.init_state(config, z)


def read(config, state: dict, q: torch.Tensor) -> torch.Tensor:
    """``y = M(ψ(Z), q)`` for ``q [..., N, d_k]``."""
    return memories.forward(config.memory, algs.memory_weights(config, state), q)


def scan(config, q, k, v, gates=None, initial_state=None, output_final_state=False):
    """Run a MIRAS memory over a sequence, token by token.

    Parameters
    ----------
    config : miras_ref.MirasConfig
        The four design choices (:mod:`miras_ref.zoo`).
    q, k : Tensor ``[B, T, H, d_k]``
        Queries and keys (``k [B, T, H, n, d_k]`` for multi-step GD).
    v : Tensor ``[B, T, H, d_v]``
        Values.
    gates : dict of Tensor, optional
        ``eta``, ``alpha``, ``delta``, ``mu`` as ``[B, T, H]`` or ``[B, T, H, D]``.
    initial_state : dict of Tensor, optional
        State ``[B, H, *shape]`` per parameter (a previous call's final state).
    output_final_state : bool
        Also return the final state (in the compute dtype).

    Returns
    -------
    y : Tensor ``[B, T, H, d_v]`` in the dtype of ``q``
    final_state : dict of Tensor or None
    """
    inp = validate_inputs(config, q, k, v, gates)
    state = initial_memory_state(config, initial_state, inp,
                                 lambda: default_state(config, inp))
    alg = config.algorithm
    if isinstance(alg, NonParametric):
        y, final = algs.attention(config, inp.q, inp.k, inp.v, state)
        return y.movedim(1, 2).to(inp.out_dtype), (final if output_final_state else None)
    ys = []
    for t in range(inp.T):
        g_t = {name: g[:, :, t] for name, g in inp.gates.items()}
        k_t, v_t, q_t = inp.k[:, :, t], inp.v[:, :, t], inp.q[:, :, t]
        if isinstance(alg, ClosedForm):
            state = algs.closed_form_step(state, k_t, v_t, g_t["alpha"])
            ys.append(algs.closed_form_read(alg.lam, state, q_t))
            continue
        state = algs.step(config, state, k_t, v_t, g_t)
        ys.append(read(config, state, q_t[:, :, None, :])[:, :, 0])
    y = torch.stack(ys, dim=2).movedim(1, 2).to(inp.out_dtype)
    return y, (state if output_final_state else None)
