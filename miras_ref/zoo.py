"""Every model of the paper's Table 1, and Moneta, Yaad and Memora, as MIRAS configurations.

Each function returns a :class:`~miras_ref.config.MirasConfig` built from the four choices.
``tests/test_zoo.py`` runs each one against the model's own recurrence, written independently
from the model's paper (e.g. Gated DeltaNet ``S_t = α_t S_{t-1}(I - β_t k_t k_t^T) +
β_t v_t k_t^T``) on random inputs.

Gate names map to each paper's symbols: ``eta`` is the write strength (β_t of the delta rule,
Δ_t of Mamba2, θ_t of Titans), ``alpha`` the retention/decay (γ of RetNet, α_t of GLA, w_t of
RWKV-7), ``mu`` the momentum decay (η_t of Titans), ``delta`` Yaad's Huber threshold.
"""

from __future__ import annotations

from collections.abc import Callable

from .algorithms import GD, ClosedForm, ImplicitGD, Momentum, MultiStepGD, NonParametric
from .bias import DotProductBias, HuberMixtureBias, L2Bias, LpBias
from .config import MirasConfig
from .memory import MatrixMemory, MLPMemory, VectorMemory
from .retention import KLRetention, L2Retention, LqRetention

HEBBIAN = {"eta": 1.0, "alpha": 1.0}


def _hebbian(name, d, alpha, write, memory=None, **kw):
    return MirasConfig(name, memory or MatrixMemory(d, d), DotProductBias(), L2Retention(), GD(),
                       {"eta": 1.0, "alpha": alpha}, write=write, **kw)


def retnet(d: int) -> MirasConfig:
    """RetNet (Table 1): vector memory, dot-product bias, ℓ2 retention, GD; ``M_t = α M_{t-1} +
    v_t k_t^T`` with a constant α (Sec 4 case 2, ``n = 1``)."""
    return _hebbian("retnet", d, 0.9, "M_t = α M_{t-1} + v_t k_t^T", memory=VectorMemory(d))


def linear_attention(d: int) -> MirasConfig:
    """Linear attention (Table 1, Eq 8 with α = 1): ``M_t = M_{t-1} + v_t k_t^T``."""
    return _hebbian("linear_attention", d, 1.0, "M_t = M_{t-1} + v_t k_t^T")


def dfw(d: int) -> MirasConfig:
    """DFW (Table 1): ``M_t = (β_t α_t^T) ⊙ M_{t-1} + v_t k_t^T``; pass the element-wise gate
    ``alpha = β_t α_t^T`` of shape ``[B, T, H, d_v, d_k]``."""
    return _hebbian("dfw", d, 0.95, "M_t = (β_t α_t^T) ⊙ M_{t-1} + v_t k_t^T")


def lightning_attention(d: int) -> MirasConfig:
    """Lightning attention (Table 1): matrix memory, ``M_t = α M_{t-1} + v_t k_t^T``."""
    return _hebbian("lightning_attention", d, 0.95, "M_t = α M_{t-1} + v_t k_t^T")


def gla(d: int) -> MirasConfig:
    """GLA (Table 1): channel-wise data-dependent decay of the key axis,
    ``S_t = diag(α_t) S_{t-1} + k_t v_t^T`` (GLA's ``S = W^T``); pass ``alpha [B, T, H, d_k]``."""
    return _hebbian("gla", d, 0.95, "M_t = M_{t-1} Diag(α_t) + v_t k_t^T")


def mamba2(d: int) -> MirasConfig:
    """Mamba2 (Table 1): scalar data-dependent decay ``M_t = α_t M_{t-1} + Δ_t v_t k_t^T``
    (the SSD form ``h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t^T`` with ``eta = Δ_t``)."""
    return _hebbian("mamba2", d, 0.95, "M_t = α_t M_{t-1} + v_t k_t^T")


def hgrn2(d: int) -> MirasConfig:
    """HGRN2 (Table 1): ``M_t = M_{t-1} Diag(α_t) + v_t (1 - α_t)^T``: the key is tied to the
    forget gate. Realised with the dot-product bias (Table 1 lists ℓ1; docs/paper-notes.md)."""
    return _hebbian("hgrn2", d, 0.95, "M_t = M_{t-1} Diag(α_t) + v_t (1 - α_t)^T",
                    key_from_alpha=True)


def deltanet(d: int) -> MirasConfig:
    """DeltaNet (Table 1): ℓ2 bias, no retention, GD:
    ``S_t = S_{t-1}(I - β_t k_t k_t^T) + β_t v_t k_t^T``."""
    return MirasConfig("deltanet", MatrixMemory(d, d), L2Bias(), L2Retention(), GD(),
                       {"eta": 0.5, "alpha": 1.0},
                       write="M_t = M_{t-1}(I - β_t k_t k_t^T) + β_t v_t k_t^T")


