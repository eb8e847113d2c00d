"""Tests of the MIRAS layer block (miras_ref/layer.py, Sec 5.4).

The whole forward is checked against an independent PyTorch float64 implementation written
here (conv1d with groups=C and left padding, F.silu, F.normalize, F.softplus, torch.sigmoid,
and the memory recurrence written out for GLA and Gated DeltaNet with channel-wise gates).
"""

from __future__ import annotations

import numpy as np
import pytest

from miras_ref import zoo
from miras_ref.layer import (
    causal_depthwise_conv,
    expected_param_shapes,
    init_layer_params,
    l2_normalize,
    layer_gates,
    miras_layer_forward,
    rms_norm,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional

B, T, DM, H, D, R = 2, 9, 12, 2, 4, 5


def _x(seed=0, b=B, t=T, dm=DM):
    return np.random.default_rng(seed).standard_normal((b, t, dm))


# --------------------------------------------------------------------------------------------
# building blocks


def test_conv_matches_explicit_loop():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 7, 3)), rng.standard_normal((3, 4))
    K = w.shape[1]
    want = np.zeros_like(x)
    for b in range(2):
        for t in range(7):
            for c in range(3):
                for j in range(K):  # y_t = Σ_j w[c, K-1-j] x_{t-j}, zero before t = 0
                    if t - j >= 0:
                        want[b, t, c] += w[c, K - 1 - j] * x[b, t - j, c]
    np.testing.assert_allclose(causal_depthwise_conv(x, w), want, rtol=0, atol=1e-14)
    # the current token is weighted by w[:, K-1]
    impulse = np.zeros((1, 5, 3))
    impulse[0, 0] = 1.0
    np.testing.assert_allclose(causal_depthwise_conv(impulse, w)[0, :K], w[:, ::-1].T)


def test_conv_state_continues_sequence():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 8, 3)), rng.standard_normal((3, 4))
    full = causal_depthwise_conv(x, w)
    tail = causal_depthwise_conv(x[:, 5:], w, state=x[:, 2:5])
    np.testing.assert_allclose(tail, full[:, 5:], atol=1e-14)


def test_l2_normalize_unit_norm():
    x = np.random.default_rng(2).standard_normal((3, 4, 5)) * 7
    n = np.linalg.norm(l2_normalize(x), axis=-1)
    np.testing.assert_allclose(n, 1.0, atol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(x, axis=0), axis=0), 1.0, atol=1e-14)
    assert np.all(l2_normalize(np.zeros((2, 3))) == 0.0)


def test_rms_norm():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((4, 6)), rng.standard_normal(6)
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(rms_norm(x, w), want, atol=1e-14)


@pytest.mark.parametrize("name", ["yaad", "titans_lmm", "gla", "mesa", "softmax_attention"])
def test_gate_shapes_and_ranges(name):
    cfg = zoo.get(name, D)
    p = init_layer_params(DM, H, D, cfg, rank=R, seed=1)
    gates = layer_gates(p, _x(1) * 3, cfg, H, D)
    assert set(gates) == set(cfg.required_gates)
    for g, a in gates.items():
        assert a.shape == ((B, T, H) if name == "mesa" else (B, T, H, D))
        if g in ("alpha", "mu"):
            assert np.all((a > 0) & (a < 1))
        else:
            assert np.all(a > 0)
        assert np.std(a) > 0  # data-dependent


def test_init_deterministic_and_gate_biases():
    p1 = init_layer_params(DM, H, D, "yaad", rank=R, seed=3)
    p2 = init_layer_params(DM, H, D, zoo.yaad(D), rank=R, seed=3)
    p3 = init_layer_params(DM, H, D, "yaad", rank=R, seed=4)
    assert set(p1) == set(expected_param_shapes("yaad", DM, H, D, R))
    assert {k: v.shape for k, v in p1.items()} == expected_param_shapes("yaad", DM, H, D, R)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert not np.array_equal(p1["W_q"], p3["W_q"])
    sig = 1 / (1 + np.exp(-p1["alpha_bias"]))
    assert np.all((sig >= 0.95) & (sig <= 0.99))
    np.testing.assert_allclose(1 / (1 + np.exp(-p1["eta_bias"])), 0.1)  # η = σ(b)
    np.testing.assert_allclose(np.log1p(np.exp(p1["delta_bias"])), 1.0)
    assert p1["conv_q"].shape == (H * D, 4) and p1["norm_w"].shape == (D,)
    assert "eta_down" not in init_layer_params(DM, H, D, "softmax_attention", rank=R)
    # at init, for unit-scale inputs, the gates stay close to their bias values
    g = layer_gates(p1, _x(2), "yaad", H, D)
    assert np.all((g["alpha"] > 0.9) & (g["alpha"] < 0.995))
    assert np.all((g["eta"] > 0.05) & (g["eta"] < 0.2))
    # η is a sigmoid: bounded by 1 whatever the input (the delta rule needs η‖k‖² < 2)
    assert np.all(layer_gates(p1, 1e3 * _x(2), "yaad", H, D)["eta"] <= 1.0)
    # a Hebbian model's η = 1 default starts at the sigmoid's 0.9 instead of logit(1) = inf
    hebb = init_layer_params(DM, H, D, "linear_attention", rank=R)
    np.testing.assert_allclose(1 / (1 + np.exp(-hebb["eta_bias"])), 0.9)


