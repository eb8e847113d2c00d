"""A MIRAS configuration: the four design choices of Sec 4 in one object.

``MirasConfig(memory, bias, retention, algorithm)`` names a sequence model. The zoo
(:mod:`miras_ref.zoo`) builds every model of Table 1 and Moneta, Yaad and Memora this way, and
every sequence op (:func:`miras_ref.scan`, :func:`miras_ref.scan_chunked`) takes one.

Per-token gates (``gates`` dict) are data-dependent scalars or channel vectors:

=========  =========================================  ==================
key        meaning                                    range
=========  =========================================  ==================
``eta``    learning rate η_t (β_t in delta-rule form)  ``> 0``
``alpha``  retention α_t (1 = keep everything)        ``(0, 1]``
``delta``  Huber threshold δ_t / value-shift radius Δ  ``> 0``
``mu``     momentum decay (Titans' η_t)               ``[0, 1)``
=========  =========================================  ==================

Shapes: ``[B, T, H]`` (scalar per token and head) or ``[B, T, H, D]`` (channel-wise; ``D`` is
the size of the axis a channel-wise gate scales: ``d_k`` for the matrix memory, ``d`` for the
MLP; ``d_v`` for ``delta``). ``alpha`` of the matrix memory may also be element-wise
``[B, T, H, d_v, d_k]`` (DFW's ``β_t α_t^T``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .algorithms import GD, ClosedForm, Momentum, NonParametric
from .bias import HuberCoordinateBias, HuberMixtureBias, HuberNormBias, ValueShiftRobustBias

_DELTA_BIASES = (HuberCoordinateBias, HuberNormBias, HuberMixtureBias, ValueShiftRobustBias)

#: Where the chunked form applies the link to the reads (:attr:`MirasConfig.link_at`).
LINK_AT = ("token", "chunk")


@dataclass(frozen=True)
class MirasConfig:
    """The four MIRAS choices plus the few model-specific details.

    Parameters
    ----------
    name : str
        Model name (e.g. ``"gated_deltanet"``).
    memory : MatrixMemory | VectorMemory | MLPMemory
        Memory architecture (choice 1).
    bias : attentional bias from :mod:`miras_ref.bias` (choice 2).
    retention : retention gate from :mod:`miras_ref.retention` (choice 3).
    algorithm : memory learning algorithm from :mod:`miras_ref.algorithms` (choice 4).
    gate_defaults : dict
        Constant values used by :meth:`default_gates`.
    key_from_alpha : bool
        HGRN2: the key is tied to the retention gate, ``k_t = 1 - α_t``.
    lag_token : bool
        Memora's chunked form (Eq 30-32): the first token of each chunk is a lag token.
    link_at : str
        Where the chunked form applies the retention's link ``W = ψ(Z)`` to the queries'
        reads: ``"token"`` (default) reads every token's own ``ψ(Z_t)``, so chunk size 1 is
        the recurrence; ``"chunk"`` applies ``ψ`` only at chunk starts and lets the memory
        ``ψ(Z_{t'})`` take plain gradient steps inside the chunk, Sec 5.4's "we do not apply
        this non-linearity inside each chunk" (:func:`miras_ref.scan_chunked`). The two agree
        for an identity link; the exact recurrence ignores it.
    write : str
        The model's own write rule as printed in Table 1 (for documentation).
    """

    name: str
    memory: object
    bias: object
    retention: object
    algorithm: object
    gate_defaults: dict = field(default_factory=lambda: {"eta": 0.1, "alpha": 1.0})
    key_from_alpha: bool = False
    lag_token: bool = False
    link_at: str = "token"
    write: str = ""

    def __post_init__(self):
        if self.link_at not in LINK_AT:
            raise ValueError(f"link_at must be one of {LINK_AT}, got {self.link_at!r}")

    @property
    def required_gates(self) -> tuple[str, ...]:
        """Gate names this configuration reads."""
        if isinstance(self.algorithm, NonParametric):
            return ()
        if isinstance(self.algorithm, ClosedForm):
            return ("alpha",)
        names = ["eta", "alpha"]
        if isinstance(self.bias, _DELTA_BIASES):
            names.append("delta")
        if isinstance(self.algorithm, Momentum):
            names.append("mu")
        return tuple(names)

    def default_gates(self, batch: int, length: int, heads: int) -> dict[str, np.ndarray]:
        """Constant gates ``[B, T, H]`` from ``gate_defaults`` for every required gate."""
        defaults = {"eta": 0.1, "alpha": 1.0, "delta": 1.0, "mu": 0.9, **self.gate_defaults}
        return {g: np.full((batch, length, heads), float(defaults[g]))
                for g in self.required_gates}

    def describe(self) -> dict[str, str]:
        """The four choices as short strings (the tour's table)."""
        return {
            "memory": self.memory.name,
            "bias": _label(self.bias),
            "retention": _label(self.retention),
            "algorithm": self.algorithm.name,
        }

    @property
    def is_parametric(self) -> bool:
        """True when the memory is a parametric map trained by a GD-family algorithm."""
        return isinstance(self.algorithm, GD)


def _label(obj) -> str:
    name = getattr(obj, "name", type(obj).__name__)
    for attr in ("p", "q"):
        if hasattr(obj, attr):
            name += f"({attr}={getattr(obj, attr):g})"
    if getattr(obj, "anchor_at", None) == "decayed":
        name += "(decayed)"
    return name
