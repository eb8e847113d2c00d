"""miras_gpu: the MIRAS op API of :mod:`miras_ref` on several backends.

``scan`` and ``scan_chunked`` take the same arguments as :func:`miras_ref.scan` and
:func:`miras_ref.scan_chunked` (a :class:`miras_ref.MirasConfig` from :mod:`miras_ref.zoo`,
``q, k [B, T, H, d_k]``, ``v [B, T, H, d_v]``, per-token gates, ``initial_state``,
``output_final_state``) plus ``backend=``, and run on the backend chosen by
:mod:`miras_gpu.backends` (per call > :func:`use_backend` > ``MIRAS_BACKEND`` > input type).

Importing this package imports neither torch, triton nor cupy.
"""

from __future__ import annotations

from .backends import (
    BACKENDS,
    Backend,
    BackendUnavailableError,
    available_backends,
    get_backend,
    use_backend,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "scan",
    "scan_chunked",
    "use_backend",
]


def scan(config, q, k, v, gates=None, initial_state=None, output_final_state=False,
         backend=None):
    """The exact (token-by-token) MIRAS recurrence on the chosen backend.

    Same arguments and returns as :func:`miras_ref.scan`, plus ``backend`` (a name from
    :data:`BACKENDS`; ``None`` picks one as :mod:`miras_gpu.backends` describes).

    Returns ``(y [B, T, H, d_v], final_state or None)`` in the array type of the inputs.
    """
    from . import backends

    return backends.call("scan", config, q, k, v, gates, initial_state, backend,
                         output_final_state=output_final_state)


def scan_chunked(config, q, k, v, gates=None, chunk_size=64, initial_state=None,
                 output_final_state=False, backend=None, cu_seqlens=None, **options):
    """The chunk-parallel MIRAS form (Eq 28-32) on the chosen backend.

    Same arguments and returns as :func:`miras_ref.scan_chunked`, plus

    backend : str, optional
        Backend name (see :func:`scan`).
    cu_seqlens : sequence of int, optional
        Packed variable-length sequences with ``B = 1`` (see :mod:`miras_gpu.varlen`).
    **options
        Backend-specific keywords (e.g. ``checkpoint=True`` for ``torch``).
    """
    from . import backends

    return backends.call("scan_chunked", config, q, k, v, gates, initial_state, backend,
                         chunk_size=chunk_size, output_final_state=output_final_state,
                         cu_seqlens=cu_seqlens, **options)
