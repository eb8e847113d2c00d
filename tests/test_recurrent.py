"""The recurrent scan (:func:`miras_ref.scan`): state hand-over, a bias identity, long-run
stability with outliers, and input validation."""

from __future__ import annotations

import re

import numpy as np
import pytest

import miras_ref
from miras_ref import zoo
from miras_ref.algorithms import GD
from miras_ref.bias import LpBias
from miras_ref.config import MirasConfig
from miras_ref.memory import MatrixMemory
from miras_ref.retention import L2Retention

B, H = 2, 3


def _normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _inputs(name, T, d, seed, n_keys=None):
    """Random normalised q/k, values, and random data-dependent gates for ``name``."""
    rng = np.random.default_rng(seed)
    cfg = zoo.get(name, d)
    extra = () if n_keys is None else (n_keys,)
    q = _normalise(rng.standard_normal((B, T, H, d)))
    k = _normalise(rng.standard_normal((B, T, H) + extra + (d,)))
    v = rng.standard_normal((B, T, H) + extra + (d,))
    ranges = {"eta": (0.05, 0.5), "alpha": (0.7, 1.0), "delta": (0.5, 3.0), "mu": (0.0, 0.9)}
    shape = (B, T, H, d) if name in ("gla", "hgrn2", "rwkv7") else (B, T, H)
    gates = {g: rng.uniform(*ranges[g], size=shape) for g in cfg.required_gates}
    return cfg, q, k, v, gates


def _split(x, s):
    return x[:, :s], x[:, s:]


# ------------------------------------------------------------------------------------------
# initial_state / output_final_state
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,split", [(7, 3), (7, 1), (9, 8)])
@pytest.mark.parametrize("name", ["gated_deltanet", "gla", "moneta", "memora", "titans_lmm",
                                  "softmax_attention", "mesa", "deltaproduct", "yaad", "retnet"])
def test_scan_split_in_two_with_state_handover_equals_one_pass(name, T, split):
    d = 5
    n_keys = 2 if name == "deltaproduct" else None
    cfg, q, k, v, gates = _inputs(name, T, d, seed=T * 31 + split, n_keys=n_keys)
    y, final = miras_ref.scan(cfg, q, k, v, gates, output_final_state=True)
    (q1, q2), (k1, k2), (v1, v2) = _split(q, split), _split(k, split), _split(v, split)
    g1 = {n: a[:, :split] for n, a in gates.items()}
    g2 = {n: a[:, split:] for n, a in gates.items()}
    ya, mid = miras_ref.scan(cfg, q1, k1, v1, g1, output_final_state=True)
    yb, end = miras_ref.scan(cfg, q2, k2, v2, g2, initial_state=mid, output_final_state=True)
    np.testing.assert_allclose(np.concatenate([ya, yb], axis=1), y, rtol=0, atol=1e-12)
    assert set(end) == set(final)
    for n in final:
        np.testing.assert_allclose(end[n], final[n], rtol=0, atol=1e-12)
    # the state really carries information: starting the second half fresh gives other outputs
    yc, _ = miras_ref.scan(cfg, q2, k2, v2, g2)
    assert np.max(np.abs(yc - yb)) > 1e-6


def test_scan_final_state_is_none_unless_requested_and_input_state_not_mutated():
    cfg, q, k, v, gates = _inputs("deltanet", 7, 5, seed=1)
    s0 = {"W": np.random.default_rng(2).standard_normal((B, H, 5, 5))}
    before = s0["W"].copy()
    y, final = miras_ref.scan(cfg, q, k, v, gates, initial_state=s0)
    assert final is None
    np.testing.assert_array_equal(s0["W"], before)
    assert y.shape == (B, 7, H, 5)


