"""The MIRAS layer block (Sec 5.4, "Architectural Backbone" and "Channel-wise Parameters").

This is the token mixer that replaces attention in the Llama-style backbone; the surrounding
RMSNorm, residual, SwiGLU MLP and RoPE belong to the model, not to this block. Everything is
NumPy float64, written for reading, and is the gold reference a PyTorch layer is checked against
with identical weights (the dict returned by :func:`init_layer_params`).

Block diagram, for an input ``x [B, T, d_model]`` with ``H`` heads of size ``D``::

    x ──┬── W_q ── causal depthwise conv (K=4) ── SiLU ── split heads ── ℓ2-norm ──> q
        ├── W_k ── causal depthwise conv (K=4) ── SiLU ── split heads ── ℓ2-norm ──> k
        ├── W_v ── causal depthwise conv (K=4) ── SiLU ── split heads ─────────────> v
        ├── low-rank  x W_down W_up + b ── softplus / sigmoid ──> η_t, α_t, δ_t, μ_t ∈ R^D
        │
        │        y = MIRAS memory scan(config; q, k, v, gates)      [B, T, H, D]
        │        y = RMSNorm_per_head(y) · norm_w
        └── W_g ── sigmoid ──────────────────────────────> y = y ⊙ σ(x W_g)
                                                         out = concat_heads(y) W_o

* The memory (one of the zoo's :class:`~miras_ref.config.MirasConfig` models) is run by
  :func:`miras_ref.scan` (exact recurrence) or :func:`miras_ref.scan_chunked` (chunk-parallel
  training form, Eq 28-32) with ``d_k = d_v = D`` per head.
* Gates are channel-wise (Sec 5.4): one value per head channel, produced through a low-rank
  projection ``R^{d_model} -> R^{rank} -> R^{H·D}`` (rank 32 or 64 in the paper). Only the gates
  the config reads (``config.required_gates``) have weights.
* Streaming: besides the memory state, the causal convolutions carry the last ``K - 1``
  projected inputs. ``initial_state``/``final_state`` are ``{"memory": <scan state or None>,
  "conv": {"q", "k", "v": [B, K-1, C]}}``, so running a sequence in two pieces equals one pass.

Decisions where Sec 5.4 is silent (also in docs/paper-notes.md): SiLU after each convolution;
ℓ2 normalisation ``x / max(‖x‖, ε)``; gates read the block input ``x`` (not the convolved
streams); δ through softplus, η, α and μ through sigmoid; RMSNorm per head with one weight
``[D]`` shared by the heads; sigmoid output gate; DeltaProduct gets ``n_steps`` keys and values
per token from wider projections; Mesa (closed form) gets one α per head; gate biases start at
the model's own default gate values (α clipped into [0.95, 0.99]) and the gate
up-projections start small (``GATE_UP_SCALE``), so gates begin close to those values.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from . import zoo
from ._checks import as_array, check_positive_int
from .algorithms import ClosedForm, MultiStepGD
from .chunked import scan_chunked
from .recurrent import scan

__all__ = [
    "GATE_UP_SCALE",
    "KERNEL_SIZE",
    "causal_depthwise_conv",
    "expected_param_shapes",
    "init_layer_params",
    "l2_normalize",
    "layer_gates",
    "miras_layer_forward",
    "rms_norm",
    "sigmoid",
    "silu",
    "softplus",
]

#: Kernel size of the depthwise causal convolutions (Sec 5.4).
KERNEL_SIZE = 4

#: Activation of each gate's pre-activation: softplus for the Huber threshold, sigmoid for the
#: rest.
#: η goes through a sigmoid, as DeltaNet's β and Titans' adaptive rate: with ℓ2-normalised
#: keys the delta rule W ← αW − η(Wk − v)kᵀ is contracting only for η < 2, and a softplus η
#: (unbounded) made trained models diverge on contexts longer than their training context.
GATE_ACTIVATIONS = {"eta": "sigmoid", "alpha": "sigmoid", "delta": "softplus", "mu": "sigmoid"}

_GATE_ORDER = ("eta", "alpha", "delta", "mu")
_DEFAULT_TARGETS = {"eta": 0.1, "alpha": 1.0, "delta": 1.0, "mu": 0.9}
_ALPHA_INIT_RANGE = (0.95, 0.99)

#: Extra factor on the init of the gate up-projections, so that at init every gate stays close
#: to the value its bias encodes (a logit spread of about 0.1 per unit of input).
GATE_UP_SCALE = 0.1


# ---------------------------------------------------------------------------------------------
# Elementwise functions
# ---------------------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, overflow-free.

    Parameters
    ----------
    x : ndarray, any shape

    Returns
    -------
    ndarray, same shape as ``x``, in ``(0, 1)``.
    """
    # σ(x) = 1 / (1 + e^{-x}) = ½ (1 + tanh(x / 2))
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def softplus(x: np.ndarray) -> np.ndarray:
    """Softplus, overflow-free.

    Parameters
    ----------
    x : ndarray, any shape

    Returns
    -------
    ndarray, same shape as ``x``, ``> 0``.
    """
    # softplus(x) = log(1 + e^x)
    return np.logaddexp(0.0, x)


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU (Swish) activation.

    Parameters
    ----------
    x : ndarray, any shape

    Returns
    -------
    ndarray, same shape as ``x``.
    """
    # SiLU(x) = x σ(x)
    return x * sigmoid(x)


def _inverse_softplus(y: float) -> float:
    # softplus(b) = y  <=>  b = log(e^y - 1)
    return float(np.log(np.expm1(y)))


def _logit(p: float) -> float:
    # σ(b) = p  <=>  b = log(p / (1 - p))
    return float(np.log(p / (1.0 - p)))


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def causal_depthwise_conv(x, w, state=None) -> np.ndarray:
    """Causal depthwise 1D convolution along time (no activation).

    Convention: ``w[:, K-1]`` multiplies the current input and ``w[:, 0]`` the oldest one,
    i.e. ``y_t = Σ_{j=0..K-1} w[:, K-1-j] ⊙ x_{t-j}`` with zeros (or ``state``) before the first
    token. This is ``torch.nn.functional.conv1d(x^T, w[:, None, :], groups=C)`` applied to the
    input padded with ``K - 1`` zeros on the left (a cross-correlation).

    The layer applies SiLU after this convolution (:func:`miras_layer_forward`). Sec 5.4 says
    only "a 1D depthwise-separable convolution layer (with kernel size of 4)"; the SiLU follows
    the practice of the works it cites (Gated DeltaNet, Titans) and is a decision of this
    library (docs/paper-notes.md).

    Parameters
    ----------
    x : array_like ``[B, T, C]``
        Input sequence.
    w : array_like ``[C, K]``
        One filter of length ``K`` per channel.
    state : array_like ``[B, K-1, C]``, optional
        The ``K - 1`` inputs that precede ``x`` (oldest first); zeros if omitted.

    Returns
    -------
    y : ndarray ``[B, T, C]``
    """
    x = as_array(x, "x", 3)
    w = as_array(w, "w", 2)
    B, T, C = x.shape
    if w.shape[0] != C:
        raise ValueError(f"w must have shape [C, K] with C = {C} channels, got {w.shape}")
    K = w.shape[1]
    if K < 1:
        raise ValueError(f"w must have a kernel size K >= 1, got shape {w.shape}")
    if state is None:
        state = np.zeros((B, K - 1, C))
    else:
        state = as_array(state, "state", 3)
        if state.shape != (B, K - 1, C):
            raise ValueError(f"state must have shape [B, K-1, C] = {(B, K - 1, C)}, "
                             f"got {state.shape}")
    xp = np.concatenate([state, x], axis=1)  # [B, K-1+T, C]; x_t sits at xp[:, t + K-1]
    y = np.zeros_like(x)
    for m in range(K):
        # y_t = Σ_m w[:, m] x_{t-(K-1-m)} = Σ_m w[:, m] xp[:, t+m]
        y += w[:, m] * xp[:, m:m + T]
    return y


def _conv_tail(state: np.ndarray, x: np.ndarray, K: int) -> np.ndarray:
    """The last ``K - 1`` inputs of ``[state, x]`` along time: the next conv state."""
    xs = np.concatenate([state, x], axis=1)
    return xs[:, xs.shape[1] - (K - 1):].copy()


def l2_normalize(x, axis: int = -1, eps: float = 1e-6) -> np.ndarray:
    """Scale vectors to unit ℓ2 norm (Sec 5.4: "ℓ2 normalization to q and k").

    Uses ``x / max(‖x‖₂, ε)``, the form of ``torch.nn.functional.normalize``, so a zero vector
    stays zero.

    Parameters
    ----------
    x : array_like, any shape
    axis : int
        Axis along which the norm is taken.
    eps : float
        Lower bound on the norm.

    Returns
    -------
    ndarray, same shape as ``x``; unit norm along ``axis`` wherever ``‖x‖ >= eps``.
    """
    x = as_array(x, "x")
    # x̂ = x / max(‖x‖₂, ε)
    n = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    return x / np.maximum(n, eps)


def rms_norm(x, w, eps: float = 1e-6) -> np.ndarray:
    """RMSNorm over the last axis with a learned scale.

    Parameters
    ----------
    x : array_like ``[..., D]``
    w : array_like ``[D]``
        Per-channel scale.
    eps : float
        Added to the mean square.

    Returns
    -------
    ndarray ``[..., D]``
    """
    x = as_array(x, "x")
    w = as_array(w, "w", 1)
    if x.ndim < 1 or w.shape[0] != x.shape[-1]:
        raise ValueError(f"w must have shape [D] = ({x.shape[-1] if x.ndim else 0},), "
                         f"got {w.shape}")
    # RMSNorm(x) = x / sqrt(mean(x²) + ε) ⊙ w
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


# ---------------------------------------------------------------------------------------------
# Configuration and parameters
# ---------------------------------------------------------------------------------------------


def _resolve_config(config, head_dim: int):
    """A :class:`MirasConfig` from a config or a zoo name, checked against ``head_dim``."""
    if isinstance(config, str):
        config = zoo.get(config, head_dim)
    for attr in ("memory", "bias", "retention", "algorithm", "required_gates"):
        if not hasattr(config, attr):
            raise TypeError(f"config must be a MirasConfig or a zoo model name, "
                            f"got {type(config).__name__}")
    mem = config.memory
    if mem.d_k != head_dim or mem.d_v != head_dim:
        raise ValueError(f"head_dim ({head_dim}) must equal the config's memory d_k = "
                         f"{mem.d_k} and d_v = {mem.d_v}; build it with zoo.get(name, head_dim)")
    return config


def _kv_steps(config) -> int:
    """Keys and values per token: ``n_steps`` for DeltaProduct (multi-step GD), else 1."""
    return config.algorithm.n_steps if isinstance(config.algorithm, MultiStepGD) else 1


def _gate_is_per_head(config) -> bool:
    """The closed-form (Mesa) memory takes one α per head, not per channel."""
    return isinstance(config.algorithm, ClosedForm)


def expected_param_shapes(config, d_model: int, n_heads: int, head_dim: int, rank: int = 32,
                          kernel_size: int = KERNEL_SIZE) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the layer's weights for a configuration.

    Parameters
    ----------
    config : MirasConfig or str
        The memory model (a zoo name is built with ``zoo.get(name, head_dim)``).
    d_model, n_heads, head_dim, rank, kernel_size : int
        Model width ``d_model``, heads ``H``, head size ``D``, gate projection rank, conv size
        ``K``.

    Returns
    -------
    dict
        ``W_q [d_model, H·D]``, ``W_k, W_v [d_model, H·n·D]`` (``n`` = keys per token, 1 except
        DeltaProduct), ``conv_q [H·D, K]``, ``conv_k, conv_v [H·n·D, K]``, for each required gate
        ``g``: ``g_down [d_model, rank]``, ``g_up [rank, H·D]``, ``g_bias [H·D]`` (``H`` instead
        of ``H·D`` for Mesa's per-head α), ``norm_w [D]``, ``W_g [d_model, H·D]``,
        ``W_o [H·D, d_model]``.
    """
    d_model = check_positive_int(d_model, "d_model")
    H = check_positive_int(n_heads, "n_heads")
    D = check_positive_int(head_dim, "head_dim")
    rank = check_positive_int(rank, "rank")
    K = check_positive_int(kernel_size, "kernel_size")
    config = _resolve_config(config, D)
    HD, HnD = H * D, H * _kv_steps(config) * D
    shapes = {
        "W_q": (d_model, HD), "W_k": (d_model, HnD), "W_v": (d_model, HnD),
        "conv_q": (HD, K), "conv_k": (HnD, K), "conv_v": (HnD, K),
    }
    width = H if _gate_is_per_head(config) else HD
    for g in _GATE_ORDER:
        if g in config.required_gates:
            shapes[f"{g}_down"] = (d_model, rank)
            shapes[f"{g}_up"] = (rank, width)
            shapes[f"{g}_bias"] = (width,)
    shapes.update({"norm_w": (D,), "W_g": (d_model, HD), "W_o": (HD, d_model)})
    return shapes


