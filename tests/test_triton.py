"""The triton backend (miras_gpu.triton) against the torch backend in float64 and miras_ref.

Runs on the CPU through Triton's interpreter: ``TRITON_INTERPRET=1`` is set below before
anything imports triton or defines a kernel (the interpreter computes float32 right and
bfloat16 wrong, so bfloat16 is checked on a GPU by scripts/gpu_kernels_check.py). Every
output and scratch buffer of the backend is allocated filled with NaN here
(``POISON_BUFFERS``), so a result that passes proves each element was written.

``mine`` is the triton backend in float32; ``gold`` is miras_gpu.torch in float64 (outputs,
final states and, by autograd, every input gradient) and miras_ref (outputs and final
states). Errors are relative in the Frobenius norm, ``‖mine - gold‖ / ‖gold‖``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace

# before triton is imported: the kernels are defined for Triton's CPU interpreter
_PREVIOUS = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

try:
    pytest.importorskip("triton")
    torch = pytest.importorskip("torch")

    import miras_ref  # noqa: E402
    from miras_gpu import torch as torch_ops  # noqa: E402
    from miras_gpu import triton as triton_ops  # noqa: E402
    from miras_gpu.triton import chunked as tchunked  # noqa: E402
    from miras_gpu.triton import matrix as _matrix_kernels  # noqa: E402, F401
    from miras_gpu.triton import mlp as _mlp_kernels  # noqa: E402, F401
    from miras_gpu.triton.cases import (  # noqa: E402
        float32_conditioning,
        kernel_cases,
        kernel_inputs,
    )
    from miras_gpu.triton.softmax_reads import softmax_reads  # noqa: E402
    from miras_gpu.triton.token_norms import token_power_sums  # noqa: E402
finally:
    # the rest of the session (the registry, the conformance suite) must not see the flag;
    # the fixture below sets it again while this module's tests run
    if _PREVIOUS is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _PREVIOUS
from miras_gpu.conformance import MAX_DRAWS, PROBE_SHARE  # noqa: E402
from miras_ref import zoo  # noqa: E402
from miras_ref.algorithms import GD  # noqa: E402
from miras_ref.bias import LpBias  # noqa: E402
from miras_ref.config import MirasConfig  # noqa: E402
from miras_ref.memory import MatrixMemory  # noqa: E402
from miras_ref.retention import LqRetention  # noqa: E402

T, CHUNK, D = 37, 16, 16
#: float32 against float64, relative in norm
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    """Triton's interpreter reads TRITON_INTERPRET at launch too: set it for this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield


