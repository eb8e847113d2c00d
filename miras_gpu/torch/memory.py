"""Memory architectures in torch: the twin of :mod:`miras_ref.memory` (Sec 4, choice 1).

Each :mod:`miras_ref.memory` class has a :class:`MemoryOps` entry in :data:`MEMORY_OPS`:

* ``forward(memory, params, x)``: the read ``x [..., N, d_k] -> y [..., N, d_v]``; the
  parameters are ``[..., *shape]`` (one memory per ``[B, H]``) or ``[..., N, *shape]`` with
  ``x [..., N, 1, d_k]`` (one memory per token, the chunked form's per-token states);
* ``token_grads(memory, params, x, dy)``: the analytic VJP with respect to the parameters,
  one term per token, as :class:`Outer` (``left_n right_n^T``, matrix and MLP weights) or
  :class:`Dense` (vector memory) factors, so the chunked form can contract them with its
  decay mask without forming per-token outer products.

The VJPs are written by hand in torch ops (no inner ``torch.autograd.grad``), so the inner
gradient is explicit and the whole op is still differentiable by autograd for the outer loop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from miras_ref import memory as ref

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh form: ``σ(x) = ½ x (1 + tanh(√(2/π)(x + 0.044715 x³)))``."""
    return 0.5 * x * (1.0 + torch.tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x**3)))


def gelu_grad(x: torch.Tensor) -> torch.Tensor:
    """``σ'(x)`` of :func:`gelu`."""
    t = torch.tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x**3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (
        1.0 + 3 * GELU_CUBIC * x * x)