def test_attention_kv_cache_equals_attention_over_the_concatenation():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((B, 9, H, 5))
    k = rng.standard_normal((B, 9, H, 5))
    v = rng.standard_normal((B, 9, H, 6))
    y, cache = miras_ref.attention(q, k, v, output_final_state=True)
    assert cache["K"].shape == (B, H, 9, 5) and cache["V"].shape == (B, H, 9, 6)
    ya, mid = miras_ref.attention(q[:, :4], k[:, :4], v[:, :4], output_final_state=True)
    yb, _ = miras_ref.attention(q[:, 4:], k[:, 4:], v[:, 4:], initial_state=mid)
    np.testing.assert_allclose(np.concatenate([ya, yb], 1), y, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------
# an identity between two configurations
# ------------------------------------------------------------------------------------------
def test_eq11_lp_bias_p2_exact_equals_delta_rule_with_doubled_eta():
    """ℓ_p, p = 2, has gradient 2 (Wk - v) k^T (Eq 11): GD with η is the delta rule with 2η."""
    d, T = 5, 7
    lp2 = MirasConfig("lp2", MatrixMemory(d, d), LpBias(2.0, smooth=False), L2Retention(), GD(),
                      {"eta": 0.1, "alpha": 1.0})
    rng = np.random.default_rng(4)
    q = _normalise(rng.standard_normal((B, T, H, d)))
    k = _normalise(rng.standard_normal((B, T, H, d)))
    v = rng.standard_normal((B, T, H, d))
    eta = rng.uniform(0.05, 0.4, size=(B, T, H))
    s0 = {"W": rng.standard_normal((B, H, d, d))}
    y_lp, _ = miras_ref.scan(lp2, q, k, v, {"eta": eta}, initial_state=s0)
    y_dn, _ = miras_ref.scan(zoo.deltanet(d), q, k, v, {"eta": 2 * eta}, initial_state=s0)
    np.testing.assert_allclose(y_lp, y_dn, rtol=0, atol=1e-12)
    y_same, _ = miras_ref.scan(zoo.deltanet(d), q, k, v, {"eta": eta}, initial_state=s0)
    assert np.max(np.abs(y_lp - y_same)) > 1e-3


# ------------------------------------------------------------------------------------------
# long sequences with outliers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["moneta", "yaad", "memora"])
def test_sec53_variants_stay_finite_over_10000_steps_with_outliers(name):
    T, d = 10_000, 4
    rng = np.random.default_rng(5)
    q = _normalise(rng.standard_normal((1, T, 1, d)))
    k = _normalise(rng.standard_normal((1, T, 1, d)))
    v = rng.standard_normal((1, T, 1, d))
    outliers = rng.choice(T, size=50, replace=False)
    v[0, outliers, 0, : d // 2] *= 100.0  # a few entries ×100
    cfg = zoo.get(name, d)
    gates = cfg.default_gates(1, T, 1)
    gates["eta"] = rng.uniform(0.05, 0.5, size=(1, T, 1))
    gates["alpha"] = rng.uniform(0.9, 1.0, size=(1, T, 1))
    y, final = miras_ref.scan(cfg, q, k, v, gates, output_final_state=True)
    assert np.all(np.isfinite(y))
    assert all(np.all(np.isfinite(a)) for a in final.values())
    # not a trivially constant output
    assert np.std(y[0, :, 0]) > 1e-3


# ------------------------------------------------------------------------------------------
# input validation: ValueError/TypeError that names the argument
# ------------------------------------------------------------------------------------------
def _good(name="yaad", T=3, d=5):
    cfg, q, k, v, gates = _inputs(name, T, d, seed=6)
    return cfg, q, k, v, gates


def _raises(exc, match, cfg, q, k, v, gates=None, **kw):
    with pytest.raises(exc, match=match):
        miras_ref.scan(cfg, q, k, v, gates, **kw)


def test_scan_rejects_q_of_wrong_rank():
    cfg, q, k, v, g = _good()
    _raises(ValueError, r"^q must have 4 dimensions", cfg, q[0], k, v, g)
    _raises(ValueError, r"^k must have 4 dimensions", cfg, q, k[..., None], v, g)
    _raises(ValueError, r"^v must have 4 dimensions", cfg, q, k, v[0], g)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("which", ["k", "v"])
def test_scan_rejects_mismatched_batch_time_heads(which, axis):
    cfg, q, k, v, g = _good()
    x = {"k": k, "v": v}[which]
    x = np.concatenate([x, x], axis=axis)
    args = (q, x, v) if which == "k" else (q, k, x)
    _raises(ValueError, rf"^{which} must have the same \[B, T, H\]", cfg, *args, g)


def test_scan_rejects_wrong_key_and_value_dims():
    cfg, q, k, v, g = _good()
    _raises(ValueError, r"^q and k must have d_k = 5", cfg, q[..., :4], k, v, g)
    _raises(ValueError, r"^q and k must have d_k = 5", cfg, q, k[..., :4], v, g)
    _raises(ValueError, r"^v must have d_v = 5", cfg, q, k, v[..., :4], g)


def test_scan_rejects_deltaproduct_with_wrong_number_of_keys():
    cfg, q, k, v, g = _inputs("deltaproduct", 3, 5, seed=7, n_keys=3)
    _raises(ValueError, r"^k must have n_steps = 2", cfg, q, k, v, g)


@pytest.mark.parametrize("shape", [(B, 3), (B, 3, H + 1), (B, 3, H, 4), (B, 3, H, 5, 5),
                                   (B, 4, H), (1, 3, H)])
def test_scan_rejects_gates_with_wrong_shape(shape):
    cfg, q, k, v, g = _good()
    g["eta"] = np.full(shape, 0.1)
    _raises(ValueError, r"gates\['eta'\]", cfg, q, k, v, g)


@pytest.mark.parametrize("gate,value", [("eta", 0.0), ("eta", -0.1), ("alpha", 1.0001),
                                        ("alpha", 0.0), ("alpha", -0.5), ("delta", 0.0),
                                        ("delta", -1.0)])
def test_scan_rejects_out_of_range_gates(gate, value):
    cfg, q, k, v, g = _good()
    g[gate] = g[gate].copy()
    g[gate][1, 2, 0] = value  # a single bad entry
    _raises(ValueError, rf"^gates\['{gate}'\] must be in", cfg, q, k, v, g)


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1])
def test_scan_rejects_momentum_decay_outside_zero_one(value):
    cfg, q, k, v, g = _good("titans_lmm")
    g["mu"][0, 0, 0] = value
    _raises(ValueError, r"^gates\['mu'\] must be in \[0", cfg, q, k, v, g)


