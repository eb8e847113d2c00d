"""Every model of Table 1, Moneta, Yaad, Memora (Sec 5.3, Eq 24-27) and the Mesa layer (Sec 4).

Each test runs ``miras_ref.scan(zoo.get(name, d), ...)`` with random data-dependent gates and
compares it with the model's *own* recurrence, written here independently in the model's paper
form: a plain Python loop over ``t`` with explicit matrices (the memory ``S [d_v, d_k]`` unless
the model's paper uses another layout), and the output ``o_t = S_t q_t`` read after the write.
The deep-memory models (TTT-MLP, Titans, Moneta, Yaad, Memora) write the MLP memory
``M(x) = x + LN(W1 gelu_tanh(W2 x))`` in torch and take the gradients with ``torch.autograd``,
independently of miras_ref's analytic vector-Jacobian products.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import miras_ref
from miras_ref import zoo
from miras_ref.algorithms import GD
from miras_ref.bias import DotProductBias, L2Bias
from miras_ref.config import MirasConfig
from miras_ref.memory import MatrixMemory
from miras_ref.retention import L2Retention

B, H = 2, 3
TOL = 1e-10
SIGN_SHARPNESS = 10.0  # Remark 5: Sign(x) ≈ tanh(10 x)
ABS_EPS = 1e-6  # Remark 5: |x| ≈ sqrt(x² + 1e-6)
LN_EPS = 1e-5


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _seed(*parts) -> int:
    """A seed that is stable across processes (unlike ``hash`` of a string)."""
    return zlib.crc32(repr(parts).encode())


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _uniform(rng, lo, hi, shape):
    return rng.uniform(lo, hi, size=shape)


def _assert_close(actual: np.ndarray, expected: np.ndarray, tol: float = TOL) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.all(np.isfinite(actual))
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual - expected)))
    assert err <= tol * scale, f"max abs error {err:.3e} > {tol * scale:.3e}"


def _per_slot(fn, q, k, v, gates, state0):
    """Run ``fn`` (one [b, h] slot: arrays with time first) for every batch and head."""
    Bq, T, Hq = q.shape[:3]
    d_v = v.shape[-1]
    out = np.empty((Bq, T, Hq, d_v))
    for b in range(Bq):
        for h in range(Hq):
            g = {n: a[b, :, h] for n, a in gates.items()}
            s0 = None if state0 is None else {n: a[b, h] for n, a in state0.items()}
            out[b, :, h] = fn(q[b, :, h], k[b, :, h], v[b, :, h], g, s0)
    return out


def _qkv(rng, T, d, normalise_keys, d_v=None, n_keys=None):
    d_v = d if d_v is None else d_v
    kshape = (B, T, H, d) if n_keys is None else (B, T, H, n_keys, d)
    vshape = (B, T, H, d_v) if n_keys is None else (B, T, H, n_keys, d_v)
    q = rng.standard_normal((B, T, H, d))
    k = rng.standard_normal(kshape)
    v = rng.standard_normal(vshape)
    if normalise_keys:
        q, k = _normalise(q), _normalise(k)
    return q, k, v


# ------------------------------------------------------------------------------------------
# shallow memories: each model's own recurrence, one [b, h] slot, time on axis 0
# ------------------------------------------------------------------------------------------
def _ref_retnet(q, k, v, g, s0):
    # RetNet, vector memory (n = 1 per channel): s_t = γ s_{t-1} + v_t ⊙ k_t, o_t = s_t ⊙ q_t
    s, out = s0["w"].copy(), []
    for t in range(q.shape[0]):
        s = g["alpha"][t] * s + v[t] * k[t]
        out.append(s * q[t])
    return np.array(out)


def _ref_linear_attention(q, k, v, g, s0):
    # S_t = S_{t-1} + v_t k_t^T
    S, out = s0["W"].copy(), []
    for t in range(q.shape[0]):
        S = S + np.outer(v[t], k[t])
        out.append(S @ q[t])
    return np.array(out)


def _ref_dfw(q, k, v, g, s0):
    # S_t = (β_t α_t^T) ⊙ S_{t-1} + v_t k_t^T, gate passed element-wise
    S, out = s0["W"].copy(), []
    for t in range(q.shape[0]):
        S = g["alpha"][t] * S + np.outer(v[t], k[t])
        out.append(S @ q[t])
    return np.array(out)


def _ref_lightning(q, k, v, g, s0):
    # S_t = γ S_{t-1} + v_t k_t^T
    S, out = s0["W"].copy(), []
    for t in range(q.shape[0]):
        S = g["alpha"][t] * S + np.outer(v[t], k[t])
        out.append(S @ q[t])
    return np.array(out)


def _ref_gla(q, k, v, g, s0):
    # GLA's own layout S' = S^T [d_k, d_v]: S'_t = Diag(α_t) S'_{t-1} + k_t v_t^T, o_t = S'_t^T q_t
    Sp, out = s0["W"].T.copy(), []
    for t in range(q.shape[0]):
        Sp = np.diag(g["alpha"][t]) @ Sp + np.outer(k[t], v[t])
        out.append(Sp.T @ q[t])
    return np.array(out)


def _ref_mamba2(q, k, v, g, s0):
    # SSD: h_t = a_t h_{t-1} + Δ_t x_t B_t^T, y_t = h_t C_t with x = v, B = k, C = q
    h, out = s0["W"].copy(), []
    for t in range(q.shape[0]):
        h = g["alpha"][t] * h + g["eta"][t] * np.outer(v[t], k[t])
        out.append(h @ q[t])
    return np.array(out)


def _ref_hgrn2(q, k, v, g, s0):
    # S_t = S_{t-1} Diag(α_t) + v_t (1 - α_t)^T  (the key is tied to the forget gate; k unused)
    S, out = s0["W"].copy(), []
    for t in range(q.shape[0]):
        a = g["alpha"][t]
        S = S @ np.diag(a) + np.outer(v[t], 1.0 - a)
        out.append(S @ q[t])
    return np.array(out)


def _ref_deltanet(q, k, v, g, s0):
    # S_t = S_{t-1}(I - β_t k_t k_t^T) + β_t v_t k_t^T
    S, out, eye = s0["W"].copy(), [], np.eye(k.shape[-1])
    for t in range(q.shape[0]):
        b = g["eta"][t]
        S = S @ (eye - b * np.outer(k[t], k[t])) + b * np.outer(v[t], k[t])
        out.append(S @ q[t])
    return np.array(out)


def _ref_longhorn(q, k, v, g, s0):
    # S_t = S_{t-1}(I - ε_t k_t k_t^T) + ε_t v_t k_t^T,  ε_t = β_t / (1 + β_t k_t^T k_t)
    S, out, eye = s0["W"].copy(), [], np.eye(k.shape[-1])
    for t in range(q.shape[0]):
        eps = g["eta"][t] / (1.0 + g["eta"][t] * (k[t] @ k[t]))
        S = S @ (eye - eps * np.outer(k[t], k[t])) + eps * np.outer(v[t], k[t])
        out.append(S @ q[t])
    return np.array(out)


def _ref_ttt_linear(q, k, v, g, s0):
    # W_t = W_{t-1} - η ∇_W ½‖W k_t - v_t‖² = W_{t-1} - η (W_{t-1} k_t - v_t) k_t^T
    W, out = s0["W"].copy(), []
    for t in range(q.shape[0]):
        W = W - g["eta"][t] * np.outer(W @ k[t] - v[t], k[t])
        out.append(W @ q[t])
    return np.array(out)


def _ref_gated_deltanet(q, k, v, g, s0):
    # S_t = α_t S_{t-1}(I - β_t k_t k_t^T) + β_t v_t k_t^T
    S, out, eye = s0["W"].copy(), [], np.eye(k.shape[-1])
    for t in range(q.shape[0]):
        a, b = g["alpha"][t], g["eta"][t]
        S = a * S @ (eye - b * np.outer(k[t], k[t])) + b * np.outer(v[t], k[t])
        out.append(S @ q[t])
    return np.array(out)


def _ref_rwkv7(q, k, v, g, s0):
    # S_t = S_{t-1}(diag(w_t) - k_t (a_t ⊙ k_t)^T) + v_t (a_t ⊙ k_t)^T, channel-wise w_t and
    # in-context learning rate a_t (= β_t; scalar β_t gives the printed β_t k_t k_t^T form)
    S, out = s0["W"].copy(), []
    for t in range(q.shape[0]):
        ak = g["eta"][t] * k[t]
        S = S @ (np.diag(g["alpha"][t]) - np.outer(k[t], ak)) + np.outer(v[t], ak)
        out.append(S @ q[t])
    return np.array(out)


def _ref_deltaproduct(q, k, v, g, s0):
    # S <- α_t S; then for i = 1..n: S <- S(I - β_t k_{t,i} k_{t,i}^T) + β_t v_{t,i} k_{t,i}^T
    S, out, eye = s0["W"].copy(), [], np.eye(k.shape[-1])
    for t in range(q.shape[0]):
        b = g["eta"][t]
        S = g["alpha"][t] * S
        for i in range(k.shape[1]):
            ki, vi = k[t, i], v[t, i]
            S = S @ (eye - b * np.outer(ki, ki)) + b * np.outer(vi, ki)
        out.append(S @ q[t])
    return np.array(out)


def _ref_softmax_attention(q, k, v, g, s0):
    # Eq 2: o_i = Σ_{j<=i} exp(q_i·k_j/√d) v_j / Σ_{l<=i} exp(q_i·k_l/√d), direct O(T²)
    T, d = q.shape
    out = np.zeros((T, v.shape[-1]))
    for i in range(T):
        w = np.array([np.exp(q[i] @ k[j] / np.sqrt(d)) for j in range(i + 1)])
        out[i] = sum(w[j] * v[j] for j in range(i + 1)) / w.sum()
    return out


def _ref_mesa(q, k, v, g, s0, lam=1.0):
    # W_t = argmin_W Σ_{i<=t} c_{t,i} ½‖W k_i - v_i‖² + λ/2‖W‖², c_{t,i} = Π_{j=i+1..t} α_j,
    # i.e. W_t = (Σ_i c_{t,i} v_i k_i^T)(Σ_i c_{t,i} k_i k_i^T + λI)^{-1}, from scratch at every t
    T, d = k.shape
    out = []
    for t in range(T):
        P, Q = np.zeros((v.shape[-1], d)), lam * np.eye(d)
        for i in range(t + 1):
            c = np.prod(g["alpha"][i + 1:t + 1])
            P = P + c * np.outer(v[i], k[i])
            Q = Q + c * np.outer(k[i], k[i])
        W = P @ np.linalg.inv(Q)
        out.append(W @ q[t])
    return np.array(out)


# ------------------------------------------------------------------------------------------
# deep memory: the 2-layer MLP memory in torch, gradients by torch.autograd
# ------------------------------------------------------------------------------------------
def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _mlp(w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sec 5.3: M(x) = x + LN(W1 gelu(W2 x)) (tanh GELU, LayerNorm without affine)."""
    z = w1 @ F.gelu(w2 @ x, approximate="tanh")
    return x + F.layer_norm(z, z.shape, eps=LN_EPS)


