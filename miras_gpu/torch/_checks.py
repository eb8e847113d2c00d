"""Input validation of the torch ops (the twin of :mod:`miras_ref._checks` and
:func:`miras_ref.recurrent.validate_inputs`).

Rules, each error naming the argument:

* ``q, k, v`` are floating-point ``torch.Tensor`` s of one dtype (``TypeError`` otherwise) on
  one device (``ValueError``), with the shapes of :func:`miras_ref.scan`;
* gates and initial-state entries are floating-point tensors on that device, of any floating
  dtype (they are converted to the compute dtype);
* every value is finite and every gate is in its range (``ValueError``).

Value checks (finiteness, ranges) read the data, which synchronises a GPU; they are skipped
while ``torch.compile`` traces (``torch.compiler.is_compiling()``), so a compiled op has no
graph breaks. Shape, dtype and device checks always run.

Precision: float64 inputs compute in float64; float32, float16 and bfloat16 inputs compute
with the memory state and every reduction in float32, and the output is cast back to the
input dtype (the final state stays in the compute dtype).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from miras_ref.algorithms import ClosedForm, Momentum, MultiStepGD, NonParametric
from miras_ref.memory import MatrixMemory
from miras_ref.recurrent import check_qkv_shapes

#: gate: (low, high, low_open, high_open), as miras_ref.recurrent._RANGES
GATE_RANGES = {
    "eta": (0.0, None, True, False),
    "alpha": (0.0, 1.0, True, False),
    "delta": (0.0, None, True, False),
    "mu": (0.0, 1.0, False, True),
}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class NonFiniteError(ValueError):
    """An input tensor holds NaN or inf (e.g. the activations of a diverged model)."""


def _checking_values() -> bool:
    return not torch.compiler.is_compiling()


def check_tensor(x, name: str, ndim=None, device=None) -> torch.Tensor:
    """Return ``x`` if it is a finite floating-point tensor of ``ndim`` dims on ``device``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but q is on {device}: put every input on "
                         "one device")
    if _checking_values() and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name} contains NaN or inf")
    return x


def check_range(x: torch.Tensor, name: str, low=None, high=None, low_open=False,
                high_open=False) -> None:
    """Raise ``ValueError`` naming ``name`` if an entry is outside the interval."""
    if not _checking_values():
        return
    lo_br, hi_br = ("(" if low_open else "["), (")" if high_open or high is None else "]")
    interval = (f"{lo_br}{low if low is not None else '-inf'}, "
                f"{high if high is not None else 'inf'}{hi_br}")
    if low is not None and bool((x <= low).any() if low_open else (x < low).any()):
        raise ValueError(f"{name} must be in {interval}, got min {x.min().item():.6g}")
    if high is not None and bool((x >= high).any() if high_open else (x > high).any()):
        raise ValueError(f"{name} must be in {interval}, got max {x.max().item():.6g}")


def check_positive_int(x, name: str) -> int:
    """Return ``x`` as an int >= 1 or raise naming ``name``."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= 1, got {type(x).__name__}")
    if int(x) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {x}")
    return int(x)


@dataclass
class Inputs:
    """Validated inputs in the compute dtype, time after heads.

    ``q [B, H, T, d_k]``, ``k [B, H, T, d_k]`` (``[B, H, T, n, d_k]`` for multi-step GD),
    ``v`` likewise with ``d_v``, ``gates[name] [B, H, T, ...]``.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    gates: dict
    B: int
    T: int
    H: int
    dtype: torch.dtype  # compute dtype
    out_dtype: torch.dtype  # dtype of q: the output's dtype
    device: torch.device