def test_scan_accepts_gate_boundaries_alpha_one_and_mu_zero():
    cfg, q, k, v, g = _good("titans_lmm")
    g["alpha"][:] = 1.0
    g["mu"][:] = 0.0
    y, _ = miras_ref.scan(cfg, q, k, v, g)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("arg", ["q", "k", "v", "eta", "alpha", "delta"])
def test_scan_rejects_nan_and_inf(arg, bad):
    cfg, q, k, v, g = _good()
    arrays = {"q": q.copy(), "k": k.copy(), "v": v.copy()}
    g = {n: a.copy() for n, a in g.items()}
    target = arrays[arg] if arg in arrays else g[arg]
    target[0, 1, 2] = bad
    name = arg if arg in arrays else f"gates['{arg}']"
    _raises(ValueError, "^" + re.escape(name) + " contains NaN or inf", cfg, arrays["q"],
            arrays["k"], arrays["v"], g)


def test_scan_rejects_unknown_gate_key():
    cfg, q, k, v, g = _good()
    g["beta"] = g["eta"]
    _raises(ValueError, r"^gates has unknown keys \['beta'\]", cfg, q, k, v, g)


def test_scan_rejects_gates_that_are_not_a_mapping():
    cfg, q, k, v, g = _good()
    _raises(TypeError, r"^gates must be a dict", cfg, q, k, v, [("eta", g["eta"])])
    _raises(TypeError, r"^gates must be a dict", cfg, q, k, v, np.ones(3))


def test_scan_rejects_non_real_inputs():
    cfg, q, k, v, g = _good()
    _raises(TypeError, r"^q must be a real", cfg, "abc", k, v, g)
    _raises(TypeError, r"^v must be a real", cfg, q, k, v.astype(complex), g)
    _raises(TypeError, r"^k must be a real", cfg, q, None, v, g)


