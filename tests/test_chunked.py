"""The chunk-parallel form (:func:`miras_ref.scan_chunked`, Sec 5.4, Eq 28-32).

Checked against the exact recurrence (chunk size 1; Hebbian models at any chunk size), against
Eq 28 written independently as a recurrence whose gradients are frozen at the chunk's starting
state (torch.autograd for the MLP memory), and the Eq 29 masks against explicit products.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import miras_ref
from miras_ref import zoo
from miras_ref.algorithms import GD
from miras_ref.bias import L2Bias
from miras_ref.chunked import chunk_coefficients
from miras_ref.config import MirasConfig
from miras_ref.memory import MatrixMemory
from miras_ref.retention import ElasticNetRetention, FDivergenceRetention

B, H = 2, 3
CHUNKABLE = ["retnet", "linear_attention", "dfw", "lightning_attention", "gla", "mamba2", "hgrn2",
             "deltanet", "ttt_linear", "gated_deltanet", "rwkv7", "ttt_mlp", "moneta", "yaad",
             "memora"]
HEBBIAN = ["retnet", "linear_attention", "dfw", "lightning_attention", "gla", "mamba2", "hgrn2"]


def _normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _inputs(name, T, d, seed, eta=(0.05, 0.5), batch=B, heads=H):
    """Normalised q/k, random values and random data-dependent gates shaped for ``name``."""
    rng = np.random.default_rng(seed)
    cfg = zoo.get(name, d)
    shape = (batch, T, heads)
    q = _normalise(rng.standard_normal(shape + (d,)))
    k = _normalise(rng.standard_normal(shape + (d,)))
    v = rng.standard_normal(shape + (d,))
    gates = {}
    for g in cfg.required_gates:
        if g == "eta":
            gates[g] = rng.uniform(*eta, size=shape)
        elif g == "alpha":
            gates[g] = rng.uniform(0.6, 1.0, size=shape)
        elif g == "delta":
            gates[g] = rng.uniform(0.5, 5.0, size=shape)
    if name in ("gla", "hgrn2", "rwkv7"):  # channel-wise decay
        gates["alpha"] = rng.uniform(0.6, 1.0, size=shape + (d,))
    if name == "dfw":  # element-wise β_t α_t^T
        gates["alpha"] = (rng.uniform(0.7, 1.0, size=shape + (d, 1))
                          * rng.uniform(0.7, 1.0, size=shape + (1, d)))
    return cfg, q, k, v, gates


def test_chunkable_zoo_models_are_exactly_the_gd_dual_linear_ones():
    chunkable = [n for n in zoo.ALL
                 if type(zoo.get(n, 4).algorithm) is GD and zoo.get(n, 4).retention.dual_linear]
    assert chunkable == CHUNKABLE


# ------------------------------------------------------------------------------------------
# chunk size 1 is the recurrence; Hebbian models are exact at any chunk size
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [7, 9])
@pytest.mark.parametrize("name", CHUNKABLE)
def test_eq28_chunk_size_one_equals_recurrence(name, T):
    cfg, q, k, v, gates = _inputs(name, T, 5, seed=T)
    y, final = miras_ref.scan(cfg, q, k, v, gates, output_final_state=True)
    yc, final_c = miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=1,
                                         output_final_state=True)
    np.testing.assert_allclose(yc, y, rtol=0, atol=1e-12)
    for n in final:
        np.testing.assert_allclose(final_c[n], final[n], rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk", [4, 16])
@pytest.mark.parametrize("name", CHUNKABLE)
def test_eq28_first_token_of_the_sequence_is_exact_for_any_chunk_size(name, chunk):
    # t' = 0: the first token's gradient is taken at M_0 (α_1 M_0 for the decayed anchor),
    # exactly as in the recurrence; later tokens of the chunk generally differ
    cfg, q, k, v, gates = _inputs(name, 14, 5, seed=chunk + 100)
    # start from a non-zero state (a warm-up on the first 5 tokens), so that decay matters
    _, s0 = miras_ref.scan(cfg, q[:, :5], k[:, :5], v[:, :5],
                           {n: a[:, :5] for n, a in gates.items()}, output_final_state=True)
    q, k, v = q[:, 5:], k[:, 5:], v[:, 5:]
    gates = {n: a[:, 5:] for n, a in gates.items()}
    y, _ = miras_ref.scan(cfg, q, k, v, gates, initial_state=s0)
    yc, _ = miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=chunk, initial_state=s0)
    np.testing.assert_allclose(yc[:, 0], y[:, 0], rtol=0, atol=1e-12)
    if name not in HEBBIAN:
        assert np.max(np.abs(yc[:, 2:chunk] - y[:, 2:chunk])) > 1e-8


@pytest.mark.parametrize("chunk", [2, 3, 8, 16, 64])
@pytest.mark.parametrize("name", HEBBIAN)
def test_eq29_hebbian_models_chunked_form_exact_for_any_chunk_size(name, chunk):
    # dot-product bias: ∇ℓ = -v k^T does not depend on W, so freezing it changes nothing
    cfg, q, k, v, gates = _inputs(name, 63, 6, seed=chunk)
    y, _ = miras_ref.scan(cfg, q, k, v, gates)
    yc, _ = miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=chunk)
    scale = max(1.0, np.max(np.abs(y)))
    np.testing.assert_allclose(yc, y, rtol=0, atol=1e-11 * scale)


@pytest.mark.parametrize("name", ["deltanet", "moneta", "yaad", "memora"])
def test_eq28_chunking_error_grows_with_chunk_size(name):
    """Gradients frozen at the chunk start (Eq 28) err more the longer the chunk.

    A smooth problem: normalised keys and a small learning rate (0.05 for the delta rule; the
    LayerNorm'd MLP memory is far stiffer, so 1e-3 there). Error = RMS over 16 heads.
    """
    eta = (0.05, 0.05) if name == "deltanet" else (1e-3, 1e-3)
    cfg, q, k, v, gates = _inputs(name, 32, 5, seed=3, eta=eta, batch=4, heads=4)
    gates["alpha"] = np.random.default_rng(4).uniform(0.95, 1.0, size=gates["alpha"].shape)
    y, _ = miras_ref.scan(cfg, q, k, v, gates)
    errs = [np.sqrt(np.mean((miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=c)[0] - y)
                            ** 2)) for c in (1, 2, 4, 8, 16)]
    assert errs[0] <= 1e-13
    for small, large in zip(errs, errs[1:]):
        assert large >= small * (1 - 1e-9) - 1e-15, errs
    assert errs[-1] > 1e-4, errs
    if name == "memora":  # Eq 30: the lag token makes chunks of 2 exact as well
        assert errs[1] <= 1e-13
    else:
        assert errs[1] > 1e-6


# ------------------------------------------------------------------------------------------
# Eq 28 (and Eq 30-32 for Memora) as an independent recurrence with frozen gradients
# ------------------------------------------------------------------------------------------
def _t(x):
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _mlp(w1, w2, x):
    z = w1 @ F.gelu(w2 @ x, approximate="tanh")
    return x + F.layer_norm(z, z.shape, eps=1e-5)


def _grad(ws, k, v, dy_fn):
    w1, w2 = (w.detach().clone().requires_grad_(True) for w in ws)
    y = _mlp(w1, w2, _t(k))
    return torch.autograd.grad(y, (w1, w2), grad_outputs=dy_fn((y - _t(v)).detach()))


def _lq_link(a):  # Eq 24: W = A / ‖A‖_4^2
    return a / torch.sum(a**4) ** 0.5


def _yaad_dy(delta):
    def fn(e):
        return torch.where(torch.linalg.norm(e) <= delta, e, delta * torch.tanh(10.0 * e))

    return fn


_LINK = {"moneta": _lq_link, "yaad": lambda a: a, "memora": lambda a: torch.softmax(a, -1)}


def _dy(name, gates, t):
    if name == "moneta":
        return lambda e: 3.0 * torch.tanh(10.0 * e) * (e * e + 1e-6)
    if name == "yaad":
        return _yaad_dy(float(gates["delta"][t]))
    return lambda e: e


def _frozen_gradient_reference(name, q, k, v, gates, z0, chunk, link_at="token"):
    """One [b, h] slot of Eq 28: inside each chunk every gradient is taken at the chunk's
    starting weights W_{t'} = ψ(Z_{t'}), and Z_t = α_t Z_{t-1} - η_t ∇ℓ(W_{t'}; k_t, v_t).
    Memora (Eq 30-32): the chunk's first token is a lag token that takes the exact step.
    Queries read ψ(Z_t) (``link_at="token"``) or, with ``link_at="chunk"``, the memory
    M_t = α_t M_{t-1} - η_t ∇ℓ(W_{t'}; k_t, v_t) started at M_{t'} = W_{t'} (Sec 5.4)."""
    link = _LINK[name]
    z = [_t(z0["W1"]), _t(z0["W2"])]
    T, out = q.shape[0], []
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        if name == "memora":  # Eq 30: M_1 = Softmax(α log M_0 - η ∇ℓ(M_0)), exact
            g = _grad([link(a) for a in z], k[s], v[s], _dy(name, gates, s))
            z = [gates["alpha"][s] * a - gates["eta"][s] * gi for a, gi in zip(z, g)]
            with torch.no_grad():
                out.append(_mlp(*[link(a) for a in z], _t(q[s])).numpy())
            s += 1
        anchor = [link(a) for a in z]  # W_{t'}
        m = anchor
        for t in range(s, e):
            g = _grad(anchor, k[t], v[t], _dy(name, gates, t))
            z = [gates["alpha"][t] * a - gates["eta"][t] * gi for a, gi in zip(z, g)]
            m = [gates["alpha"][t] * a - gates["eta"][t] * gi for a, gi in zip(m, g)]
            with torch.no_grad():
                w = m if link_at == "chunk" else [link(a) for a in z]
                out.append(_mlp(*w, _t(q[t])).numpy())
    return np.array(out)


@pytest.mark.parametrize("link_at", ["token", "chunk"])
@pytest.mark.parametrize("chunk", [3, 4])
@pytest.mark.parametrize("name", ["moneta", "yaad", "memora"])
def test_eq28_to_32_chunked_mlp_matches_frozen_gradient_recurrence(name, chunk, link_at):
    T, d = 10, 4  # partial last chunk for both chunk sizes
    cfg, q, k, v, gates = _inputs(name, T, d, seed=chunk, eta=(0.05, 0.3))
    cfg = replace(cfg, link_at=link_at)
    rng = np.random.default_rng(5)
    z0 = {"W1": rng.standard_normal((B, H, d, 4 * d)) / np.sqrt(4 * d),
          "W2": rng.standard_normal((B, H, 4 * d, d)) / np.sqrt(d)}
    yc, _ = miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=chunk, initial_state=z0)
    ref = np.empty_like(yc)
    for b in range(B):
        for h in range(H):
            g = {n: a[b, :, h] for n, a in gates.items()}
            ref[b, :, h] = _frozen_gradient_reference(
                name, q[b, :, h], k[b, :, h], v[b, :, h], g,
                {n: a[b, h] for n, a in z0.items()}, chunk, link_at)
    np.testing.assert_allclose(yc, ref, rtol=0, atol=1e-10)
    y, _ = miras_ref.scan(cfg, q, k, v, gates, initial_state=z0)
    assert np.max(np.abs(y - yc)) > 1e-6  # the frozen form is not the recurrence


@pytest.mark.parametrize("name", ["ttt_mlp", "yaad", "gated_deltanet", "moneta", "memora"])
def test_link_at_chunk_changes_only_the_reads_of_a_non_identity_link(name):
    # the state takes the same steps either way; the reads agree when ψ is the identity
    cfg, q, k, v, gates = _inputs(name, 23, 5, seed=11)
    y, final = miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=8,
                                      output_final_state=True)
    yc, final_c = miras_ref.scan_chunked(replace(cfg, link_at="chunk"), q, k, v, gates,
                                         chunk_size=8, output_final_state=True)
    for n in final:
        np.testing.assert_array_equal(final_c[n], final[n])
    if name in ("moneta", "memora"):
        assert np.max(np.abs(yc - y)) > 1e-4
    if name == "memora":  # the lag token (each chunk's first) takes the exact step and read
        np.testing.assert_allclose(yc[:, ::8], y[:, ::8], rtol=0, atol=1e-12)
    elif name != "moneta":
        np.testing.assert_allclose(yc, y, rtol=0, atol=1e-12)


def test_link_at_must_be_token_or_chunk():
    with pytest.raises(ValueError, match="link_at"):
        replace(zoo.moneta(4), link_at="end")


@pytest.mark.parametrize("chunk", [4, 16])
def test_eq28_chunked_deltanet_matches_frozen_gradient_recurrence(chunk):
    T, d = 63, 5
    cfg, q, k, v, gates = _inputs("ttt_linear", T, d, seed=chunk)
    gates["alpha"] = np.random.default_rng(6).uniform(0.8, 1.0, size=(B, T, H))
    s0 = {"W": np.random.default_rng(7).standard_normal((B, H, d, d))}
    yc, _ = miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=chunk, initial_state=s0)
    ref = np.empty_like(yc)
    for b in range(B):
        for h in range(H):
            W = s0["W"][b, h].copy()
            for s in range(0, T, chunk):
                W0 = W.copy()  # W_{t'}
                for t in range(s, min(s + chunk, T)):
                    kt, vt = k[b, t, h], v[b, t, h]
                    W = gates["alpha"][b, t, h] * W - gates["eta"][b, t, h] * np.outer(
                        W0 @ kt - vt, kt)
                    ref[b, t, h] = W @ q[b, t, h]
    np.testing.assert_allclose(yc, ref, rtol=0, atol=1e-11)


# ------------------------------------------------------------------------------------------
# any T, any chunk size, and state hand-over
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gated_deltanet", "rwkv7", "moneta", "yaad", "memora"])
def test_scan_chunked_split_at_chunk_boundary_with_state_handover_equals_one_pass(name):
    T, chunk, split = 63, 16, 32  # the last chunk is partial (15 tokens)
    cfg, q, k, v, gates = _inputs(name, T, 5, seed=8)
    y, final = miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=chunk,
                                      output_final_state=True)
    g1 = {n: a[:, :split] for n, a in gates.items()}
    g2 = {n: a[:, split:] for n, a in gates.items()}
    ya, mid = miras_ref.scan_chunked(cfg, q[:, :split], k[:, :split], v[:, :split], g1,
                                     chunk_size=chunk, output_final_state=True)
    yb, end = miras_ref.scan_chunked(cfg, q[:, split:], k[:, split:], v[:, split:], g2,
                                     chunk_size=chunk, initial_state=mid,
                                     output_final_state=True)
    np.testing.assert_allclose(np.concatenate([ya, yb], 1), y, rtol=0, atol=1e-12)
    for n in final:
        np.testing.assert_allclose(end[n], final[n], rtol=0, atol=1e-12)
    # a split off the chunk grid moves the later chunk boundaries: a different computation
    off = 20
    _, mid = miras_ref.scan_chunked(cfg, q[:, :off], k[:, :off], v[:, :off],
                                    {n: a[:, :off] for n, a in gates.items()}, chunk_size=chunk,
                                    output_final_state=True)
    yo, _ = miras_ref.scan_chunked(cfg, q[:, off:], k[:, off:], v[:, off:],
                                   {n: a[:, off:] for n, a in gates.items()}, chunk_size=chunk,
                                   initial_state=mid)
    assert np.max(np.abs(yo - y[:, off:])) > 1e-8