def _mlp_grad(w1, w2, k, v, dy_fn):
    """∇_{W1, W2} of the bias through torch.autograd; ``dy_fn(e)`` is ∂L/∂y at ``e = y - v``."""
    w1 = w1.detach().clone().requires_grad_(True)
    w2 = w2.detach().clone().requires_grad_(True)
    y = _mlp(w1, w2, _t(k))
    dy = dy_fn((y - _t(v)).detach())
    g1, g2 = torch.autograd.grad(y, (w1, w2), grad_outputs=dy)
    return g1, g2


def _mlp_read(w1, w2, q) -> np.ndarray:
    with torch.no_grad():
        return _mlp(w1, w2, _t(q)).numpy()


def _dy_l2(e):  # ℓ = ½‖e‖²
    return e


def _dy_lp(p):
    # Remark 5 smooth ℓp gradient: p tanh(10 e) (e² + 1e-6)^{(p-1)/2} (not a loss's gradient)
    def fn(e):
        return p * torch.tanh(SIGN_SHARPNESS * e) * (e * e + ABS_EPS) ** ((p - 1) / 2)

    return fn


def _gate(g, name, t, axis):
    """A gate at time t as a torch tensor broadcasting along the parameter's d-sized axis."""
    a = _t(g[name][t])
    if a.ndim == 0:
        return a
    return a[:, None] if axis == -2 else a[None, :]