# --------------------------------------------------------------------------------------------
# independent torch implementation


def _torch_layer(p, x, name):
    """The block in torch float64, with the memory recurrence written out."""
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in p.items()}
    x = torch.tensor(x, dtype=torch.float64)
    b, n_tok, _ = x.shape

    def conv_silu(u, w):  # u [B, T, C], w [C, K]
        k = w.shape[1]
        y = F.conv1d(F.pad(u.transpose(1, 2), (k - 1, 0)), w[:, None, :], groups=u.shape[-1])
        return F.silu(y.transpose(1, 2))

    q = conv_silu(x @ t["W_q"], t["conv_q"]).reshape(b, n_tok, H, D)
    k = conv_silu(x @ t["W_k"], t["conv_k"]).reshape(b, n_tok, H, D)
    v = conv_silu(x @ t["W_v"], t["conv_v"]).reshape(b, n_tok, H, D)
    q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)

    def gate(g, act):
        return act(x @ t[f"{g}_down"] @ t[f"{g}_up"] + t[f"{g}_bias"]).reshape(b, n_tok, H, D)

    eta, alpha = gate("eta", torch.sigmoid), gate("alpha", torch.sigmoid)
    y = torch.zeros(b, n_tok, H, D, dtype=torch.float64)
    for bi in range(b):
        for h in range(H):
            S = torch.zeros(D, D, dtype=torch.float64)  # S [d_v, d_k], read y = S q
            for i in range(n_tok):
                kk, vv, a, e = k[bi, i, h], v[bi, i, h], alpha[bi, i, h], eta[bi, i, h]
                S = S * a[None, :]  # channel-wise decay of the key axis: S diag(α)
                if name == "gla":
                    # S_t = S_{t-1} diag(α_t) + v_t (η_t ⊙ k_t)^T
                    S = S + torch.outer(vv, e * kk)
                else:
                    # Gated DeltaNet: gradient at the decayed state,
                    # S_t = S̃ - (S̃ k_t - v_t)(η_t ⊙ k_t)^T, S̃ = S_{t-1} diag(α_t)
                    S = S - torch.outer(S @ kk - vv, e * kk)
                y[bi, i, h] = S @ q[bi, i, h]
    y = y * torch.rsqrt((y * y).mean(-1, keepdim=True) + 1e-6) * t["norm_w"]
    y = y * torch.sigmoid(x @ t["W_g"]).reshape(b, n_tok, H, D)
    return (y.reshape(b, n_tok, H * D) @ t["W_o"]).numpy()


@pytest.mark.parametrize("name", ["gla", "gated_deltanet"])
def test_layer_matches_independent_torch(name):
    p = init_layer_params(DM, H, D, name, rank=R, seed=5)
    p["norm_w"] = np.random.default_rng(6).uniform(0.5, 1.5, D)  # exercise the norm weight
    x = _x(7) * 2
    out, final = miras_layer_forward(p, x, zoo.get(name, D), H, D)
    assert final is None
    want = _torch_layer(p, x, name)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-10)
    assert np.abs(want).max() > 0.1


# --------------------------------------------------------------------------------------------
# streaming, chunking, the zoo


@pytest.mark.parametrize("name,chunk", [("gated_deltanet", None), ("gated_deltanet", 3),
                                        ("moneta", None), ("softmax_attention", None),
                                        ("deltaproduct", None)])
def test_streaming_two_pieces_equals_one_pass(name, chunk):
    t_len, split = (8, 6) if name == "moneta" else (T, 6)
    p = init_layer_params(DM, H, D, name, rank=R, seed=8)
    x = _x(9, t=t_len)
    full, st_full = miras_layer_forward(p, x, name, H, D, chunk_size=chunk,
                                        output_final_state=True)
    y1, st = miras_layer_forward(p, x[:, :split], name, H, D, chunk_size=chunk,
                                 output_final_state=True)
    assert set(st) == {"memory", "conv"} and st["conv"]["q"].shape == (B, 3, H * D)
    y2, st2 = miras_layer_forward(p, x[:, split:], name, H, D, chunk_size=chunk,
                                  initial_state=st, output_final_state=True)
    np.testing.assert_allclose(np.concatenate([y1, y2], axis=1), full, rtol=0, atol=1e-12)
    for s in "qkv":
        np.testing.assert_allclose(st2["conv"][s], st_full["conv"][s], atol=1e-14)
    for n, a in st_full["memory"].items():
        np.testing.assert_allclose(st2["memory"][n], a, atol=1e-12)


def test_streaming_pieces_shorter_than_kernel():
    p = init_layer_params(DM, H, D, "gla", rank=R, seed=10)
    x = _x(11, t=6)
    full, _ = miras_layer_forward(p, x, "gla", H, D)
    st, ys = None, []
    for s in range(0, 6, 2):  # pieces of 2 tokens < K - 1 = 3
        y, st = miras_layer_forward(p, x[:, s:s + 2], "gla", H, D, initial_state=st,
                                    output_final_state=True)
        ys.append(y)
    np.testing.assert_allclose(np.concatenate(ys, axis=1), full, rtol=0, atol=1e-12)


