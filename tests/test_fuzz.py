"""Property-based fuzzing of the public entry points.

``scan``, ``scan_chunked``, every zoo configuration, random compositions of the four MIRAS
choices and the attentional biases get random shapes (often mismatched), random gate values
(in range, out of range, NaN, inf) and random configurations. Every call must either succeed
with a finite output or raise ``ValueError``/``TypeError``: never another exception type. When
everything drawn is valid, the call must succeed.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import miras_ref
from miras_ref import algorithms, bias, memory, retention, zoo
from miras_ref.config import MirasConfig

FUZZ = settings(max_examples=50, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ALLOWED = (ValueError, TypeError)
CHUNKABLE = {"retnet", "linear_attention", "dfw", "lightning_attention", "gla", "mamba2",
             "hgrn2", "deltanet", "ttt_linear", "gated_deltanet", "rwkv7", "ttt_mlp", "moneta",
             "yaad", "memora"}

VALID = {"eta": (0.01, 2.0), "alpha": (0.05, 1.0), "delta": (0.01, 5.0), "mu": (0.0, 0.95)}
OUT_OF_RANGE = {"eta": [0.0, -0.5], "alpha": [0.0, -0.2, 1.5], "delta": [0.0, -1.0],
                "mu": [1.0, 2.0, -0.5]}
POISON = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


def _finite(y) -> bool:
    return bool(np.all(np.isfinite(np.asarray(y, dtype=np.float64))))


def _check_outcome(call, must_succeed: bool):
    """Run ``call``; it may raise only ValueError/TypeError, and its output must be finite."""
    try:
        y, state = call()
    except ALLOWED:
        assert not must_succeed, "a call whose inputs are all valid raised"
        return None
    assert _finite(y), "non-finite output"
    if state is not None:
        assert all(_finite(a) for a in state.values()), "non-finite final state"
    return y


BREAKS = ["shape", "poison", "gate_value", "gate_shape", "gate_missing", "unknown_gate",
          "gates_not_mapping", "initial_state"]


def _breaker(draw):
    """Which corruptions to apply: none (clean), exactly one, or any mix (wild)."""
    mode = draw(st.sampled_from(["clean"] * 4 + ["one"] * 4 + ["wild"] * 2))
    one = draw(st.sampled_from(BREAKS))

    def broken(category: str) -> bool:
        if mode == "clean":
            return False
        if mode == "one":
            return category == one and draw(st.booleans())
        return draw(st.integers(0, 3)) == 0

    return broken


def _mutate_shape(draw, shape):
    """Break a shape: drop an axis, add one, or grow one."""
    kind = draw(st.sampled_from(["drop", "extra", "grow"]))
    shape = list(shape)
    if kind == "drop":
        del shape[draw(st.integers(0, len(shape) - 1))]
    elif kind == "extra":
        shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(1, 2)))
    else:
        shape[draw(st.integers(0, len(shape) - 1))] += 1
    return tuple(shape)


def _good_gate_kinds(cfg, name) -> list[str]:
    """Gate shapes ``scan`` accepts for gate ``name`` of ``cfg``."""
    if isinstance(cfg.algorithm, algorithms.ClosedForm):
        return ["scalar"]
    if cfg.key_from_alpha and name == "alpha":
        return ["channel"]
    kinds = ["scalar", "channel"]
    if name == "alpha" and isinstance(cfg.memory, memory.MatrixMemory):
        kinds.append("element")
    return kinds


BAD_GATE_KINDS = ["wrong_channel", "wrong_lead", "rank2", "pyfloat", "element"]


@st.composite
def scan_calls(draw, names=tuple(zoo.ALL)):
    """A random call of ``scan``: its arguments and whether they are all valid."""
    name = draw(st.sampled_from(sorted(names)))
    d = draw(st.integers(1, 6))
    cfg = zoo.get(name, d)
    Bn, T, Hn = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 10.0]))
    broken = _breaker(draw)
    multi = isinstance(cfg.algorithm, algorithms.MultiStepGD)
    inner = (cfg.algorithm.n_steps,) if multi else ()
    valid = True
    arrays = {}
    for arg, shape in (("q", (Bn, T, Hn, d)), ("k", (Bn, T, Hn) + inner + (d,)),
                       ("v", (Bn, T, Hn) + inner + (d,))):
        if broken("shape"):
            shape, valid = _mutate_shape(draw, shape), False
        arrays[arg] = scale * rng.standard_normal(shape)
    if broken("poison"):
        target = arrays[draw(st.sampled_from(["q", "k", "v"]))]
        if target.size:
            target.flat[draw(st.integers(0, target.size - 1))] = POISON[
                draw(st.sampled_from(sorted(POISON)))]
            valid = False

    gates = {}
    for g in ("eta", "alpha", "delta", "mu"):
        required = g in cfg.required_gates
        if required and broken("gate_missing"):
            # a missing gate takes the config's default; HGRN2's default alpha is not channel-wise
            valid &= not (cfg.key_from_alpha and g == "alpha")
            continue
        if not required and not draw(st.booleans()):
            continue  # gates a configuration does not read are ignored
        good_kinds = _good_gate_kinds(cfg, g) if g != "delta" else ["scalar", "channel"]
        bad_shape = broken("gate_shape")
        kinds = [k for k in BAD_GATE_KINDS if k not in good_kinds] if bad_shape else good_kinds
        kind = draw(st.sampled_from(kinds))
        shape = {"scalar": (Bn, T, Hn), "channel": (Bn, T, Hn, d), "element": (Bn, T, Hn, d, d),
                 "wrong_channel": (Bn, T, Hn, d + 1), "wrong_lead": (Bn, T + 1, Hn),
                 "rank2": (Bn, T), "pyfloat": ()}[kind]
        lo, hi = VALID[g]
        arr = rng.uniform(lo, hi, size=shape)
        if g == "alpha" and arr.size and draw(st.booleans()):
            arr.flat[0] = 1.0  # the closed end of (0, 1]
        if g == "mu" and arr.size and draw(st.booleans()):
            arr.flat[0] = 0.0  # the closed end of [0, 1)
        bad_value = broken("gate_value")
        if bad_value and arr.size:
            i = draw(st.integers(0, arr.size - 1))
            arr.flat[i] = draw(st.sampled_from(OUT_OF_RANGE[g] + list(POISON.values())))
        if required:
            valid &= not (bad_shape or bad_value)
        gates[g] = float(arr) if kind == "pyfloat" else arr
    if broken("unknown_gate"):
        gates["beta"] = np.ones((Bn, T, Hn))
        valid = False
    if broken("gates_not_mapping"):
        gates = list(gates.items()) if draw(st.booleans()) else np.ones((Bn, T, Hn))
        valid = False

    initial_state = None
    if broken("initial_state"):
        valid = False
        init = draw(st.sampled_from(["list", "wrong_keys", "nan", "wrong_shape"]))
        if init == "list":
            initial_state = [np.zeros(3)]
        elif init == "wrong_keys":
            initial_state = {"not_a_parameter": np.zeros((Bn, Hn, d))}
        else:
            _, initial_state = _safe_final_state(cfg, Bn, Hn, d)
            key = sorted(initial_state)[0]
            if init == "nan":
                initial_state[key] = np.full_like(initial_state[key], np.nan)
            else:
                initial_state[key] = np.zeros(initial_state[key].shape[:-1] + (d + 1,))
    elif draw(st.booleans()):
        _, initial_state = _safe_final_state(cfg, Bn, Hn, d)  # a valid state
    return cfg, arrays, gates, initial_state, valid


def _safe_final_state(cfg, Bn, Hn, d):
    """A correctly shaped state for ``cfg`` (a final state of a valid one-token call)."""
    multi = isinstance(cfg.algorithm, algorithms.MultiStepGD)
    inner = (cfg.algorithm.n_steps,) if multi else ()
    rng = np.random.default_rng(0)
    q = rng.standard_normal((Bn, 1, Hn, d))
    kv = rng.standard_normal((Bn, 1, Hn) + inner + (d,))
    gates = {"alpha": np.full((Bn, 1, Hn, d), 0.9)} if cfg.key_from_alpha else None
    return miras_ref.scan(cfg, q, kv, kv, gates, output_final_state=True)


@FUZZ
@given(scan_calls())
def test_fuzz_scan_raises_only_value_or_type_errors_and_outputs_are_finite(call):
    cfg, arrays, gates, initial_state, valid = call
    y = _check_outcome(lambda: miras_ref.scan(cfg, arrays["q"], arrays["k"], arrays["v"], gates,
                                              initial_state=initial_state,
                                              output_final_state=True), valid)
    if y is not None:
        assert y.shape == arrays["q"].shape[:3] + (cfg.memory.d_v,)


@FUZZ
@given(scan_calls(), st.sampled_from([None, 1, 2, 3, 16, 0, -1, 2.5, "4", True]))
def test_fuzz_scan_chunked_raises_only_value_or_type_errors_and_outputs_are_finite(call, chunk):
    cfg, arrays, gates, initial_state, valid = call
    chunk_ok = chunk is None or (isinstance(chunk, int) and not isinstance(chunk, bool)
                                 and chunk >= 1 and cfg.name in CHUNKABLE)
    _check_outcome(lambda: miras_ref.scan_chunked(cfg, arrays["q"], arrays["k"], arrays["v"],
                                                  gates, chunk_size=chunk,
                                                  initial_state=initial_state,
                                                  output_final_state=True),
                   valid and chunk_ok)


# ------------------------------------------------------------------------------------------
# random compositions of the four choices, with random (sometimes invalid) parameters
# ------------------------------------------------------------------------------------------
NUMBERS = st.one_of(st.sampled_from([0.0, -1.0, 0.5, 1.0, 2.0, 3.0, 4.0, np.nan, np.inf]),
                    st.floats(0.1, 6.0), st.just("3"), st.just(None), st.just(True))


def _build(draw, factory, *params):
    """Call a constructor with drawn parameters; invalid ones must raise ValueError/TypeError."""
    values = [draw(p) for p in params]
    try:
        return factory(*values)
    except ALLOWED:
        return None


@st.composite
def compositions(draw):
    d = draw(st.integers(1, 5))
    mem = draw(st.sampled_from([
        lambda: memory.MatrixMemory(d, d), lambda: memory.VectorMemory(d),
        lambda: memory.MLPMemory(d, 2)]))()
    bias_obj = _build(draw, draw(st.sampled_from([
        lambda p: bias.LpBias(p), lambda p: bias.LpBias(p, smooth=False),
        lambda p: bias.DotProductBias(), lambda p: bias.L2Bias(), lambda p: bias.L1Bias(),
        lambda p: bias.HuberCoordinateBias(), lambda p: bias.HuberNormBias(),
        lambda p: bias.HuberMixtureBias(), lambda p: bias.ValueShiftRobustBias()])), NUMBERS)
    ret = _build(draw, draw(st.sampled_from([
        lambda p: retention.L2Retention(), lambda p: retention.L2Retention("decayed"),
        lambda p: retention.L2Retention(p), lambda p: retention.LqRetention(p),
        lambda p: retention.LqRetention(p, "exact"), lambda p: retention.KLRetention(p),
        lambda p: retention.KLRetention(p, axis=None),
        lambda p: retention.FDivergenceRetention("kl", p),
        lambda p: retention.FDivergenceRetention("burg"),
        lambda p: retention.ElasticNetRetention(p), lambda p: retention.ElasticNetFTRLRetention(p),
        lambda p: retention.SigmoidBregmanRetention()])), NUMBERS)
    alg = _build(draw, draw(st.sampled_from([
        lambda p: algorithms.GD(), lambda p: algorithms.Momentum(),
        lambda p: algorithms.ImplicitGD(), lambda p: algorithms.MultiStepGD(p),
        lambda p: algorithms.ClosedForm(p), lambda p: algorithms.NonParametric(p)])),
        st.one_of(NUMBERS, st.integers(-1, 3)))
    return d, mem, bias_obj, ret, alg


@FUZZ
@given(compositions(), st.integers(0, 2**32 - 1), st.sampled_from([None, 1, 2]))
def test_fuzz_random_compositions_raise_only_value_or_type_errors(parts, seed, chunk):
    d, mem, bias_obj, ret, alg = parts
    if bias_obj is None or ret is None or alg is None:
        return  # an invalid component parameter was rejected with ValueError/TypeError
    cfg = MirasConfig("fuzz", mem, bias_obj, ret, alg)
    rng = np.random.default_rng(seed)
    T, inner = 3, ((alg.n_steps,) if isinstance(alg, algorithms.MultiStepGD) else ())
    q = rng.standard_normal((1, T, 2, d))
    k = rng.standard_normal((1, T, 2) + inner + (d,))
    v = rng.standard_normal((1, T, 2) + inner + (d,))
    gates = {"eta": rng.uniform(0.01, 0.5, (1, T, 2)), "alpha": rng.uniform(0.5, 1.0, (1, T, 2)),
             "delta": rng.uniform(0.1, 2.0, (1, T, 2)), "mu": rng.uniform(0.0, 0.9, (1, T, 2))}
    _check_outcome(lambda: miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=chunk,
                                                  output_final_state=True), False)


# one component at a time with a random (often invalid) parameter: construction raises
# ValueError/TypeError, or the configuration runs to a finite output
def _matrix_cfg(bias_obj=None, ret=None, alg=None, d=4):
    return MirasConfig("fuzz", memory.MatrixMemory(d, d), bias_obj or bias.L2Bias(),
                       ret or retention.L2Retention(), alg or algorithms.GD())


COMPONENTS = {
    "lp_bias_p": lambda p: _matrix_cfg(bias_obj=bias.LpBias(p)),
    "lp_bias_sharpness": lambda p: _matrix_cfg(bias_obj=bias.LpBias(3.0, True, p)),
    "lp_bias_eps": lambda p: _matrix_cfg(bias_obj=bias.LpBias(3.0, True, 10.0, p)),
    "l2_retention_anchor": lambda p: _matrix_cfg(ret=retention.L2Retention(p)),
    "lq_retention_q": lambda p: _matrix_cfg(ret=retention.LqRetention(p)),
    "lq_retention_exact_q": lambda p: _matrix_cfg(ret=retention.LqRetention(p, "exact")),
    "kl_retention_c": lambda p: _matrix_cfg(ret=retention.KLRetention(p)),
    "elastic_gamma": lambda p: _matrix_cfg(ret=retention.ElasticNetRetention(p)),
    "elastic_ftrl_gamma": lambda p: _matrix_cfg(ret=retention.ElasticNetFTRLRetention(p)),
    "multi_step_n": lambda p: _matrix_cfg(alg=algorithms.MultiStepGD(p)),
    "closed_form_lam": lambda p: _matrix_cfg(alg=algorithms.ClosedForm(p)),
    "nonparametric_scale": lambda p: _matrix_cfg(alg=algorithms.NonParametric(p)),
    "mlp_expansion": lambda p: MirasConfig("fuzz", memory.MLPMemory(4, p), bias.L2Bias(),
                                           retention.L2Retention(), algorithms.GD()),
    "zoo_moneta_p": lambda p: zoo.moneta(4, p=p),
    "zoo_moneta_q": lambda p: zoo.moneta(4, q=p),
    "zoo_memora_c": lambda p: zoo.memora(4, c=p),
    "zoo_mesa_lam": lambda p: zoo.mesa(4, lam=p),
    "zoo_deltaproduct_n": lambda p: zoo.deltaproduct(4, n_steps=p),
}
# Parameters are kept to realistic magnitudes: an accepted but absurd exponent or scale (p, q,
# eps or c = 1e300) overflows float64 inside the memory; that is not what this test is about.
SPECIAL = [0, 1, 2, 3, -1, 0.0, -1.0, 0.5, 1.0, 2.0, 4.0, 8.0, 1e-300, np.nan, np.inf, -np.inf,
           "3", None, True, "decayed", "previous", [1.0], np.float64(2.0), np.int64(2)]


def _run_component(factory, p, seed):
    try:
        cfg = factory(p)
    except ALLOWED:
        return
    rng = np.random.default_rng(seed)
    alg = cfg.algorithm
    inner = (alg.n_steps,) if isinstance(alg, algorithms.MultiStepGD) else ()
    d = cfg.memory.d_k
    q = rng.standard_normal((1, 3, 2, d))
    k = rng.standard_normal((1, 3, 2) + inner + (d,))
    v = rng.standard_normal((1, 3, 2) + inner + (d,))
    _check_outcome(lambda: miras_ref.scan(cfg, q, k, v, output_final_state=True), False)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(st.one_of(st.floats(-10.0, 10.0), st.integers(-3, 6), st.sampled_from(SPECIAL)),
       st.integers(0, 2**32 - 1))
def _component_case(factory, p, seed):
    _run_component(factory, p, seed)


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_fuzz_component_parameters_raise_only_value_or_type_errors(component):
    for i, p in enumerate(SPECIAL):  # every special value, deterministically
        _run_component(COMPONENTS[component], p, i)
    _component_case(COMPONENTS[component])  # and random ones


# ------------------------------------------------------------------------------------------
# the attentional biases on their own
# ------------------------------------------------------------------------------------------
@FUZZ
@given(st.sampled_from(sorted(bias.BIASES)), st.integers(0, 2**32 - 1),
       st.sampled_from(["same", "broadcast", "mismatch"]),
       st.sampled_from(["none", "scalar", "token", "channel", "wrong", "zero", "negative"]))
def test_fuzz_biases_raise_only_value_or_type_errors_and_are_finite(name, seed, vshape, delta):
    rng = np.random.default_rng(seed)
    shape = (2, 3, 4)
    y = rng.standard_normal(shape) * 3
    v = rng.standard_normal({"same": shape, "broadcast": (1, 4), "mismatch": (2, 3, 5)}[vshape])
    dl = {"none": None, "scalar": 0.7, "token": rng.uniform(0.1, 2, (2, 3)),
          "channel": rng.uniform(0.1, 2, shape), "wrong": rng.uniform(0.1, 2, (5,)),
          "zero": np.zeros((2, 3)), "negative": -rng.uniform(0.1, 2, (2, 3))}[delta]
    obj = bias.BIASES[name]()
    for method in (obj.loss, obj.grad):
        try:
            out = method(y, v, dl)
        except ALLOWED:
            continue
        assert _finite(out)
        assert out.shape in (shape, shape[:-1])
