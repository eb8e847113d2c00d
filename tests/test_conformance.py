"""Conformance of every available GPU-side backend with miras_ref (miras_gpu.conformance),
plus the torch backend's own semantics: gradcheck, packed sequences (cu_seqlens), the two
read paths of the chunked form, checkpointing, precision policy and torch.compile.

The case list is miras_gpu.conformance.cases(): the same one that
``python -m miras_gpu.conformance --report PATH`` runs outside pytest.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import miras_gpu  # noqa: E402
import miras_ref  # noqa: E402
from miras_gpu import conformance as conf  # noqa: E402
from miras_ref import zoo  # noqa: E402
from miras_ref.algorithms import GD  # noqa: E402
from miras_ref.memory import MLPMemory  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = conf.cases(DEVICE)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors are tiny: OpenMP threads only add stalls on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_case_list_covers_the_spec():
    ids = {c.id for c in CASES}
    assert len(ids) == len(CASES)
    models = {c.model for c in CASES}
    assert set(zoo.ALL) <= models
    assert {c.size[1] for c in CASES} >= {1, 63} and {c.size[3] for c in CASES} >= {16, 24}
    assert {(c.op, c.chunk_size) for c in CASES} == set(conf.OPS)
    assert {c.dtype for c in CASES} == set(conf.dtypes_for(DEVICE))
    assert {c.backend for c in CASES} == set(conf.kernel_backends())
    chunked = {c.model for c in CASES if c.op == "scan_chunked"}
    assert {"moneta", "yaad", "memora", "gated_deltanet"} <= chunked
    assert not {"titans_lmm", "longhorn", "deltaproduct", "softmax_attention", "mesa"} & chunked


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_conformance(case):
    result = conf.run_case(case)
    assert result.passed, result.describe()


@pytest.mark.parametrize("op,chunk_size,model", conf.GRADCHECK_CASES,
                         ids=lambda x: str(x))
def test_gradcheck_float64(op, chunk_size, model):
    result = conf.run_gradcheck(op, chunk_size, model, DEVICE)
    assert result.passed, result.describe()


def _ill_case(model: str, seed_of: str):
    """A float32 chunk-1 case of ``model`` on the torch backend with the inputs (seed) of
    case id ``seed_of``: the case, its config, inputs, output weights and seed."""
    case = conf.Case("scan_chunked", 1, model, "torch", "float32", (2, 63, 2, 24), DEVICE)
    seed = zlib.crc32(seed_of.encode())
    config = conf.make_config(model, 24)
    inputs, _, _, weights = conf.draw_inputs(case, config, seed)
    return case, config, inputs, weights, seed


def test_ill_conditioned_inputs_are_found():
    """The float32 inputs of these two case ids failed on an H200 while passing on the CPU:
    a coordinate of the Huber bias's residual sits within round-off of its threshold δ (the
    float64 gradient jumps by ~1e-3 under 1e-7 input noise), and TTT-MLP's trajectory
    amplifies round-off ~1e3-fold. The probe must flag both, and not a well-conditioned
    draw of the same configuration."""
    for model, cid, what in [
            ("x_huber_coord_ftrl",
             "scan_chunked[c1]-x_huber_coord_ftrl-triton-float32-B2T63H2D24", "grad"),
            ("ttt_mlp", "scan_chunked[c1]-ttt_mlp-triton-float32-B2T63H2D24", "grad k")]:
        case, config, inputs, weights, seed = _ill_case(model, cid)
        why = conf.ill_conditioned(case, config, inputs, weights, True, seed)
        assert why is not None and why.startswith(what), (model, why)
    case, config, inputs, weights, seed = _ill_case(
        "x_huber_coord_ftrl", "scan_chunked[c1]-x_huber_coord_ftrl-torch-float32-B2T63H2D24")
    assert conf.ill_conditioned(case, config, inputs, weights, True, seed) is None


def test_error_helpers_never_pass_nan():
    ref = np.ones(4)
    assert conf.max_error(ref, ref) == 0.0
    assert conf.max_error(np.array([1, 1, 1, np.nan]), ref) == np.inf
    assert conf.rms_error(np.array([1, 1, 1, np.nan]), ref) == np.inf
    assert conf.max_error(np.ones(3), ref) == np.inf  # shape mismatch
    res = conf.Result("x", {"y": (float("nan"), 1.0)})
    assert not res.passed
    assert not conf.Result("empty").passed


# --------------------------------------------------------------------------------------------
# torch-backend semantics beyond the reference comparison


def _inputs(model, size, dtype=torch.float64, seed=0, requires_grad=False, expansion=None):
    """A conformance config (MLP memories with ``expansion``) and its inputs."""
    cfg = conf.make_config(model, size[3])
    if expansion is not None and isinstance(cfg.memory, MLPMemory):
        cfg = dataclasses.replace(cfg, memory=MLPMemory(size[3], expansion))
    inp = conf.make_inputs(cfg, model, size, seed)
    return cfg, inp, conf._to_torch(inp, dtype, DEVICE, requires_grad)


def _flat_grads(t, outputs):
    loss = sum((o.double() * torch.linspace(-1, 1, o.numel(), dtype=torch.float64,
                                            device=o.device).reshape(o.shape)).sum()
               for o in outputs)
    leaves = list(conf._leaves(t).values())
    return torch.autograd.grad(loss, leaves, allow_unused=True)


@pytest.mark.parametrize("model", ["yaad", "memora", "gated_deltanet"])
def test_cu_seqlens_equals_separate_calls(model):
    cu = [0, 5, 6, 17, 30]
    cfg, inp, t = _inputs(model, (1, 30, 2, 8), expansion=2)
    N = len(cu) - 1
    init = {n: torch.as_tensor(np.stack([np.asarray(a[0]) * (1 + 0.1 * j) for j in range(N)]),
                               device=DEVICE) for n, a in inp["initial_state"].items()}
    y, final = miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"], chunk_size=4,
                                      initial_state=init, output_final_state=True,
                                      cu_seqlens=torch.tensor(cu))
    assert y.shape == t["q"].shape and all(s.shape[0] == N for s in final.values())
    for j, (s, e) in enumerate(zip(cu, cu[1:])):
        y_j, f_j = miras_gpu.scan_chunked(
            cfg, t["q"][:, s:e], t["k"][:, s:e], t["v"][:, s:e],
            {n: a[:, s:e] for n, a in t["gates"].items()}, chunk_size=4,
            initial_state={n: a[j:j + 1] for n, a in init.items()}, output_final_state=True)
        torch.testing.assert_close(y[:, s:e], y_j, rtol=0, atol=0)
        for n in final:
            torch.testing.assert_close(final[n][j:j + 1], f_j[n], rtol=0, atol=0)
    # the numpy backend splits the same way: the two agree
    y_np, f_np = miras_gpu.scan_chunked(
        cfg, inp["q"][:, :30], inp["k"], inp["v"], inp["gates"], chunk_size=4,
        initial_state={n: a.cpu().numpy() for n, a in init.items()}, output_final_state=True,
        cu_seqlens=np.array(cu))
    np.testing.assert_allclose(y.cpu().numpy(), y_np, atol=1e-12, rtol=0)


def test_cu_seqlens_default_state_and_errors():
    cfg, inp, t = _inputs("deltanet", (1, 9, 2, 8))
    y, _ = miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"], chunk_size=4,
                                  cu_seqlens=[0, 4, 9])
    y2, _ = miras_gpu.scan_chunked(cfg, t["q"][:, 4:], t["k"][:, 4:], t["v"][:, 4:],
                                   {n: a[:, 4:] for n, a in t["gates"].items()}, chunk_size=4)
    torch.testing.assert_close(y[:, 4:], y2, rtol=0, atol=0)
    run = lambda cu, **kw: miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], chunk_size=4,  # noqa: E731
                                                  cu_seqlens=cu, **kw)
    with pytest.raises(ValueError, match="must start at 0 and end at T = 9"):
        run([0, 4, 8])
    with pytest.raises(ValueError, match="strictly increasing"):
        run([0, 4, 4, 9])
    with pytest.raises(TypeError, match="cu_seqlens must hold integers"):
        run(torch.tensor([0.0, 9.0]))
    with pytest.raises(ValueError, match="must have N = 2 rows"):
        run([0, 4, 9], initial_state={"W": torch.zeros(1, 2, 8, 8, dtype=torch.float64)})
    q2 = torch.cat([t["q"], t["q"]])
    with pytest.raises(ValueError, match="batch size B = 1 with cu_seqlens"):
        miras_gpu.scan_chunked(cfg, q2, q2, q2, chunk_size=4, cu_seqlens=[0, 9])


def _matrix_lq_inputs(size, requires_grad):
    """A matrix memory with Moneta's bias and simplified ℓq link (no zoo model has one)."""
    from miras_ref.bias import LpBias
    from miras_ref.config import MirasConfig
    from miras_ref.memory import MatrixMemory
    from miras_ref.retention import LqRetention

    cfg = MirasConfig("matrix_lq", MatrixMemory(size[3], size[3]), LpBias(3.0), LqRetention(4.0),
                      GD(), {"eta": 0.05, "alpha": 0.99})
    inp = conf.make_inputs(cfg, "matrix_lq", size, 0)
    return cfg, inp, conf._to_torch(inp, torch.float64, DEVICE, requires_grad)