@pytest.fixture(autouse=True)
def _poisoned_single_thread(monkeypatch):
    monkeypatch.setattr(tchunked, "POISON_BUFFERS", True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: cases whose gradients come from the torch recomputation, not a backward kernel
TORCH_BACKWARD = {"lq_simplified", "lq_exact", "kl_row", "kl_all_lag"}
#: name: (config, channel-wise delta, which backward runs)
CASES = {name: (cfg, cw, "torch" if name in TORCH_BACKWARD else "triton")
         for name, (cfg, cw) in kernel_cases(D).items()}


def make_inputs(cfg, t=T, **kwargs):
    """:func:`miras_gpu.triton.cases.kernel_inputs`, ``T`` tokens by default."""
    return kernel_inputs(cfg, t, **kwargs)


def err(mine, gold) -> float:
    mine, gold = mine.detach().double(), gold.detach().double()
    assert torch.isfinite(mine).all(), "non-finite values"
    den = gold.norm().item()
    num = (mine - gold).norm().item()
    return num / den if den > 0 else num


def _leaves(tensors, dtype):
    return [x.detach().to(dtype).requires_grad_(True) for x in tensors]


def run_both(cfg, q, k, v, gates, init, chunk=CHUNK, backward="auto", mine_op=None, **kw):
    """Forward + autograd of mine (``mine_op``, by default triton, fp32) and gold (torch,
    fp64) with one random cotangent; returns ``(y, final, grads)`` of each, grads keyed by
    input name."""
    if mine_op is None:
        mine_op, kw = triton_ops.scan_chunked, {"backward": backward, **kw}
    names = ["q", "k", "v", *gates, *[f"init[{n}]" for n in init]]
    gold_in = _leaves([q, k, v, *gates.values(), *init.values()], torch.float64)
    mine_in = _leaves([q, k, v, *gates.values(), *init.values()], torch.float32)
    out = []
    for leaves, op, extra in ((gold_in, torch_ops.scan_chunked, {}),
                              (mine_in, mine_op, kw)):
        gq, gk, gv = leaves[:3]
        gg = dict(zip(gates, leaves[3:3 + len(gates)]))
        gi = dict(zip(init, leaves[3 + len(gates):]))
        y, final = op(cfg, gq, gk, gv, gg, chunk_size=chunk, initial_state=gi,
                      output_final_state=True, **extra)
        out.append((y, final, leaves))
    (gy, gf, gl), (my, mf, ml) = out
    gen = torch.Generator().manual_seed(99)
    cot_y = torch.randn(gy.shape, generator=gen, dtype=torch.float64)
    cot_f = {n: torch.randn(a.shape, generator=gen, dtype=torch.float64) for n, a in gf.items()}
    gold_g = torch.autograd.grad([gy, *gf.values()], gl, [cot_y, *cot_f.values()])
    mine_g = torch.autograd.grad([my, *mf.values()], ml,
                                 [cot_y.float(), *[cot_f[n].float() for n in mf]])
    return ((my, mf, dict(zip(names, mine_g))), (gy, gf, dict(zip(names, gold_g))))


def conditioned_draw(cfg, seed: int, chunk: int = CHUNK, **kwargs):
    """:func:`make_inputs` (``kwargs``) from ``seed`` on, redrawn from the next seed while
    float32 round-off alone could move the float64 results by a share of the bound
    (:func:`~miras_gpu.triton.cases.float32_conditioning`, the conformance suite's policy),
    at most ``MAX_DRAWS`` times. Returns ``(q, k, v, gates, init, bound)``; the bound is
    ``TOL`` for matrix memories, :func:`_torch32_tol` for MLP memories."""
    for s in range(seed, seed + MAX_DRAWS):
        q, k, v, gates, init = make_inputs(cfg, seed=s, **kwargs)
        tol = TOL if isinstance(cfg.memory, MatrixMemory) else _torch32_tol(cfg, q, k, v, gates,
                                                                            init, chunk)
        if float32_conditioning(cfg, q, k, v, gates, init, chunk) <= PROBE_SHARE * tol:
            return q, k, v, gates, init, tol
    pytest.fail(f"no well-conditioned draw in {MAX_DRAWS} seeds")


def assert_within(mine, gold, tol: float) -> None:
    """Output, final state and every gradient of :func:`run_both`'s ``mine`` within ``tol`` of
    ``gold`` (relative, :func:`err`)."""
    (my, mf, mg), (gy, gf, gg) = mine, gold
    assert err(my, gy) <= tol
    for n in gf:
        assert err(mf[n], gf[n]) <= tol, n
    bad = {n: err(mg[n], gg[n]) for n in gg if err(mg[n], gg[n]) > tol}
    assert not bad, f"gradients above {tol:.1e}: {bad}"


@pytest.mark.parametrize("name", list(CASES))
def test_forward_state_and_gradients(name):
    cfg, cw, which = CASES[name]
    plan = triton_ops.plan_for(cfg)
    assert not isinstance(plan, str), plan
    assert plan.triton_backward == (which == "triton")
    heads = 2 if isinstance(cfg.memory, MatrixMemory) else 1  # the interpreter is slow
    q, k, v, gates, init = make_inputs(cfg, cw_delta=cw, h=heads)
    (my, mf, mg), (gy, gf, gg) = run_both(cfg, q, k, v, gates, init, block_hidden=32)
    assert my.dtype == torch.float32 and all(a.dtype == torch.float32 for a in mf.values())
    tol = TOL if isinstance(cfg.memory, MatrixMemory) else _torch32_tol(cfg, q, k, v, gates,
                                                                        init)
    assert err(my, gy) <= tol
    for n in gf:
        assert err(mf[n], gf[n]) <= tol, n
    # miras_ref, float64 NumPy
    ry, rf = miras_ref.scan_chunked(cfg, q.numpy(), k.numpy(), v.numpy(),
                                    {n: a.numpy() for n, a in gates.items()}, CHUNK,
                                    {n: a.numpy() for n, a in init.items()}, True)
    assert err(my, torch.as_tensor(ry)) <= tol
    for n in rf:
        assert err(mf[n], torch.as_tensor(rf[n])) <= tol, n
    # every input gradient against torch float64 autograd
    bad = {n: err(mg[n], gg[n]) for n in gg if err(mg[n], gg[n]) > tol}
    assert not bad, f"gradients above {tol:.1e}: {bad}"


def _torch32_tol(cfg, q, k, v, gates, init, chunk=CHUNK) -> float:
    """The bound for MLP memories. Their float32 arithmetic is ill-conditioned on these inputs
    (LayerNorm, softmax logits, tanh(10 e)): the torch backend's own float32 outputs, states
    and gradients are 1e-5 .. 6e-5 off float64 here. The kernels must not be worse than that
    path: ``max(TOL, 3 x its worst error)``."""
    ref = _leaves([q, k, v, *gates.values(), *init.values()], torch.float64)
    f32 = _leaves([q, k, v, *gates.values(), *init.values()], torch.float32)
    outs, grads = [], []
    for leaves in (ref, f32):
        gg = dict(zip(gates, leaves[3:3 + len(gates)]))
        gi = dict(zip(init, leaves[3 + len(gates):]))
        y, f = torch_ops.scan_chunked(cfg, *leaves[:3], gg, chunk_size=chunk, initial_state=gi,
                                      output_final_state=True)
        gen = torch.Generator().manual_seed(1)
        cot = [torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)]
        cot += [torch.randn(a.shape, generator=gen, dtype=torch.float64).to(a.dtype)
                for a in f.values()]
        outs.append([y, *f.values()])
        grads.append(torch.autograd.grad([y, *f.values()], leaves, cot))
    worst = max(err(a, b) for a, b in zip(outs[1] + list(grads[1]), outs[0] + list(grads[0])))
    return max(TOL, 3 * worst)