def _ref_ttt_mlp(q, k, v, g, s0):
    # TTT-MLP: W_t = W_{t-1} - η_t ∇ ½‖M(W_{t-1}; k_t) - v_t‖²
    w1, w2, out = _t(s0["W1"]), _t(s0["W2"]), []
    for t in range(q.shape[0]):
        g1, g2 = _mlp_grad(w1, w2, k[t], v[t], _dy_l2)
        eta = g["eta"][t]
        w1, w2 = w1 - eta * g1, w2 - eta * g2
        out.append(_mlp_read(w1, w2, q[t]))
    return np.array(out)


def _ref_titans(q, k, v, g, s0):
    # Titans-LMM: S_t = μ_t S_{t-1} - θ_t ∇ℓ(M_{t-1}; k_t, v_t), M_t = α_t M_{t-1} + S_t
    w1, w2, out = _t(s0["W1"]), _t(s0["W2"]), []
    s1, s2 = torch.zeros_like(w1), torch.zeros_like(w2)
    for t in range(q.shape[0]):
        g1, g2 = _mlp_grad(w1, w2, k[t], v[t], _dy_l2)
        mu, theta, alpha = g["mu"][t], g["eta"][t], g["alpha"][t]
        s1, s2 = mu * s1 - theta * g1, mu * s2 - theta * g2
        w1, w2 = alpha * w1 + s1, alpha * w2 + s2
        out.append(_mlp_read(w1, w2, q[t]))
    return np.array(out)


def _lq_normalise(a: torch.Tensor, q: float = 4.0) -> torch.Tensor:
    # Eq 24: W = A / ‖A‖_q^{q-2}, the entry-wise q-norm of each matrix
    return a / torch.sum(torch.abs(a) ** q) ** ((q - 2) / q)


def _ref_moneta(q, k, v, g, s0, p=3.0):
    # Eq 24: A_t = α_t A_{t-1} - η_t ∇ℓ_p(W_{t-1}; k_t, v_t), W_t = A_t / ‖A_t‖_4^2
    a1, a2, out = _t(s0["W1"]), _t(s0["W2"]), []
    for t in range(q.shape[0]):
        g1, g2 = _mlp_grad(_lq_normalise(a1), _lq_normalise(a2), k[t], v[t], _dy_lp(p))
        a1 = _gate(g, "alpha", t, -2) * a1 - _gate(g, "eta", t, -2) * g1
        a2 = _gate(g, "alpha", t, -1) * a2 - _gate(g, "eta", t, -1) * g2
        out.append(_mlp_read(_lq_normalise(a1), _lq_normalise(a2), q[t]))
    return np.array(out)


