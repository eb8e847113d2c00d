"""Language models around the MIRAS layer (Sec 5.4, "Architectural Backbone").

* :class:`MirasLM`: Llama's macro-architecture with the attention replaced by a MIRAS layer:
  embedding, ``L`` blocks of ``[RMSNorm → MIRAS layer → residual, RMSNorm → SwiGLU → residual]``,
  final RMSNorm, LM head (tied to the embedding by default).
* ``MirasLM(..., hybrid=True)``: the Samba-style hybrid (Ren et al. 2024, the paper's "-H"
  models): each block is ``MIRAS layer, MLP, sliding-window attention (RoPE), MLP``, each
  sublayer pre-normed with a residual, as Samba interleaves Mamba, MLP, SWA and MLP.
* :class:`TransformerLM`: the Transformer++ baseline, the same macro-architecture with causal
  softmax attention and RoPE.

Sizes: :data:`PRESETS` holds the paper's Table 5 (blocks, width, heads, peak learning rate)
and a ``tiny`` size for CPU runs. Every model's hyper-parameters live in a :class:`LMConfig`,
which :func:`miras_gpu.nn.save_pretrained` writes as ``config.json``.

Initialisation: the MIRAS layer as :class:`~miras_gpu.nn.MirasLayer` (the reference's), every
other matrix ``N(0, 1/fan_in)``, the embedding ``N(0, 1/d_model)``; the projections that write
into the residual stream (the layer's ``W_o``, attention's ``out``, the MLP's ``down``) are
scaled by ``1/sqrt(number of sublayers)`` (GPT-2's residual scaling).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from .layer import MirasLayer, resolve_config
from .modules import Attention, RMSNorm, SwiGLU

__all__ = ["PRESETS", "LMConfig", "MirasLM", "TransformerLM", "build_model", "count_params"]

#: Model sizes. ``170M``, ``340M``, ``780M``: Table 5 of the paper (blocks, width, heads, peak
#: learning rate, training tokens); ``tiny``: a CPU-sized model for demos and tests.
PRESETS: dict[str, dict] = {
    "tiny": {"n_layers": 2, "d_model": 64, "n_heads": 4, "lr": 3e-3, "tokens": None},
    "170M": {"n_layers": 12, "d_model": 768, "n_heads": 16, "lr": 3e-3, "tokens": 15e9},
    "340M": {"n_layers": 24, "d_model": 1024, "n_heads": 16, "lr": 1.5e-3, "tokens": 15e9},
    "780M": {"n_layers": 24, "d_model": 1536, "n_heads": 16, "lr": 1.25e-3, "tokens": 30e9},
}


@dataclass
class LMConfig:
    """Hyper-parameters of a :class:`MirasLM` or :class:`TransformerLM` (JSON-serialisable).

    ``arch``: ``"miras"`` or ``"transformer"``; ``model``: the MIRAS memory (a
    :mod:`miras_ref.zoo` name) with ``model_kwargs``; ``head_dim`` defaults to
    ``d_model // n_heads``; ``window``: the sliding window of the hybrid's attention (and of a
    Transformer when set); ``mlp_hidden`` defaults to :func:`~miras_gpu.nn.modules.swiglu_hidden`.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int | None = None
    arch: str = "miras"
    model: str = "moneta"
    model_kwargs: dict = field(default_factory=dict)
    hybrid: bool = False
    window: int | None = 512
    rank: int = 32
    chunk_size: int | None = 64
    mlp_hidden: int | None = None
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    backend: str | None = None

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"n_heads ({self.n_heads}) must divide d_model "
                                 f"({self.d_model}), or give head_dim")
            self.head_dim = self.d_model // self.n_heads
        if self.arch not in ("miras", "transformer"):
            raise ValueError(f"arch must be 'miras' or 'transformer', got {self.arch!r}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 or None, got {self.window}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LMConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LMConfig keys {unknown}")
        return cls(**d)


class Block(nn.Module):
    """Pre-norm residual sublayers: ``mixer, MLP`` (and ``SWA, MLP`` for the hybrid)."""

    def __init__(self, cfg: LMConfig, mixer: nn.Module, attn: nn.Module | None = None):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = mixer
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden)
        self.attn = attn
        if attn is not None:
            self.norm3 = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.norm4 = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.mlp2 = SwiGLU(cfg.d_model, cfg.mlp_hidden)

    def forward(self, x, state=None, return_state=False):
        state = state or {}
        new = {}
        h = self.norm1(x)
        if return_state:
            h, new["mixer"] = self.mixer(h, state.get("mixer"), True)
        else:
            h = self.mixer(h, state.get("mixer"))
        x = x + h
        x = x + self.mlp(self.norm2(x))
        if self.attn is not None:
            h = self.norm3(x)
            if return_state:
                h, new["attn"] = self.attn(h, state.get("attn"), True)
            else:
                h = self.attn(h, state.get("attn"))
            x = x + h
            x = x + self.mlp2(self.norm4(x))
        return (x, new) if return_state else x

    def residual_outputs(self) -> list[torch.Tensor]:
        """Weights that write into the residual stream (scaled at init)."""
        mixer_out = self.mixer.W_o if isinstance(self.mixer, MirasLayer) else self.mixer.out.weight
        out = [mixer_out, self.mlp.down.weight]
        if self.attn is not None:
            out += [self.attn.out.weight, self.mlp2.down.weight]
        return out