@pytest.mark.parametrize("model", ["gated_deltanet", "rwkv7", "ttt_mlp", "yaad", "mamba2",
                                   "moneta", "matrix_lq", "moneta:chunk", "memora:chunk",
                                   "matrix_lq:chunk"])
def test_fast_read_equals_per_token_states(model, monkeypatch):
    """The two read paths of a chunk (dual form vs per-token states) agree, with gradients:
    identity links, the scalar ℓq link ``ψ(A) = A / ‖A‖_q^{q-2}`` (Moneta), and any link
    applied at chunk starts only (``model:chunk``, ``link_at="chunk"``)."""
    from miras_gpu.torch import chunked

    size = (2, 7, 2, 8)
    model, _, link_at = model.partition(":")
    if model == "matrix_lq":
        cfg, inp, t = _matrix_lq_inputs(size, requires_grad=True)
    else:
        cfg, inp, t = _inputs(model, size, requires_grad=True, expansion=2)
    cfg = dataclasses.replace(cfg, link_at=link_at or "token")
    q, k, v = (x.movedim(2, 1) for x in (t["q"], t["k"], t["v"]))
    gates = {n: a.movedim(2, 1) for n, a in t["gates"].items()}
    z = dict(t["initial_state"])
    calls = _spy(monkeypatch, "outer_read")
    results = []
    for fast in (True, False):
        y, z_end = chunked.chunk_step(cfg, z, q, k, v, gates, fast=fast)
        assert bool(calls) == fast  # the fast path ran exactly when asked
        calls.clear()
        outs = [y, *z_end.values()]
        results.append((outs, _flat_grads(t, outs)))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", ["moneta", "yaad"])