def _yaad_dy(delta, branches):
    # Eq 26 / Eq 16: ∇ℓ2 = e if ‖e‖ <= δ_t, else δ_t ∇ℓ1 = δ_t tanh(10 e) (Remark 5);
    # a channel-wise δ_t [d] makes the test per coordinate, |e_j| <= δ_j
    def fn(e):
        d = _t(delta)
        small = torch.abs(e) <= d if d.ndim == 1 else torch.linalg.norm(e) <= d
        branches.append(small.numpy().copy())
        return torch.where(small, e, d * torch.tanh(SIGN_SHARPNESS * e))

    return fn


def _ref_yaad(q, k, v, g, s0, branches=None):
    # Eq 26: W_t = α_t W_{t-1} - η_t ∇ℓ2 if ‖M(k_t) - v_t‖ <= δ_t else α_t W_{t-1} - η_t δ_t ∇ℓ1
    branches = [] if branches is None else branches
    w1, w2, out = _t(s0["W1"]), _t(s0["W2"]), []
    for t in range(q.shape[0]):
        g1, g2 = _mlp_grad(w1, w2, k[t], v[t], _yaad_dy(g["delta"][t], branches))
        w1 = _gate(g, "alpha", t, -2) * w1 - _gate(g, "eta", t, -2) * g1
        w2 = _gate(g, "alpha", t, -1) * w2 - _gate(g, "eta", t, -1) * g2
        out.append(_mlp_read(w1, w2, q[t]))
    return np.array(out)


def _ref_memora_logits(q, k, v, g, s0):
    # Memora in logits: L_t = α_t L_{t-1} - η_t ∇_W ℓ2(W_{t-1}), W_t = softmax(L_t) row-wise (c = 1)
    l1, l2, out = _t(s0["W1"]), _t(s0["W2"]), []
    for t in range(q.shape[0]):
        g1, g2 = _mlp_grad(torch.softmax(l1, -1), torch.softmax(l2, -1), k[t], v[t], _dy_l2)
        a, eta = g["alpha"][t], g["eta"][t]
        l1, l2 = a * l1 - eta * g1, a * l2 - eta * g2
        out.append(_mlp_read(torch.softmax(l1, -1), torch.softmax(l2, -1), q[t]))
    return np.array(out)


def _ref_memora_eq27(q, k, v, g, s0):
    # Eq 27 on the weights themselves: W_t = Softmax(α_t log W_{t-1} - η_t ∇ℓ2(W_{t-1})) row-wise
    w1, w2 = torch.softmax(_t(s0["W1"]), -1), torch.softmax(_t(s0["W2"]), -1)
    out = []
    for t in range(q.shape[0]):
        g1, g2 = _mlp_grad(w1, w2, k[t], v[t], _dy_l2)
        a, eta = g["alpha"][t], g["eta"][t]
        w1 = torch.softmax(a * torch.log(w1) - eta * g1, -1)
        w2 = torch.softmax(a * torch.log(w2) - eta * g2, -1)
        out.append(_mlp_read(w1, w2, q[t]))
    return np.array(out)


# ------------------------------------------------------------------------------------------
# cases: (reference, inputs) for every zoo model
# ------------------------------------------------------------------------------------------
def _matrix_state(rng, d_v, d_k, scale=0.5):
    return {"W": scale * rng.standard_normal((B, H, d_v, d_k))}


def _mlp_state(rng, d, expansion=4):
    hidden = expansion * d
    return {"W1": rng.standard_normal((B, H, d, hidden)) / np.sqrt(hidden),
            "W2": rng.standard_normal((B, H, hidden, d)) / np.sqrt(d)}