def test_chunk_size_one_equals_recurrence_yaad():
    p = init_layer_params(DM, H, D, "yaad", rank=R, seed=12)
    x = _x(13, t=7) * 2
    a, _ = miras_layer_forward(p, x, "yaad", H, D, chunk_size=None)
    b, _ = miras_layer_forward(p, x, "yaad", H, D, chunk_size=1)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)
    c, _ = miras_layer_forward(p, x, "yaad", H, D, chunk_size=4)
    assert np.all(np.isfinite(c)) and not np.allclose(c, a, atol=1e-12)


@pytest.mark.parametrize("name", list(zoo.ALL))
def test_every_zoo_model_runs(name):
    cfg = zoo.get(name, D)
    p = init_layer_params(DM, H, D, cfg, rank=R, seed=14)
    out, st = miras_layer_forward(p, _x(15, t=6), cfg, H, D, output_final_state=True)
    assert out.shape == (B, 6, DM) and np.all(np.isfinite(out))
    assert st["conv"]["k"].shape[1] == 3


def test_deltaproduct_uses_n_keys_per_token():
    cfg = zoo.deltaproduct(D, n_steps=3)
    shapes = expected_param_shapes(cfg, DM, H, D, R)
    assert shapes["W_k"] == (DM, H * 3 * D) and shapes["conv_v"] == (H * 3 * D, 4)
    assert shapes["W_q"] == (DM, H * D)
    p = init_layer_params(DM, H, D, cfg, rank=R)
    out, _ = miras_layer_forward(p, _x(16), cfg, H, D)
    assert np.all(np.isfinite(out))


def test_chunked_rejected_for_non_gd():
    p = init_layer_params(DM, H, D, "titans_lmm", rank=R)
    with pytest.raises(ValueError, match="chunk_size"):
        miras_layer_forward(p, _x(), "titans_lmm", H, D, chunk_size=4)


# --------------------------------------------------------------------------------------------
# validation


def test_bad_inputs_name_the_argument():
    p = init_layer_params(DM, H, D, "gla", rank=R)
    x = _x()
    cases = [
        (ValueError, "x", dict(x=x[0])),
        (ValueError, "x", dict(x=np.where(x > 1, np.nan, x))),
        (TypeError, "x", dict(x="abc")),
        (ValueError, "x", dict(x=x[:, :0])),
        (ValueError, "n_heads", dict(n_heads=0)),
        (TypeError, "n_heads", dict(n_heads=2.0)),
        (ValueError, "head_dim", dict(head_dim=8)),
        (TypeError, "config", dict(config=3)),
        (ValueError, "unknown model", dict(config="nope")),
        (TypeError, "params", dict(params=[1, 2])),
        (ValueError, "params is missing", dict(params={k: v for k, v in p.items()
                                                      if k != "W_o"})),
        (ValueError, "params has unexpected", dict(params={**p, "delta_bias": np.zeros(8)})),
        (ValueError, r"params\['W_q'\]", dict(params={**p, "W_q": np.zeros((DM, 12))})),
        (ValueError, r"params\['W_q'\]", dict(params={**p, "W_q": p["W_q"] * np.inf})),
        (ValueError, r"params\['eta_up'\]", dict(params={**p, "eta_up": np.zeros((R + 1, 8))})),
        (TypeError, "initial_state", dict(initial_state=[1])),
        (ValueError, "initial_state", dict(initial_state={"memory": None})),
        (ValueError, r"initial_state\['conv'\]\['q'\]",
         dict(initial_state={"memory": None, "conv": {s: np.zeros((B, 2, 8)) for s in "qkv"}})),
        (ValueError, "chunk_size", dict(chunk_size=0)),
        (TypeError, "output_final_state", dict(output_final_state="yes")),
    ]
    base = dict(params=p, x=x, config="gla", n_heads=H, head_dim=D)
    for err, msg, kw in cases:
        with pytest.raises(err, match=msg):
            miras_layer_forward(**{**base, **kw})
    # params for a different head layout are caught (n_heads * head_dim must match W_q)
    p2 = init_layer_params(DM, 1, D, "gla", rank=R)
    with pytest.raises(ValueError, match=r"params\['W_q'\]"):
        miras_layer_forward(p2, x, "gla", H, D)


def test_block_function_validation():
    with pytest.raises(ValueError, match="w"):
        causal_depthwise_conv(np.zeros((1, 3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="state"):
        causal_depthwise_conv(np.zeros((1, 3, 2)), np.zeros((2, 4)), state=np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="w"):
        rms_norm(np.zeros((2, 3)), np.ones(4))
    with pytest.raises(TypeError, match="seed"):
        init_layer_params(DM, H, D, "gla", seed=1.5)
    with pytest.raises(ValueError, match="rank"):
        init_layer_params(DM, H, D, "gla", rank=0)
    with pytest.raises(ValueError, match="head_dim"):
        init_layer_params(DM, H, D, zoo.gla(8))