def test_checkpoint_gives_the_same_values_and_gradients(model):
    cfg, inp, t = _inputs(model, (1, 11, 2, 8), requires_grad=True, expansion=2)
    res = []
    for ckpt in (False, True):
        y, s = miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"], chunk_size=4,
                                      initial_state=t["initial_state"], output_final_state=True,
                                      checkpoint=ckpt)
        outs = [y, *s.values()]
        res.append((outs, _flat_grads(t, outs)))
    for a, b in zip(res[0][0] + list(res[0][1]), res[1][0] + list(res[1][1])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bfloat16_policy():
    """bf16 in, bf16 out; the state stays float32 and close to the float64 reference."""
    cfg, inp, t = _inputs("memora", (1, 20, 2, 16), dtype=torch.bfloat16)
    y, s = miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"], chunk_size=8,
                                  initial_state=t["initial_state"], output_final_state=True)
    assert y.dtype == torch.bfloat16 and all(a.dtype == torch.float32 for a in s.values())
    r = conf._rounded(inp, "bfloat16")
    y_ref, s_ref = miras_ref.scan_chunked(cfg, r["q"], r["k"], r["v"], r["gates"], chunk_size=8,
                                          initial_state=r["initial_state"],
                                          output_final_state=True)
    assert conf.rms_error(y.double().cpu().numpy(), y_ref) < 1e-2
    assert all(conf.max_error(s[n].double().cpu().numpy(), s_ref[n]) < 1e-5 for n in s)


def test_float32_inputs_keep_float32():
    cfg, inp, t = _inputs("gla", (1, 5, 2, 8), dtype=torch.float32)
    y, s = miras_gpu.scan(cfg, t["q"], t["k"], t["v"], t["gates"], output_final_state=True)
    assert y.dtype == torch.float32 and s["W"].dtype == torch.float32