def _case(name: str, T: int, d: int, seed: int):
    """Inputs ``(q, k, v, gates, initial_state)`` and the reference for model ``name``."""
    rng = np.random.default_rng(seed)
    scalar = (B, T, H)
    if name == "retnet":
        q, k, v = _qkv(rng, T, d, False)
        gamma = 1.0 - 2.0 ** (-5.0 - np.arange(H))  # RetNet's multi-scale per-head decay
        gates = {"alpha": np.broadcast_to(gamma, scalar).copy()}
        return _ref_retnet, q, k, v, gates, {"w": rng.standard_normal((B, H, d))}
    if name == "softmax_attention":
        q, k, v = _qkv(rng, T, d, False)
        return _ref_softmax_attention, q, k, v, None, None
    if name == "linear_attention":
        q, k, v = _qkv(rng, T, d, False)
        return _ref_linear_attention, q, k, v, None, _matrix_state(rng, d, d)
    if name == "dfw":
        q, k, v = _qkv(rng, T, d, False)
        beta, alpha = _uniform(rng, 0.6, 1.0, scalar + (d,)), _uniform(rng, 0.6, 1.0, scalar + (d,))
        gates = {"alpha": beta[..., :, None] * alpha[..., None, :]}  # β_t α_t^T [d_v, d_k]
        return _ref_dfw, q, k, v, gates, _matrix_state(rng, d, d)
    if name == "lightning_attention":
        q, k, v = _qkv(rng, T, d, False)
        gamma = _uniform(rng, 0.8, 0.99, (1, 1, H))  # one learned constant per head
        return (_ref_lightning, q, k, v, {"alpha": np.broadcast_to(gamma, scalar).copy()},
                _matrix_state(rng, d, d))
    if name == "gla":
        q, k, v = _qkv(rng, T, d, False)
        gates = {"alpha": _uniform(rng, 0.5, 1.0, scalar + (d,))}
        return _ref_gla, q, k, v, gates, _matrix_state(rng, d, d)
    if name == "mamba2":
        q, k, v = _qkv(rng, T, d, False)
        dt = np.log1p(np.exp(rng.standard_normal(scalar)))  # Δ_t = softplus(·) > 0
        A = -np.exp(rng.standard_normal((1, 1, H)))  # A_h < 0 per head
        gates = {"eta": dt, "alpha": np.exp(dt * A)}
        return _ref_mamba2, q, k, v, gates, _matrix_state(rng, d, d)
    if name == "hgrn2":
        q, k, v = _qkv(rng, T, d, False)
        gates = {"alpha": _uniform(rng, 0.3, 0.99, scalar + (d,))}
        return _ref_hgrn2, q, k, v, gates, _matrix_state(rng, d, d)
    if name == "deltanet":
        q, k, v = _qkv(rng, T, d, True)
        return (_ref_deltanet, q, k, v, {"eta": _uniform(rng, 0.1, 1.0, scalar)},
                _matrix_state(rng, d, d))
    if name == "longhorn":
        q, k, v = _qkv(rng, T, d, False)  # Longhorn's ε_t carries k^T k: keys not normalised
        return (_ref_longhorn, q, k, v, {"eta": _uniform(rng, 0.1, 2.0, scalar)},
                _matrix_state(rng, d, d))
    if name == "ttt_linear":
        q, k, v = _qkv(rng, T, d, True)
        return (_ref_ttt_linear, q, k, v, {"eta": np.full(scalar, 0.3)},
                _matrix_state(rng, d, d))
    if name == "gated_deltanet":
        q, k, v = _qkv(rng, T, d, True)
        gates = {"eta": _uniform(rng, 0.1, 1.0, scalar), "alpha": _uniform(rng, 0.5, 1.0, scalar)}
        return _ref_gated_deltanet, q, k, v, gates, _matrix_state(rng, d, d)
    if name == "rwkv7":
        q, k, v = _qkv(rng, T, d, True)
        gates = {"eta": _uniform(rng, 0.1, 1.0, scalar + (d,)),
                 "alpha": _uniform(rng, 0.5, 1.0, scalar + (d,))}
        return _ref_rwkv7, q, k, v, gates, _matrix_state(rng, d, d)
    if name == "deltaproduct":
        q, k, v = _qkv(rng, T, d, True, n_keys=2)
        gates = {"eta": _uniform(rng, 0.1, 1.9, scalar), "alpha": _uniform(rng, 0.5, 1.0, scalar)}
        return _ref_deltaproduct, q, k, v, gates, _matrix_state(rng, d, d)
    if name == "ttt_mlp":
        q, k, v = _qkv(rng, T, d, False)
        return (_ref_ttt_mlp, q, k, v, {"eta": _uniform(rng, 0.05, 0.5, scalar)},
                _mlp_state(rng, d))
    if name == "titans_lmm":
        q, k, v = _qkv(rng, T, d, True)
        gates = {"eta": _uniform(rng, 0.05, 0.5, scalar), "alpha": _uniform(rng, 0.8, 1.0, scalar),
                 "mu": _uniform(rng, 0.0, 0.95, scalar)}
        state = _mlp_state(rng, d)
        state.update({"mom_" + n: np.zeros_like(a) for n, a in list(state.items())})
        return _ref_titans, q, k, v, gates, state
    if name == "moneta":
        q, k, v = _qkv(rng, T, d, True)
        gates = {"eta": _uniform(rng, 0.01, 0.1, scalar), "alpha": _uniform(rng, 0.8, 1.0, scalar)}
        return _ref_moneta, q, k, v, gates, _mlp_state(rng, d)
    if name == "yaad":
        q, k, v = _qkv(rng, T, d, True)
        gates = {"eta": _uniform(rng, 0.05, 0.3, scalar), "alpha": _uniform(rng, 0.8, 1.0, scalar),
                 "delta": _uniform(rng, 0.5, 5.0, scalar)}
        return _ref_yaad, q, k, v, gates, _mlp_state(rng, d)
    if name == "memora":
        q, k, v = _qkv(rng, T, d, True)
        gates = {"eta": _uniform(rng, 0.05, 0.5, scalar), "alpha": _uniform(rng, 0.8, 1.0, scalar)}
        return _ref_memora_logits, q, k, v, gates, _mlp_state(rng, d)
    if name == "mesa":
        q, k, v = _qkv(rng, T, d, False)
        return _ref_mesa, q, k, v, {"alpha": np.ones(scalar)}, None
    raise KeyError(name)


