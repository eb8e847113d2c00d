"""Memory architectures: the first MIRAS choice (Sec 4, choice 1).

A memory is a parametric map ``M(W, x)`` from keys to values. Its parameters ``W`` are a
dict of named arrays (the *memory state*), each with leading batch axes ``[B, H]`` followed by
the parameter's own shape. Every architecture gives

* ``forward(params, x)``: ``x [..., N, d_k] -> y [..., N, d_v]``, the memory read;
* ``vjp(params, x, dy, per_token=False)``: the vector-Jacobian product with respect to the
  parameters, ``dW = sum_n (dM(W, x_n)/dW)^T dy_n`` (or one term per token), derived by hand
  and checked against finite differences in ``tests/test_memory.py``;
* ``gate_axes``: for a channel-wise gate ``g in R^D`` (η_t, α_t), the parameter axis it scales.

Conventions (see docs/paper-notes.md): the matrix memory is ``W in R^{d_v x d_k}`` and
``M(W, k) = W k`` (the paper's ``M in R^{d x n}`` with writes ``v k^T``); channel-wise gates
scale the key axis, as in GLA and RWKV-7.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)
GELU_CUBIC = 0.044715


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form: ``σ(x) = ½ x (1 + tanh(√(2/π)(x + 0.044715 x³)))``."""
    return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x**3)))


def gelu_grad(x: np.ndarray) -> np.ndarray:
    """Derivative of :func:`gelu` with respect to its input."""
    t = np.tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x**3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * SQRT_2_OVER_PI * (1.0 + 3 * GELU_CUBIC * x**2)


def layer_norm(z: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """LayerNorm without affine parameters over the last axis.

    ``LN(z) = (z - mean(z)) / sqrt(var(z) + eps)``. Returns ``(LN(z), 1/sqrt(var + eps))``.
    """
    mu = z.mean(axis=-1, keepdims=True)
    zc = z - mu
    rstd = 1.0 / np.sqrt((zc**2).mean(axis=-1, keepdims=True) + eps)
    return zc * rstd, rstd


def layer_norm_vjp(zhat: np.ndarray, rstd: np.ndarray, du: np.ndarray) -> np.ndarray:
    """VJP of :func:`layer_norm`: ``dz = rstd (du - mean(du) - ẑ mean(du ⊙ ẑ))``."""
    return rstd * (
        du - du.mean(axis=-1, keepdims=True) - zhat * (du * zhat).mean(axis=-1, keepdims=True)
    )


def _sum_or_keep(per_token: np.ndarray, keep: bool) -> np.ndarray:
    """Sum per-token terms ``[..., N, *shape]`` over N unless ``keep``."""
    return per_token if keep else per_token.sum(axis=-3)


@dataclass(frozen=True)
class MatrixMemory:
    """Linear (matrix-valued) memory ``M(W, k) = W k`` with ``W in R^{d_v x d_k}`` (Eq 3, 8, 9).

    Parameters
    ----------
    d_k, d_v : int
        Key and value dimensions.
    """

    d_k: int
    d_v: int
    name: str = "matrix"

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W": (self.d_v, self.d_k)}

    @property
    def gate_axes(self) -> dict[str, int]:
        return {"W": -1}

    def default_state(self, batch: int, heads: int) -> dict[str, np.ndarray]:
        """Zero memory ``W_0 = 0`` of shape ``[B, H, d_v, d_k]``."""
        return {"W": np.zeros((batch, heads, self.d_v, self.d_k))}

    def forward(self, params: dict, x: np.ndarray) -> np.ndarray:
        """``y_n = W x_n``: ``W [..., d_v, d_k]``, ``x [..., N, d_k]`` -> ``[..., N, d_v]``."""
        return np.einsum("...ij,...nj->...ni", params["W"], x)

    def vjp(self, params: dict, x: np.ndarray, dy: np.ndarray, per_token: bool = False) -> dict:
        """``dW = sum_n dy_n x_n^T`` (``[..., d_v, d_k]``, or ``[..., N, d_v, d_k]`` per token)."""
        g = dy[..., :, :, None] * x[..., :, None, :]
        return {"W": _sum_or_keep(g, per_token)}


@dataclass(frozen=True)
class VectorMemory:
    """Vector-valued memory (Table 1, RetNet; the ``n = 1`` case of Eq 3).

    Each of the ``d`` channels is an independent memory with a scalar key and value, so
    ``M(w, k) = w ⊙ k`` with ``w in R^d`` and the write ``v_t k_t^T`` becomes ``v_t ⊙ k_t``.

    Parameters
    ----------
    d : int
        Number of channels (``d_k = d_v = d``).
    """

    d: int
    name: str = "vector"

    @property
    def d_k(self) -> int:
        return self.d

    @property
    def d_v(self) -> int:
        return self.d

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"w": (self.d,)}

    @property
    def gate_axes(self) -> dict[str, int]:
        return {"w": -1}

    def default_state(self, batch: int, heads: int) -> dict[str, np.ndarray]:
        """Zero memory ``w_0 = 0`` of shape ``[B, H, d]``."""
        return {"w": np.zeros((batch, heads, self.d))}

    def forward(self, params: dict, x: np.ndarray) -> np.ndarray:
        """``y_n = w ⊙ x_n``: ``w [..., d]``, ``x [..., N, d]`` -> ``[..., N, d]``."""
        return params["w"][..., None, :] * x

    def vjp(self, params: dict, x: np.ndarray, dy: np.ndarray, per_token: bool = False) -> dict:
        """``dw = sum_n dy_n ⊙ x_n``."""
        g = dy * x
        return {"w": g if per_token else g.sum(axis=-2)}


