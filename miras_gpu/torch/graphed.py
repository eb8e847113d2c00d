"""The whole chunk loop of one call shape replayed as two CUDA graphs (forward and backward).

With the paper's chunk form (Eq 28-32) the chunks of a sequence run one after another, and each
chunk is tens of small kernels on ``B·H`` small matrices. On a GPU the launches, not the
arithmetic, then set the speed: compiling the chunk step fuses its kernels, and replaying each
chunk as its own CUDA graph (``compile_chunks="reduce-overhead"``) still pays Python and
guard overhead once per chunk. Here :func:`torch.cuda.make_graphed_callables` captures the
whole loop, compiled chunk steps included, once per call shape; a call then copies its inputs
into the graph's static inputs and replays one forward graph, and its backward replays one
backward graph. The values are those of :func:`miras_gpu.torch.chunked.chunked_forward`. Without
gradients (inference, ``torch.no_grad``) the loop is one forward graph.

The cost: one capture (and compilation) per distinct shape, dtype and ``requires_grad``
pattern, and the graph keeps its activations in a private memory pool for as long as it is
cached (:func:`clear_graphs` frees them). The ``triton`` backend captures its torch
recomputation of the backward pass the same way (:func:`graphed_call`, one graph without
autograd around it).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .chunked import chunked_forward

_GRAPHED: dict[tuple, tuple] = {}
#: the captures of :func:`graphed_call`, least recently used first
_CALLS: OrderedDict[tuple, tuple] = OrderedDict()
#: captures :func:`graphed_call` keeps (each holds its memory pool): calls of many shapes (the
#: sequences of a ``cu_seqlens`` batch are one call each) replace the least recently used
MAX_CALL_GRAPHS = 8
#: calls of one key that :func:`graphed_call` runs op by op before it captures the key: a shape
#: met once (the sequences of a ``cu_seqlens`` batch of new lengths) never pays a capture
CAPTURE_AFTER = 1
#: the keys met fewer than ``CAPTURE_AFTER`` times, and how often (the last 256)
_SEEN: OrderedDict[tuple, int] = OrderedDict()


def clear_graphs() -> None:
    """Drop every captured graph (and the memory its pool holds)."""
    _GRAPHED.clear()
    _CALLS.clear()
    _SEEN.clear()


def _equal(a, b) -> bool:
    """``a == b`` for configurations, False where the comparison fails (array fields)."""
    try:
        return a is b or bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


def _signature(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.dtype, t.device, t.requires_grad


def graphed_chunked_forward(config, q, k, v, gates: dict, z: dict, chunk_size: int,
                            checkpoint: bool = False, norm_precision: str | None = None):
    """:func:`~miras_gpu.torch.chunked.chunked_forward` through a cached CUDA-graph capture.

    Same arguments and returns (``q, k [B, H, T, d_k]``, ``v [B, H, T, d_v]``, gates
    ``[B, H, T, ...]``, state ``z``, ``norm_precision``; returns ``(y [B, H, T, d_v], final
    state)``), on CUDA tensors. The returned tensors are copies: the next replay overwrites
    the graph's outputs.
    """
    if q.device.type != "cuda":
        raise ValueError(f"compile_chunks='graphs' captures CUDA graphs and needs CUDA tensors; "
                         f"q is on {q.device}")
    gate_names, state_names = sorted(gates), list(z)
    flat = [q, k, v, *(gates[n] for n in gate_names), *(z[n] for n in state_names)]
    training = torch.is_grad_enabled() and any(t.requires_grad for t in flat)
    key = (id(config), chunk_size, checkpoint and training, training, norm_precision,
           tuple(gate_names),
           tuple(state_names), tuple(_signature(t) for t in flat))
    entry = _GRAPHED.get(key)
    if entry is None or entry[0] is not config:
        n_gates = len(gate_names)

        def loop(*args):
            gs = dict(zip(gate_names, args[3:3 + n_gates]))
            zs = dict(zip(state_names, args[3 + n_gates:]))
            y, zt = chunked_forward(config, *args[:3], gs, zs, chunk_size, checkpoint,
                                    compile_chunks=True, norm_precision=norm_precision)
            return (y, *(zt[n] for n in state_names))

        # the capture reads its static inputs from these (contiguous: inputs are copied in)
        samples = tuple(t.detach().clone().requires_grad_(t.requires_grad and training)
                        for t in flat)
        graphed = (torch.cuda.make_graphed_callables(loop, samples) if training
                   else capture(loop, samples))
        entry = (config, graphed)
        _GRAPHED[key] = entry
    outs = entry[1](*flat)
    return outs[0].clone(), {n: o.clone() for n, o in zip(state_names, outs[1:])}


def capture(fn, samples: tuple):
    """``fn(*samples)`` captured as one CUDA graph, outside autograd (the no-gradient twin of
    :func:`torch.cuda.make_graphed_callables`; ``fn`` may still differentiate its own
    leaves with :func:`torch.autograd.grad`). ``fn`` returns a tuple of tensors (or None).
    A call of the returned function copies its tensors into ``samples`` and replays the
    graph; the tensors it returns are the graph's, overwritten by the next replay."""
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and warm up outside the capture
            for _ in range(2):
                fn(*samples)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = fn(*samples)

    def replay(*args):
        for static, x in zip(samples, args):
            static.copy_(x)
        graph.replay()
        return outs

    return replay


def graphed_call(key: tuple, config, fn, tensors: tuple) -> tuple:
    """``fn(*tensors)`` (a tuple of tensors or None) through a capture cached under
    ``(config, key, the tensors' shapes, dtypes and devices)``; the returned tensors are
    copies. ``fn`` must depend on nothing but its arguments, the value of ``config`` and what
    ``key`` names. The first :data:`CAPTURE_AFTER` calls of a key run ``fn`` op by op; the
    next one captures it.

    Equal configurations share a capture (the layers of a model each build their own config
    object): a call copies its tensors in and its results out, so unlike the autograd graphs
    of :func:`graphed_chunked_forward` nothing of one call outlives it in the graph."""
    key = (repr(config), *key, tuple(_signature(t) for t in tensors))
    entry = _CALLS.get(key)
    if entry is None or not _equal(entry[0], config):
        seen = _SEEN.pop(key, 0)
        if seen < CAPTURE_AFTER:
            _SEEN[key] = seen + 1
            while len(_SEEN) > 256:
                _SEEN.popitem(last=False)
            return tuple(fn(*tensors))
        samples = tuple(t.detach().clone() for t in tensors)
        entry = (config, capture(fn, samples))
        _CALLS[key] = entry
        while len(_CALLS) > MAX_CALL_GRAPHS:
            _CALLS.popitem(last=False)
    _CALLS.move_to_end(key)
    return tuple(None if o is None else o.clone() for o in entry[1](*tensors))
