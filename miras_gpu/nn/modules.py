"""Building blocks of the Llama macro-architecture (Sec 5.4): RMSNorm, SwiGLU MLP, rotary
position embeddings (RoPE) and causal (optionally sliding-window) attention with a KV cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "RMSNorm", "SwiGLU", "apply_rope", "init_linear", "swiglu_hidden"]


def init_linear(weight: torch.Tensor, scale: float = 1.0) -> None:
    """``N(0, scale²/fan_in)`` for an ``nn.Linear`` weight ``[out, in]``."""
    with torch.no_grad():
        weight.normal_(0.0, scale / math.sqrt(weight.shape[1]))


def swiglu_hidden(d_model: int, multiple_of: int = 64) -> int:
    """Llama's SwiGLU width: ``8/3 · d_model`` rounded up to a multiple of ``multiple_of``."""
    h = int(8 * d_model / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x²) + ε) ⊙ w`` over the last axis (computed in at least fp32)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight).to(x.dtype)


class SwiGLU(nn.Module):
    """``down(SiLU(gate(x)) ⊙ up(x))`` (Llama's MLP)."""

    def __init__(self, d_model: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or swiglu_hidden(d_model)
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        for lin in (self.gate, self.up, self.down):
            init_linear(lin.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def rope_tables(positions: torch.Tensor, dim: int, theta: float, dtype) -> tuple:
    """``cos, sin [T, dim]`` of RoPE for integer ``positions [T]`` (rotate-half layout)."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64,
                                       device=positions.device) / dim)
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, D]`` by the angles of its positions (Su et al. 2024)."""
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos + rot * sin


class Attention(nn.Module):
    """Causal multi-head attention with RoPE; ``window`` makes it sliding-window (SWA).

    Token ``i`` attends to tokens ``j`` with ``i - window < j <= i`` (``window=None``: every
    ``j <= i``), through :func:`torch.nn.functional.scaled_dot_product_attention` with a banded
    causal mask. Streaming state: ``{"k", "v": [B, H, S, D], "pos": int}``, the last
    ``window - 1`` keys and values (all of them without a window) and the next position.
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int, window: int | None = None,
                 rope_theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.n_heads, self.head_dim, self.window = n_heads, head_dim, window
        self.rope_theta = rope_theta
        self.qkv = nn.Linear(d_model, 3 * n_heads * head_dim, bias=False)
        self.out = nn.Linear(n_heads * head_dim, d_model, bias=False)
        init_linear(self.qkv.weight)
        init_linear(self.out.weight)

    def forward(self, x: torch.Tensor, state: dict | None = None, return_state: bool = False):
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # 3 × [B, H, T, D]
        start = 0 if state is None else int(state["pos"])
        pos = torch.arange(start, start + T, device=x.device)
        cos, sin = rope_tables(pos, D, self.rope_theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if state is not None and state["k"].shape[2] > 0:
            k = torch.cat([state["k"].to(k.dtype), k], dim=2)
            v = torch.cat([state["v"].to(v.dtype), v], dim=2)
        S = k.shape[2] - T  # cached tokens before this piece
        if S == 0 and self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            qi = torch.arange(S, S + T, device=x.device)[:, None]
            kj = torch.arange(S + T, device=x.device)[None, :]
            mask = kj <= qi
            if self.window is not None:
                mask = mask & (qi - kj < self.window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.out(y.transpose(1, 2).reshape(B, T, H * D))
        if not return_state:
            return out
        keep = k.shape[2] if self.window is None else min(k.shape[2], self.window - 1)
        new = {"k": k[:, :, k.shape[2] - keep:], "v": v[:, :, v.shape[2] - keep:],
               "pos": start + T}
        return out, new