SHALLOW = ["retnet", "softmax_attention", "linear_attention", "dfw", "lightning_attention", "gla",
           "mamba2", "hgrn2", "deltanet", "longhorn", "ttt_linear", "gated_deltanet", "rwkv7",
           "deltaproduct", "mesa"]
DEEP = ["ttt_mlp", "titans_lmm", "moneta", "yaad", "memora"]


def _run_case(name, T, d, seed):
    ref, q, k, v, gates, state0 = _case(name, T, d, seed)
    y, _ = miras_ref.scan(zoo.get(name, d), q, k, v, gates, initial_state=state0)
    full = {} if gates is None else gates
    expected = _per_slot(ref, q, k, v, full, state0)
    return y, expected


def test_every_zoo_model_has_an_independent_recurrence_here():
    assert set(SHALLOW) | set(DEEP) == set(zoo.ALL)
    assert set(zoo.TABLE1) | set(zoo.MIRAS_VARIANTS) | {"mesa"} == set(zoo.ALL)


@pytest.mark.parametrize("T", [1, 7, 63])
@pytest.mark.parametrize("name", SHALLOW)
def test_table1_shallow_memory_matches_own_recurrence(name, T):
    d = {1: 5, 7: 6, 63: 7}[T]
    y, expected = _run_case(name, T, d, seed=_seed(name, T))
    _assert_close(y, expected)


@pytest.mark.parametrize("T", [1, 7])
@pytest.mark.parametrize("name", DEEP)
def test_table1_and_sec53_deep_memory_matches_own_torch_recurrence(name, T):
    d = {1: 5, 7: 6}[T]
    y, expected = _run_case(name, T, d, seed=_seed(name, T))
    _assert_close(y, expected)


# Named tests for the equation index: one per model whose form a single test pins down.
def test_table1_gated_deltanet_matches_own_recurrence():
    y, expected = _run_case("gated_deltanet", 7, 5, seed=11)
    _assert_close(y, expected)


def test_table1_rwkv7_scalar_beta_matches_printed_form():
    # RWKV-7 as printed: S_t = S_{t-1}(diag(w_t) - β_t k_t k_t^T) + β_t v_t k_t^T, scalar β_t
    rng = np.random.default_rng(12)
    T, d = 7, 5
    q, k, v = _qkv(rng, T, d, True)
    gates = {"eta": _uniform(rng, 0.1, 1.0, (B, T, H)),
             "alpha": _uniform(rng, 0.5, 1.0, (B, T, H, d))}
    s0 = _matrix_state(rng, d, d)
    y, _ = miras_ref.scan(zoo.rwkv7(d), q, k, v, gates, initial_state=s0)
    expected = np.empty_like(y)
    for b in range(B):
        for h in range(H):
            S = s0["W"][b, h].copy()
            for t in range(T):
                kt, beta = k[b, t, h], gates["eta"][b, t, h]
                S = (S @ (np.diag(gates["alpha"][b, t, h]) - beta * np.outer(kt, kt))
                     + beta * np.outer(v[b, t, h], kt))
                expected[b, t, h] = S @ q[b, t, h]
    _assert_close(y, expected)


def test_table1_mamba2_ssd_default_zero_state_matches_own_recurrence():
    # from the default (zero) state, as in Mamba2's h_0 = 0
    ref, q, k, v, gates, _ = _case("mamba2", 7, 6, seed=13)
    y, _ = miras_ref.scan(zoo.mamba2(6), q, k, v, gates)
    zero = {"W": np.zeros((B, H, 6, 6))}
    _assert_close(y, _per_slot(ref, q, k, v, gates, zero))


def test_table1_hgrn2_ignores_the_given_keys():
    ref, q, k, v, gates, s0 = _case("hgrn2", 7, 5, seed=14)
    y1, _ = miras_ref.scan(zoo.hgrn2(5), q, k, v, gates, initial_state=s0)
    y2, _ = miras_ref.scan(zoo.hgrn2(5), q, 3.0 * k + 1.0, v, gates, initial_state=s0)
    _assert_close(y1, y2, tol=0.0)
    _assert_close(y1, _per_slot(ref, q, k, v, gates, s0))


def test_eq2_softmax_attention_with_value_dim_different_from_key_dim():
    rng = np.random.default_rng(15)
    T, d_k, d_v = 7, 5, 6
    q, k, v = _qkv(rng, T, d_k, False, d_v=d_v)
    y, _ = miras_ref.scan(zoo.softmax_attention(d_k, d_v), q, k, v)
    _assert_close(y, _per_slot(_ref_softmax_attention, q, k, v, {}, None))
    y2 = miras_ref.attention(q, k, v)[0]
    _assert_close(y2, y, tol=0.0)


def test_sec4_mesa_with_decay_and_lambda_matches_regularised_least_squares():
    rng = np.random.default_rng(16)
    T, d, lam = 7, 5, 0.3
    q, k, v = _qkv(rng, T, d, False)
    gates = {"alpha": _uniform(rng, 0.5, 1.0, (B, T, H))}
    y, _ = miras_ref.scan(zoo.mesa(d, lam=lam), q, k, v, gates)

    def ref(q, k, v, g, s0):
        return _ref_mesa(q, k, v, g, s0, lam=lam)

    _assert_close(y, _per_slot(ref, q, k, v, gates, None))


