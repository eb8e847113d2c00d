"""The MIRAS layer block (Sec 5.4) as a ``torch.nn.Module``: the twin of
:func:`miras_ref.layer.miras_layer_forward`.

Block diagram, for ``x [B, T, d_model]`` with ``H`` heads of size ``D`` (as in
:mod:`miras_ref.layer`)::

    x ──┬── W_q ── causal depthwise conv (K=4) ── SiLU ── split heads ── ℓ2-norm ──> q
        ├── W_k ── causal depthwise conv (K=4) ── SiLU ── split heads ── ℓ2-norm ──> k
        ├── W_v ── causal depthwise conv (K=4) ── SiLU ── split heads ─────────────> v
        ├── low-rank  x W_down W_up + b ── softplus / sigmoid ──> η_t, α_t, δ_t, μ_t ∈ R^D
        │        y = MIRAS memory scan(config; q, k, v, gates)      [B, T, H, D]
        │        y = RMSNorm_per_head(y) · norm_w
        └── W_g ── sigmoid ──────────────────────────────> y = y ⊙ σ(x W_g)
                                                         out = concat_heads(y) W_o

Parameters carry the reference's names and layouts (``W_q [d_model, H·D]`` multiplies from the
right, ``conv_q [H·D, K]``, ``eta_down``, ``eta_up``, ``eta_bias``, ...), so
:meth:`MirasLayer.from_reference_params` loads a :func:`miras_ref.layer.init_layer_params` dict
as it is and the float64 forward equals the reference's.

The memory runs through :func:`miras_gpu.scan_chunked` (``chunk_size`` an int: the
chunk-parallel training form, Eq 28-32) or :func:`miras_gpu.scan` (``chunk_size=None``: the
exact recurrence). The memory starts from the reference's default state (zeros, or the seeded
MLP init of :meth:`miras_ref.memory.MLPMemory.default_state`); it is not a learned parameter.

Streaming (:meth:`MirasLayer.forward` with ``state``/``return_state``) is exact for any split of
a sequence, including the chunked form: the state holds the memory at the last chunk boundary,
the last ``K - 1`` projected inputs of each convolution, and the (at most ``chunk_size - 1``)
already-seen tokens of the current, unfinished chunk, whose q, k, v and gates are replayed from
the chunk's starting state with the next piece. Token-by-token decoding therefore reproduces
the parallel forward of the same ``chunk_size`` exactly, at a cost per token bounded by one
chunk (constant memory per token).

Numerical guards (inactive at the reference's initialisation): gates are computed in at least
float32, ``η, δ >= 1e-8``, ``α in [1e-8, 1]`` and ``μ <= 1 - 1e-6``, so that a gate that
saturates in low precision never leaves the range the ops accept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from miras_ref import zoo
from miras_ref.algorithms import ClosedForm, Momentum, MultiStepGD, NonParametric
from miras_ref.config import MirasConfig
from miras_ref.layer import (
    GATE_ACTIVATIONS,
    GATE_UP_SCALE,
    KERNEL_SIZE,
    _gate_init_targets,
    expected_param_shapes,
)

__all__ = ["MirasLayer", "resolve_config"]

_GATE_ORDER = ("eta", "alpha", "delta", "mu")
#: lower / upper guards on each gate (see the module docstring)
_GATE_CLAMP = {"eta": (1e-8, None), "alpha": (1e-8, 1.0), "delta": (1e-8, None),
               "mu": (0.0, 1.0 - 1e-6)}


def resolve_config(model, head_dim: int, **model_kwargs) -> MirasConfig:
    """A :class:`MirasConfig` from a zoo name (built with ``head_dim``) or a config.

    ``ValueError`` for an unknown name or a config whose memory size is not ``head_dim``.
    """
    if isinstance(model, str):
        name = model.lower().replace("-", "_")
        if name not in zoo.ALL:
            raise ValueError(f"unknown model {model!r}; choose one of {', '.join(zoo.ALL)}")
        return zoo.get(name, head_dim, **model_kwargs)
    for attr in ("memory", "bias", "retention", "algorithm", "required_gates"):
        if not hasattr(model, attr):
            raise TypeError("model must be a miras_ref.zoo name or a MirasConfig, got "
                            f"{type(model).__name__}")
    if model_kwargs:
        raise ValueError("model_kwargs only apply to a zoo name, not to a MirasConfig")
    if model.memory.d_k != head_dim or model.memory.d_v != head_dim:
        raise ValueError(f"head_dim ({head_dim}) must equal the config's memory d_k = "
                         f"{model.memory.d_k} and d_v = {model.memory.d_v}")
    return model


def _check_chunk_size(config: MirasConfig, chunk_size):
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    from miras_gpu.torch.chunked import check_chunkable

    try:
        check_chunkable(config)
    except ValueError as err:
        raise ValueError(f"model {config.name!r} has no chunk-parallel form ({err}); "
                         "use chunk_size=None (the exact recurrence)") from None
    return int(chunk_size)


class MirasLayer(nn.Module):
    """The MIRAS layer block of Sec 5.4 (see the module docstring).

    Parameters
    ----------
    d_model : int
        Width of the block's input and output.
    n_heads, head_dim : int
        Heads ``H`` and head size ``D`` (the memory's ``d_k = d_v = D``).
    model : str or MirasConfig
        A :mod:`miras_ref.zoo` name (``"moneta"``, ``"yaad"``, ``"memora"``,
        ``"gated_deltanet"``, ...; built with ``zoo.get(name, head_dim, **model_kwargs)``) or
        a configuration with ``memory.d_k = memory.d_v = head_dim``.
    rank : int
        Rank of the low-rank channel-wise gate projections (the paper's ``k``: 32 or 64).
    chunk_size : int or None
        Tokens per chunk of the chunk-parallel form; ``None``: the exact recurrence. Models
        without a chunked form (momentum, multi-step, implicit GD, closed form, softmax
        attention) need ``None``.
    backend : str, optional
        Backend of the memory op (``miras_gpu.BACKENDS``); ``None`` picks one as
        :mod:`miras_gpu.backends` describes (torch for torch tensors).
    kernel_size : int
        Size of the causal depthwise convolutions (4 in the paper).
    model_kwargs : dict, optional
        Extra arguments of the zoo constructor (e.g. ``{"p": 3.0, "q": 4.0}`` for Moneta).
    scan_options : dict, optional
        Backend keywords for ``scan_chunked`` (e.g. ``{"checkpoint": True}``).
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int, model="moneta",
                 rank: int = 32, chunk_size: int | None = 64, backend: str | None = None,
                 kernel_size: int = KERNEL_SIZE, model_kwargs: dict | None = None,
                 scan_options: dict | None = None):
        super().__init__()
        for name, val in (("d_model", d_model), ("n_heads", n_heads), ("head_dim", head_dim),
                          ("rank", rank), ("kernel_size", kernel_size)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        self.d_model, self.n_heads, self.head_dim = int(d_model), int(n_heads), int(head_dim)
        self.rank, self.kernel_size = int(rank), int(kernel_size)
        self.config = resolve_config(model, self.head_dim, **(model_kwargs or {}))
        self.chunk_size = _check_chunk_size(self.config, chunk_size)
        self.backend = backend
        self.scan_options = dict(scan_options or {})
        alg = self.config.algorithm
        self.n_kv = alg.n_steps if isinstance(alg, MultiStepGD) else 1
        self.per_head_gates = isinstance(alg, ClosedForm)
        self.gate_names = tuple(g for g in _GATE_ORDER if g in self.config.required_gates)
        shapes = expected_param_shapes(self.config, self.d_model, self.n_heads, self.head_dim,
                                       self.rank, self.kernel_size)
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self._shapes = shapes
        self._default_cache: dict = {}
        self.reset_parameters()

    # ------------------------------------------------------------------------------------
    # parameters

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The reference's initialisation (:func:`miras_ref.layer.init_layer_params`), drawn
        with torch: every matrix ``N(0, 1/fan_in)``, gate up-projections
        ``N(0, GATE_UP_SCALE²/rank)``, gate biases at the model's default gate values,
        ``norm_w = 1``."""
        targets = _gate_init_targets(self.config)
        with torch.no_grad():
            for name in self._shapes:
                p = getattr(self, name)
                if name == "norm_w":
                    p.fill_(1.0)
                elif name.endswith("_bias"):
                    g = name[: -len("_bias")]
                    t = targets[g]
                    b = (math.log(math.expm1(t)) if GATE_ACTIVATIONS[g] == "softplus"
                         else math.log(t / (1.0 - t)))
                    p.fill_(b)
                else:
                    fan_in = p.shape[1] if name.startswith("conv_") else p.shape[0]
                    scale = GATE_UP_SCALE if name.endswith("_up") else 1.0
                    p.normal_(0.0, scale / math.sqrt(fan_in), generator=generator)

    def load_reference_params(self, params: Mapping) -> MirasLayer:
        """Copy a :mod:`miras_ref.layer` weight dict (NumPy arrays, reference names and
        shapes) into this layer, in the layer's dtype. Returns ``self``."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
        missing = sorted(set(self._shapes) - set(params))
        extra = sorted(set(params) - set(self._shapes))
        if missing or extra:
            raise ValueError(f"params does not match the layer of model {self.config.name!r}: "
                             f"missing {missing}, unexpected {extra}")
        with torch.no_grad():
            for name, shape in self._shapes.items():
                a = torch.as_tensor(np.asarray(params[name]))
                if tuple(a.shape) != tuple(shape):
                    raise ValueError(f"params['{name}'] must have shape {shape}, "
                                     f"got {tuple(a.shape)}")
                p = getattr(self, name)
                p.copy_(a.to(dtype=p.dtype, device=p.device))
        return self

    @classmethod
    def from_reference_params(cls, params: Mapping, n_heads: int, head_dim: int,
                              model="moneta", dtype=torch.float64, **kwargs) -> MirasLayer:
        """A layer holding a :mod:`miras_ref.layer` weight dict (``d_model``, ``rank`` and
        ``kernel_size`` are read from its shapes), in ``dtype`` (float64 by default)."""
        d_model = int(np.shape(params["W_q"])[0])
        kernel = int(np.shape(params["conv_q"])[1])
        rank = next((int(np.shape(params[f"{g}_down"])[1]) for g in _GATE_ORDER
                     if f"{g}_down" in params), 32)
        layer = cls(d_model, n_heads, head_dim, model=model, rank=rank, kernel_size=kernel,
                    **kwargs)
        return layer.to(dtype).load_reference_params(params)

    def reference_params(self) -> dict[str, np.ndarray]:
        """The weights as a :mod:`miras_ref.layer` dict of float64 NumPy arrays."""
        return {n: getattr(self, n).detach().cpu().double().numpy() for n in self._shapes}

    # ------------------------------------------------------------------------------------
    # pieces

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Channel-wise gates ``[B, T, H, D]`` (``[B, T, H]`` for Mesa) from ``x [B, T, d]``
        (:func:`miras_ref.layer.layer_gates`), computed in at least float32."""
        B, T, _ = x.shape
        shape = (B, T, self.n_heads) if self.per_head_gates else (B, T, self.n_heads,
                                                                  self.head_dim)
        dt = torch.promote_types(x.dtype, torch.float32)
        out = {}
        with torch.autocast(x.device.type, enabled=False):
            xf = x.to(dt)
            for g in self.gate_names:
                down, up = getattr(self, f"{g}_down"), getattr(self, f"{g}_up")
                bias = getattr(self, f"{g}_bias")
                # pre_t = x_t W_down W_up + b
                pre = (xf @ down.to(dt)) @ up.to(dt) + bias.to(dt)
                if GATE_ACTIVATIONS[g] == "softplus":
                    val = torch.logaddexp(pre, torch.zeros((), dtype=dt, device=x.device))
                else:
                    val = 0.5 * (1.0 + torch.tanh(0.5 * pre))  # σ, as the reference writes it
                lo, hi = _GATE_CLAMP[g]
                out[g] = val.clamp(min=lo, max=hi).reshape(shape)
        return out

    def _qkv(self, x, conv_state):
        """Projections, causal depthwise conv + SiLU, ℓ2 norm of q and k; new conv state."""
        B, T, _ = x.shape
        H, D, n, K = self.n_heads, self.head_dim, self.n_kv, self.kernel_size
        widths = (H * D, H * n * D, H * n * D)
        w = torch.cat([self.W_q, self.W_k, self.W_v], dim=1)
        u = x @ w  # [B, T, C]
        if conv_state is None:
            prev = u.new_zeros(B, K - 1, u.shape[-1])
        else:
            prev = torch.cat([conv_state[s].to(u.dtype) for s in ("q", "k", "v")], dim=-1)
        up = torch.cat([prev, u], dim=1)  # [B, K-1+T, C]
        filt = torch.cat([self.conv_q, self.conv_k, self.conv_v], dim=0)
        # y_t = Σ_m w[:, m] u_{t-(K-1-m)}   (cross-correlation over the left-padded input)
        if up.is_cuda:  # fast path: cuDNN depthwise convolution
            y = F.conv1d(up.transpose(1, 2), filt[:, None, :], groups=filt.shape[0])
            y = y.transpose(1, 2)
        else:  # plain path: K shifted products (CPU depthwise conv1d is slow, in fp64 most)
            y = filt[:, 0] * up[:, :T]
            for m in range(1, K):
                y = y + filt[:, m] * up[:, m:m + T]
        y = F.silu(y)
        tail = up[:, up.shape[1] - (K - 1):]
        new_conv = dict(zip(("q", "k", "v"), torch.split(tail, widths, dim=-1)))
        q, k, v = torch.split(y, widths, dim=-1)
        q = q.reshape(B, T, H, D)
        kv_shape = (B, T, H, n, D) if n > 1 else (B, T, H, D)
        k, v = k.reshape(kv_shape), v.reshape(kv_shape)
        # q̂ = q / max(‖q‖, ε), k̂ likewise (per head, per step for DeltaProduct)
        q = F.normalize(q, dim=-1, eps=1e-6)
        k = F.normalize(k, dim=-1, eps=1e-6)
        return q, k.to(q.dtype), v.to(q.dtype), new_conv

    def default_memory_state(self, batch: int, device, dtype) -> dict | None:
        """The reference's default memory state (``config.memory.default_state``, plus zero
        momentum), built once per device and dtype and expanded to ``[batch, H, ...]``
        without copying; ``None`` (the op's own default) for closed-form and softmax memories.

        The op would otherwise rebuild it in NumPy (the seeded MLP init) at every call.
        """
        alg = self.config.algorithm
        if isinstance(alg, (ClosedForm, NonParametric)):
            return None
        key = (torch.device(device), dtype)
        base = self._default_cache.get(key)
        if base is None:
            base = {n: torch.as_tensor(a, dtype=dtype, device=device)
                    for n, a in self.config.memory.default_state(1, 1).items()}
            if isinstance(alg, Momentum):
                base.update({"mom_" + n: torch.zeros_like(t) for n, t in list(base.items())})
            self._default_cache[key] = base
        return {n: t.expand(batch, self.n_heads, *t.shape[2:]) for n, t in base.items()}

    def _scan(self, q, k, v, gates, mem_state, output_final_state):
        import miras_gpu

        if mem_state is None:
            dt = torch.float64 if q.dtype == torch.float64 else torch.float32
            mem_state = self.default_memory_state(q.shape[0], q.device, dt)

        if self.chunk_size is None:
            return miras_gpu.scan(self.config, q, k, v, gates, mem_state, output_final_state,
                                  backend=self.backend)
        return miras_gpu.scan_chunked(self.config, q, k, v, gates, self.chunk_size, mem_state,
                                      output_final_state, backend=self.backend,
                                      **self.scan_options)

    def _memory(self, q, k, v, gates, mem_state, pending, want_state):
        """Run the memory, replaying the unfinished chunk's tokens; see the module docstring."""
        n_old = 0
        if pending is not None:
            n_old = pending["q"].shape[1]
            q = torch.cat([pending["q"].to(q.dtype), q], dim=1)
            k = torch.cat([pending["k"].to(k.dtype), k], dim=1)
            v = torch.cat([pending["v"].to(v.dtype), v], dim=1)
            gates = {g: torch.cat([pending["gates"][g].to(a.dtype), a], dim=1)
                     for g, a in gates.items()}
        T = q.shape[1]
        C = self.chunk_size
        if not want_state:
            y, _ = self._scan(q, k, v, gates, mem_state, False)
            return y[:, n_old:], None, None
        if C is None:
            y, mem = self._scan(q, k, v, gates, mem_state, True)
            return y[:, n_old:], mem, None
        # memory state at the last full chunk boundary; the partial tail waits in `pending`
        full = (T // C) * C
        ys, mem = [], mem_state
        if full > 0:
            y1, mem = self._scan(q[:, :full], k[:, :full], v[:, :full],
                                 {g: a[:, :full] for g, a in gates.items()}, mem, True)
            ys.append(y1)
        new_pending = None
        if full < T:
            tail = slice(full, T)
            tg = {g: a[:, tail] for g, a in gates.items()}
            y2, _ = self._scan(q[:, tail], k[:, tail], v[:, tail], tg, mem, False)
            ys.append(y2)
            new_pending = {"q": q[:, tail], "k": k[:, tail], "v": v[:, tail], "gates": tg}
        y = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]
        return y[:, n_old:], mem, new_pending

    # ------------------------------------------------------------------------------------
    # forward

    def forward(self, x: torch.Tensor, state: dict | None = None, return_state: bool = False):
        """The block on ``x [B, T, d_model]``.

        Parameters
        ----------
        x : Tensor ``[B, T, d_model]``
        state : dict, optional
            A ``state`` returned by a previous call: ``{"memory": scan state or None,
            "conv": {"q", "k", "v": [B, K-1, C]}, "pending": None or the unfinished chunk}``.
        return_state : bool
            Also return the state after the last token.

        Returns
        -------
        out : Tensor ``[B, T, d_model]``, or ``(out, state)`` when ``return_state``.
        """
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape [B, T, d_model={self.d_model}], "
                             f"got {tuple(x.shape)}")
        state = state or {}
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        q, k, v, conv = self._qkv(x, state.get("conv"))
        gates = self.gates(x)
        y, mem, pending = self._memory(q, k, v, gates, state.get("memory"), state.get("pending"),
                                       return_state)
        # y ← RMSNorm(y) ⊙ norm_w, per head, one weight shared by the heads
        y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm_w
        # y ← y ⊙ σ(x W_g)
        gate = x @ self.W_g
        y = y * (0.5 * (1.0 + torch.tanh(0.5 * gate))).reshape(B, T, H, D)
        # out = concat_heads(y) W_o
        out = y.reshape(B, T, H * D) @ self.W_o
        if return_state:
            return out, {"memory": mem, "conv": conv, "pending": pending}
        return out

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"model={self.config.name!r}, rank={self.rank}, chunk_size={self.chunk_size}")