def _assert_rel_close(outs, refs, bound):
    """Each tensor's normalised max error ``max|a - b| / max|b|`` is within ``bound``."""
    assert len(outs) == len(refs)
    for i, (a, b) in enumerate(zip(outs, refs)):
        err = conf.max_error(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy())
        assert err <= bound, (i, err, tuple(a.shape))


#: compiled float32 vs eager float32: fused kernels round differently, and the MLP memory's
#: recurrence amplifies that like any float32 round-off (conformance.MLP_FLOAT32_SLACK)
COMPILE_BOUND = 5e-4


def _compiled_matches_eager(model, backend):
    from miras_gpu.torch import scan_chunked

    cfg, inp, t = _inputs(model, (1, 10, 2, 8), dtype=torch.float32, requires_grad=True,
                          expansion=2)

    def f(q, k, v, gates, init):
        return scan_chunked(cfg, q, k, v, gates, chunk_size=4, initial_state=init,
                            output_final_state=True)

    compiled = torch.compile(f, fullgraph=True, backend=backend)
    res = []
    for fn in (f, compiled):
        y, s = fn(t["q"], t["k"], t["v"], t["gates"], t["initial_state"])
        outs = [y, *s.values()]
        res.append(outs + [g for g in _flat_grads(t, outs) if g is not None])
    _assert_rel_close(res[1], res[0], COMPILE_BOUND)


def test_compile_traces_whole_graph_on_cpu():
    """torch.compile(fullgraph=True) captures the chunked MLP op (memora: lag token, softmax
    link) with no graph break; aot_eager keeps this CPU test fast (inductor: CUDA test)."""
    torch._dynamo.reset()
    _compiled_matches_eager("memora", "aot_eager")


@needs_cuda
@pytest.mark.parametrize("model", ["memora", "yaad"])
def test_compile_inductor_cuda(model):
    torch._dynamo.reset()
    _compiled_matches_eager(model, "inductor")


def test_cuda_graphs_with_checkpoint_is_a_clear_error():
    """CUDA-graph replays (compile_chunks="reduce-overhead") would be overwritten by the
    backward pass's recomputation of checkpointed chunks: refused before any work."""
    cfg, inp, t = _inputs("yaad", (1, 10, 2, 8), dtype=torch.float32, requires_grad=True,
                          expansion=2)
    with pytest.raises(ValueError, match="reduce-overhead.*checkpoint"):
        miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"], chunk_size=4,
                               backend="torch", checkpoint=True,
                               compile_chunks="reduce-overhead")


def test_cuda_graphs_of_the_loop_need_cuda():
    """CPU tensors with compile_chunks="graphs" are refused, with and without gradients (also
    on a machine that has a GPU)."""
    cfg, inp, _ = _inputs("yaad", (1, 10, 2, 8), dtype=torch.float32, expansion=2)
    t = conf._to_torch(inp, torch.float32, "cpu", True)
    for grad in (True, False):
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match="needs CUDA"):
            miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"], chunk_size=4,
                                   backend="torch", compile_chunks="graphs")


def test_compile_chunks_many_variants_on_cpu():
    """``compile_chunks`` (a cached torch.compile of the chunk step) stays correct across
    configurations, grad modes and a partial last chunk: more variants than dynamo's default
    recompile limit of 8 (aot_eager keeps it fast on CPU)."""
    torch._dynamo.reset()
    for model in ("memora", "yaad", "moneta"):
        cfg, inp, t = _inputs(model, (1, 10, 2, 8), dtype=torch.float32, expansion=2)
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                outs = [miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"],
                                               chunk_size=4, initial_state=t["initial_state"],
                                               compile_chunks=c)[0] for c in (False, "aot_eager")]
            _assert_rel_close(outs[1:], outs[:1], 1e-6)


@needs_cuda
@pytest.mark.parametrize(("how", "checkpoint"),
                         [(True, False), (True, True), ("reduce-overhead", False),
                          ("graphs", False), ("graphs", True)])