class _LM(nn.Module):
    """Embedding → blocks → final RMSNorm → LM head, with streaming state."""

    def _build(self, cfg: LMConfig, make_block):
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        with torch.no_grad():
            self.embed.weight.normal_(0.0, 1.0 / math.sqrt(cfg.d_model))
        self.blocks = nn.ModuleList([make_block(i) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        else:
            with torch.no_grad():
                self.lm_head.weight.normal_(0.0, 1.0 / math.sqrt(cfg.d_model))
        n_sub = sum(len(b.residual_outputs()) for b in self.blocks)
        with torch.no_grad():
            for b in self.blocks:
                for w in b.residual_outputs():
                    w.mul_(1.0 / math.sqrt(n_sub))

    def forward(self, input_ids: torch.Tensor, state: list | None = None,
                return_state: bool = False):
        """Logits ``[B, T, vocab]`` for ``input_ids [B, T]``; with ``return_state`` also the
        per-block streaming state (pass it back to continue the sequence exactly)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape [B, T], got {tuple(input_ids.shape)}")
        x = self.embed(input_ids)
        new_state = []
        for i, block in enumerate(self.blocks):
            s = None if state is None else state[i]
            if return_state:
                x, s = block(x, s, True)
                new_state.append(s)
            else:
                x = block(x, s)
        logits = self.lm_head(self.norm(x))
        return (logits, new_state) if return_state else logits


class MirasLM(_LM):
    """Llama-style language model whose token mixer is a MIRAS layer (see the module docs).

    Parameters
    ----------
    vocab_size, d_model, n_layers, n_heads : int
    head_dim : int, optional
        Defaults to ``d_model // n_heads`` (``n_heads`` must divide ``d_model`` then).
    model : str
        The MIRAS memory, a :mod:`miras_ref.zoo` name (``"moneta"``, ``"yaad"``, ``"memora"``,
        ``"gated_deltanet"``, ...).
    hybrid : bool
        Samba-style hybrid: sliding-window attention after each MIRAS layer.
    window : int
        The sliding window of the hybrid's attention.
    **kwargs
        Any other :class:`LMConfig` field (``rank``, ``chunk_size``, ``tie_embeddings``,
        ``mlp_hidden``, ``model_kwargs``, ``backend``, ...).
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 head_dim: int | None = None, model: str = "moneta", hybrid: bool = False,
                 window: int | None = 512, config: LMConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or LMConfig(vocab_size, d_model, n_layers, n_heads, head_dim, arch="miras",
                                 model=model, hybrid=hybrid, window=window, **kwargs)
        if not isinstance(cfg.model, str):
            raise TypeError("MirasLM takes the memory as a miras_ref.zoo name (str) so that it "
                            "can be saved; use MirasLayer for a custom MirasConfig")
        resolve_config(cfg.model, cfg.head_dim, **cfg.model_kwargs)  # fail early, clearly
        if cfg.hybrid and cfg.window is None:
            raise ValueError("hybrid=True needs a sliding window size (window >= 1)")

        def make_block(i):
            mixer = MirasLayer(cfg.d_model, cfg.n_heads, cfg.head_dim, model=cfg.model,
                               rank=cfg.rank, chunk_size=cfg.chunk_size, backend=cfg.backend,
                               model_kwargs=cfg.model_kwargs)
            attn = (Attention(cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.window, cfg.rope_theta)
                    if cfg.hybrid else None)
            return Block(cfg, mixer, attn)

        self._build(cfg, make_block)


class TransformerLM(_LM):
    """Transformer++ baseline: RoPE causal attention + SwiGLU + RMSNorm (Llama).

    ``window`` (default ``None``: full causal attention) makes every layer sliding-window.
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 head_dim: int | None = None, window: int | None = None,
                 config: LMConfig | None = None, **kwargs):
        super().__init__()
        kwargs.pop("model", None)
        kwargs.pop("hybrid", None)
        cfg = config or LMConfig(vocab_size, d_model, n_layers, n_heads, head_dim,
                                 arch="transformer", model="softmax_attention", window=window,
                                 **kwargs)

        def make_block(i):
            return Block(cfg, Attention(cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.window,
                                        cfg.rope_theta))

        self._build(cfg, make_block)


def build_model(config: LMConfig | dict) -> nn.Module:
    """A :class:`MirasLM` or :class:`TransformerLM` from its config."""
    if isinstance(config, dict):
        config = LMConfig.from_dict(config)
    if config.arch == "transformer":
        return TransformerLM(0, 0, 0, 0, config=config)
    return MirasLM(0, 0, 0, 0, config=config)


def count_params(model: nn.Module, non_embedding: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once); ``non_embedding`` leaves
    out the embedding (and an untied LM head)."""
    seen, total = set(), 0
    skip = set()
    if non_embedding:
        skip = {id(model.embed.weight), id(model.lm_head.weight)}
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