@dataclass(frozen=True)
class MLPMemory:
    """Two-layer MLP memory of Moneta, Yaad and Memora (Sec 5.3).

    ``M(x) = x + LN(W1 σ(W2 x))`` with ``W2 in R^{E d x d}``, ``W1 in R^{d x E d}``, expansion
    ``E = 4``, ``σ`` = GELU (tanh form) and LN a LayerNorm without affine parameters. The memory
    state is ``{"W1": [B, H, d, E d], "W2": [B, H, E d, d]}``.

    Parameters
    ----------
    d : int
        Key and value dimension (the residual needs ``d_k = d_v``).
    expansion : int
        Hidden width multiplier ``E``.
    eps : float
        LayerNorm epsilon.
    """

    d: int
    expansion: int = 4
    eps: float = 1e-5
    name: str = "mlp"

    @property
    def d_k(self) -> int:
        return self.d

    @property
    def d_v(self) -> int:
        return self.d

    @property
    def hidden(self) -> int:
        return self.expansion * self.d

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W1": (self.d, self.hidden), "W2": (self.hidden, self.d)}

    @property
    def gate_axes(self) -> dict[str, int]:
        # channel-wise gates scale the d-sized axis of each weight
        return {"W1": -2, "W2": -1}

    def default_state(self, batch: int, heads: int, seed: int = 0) -> dict[str, np.ndarray]:
        """A fixed, seeded initial memory (all-zero weights would never learn).

        ``W2 ~ N(0, 1/d)``, ``W1 ~ N(0, 1/(E d))`` from ``numpy.random.default_rng(seed)``,
        the same for every ``[B, H]`` slot, so every backend can reproduce it exactly.
        """
        rng = np.random.default_rng(seed)
        w1 = rng.standard_normal((self.d, self.hidden)) / np.sqrt(self.hidden)
        w2 = rng.standard_normal((self.hidden, self.d)) / np.sqrt(self.d)
        return {
            "W1": np.broadcast_to(w1, (batch, heads, *w1.shape)).copy(),
            "W2": np.broadcast_to(w2, (batch, heads, *w2.shape)).copy(),
        }

    def _forward_parts(self, params: dict, x: np.ndarray):
        # h = W2 x ; a = σ(h) ; z = W1 a ; u = LN(z)
        h = np.einsum("...ij,...nj->...ni", params["W2"], x)
        a = gelu(h)
        z = np.einsum("...ij,...nj->...ni", params["W1"], a)
        u, rstd = layer_norm(z, self.eps)
        return h, a, u, rstd

    def forward(self, params: dict, x: np.ndarray) -> np.ndarray:
        """``y_n = x_n + LN(W1 σ(W2 x_n))``: ``x [..., N, d]`` -> ``[..., N, d]``."""
        _, _, u, _ = self._forward_parts(params, x)
        return x + u

    def vjp(self, params: dict, x: np.ndarray, dy: np.ndarray, per_token: bool = False) -> dict:
        """Analytic VJP with respect to ``W1`` and ``W2``.

        With ``h = W2 x``, ``a = σ(h)``, ``z = W1 a`` and ``u = LN(z)``:
        ``dz = LN'(z)^T dy``, ``dW1 = Σ_n dz_n a_n^T``, ``dh = (W1^T dz) ⊙ σ'(h)``,
        ``dW2 = Σ_n dh_n x_n^T``. The residual ``x`` carries no parameter.
        """
        h, a, u, rstd = self._forward_parts(params, x)
        dz = layer_norm_vjp(u, rstd, dy)
        dh = np.einsum("...nj,...ji->...ni", dz, params["W1"]) * gelu_grad(h)
        dw1 = dz[..., :, :, None] * a[..., :, None, :]
        dw2 = dh[..., :, :, None] * x[..., :, None, :]
        return {"W1": _sum_or_keep(dw1, per_token), "W2": _sum_or_keep(dw2, per_token)}


def broadcast_gate(gate: np.ndarray, param_ndim: int, axis: int) -> np.ndarray:
    """Reshape a gate so it broadcasts against a parameter of ``param_ndim`` own axes.

    Parameters
    ----------
    gate : ndarray
        ``[B, H]`` (scalar per head), ``[B, H, D]`` (channel-wise, applied along ``axis``)
        or ``[B, H, *param_shape]`` (element-wise, e.g. DFW's ``β_t α_t^T``).
    param_ndim : int
        Number of the parameter's own axes (2 for a matrix).
    axis : int
        Negative axis of the parameter that a channel-wise gate scales.
    """
    own = gate.ndim - 2
    if own == 0:
        return gate.reshape(gate.shape + (1,) * param_ndim)
    if own == param_ndim and param_ndim > 1:
        return gate
    if own == 1:
        # put the D axis at position `axis` of the parameter's own axes
        shape = [1] * param_ndim
        shape[axis] = gate.shape[-1]
        return gate.reshape(gate.shape[:2] + tuple(shape))
    raise ValueError(f"gate of shape {gate.shape} cannot scale a parameter of {param_ndim} axes")
