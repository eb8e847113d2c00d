"""Eq 1-5, 8, 9 helpers and softmax attention against direct formulas and the general scan."""

import numpy as np
import pytest

from miras_ref import attention, read_memory, scan, zoo
from miras_ref.associative import (
    associative_objective,
    delta_rule_update,
    hebbian_update,
    online_gd_step,
)
from miras_ref.attention import causal_softmax_attention, qkv_projections
from miras_ref.bias import L2Bias, LpBias
from miras_ref.memory import MatrixMemory, MLPMemory


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_qkv_projections_are_linear_maps_eq1():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 5))
    w = [rng.standard_normal((5, 3)) for _ in range(3)]
    for out, wi in zip(qkv_projections(x, *w), w):
        np.testing.assert_allclose(out, np.einsum("ni,ij->nj", x, wi), atol=1e-13)


def test_causal_softmax_attention_matches_explicit_sum_eq2():
    rng = np.random.default_rng(2)
    n, d = 9, 5
    q, k, v = rng.standard_normal((3, n, d))
    y = causal_softmax_attention(q, k, v)
    for i in range(n):
        s = np.array([np.exp(q[i] @ k[j] / np.sqrt(d)) for j in range(i + 1)])
        np.testing.assert_allclose(y[i], (s[:, None] * v[: i + 1]).sum(0) / s.sum(), atol=1e-12)


def test_attention_op_is_nadaraya_watson_and_streams_with_kv_cache():
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((3, 2, 11, 3, 4))
    y, state = attention(q, k, v, output_final_state=True)
    ref = np.moveaxis(causal_softmax_attention(*(np.moveaxis(a, 2, 1) for a in (q, k, v))), 1, 2)
    np.testing.assert_allclose(y, ref, atol=1e-12)
    y1, s1 = attention(q[:, :6], k[:, :6], v[:, :6], output_final_state=True)
    y2, _ = attention(q[:, 6:], k[:, 6:], v[:, 6:], initial_state=s1)
    np.testing.assert_allclose(np.concatenate([y1, y2], 1), y, atol=1e-12)
    assert state["K"].shape == (2, 3, 11, 4)


def test_associative_objective_sums_the_bias_over_pairs_eq4():
    rng = np.random.default_rng(4)
    mem = MatrixMemory(4, 3)
    w = {"W": rng.standard_normal((3, 4))}
    keys, values = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    expected = sum(0.5 * np.sum((w["W"] @ k - v) ** 2) for k, v in zip(keys, values))
    assert associative_objective(mem, w, L2Bias(), keys, values) == pytest.approx(expected)


def test_online_gd_step_decreases_the_loss_along_the_gradient_eq5():
    rng = np.random.default_rng(5)
    mem = MLPMemory(5)
    params = {n: a[0, 0] for n, a in mem.default_state(1, 1).items()}
    k, v = rng.standard_normal(5), rng.standard_normal(5)
    before = associative_objective(mem, params, LpBias(3.0, smooth=False), k[None], v[None])
    after = associative_objective(mem, online_gd_step(mem, params, LpBias(3.0, smooth=False), k,
                                                      v, 1e-3), LpBias(3.0, smooth=False),
                                  k[None], v[None])
    assert after < before


def test_hebbian_update_eq8_equals_linear_attention_and_retnet_scans():
    rng = np.random.default_rng(6)
    T, d = 8, 5
    k, v, q = rng.standard_normal((3, T, d))
    for name, alpha in (("linear_attention", 1.0), ("lightning_attention", 0.9)):
        cfg = zoo.get(name, d)
        gates = {"eta": np.ones((1, T, 1)), "alpha": np.full((1, T, 1), alpha)}
        y, _ = scan(cfg, q[None, :, None], k[None, :, None], v[None, :, None], gates)
        M = np.zeros((d, d))
        for t in range(T):
            M = hebbian_update(M, k[t], v[t], alpha)
            np.testing.assert_allclose(y[0, t, 0], M @ q[t], atol=1e-12)


def test_delta_rule_update_eq9_equals_gradient_step_on_l2_and_deltanet_scan():
    rng = np.random.default_rng(7)
    T, d, eta = 9, 6, 0.7
    k = _unit(rng.standard_normal((T, d)))
    v, q = rng.standard_normal((2, T, d))
    cfg = zoo.get("deltanet", d)
    y, _ = scan(cfg, q[None, :, None], k[None, :, None], v[None, :, None],
                {"eta": np.full((1, T, 1), eta), "alpha": np.ones((1, T, 1))})
    M = np.zeros((d, d))
    mem = MatrixMemory(d, d)
    for t in range(T):
        step = online_gd_step(mem, {"W": M}, L2Bias(), k[t], v[t], eta)["W"]
        M = delta_rule_update(M, k[t], v[t], eta)
        np.testing.assert_allclose(M, step, atol=1e-12)
        np.testing.assert_allclose(y[0, t, 0], M @ q[t], atol=1e-12)


def test_read_memory_answers_queries_without_writing():
    rng = np.random.default_rng(8)
    d = 5
    q, k, v = rng.standard_normal((3, 1, 6, 2, d))
    for name in ("deltanet", "moneta", "softmax_attention", "mesa"):
        cfg = zoo.get(name, d)
        y, state = scan(cfg, q, k, v, output_final_state=True)
        # the last token's output read after its write equals a read of the final state
        np.testing.assert_allclose(read_memory(cfg, state, q[:, -1:])[:, 0], y[:, -1],
                                   atol=1e-12)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="alpha"):
        hebbian_update(np.zeros((2, 2)), np.ones(2), np.ones(2), alpha=1.5)
    with pytest.raises(ValueError, match="eta"):
        delta_rule_update(np.zeros((2, 2)), np.ones(2), np.ones(2), eta=0.0)
    with pytest.raises(ValueError, match="q and k"):
        causal_softmax_attention(np.ones((3, 2)), np.ones((4, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        causal_softmax_attention(np.full((3, 2), np.nan), np.ones((3, 2)), np.ones((3, 2)))


def test_tour_runs_every_model_and_reports_finite_errors(tmp_path):
    from miras_ref import tour

    rows = tour.main(["--out", str(tmp_path), "--pairs", "4", "--dim", "8"])
    assert [r["model"] for r in rows] == zoo.names()
    assert all(np.isfinite(r["recall_error"]) for r in rows)
    # the delta rule, written four times, recalls better than the Hebbian rule
    by = {r["model"]: r["recall_error"] for r in rows}
    assert by["deltanet"] < by["linear_attention"]
    assert (tmp_path / "tour.png").stat().st_size > 10_000
