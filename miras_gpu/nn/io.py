"""Save and load models: ``config.json`` (an :class:`~miras_gpu.nn.LMConfig`) and
``model.safetensors`` (the weights, tied ones stored once)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .model import LMConfig, build_model

__all__ = ["load_pretrained", "save_pretrained"]

FORMAT = "miras-lm"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _unwrap(model):
    return getattr(model, "module", model)  # DDP


def save_pretrained(model, directory) -> Path:
    """Write ``model``'s config and weights into ``directory`` (created if needed)."""
    from safetensors.torch import save_model

    model = _unwrap(model)
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, LMConfig):
        raise TypeError("save_pretrained takes a MirasLM or TransformerLM (a model with an "
                        f"LMConfig), got {type(model).__name__}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": 1, "class": type(model).__name__,
            "config": cfg.to_dict()}
    (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    save_model(model, str(d / WEIGHTS_FILE))
    return d


def load_config(directory) -> LMConfig:
    """The :class:`LMConfig` saved in ``directory``."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no saved model in {directory}: {path} does not exist")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a saved miras model (format {meta.get('format')!r})")
    return LMConfig.from_dict(meta["config"])


def load_pretrained(directory, device=None, dtype: torch.dtype | None = None):
    """Rebuild the model saved by :func:`save_pretrained` in ``directory``."""
    from safetensors.torch import load_model

    cfg = load_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no weights in {directory}: {weights} does not exist")
    model = build_model(cfg)
    load_model(model, str(weights), strict=True)
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    return model