def longhorn(d: int) -> MirasConfig:
    """Longhorn (Table 1): the implicit GD step on the ℓ2 loss:
    ``S_t = S_{t-1}(I - ε_t k_t k_t^T) + ε_t v_t k_t^T``, ``ε_t = β_t / (1 + β_t k_t^T k_t)``."""
    return MirasConfig("longhorn", MatrixMemory(d, d), L2Bias(), L2Retention(), ImplicitGD(),
                       {"eta": 0.5, "alpha": 1.0},
                       write="M_t = M_{t-1}(I - ε_t k_t k_t^T) + ε_t v_t k_t^T")


def ttt_linear(d: int) -> MirasConfig:
    """TTT-Linear (Table 1): ``W_t = W_{t-1} - η ∇ ½‖W_{t-1} k_t - v_t‖²`` with a constant η."""
    return MirasConfig("ttt_linear", MatrixMemory(d, d), L2Bias(), L2Retention(), GD(),
                       {"eta": 0.1, "alpha": 1.0}, write="M_t = M_{t-1} - η ∇L(M_{t-1}; k_t, v_t)")


def gated_deltanet(d: int) -> MirasConfig:
    """Gated DeltaNet (Table 1): ``S_t = α_t S_{t-1}(I - β_t k_t k_t^T) + β_t v_t k_t^T``: the
    scaled-prior ℓ2 retention (gradient at ``α_t S_{t-1}``), scalar α_t."""
    return MirasConfig("gated_deltanet", MatrixMemory(d, d), L2Bias(),
                       L2Retention(anchor_at="decayed"), GD(), {"eta": 0.5, "alpha": 0.95},
                       write="M_t = α_t M_{t-1}(I - β_t k_t k_t^T) + β_t v_t k_t^T")


def rwkv7(d: int) -> MirasConfig:
    """RWKV-7 (Table 1): ``S_t = S_{t-1}(diag(w_t) - β_t k_t k_t^T) + β_t v_t k_t^T``: ℓ2 bias
    with the local+global ℓ2 gate (gradient at ``S_{t-1}``), channel-wise ``alpha = w_t``."""
    return MirasConfig("rwkv7", MatrixMemory(d, d), L2Bias(), L2Retention(), GD(),
                       {"eta": 0.5, "alpha": 0.95},
                       write="M_t = M_{t-1}(diag(α_t) - β_t k_t k_t^T) + β_t v_t k_t^T")


def deltaproduct(d: int, n_steps: int = 2) -> MirasConfig:
    """DeltaProduct (Table 1): ``n`` delta-rule steps per token with keys ``k_{t,i}``:
    ``S_t = α_t S_{t-1} Π_i (I - β_t k_{t,i} k_{t,i}^T) + ...``."""
    return MirasConfig("deltaproduct", MatrixMemory(d, d), L2Bias(),
                       L2Retention(anchor_at="decayed"), MultiStepGD(n_steps),
                       {"eta": 0.5, "alpha": 0.95},
                       write="M_t = α_t Π_i (I - β_t k_{t,i} k_{t,i}^T) M_{t-1} + ...")


def ttt_mlp(d: int, expansion: int = 4) -> MirasConfig:
    """TTT-MLP (Table 1): 2-layer MLP memory, ℓ2 bias, no retention, GD."""
    return MirasConfig("ttt_mlp", MLPMemory(d, expansion), L2Bias(), L2Retention(), GD(),
                       {"eta": 0.1, "alpha": 1.0}, write="W_t = W_{t-1} - η ∇ℓ(W_{t-1}; k_t, v_t)")


def titans_lmm(d: int, expansion: int = 4) -> MirasConfig:
    """Titans-LMM (Table 1): MLP memory, ℓ2 bias, ℓ2 retention, GD with momentum:
    ``S_t = μ_t S_{t-1} - θ_t ∇ℓ(M_{t-1})``, ``M_t = α_t M_{t-1} + S_t``."""
    return MirasConfig("titans_lmm", MLPMemory(d, expansion), L2Bias(), L2Retention(), Momentum(),
                       {"eta": 0.1, "alpha": 0.99, "mu": 0.9},
                       write="M_t = α_t M_{t-1} + S_t, S_t = μ_t S_{t-1} - θ_t ∇ℓ(M_{t-1})")


