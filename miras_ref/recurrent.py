"""The recurrent (token-by-token) MIRAS scan for any of the four choices.

For each token ``t`` of a sequence, the memory takes one step of its learning algorithm on the
pair ``(k_t, v_t)`` and then answers the query: ``y_t = M(W_t, q_t)`` (the read happens after
the write, as in linear attention and DeltaNet; docs/paper-notes.md).

Shapes: ``q, k [B, T, H, d_k]``, ``v [B, T, H, d_v]`` (with :class:`MultiStepGD`, ``k`` and
``v`` carry an extra axis ``[B, T, H, n, d]``); gates as in :mod:`miras_ref.config`. Returns
``(y [B, T, H, d_v], final_state)``; ``final_state`` is ``None`` unless
``output_final_state=True``, and passing it back as ``initial_state`` continues the sequence
exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._checks import as_array, check_range
from .algorithms import ClosedForm, MultiStepGD, NonParametric, memory_weights
from .memory import MatrixMemory

_RANGES = {  # gate: (low, high, low_open, high_open)
    "eta": (0.0, None, True, False),
    "alpha": (0.0, 1.0, True, False),
    "delta": (0.0, None, True, False),
    "mu": (0.0, 1.0, False, True),
}


def _check_config(config) -> None:
    for attr in ("memory", "bias", "retention", "algorithm"):
        if not hasattr(config, attr):
            raise TypeError(f"config must be a MirasConfig, got {type(config).__name__}")


def validate_inputs(config, q, k, v, gates, initial_state):
    """Check and convert the arguments of a sequence op; return them as float64 ``[B,H,T,...]``.

    Returns ``(q, k, v, gates, B, T, H)`` with time moved after heads: ``q [B, H, T, d_k]``,
    gates ``[B, H, T, ...]``.
    """
    _check_config(config)
    multi = isinstance(config.algorithm, MultiStepGD)
    q = as_array(q, "q", 4)
    k = as_array(k, "k", 5 if multi else 4)
    v = as_array(v, "v", 5 if multi else 4)
    B, T, H = check_qkv_shapes(config, q.shape, k.shape, v.shape)
    mem = config.memory

    if gates is not None and not isinstance(gates, Mapping):
        raise TypeError(f"gates must be a dict of arrays, got {type(gates).__name__}")
    given = {} if gates is None else dict(gates)
    unknown = set(given) - set(_RANGES)
    if unknown:
        raise ValueError(f"gates has unknown keys {sorted(unknown)}; expected some of "
                         f"{sorted(_RANGES)}")
    full = config.default_gates(B, T, H)
    out = {}
    for name in config.required_gates:
        g = as_array(given[name], f"gates['{name}']") if name in given else full[name]
        if g.shape[:3] != (B, T, H):
            raise ValueError(f"gates['{name}'] must start with [B, T, H] = {(B, T, H)}, "
                             f"got shape {g.shape}")
        extra = g.shape[3:]
        allowed = [(), (mem.d_v if name == "delta" else _gate_dim(mem),)]
        if name == "alpha" and isinstance(mem, MatrixMemory):
            allowed.append((mem.d_v, mem.d_k))
        if isinstance(config.algorithm, ClosedForm):
            allowed = [()]
        if extra not in allowed:
            raise ValueError(f"gates['{name}'] must have shape [B, T, H] + one of {allowed}, "
                             f"got {g.shape}")
        lo, hi, lo_open, hi_open = _RANGES[name]
        check_range(g, f"gates['{name}']", lo, hi, lo_open, hi_open)
        out[name] = np.moveaxis(g, 2, 1)  # [B, H, T, ...]
    if hasattr(config.retention, "check_gates") and "alpha" in out:
        config.retention.check_gates(out.get("eta"), out["alpha"])
    if config.key_from_alpha:
        if out["alpha"].ndim != 4:
            raise ValueError("gates['alpha'] must be channel-wise [B, T, H, d_k] for HGRN2")
        k = np.moveaxis(1.0 - out["alpha"], 1, 2)  # HGRN2: k_t = 1 - α_t
    q, k, v = (np.moveaxis(x, 2, 1) for x in (q, k, v))
    return q, k, v, out, B, T, H


def check_qkv_shapes(config, q_shape, k_shape, v_shape) -> tuple[int, int, int]:
    """Check that q, k, v agree with each other and with ``config``; return ``(B, T, H)``.

    Shared by every backend: ``q, k [B, T, H, d_k]``, ``v [B, T, H, d_v]`` (``k, v`` with an
    extra ``n_steps`` axis for :class:`MultiStepGD`).
    """
    multi = isinstance(config.algorithm, MultiStepGD)
    B, T, H = tuple(q_shape[:3])
    for name, shape in (("k", k_shape), ("v", v_shape)):
        if tuple(shape[:3]) != (B, T, H):
            raise ValueError(f"{name} must have the same [B, T, H] = {(B, T, H)} as q, "
                             f"got {tuple(shape[:3])}")
        if multi and shape[3] != config.algorithm.n_steps:
            raise ValueError(f"{name} must have n_steps = {config.algorithm.n_steps} keys per "
                             f"token on axis 3, got {shape[3]}")
    mem = config.memory
    if q_shape[-1] != mem.d_k or k_shape[-1] != mem.d_k:
        raise ValueError(f"q and k must have d_k = {mem.d_k} on the last axis, got "
                         f"{q_shape[-1]} and {k_shape[-1]}")
    if v_shape[-1] != mem.d_v:
        raise ValueError(f"v must have d_v = {mem.d_v} on the last axis, got {v_shape[-1]}")
    if T < 1:
        raise ValueError("q must have at least one token (T >= 1)")
    return B, T, H


def _gate_dim(memory) -> int:
    return memory.d_k


def initial_memory_state(config, initial_state, B: int, H: int) -> dict:
    """The state ``Z_0``: the memory's default (zeros, or the seeded MLP init) or a check of the
    given one (a dict with one ``[B, H, *shape]`` array per parameter)."""
    alg = config.algorithm
    if isinstance(alg, ClosedForm):
        expected = {n: a.shape for n, a in alg.init_state(config, B, H).items()}
        default = alg.init_state(config, B, H)
    elif isinstance(alg, NonParametric):
        if initial_state is None:
            return {"K": np.zeros((B, H, 0, config.memory.d_k)),
                    "V": np.zeros((B, H, 0, config.memory.d_v))}
        if not isinstance(initial_state, dict) or set(initial_state) != {"K", "V"}:
            raise ValueError("initial_state must be a dict with keys 'K' and 'V' for attention")
        kk = as_array(initial_state["K"], "initial_state['K']", 4)
        vv = as_array(initial_state["V"], "initial_state['V']", 4)
        if kk.shape[:3] != vv.shape[:3] or kk.shape[:2] != (B, H):
            raise ValueError("initial_state['K'] and ['V'] must be [B, H, S, d] with matching S")
        if kk.shape[-1] != config.memory.d_k or vv.shape[-1] != config.memory.d_v:
            raise ValueError(f"initial_state['K'] and ['V'] must have d_k = {config.memory.d_k} "
                             f"and d_v = {config.memory.d_v} on the last axis, got "
                             f"{kk.shape[-1]} and {vv.shape[-1]}")
        return {"K": kk, "V": vv}
    else:
        default = alg.init_state(config, config.memory.default_state(B, H))
        expected = {n: a.shape for n, a in default.items()}
    if initial_state is None:
        return default
    if not isinstance(initial_state, dict):
        raise TypeError("initial_state must be a dict of arrays (a final_state of a previous call)")
    if set(initial_state) != set(expected):
        raise ValueError(f"initial_state must have keys {sorted(expected)}, "
                         f"got {sorted(initial_state)}")
    state = {}
    for n, shape in expected.items():
        a = as_array(initial_state[n], f"initial_state['{n}']")
        if a.shape != shape:
            raise ValueError(f"initial_state['{n}'] must have shape {shape}, got {a.shape}")
        state[n] = a.copy()
    return state


def read(config, state: dict, q: np.ndarray) -> np.ndarray:
    """The memory read ``y = M(ψ(Z), q)`` for queries ``q [B, H, N, d_k]`` -> ``[B, H, N, d_v]``."""
    return config.memory.forward(memory_weights(config, state), q)


def _attention_scan(config, q, k, v, state, output_final_state):
    K = np.concatenate([state["K"], k], axis=2)
    V = np.concatenate([state["V"], v], axis=2)
    S, T = state["K"].shape[2], q.shape[2]
    scale = config.algorithm.scale
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    # Eq 2: scores q_i·k_j/√d, causal over the cache plus tokens j <= i
    scores = np.einsum("bhtd,bhsd->bhts", q, K) * scale
    mask = np.arange(S + T)[None, :] <= (S + np.arange(T))[:, None]
    scores = np.where(mask, scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    y = np.einsum("bhts,bhsd->bhtd", p / p.sum(-1, keepdims=True), V)
    return y, ({"K": K, "V": V} if output_final_state else None)


def scan(config, q, k, v, gates=None, initial_state=None, output_final_state=False):
    """Run a MIRAS memory over a sequence, token by token (the exact recurrence).

    Parameters
    ----------
    config : MirasConfig
        The four design choices (see :mod:`miras_ref.zoo`).
    q, k : array ``[B, T, H, d_k]``
        Queries and keys (``k [B, T, H, n, d_k]`` for multi-step GD).
    v : array ``[B, T, H, d_v]``
        Values.
    gates : dict, optional
        Per-token ``eta``, ``alpha``, ``delta``, ``mu``; missing ones take the config's defaults.
    initial_state : dict, optional
        Memory state to start from (default: the memory's default state).
    output_final_state : bool
        Also return the final state.

    Returns
    -------
    y : ndarray ``[B, T, H, d_v]``
    final_state : dict or None
    """
    q, k, v, gates, B, T, H = validate_inputs(config, q, k, v, gates, initial_state)
    state = initial_memory_state(config, initial_state, B, H)
    alg = config.algorithm
    if isinstance(alg, NonParametric):
        y, final = _attention_scan(config, q, k, v, state, output_final_state)
        return np.moveaxis(y, 1, 2), final
    y = np.empty(q.shape[:3] + (config.memory.d_v,))
    for t in range(T):
        g_t = {name: g[:, :, t] for name, g in gates.items()}
        if isinstance(alg, ClosedForm):
            state = alg.step(state, k[:, :, t], v[:, :, t], g_t["alpha"])
            y[:, :, t] = alg.read(state, q[:, :, t])
            continue
        state = alg.step(config, state, k[:, :, t], v[:, :, t], g_t)
        y[:, :, t] = read(config, state, q[:, :, t, None, :])[:, :, 0]
    return np.moveaxis(y, 1, 2), (state if output_final_state else None)


def read_memory(config, state: dict, q) -> np.ndarray:
    """Query a memory state without writing: ``y = M(W, q)`` for any algorithm.

    Parameters
    ----------
    config : MirasConfig
    state : dict
        A ``final_state`` returned by :func:`scan` or :func:`miras_ref.scan_chunked`.
    q : array ``[B, N, H, d_k]``
        Queries.

    Returns
    -------
    y : ndarray ``[B, N, H, d_v]``
    """
    _check_config(config)
    q = np.moveaxis(as_array(q, "q", 4), 2, 1)  # [B, H, N, d_k]
    alg = config.algorithm
    if isinstance(alg, NonParametric):
        scale = alg.scale or 1.0 / np.sqrt(q.shape[-1])
        scores = np.einsum("bhnd,bhsd->bhns", q, state["K"]) * scale
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        y = np.einsum("bhns,bhsd->bhnd", p / p.sum(-1, keepdims=True), state["V"])
    elif isinstance(alg, ClosedForm):
        y = np.stack([alg.read(state, q[:, :, n]) for n in range(q.shape[2])], axis=2)
    else:
        y = read(config, state, q)
    return np.moveaxis(y, 1, 2)