@pytest.mark.parametrize("T", [1, 7, 63])
def test_scan_chunked_any_length_and_chunk_larger_than_sequence(T):
    cfg, q, k, v, gates = _inputs("yaad", T, 5, seed=T)
    y_one, _ = miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=T)
    y_big, _ = miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=1000)
    np.testing.assert_allclose(y_big, y_one, rtol=0, atol=1e-13)
    assert y_big.shape == (B, T, H, 5) and np.all(np.isfinite(y_big))


def test_scan_chunked_with_no_chunk_size_is_the_recurrence():
    cfg, q, k, v, gates = _inputs("titans_lmm", 7, 5, seed=9)
    y, _ = miras_ref.scan(cfg, q, k, v, gates)
    yc, _ = miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=None)
    np.testing.assert_array_equal(yc, y)


# ------------------------------------------------------------------------------------------
# Eq 29 masks
# ------------------------------------------------------------------------------------------
def _mask_loop(eta, alpha):
    """mask[t, i] = η_i Π_{j=i+1..t} α_j for i <= t, else 0 (1-D gates over the chunk)."""
    C = len(alpha)
    m = np.zeros((C, C))
    for t in range(C):
        for i in range(t + 1):
            prod = 1.0
            for j in range(i + 1, t + 1):
                prod *= alpha[j]
            m[t, i] = eta[i] * prod
    return m


