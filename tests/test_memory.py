"""Tests of miras_ref.memory: the memory architectures (Sec 4 choice 1; Sec 5.3 MLP memory).

Every check is against mathematics, not against the module itself: vector-Jacobian products
against central finite differences of ``Σ_n ⟨dy_n, M(W, x_n)⟩``, the MLP memory against an
independent PyTorch implementation and ``torch.autograd``, GELU and LayerNorm derivatives against
finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from miras_ref.memory import (
    MatrixMemory,
    MLPMemory,
    VectorMemory,
    broadcast_gate,
    gelu,
    gelu_grad,
    layer_norm,
    layer_norm_vjp,
)

B, H, N = 2, 3, 7  # leading batch axes [B, H] and N tokens (odd sizes)

MEMORIES = {
    "matrix": MatrixMemory(d_k=5, d_v=7),
    "vector": VectorMemory(d=5),
    "mlp": MLPMemory(d=5),
}


def random_params(mem, rng) -> dict[str, np.ndarray]:
    """Random non-zero parameters ``[B, H, *shape]`` scaled by 1/sqrt(fan-in)."""
    return {
        name: rng.standard_normal((B, H, *shape)) / np.sqrt(shape[-1])
        for name, shape in mem.shapes.items()
    }


def random_inputs(mem, rng) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((B, H, N, mem.d_k))
    dy = rng.standard_normal((B, H, N, mem.d_v))
    return x, dy


def probe(mem, params, name, x, dy):
    """``p -> Σ ⟨dy, forward(params with params[name] = p, x)⟩`` (scalar)."""

    def f(p):
        return float(np.sum(dy * mem.forward({**params, name: p}, x)))

    return f


# ------------------------------------------------------------------------------------------
# VJPs of every memory against finite differences
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(MEMORIES))
def test_memory_forward_shape_with_batch_axes(kind, rng):
    mem = MEMORIES[kind]
    params = random_params(mem, rng)
    x, _ = random_inputs(mem, rng)
    assert mem.forward(params, x).shape == (B, H, N, mem.d_v)


@pytest.mark.parametrize("kind", list(MEMORIES))
def test_memory_vjp_matches_finite_differences(kind, rng, fd_grad):
    mem = MEMORIES[kind]
    params = random_params(mem, rng)
    x, dy = random_inputs(mem, rng)
    vjp = mem.vjp(params, x, dy)
    assert set(vjp) == set(mem.shapes)
    for name, p in params.items():
        assert vjp[name].shape == p.shape
        fd = fd_grad(probe(mem, params, name, x, dy), p)
        np.testing.assert_allclose(vjp[name], fd, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("kind", list(MEMORIES))
def test_memory_per_token_vjp_matches_finite_differences(kind, rng, fd_grad):
    mem = MEMORIES[kind]
    params = random_params(mem, rng)
    x, dy = random_inputs(mem, rng)
    per_tok = mem.vjp(params, x, dy, per_token=True)
    for name, p in params.items():
        assert per_tok[name].shape == (B, H, N, *mem.shapes[name])
        for n in range(N):
            # d/dW of <dy_n, M(W, x_n)> only: the n-th token's own contribution
            f = probe(mem, params, name, x[..., n : n + 1, :], dy[..., n : n + 1, :])
            fd = fd_grad(f, p)
            np.testing.assert_allclose(
                per_tok[name][:, :, n], fd, rtol=1e-6, atol=1e-7, err_msg=f"{name} token {n}"
            )


@pytest.mark.parametrize("kind", list(MEMORIES))
def test_memory_per_token_vjps_sum_to_summed_vjp(kind, rng):
    mem = MEMORIES[kind]
    params = random_params(mem, rng)
    x, dy = random_inputs(mem, rng)
    summed = mem.vjp(params, x, dy)
    per_tok = mem.vjp(params, x, dy, per_token=True)
    for name in params:
        np.testing.assert_allclose(per_tok[name].sum(axis=2), summed[name], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------
# MLP memory against an independent PyTorch implementation
# ------------------------------------------------------------------------------------------
def torch_mlp_memory(w1, w2, x, eps=1e-5):
    """``x + LN(W1 gelu_tanh(W2 x))``, LN without affine parameters, written with torch ops."""
    h = torch.einsum("...ij,...nj->...ni", w2, x)
    z = torch.einsum("...ij,...nj->...ni", w1, F.gelu(h, approximate="tanh"))
    return x + F.layer_norm(z, (z.shape[-1],), eps=eps)


def test_mlp_memory_forward_matches_torch(rng):
    mem = MEMORIES["mlp"]
    params = random_params(mem, rng)
    x, _ = random_inputs(mem, rng)
    want = torch_mlp_memory(torch.from_numpy(params["W1"]), torch.from_numpy(params["W2"]),
                            torch.from_numpy(x), eps=mem.eps).numpy()
    np.testing.assert_allclose(mem.forward(params, x), want, rtol=1e-12, atol=1e-12)


def test_mlp_memory_vjp_matches_torch_autograd(rng):
    mem = MEMORIES["mlp"]
    params = random_params(mem, rng)
    x, dy = random_inputs(mem, rng)
    w1 = torch.from_numpy(params["W1"]).requires_grad_(True)
    w2 = torch.from_numpy(params["W2"]).requires_grad_(True)
    y = torch_mlp_memory(w1, w2, torch.from_numpy(x), eps=mem.eps)
    g1, g2 = torch.autograd.grad((y * torch.from_numpy(dy)).sum(), [w1, w2], retain_graph=True)
    vjp = mem.vjp(params, x, dy)
    np.testing.assert_allclose(vjp["W1"], g1.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(vjp["W2"], g2.numpy(), rtol=1e-10, atol=1e-12)
    # per token: autograd of the n-th token's term alone
    per_tok = mem.vjp(params, x, dy, per_token=True)
    for n in (0, N // 2, N - 1):
        g1, g2 = torch.autograd.grad(
            (y[..., n, :] * torch.from_numpy(dy[..., n, :])).sum(), [w1, w2], retain_graph=True
        )
        np.testing.assert_allclose(per_tok["W1"][:, :, n], g1.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(per_tok["W2"][:, :, n], g2.numpy(), rtol=1e-10, atol=1e-12)


def test_gelu_matches_torch_tanh_gelu(rng):
    x = rng.standard_normal(37) * 3.0
    want = F.gelu(torch.from_numpy(x), approximate="tanh").numpy()
    np.testing.assert_allclose(gelu(x), want, rtol=1e-13, atol=1e-15)


def test_gelu_grad_matches_finite_differences(rng):
    x = rng.standard_normal(37) * 3.0
    # gelu is element-wise, so its derivative is the central difference of each entry
    # (rounding error ~ ulp(gelu(x)) / eps <= 1e-9 here)
    eps = 1e-6
    fd = (gelu(x + eps) - gelu(x - eps)) / (2 * eps)
    np.testing.assert_allclose(gelu_grad(x), fd, rtol=1e-7, atol=2e-9)


def test_layer_norm_matches_torch_without_affine(rng):
    z = rng.standard_normal((3, 5, 7)) * 2.0 + 0.5
    zhat, rstd = layer_norm(z, 1e-5)
    want = F.layer_norm(torch.from_numpy(z), (7,), eps=1e-5).numpy()
    np.testing.assert_allclose(zhat, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rstd[..., 0], 1.0 / np.sqrt(z.var(axis=-1) + 1e-5), rtol=1e-12)


def test_layer_norm_vjp_matches_finite_differences(rng, fd_grad):
    z = rng.standard_normal((3, 7)) * 1.5 + 0.3
    du = rng.standard_normal((3, 7))
    zhat, rstd = layer_norm(z, 1e-5)
    fd = fd_grad(lambda t: np.sum(du * layer_norm(t, 1e-5)[0]), z)
    np.testing.assert_allclose(layer_norm_vjp(zhat, rstd, du), fd, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------------------
# default state and gates
# ------------------------------------------------------------------------------------------
def test_mlp_default_state_is_deterministic_and_not_zero():
    mem = MLPMemory(d=5)
    a = mem.default_state(B, H, seed=3)
    b = mem.default_state(B, H, seed=3)
    c = mem.default_state(B, H, seed=4)
    for name, shape in mem.shapes.items():
        assert a[name].shape == (B, H, *shape)
        np.testing.assert_array_equal(a[name], b[name])  # same seed -> same state
        assert not np.array_equal(a[name], c[name])  # another seed -> another state
        assert np.count_nonzero(a[name]) == a[name].size
        # the same initial memory in every [B, H] slot
        np.testing.assert_array_equal(a[name], np.broadcast_to(a[name][0, 0], a[name].shape))
    # and a writable copy, not a broadcast view
    a["W1"][0, 0, 0, 0] += 1.0
    assert a["W1"][1, 2, 0, 0] != a["W1"][0, 0, 0, 0]


def test_mlp_default_state_scale_is_one_over_fan_in():
    # documented: W2 ~ N(0, 1/d), W1 ~ N(0, 1/(E d)); 10^4 samples give the std to ~1 %
    mem = MLPMemory(d=51, expansion=4)
    s = mem.default_state(1, 1, seed=0)
    assert abs(s["W1"].std() * np.sqrt(mem.hidden) - 1.0) < 0.05
    assert abs(s["W2"].std() * np.sqrt(mem.d) - 1.0) < 0.05


def test_matrix_and_vector_default_state_is_zero():
    assert not np.any(MEMORIES["matrix"].default_state(B, H)["W"])
    assert MEMORIES["matrix"].default_state(B, H)["W"].shape == (B, H, 7, 5)
    assert not np.any(MEMORIES["vector"].default_state(B, H)["w"])


@pytest.mark.parametrize("kind", list(MEMORIES))
def test_broadcast_gate_scalar_channel_and_elementwise_axes(kind, rng):
    mem = MEMORIES[kind]
    params = random_params(mem, rng)
    for name, shape in mem.shapes.items():
        p = params[name]
        nd = len(shape)
        axis = mem.gate_axes[name]
        # documented channel axes: the key axis of the matrix memory, the d-sized axes of the MLP
        if kind == "matrix":
            assert shape[axis] == mem.d_k
        else:
            assert shape[axis] == mem.d
        # scalar per head: [B, H] scales the whole parameter of that head
        gs = rng.uniform(0.1, 0.9, (B, H))
        out = broadcast_gate(gs, nd, axis) * p
        for b in range(B):
            for h in range(H):
                np.testing.assert_allclose(out[b, h], gs[b, h] * p[b, h], rtol=1e-15)
        # channel-wise: [B, H, D] scales index i of the parameter's axis `axis`
        gc = rng.uniform(0.1, 0.9, (B, H, shape[axis]))
        out = broadcast_gate(gc, nd, axis) * p
        moved_out = np.moveaxis(out, axis, -1)
        moved_p = np.moveaxis(p, axis, -1)
        for i in range(shape[axis]):
            np.testing.assert_allclose(
                moved_out[..., i],
                gc[(slice(None), slice(None), i) + (None,) * (nd - 1)] * moved_p[..., i],
                rtol=1e-15,
            )
        # element-wise: [B, H, *shape] multiplies entry by entry
        ge = rng.uniform(0.1, 0.9, (B, H, *shape))
        np.testing.assert_allclose(broadcast_gate(ge, nd, axis) * p, ge * p, rtol=1e-15)


def test_broadcast_gate_rejects_incompatible_gate():
    with pytest.raises(ValueError, match="gate"):
        broadcast_gate(np.ones((B, H, 2, 3, 4)), 2, -1)
