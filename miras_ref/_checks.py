"""Input validation shared by the public functions of :mod:`miras_ref`.

Every public op validates its arguments before computing anything, so bad input gets a
``ValueError``/``TypeError`` that names the argument and what was expected, instead of a
broadcasting error deep inside a loop or a silent NaN.
"""

from __future__ import annotations

import numbers

import numpy as np


def as_array(x, name: str, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Return ``x`` as a finite float64 array, or raise naming ``name``.

    Parameters
    ----------
    x : array_like
        The argument.
    name : str
        Its name in the public signature, used in the error message.
    ndim : int or tuple of int, optional
        Allowed numbers of dimensions.
    """
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a real array, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except Exception as err:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} must be a real array, got {type(x).__name__}") from err
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(f"{name} must be a real (float or int) array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def as_scalar(x, name: str, low: float | None = None, high: float | None = None,
              low_open: bool = False, high_open: bool = False) -> float:
    """Return ``x`` as a finite float within [low, high] (or open ends), or raise."""
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not np.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    check_range(np.asarray(x), name, low, high, low_open, high_open)
    return x


def check_range(arr: np.ndarray, name: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` if any entry is NaN/inf or outside the interval."""
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    if low is not None:
        bad = arr <= low if low_open else arr < low
        if np.any(bad):
            br = "(" if low_open else "["
            raise ValueError(
                f"{name} must be in {br}{low}, {high if high is not None else 'inf'}"
                f"{')' if high_open or high is None else ']'}, got min {np.min(arr):.6g}"
            )
    if high is not None:
        bad = arr >= high if high_open else arr > high
        if np.any(bad):
            br = ")" if high_open else "]"
            raise ValueError(
                f"{name} must be in {'(' if low_open else '['}"
                f"{low if low is not None else '-inf'}, {high}{br}, got max {np.max(arr):.6g}"
            )


def check_positive_int(x, name: str) -> int:
    """Return ``x`` as an int >= 1 or raise naming ``name``."""
    if isinstance(x, bool) or not isinstance(x, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer >= 1, got {type(x).__name__}")
    if int(x) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {x}")
    return int(x)
