"""PyTorch modules for MIRAS models (Sec 5.4).

* :class:`MirasLayer`: the MIRAS layer block (projections, causal depthwise conv, ℓ2-normalised
  q and k, channel-wise low-rank gates, memory scan, per-head RMSNorm, output gate), checked
  against :func:`miras_ref.layer.miras_layer_forward`.
* :class:`MirasLM` (optionally the Samba-style hybrid) and :class:`TransformerLM`
  (Transformer++), with :data:`PRESETS` from the paper's Table 5.
* :func:`generate`: recurrent decoding; :func:`save_pretrained` / :func:`load_pretrained`.
"""

from .generate import generate
from .io import load_config, load_pretrained, save_pretrained
from .layer import MirasLayer, resolve_config
from .model import PRESETS, LMConfig, MirasLM, TransformerLM, build_model, count_params
from .modules import Attention, RMSNorm, SwiGLU

__all__ = [
    "PRESETS",
    "Attention",
    "LMConfig",
    "MirasLM",
    "MirasLayer",
    "RMSNorm",
    "SwiGLU",
    "TransformerLM",
    "build_model",
    "count_params",
    "generate",
    "load_config",
    "load_pretrained",
    "resolve_config",
    "save_pretrained",
]
