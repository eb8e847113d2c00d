"""The ``triton`` backend: fused chunk kernels for MIRAS memories (Sec 5.4, Eq 28-32).

``scan_chunked`` and ``scan`` have the signatures and semantics of :mod:`miras_gpu.torch`
(the twin of :func:`miras_ref.scan_chunked`); see :mod:`miras_gpu.triton.chunked` for what
runs as a Triton kernel and what falls back to torch, and docs/kernels.md for the algorithm.

Triton's CPU interpreter needs ``TRITON_INTERPRET=1`` in the environment *before* this package
is imported (the kernels are defined at import).
"""

from .chunked import TritonFallbackWarning, plan_for, scan, scan_chunked

__all__ = ["TritonFallbackWarning", "plan_for", "scan", "scan_chunked"]
