"""Several programs per batch row and head: the hidden axis split across ``SPLIT`` programs.

The MLP memory's sequential kernels (:func:`~miras_gpu.triton.mlp.mlp_state_kernel`,
:func:`~miras_gpu.triton.mlp.mlp_backward_state_kernel`) walk the segments of one batch row
and head in order, so their grid is ``B·H``: at ``B·H = 64`` half of an H100's or H200's 132
SMs idle, and each program's time grows with the hidden size ``Ed``. With ``SPLIT > 1`` the
grid is ``B·H·SPLIT``: program ``p`` of a row and head owns the hidden blocks
:func:`part_blocks` gives it (its share of ``W1``'s columns and ``W2``'s rows, in every slot),
and the sums over the hidden axis (``Â A1ᵀ``, the norms and softmax statistics of the link,
the gradients of the inputs) are *exchanged*: each program stores its partial sum
(:func:`put`), all meet at a barrier (:func:`arrive`), and each adds up every part in the same
order (:func:`total`), so all hold bit-identical sums.

Exchange ``n`` (counted from 0 through the whole launch) uses one of two regions per row and
head, ``[2, SPLIT, XS]`` floats, by the parity of ``n``: a program can write exchange
``n + 1``'s region while its partner still reads exchange ``n``'s, and cannot reach exchange
``n + 2`` (the same region) before every partner has passed exchange ``n + 1``, that is, has
read exchange ``n``. The barrier is a counter per row and head (zero at launch) that every
program increments at each exchange; exchange ``n`` waits for ``SPLIT (n + 1)``.

A barrier across programs needs them resident at once: the launcher splits only where
``B·H·SPLIT`` programs fit on the device's SMs, and never under the CPU interpreter, which
runs programs one after another (there ``SPLIT`` is 1 and every function here is the
identity or does nothing).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def split_program(SPLIT: tl.constexpr):
    """``(bh, part)``: the batch row and head (int64) and this program's part of the hidden
    axis; program ``bh·SPLIT + part`` (the parts of one row and head are adjacent)."""
    pid = tl.program_id(0)
    return (pid // SPLIT).to(tl.int64), pid % SPLIT


@triton.jit
def part_blocks(NB, part, SPLIT: tl.constexpr):
    """The hidden blocks ``[j0, j1)`` of ``part``: ``ceil(NB / SPLIT)`` consecutive blocks."""
    per = tl.cdiv(NB, SPLIT)
    j0 = part * per
    return j0, tl.minimum(j0 + per, NB)


@triton.jit
def region(bh, n, XS, SPLIT: tl.constexpr):
    """Offset of exchange ``n``'s region of row and head ``bh`` (``[SPLIT, XS]`` floats)."""
    return (bh * 2 + n % 2) * SPLIT * XS


@triton.jit
def put(x_ptr, reg, part, XS, off, x, SPLIT: tl.constexpr):
    """Store this part's partial ``x`` (any shape; ``off``: its offsets, the same shape)."""
    if SPLIT > 1:
        tl.store(x_ptr + reg + part * XS + off, x)


@triton.jit
def arrive(cnt_ptr, bh, n, SPLIT: tl.constexpr):
    """Barrier of exchange ``n``: return once every part of ``bh`` has stored its partials."""
    if SPLIT > 1:
        tl.debug_barrier()  # this program's stores precede its arrival
        tl.atomic_add(cnt_ptr + bh, 1, sem="release", scope="gpu")
        while tl.atomic_add(cnt_ptr + bh, 0, sem="acquire", scope="gpu") < SPLIT * (n + 1):
            pass
        tl.debug_barrier()


@triton.jit
def part_of(x_ptr, reg, p, XS, off):
    """Part ``p``'s partial at ``off`` (read past the L1 cache, which other SMs' stores do not
    update)."""
    return tl.load(x_ptr + reg + p * XS + off, cache_modifier=".cg")


@triton.jit
def total(x_ptr, reg, XS, off, x, SPLIT: tl.constexpr):
    """``Σ_p`` of every part's partial at ``off``, in the order of the parts (``x`` itself
    where ``SPLIT`` is 1)."""
    if SPLIT > 1:
        x = part_of(x_ptr, reg, 0, XS, off)
        for p in tl.static_range(1, SPLIT):
            x += part_of(x_ptr, reg, p, XS, off)
    return x


@triton.jit
def all_sum(x_ptr, cnt_ptr, bh, part, n, XS, off, x, SPLIT: tl.constexpr):
    """Exchange ``n`` of one partial ``x`` (offsets ``off``, the same shape): :func:`put`,
    :func:`arrive`, :func:`total`. Returns every part's sum and the next exchange's number."""
    if SPLIT > 1:
        reg = region(bh, n, XS, SPLIT)
        put(x_ptr, reg, part, XS, off, x, SPLIT)
        arrive(cnt_ptr, bh, n, SPLIT)
        x = total(x_ptr, reg, XS, off, x, SPLIT)
        n += 1
    return x, n


@triton.jit
def stored_by(t, s0, s1, part):
    """Which tokens ``t`` of the segment ``[s0, s1)`` this program stores the per-token
    results of: all for part 0, none for the others (every part holds the same values)."""
    return t < tl.where(part == 0, s1, s0)
