"""The MIRAS ops in PyTorch: autograd-differentiable, CPU and CUDA (the ``torch`` backend).

Each module is the twin of a :mod:`miras_ref` module, keyed on the reference classes
(a dispatch table from each ``miras_ref`` class to its torch function):

===================  ===========================  ==========================================
module               twin of                      contents
===================  ===========================  ==========================================
``memory``           ``miras_ref.memory``         matrix, vector, 2-layer MLP (analytic VJP)
``bias``             ``miras_ref.bias``           every attentional bias's gradient
``retention``        ``miras_ref.retention``      links/updates of the retention gates
``algorithms``       ``miras_ref.algorithms``     GD, momentum, implicit GD, multi-step GD,
                                                  closed form (Mesa), softmax attention
``scan``             ``miras_ref.recurrent``      the token-by-token recurrence
``chunked``          ``miras_ref.chunked``        the chunk-parallel form (Eq 28-32)
===================  ===========================  ==========================================

Precision: float64 inputs compute in float64; float32/bfloat16 inputs keep the memory state
and all reductions in float32 and return outputs in the input dtype.

Not implemented in torch (a ``ValueError`` says so; use ``backend="numpy"``): the
f-divergence retention gate (Eq 18) and implicit GD beyond the matrix memory with ℓ2 bias.
"""

from .chunked import scan_chunked
from .scan import scan

__all__ = ["scan", "scan_chunked"]