def layer_norm(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm without affine parameters over the last axis; returns ``(LN(z), rstd)``."""
    zc = z - z.mean(dim=-1, keepdim=True)
    rstd = torch.rsqrt((zc * zc).mean(dim=-1, keepdim=True) + eps)
    return zc * rstd, rstd


def layer_norm_vjp(zhat: torch.Tensor, rstd: torch.Tensor, du: torch.Tensor) -> torch.Tensor:
    """``dz = rstd (du - mean(du) - ẑ mean(du ⊙ ẑ))``."""
    return rstd * (du - du.mean(dim=-1, keepdim=True)
                   - zhat * (du * zhat).mean(dim=-1, keepdim=True))


def apply(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w^T``: ``x [..., N, s]``, ``w [..., r, s]`` -> ``[..., N, r]``.

    One token (``N = 1``: the recurrence, Memora's lag token) is written as a broadcast
    product summed over ``s``: ``torch.compile`` fuses that with the ops around it, where a
    batched matrix-vector product is a library call of its own plus the copies its operands'
    layouts need (tens of launches per chunk of Memora's lag token on a GPU).
    """
    if x.shape[-2] == 1 and x.ndim == w.ndim:
        return (x.unsqueeze(-2) * w.unsqueeze(-3)).sum(-1)
    return x @ w.mT


@dataclass
class Outer:
    """Per-token gradients ``G_n = left_n right_n^T`` of a matrix parameter ``[r, s]``.

    ``left [..., N, r]``, ``right [..., N, s]``.
    """

    left: torch.Tensor
    right: torch.Tensor

    def total(self) -> torch.Tensor:
        """``Σ_n G_n``: ``[..., r, s]`` (one token: the outer product, see :func:`apply`)."""
        if self.left.shape[-2] == 1:
            return self.left[..., 0, :, None] * self.right[..., 0, None, :]
        return self.left.mT @ self.right

    def per_token(self) -> torch.Tensor:
        """``G_n`` for every token: ``[..., N, r, s]``."""
        return self.left[..., :, None] * self.right[..., None, :]


@dataclass
class Dense:
    """Per-token gradients of a vector parameter: ``g [..., N, d]``."""

    g: torch.Tensor

    def total(self) -> torch.Tensor:
        return self.g.sum(dim=-2)

    def per_token(self) -> torch.Tensor:
        return self.g


# --------------------------------------------------------------------------------------------
# matrix memory M(W, k) = W k  (Eq 3, 8, 9)


def matrix_forward(memory, params, x):
    """``y_n = W x_n``: ``W [..., d_v, d_k]``, ``x [..., N, d_k]`` -> ``[..., N, d_v]``."""
    return apply(x, params["W"])


def matrix_token_grads(memory, params, x, dy):
    """``dW_n = dy_n x_n^T``."""
    return {"W": Outer(dy, x)}


# --------------------------------------------------------------------------------------------
# vector memory M(w, k) = w ⊙ k  (Table 1, RetNet)


def vector_forward(memory, params, x):
    """``y_n = w ⊙ x_n``: ``w [..., d]``, ``x [..., N, d]``."""
    return params["w"].unsqueeze(-2) * x


def vector_token_grads(memory, params, x, dy):
    """``dw_n = dy_n ⊙ x_n``."""
    return {"w": Dense(dy * x)}


# --------------------------------------------------------------------------------------------
# 2-layer MLP memory M(x) = x + LN(W1 σ(W2 x))  (Sec 5.3)


def mlp_parts(memory, params, x):
    """``h = W2 x``, ``a = σ(h)``, ``u = LN(W1 a)`` and LN's ``rstd``."""
    h = apply(x, params["W2"])  # [..., N, E d]
    a = gelu(h)
    u, rstd = layer_norm(apply(a, params["W1"]), memory.eps)  # [..., N, d]
    return h, a, u, rstd


def mlp_forward(memory, params, x):
    """``y_n = x_n + LN(W1 σ(W2 x_n))``: ``W1 [..., d, E d]``, ``W2 [..., E d, d]``."""
    _, _, u, _ = mlp_parts(memory, params, x)
    return x + u


def mlp_token_grads(memory, params, x, dy):
    """Analytic VJP: ``dz = LN'(z)^T dy``, ``dW1_n = dz_n a_n^T``,
    ``dh = (W1^T dz) ⊙ σ'(h)``, ``dW2_n = dh_n x_n^T`` (the residual carries no parameter)."""
    h, a, u, rstd = mlp_parts(memory, params, x)
    dz = layer_norm_vjp(u, rstd, dy)
    dh = apply(dz, params["W1"].mT) * gelu_grad(h)
    return {"W1": Outer(dz, a), "W2": Outer(dh, x)}


# --------------------------------------------------------------------------------------------
# dispatch on the miras_ref class


@dataclass(frozen=True)
class MemoryOps:
    forward: Callable
    token_grads: Callable


MEMORY_OPS: dict[type, MemoryOps] = {
    ref.MatrixMemory: MemoryOps(matrix_forward, matrix_token_grads),
    ref.VectorMemory: MemoryOps(vector_forward, vector_token_grads),
    ref.MLPMemory: MemoryOps(mlp_forward, mlp_token_grads),
}


def lookup(table: dict, obj, what: str):
    """The entry of ``table`` for ``obj``'s class (or its nearest registered base class)."""
    for cls in type(obj).__mro__:
        if cls in table:
            return table[cls]
    raise ValueError(f"{what}: the torch backend has no twin of {type(obj).__name__} yet; "
                     "use backend='numpy'")


def forward(memory, params: dict, x: torch.Tensor) -> torch.Tensor:
    """The memory read ``M(W, x)`` (see the module docstring for shapes)."""
    return lookup(MEMORY_OPS, memory, "memory").forward(memory, params, x)


def token_grads(memory, params: dict, x: torch.Tensor, dy: torch.Tensor) -> dict:
    """Per-token parameter gradients ``(∂M(W, x_n)/∂W)^T dy_n`` as factors."""
    return lookup(MEMORY_OPS, memory, "memory").token_grads(memory, params, x, dy)


def vjp(memory, params: dict, x, dy, per_token: bool = False) -> dict:
    """The twin of ``miras_ref`` ``memory.vjp``: summed over tokens or one term per token."""
    grads = token_grads(memory, params, x, dy)
    return {n: (g.per_token() if per_token else g.total()) for n, g in grads.items()}


def default_state(memory, batch: int, heads: int, dtype, device) -> dict:
    """``miras_ref``'s default state (zeros, or the seeded MLP init, the same in every
    ``[B, H]`` slot) as tensors ``[B, H, ...]``, expanded from one cached slot on ``device``
    (no host-to-device copy per call)."""
    one = _default_slot(memory, dtype, torch.device(device))
    return {n: a.expand(batch, heads, *a.shape[2:]).clone() for n, a in one.items()}


@functools.lru_cache(maxsize=32)
def _default_slot(memory, dtype, device) -> dict:
    """One ``[1, 1, ...]`` slot of the default state (read-only: callers get copies)."""
    return {n: torch.as_tensor(a, dtype=dtype, device=device)
            for n, a in memory.default_state(1, 1).items()}


def broadcast_gate(gate: torch.Tensor, param_ndim: int, axis: int, lead: int = 2):
    """Reshape a gate so it broadcasts against a parameter with ``param_ndim`` own axes.

    ``gate`` is ``[*lead]`` (scalar), ``[*lead, D]`` (channel-wise, put on parameter axis
    ``axis``) or ``[*lead, *param_shape]`` (element-wise); ``lead`` counts its leading axes
    (``[B, H]``: 2, ``[B, H, C]``: 3). Twin of :func:`miras_ref.memory.broadcast_gate`.
    """
    own = gate.ndim - lead
    if own == 0:
        return gate.reshape(tuple(gate.shape) + (1,) * param_ndim)
    if own == param_ndim and param_ndim > 1:
        return gate
    if own == 1:
        shape = [1] * param_ndim
        shape[axis] = gate.shape[-1]
        return gate.reshape(tuple(gate.shape[:lead]) + tuple(shape))
    raise ValueError(f"gate of shape {tuple(gate.shape)} cannot scale a parameter of "
                     f"{param_ndim} axes")


def gates_for(memory, gate: torch.Tensor, lead: int = 2) -> dict:
    """Broadcast one gate to every parameter of ``memory``."""
    shapes = memory.shapes
    return {n: broadcast_gate(gate, len(shapes[n]), memory.gate_axes[n], lead) for n in shapes}