#: every form of the forward kernels with channel-wise η, α (Sec 5.4; the MIRAS layer's
#: gates): matrix dual-form reads with both anchors, per-token reads (softmax over the matrix,
#: lag token), the MLP dual form with both anchors, Moneta's norms, Memora's per-token states
CW_GATE_CASES = ("gated_deltanet", "lp_exact", "lp_smooth_decayed", "huber_smooth_cw",
                 "kl_all_lag", "yaad", "mlp_lp_decayed", "moneta", "memora", "moneta_chunk",
                 "memora_chunk")


def _refuse_torch_backward(*args, **kwargs):
    raise AssertionError("the gradients should come from the backward kernels")


@pytest.mark.parametrize("name", CW_GATE_CASES)
def test_channel_wise_gates(name, monkeypatch):
    """Channel-wise ``η, α [B, T, H, D]`` run on the forward kernels (no fallback note) and
    match the torch backend in float64 and ``miras_ref`` (output, final state, every
    gradient). The gradients of identity-link memories come from the backward kernels (the
    torch recomputation is refused), the others (and Moneta's and Memora's, whose kernels
    take scalar gates only) from the torch recomputation. In Sec 5.4's chunk form the reads
    take the stored anchors with channel-wise gates too."""
    cfg, cw, which = CASES[name]
    if triton_ops.plan_for(cfg).backward_kernels("auto", gate_cw=True):
        monkeypatch.setattr(tchunked, "_torch_backward", _refuse_torch_backward)
    heads = 2 if isinstance(cfg.memory, MatrixMemory) else 1
    q, k, v, gates, init, tol = conditioned_draw(cfg, 21, cw_delta=cw, h=heads, cw_gates=True)
    assert gates["eta"].shape == gates["alpha"].shape == (1, T, heads, cfg.memory.d_k)
    with warnings.catch_warnings():
        warnings.simplefilter("error", triton_ops.TritonFallbackWarning)
        mine, gold = run_both(cfg, q, k, v, gates, init, block_hidden=32)
    assert_within(mine, gold, tol)
    ry, rf = miras_ref.scan_chunked(cfg, q.numpy(), k.numpy(), v.numpy(),
                                    {n: a.numpy() for n, a in gates.items()}, CHUNK,
                                    {n: a.numpy() for n, a in init.items()}, True)
    assert err(mine[0], torch.as_tensor(ry)) <= tol
    for n in rf:
        assert err(mine[1][n], torch.as_tensor(rf[n])) <= tol, n


def test_channel_wise_alpha_with_scalar_eta():
    """One channel-wise gate and one scalar: the scalar one is broadcast over the channels
    for the kernels, and its gradient comes back summed, in its own shape ``[B, T, H]``."""
    cfg = CASES["gated_deltanet"][0]
    q, k, v, gates, init = make_inputs(cfg, seed=23, cw_gates=True)
    gates["eta"] = gates["eta"][..., 0]
    mine, gold = run_both(cfg, q, k, v, gates, init)
    assert mine[2]["eta"].shape == gates["eta"].shape
    assert_within(mine, gold, TOL)


def test_backward_kernel_matches_torch_recomputation():
    cfg = CASES["huber_smooth_cw"][0]
    q, k, v, gates, init = make_inputs(cfg, cw_delta=True, seed=3)
    (_, _, g_kernel), _ = run_both(cfg, q, k, v, gates, init)
    (_, _, g_torch), _ = run_both(cfg, q, k, v, gates, init, backward="torch")
    for n in g_kernel:
        assert err(g_kernel[n], g_torch[n]) <= TOL, n


def test_odd_sizes_partial_chunk_and_defaults():
    """d = 24 (not a power of two), chunk 12 (not a power of two, last chunk partial), two
    batch rows, the default initial state and no final-state gradient."""
    cfg = zoo.gated_deltanet(24)
    q, k, v, gates, _ = make_inputs(cfg, t=29, b=2, h=1, seed=5)
    leaves = _leaves([q, k, v], torch.float32)
    y, final = triton_ops.scan_chunked(cfg, *leaves, {n: a.float() for n, a in gates.items()},
                                       chunk_size=12)
    assert final is None
    gold, _ = torch_ops.scan_chunked(cfg, q, k, v, gates, chunk_size=12)
    assert err(y, gold) <= TOL
    y.square().sum().backward()
    qq = q.clone().requires_grad_(True)
    g2, _ = torch_ops.scan_chunked(cfg, qq, k, v, gates, chunk_size=12)
    g2.square().sum().backward()
    assert err(leaves[0].grad, qq.grad) <= TOL


@pytest.mark.parametrize("cw_gates", [False, True])
def test_moneta_norms_at_odd_sizes(cw_gates, monkeypatch):
    """Moneta's per-token norms (tensor-core rows with scalar gates, the recurrence with
    channel-wise ones) at d = 24 (padded to 32), hidden 96 (a partial second block of 64),
    chunk 12 (padded to 16, last chunk partial): output, final state and every gradient
    against the torch backend in float64, within the torch backend's own float32 error. With
    scalar gates the gradients come from the backward kernels (the norms' gradients in
    blocks of 32 and 64 of the hidden axis), with channel-wise ones from the torch
    recomputation."""
    cfg = zoo.moneta(24)
    q, k, v, gates, init = make_inputs(cfg, t=29, h=1, seed=13, cw_gates=cw_gates)
    tol = _torch32_tol(cfg, q, k, v, gates, init, 12)
    if not cw_gates:
        monkeypatch.setattr(tchunked, "_torch_backward", _refuse_torch_backward)
    for block in (32, 64):
        assert_within(*run_both(cfg, q, k, v, gates, init, chunk=12, block_hidden=block), tol)


