"""The configurations and inputs the Triton kernels are checked on, shared by the CPU
interpreter tests (``tests/test_triton.py``) and the GPU check (``scripts/gpu_kernels_check.py``).

Every bias and retention link the kernels implement appears once, on a matrix memory or on
the 2-layer MLP memory, plus the paper's models.
"""

from __future__ import annotations

import torch

from miras_ref import zoo
from miras_ref.algorithms import GD
from miras_ref.bias import HuberMixtureBias, L2Bias, LpBias
from miras_ref.config import MirasConfig
from miras_ref.memory import MatrixMemory, MLPMemory
from miras_ref.retention import KLRetention, L2Retention, LqRetention


def gd_config(memory, bias, retention, lag=False) -> MirasConfig:
    """A test configuration: plain GD with η = 0.1, α = 0.9 defaults."""
    return MirasConfig("test", memory, bias, retention, GD(), {"eta": 0.1, "alpha": 0.9},
                       lag_token=lag)


def kernel_cases(d: int) -> dict[str, tuple[MirasConfig, bool]]:
    """``name: (config, channel-wise δ)`` at head dimension ``d``."""
    def matrix(bias, retention, lag=False):
        return gd_config(MatrixMemory(d, d), bias, retention, lag)

    return {
        "deltanet": (zoo.deltanet(d), False),
        "gated_deltanet": (zoo.gated_deltanet(d), False),
        "mamba2_dot": (zoo.mamba2(d), False),
        "lp_smooth_decayed": (matrix(LpBias(3.0), L2Retention("decayed")), False),
        "lp_exact": (matrix(LpBias(3.0, smooth=False), L2Retention()), False),
        "huber_smooth_cw": (matrix(HuberMixtureBias(), L2Retention()), True),
        "huber_exact_token": (matrix(HuberMixtureBias(smooth=False), L2Retention("decayed")),
                              False),
        "lq_simplified": (matrix(LpBias(3.0), LqRetention(4.0)), False),
        "lq_exact": (matrix(L2Bias(), LqRetention(1.5, "exact")), False),
        "kl_row": (matrix(L2Bias(), KLRetention(c=1.0)), False),
        "kl_all_lag": (matrix(L2Bias(), KLRetention(c=2.0, axis=None), lag=True), False),
        "yaad": (zoo.yaad(d), False),
        "mlp_lp_decayed": (gd_config(MLPMemory(d), LpBias(3.0), L2Retention("decayed")),
                           False),
        "moneta": (zoo.moneta(d), False),
        "memora": (zoo.memora(d), False),
        # Sec 5.4's chunk form: the link at chunk starts only (with Memora's lag token)
        "moneta_chunk": (zoo.moneta(d, link_at="chunk"), False),
        "memora_chunk": (zoo.memora(d, link_at="chunk"), False),
    }


def kernel_inputs(cfg, t: int, cw_delta: bool = False, seed: int = 0, b: int = 1, h: int = 2,
                  device=None, cw_gates: bool = False):
    """float64 inputs ``[b, t, h, ·]``: ℓ2-normalised q, k (as the MIRAS layer), gates inside
    their ranges (δ channel-wise with ``cw_delta``; η and α channel-wise ``[b, t, h, d_k]``
    with ``cw_gates``, as the MIRAS layer makes them), and a random initial state near the
    default one. Returns ``(q, k, v, gates, initial_state)`` on ``device``."""
    g = torch.Generator().manual_seed(seed)
    d_k, d_v = cfg.memory.d_k, cfg.memory.d_v

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    q = torch.nn.functional.normalize(randn(b, t, h, d_k), dim=-1)
    k = torch.nn.functional.normalize(randn(b, t, h, d_k), dim=-1)
    v = randn(b, t, h, d_v)
    gates = {}
    for name in cfg.required_gates:
        u = rand(b, t, h, d_k) if cw_gates and name != "delta" else rand(b, t, h)
        gates[name] = {"eta": 0.1 + 0.5 * u, "alpha": 0.85 + 0.15 * u, "delta": 0.3 + u}[name]
    if cw_delta:
        gates["delta"] = 0.3 + rand(b, t, h, d_v)
    default = cfg.memory.default_state(b, h)
    scale = 0.3 if isinstance(cfg.memory, MatrixMemory) else 0.05
    init = {n: torch.as_tensor(a) + scale * randn(*a.shape) for n, a in default.items()}
    return (q.to(device), k.to(device), v.to(device), {n: a.to(device) for n, a in gates.items()},
            {n: a.to(device) for n, a in init.items()})


def float32_conditioning(cfg, q, k, v, gates, init, chunk: int, seed: int = 5) -> float:
    """How far float32 round-off alone could move the float64 results on these inputs, the
    policy of :func:`miras_gpu.conformance.ill_conditioned`: the largest relative change (in
    norm) of the torch backend's float64 output, final state and input gradients (of one
    random linear function) under relative noise ``PROBE_NOISE`` on ``q, k, v`` and the
    initial state (the gates stay inside their ranges), scaled to float32's rounding unit.
    Where it reaches a share of a float32 bound, no float32 implementation can be judged on
    these inputs."""
    from ..conformance import FLOAT32_UNIT, PROBE_NOISE, PROBES
    from ..torch import scan_chunked

    inputs = [q, k, v, *gates.values(), *init.values()]
    noised = [True] * 3 + [False] * len(gates) + [True] * len(init)

    def results(tensors):
        leaves = [x.detach().double().requires_grad_(True) for x in tensors]
        gg = dict(zip(gates, leaves[3:3 + len(gates)]))
        gi = dict(zip(init, leaves[3 + len(gates):]))
        y, f = scan_chunked(cfg, *leaves[:3], gg, chunk_size=chunk, initial_state=gi,
                            output_final_state=True)
        gen = torch.Generator().manual_seed(99)
        cot = [torch.randn(a.shape, generator=gen, dtype=torch.float64).to(a.device)
               for a in (y, *f.values())]
        return [y, *f.values(), *torch.autograd.grad([y, *f.values()], leaves, cot)]

    def rel(a, b):
        den = b.norm().item()
        return (a - b).norm().item() / den if den > 0 else (a - b).norm().item()

    base = results(inputs)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(PROBES):
        noisy = [x.double() * (1 + PROBE_NOISE * torch.randn(x.shape, generator=gen,
                                                               dtype=torch.float64)
                               .to(x.device)) if n else x for x, n in zip(inputs, noised)]
        worst = max(worst, *(rel(a, b) for a, b in zip(results(noisy), base)))
    return worst * FLOAT32_UNIT / PROBE_NOISE