@pytest.mark.parametrize("model", ["memora", "yaad", "moneta"])
def test_compile_chunks_option_cuda(model, how, checkpoint):
    """``compile_chunks`` (a cached torch.compile of the chunk step; "reduce-overhead" replays
    each chunk as a CUDA graph, "graphs" the whole loop), with and without checkpointing,
    matches eager: values and gradients. "graphs" is checked on a replay with fresh inputs,
    after the capture on other ones."""
    cfg, inp, t = _inputs(model, (2, 40, 2, 16), dtype=torch.float32, requires_grad=True,
                          expansion=2)
    if how == "graphs":
        y, s = miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"], chunk_size=16,
                                      initial_state=t["initial_state"], output_final_state=True,
                                      compile_chunks=how, checkpoint=checkpoint)
        _flat_grads(t, [y, *s.values()])
        t = conf._to_torch(conf.make_inputs(cfg, model, (2, 40, 2, 16), 1), torch.float32,
                           DEVICE, True)
    res = []
    for compiled in (False, how):
        y, s = miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"], chunk_size=16,
                                      initial_state=t["initial_state"], output_final_state=True,
                                      compile_chunks=compiled, checkpoint=checkpoint)
        outs = [y, *s.values()]
        res.append(outs + [g for g in _flat_grads(t, outs) if g is not None])
    _assert_rel_close(res[1], res[0], COMPILE_BOUND)


@needs_cuda
@pytest.mark.parametrize("model", ["moneta_lag", "memora"])
def test_triton_backward_graph_cuda(monkeypatch, model):
    """The triton backend's torch recomputation of the backward (Memora's default, and asked
    for with ``backward="torch"`` for Moneta with a lag token), replayed as one CUDA graph
    (``GRAPH_BACKWARD``), gives the gradients of the same recomputation launched op by op: on
    the call that captures it and on replays with fresh inputs, for a loss on the output and
    the final state and for one on the final state alone (no output gradient). A shape met
    once is not captured; an equal configuration object (each layer of a model builds its
    own) replays the same graph."""
    from miras_gpu.torch import graphed
    from miras_gpu.torch.graphed import clear_graphs
    from miras_gpu.triton import chunked as tchunked

    # both paths compile the chunk steps from this length on: the graph replays those kernels
    monkeypatch.setattr(tchunked, "COMPILE_MIN_TOKENS", 40)
    size = (2, 40, 2, 16)
    base = model.removesuffix("_lag")
    cfg, _, _ = _inputs(base, size, expansion=2)
    cfg = dataclasses.replace(cfg, lag_token=model != base or cfg.lag_token)
    backward = "auto" if base == "memora" else "torch"
    assert not tchunked.plan_for(cfg).backward_kernels(backward, gate_cw=False)

    def run(seed, graph, final_only, cfg=cfg):
        monkeypatch.setattr(tchunked, "GRAPH_BACKWARD", graph)
        t = conf._to_torch(conf.make_inputs(cfg, base, size, seed), torch.float32, DEVICE, True)
        y, s = miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"], chunk_size=16,
                                      initial_state=t["initial_state"], output_final_state=True,
                                      backend="triton", backward=backward)
        outs = list(s.values()) if final_only else [y, *s.values()]
        return [g for g in _flat_grads(t, outs) if g is not None]

    clear_graphs()
    for final_only in (False, True):
        run(0, True, final_only)  # the first call of this shape runs op by op
        assert len(graphed._CALLS) == int(final_only)
        for seed in (1, 2):  # captured, then replayed
            replayed, eager = run(seed, True, final_only), run(seed, False, final_only)
            assert len(replayed) == len(eager) > 0
            _assert_rel_close(replayed, eager, 1e-6)
    captured = len(graphed._CALLS)
    assert captured == 2
    twin = dataclasses.replace(cfg)
    assert twin is not cfg
    _assert_rel_close(run(3, True, False, twin), run(3, False, False, twin), 1e-6)
    assert len(graphed._CALLS) == captured
    clear_graphs()


@needs_cuda
def test_triton_backward_without_graph_capture_cuda(monkeypatch):
    """A backward whose CUDA-graph capture fails runs op by op (a note says so, once) and
    gives the same gradients; that configuration is not captured again."""
    from miras_gpu.torch import graphed
    from miras_gpu.triton import chunked as tchunked

    calls = []

    def refuse(fn, samples):
        calls.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphed, "capture", refuse)
    monkeypatch.setattr(tchunked, "_UNGRAPHED", set())
    monkeypatch.setattr(tchunked, "_noted", set())
    graphed.clear_graphs()
    size = (1, 20, 2, 8)
    cfg, _, t = _inputs("memora", size, dtype=torch.float32, requires_grad=True, expansion=2)

    def grads():
        y, _ = miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"], chunk_size=8,
                                      initial_state=t["initial_state"], backend="triton")
        return [g for g in _flat_grads(t, [y]) if g is not None]

    first = grads()  # a shape met once runs op by op: no capture yet
    assert calls == []
    with pytest.warns(tchunked.TritonFallbackWarning, match="capture of memora's backward"):
        second = grads()
    third = grads()
    assert calls == [1]
    monkeypatch.setattr(tchunked, "GRAPH_BACKWARD", False)
    for g in (first, second, third):
        _assert_rel_close(g, grads(), 1e-6)