@pytest.mark.parametrize("q_norm", [3.0, 2.5, 1.5])
def test_moneta_backward_kernels_any_q(q_norm, monkeypatch):
    """The backward kernels of the simplified ℓq link ``A / ‖A‖_q^{q-2}`` for exponents other
    than Moneta's 4: integer (3), above 2 (2.5) and below 2 (1.5, where the scale grows with
    the norm), against float64 autograd; ``∂‖Z‖_q^{2-q}/∂Z`` enters at every token's state
    and at each segment's anchor."""
    cfg = MirasConfig("moneta_q", zoo.moneta(D).memory, LpBias(3.0),
                      LqRetention(q_norm, "simplified"), GD())
    assert triton_ops.plan_for(cfg).triton_backward
    monkeypatch.setattr(tchunked, "_torch_backward", _refuse_torch_backward)
    q, k, v, gates, init = make_inputs(cfg, h=1, seed=17)
    tol = _torch32_tol(cfg, q, k, v, gates, init)
    assert_within(*run_both(cfg, q, k, v, gates, init, block_hidden=32), tol)


@pytest.mark.parametrize("name", ["gated_deltanet", "yaad"])
def test_state_continues_a_sequence(name):
    """Two calls split at a chunk boundary, the first's final state the second's initial
    state, equal one call."""
    cfg = CASES[name][0]
    q, k, v, gates, init = make_inputs(cfg, seed=7, h=1)
    f32 = {n: a.float() for n, a in gates.items()}
    i32 = {n: a.float() for n, a in init.items()}
    whole, wf = triton_ops.scan_chunked(cfg, q.float(), k.float(), v.float(), f32, CHUNK, i32,
                                        True, block_hidden=32)
    cut = 2 * CHUNK
    part = [{n: a[:, :cut] for n, a in f32.items()}, {n: a[:, cut:] for n, a in f32.items()}]
    y1, f1 = triton_ops.scan_chunked(cfg, q[:, :cut].float(), k[:, :cut].float(),
                                     v[:, :cut].float(), part[0], CHUNK, i32, True,
                                     block_hidden=32)
    y2, f2 = triton_ops.scan_chunked(cfg, q[:, cut:].float(), k[:, cut:].float(),
                                     v[:, cut:].float(), part[1], CHUNK, f1, True,
                                     block_hidden=32)
    assert err(torch.cat([y1, y2], 1), whole) <= TOL
    for n in wf:
        assert err(f2[n], wf[n]) <= TOL


@pytest.mark.parametrize("name", ["yaad", "memora_chunk"])
def test_mlp_inference_runs_in_windows(monkeypatch, name):
    """Without gradients the MLP forward keeps only a window of segment states; with windows
    of 2 segments (a short last window) it equals the one-window result (in Sec 5.4's chunk
    form with a lag token, the lag tokens stay the even segments of every window)."""
    cfg = CASES[name][0]
    q, k, v, gates, init = make_inputs(cfg, h=1, seed=17)
    args = (cfg, q.float(), k.float(), v.float(), {n: a.float() for n, a in gates.items()},
            CHUNK, {n: a.float() for n, a in init.items()}, True)
    with torch.no_grad():
        y1, f1 = triton_ops.scan_chunked(*args, block_hidden=32)
        monkeypatch.setattr(tchunked, "MLP_WINDOW", 2)
        y2, f2 = triton_ops.scan_chunked(*args, block_hidden=32)
    assert err(y2, y1) <= 1e-6
    for n in f1:
        assert err(f2[n], f1[n]) <= 1e-6


def test_cu_seqlens_matches_torch_backend():
    cfg = zoo.gated_deltanet(D)
    q, k, v, gates, _ = make_inputs(cfg, seed=9)
    cu = [0, 5, 23, T]
    init = {"W": 0.3 * torch.randn(3, 2, D, D, dtype=torch.float64)}
    y, f = triton_ops.scan_chunked(cfg, q.float(), k.float(), v.float(),
                                   {n: a.float() for n, a in gates.items()}, CHUNK,
                                   {"W": init["W"].float()}, True, cu_seqlens=cu)
    gy, gf = torch_ops.scan_chunked(cfg, q, k, v, gates, CHUNK, init, True, cu_seqlens=cu)
    assert err(y, gy) <= TOL and err(f["W"], gf["W"]) <= TOL
    assert f["W"].shape == (3, 2, D, D)