@pytest.mark.parametrize("C", [1, 5, 16])
def test_eq29_chunk_coefficients_scalar_gates_match_explicit_products(C):
    rng = np.random.default_rng(C)
    eta = rng.uniform(0.01, 1.0, size=(B, H, C))
    alpha = rng.uniform(0.3, 1.0, size=(B, H, C))
    decay, mask = chunk_coefficients(eta, alpha)
    assert decay.shape == (B, H, C) and mask.shape == (B, H, C, C)
    for b in range(B):
        for h in range(H):
            np.testing.assert_allclose(decay[b, h], np.cumprod(alpha[b, h]), rtol=1e-13)
            ref = _mask_loop(eta[b, h], alpha[b, h])
            np.testing.assert_allclose(mask[b, h], ref, rtol=1e-13, atol=0)
            assert np.all(mask[b, h][np.triu_indices(C, 1)] == 0.0)


@pytest.mark.parametrize("trailing", [(1, 5), (6, 5)])
def test_eq29_chunk_coefficients_channel_and_element_wise_gates(trailing):
    # channel-wise [.., C, 1, d_k] (a matrix's key axis) and element-wise [.., C, d_v, d_k]
    C = 7
    rng = np.random.default_rng(sum(trailing))
    eta = rng.uniform(0.01, 1.0, size=(B, H, C) + trailing)
    alpha = rng.uniform(0.3, 1.0, size=(B, H, C) + trailing)
    decay, mask = chunk_coefficients(eta, alpha, own_ndim=2)
    assert mask.shape == (B, H, C, C) + trailing
    np.testing.assert_allclose(decay, np.cumprod(alpha, axis=2), rtol=1e-13)
    for idx in np.ndindex(B, H, *trailing):
        b, h, i, j = idx
        ref = _mask_loop(eta[b, h, :, i, j], alpha[b, h, :, i, j])
        np.testing.assert_allclose(mask[b, h, :, :, i, j], ref, rtol=1e-13, atol=0)