def validate_inputs(config, q, k, v, gates) -> Inputs:
    """Check the arguments of a sequence op (as :func:`miras_ref.recurrent.validate_inputs`)."""
    for attr in ("memory", "bias", "retention", "algorithm"):
        if not hasattr(config, attr):
            raise TypeError(f"config must be a MirasConfig, got {type(config).__name__}")
    multi = isinstance(config.algorithm, MultiStepGD)
    q = check_tensor(q, "q", 4)
    device = q.device
    k = check_tensor(k, "k", 5 if multi else 4, device)
    v = check_tensor(v, "v", 5 if multi else 4, device)
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but q has {q.dtype}: q, k and v must "
                            "share one dtype")
    B, T, H = check_qkv_shapes(config, q.shape, k.shape, v.shape)
    mem = config.memory
    dtype = compute_dtype(q.dtype)

    if gates is not None and not isinstance(gates, dict):
        raise TypeError(f"gates must be a dict of tensors, got {type(gates).__name__}")
    given = dict(gates or {})
    unknown = set(given) - set(GATE_RANGES)
    if unknown:
        raise ValueError(f"gates has unknown keys {sorted(unknown)}; expected some of "
                         f"{sorted(GATE_RANGES)}")
    out = {}
    for name in config.required_gates:
        label = f"gates['{name}']"
        if name in given:
            g = check_tensor(given[name], label, device=device)
        else:
            g = torch.as_tensor(config.default_gates(B, T, H)[name], device=device)
        if tuple(g.shape[:3]) != (B, T, H):
            raise ValueError(f"{label} must start with [B, T, H] = {(B, T, H)}, "
                             f"got shape {tuple(g.shape)}")
        extra = tuple(g.shape[3:])
        allowed = [(), (mem.d_v if name == "delta" else mem.d_k,)]
        if name == "alpha" and isinstance(mem, MatrixMemory):
            allowed.append((mem.d_v, mem.d_k))
        if isinstance(config.algorithm, ClosedForm):
            allowed = [()]
        if extra not in allowed:
            raise ValueError(f"{label} must have shape [B, T, H] + one of {allowed}, "
                             f"got {tuple(g.shape)}")
        check_range(g, label, *GATE_RANGES[name])
        out[name] = g.to(dtype).movedim(2, 1)  # [B, H, T, ...]
    if config.key_from_alpha:
        if out["alpha"].ndim != 4:
            raise ValueError("gates['alpha'] must be channel-wise [B, T, H, d_k] for HGRN2")
        k = (1.0 - out["alpha"]).movedim(1, 2)  # HGRN2: k_t = 1 - α_t
    out_dtype = q.dtype
    q, k, v = (x.to(dtype).movedim(2, 1) for x in (q, k, v))
    return Inputs(q, k, v, out, B, T, H, dtype, out_dtype, device)


def initial_memory_state(config, initial_state, inp: Inputs, default) -> dict:
    """Check a given ``initial_state`` (keys and shapes of the state ``default()`` would build)
    and return it in the compute dtype; return ``default()`` if none is given.

    ``default`` is a callable so that a given state never builds the default one (the MLP's
    seeded NumPy init would break a ``torch.compile`` graph).
    """
    if initial_state is None:
        return default()
    if not isinstance(initial_state, dict):
        raise TypeError("initial_state must be a dict of tensors (a final_state of a previous "
                        "call)")
    if isinstance(config.algorithm, NonParametric):
        if set(initial_state) != {"K", "V"}:
            raise ValueError("initial_state must be a dict with keys 'K' and 'V' for attention")
        kk = check_tensor(initial_state["K"], "initial_state['K']", 4, inp.device)
        vv = check_tensor(initial_state["V"], "initial_state['V']", 4, inp.device)
        if (kk.shape[:3] != vv.shape[:3] or tuple(kk.shape[:2]) != (inp.B, inp.H)
                or kk.shape[-1] != config.memory.d_k or vv.shape[-1] != config.memory.d_v):
            raise ValueError("initial_state['K'] and ['V'] must be [B, H, S, d_k] and "
                             "[B, H, S, d_v] with matching S")
        return {"K": kk.to(inp.dtype), "V": vv.to(inp.dtype)}
    expected = state_shapes(config, inp.B, inp.H)
    if set(initial_state) != set(expected):
        raise ValueError(f"initial_state must have keys {sorted(expected)}, "
                         f"got {sorted(initial_state)}")
    state = {}
    for n, shape in expected.items():
        a = check_tensor(initial_state[n], f"initial_state['{n}']", device=inp.device)
        if tuple(a.shape) != shape:
            raise ValueError(f"initial_state['{n}'] must have shape {shape}, "
                             f"got {tuple(a.shape)}")
        state[n] = a.to(inp.dtype)
    return state


def state_shapes(config, B: int, H: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the state of a parametric or closed-form configuration."""
    alg = config.algorithm
    if isinstance(alg, ClosedForm):
        dk, dv = config.memory.d_k, config.memory.d_v
        return {"P": (B, H, dv, dk), "Q": (B, H, dk, dk)}
    shapes = {n: (B, H, *s) for n, s in config.memory.shapes.items()}
    if isinstance(alg, Momentum):
        shapes.update({"mom_" + n: s for n, s in list(shapes.items())})
    return shapes