def _gate_init_targets(config) -> dict[str, float]:
    """Initial gate values: the model's own defaults, α clipped into [0.95, 0.99] and η into
    [0.01, 0.9] (a sigmoid cannot start at 1)."""
    t = {**_DEFAULT_TARGETS, **config.gate_defaults}
    t["eta"] = float(np.clip(t["eta"], 0.01, 0.9))
    t["alpha"] = float(np.clip(t["alpha"], *_ALPHA_INIT_RANGE))
    t["mu"] = float(np.clip(t["mu"], 0.01, 0.99))
    return {g: float(t[g]) for g in _GATE_ORDER}


def init_layer_params(d_model: int, n_heads: int, head_dim: int, config_name_or_config,
                      rank: int = 32, seed: int = 0,
                      kernel_size: int = KERNEL_SIZE) -> dict[str, np.ndarray]:
    """Deterministic initial weights of one MIRAS layer block.

    Every matrix is ``N(0, 1/fan_in)`` (``fan_in`` = its first axis; ``K`` for a conv filter)
    except the gate up-projections, ``N(0, (GATE_UP_SCALE)²/rank)`` with ``GATE_UP_SCALE = 0.1``,
    all drawn from ``numpy.random.default_rng(seed)`` in the order of
    :func:`expected_param_shapes`. ``norm_w`` starts at ones. Gate biases start at the inverse
    activation of the model's default gate value (``config.gate_defaults``: η = 0.1 for the GD
    MIRAS models, 0.5 for the delta rule, 1 for Hebbian models, clipped into [0.01, 0.9];
    δ = 1; μ = 0.9), with α clipped into [0.95, 0.99] so every retention gate starts at
    "remember almost everything".

    Parameters
    ----------
    d_model, n_heads, head_dim : int
        Model width, heads ``H`` and head size ``D``.
    config_name_or_config : str or MirasConfig
        Zoo model name (built with ``zoo.get(name, head_dim)``) or a configuration with
        ``memory.d_k = memory.d_v = head_dim``.
    rank : int
        Rank of the low-rank gate projections (the paper's ``k``, usually 32 or 64).
    seed : int
        Seed of the generator.
    kernel_size : int
        Convolution kernel size ``K`` (4 in the paper).

    Returns
    -------
    dict[str, ndarray]
        Float64 weights named and shaped as in :func:`expected_param_shapes`.
    """
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    config = _resolve_config(config_name_or_config, check_positive_int(head_dim, "head_dim"))
    shapes = expected_param_shapes(config, d_model, n_heads, head_dim, rank, kernel_size)
    targets = _gate_init_targets(config)
    rng = np.random.default_rng(int(seed))
    params = {}
    for name, shape in shapes.items():
        if name == "norm_w":
            params[name] = np.ones(shape)
        elif name.endswith("_bias"):
            g = name[: -len("_bias")]
            act = GATE_ACTIVATIONS[g]
            b = _inverse_softplus(targets[g]) if act == "softplus" else _logit(targets[g])
            params[name] = np.full(shape, b)
        else:
            fan_in = shape[1] if name.startswith("conv_") else shape[0]
            # W ~ N(0, 1/fan_in); gate up-projections N(0, (0.1)²/rank) so gates start near b
            scale = GATE_UP_SCALE if name.endswith("_up") else 1.0
            params[name] = rng.standard_normal(shape) * (scale / np.sqrt(fan_in))
    return params


