"""Memory learning algorithms: the fourth MIRAS choice (Sec 4, choice 4).

One recurrent step of each algorithm, vectorised over batch and heads. A step takes the memory
state (a dict of named arrays ``[B, H, *shape]``, the retention gate's variables ``Z``), the
token's key ``k [B, H, d_k]`` and value ``v [B, H, d_v]``, and the token's gates already shaped
``[B, H]`` (scalar) or ``[B, H, D]`` (channel-wise), and returns the next state.

* :class:`GD` - one gradient step through the retention gate (Eq 5 and the Learning-Retaining
  viewpoint);
* :class:`Momentum` - GD with momentum (Titans-LMM);
* :class:`ImplicitGD` - the proximal/implicit step on the exact loss (Longhorn);
* :class:`MultiStepGD` - several GD steps per token (DeltaProduct);
* :class:`ClosedForm` - the exact regularised least-squares solution (Mesa layer);
* :class:`NonParametric` - the Nadaraya-Watson solution, i.e. softmax attention (Eq 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ._checks import as_scalar, check_positive_int
from .bias import L2Bias
from .memory import MatrixMemory, broadcast_gate
from .retention import L2Retention


def gates_for(memory, gate: np.ndarray) -> dict[str, np.ndarray]:
    """Broadcast one gate (``[B, H]``, ``[B, H, D]`` or element-wise) to every parameter."""
    shapes = memory.shapes
    return {n: broadcast_gate(gate, len(shapes[n]), memory.gate_axes[n]) for n in shapes}


def memory_weights(config, z: dict) -> dict[str, np.ndarray]:
    """The memory's weights ``W = ψ(Z)`` for each parameter."""
    shapes = config.memory.shapes
    return {n: config.retention.link(z[n], len(shapes[n])) for n in shapes}


def bias_gradient(config, weights: dict, k: np.ndarray, v: np.ndarray, delta) -> dict:
    """``∇_W ℓ(W; k, v) = J_M(W, k)^T ∇_y L(M(W, k); v)`` for one token per ``[B, H]``.

    Shapes: ``k [B, H, d_k]``, ``v [B, H, d_v]``, ``delta [B, H]`` or ``[B, H, d_v]`` or None.
    """
    if delta is not None:  # one token: [B, H] -> [B, H, 1]; [B, H, d_v] -> [B, H, 1, d_v]
        delta = delta[..., None] if delta.ndim == 2 else delta[..., None, :]
    y = config.memory.forward(weights, k[..., None, :])
    dy = config.bias.grad(y, v[..., None, :], delta)
    return config.memory.vjp(weights, k[..., None, :], dy)


@dataclass(frozen=True)
class GD:
    """Gradient descent through the retention gate (Eq 5; Learning-Retaining viewpoint).

    ``g_t = ∇ℓ(ψ(Z_{t-1}); k_t, v_t)`` (or at ``ψ(α_t Z_{t-1})`` for a decayed-anchor gate) and
    ``Z_t = update(Z_{t-1}, g_t, η_t, α_t)``; for ℓ2 retention ``W_t = α_t W_{t-1} - η_t g_t``.
    """

    name: ClassVar[str] = "gd"
    parametric: ClassVar[bool] = True

    def init_state(self, config, z: dict) -> dict:
        return dict(z)

    def gradients(self, config, state, k, v, gates):
        mem, ret = config.memory, config.retention
        alpha = gates_for(mem, gates["alpha"])
        own = {n: len(s) for n, s in mem.shapes.items()}
        anchor = {n: ret.anchor(state[n], alpha[n], own[n]) for n in own}
        return bias_gradient(config, anchor, k, v, gates.get("delta")), alpha, own

    def step(self, config, state, k, v, gates):
        g, alpha, own = self.gradients(config, state, k, v, gates)
        eta = gates_for(config.memory, gates["eta"])
        new = dict(state)
        for n in own:
            new[n] = config.retention.update(state[n], g[n], eta[n], alpha[n], own[n])
        return new