def test_sec4_mesa_output_is_the_argmin_of_its_regularised_objective():
    # Read W_t column by column: batch slot b queries with the basis vector e_b, same k and v.
    rng = np.random.default_rng(17)
    T, d, lam = 7, 5, 0.7
    k1 = rng.standard_normal((1, T, 1, d))
    v1 = rng.standard_normal((1, T, 1, d))
    k, v = np.repeat(k1, d, axis=0), np.repeat(v1, d, axis=0)
    q = np.broadcast_to(np.eye(d)[:, None, None, :], (d, T, 1, d)).copy()
    y, _ = miras_ref.scan(zoo.mesa(d, lam=lam), q, k, v)
    for t in range(T):
        W = y[:, t, 0, :].T  # column b of W_t is W_t e_b
        # ∇_W [Σ_{i<=t} ½‖W k_i - v_i‖² + λ/2 ‖W‖²] = Σ_i (W k_i - v_i) k_i^T + λ W = 0
        data = sum(np.outer(W @ k1[0, i, 0] - v1[0, i, 0], k1[0, i, 0]) for i in range(t + 1))
        assert np.max(np.abs(data + lam * W)) < 1e-10
        # the regulariser matters: W_t is not the minimiser of the data term alone
        assert np.max(np.abs(data)) > 1e-3


def test_eq27_memora_logit_recurrence_equals_softmax_of_log_weights():
    # Eq 27 written on W (Softmax(α log W - η∇)) equals the logit recurrence the library runs
    ref_logits, q, k, v, gates, s0 = _case("memora", 7, 5, seed=18)
    y, _ = miras_ref.scan(zoo.memora(5), q, k, v, gates, initial_state=s0)
    eq27 = _per_slot(_ref_memora_eq27, q, k, v, gates, s0)
    logits = _per_slot(ref_logits, q, k, v, gates, s0)
    _assert_close(eq27, logits)
    _assert_close(y, eq27)


def test_eq26_yaad_takes_both_branches_and_matches_own_recurrence():
    ref, q, k, v, gates, s0 = _case("yaad", 7, 6, seed=19)
    branches: list = []

    def tracked(q, k, v, g, s0):
        return _ref_yaad(q, k, v, g, s0, branches=branches)

    y, _ = miras_ref.scan(zoo.yaad(6), q, k, v, gates, initial_state=s0)
    _assert_close(y, _per_slot(tracked, q, k, v, gates, s0))
    taken = np.array([bool(b) for b in branches])
    assert taken.any() and (~taken).any(), "both the ℓ2 and the δ-ℓ1 branch must be exercised"


def test_sec54_yaad_channelwise_gates_match_own_recurrence():
    # Sec 5.4: η_t, δ_t, α_t ∈ R^d; η/α scale the d-sized axis of each weight, δ_t per coordinate
    rng = np.random.default_rng(20)
    T, d = 7, 5
    q, k, v = _qkv(rng, T, d, True)
    ch = (B, T, H, d)
    gates = {"eta": _uniform(rng, 0.05, 0.3, ch), "alpha": _uniform(rng, 0.8, 1.0, ch),
             "delta": _uniform(rng, 0.2, 3.0, ch)}
    s0 = _mlp_state(rng, d)
    branches: list = []

    def tracked(q, k, v, g, s0):
        return _ref_yaad(q, k, v, g, s0, branches=branches)

    y, _ = miras_ref.scan(zoo.yaad(d), q, k, v, gates, initial_state=s0)
    _assert_close(y, _per_slot(tracked, q, k, v, gates, s0))
    taken = np.concatenate(branches)
    assert taken.any() and (~taken).any()


def test_eq24_moneta_channelwise_gates_match_own_recurrence():
    rng = np.random.default_rng(21)
    T, d = 7, 6
    q, k, v = _qkv(rng, T, d, True)
    ch = (B, T, H, d)
    gates = {"eta": _uniform(rng, 0.01, 0.1, ch), "alpha": _uniform(rng, 0.8, 1.0, ch)}
    s0 = _mlp_state(rng, d)
    y, _ = miras_ref.scan(zoo.moneta(d), q, k, v, gates, initial_state=s0)
    _assert_close(y, _per_slot(_ref_moneta, q, k, v, gates, s0))


