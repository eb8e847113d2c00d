"""Packed variable-length sequences (``cu_seqlens``) for ``scan_chunked``, on any backend.

Several sequences of different lengths are packed along time into one batch row
(``B = 1``): sequence ``j`` is tokens ``cu_seqlens[j]:cu_seqlens[j+1]``. Each sequence starts
from its own initial state (the default one, or ``initial_state[...][j]`` when an initial
state with ``N = len(cu_seqlens) - 1`` rows is given), so no memory leaks across a boundary,
and each one is chunked from its own first token (chunks never straddle a boundary, and
Memora's lag token is the first token of each sequence's chunks).

Implementation: split at the boundaries, run the op on each sequence, concatenate the outputs
along time and stack the final states into ``N`` rows. This is exactly "separate calls", which
is what ``tests`` check it against; it is not a fused varlen kernel.
"""

from __future__ import annotations

import numbers

from .backends import array_kind


def check_cu_seqlens(cu_seqlens, batch: int, length: int) -> list[int]:
    """Validate ``cu_seqlens`` against ``q [B, T, ...]``; return it as a list of ints.

    It must be a 1-D sequence of integers starting at 0, strictly increasing, ending at ``T``,
    and ``B`` must be 1.
    """
    if array_kind(cu_seqlens) == "torch":
        if cu_seqlens.is_floating_point() or cu_seqlens.is_complex():
            raise TypeError(f"cu_seqlens must hold integers, got dtype {cu_seqlens.dtype}")
        cu_seqlens = cu_seqlens.detach().cpu().tolist()
    elif hasattr(cu_seqlens, "tolist"):  # numpy
        import numpy as np

        arr = np.asarray(cu_seqlens)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"cu_seqlens must hold integers, got dtype {arr.dtype}")
        cu_seqlens = arr.tolist()
    if not isinstance(cu_seqlens, (list, tuple)):
        raise TypeError(f"cu_seqlens must be a 1-D sequence of integers, "
                        f"got {type(cu_seqlens).__name__}")
    if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool)
               for c in cu_seqlens):
        raise TypeError("cu_seqlens must be a 1-D sequence of integers")
    bounds = [int(c) for c in cu_seqlens]
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != length:
        raise ValueError(f"cu_seqlens must start at 0 and end at T = {length}, got {bounds}")
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens must be strictly increasing, got {bounds}")
    if batch != 1:
        raise ValueError(f"q must have batch size B = 1 with cu_seqlens, got B = {batch}")
    return bounds


def split_scan(op, config, q, k, v, gates, chunk_size, initial_state, output_final_state,
               cu_seqlens, cat, **kwargs):
    """Run ``op`` on each packed sequence (see the module docstring).

    Parameters
    ----------
    op : callable
        ``scan_chunked`` of one backend.
    cat : callable
        ``cat(list_of_arrays, axis)``: ``numpy.concatenate`` or ``torch.cat``.

    Returns ``(y [1, T, H, d_v], final_state with N rows or None)``.
    """
    bounds = check_cu_seqlens(cu_seqlens, len(q), q.shape[1])
    n_seq = len(bounds) - 1
    if initial_state is not None:
        if not isinstance(initial_state, dict):
            raise TypeError("initial_state must be a dict of arrays")
        for name, a in initial_state.items():
            if a.shape[0] != n_seq:
                raise ValueError(f"initial_state[{name!r}] must have N = {n_seq} rows (one per "
                                 f"sequence of cu_seqlens), got shape {tuple(a.shape)}")
    qs, ks, vs = (_pieces(x, bounds, 1) for x in (q, k, v))
    gs = None if gates is None else {n: _pieces(a, bounds, 1) for n, a in gates.items()}
    inits = None if initial_state is None else {
        n: _pieces(a, list(range(n_seq + 1)), 0) for n, a in initial_state.items()}
    ys, finals = [], []
    for j in range(n_seq):
        g = None if gs is None else {n: a[j] for n, a in gs.items()}
        init = None if inits is None else {n: a[j] for n, a in inits.items()}
        y, final = op(config, qs[j], ks[j], vs[j], gates=g, chunk_size=chunk_size,
                      initial_state=init, output_final_state=output_final_state, **kwargs)
        ys.append(y)
        finals.append(final)
    y = cat(ys, 1)
    if not output_final_state:
        return y, None
    return y, {n: cat([f[n] for f in finals], 0) for n in finals[0]}


def _pieces(x, bounds: list[int], axis: int):
    """``x`` cut at ``bounds`` along ``axis``: ``x[..., bounds[j]:bounds[j+1], ...]`` for each
    ``j``. A torch tensor that spans the bounds is cut by one split, whose backward
    concatenates the pieces' gradients once (a slice per piece would add a zero-padded
    full-size gradient per piece); anything else is sliced, so a mis-sized input reaches the
    op's own checks."""
    if array_kind(x) == "torch" and x.ndim > axis and x.shape[axis] == bounds[-1]:
        return x.split([e - s for s, e in zip(bounds, bounds[1:])], dim=axis)
    lead = (slice(None),) * axis
    return [x[lead + (slice(s, e),)] for s, e in zip(bounds, bounds[1:])]


def numpy_scan_chunked(config, q, k, v, gates=None, chunk_size=64, initial_state=None,
                       output_final_state=False, cu_seqlens=None):
    """:func:`miras_ref.scan_chunked` plus ``cu_seqlens`` (the ``numpy`` backend's op)."""
    import numpy as np

    import miras_ref

    if cu_seqlens is None:
        return miras_ref.scan_chunked(config, q, k, v, gates, chunk_size, initial_state,
                                      output_final_state)
    q, k, v = (np.asarray(x) for x in (q, k, v))
    gates = None if gates is None else {n: np.asarray(a) for n, a in gates.items()}
    initial_state = None if initial_state is None else {
        n: np.asarray(a) for n, a in initial_state.items()}
    return split_scan(miras_ref.scan_chunked, config, q, k, v, gates, chunk_size,
                      initial_state, output_final_state, cu_seqlens, np.concatenate)