@pytest.mark.parametrize("chunk,t", [(1, 6), (4, 9)])
@pytest.mark.parametrize("name", ["memora", "memora_chunk"])
def test_lag_token_gradients_with_one_token_chunks(chunk, t, name):
    """Memora's gradients when chunks of one token are the lag token alone, one segment
    instead of two: every chunk (chunk size 1, as ``scan`` runs) or the last one (T = 9,
    chunk 4), against the torch backend in float64, within the bound of the torch backend's
    own float32 path (:func:`_torch32_tol`); by the backward kernels and by the torch
    recomputation from the stored chunk starts. In Sec 5.4's chunk form (``memora_chunk``)
    the lag tokens read their own ``ψ(Z_t)``, the rest the stored anchors."""
    cfg = CASES[name][0]
    q, k, v, gates, init = make_inputs(cfg, t=t, h=2, seed=5)
    tol = _torch32_tol(cfg, q, k, v, gates, init, chunk)
    for backward in ("kernels", "torch"):
        assert_within(*run_both(cfg, q, k, v, gates, init, chunk=chunk, backward=backward), tol)


ODD_SIZE_CASES = {
    "memora": zoo.memora(24),
    "yaad_lag": replace(zoo.yaad(24), lag_token=True),
    "memora_chunk": zoo.memora(24, link_at="chunk"),
    "moneta_chunk": zoo.moneta(24, link_at="chunk"),
}


def _kernels_at_odd_size(cfg, q, k, v, gates, init, tol, monkeypatch):
    """``cfg``'s backward kernels (``backward="kernels"``, the torch recomputation refused, no
    fallback) at d = 24, hidden 96, chunk 12 within ``tol`` of float64 autograd."""
    assert triton_ops.plan_for(cfg).triton_backward
    monkeypatch.setattr(tchunked, "_torch_backward", _refuse_torch_backward)
    with warnings.catch_warnings():
        warnings.simplefilter("error", triton_ops.TritonFallbackWarning)
        assert_within(*run_both(cfg, q, k, v, gates, init, chunk=12, block_hidden=32,
                                backward="kernels"), tol)


@pytest.mark.parametrize("name", list(ODD_SIZE_CASES))
def test_backward_kernels_at_odd_sizes(name, monkeypatch):
    """The backward kernels at d = 24 (padded to 32), hidden 96 (a partial block), chunk 12
    (last chunk partial), against float64 autograd, with the torch recomputation refused
    (``backward="kernels"``: Memora's default is the recomputation,
    ``chunked.SLOWER_KERNEL_BACKWARD``) and no fallback: with the lag token (Eq 30-32, each
    chunk a segment of one token and the rest) for Memora's KL link and Yaad's identity link;
    and Sec 5.4's chunk form (``link_at="chunk"``), where the reads take the stored anchors
    ``ψ(Z0)`` and, with Memora's lag token, the lag tokens read their own ``ψ(Z_t)``."""
    cfg = ODD_SIZE_CASES[name]
    q, k, v, gates, init = make_inputs(cfg, t=29, h=1, seed=19)
    tol = _torch32_tol(cfg, q, k, v, gates, init, 12)
    _kernels_at_odd_size(cfg, q, k, v, gates, init, tol, monkeypatch)


def test_moneta_chunk_form_with_a_lag_token(monkeypatch):
    """Sec 5.4's chunk form with Moneta's ℓq link and a lag token (not the zoo's Moneta):
    the lag tokens read their own ``ψ(Z_t)`` through Moneta's reads and norms kernels, the
    rest the stored anchors, at the odd sizes above. Its float32 gradient ``∂q`` is
    ill-conditioned at the seed of that test (the torch recomputation misses the bound there
    too), so the inputs are a well-conditioned draw (:func:`conditioned_draw`)."""
    cfg = replace(zoo.moneta(24, link_at="chunk"), lag_token=True)
    q, k, v, gates, init, tol = conditioned_draw(cfg, 19, 12, t=29, h=1)
    _kernels_at_odd_size(cfg, q, k, v, gates, init, tol, monkeypatch)


@pytest.mark.parametrize("name", ["moneta", "memora"])
def test_torch_backward_in_windows(monkeypatch, name):
    """The torch recomputation of the backward with windows of 2 chunks: 4 full chunks in two
    windows (each one batch of reads, then the writes chunk after chunk) and a partial last
    chunk alone, against the torch backend in float64 (outputs, final state, every gradient,
    within the bound of :func:`_torch32_tol`)."""
    monkeypatch.setattr(triton_ops.chunked, "BACKWARD_WINDOW", 2)
    cfg = CASES[name][0]
    q, k, v, gates, init = make_inputs(cfg, t=19, h=2, seed=7)
    tol = _torch32_tol(cfg, q, k, v, gates, init, 4)
    assert_within(*run_both(cfg, q, k, v, gates, init, chunk=4, backward="torch"), tol)


@pytest.mark.parametrize("name", ["deltanet", "memora"])
def test_scan_is_the_recurrence(name):
    """``scan`` runs the kernels with chunk size 1, which equals the exact recurrence."""
    cfg = CASES[name][0]
    q, k, v, gates, init = make_inputs(cfg, t=6, h=1, seed=11)
    y, f = triton_ops.scan(cfg, q.float(), k.float(), v.float(),
                           {n: a.float() for n, a in gates.items()},
                           {n: a.float() for n, a in init.items()}, True)
    ry, rf = miras_ref.scan(cfg, q.numpy(), k.numpy(), v.numpy(),
                            {n: a.numpy() for n, a in gates.items()},
                            {n: a.numpy() for n, a in init.items()}, True)
    assert err(y, torch.as_tensor(ry)) <= TOL
    for n in rf:
        assert err(f[n], torch.as_tensor(rf[n])) <= TOL