def _spy(monkeypatch, name: str, record=lambda *a: 1) -> list:
    """Wrap ``miras_gpu.torch.chunked.<name>`` so each call appends ``record(*args)`` to the
    returned list and then runs the real function."""
    from miras_gpu.torch import chunked

    calls, real = [], getattr(chunked, name)
    monkeypatch.setattr(chunked, name, lambda *a: calls.append(record(*a)) or real(*a))
    return calls


def _runs_per_switch(monkeypatch, switch: str, values, cfg, t, chunk: int, how, before=None):
    """Outputs, final state and every gradient of one chunked call per value of
    ``miras_gpu.torch.chunked.<switch>`` (``before()`` runs before each call)."""
    from miras_gpu.torch import chunked

    res = []
    for value in values:
        monkeypatch.setattr(chunked, switch, value)
        if before is not None:
            before()
        y, s = miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"],
                                      chunk_size=chunk, initial_state=t["initial_state"],
                                      output_final_state=True, compile_chunks=how)
        outs = [y, *s.values()]
        res.append(outs + [g for g in _flat_grads(t, outs) if g is not None])
    return res


@needs_cuda
@pytest.mark.parametrize("block", [None, 6])
@pytest.mark.parametrize("how", [False, True, "graphs"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_norms_cuda(monkeypatch, dtype, how, block):
    """Moneta's per-token norms from the fused Triton op (on by default for 16-bit inputs,
    forced here for float32 too) against the states formed by torch, eager, compiled and
    captured: values and gradients; each chunk of 16 tokens in one block, or in blocks of 6
    (the last one padded). One TF32 product (16-bit inputs) moves them by about 1e-3, full
    float32 by float32 round-off."""
    from miras_gpu.torch import chunked

    cfg, _, t = _inputs("moneta", (2, 40, 2, 16), dtype=dtype, requires_grad=True,
                        expansion=2)
    monkeypatch.setattr(chunked, "NORM_BLOCK", block)
    calls = _spy(monkeypatch, "_fused_norms")
    res = _runs_per_switch(monkeypatch, "FUSED_POWER_SUMS", (True, False), cfg, t, 16, how)
    assert calls
    _assert_rel_close(res[0], res[1], 5e-3 if dtype == torch.bfloat16 else COMPILE_BOUND)


@pytest.mark.parametrize("model", ["gated_deltanet", "yaad", "moneta", "yaad_lag"])
def test_windowed_reads_equal_chunk_by_chunk(monkeypatch, model):
    """Reads batched over windows of chunks (chunked.READ_WINDOW = 2: windows of 2, 2 and 1
    chunks, the last chunk partial) give what reading each chunk as it is written gives
    (READ_WINDOW = 1), float64: outputs, final state, every gradient; ``yaad_lag`` is Yaad
    with Memora's lag token (its lag tokens are read apart from the rest of the chunk)."""

    base = "yaad" if model == "yaad_lag" else model
    cfg, _, t = _inputs(base, (2, 37, 2, 8), requires_grad=True, expansion=2)
    if model == "yaad_lag":
        cfg = dataclasses.replace(cfg, lag_token=True)
    calls = _spy(monkeypatch, "chunk_reads", lambda *a: a[3].shape[0])  # rows read at once
    res = _runs_per_switch(monkeypatch, "READ_WINDOW", (1, 2), cfg, t, 8, False,
                           before=calls.clear)
    # the last run (READ_WINDOW = 2) read batches of 2, 2 and 1 chunks (the last one
    # partial), B = 2 rows each
    assert calls == [4, 4, 2], calls
    _assert_rel_close(res[1], res[0], 1e-12)


@needs_cuda
@pytest.mark.parametrize("how", [False, True, "graphs"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_softmax_reads_cuda(monkeypatch, dtype, how):
    """Memora's reads (one gate per head) from the fused Triton op (on by default on CUDA)
    against the states formed by torch, eager, compiled and captured: values and gradients.
    Both paths compute in float32, so they differ by float32 round-off."""

    cfg, _, t = _inputs("x_memora_head_gates", (2, 40, 2, 16), dtype=dtype,
                        requires_grad=True, expansion=2)
    calls = _spy(monkeypatch, "_softmax_read")
    res = _runs_per_switch(monkeypatch, "FUSED_SOFTMAX_READS", (None, False), cfg, t, 16, how)
    assert calls
    # bf16: the outputs and the inputs' gradients are rounded to bf16 (one ulp is 2^-8)
    _assert_rel_close(res[0], res[1], 5e-3 if dtype == torch.bfloat16 else COMPILE_BOUND)


@needs_cuda
@pytest.mark.parametrize("model", ["yaad", "moneta"])
def test_cuda_graphs_of_the_loop_without_gradients(model):
    """Inference with compile_chunks="graphs" (one forward graph of the whole loop) matches
    eager on a replay with fresh inputs, after the capture on other ones."""
    cfg, _, _ = _inputs(model, (2, 40, 2, 16), dtype=torch.float32, expansion=2)
    res = []
    for seed, how in ((0, "graphs"), (1, "graphs"), (1, False)):
        t = conf._to_torch(conf.make_inputs(cfg, model, (2, 40, 2, 16), seed), torch.float32,
                           DEVICE, False)
        with torch.no_grad():
            y, s = miras_gpu.scan_chunked(cfg, t["q"], t["k"], t["v"], t["gates"],
                                          chunk_size=16, initial_state=t["initial_state"],
                                          output_final_state=True, compile_chunks=how)
        res.append([y, *s.values()])
    _assert_rel_close(res[1], res[2], COMPILE_BOUND)


def test_scalar_link_keeps_no_per_token_state():
    """Moneta's chunk saves nothing of the size of its ``C`` per-token states for backward:
    the states behind the ℓq norms are formed again in the backward pass."""
    from miras_gpu.torch import chunked

    size = (2, 7, 2, 8)
    cfg, inp, t = _inputs("moneta", size, requires_grad=True, expansion=2)
    q, k, v = (x.movedim(2, 1) for x in (t["q"], t["k"], t["v"]))
    gates = {n: a.movedim(2, 1) for n, a in t["gates"].items()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x,
                                                  lambda x: x):
        y, z_end = chunked.chunk_step(cfg, dict(t["initial_state"]), q, k, v, gates)
    per_token_states = size[0] * size[2] * size[1] * 2 * 8 * 8  # [B, H, C, 2d, d]
    assert saved and max(saved) < per_token_states
    y.sum().backward()  # the recomputation runs
    assert all(torch.isfinite(x.grad).all() for x in (t["q"], t["k"], t["v"]))


@pytest.mark.parametrize("q,kind", [(4.0, "simplified"), (3.0, "simplified"), (1.5, "exact")])
def test_lq_link_of_huge_states_float32(q, kind):
    """The torch backend's ℓq links (Eq 24 and the exact one) stay finite and right in float32
    for accumulators whose ``Σ|A|^q`` overflows float32 (entries near 1e15, as Moneta's reach
    on long sequences): values and gradients against the textbook formula in float64."""
    from miras_gpu.torch import retention as rets
    from miras_ref.retention import LqRetention

    ret = LqRetention(q, link_kind=kind)
    gen = torch.Generator().manual_seed(int(q))
    base = 1e15 * torch.randn(2, 3, 8, 12, generator=gen, dtype=torch.float64)
    power = q if kind == "simplified" else q / (q - 1)  # the norm's exponent
    assert not torch.isfinite((base.float().abs() ** power).sum())  # the naive sum overflows
    a32, a64 = (base.to(dt).requires_grad_(True) for dt in (torch.float32, torch.float64))

    def textbook(a):  # Eq 24 (simplified) or the exact p-norm link, in float64
        if kind == "simplified":
            return a / (a.abs() ** q).sum((-2, -1), keepdim=True) ** ((q - 2) / q)
        p = q / (q - 1)
        n = (a.abs() ** p).sum((-2, -1), keepdim=True) ** (1 / p)
        return (q - 1) * n ** (2 - p) * torch.sign(a) * a.abs() ** (p - 1)

    mine, gold = rets.lq_link(ret, a32, 2), textbook(a64)
    assert torch.isfinite(mine).all()
    assert ((mine.double() - gold).norm() / gold.norm()).item() < 1e-5
    cot = torch.randn(gold.shape, generator=gen, dtype=torch.float64)
    (g32,), (g64,) = (torch.autograd.grad(o, a, cot.to(o.dtype))
                      for o, a in ((mine, a32), (gold, a64)))
    assert torch.isfinite(g32).all()
    assert ((g32.double() - g64).norm() / g64.norm()).item() < 1e-5
    if kind == "simplified":
        m, s_hat = rets.lq_scale(ret, a32.detach(), 2)  # s = ŝ / m
        assert torch.isfinite(m).all() and torch.isfinite(s_hat).all() and (s_hat > 0).all()
        s_gold = (a64.detach().abs() ** q).sum((-2, -1), keepdim=True) ** ((2 - q) / q)
        assert ((s_hat.double() / m.double() - s_gold).abs() / s_gold).max().item() < 1e-5


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_lq_retention_from_a_zero_state_float32(chunk_size):
    """A matrix memory with the ℓq link (q = 4) started from ``A = 0`` (its default state):
    the torch backend in float32 stays finite and equals miras_ref (float64, ``W = 0`` at
    ``A = 0``), recurrent and chunked, gradients finite. ``0 / ‖0‖^{q-2}`` is what float32
    cannot write as miras_ref does (``max(‖A‖, 1e-30)^2`` underflows)."""
    from miras_gpu.triton.cases import gd_config
    from miras_ref.bias import LpBias
    from miras_ref.memory import MatrixMemory
    from miras_ref.retention import LqRetention

    cfg = gd_config(MatrixMemory(8, 8), LpBias(3.0), LqRetention(4.0))
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 9, 2, 8)) for _ in range(3))
    gates = {"eta": 0.1 + 0.05 * rng.random((1, 9, 2)), "alpha": 0.9 + 0.1 * rng.random((1, 9, 2))}
    gold, _ = miras_gpu.scan_chunked(cfg, q, k, v, gates, chunk_size=chunk_size)
    leaves = [torch.tensor(x, dtype=torch.float32, requires_grad=True) for x in (q, k, v)]
    mine, _ = miras_gpu.scan_chunked(cfg, *leaves, {n: torch.tensor(a) for n, a in gates.items()},
                                     chunk_size=chunk_size, backend="torch")
    assert torch.isfinite(mine).all()
    np.testing.assert_allclose(mine.detach().numpy(), gold, rtol=0,
                               atol=1e-5 * np.abs(gold).max())
    mine.square().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in leaves)