@dataclass(frozen=True)
class Momentum(GD):
    """GD with momentum (Titans-LMM, Table 1).

    ``u_t = μ_t u_{t-1} + η_t ∇ℓ(W_{t-1})`` and ``W_t = α_t W_{t-1} - u_t``, i.e. Titans'
    ``S_t = μ_t S_{t-1} - θ_t ∇ℓ``, ``M_t = α_t M_{t-1} + S_t`` with ``S = -u``. (Table 1 prints
    ``M_t = α_t M_{t-1} - S_t``, which ascends the loss; docs/paper-notes.md.) The momentum
    buffers are kept in the state as ``"mom_<name>"``.
    """

    name: ClassVar[str] = "momentum"

    def init_state(self, config, z):
        state = dict(z)
        for n in config.memory.shapes:
            state.setdefault("mom_" + n, np.zeros_like(z[n]))
        return state

    def step(self, config, state, k, v, gates):
        g, alpha, own = self.gradients(config, state, k, v, gates)
        eta = gates_for(config.memory, gates["eta"])
        mu = gates_for(config.memory, gates["mu"])
        new = dict(state)
        for n in own:
            # u_t = μ_t u_{t-1} + η_t ∇ℓ ;  W_t = α_t W_{t-1} - u_t
            new["mom_" + n] = mu[n] * state["mom_" + n] + eta[n] * g[n]
            new[n] = config.retention.update(state[n], new["mom_" + n], 1.0, alpha[n], own[n])
        return new