def test_fallback_notes_once_and_matches_torch(monkeypatch):
    monkeypatch.setattr(tchunked, "_noted", set())
    cfg = zoo.gated_deltanet(D)  # element-wise alpha [B, T, H, d_v, d_k]: no kernel
    g = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(1, 9, 2, D, generator=g) for _ in range(3))
    gates = {"eta": 0.5 * torch.ones(1, 9, 2),
             "alpha": 0.9 + 0.1 * torch.rand(1, 9, 2, D, D, generator=g)}
    with pytest.warns(triton_ops.TritonFallbackWarning, match="element-wise"):
        y, _ = triton_ops.scan_chunked(cfg, q, k, v, gates, chunk_size=4)
    gold, _ = torch_ops.scan_chunked(cfg, q, k, v, gates, chunk_size=4)
    assert torch.equal(y, gold)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reason is noted only once
        triton_ops.scan_chunked(cfg, q, k, v, gates, chunk_size=4)
    with pytest.warns(triton_ops.TritonFallbackWarning, match="momentum"):
        triton_ops.scan_chunked(zoo.titans_lmm(D), q, k, v, None, chunk_size=None)
    with pytest.warns(triton_ops.TritonFallbackWarning, match="float64"):
        triton_ops.scan_chunked(zoo.deltanet(D), q.double(), k.double(), v.double(),
                                chunk_size=4)


def test_plans():
    assert triton_ops.plan_for(zoo.yaad(D)).kind == "mlp"
    assert triton_ops.plan_for(zoo.gated_deltanet(D)).decayed
    assert "momentum" in triton_ops.plan_for(zoo.titans_lmm(D))
    assert "vector" in triton_ops.plan_for(zoo.retnet(D))
    assert "above 128" in triton_ops.plan_for(zoo.deltanet(192))
    assert "exact ℓq link" in triton_ops.plan_for(
        MirasConfig("x", zoo.moneta(D).memory, LpBias(3.0), LqRetention(1.5, "exact"), GD()))
    bf16 = torch.bfloat16
    yaad = triton_ops.plan_for(zoo.yaad(D))
    gdn = triton_ops.plan_for(zoo.gated_deltanet(D))
    assert tchunked.dot_precision(gdn, bf16) == ("bf16", "bf16")
    assert tchunked.dot_precision(yaad, bf16) == ("tf32x3", "tf32")
    moneta = triton_ops.plan_for(zoo.moneta(D))
    assert tchunked.dot_precision(moneta, bf16) == ("tf32x3", "tf32")
    assert tchunked.dot_precision(triton_ops.plan_for(CASES["huber_smooth_cw"][0]),
                                  bf16) == ("tf32x3", "tf32x3")
    assert tchunked.dot_precision(triton_ops.plan_for(zoo.deltanet(D)),
                                  torch.float32) == ("ieee", "ieee")
    assert tchunked.dot_precision(yaad, torch.float32, "tf32") == ("tf32", "tf32")
    assert tchunked.dot_precision(yaad, bf16, ("tf32x3", "tf32")) == ("tf32x3", "tf32")
    with pytest.raises(ValueError, match="bf16.*MLP"):
        tchunked.dot_precision(yaad, bf16, "bf16")
    with pytest.raises(ValueError, match="bf16.*MLP"):
        tchunked.dot_precision(yaad, bf16, ("tf32", "bf16"))
    for bad in ("fp8", ("tf32",), ("tf32", "tf32", "tf32"), ("tf32", "fp8")):
        with pytest.raises(ValueError, match="dot_precision must be one of"):
            tchunked.dot_precision(gdn, bf16, bad)
    assert tchunked.segments(37, 16, False) == ([0, 16, 32, 37], 3)
    assert tchunked.segments(33, 16, True) == ([0, 1, 16, 17, 32, 33], 3)


@pytest.mark.parametrize("bad,match", [
    (dict(chunk_size=0), "chunk_size"),
    (dict(gates={"alpha": torch.full((1, 5, 2), 1.5)}), r"gates\['alpha'\]"),
    (dict(backward="cuda"), "backward"),
])
def test_bad_inputs_name_the_argument(bad, match):
    q = torch.nn.functional.normalize(torch.randn(1, 5, 2, D), dim=-1)
    kwargs = {"gates": None, "chunk_size": 4, **bad}
    with pytest.raises((ValueError, TypeError), match=match):
        triton_ops.scan_chunked(zoo.deltanet(D), q, q, q, **kwargs)


def test_numpy_free_of_nan_poison():
    """The NaN poison is on in this module: a kernel that skipped an element would have
    failed above; check the switch really poisons."""
    assert tchunked.POISON_BUFFERS
    buf = tchunked._empty((3,), torch.float32, torch.device("cpu"))
    assert np.isnan(buf.numpy()).all()


# --------------------------------------------------------------------------------------------
# the fused per-token Σ|Z_t|^q of Moneta's link (miras_gpu.triton.token_norms)


@pytest.mark.parametrize("C,R,S,q,layout", [(5, 24, 16, 4.0, "rows"), (17, 40, 24, 3.0, "rows"),
                                            (16, 16, 40, 2.5, "rows"),
                                            (17, 40, 24, 4.0, "columns")])