def test_lq_dual_read_of_a_huge_state_float32():
    """The chunked dual read ``ψ(Z_t) x = ŝ_t (Z_t x / m_t)`` of the simplified ℓq link from a
    state near 1e25, where ``s = ‖A‖_4^{-2}`` (1e-52) underflows float32: the float32 outputs
    and final state equal float64's."""
    from miras_gpu.triton.cases import gd_config
    from miras_ref.bias import LpBias
    from miras_ref.memory import MatrixMemory
    from miras_ref.retention import LqRetention

    cfg = gd_config(MatrixMemory(8, 8), LpBias(3.0), LqRetention(4.0))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 9, 2, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    gates = {"eta": 0.1 + 0.05 * torch.rand(1, 9, 2, generator=gen, dtype=torch.float64),
             "alpha": 0.9 + 0.1 * torch.rand(1, 9, 2, generator=gen, dtype=torch.float64)}
    init = {"W": 1e25 * torch.randn(1, 2, 8, 8, generator=gen, dtype=torch.float64)}
    out = {}
    for dt in (torch.float32, torch.float64):
        y, f = miras_gpu.scan_chunked(cfg, q.to(dt), k.to(dt), v.to(dt),
                                      {n: a.to(dt) for n, a in gates.items()}, chunk_size=4,
                                      initial_state={n: a.to(dt) for n, a in init.items()},
                                      output_final_state=True, backend="torch")
        out[dt] = (y.double(), f["W"].double())
    for mine, gold in zip(out[torch.float32], out[torch.float64]):
        assert torch.isfinite(mine).all()
        assert ((mine - gold).norm() / gold.norm()).item() < 1e-5