@dataclass(frozen=True)
class ImplicitGD(GD):
    """Implicit (proximal) GD on the exact loss (Longhorn, Table 1).

    ``W_t = argmin_W ℓ(W; k_t, v_t) + 1/(2η) ‖W - α W_{t-1}‖²`` (channel-wise η scales the key
    axis). For the matrix memory with ℓ2 bias the closed form is
    ``W_t = W̃ - (W̃ k - v)(η ⊙ k)^T / (1 + k^T(η ⊙ k))``, ``W̃ = α W_{t-1}``; other memories
    and biases are solved numerically (scipy L-BFGS), one ``[B, H]`` slot at a time.
    """

    name: ClassVar[str] = "implicit_gd"

    def step(self, config, state, k, v, gates):
        if not isinstance(config.retention, L2Retention):
            raise ValueError("ImplicitGD needs the ℓ2 retention gate")
        mem = config.memory
        alpha = gates_for(mem, gates["alpha"])
        eta = gates_for(mem, gates["eta"])
        prior = {n: alpha[n] * state[n] for n in mem.shapes}
        if isinstance(mem, MatrixMemory) and isinstance(config.bias, L2Bias):
            w0, ek = prior["W"], eta["W"] * k[..., None, :]  # η ⊙ k as a row [B, H, 1, d_k]
            r = (np.einsum("bhij,bhj->bhi", w0, k) - v) / (1.0 + np.sum(ek[..., 0, :] * k, -1))[
                ..., None]
            # W_t = W̃ - (W̃k - v)(η⊙k)^T / (1 + kᵀ(η⊙k))
            return {**state, "W": w0 - r[..., :, None] * ek}
        return {**state, **self._numeric(config, prior, eta, k, v, gates.get("delta"))}

    @staticmethod
    def _numeric(config, prior, eta, k, v, delta):
        from scipy.optimize import minimize

        mem = config.memory
        names = list(mem.shapes)
        sizes = [int(np.prod(mem.shapes[n])) for n in names]
        B, H = k.shape[:2]
        out = {n: np.empty_like(prior[n]) for n in names}
        for b in range(B):
            for h in range(H):
                p0 = {n: prior[n][b, h] for n in names}
                et = {n: np.broadcast_to(eta[n][b, h], mem.shapes[n]) for n in names}
                dl = None if delta is None else delta[b, h]

                def unpack(x, p0=p0):
                    parts = np.split(x, np.cumsum(sizes)[:-1])
                    return {n: part.reshape(p0[n].shape) for n, part in zip(names, parts)}

                def fun(x, p0=p0, et=et, b=b, h=h, dl=dl):
                    w = unpack(x)
                    y = mem.forward(w, k[b, h][None, :])
                    dlv = None if dl is None else np.asarray(dl)
                    loss = float(np.sum(config.bias.loss(y, v[b, h][None, :], dlv)))
                    gw = mem.vjp(w, k[b, h][None, :], config.bias.grad(y, v[b, h][None, :], dlv))
                    loss += sum(np.sum((w[n] - p0[n]) ** 2 / (2 * et[n])) for n in names)
                    grad = np.concatenate(
                        [(gw[n] + (w[n] - p0[n]) / et[n]).ravel() for n in names])
                    return loss, grad

                x0 = np.concatenate([p0[n].ravel() for n in names])
                res = minimize(fun, x0, jac=True, method="L-BFGS-B",
                               options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
                for n, val in unpack(res.x).items():
                    out[n][b, h] = val
        return out


@dataclass(frozen=True)
class MultiStepGD(GD):
    """Several GD steps per token (DeltaProduct, Table 1).

    Keys and values carry an extra axis of ``n_steps`` per token (``k [B, H, n, d_k]``); step
    ``i`` is a GD step on ``(k_{t,i}, v_{t,i})``. The retention α_t is applied once, at the
    first step, so with the decayed-anchor ℓ2 gate and ℓ2 bias
    ``W_t = W_{t-1} α_t Π_i (I - η_t k_{t,i} k_{t,i}^T) + ...`` as in DeltaProduct.
    """

    n_steps: int = 2
    name: ClassVar[str] = "multi_step_gd"

    def __post_init__(self):
        check_positive_int(self.n_steps, "n_steps")

    def step(self, config, state, k, v, gates):
        ones = np.ones_like(gates["alpha"])
        for i in range(self.n_steps):
            g = dict(gates, alpha=gates["alpha"] if i == 0 else ones)
            state = super().step(config, state, k[..., i, :], v[..., i, :], g)
        return state


@dataclass(frozen=True)
class ClosedForm:
    """Closed-form (Mesa layer, Sec 4): the exact minimiser of the regularised ℓ2 objective.

    ``W_t = argmin_W Σ_{i<=t} (Π_{j=i+1..t} α_j) ½‖W k_i - v_i‖² + (λ/2)‖W‖²``
    ``     = P_t (Q_t + λ I)^{-1}`` with ``P_t = α_t P_{t-1} + v_t k_t^T`` and
    ``Q_t = α_t Q_{t-1} + k_t k_t^T`` (state ``{"P": [B,H,d_v,d_k], "Q": [B,H,d_k,d_k]}``).
    The read is ``y_t = W_t q_t``. Requires the matrix memory, ℓ2 bias and scalar α_t.
    """

    lam: float = 1.0
    name: ClassVar[str] = "closed_form"
    parametric: ClassVar[bool] = False

    def __post_init__(self):
        as_scalar(self.lam, "lam", 0.0, None, low_open=True)

    def init_state(self, config, batch, heads):
        dk, dv = config.memory.d_k, config.memory.d_v
        return {"P": np.zeros((batch, heads, dv, dk)), "Q": np.zeros((batch, heads, dk, dk))}

    def step(self, state, k, v, alpha):
        a = alpha[..., None, None]
        return {"P": a * state["P"] + v[..., :, None] * k[..., None, :],
                "Q": a * state["Q"] + k[..., :, None] * k[..., None, :]}

    def read(self, state, q):
        dk = state["Q"].shape[-1]
        # y = P (Q + λI)^{-1} q
        x = np.linalg.solve(state["Q"] + self.lam * np.eye(dk), q[..., None])[..., 0]
        return np.einsum("bhij,bhj->bhi", state["P"], x)


@dataclass(frozen=True)
class NonParametric:
    """Non-parametric solution of the ℓ2 objective: softmax attention (Eq 1-2, Sec 4).

    The memory is the set of pairs ``M_t = M_{t-1} ∪ {(k_t, v_t)}`` (state
    ``{"K": [B,H,S,d_k], "V": [B,H,S,d_v]}``) and the Nadaraya-Watson read is
    ``y_t = Σ_j exp(q_t·k_j/√d) v_j / Σ_l exp(q_t·k_l/√d)`` (Eq 2).
    """

    scale: float | None = None
    name: ClassVar[str] = "nonparametric"
    parametric: ClassVar[bool] = False

    def __post_init__(self):
        if self.scale is not None:
            as_scalar(self.scale, "scale", 0.0, None, low_open=True)