def test_eq29_chunk_coefficients_with_tiny_decay_stay_finite():
    # products of many small α underflow gracefully in log space
    alpha = np.full((1, 1, 64), 1e-6)
    eta = np.ones((1, 1, 64))
    decay, mask = chunk_coefficients(eta, alpha)
    assert np.all(np.isfinite(mask)) and np.all(np.isfinite(decay))
    np.testing.assert_allclose(np.diagonal(mask[0, 0]), 1.0)
    np.testing.assert_allclose(mask[0, 0, 1, 0], 1e-6, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk,exc", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                       (True, TypeError), ("4", TypeError)])
def test_scan_chunked_rejects_bad_chunk_size(chunk, exc):
    cfg, q, k, v, gates = _inputs("deltanet", 7, 5, seed=10)
    with pytest.raises(exc, match=r"^chunk_size must be an integer >= 1"):
        miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=chunk)


def _by_hand(retention):
    return MirasConfig("by_hand", MatrixMemory(5, 5), L2Bias(), retention, GD(),
                       {"eta": 0.1, "alpha": 1.0})


@pytest.mark.parametrize("config", [
    pytest.param(zoo.titans_lmm(5), id="momentum"),
    pytest.param(zoo.longhorn(5), id="implicit"),
    pytest.param(zoo.deltaproduct(5), id="multi_step"),
    pytest.param(zoo.mesa(5), id="closed_form"),
    pytest.param(zoo.softmax_attention(5), id="nonparametric"),
    pytest.param(_by_hand(FDivergenceRetention()), id="fdiv"),
    pytest.param(_by_hand(ElasticNetRetention()), id="elastic"),
])
def test_scan_chunked_rejects_configs_without_a_chunked_form(config):
    _, q, k, v, gates = _inputs("titans_lmm", 7, 5, seed=11)
    with pytest.raises(ValueError, match=r"^chunk_size: "):
        miras_ref.scan_chunked(config, q, k, v, gates, chunk_size=4)


@pytest.mark.parametrize("config", [None, "deltanet", zoo.deltanet])
def test_scan_chunked_rejects_config_that_is_not_a_miras_config(config):
    _, q, k, v, gates = _inputs("deltanet", 7, 5, seed=12)
    with pytest.raises(TypeError, match=r"^config must be a MirasConfig"):
        miras_ref.scan_chunked(config, q, k, v, gates, chunk_size=4)


def test_scan_chunked_validates_inputs_like_scan():
    cfg, q, k, v, gates = _inputs("moneta", 7, 5, seed=13)
    gates["alpha"][0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"^gates\['alpha'\] must be in"):
        miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=4)
    with pytest.raises(ValueError, match=r"^v must have d_v = 5"):
        miras_ref.scan_chunked(cfg, q, k, v[..., :3], None, chunk_size=4)

