"""Shared fixtures for the miras_ref tests: a seeded RNG and a central-difference gradient."""

from __future__ import annotations

import numpy as np
import pytest

SEED = 20250417


def central_difference_grad(f, x, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of a scalar function ``f`` at the float64 array ``x``.

    ``∂f/∂x_i ≈ (f(x + ε e_i) - f(x - ε e_i)) / (2ε)``, one pair of evaluations per entry;
    ``x`` is not modified. The truncation error is ``O(ε²)`` and the rounding error
    ``O(ulp(f) / ε)``, so about 1e-9 relative for smooth ``f`` of order one and ``ε = 1e-6``.
    """
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        f_plus = float(f(x))
        flat[i] = orig - eps
        f_minus = float(f(x))
        flat[i] = orig
        gflat[i] = (f_plus - f_minus) / (2.0 * eps)
    return grad


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded float64 generator for each test (results do not depend on test order)."""
    return np.random.default_rng(SEED)


@pytest.fixture
def fd_grad():
    """The central-difference helper ``fd_grad(f, x, eps=1e-6)`` (see above)."""
    return central_difference_grad