def test_scan_rejects_initial_state_with_wrong_keys_or_shape():
    cfg, q, k, v, g = _good()
    _, mid = miras_ref.scan(cfg, q, k, v, g, output_final_state=True)
    _raises(ValueError, r"^initial_state must have keys \['W1', 'W2'\]", cfg, q, k, v, g,
            initial_state={"W1": mid["W1"]})
    _raises(ValueError, r"^initial_state must have keys", cfg, q, k, v, g,
            initial_state={**mid, "W3": mid["W1"]})
    _raises(ValueError, r"^initial_state\['W2'\] must have shape", cfg, q, k, v, g,
            initial_state={"W1": mid["W1"], "W2": mid["W2"][:, :, :-1]})
    _raises(ValueError, r"^initial_state\['W1'\] contains NaN", cfg, q, k, v, g,
            initial_state={"W1": mid["W1"] * np.nan, "W2": mid["W2"]})
    _raises(TypeError, r"^initial_state must be a dict", cfg, q, k, v, g,
            initial_state=[mid["W1"], mid["W2"]])


def test_scan_rejects_initial_state_of_attention_and_mesa_with_wrong_keys_or_shape():
    cfg, q, k, v, _ = _inputs("softmax_attention", 3, 5, seed=8)
    kv = {"K": np.zeros((B, H, 2, 5)), "V": np.zeros((B, H, 2, 5))}
    _raises(ValueError, r"^initial_state must be a dict with keys 'K' and 'V'", cfg, q, k, v,
            initial_state={"K": kv["K"]})
    _raises(ValueError, r"^initial_state\['K'\] and \['V'\]", cfg, q, k, v,
            initial_state={"K": kv["K"], "V": np.zeros((B, H, 3, 5))})
    _raises(ValueError, r"^initial_state\['K'\] and \['V'\]", cfg, q, k, v,
            initial_state={"K": np.zeros((B, H + 1, 2, 5)), "V": np.zeros((B, H + 1, 2, 5))})
    _raises(ValueError, r"initial_state\['K'\]", cfg, q, k, v,
            initial_state={"K": np.zeros((B, H, 2, 4)), "V": kv["V"]})
    cfg, q, k, v, g = _inputs("mesa", 3, 5, seed=9)
    _raises(ValueError, r"^initial_state must have keys \['P', 'Q'\]", cfg, q, k, v, g,
            initial_state={"W": np.zeros((B, H, 5, 5))})
    _raises(ValueError, r"^initial_state\['Q'\] must have shape", cfg, q, k, v, g,
            initial_state={"P": np.zeros((B, H, 5, 5)), "Q": np.zeros((B, H, 5, 4))})


@pytest.mark.parametrize("config", [None, "deltanet", {"memory": 1}, zoo.deltanet])
def test_scan_rejects_config_that_is_not_a_miras_config(config):
    _, q, k, v, g = _good("deltanet")
    _raises(TypeError, r"^config must be a MirasConfig", config, q, k, v, g)


def test_scan_rejects_empty_sequence():
    cfg, q, k, v, g = _good()
    g0 = {n: a[:, :0] for n, a in g.items()}
    _raises(ValueError, r"T >= 1", cfg, q[:, :0], k[:, :0], v[:, :0], g0)


def test_hgrn2_requires_channelwise_alpha():
    cfg, q, k, v, _ = _inputs("hgrn2", 3, 5, seed=10)
    _raises(ValueError, r"^gates\['alpha'\] must be channel-wise", cfg, q, k, v,
            {"alpha": np.full((B, 3, H), 0.9)})


@pytest.mark.parametrize("lam", [0.0, -1.0, np.nan, np.inf])
def test_mesa_rejects_non_positive_or_non_finite_lambda(lam):
    with pytest.raises(ValueError, match=r"^lam must"):
        zoo.mesa(5, lam=lam)
    with pytest.raises(TypeError, match=r"^lam must be a real number"):
        zoo.mesa(5, lam="1")


@pytest.mark.parametrize("scale", [0.0, -0.5, np.nan])
def test_attention_rejects_bad_scale_and_uses_an_explicit_one(scale):
    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal((1, 7, 1, 5)) for _ in range(3))
    with pytest.raises(ValueError, match=r"^scale must"):
        miras_ref.attention(q, k, v, scale=scale)
    # Eq 2 with an explicit temperature 0.3 instead of 1/√d
    y, _ = miras_ref.attention(q, k, v, scale=0.3)
    for i in range(7):
        w = np.exp([0.3 * q[0, i, 0] @ k[0, j, 0] for j in range(i + 1)])
        np.testing.assert_allclose(y[0, i, 0], w @ v[0, : i + 1, 0] / w.sum(), rtol=1e-12)