def test_token_power_sums_against_formed_states(C, R, S, q, layout):
    """``n_t = Σ|Z_t|^q`` with ``Z_t = d_t Z0 - Σ_i m[t, i] l_i r_i^T`` (Eq 29) and all five
    input gradients, float32 kernels against float64 autograd of the formed states; inputs
    row-major or column-major (the kernels take strides)."""
    gen = torch.Generator().manual_seed(C)
    N = 3
    shapes = [(N, R, S), (N, C), (N, C, C), (N, C, R), (N, C, S)]
    gold_in = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    gold_in[1], gold_in[2] = gold_in[1].exp(), gold_in[2].exp().tril()
    mine_in = _leaves(gold_in, torch.float32)
    if layout == "columns":
        mine_in = [x.detach().mT.contiguous().mT.requires_grad_(True) for x in mine_in]
        assert not mine_in[0].is_contiguous()
    gold_in = _leaves(gold_in, torch.float64)
    z0, d, m, left, right = gold_in
    z_t = d[..., None, None] * z0[:, None] - torch.einsum("nti,nir,nis->ntrs", m, left, right)
    gold = (z_t.abs() ** q).sum((-2, -1))
    mine = token_power_sums(*mine_in, q, "ieee")
    assert mine.shape == (N, C)
    assert err(mine, gold) < TOL
    cot = torch.randn(gold.shape, generator=gen, dtype=torch.float64)
    for name, a, b in zip(["z0", "decay", "mask", "left", "right"],
                          torch.autograd.grad(mine, mine_in, cot.float()),
                          torch.autograd.grad(gold, gold_in, cot)):
        assert err(a, b) < TOL, name


@pytest.mark.parametrize("block", [None, 5])
def test_moneta_torch_backend_with_fused_norms(monkeypatch, block):
    """The torch backend's chunked Moneta with its per-token norms from the fused op (float32)
    against the torch backend in float64 (states formed): outputs, final state, every
    gradient; each chunk in one block of tokens, or in blocks of 5 each started from its own
    state (the last block padded, the last chunk of 5 tokens in one)."""
    from miras_gpu.torch import chunked as torch_chunked

    cfg = zoo.moneta(D)
    q, k, v, gates, init = make_inputs(cfg)
    monkeypatch.setattr(torch_chunked, "NORM_BLOCK", block)
    calls = []
    real = torch_chunked._fused_norms
    monkeypatch.setattr(torch_chunked, "_fused_norms",
                        lambda *a: calls.append(real(*a)) or calls[-1])
    monkeypatch.setattr(torch_chunked, "FUSED_POWER_SUMS", True)
    (my, mf, mg), (gy, gf, gg) = run_both(cfg, q, k, v, gates, init,
                                          mine_op=torch_ops.scan_chunked)
    # float32 (mine): the op ran for the 2 full chunks (read as one batch, chunked.READ_WINDOW)
    # and the partial last one, for 2 weight matrices, its bounds and norms shaped
    # [B', H, C, 1, 1]; float64 (gold) formed the states
    fused = [n for c in calls if c is not None for n in c]  # (bound, norm) per call
    assert [c.shape[:3] for c in fused] == [(2, 2, 16)] * 4 + [(1, 2, 5)] * 4
    assert all(c.shape[3:] == (1, 1) for c in fused)
    assert err(my, gy) < TOL
    for n in gf:
        assert err(mf[n], gf[n]) < TOL, n
    for n in gg:
        assert err(mg[n], gg[n]) < TOL, n



# --------------------------------------------------------------------------------------------
# the fused per-token reads of the row-softmax KL link (miras_gpu.triton.softmax_reads)


def _softmax_reads_by_recurrence(z0, alpha, eta, left, right, x, c):
    """The textbook recurrence ``Z_t = α_t Z_{t-1} - η_t l_t r_t^T``, read
    ``o_t = c softmax(Z_t) x_t`` by rows, one token after another."""
    z, outs = z0, []
    for t in range(alpha.shape[1]):
        z = alpha[:, t, None, None] * z - eta[:, t, None, None] * torch.einsum(
            "nr,ns->nrs", left[:, t], right[:, t])
        outs.append(c * torch.einsum("nrs,ns->nr", torch.softmax(z, dim=-1), x[:, t]))
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("C,R,S,c,scratch", [(7, 5, 6, 1.0, None), (9, 40, 24, 1.7, None),
                                             (9, 40, 24, 1.7, 1), (4, 16, 33, 0.5, None),
                                             (1, 3, 16, 2.0, None)])