def _check_params(params, config, d_model: int, H: int, D: int, names=None) -> dict:
    """Check ``params`` against :func:`expected_param_shapes`; return float64 copies.

    ``names`` restricts the check to a subset of keys (used by :func:`layer_gates`).
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    rank = K = None
    for g in _GATE_ORDER:
        if g in config.required_gates and f"{g}_down" in params:
            rank = np.shape(params[f"{g}_down"])[-1]
            break
    if "conv_q" in params and np.ndim(params["conv_q"]) == 2:
        K = np.shape(params["conv_q"])[1]
    expected = expected_param_shapes(config, d_model, H, D, rank or 1, K or KERNEL_SIZE)
    if names is not None:
        expected = {n: s for n, s in expected.items() if n in names}
    missing = sorted(set(expected) - set(params))
    if missing:
        raise ValueError(f"params is missing keys {missing} (needed by config "
                         f"{getattr(config, 'name', '?')!r})")
    if names is None:
        extra = sorted(set(params) - set(expected))
        if extra:
            raise ValueError(f"params has unexpected keys {extra}: not used by config "
                             f"{getattr(config, 'name', '?')!r} (were they made for another one?)")
    out = {}
    for n, shape in expected.items():
        a = as_array(params[n], f"params['{n}']")
        if a.shape != shape:
            raise ValueError(f"params['{n}'] must have shape {shape} for d_model = {d_model}, "
                             f"n_heads = {H}, head_dim = {D}, got {a.shape}")
        out[n] = a
    return out


# ---------------------------------------------------------------------------------------------
# Gates
# ---------------------------------------------------------------------------------------------


def layer_gates(params, x, config, H: int, D: int) -> dict[str, np.ndarray]:
    """Channel-wise data-dependent gates through low-rank projections (Sec 5.4).

    For every gate ``g`` in ``config.required_gates``:
    ``η_t = σ(x_t W_down W_up + b)``, ``δ_t = softplus(...)``, ``α_t = σ(...)``,
    ``μ_t = σ(...)``, one value per head channel (``D`` = ``d_k`` of the matrix memory, ``d`` of
    the MLP memory, ``d_v`` for δ). Mesa (closed form) reads one α per head.

    Parameters
    ----------
    params : dict
        Layer weights; only the ``<gate>_down``, ``<gate>_up``, ``<gate>_bias`` entries are read.
    x : array_like ``[B, T, d_model]``
        Block input.
    config : MirasConfig or str
        Memory model.
    H, D : int
        Heads and head size.

    Returns
    -------
    dict[str, ndarray]
        Each gate ``[B, T, H, D]`` (``[B, T, H]`` for Mesa's α); empty for softmax attention.
    """
    H = check_positive_int(H, "H")
    D = check_positive_int(D, "D")
    config = _resolve_config(config, D)
    x = as_array(x, "x", 3)
    B, T, d_model = x.shape
    names = {f"{g}_{p}" for g in config.required_gates for p in ("down", "up", "bias")}
    p = _check_params(params, config, d_model, H, D, names=names)
    shape = (B, T, H) if _gate_is_per_head(config) else (B, T, H, D)
    gates = {}
    for g in _GATE_ORDER:
        if g not in config.required_gates:
            continue
        # pre_t = x_t W_down W_up + b   (low rank: R^{d_model} -> R^{rank} -> R^{H·D})
        pre = (x @ p[f"{g}_down"]) @ p[f"{g}_up"] + p[f"{g}_bias"]
        # δ = softplus(pre) > 0 ;  η, α, μ = σ(pre) in (0, 1)
        act = softplus if GATE_ACTIVATIONS[g] == "softplus" else sigmoid
        gates[g] = act(pre).reshape(shape)
    return gates


# ---------------------------------------------------------------------------------------------
# The block
# ---------------------------------------------------------------------------------------------


def _check_initial_state(initial_state, B: int, K: int, widths: dict[str, int]):
    """Split ``initial_state`` into (memory state or None, conv states dict)."""
    zeros = {s: np.zeros((B, K - 1, c)) for s, c in widths.items()}
    if initial_state is None:
        return None, zeros
    if not isinstance(initial_state, Mapping):
        raise TypeError("initial_state must be a dict {'memory': ..., 'conv': {'q','k','v'}} "
                        f"(a final_state of a previous call), got {type(initial_state).__name__}")
    if set(initial_state) != {"memory", "conv"}:
        raise ValueError("initial_state must have exactly the keys ['conv', 'memory'], got "
                         f"{sorted(initial_state)}")
    conv = initial_state["conv"]
    if conv is None:
        return initial_state["memory"], zeros
    if not isinstance(conv, Mapping) or set(conv) != set(widths):
        raise ValueError("initial_state['conv'] must be a dict with keys ['k', 'q', 'v']")
    out = {}
    for s, c in widths.items():
        a = as_array(conv[s], f"initial_state['conv']['{s}']", 3)
        if a.shape != (B, K - 1, c):
            raise ValueError(f"initial_state['conv']['{s}'] must have shape [B, K-1, C] = "
                             f"{(B, K - 1, c)}, got {a.shape}")
        out[s] = a
    return initial_state["memory"], out


def miras_layer_forward(params, x, config, n_heads: int, head_dim: int, chunk_size=None,
                        initial_state=None, output_final_state: bool = False):
    """Forward pass of the MIRAS layer block (Sec 5.4); see the module docstring's diagram.

    Parameters
    ----------
    params : dict[str, ndarray]
        Weights named and shaped as in :func:`expected_param_shapes` (e.g. from
        :func:`init_layer_params`). Unused or missing keys are an error.
    x : array_like ``[B, T, d_model]``
        Block input (finite, real).
    config : MirasConfig or str
        Memory model with ``d_k = d_v = head_dim`` (``zoo.get(name, head_dim)``; a zoo name is
        accepted).
    n_heads, head_dim : int
        Heads ``H`` and head size ``D``.
    chunk_size : int, optional
        ``None``: exact recurrence (:func:`miras_ref.scan`); otherwise the chunk-parallel form
        (:func:`miras_ref.scan_chunked`), defined for plain-GD configs.
    initial_state : dict, optional
        ``{"memory": <scan state or None>, "conv": {"q", "k", "v": [B, K-1, C]} or None}``, the
        ``final_state`` of a previous call (``C = H·D``, or ``H·n·D`` for DeltaProduct's k, v).
    output_final_state : bool
        Also return the state after the last token.

    Returns
    -------
    out : ndarray ``[B, T, d_model]``
    final_state : dict or None
        Same structure as ``initial_state`` when ``output_final_state``, else ``None``.

    Notes
    -----
    Every model gets learned, data-dependent, channel-wise gates for all of its
    ``required_gates``, so Table 1 models whose own gates are constant (RetNet, Lightning
    attention), per head (Mamba2) or absent (α = 1 of DeltaNet, TTT) become their
    channel-wise-gated MIRAS counterparts inside this block; DFW's element-wise ``β_t α_t^T``
    is reduced to a key-axis α_t. HGRN2 ties its key to the forget gate (``k_t = 1 - α_t``),
    so its ``W_k`` and ``conv_k`` are carried but unused.
    """
    H = check_positive_int(n_heads, "n_heads")
    D = check_positive_int(head_dim, "head_dim")
    config = _resolve_config(config, D)
    x = as_array(x, "x", 3)
    B, T, d_model = x.shape
    if T < 1 or B < 1:
        raise ValueError(f"x must have B >= 1 and T >= 1, got shape {x.shape}")
    if not isinstance(output_final_state, (bool, np.bool_)):
        raise TypeError(f"output_final_state must be a bool, got "
                        f"{type(output_final_state).__name__}")
    p = _check_params(params, config, d_model, H, D)
    K = p["conv_q"].shape[1]
    n = _kv_steps(config)
    widths = {"q": H * D, "k": H * n * D, "v": H * n * D}
    mem_state, conv_state = _check_initial_state(initial_state, B, K, widths)

    streams, conv_final = {}, {}
    for s in ("q", "k", "v"):
        # u = x W_s ;  s_t = SiLU(Σ_j w[:, K-1-j] ⊙ u_{t-j})   (causal depthwise conv, K = 4)
        u = x @ p[f"W_{s}"]
        streams[s] = silu(causal_depthwise_conv(u, p[f"conv_{s}"], conv_state[s]))
        conv_final[s] = _conv_tail(conv_state[s], u, K)
    q = streams["q"].reshape(B, T, H, D)
    kv_shape = (B, T, H, n, D) if n > 1 else (B, T, H, D)
    k = streams["k"].reshape(kv_shape)
    v = streams["v"].reshape(kv_shape)
    # q̂ = q / ‖q‖₂ ,  k̂ = k / ‖k‖₂   (per head, and per step for DeltaProduct)
    q = l2_normalize(q)
    k = l2_normalize(k)

    gates = layer_gates(p, x, config, H, D)
    if chunk_size is None:
        y, mem_final = scan(config, q, k, v, gates, mem_state, output_final_state)
    else:
        y, mem_final = scan_chunked(config, q, k, v, gates, chunk_size=chunk_size,
                                    initial_state=mem_state,
                                    output_final_state=output_final_state)
    # y ← RMSNorm(y) ⊙ norm_w   per head, weight shared across heads
    y = rms_norm(y, p["norm_w"])
    # y ← y ⊙ σ(x W_g)   output gate
    y = y * sigmoid(x @ p["W_g"]).reshape(B, T, H, D)
    # out = concat_heads(y) W_o
    out = y.reshape(B, T, H * D) @ p["W_o"]
    final = {"memory": mem_final, "conv": conv_final} if output_final_state else None
    return out, final