def softmax_attention(d_k: int, d_v: int | None = None, scale: float | None = None):
    """Softmax attention (Table 1, Eq 2): non-parametric (Nadaraya-Watson) ℓ2 memory."""
    return MirasConfig("softmax_attention", MatrixMemory(d_k, d_v or d_k), L2Bias(),
                       L2Retention(), NonParametric(scale), {},
                       write="M_t = M_{t-1} ∪ {(k_t, v_t)}")


def mesa(d: int, lam: float = 1.0) -> MirasConfig:
    """Mesa layer (Sec 4): closed-form regularised least squares ``W_t = P_t (Q_t + λI)^{-1}``."""
    return MirasConfig("mesa", MatrixMemory(d, d), L2Bias(), L2Retention(), ClosedForm(lam),
                       {"alpha": 1.0}, write="W_t = argmin Σ_i ½‖W k_i - v_i‖² + λ/2 ‖W‖²")


def moneta(d: int, p: float = 3.0, q: float = 4.0, expansion: int = 4,
           link_at: str = "token") -> MirasConfig:
    """Moneta (Eq 24-25): MLP memory, ℓp bias (p = 3), ℓq + ℓ2 retention (q = 4), GD:
    ``A_t = α_t A_{t-1} - η_t ∇ℓ_p(W_{t-1})``, ``W_t = A_t / ‖A_t‖_q^{q-2}``; ``link_at``:
    where the chunked form normalises (:attr:`MirasConfig.link_at`)."""
    return MirasConfig("moneta", MLPMemory(d, expansion), LpBias(p), LqRetention(q), GD(),
                       {"eta": 0.05, "alpha": 0.99}, link_at=link_at,
                       write="A_t = α_t A_{t-1} - η_t ∇ℓ_p(W_{t-1}), W_t = A_t/‖A_t‖_q^{q-2}")


def yaad(d: int, expansion: int = 4) -> MirasConfig:
    """Yaad (Eq 26): MLP memory, Huber (smooth mixture, Eq 16) bias, ℓ2 retention, GD."""
    return MirasConfig("yaad", MLPMemory(d, expansion), HuberMixtureBias(), L2Retention(), GD(),
                       {"eta": 0.1, "alpha": 0.99, "delta": 1.0},
                       write="W_t = α_t W_{t-1} - η_t ∇ℓ2 if ‖M(k_t) - v_t‖ <= δ_t else "
                             "α_t W_{t-1} - η_t δ_t ∇ℓ1")


def memora(d: int, expansion: int = 4, c: float = 1.0, link_at: str = "token") -> MirasConfig:
    """Memora (Eq 27): MLP memory, ℓ2 bias, KL retention (row-wise softmax, scale c), GD:
    ``W_t = c Softmax(α_t log W_{t-1} - η_t ∇ℓ2(W_{t-1}))``; chunked with a lag token;
    ``link_at``: where the chunked form applies the softmax (:attr:`MirasConfig.link_at`)."""
    return MirasConfig("memora", MLPMemory(d, expansion), L2Bias(), KLRetention(c=c), GD(),
                       {"eta": 0.1, "alpha": 0.99}, lag_token=True, link_at=link_at,
                       write="W_t = c Softmax(α_t log W_{t-1} - η_t ∇ℓ2(W_{t-1}))")


#: Table 1 rows in the paper's order, then the three MIRAS variants.
TABLE1: dict[str, Callable[..., MirasConfig]] = {
    "retnet": retnet,
    "softmax_attention": softmax_attention,
    "linear_attention": linear_attention,
    "dfw": dfw,
    "lightning_attention": lightning_attention,
    "gla": gla,
    "mamba2": mamba2,
    "hgrn2": hgrn2,
    "deltanet": deltanet,
    "longhorn": longhorn,
    "ttt_linear": ttt_linear,
    "gated_deltanet": gated_deltanet,
    "rwkv7": rwkv7,
    "deltaproduct": deltaproduct,
    "ttt_mlp": ttt_mlp,
    "titans_lmm": titans_lmm,
}
MIRAS_VARIANTS: dict[str, Callable[..., MirasConfig]] = {
    "moneta": moneta,
    "yaad": yaad,
    "memora": memora,
}
ALL: dict[str, Callable[..., MirasConfig]] = {**TABLE1, **MIRAS_VARIANTS, "mesa": mesa}


def names() -> list[str]:
    """Names of every configuration in the zoo."""
    return list(ALL)


def get(name: str, d: int, **kwargs) -> MirasConfig:
    """Build the named configuration with key/value dimension ``d``."""
    if name not in ALL:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ALL)}")
    return ALL[name](d, **kwargs)