def test_softmax_reads_against_the_recurrence(monkeypatch, C, R, S, c, scratch):
    """Outputs and all six input gradients of the fused op (float32) against float64 autograd
    of the recurrence; chunk lengths that are and are not multiples of the backward's groups of
    4 tokens, row counts that do and do not fill a block, rows shorter and longer than a power
    of two; gates down to 0.05 so a division by α would show; ``scratch=1``: a scratch of one
    chunk, so the backward launches once per chunk."""
    from miras_gpu.triton import softmax_reads as sr

    if scratch is not None:
        monkeypatch.setattr(sr, "SCRATCH_BYTES", scratch)
    gen = torch.Generator().manual_seed(C * R)
    N = 3
    shapes = [(N, R, S), (N, C), (N, C), (N, C, R), (N, C, S), (N, C, S)]
    base = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    base[1] = 0.05 + 0.95 * torch.rand((N, C), generator=gen, dtype=torch.float64)
    base[2] = torch.rand((N, C), generator=gen, dtype=torch.float64)
    mine_in, gold_in = _leaves(base, torch.float32), _leaves(base, torch.float64)
    mine = softmax_reads(*mine_in, c)
    gold = _softmax_reads_by_recurrence(*gold_in, c)
    assert mine.shape == (N, C, R)
    assert err(mine, gold) < TOL
    cot = torch.randn(gold.shape, generator=gen, dtype=torch.float64)
    for name, a, b in zip(["z0", "alpha", "eta", "left", "right", "x"],
                          torch.autograd.grad(mine, mine_in, cot.float()),
                          torch.autograd.grad(gold, gold_in, cot)):
        assert err(a, b) < TOL, name


def test_softmax_reads_refuses_bad_input():
    z0, g = torch.zeros(2, 3, 4), torch.ones(2, 5)
    lr = [torch.zeros(2, 5, 3), torch.zeros(2, 5, 4), torch.zeros(2, 5, 4)]
    with pytest.raises(ValueError, match="right must have shape"):
        softmax_reads(z0, g, g, lr[0], lr[0], lr[2])
    with pytest.raises(ValueError, match="c must be positive"):
        softmax_reads(z0, g, g, *lr, c=0.0)


@pytest.mark.parametrize("model", ["memora", "kl_row"])
def test_torch_backend_with_fused_softmax_reads(monkeypatch, model):
    """The torch backend's chunked Memora (MLP memory, lag token) and a matrix memory with the
    row-softmax KL link, their reads by the fused op (float32), against the torch backend in
    float64 (states formed): outputs, final state, every gradient, within the bound of the
    torch backend's own float32 path (:func:`_torch32_tol`, states formed)."""
    from miras_gpu.torch import chunked as torch_chunked

    cfg = zoo.memora(D) if model == "memora" else kernel_cases(D)["kl_row"][0]
    q, k, v, gates, init = make_inputs(cfg)
    tol = _torch32_tol(cfg, q, k, v, gates, init)  # before the switch: the unfused path
    calls = []
    real = torch_chunked._softmax_read
    monkeypatch.setattr(torch_chunked, "_softmax_read",
                        lambda *a: calls.append(a[-1].shape[:3]) or real(*a))
    monkeypatch.setattr(torch_chunked, "FUSED_SOFTMAX_READS", True)
    mine, gold = run_both(cfg, q, k, v, gates, init, mine_op=torch_ops.scan_chunked)
    # float32 only (float64 formed the states): the 2 full chunks read as one batch
    # (chunked.READ_WINDOW), then the partial last one; Memora's lag tokens read apart
    lag = int(cfg.lag_token)
    assert calls == [(2, 2, CHUNK - lag), (1, 2, T % CHUNK - lag)]
    assert_within(mine, gold, tol)


def test_fused_norms_of_huge_states():
    """The torch backend's per-token ℓq norms by the fused op stay finite and right when
    ``Σ|Z_t|^q`` overflows float32 (states near 1e14, as Moneta's accumulator reaches on long
    sequences): ``‖Z_t‖_4`` and its gradients against float64 autograd of the formed states
    (Eq 29)."""
    from miras_gpu.torch import chunked as torch_chunked
    from miras_gpu.torch.memory import Outer

    ret = LqRetention(4.0)
    gen = torch.Generator().manual_seed(0)
    B, H, C, R, S = 2, 1, 20, 6, 5  # C > NORM_BLOCK: blocks started from their own states
    base = [1e14 * torch.randn(B, H, R, S, generator=gen, dtype=torch.float64),
            1e14 * torch.randn(B, H, C, R, generator=gen, dtype=torch.float64),
            torch.randn(B, H, C, S, generator=gen, dtype=torch.float64),
            torch.rand(B, H, C, 1, 1, generator=gen, dtype=torch.float64),
            0.5 + 0.5 * torch.rand(B, H, C, 1, 1, generator=gen, dtype=torch.float64)]

    def norms(z0, left, right, eta, alpha, fused):
        decay, mask = torch_chunked.chunk_coefficients(eta, alpha, 2)
        if fused:
            u, n = torch_chunked._fused_norms(ret, z0, decay, mask, Outer(left, right),
                                              (eta, alpha), "ieee")
            return u * n
        z_t = decay * z0[:, :, None] - torch_chunked.token_sum(mask, Outer(left, right))
        return (z_t.abs() ** 4).sum((-2, -1), keepdim=True) ** 0.25

    mine_in, gold_in = _leaves(base, torch.float32), _leaves(base, torch.float64)
    mine, gold = norms(*mine_in, fused=True), norms(*gold_in, fused=False)
    assert mine.shape == gold.shape == (B, H, C, 1, 1)
    assert err(mine, gold) < TOL
    cot = torch.randn(gold.shape, generator=gen, dtype=torch.float64)
    for name, a, b in zip(["z0", "left", "right", "eta", "alpha"],
                          torch.autograd.grad(mine, mine_in, cot.float()),
                          torch.autograd.grad(gold, gold_in, cot)):
        assert torch.isfinite(a).all(), name
        assert err(a, b) < TOL, name
