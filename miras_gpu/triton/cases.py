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
    }


def kernel_inputs(cfg, t: int, cw_delta: bool = False, seed: int = 0, b: int = 1, h: int = 2,
                  device=None):
    """float64 inputs ``[b, t, h, ·]``: ℓ2-normalised q, k (as the MIRAS layer), gates inside
    their ranges (δ channel-wise with ``cw_delta``), and a random initial state near the
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
        u = rand(b, t, h)
        gates[name] = {"eta": 0.1 + 0.5 * u, "alpha": 0.85 + 0.15 * u, "delta": 0.3 + u}[name]
    if cw_delta:
        gates["delta"] = 0.3 + rand(b, t, h, d_v)
    default = cfg.memory.default_state(b, h)
    scale = 0.3 if isinstance(cfg.memory, MatrixMemory) else 0.05
    init = {n: torch.as_tensor(a) + scale * randn(*a.shape) for n, a in default.items()}
    return (q.to(device), k.to(device), v.to(device), {n: a.to(device) for n, a in gates.items()},
            {n: a.to(device) for n, a in init.items()})