# ------------------------------------------------------------------------------------------
# Titans sign erratum (Table 1) and the two ℓ2-retention anchors
# ------------------------------------------------------------------------------------------
def test_table1_titans_printed_sign_ascends_the_loss_library_form_descends():
    """Table 1 prints ``M_t = α M_{t-1} - S_t`` with ``S_t = μ S_{t-1} - θ ∇ℓ``: that adds
    ``θ∇ℓ`` and increases the ℓ2 loss on a fixed pair; the library's ``M_t = α M_{t-1} + S_t``
    (Titans' own paper) decreases it."""
    rng = np.random.default_rng(22)
    d, T = 5, 4
    k = _normalise(rng.standard_normal(d))
    v = rng.standard_normal(d)
    s0 = _mlp_state(rng, d)
    w1_0, w2_0 = _t(s0["W1"][0, 0]), _t(s0["W2"][0, 0])

    def loss(w1, w2):
        with torch.no_grad():
            return 0.5 * float(torch.sum((_mlp(w1, w2, _t(k)) - _t(v)) ** 2))

    loss0 = loss(w1_0, w2_0)
    theta, mu = 0.005, 0.5
    # the printed form, written in torch
    w1, w2 = w1_0, w2_0
    s1, s2 = torch.zeros_like(w1), torch.zeros_like(w2)
    printed = []
    for _ in range(T):
        g1, g2 = _mlp_grad(w1, w2, k, v, _dy_l2)
        s1, s2 = mu * s1 - theta * g1, mu * s2 - theta * g2
        w1, w2 = w1 - s1, w2 - s2  # α = 1
        printed.append(loss(w1, w2))
    # the library: query with the key itself, so y_t = M_t(k)
    tile = np.broadcast_to(k, (B, T, H, d)).copy()
    vv = np.broadcast_to(v, (B, T, H, d)).copy()
    gates = {"eta": np.full((B, T, H), theta), "alpha": np.ones((B, T, H)),
             "mu": np.full((B, T, H), mu)}
    state = {**s0, "mom_W1": np.zeros_like(s0["W1"]), "mom_W2": np.zeros_like(s0["W2"])}
    state = {n: np.broadcast_to(a[:1, :1], a.shape).copy() for n, a in state.items()}
    y, _ = miras_ref.scan(zoo.titans_lmm(d), tile, tile, vv, gates, initial_state=state)
    library = 0.5 * np.sum((y[0, :, 0] - v) ** 2, axis=-1)
    assert all(b > a for a, b in zip([loss0, *printed], printed)), printed
    assert all(b < a for a, b in zip([loss0, *library], library)), library


def test_table1_deltanet_retrieves_the_last_value_and_printed_left_product_does_not():
    """With β_t = 1 and ‖k_t‖ = 1 the delta rule S_t = S_{t-1}(I - k k^T) + v k^T stores v_t
    exactly: S_t k_t = v_t. Table 1 / Eq 9 print the product on the left, (I - β k k^T) S_{t-1},
    which acts on the value axis (only dimensionally possible for d_k = d_v) and does not."""
    rng = np.random.default_rng(24)
    T, d = 7, 5
    k = _normalise(rng.standard_normal((B, T, H, d)))
    v = rng.standard_normal((B, T, H, d))
    s0 = _matrix_state(rng, d, d, scale=1.0)
    y, _ = miras_ref.scan(zoo.deltanet(d), k, k, v, {"eta": np.ones((B, T, H))}, initial_state=s0)
    _assert_close(y, v)
    S = s0["W"][0, 0].copy()
    kt, vt = k[0, 0, 0], v[0, 0, 0]
    left = (np.eye(d) - np.outer(kt, kt)) @ S + np.outer(vt, kt)
    assert np.max(np.abs(left @ kt - vt)) > 1e-2


def _dot_config(anchor, bias):
    return MirasConfig("anchor_test", MatrixMemory(5, 5), bias, L2Retention(anchor_at=anchor),
                       GD(), {"eta": 1.0, "alpha": 0.9})


def test_sec4_l2_retention_anchors_agree_for_dot_product_bias_and_differ_for_l2_bias():
    rng = np.random.default_rng(23)
    T, d = 7, 5
    q, k, v = _qkv(rng, T, d, True)
    gates = {"eta": _uniform(rng, 0.1, 1.0, (B, T, H)), "alpha": _uniform(rng, 0.3, 0.9, (B, T, H))}
    s0 = _matrix_state(rng, d, d)
    prev, _ = miras_ref.scan(_dot_config("previous", DotProductBias()), q, k, v, gates,
                             initial_state=s0)
    dec, _ = miras_ref.scan(_dot_config("decayed", DotProductBias()), q, k, v, gates,
                            initial_state=s0)
    _assert_close(prev, dec, tol=1e-13)
    _assert_close(prev, _per_slot(_ref_mamba2, q, k, v, gates, s0))  # the Hebbian write
    prev2, _ = miras_ref.scan(_dot_config("previous", L2Bias()), q, k, v, gates, initial_state=s0)
    dec2, _ = miras_ref.scan(_dot_config("decayed", L2Bias()), q, k, v, gates, initial_state=s0)
    assert np.max(np.abs(prev2 - dec2)) > 1e-2
    # "decayed" is Gated DeltaNet, "previous" is the RWKV-7 form with a scalar decay
    _assert_close(dec2, _per_slot(_ref_gated_deltanet, q, k, v, gates, s0))
    scalar_as_channel = {"eta": gates["eta"], "alpha": np.repeat(gates["alpha"][..., None], d, -1)}
    _assert_close(prev2, _per_slot(_ref_rwkv7, q, k, v, scalar_as_channel, s0))
