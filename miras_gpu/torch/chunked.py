"""Chunk-parallel MIRAS forward in torch (Sec 5.4, Eq 28-32): the twin of
:func:`miras_ref.scan_chunked`, with identical semantics.

The sequence is cut into chunks of ``C`` tokens (the last may be partial). Inside a chunk
every gradient is taken at the chunk's starting state ``W_{t'}`` (Eq 28), so the gate's state
unrolls into one masked sum (Eq 29):

``Z_t = (β_t/β_{t'}) Z_{t'} - Σ_{i=t'+1..t} η_i (β_t/β_i) ∇ℓ(W_{t'}; k_i, v_i)``,
``β_t = Π_{j<=t} α_j``,

with the decay/learning-rate mask ``η_i β_t/β_i`` computed in log space
(:func:`chunk_coefficients`). The link ``W = ψ(Z)`` is applied at the reads
``y_t = M(ψ(Z_t), q_t)`` (each query reads its own token's state) and at the chunk end, never
inside the recurrence; with ``config.link_at == "chunk"`` only at chunk starts, the queries
reading ``ψ(Z_{t'})`` after plain steps (Sec 5.4; read as an identity link, the first path
below). With ``config.lag_token`` (Memora, Eq 30-32) the first token of every
chunk takes an exact recurrent step and the rest of the chunk takes its gradients at that
state. Chunk size 1 equals the recurrence.

All per-token work of a chunk is vectorised (einsum/matmul over the chunk's tokens); the only
Python loop is over chunks. A chunk's *writes* (:func:`chunk_writes`: the anchor, the
per-token gradients, the masks, the end state) feed the next chunk; its *reads* do not. Three
read paths, side by side:

* **identity link** (ℓ2 retention) with a matrix or MLP memory: the read ``Z_t x_t`` is
  expanded as ``(β_t/β_{t'}) Z_{t'} x_t - Σ_i mask[t,i] (right_i·x_t) left_i`` using the
  rank-1 per-token gradients ``left_i right_i^T``, so no per-token state is formed (the dual
  form of TTT / linear attention); see :func:`outer_read`. A **scalar link**
  ``ψ(Z) = s(Z) Z`` (Moneta's simplified ℓq link, ``s = ‖Z‖_q^{2-q}``) reads the same way,
  ``ψ(Z_t) x_t = s_t (Z_t x_t)``; only the numbers ``s_t`` need the per-token states, which
  are formed inside a checkpoint and not kept (:func:`token_scales`), or, for 16-bit inputs
  on CUDA with scalar gates, never formed: a fused Triton op sums ``|Z_t|^q`` block by block
  (:mod:`miras_gpu.triton.token_norms`; a graph break under ``torch.compile``);
* **row-softmax KL link** (Memora) with scalar gates on CUDA: a fused Triton op steps each
  token's state in registers and reads through its row softmax, never storing the states
  (:mod:`miras_gpu.triton.softmax_reads`, :data:`FUSED_SOFTMAX_READS`);
* **any link** (ℓq exact, KL, elastic-net FTRL, sigmoid Bregman): the per-token states
  ``Z_t [B, H, C, *shape]`` are formed, ``ψ`` is applied to each, and each query reads its own
  weights. This costs ``C`` copies of the memory per chunk; ``checkpoint=True`` recomputes a
  chunk in the backward pass instead of keeping them.

The first three read paths form no per-token state, so the loop writes chunk after chunk and
reads :data:`READ_WINDOW` chunks at once, stacked on the batch axis (:func:`chunked_forward`).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from miras_ref.chunked import check_chunkable as ref_check_chunkable
from miras_ref.memory import MatrixMemory, MLPMemory
from miras_ref.retention import KLRetention

from . import algorithms as algs
from . import bias as biases
from . import memory as memories
from . import retention as retentions
from ._checks import check_positive_int, initial_memory_state, validate_inputs
from .memory import Dense, Outer
from .scan import default_state, read, scan


def chunk_coefficients(eta: torch.Tensor, alpha: torch.Tensor, own_ndim: int = 0):
    """The chunk's decay and learning-rate masks (Eq 28-29), in log space.

    Parameters
    ----------
    eta, alpha : Tensor ``[..., C, *g]``
        Gates of the chunk's ``C`` tokens; ``g`` are ``own_ndim`` trailing axes that
        broadcast against one memory parameter.

    Returns
    -------
    decay : Tensor ``[..., C, *g]``
        ``β_t / β_{t'} = Π_{j<=t} α_j`` from the chunk start.
    mask : Tensor ``[..., C, C, *g]``
        ``mask[t, i] = η_i β_t / β_i`` for ``i <= t``, 0 above the diagonal (``E_b ⊙ B_b``).
    """
    c_axis = alpha.ndim - own_ndim - 1
    log_beta = torch.cumsum(torch.log(alpha), dim=c_axis)  # log β_t
    C = alpha.shape[c_axis]
    causal = torch.ones(C, C, dtype=torch.bool, device=alpha.device).tril()
    causal = causal.reshape((C, C) + (1,) * own_ndim)
    diff = log_beta.unsqueeze(c_axis + 1) - log_beta.unsqueeze(c_axis)
    # mask[t, i] = η_i exp(log β_t - log β_i), i <= t
    mask = torch.exp(diff.masked_fill(~causal, float("-inf"))) * eta.unsqueeze(c_axis)
    return torch.exp(log_beta), mask


# --------------------------------------------------------------------------------------------
# contracting a mask with per-token gradients


def _gated(mask: torch.Tensor, lead: int, letters: str) -> tuple[torch.Tensor, str]:
    """Drop the broadcast (size-1) own axes of ``mask [*lead_axes, *g]``; return the mask and
    the letters of the axes it keeps (e.g. ``""`` scalar, ``"s"`` channel-wise on the input
    axis, ``"rs"`` element-wise)."""
    keep = "".join(a for a, n in zip(letters, mask.shape[lead:]) if n > 1)
    shape = tuple(mask.shape[:lead]) + tuple(n for n in mask.shape[lead:] if n > 1)
    return mask.reshape(shape), keep


def token_sum(mask: torch.Tensor, grad) -> torch.Tensor:
    """``S_t = Σ_{i<=t} mask[t, i] ⊙ G_i`` for every ``t``: ``[B, H, C, *shape]``.

    ``mask [B, H, C, C, *g]``; ``grad`` an :class:`Outer` (``G_i = left_i right_i^T``) or
    :class:`Dense` per-token gradient of one parameter.
    """
    if isinstance(grad, Dense):
        m, g = _gated(mask, 4, "d")
        return torch.einsum(f"bhti{g},bhid->bhtd", m, grad.g)
    m, g = _gated(mask, 4, "rs")
    if g == "s":  # contract the gated axis with `right` first: no [C, C, r, s] temporary
        return torch.einsum("bhtis,bhis,bhir->bhtrs", m, grad.right, grad.left)
    return torch.einsum(f"bhti{g},bhir,bhis->bhtrs", m, grad.left, grad.right)


def last_sum(mask_last: torch.Tensor, grad) -> torch.Tensor:
    """``Σ_i mask[C-1, i] ⊙ G_i`` (the chunk end): ``mask_last [B, H, C, *g]``."""
    if isinstance(grad, Dense):
        m, g = _gated(mask_last, 3, "d")
        return torch.einsum(f"bhi{g},bhid->bhd", m, grad.g)
    m, g = _gated(mask_last, 3, "rs")
    if g == "s":
        return torch.einsum("bhis,bhis,bhir->bhrs", m, grad.right, grad.left)
    return torch.einsum(f"bhi{g},bhir,bhis->bhrs", m, grad.left, grad.right)


def outer_read(z0, decay, mask, grad: Outer, x):
    """``Z_t x_t`` for every token of the chunk without forming ``Z_t`` (identity link).

    ``Z_t = decay_t ⊙ Z0 - Σ_{i<=t} mask[t, i] ⊙ left_i right_i^T`` (Eq 29), so
    ``Z_t x_t = (decay_t ⊙ Z0) x_t - Σ_i mask[t, i] ⊙ (right_i · x_t) left_i``.

    Shapes: ``z0 [B, H, r, s]``, ``decay [B, H, C, *g]``, ``mask [B, H, C, C, *g]``,
    ``left [B, H, C, r]``, ``right [B, H, C, s]``, ``x [B, H, C, s]`` -> ``[B, H, C, r]``.
    Scalar gates and channel-wise gates on either axis; not element-wise ones.
    """
    m, g = _gated(mask, 4, "rs")
    decay = decay.expand(tuple(decay.shape[:3]) + tuple(mask.shape[4:]))
    d, _ = _gated(decay, 3, "rs")
    if g == "":
        base = d[..., None] * (x @ z0.mT)
        return base - (m * (x @ grad.right.mT)) @ grad.left
    if g == "s":  # the gate scales the input axis
        base = (d * x) @ z0.mT
        scores = torch.einsum("bhtis,bhis,bhts->bhti", m, grad.right, x)
        return base - scores @ grad.left
    if g == "r":  # the gate scales the output axis
        base = d * (x @ z0.mT)
        return base - torch.einsum("bhtir,bhti,bhir->bhtr", m, x @ grad.right.mT, grad.left)
    raise ValueError("outer_read: element-wise gates need the per-token-state path")


def token_scales(config, z0: dict, coeffs: dict, grads: dict, gates: dict,
                 norm_precision: str | None = None) -> dict | None:
    """``s_t = s(Z_t)`` of a scalar link ``ψ(Z) = s(Z) Z`` for every token of the chunk, per
    parameter, as pairs ``(m, ŝ)`` with ``s = ŝ / m`` (:func:`miras_gpu.torch.retention.
    lq_scale`), each ``[B, H, C, 1, ..., 1]``; None when the link is the identity.

    ``s`` needs the whole state ``Z_t = (β_t/β_{t'}) Z_{t'} - Σ_i mask[t, i] G_i`` (Eq 29) of
    every token. It is formed inside a checkpoint: autograd keeps only the chunk's inputs and
    forms the states again in the backward pass, so no ``[B, H, C, *shape]`` tensor outlives
    this call. With scalar gates and a ``norm_precision`` (:func:`fused_precision`) the sums
    come from a fused Triton op instead, which forms no state at all and starts every block of
    :data:`NORM_BLOCK` tokens from its own state, unrolled with the gates
    ``gates[n] = (η, α) [B, H, C, *g]``.
    """
    ret = config.retention
    scale = retentions.scalar_link(ret)
    if scale is None:
        return None
    out = {}
    for n, nd in algs.own_ndims(config).items():
        grad = grads[n]
        fused = _fused_norms(ret, z0[n], *coeffs[n], grad, gates[n], norm_precision)
        if fused is not None:
            u, n_t = fused
            out[n] = (u, retentions.lq_scale_of_norm(ret, u, n_t))
            continue
        factors = [getattr(grad, f.name) for f in dataclasses.fields(grad)]
        fn = functools.partial(_token_scale, scale, ret, nd, type(grad))
        out[n] = _checkpoint(fn, z0[n], *coeffs[n], *factors, use_reentrant=False)
    return out


#: Moneta's per-token sums ``Σ|Z_t|^q`` by the Triton op
#: :func:`miras_gpu.triton.token_norms.token_power_sums` (states never formed), for scalar
#: gates: ``None`` for 16-bit inputs on CUDA when Triton imports, ``True`` for every input
#: (float32 ones and the CPU under ``TRITON_INTERPRET=1`` included, for tests), ``False``
#: never.
FUSED_POWER_SUMS: bool | None = None
#: ``tl.dot`` precision of that op (:data:`miras_gpu.triton.token_norms.PRECISIONS`) for every
#: call; ``None``: :func:`fused_precision` picks one per call
FUSED_PRECISION: str | None = None
#: tokens per block of that op: a chunk longer than this is cut into blocks, each started from
#: its own state (formed by torch), so each token's state costs a rank-``NORM_BLOCK`` product
#: instead of a rank-``C`` one (:func:`_block_starts`); ``None``: one block per chunk
NORM_BLOCK: int | None = 16


def fused_precision(input_dtype: torch.dtype, device: torch.device) -> str | None:
    """The ``tl.dot`` precision of the fused op for inputs of ``input_dtype`` on ``device``,
    or None where the op is not used (:data:`FUSED_POWER_SUMS`).

    One TF32 product for 16-bit inputs (it moves the sums by about 1e-7 and their gradients by
    about 1e-3, relative, measured on an H200: within the bounds of 16-bit inputs), full
    float32 for the others (:data:`FUSED_PRECISION` overrides both). Float32 inputs form the
    states by default: the op's float32 backward runs on the FMA units and is slower there.
    """
    half = input_dtype in (torch.bfloat16, torch.float16)
    if FUSED_POWER_SUMS is False or (FUSED_POWER_SUMS is None
                                     and not (half and device.type == "cuda")):
        return None
    return FUSED_PRECISION or ("tf32" if half else "ieee")


@functools.cache
def _token_norms_module():
    try:
        from ..triton import token_norms
    except ImportError:
        return None
    return token_norms


def _fused_norms(ret, z0, decay, mask, grad, gates, precision: str | None):
    """``‖Z_t‖_q = u_t n_t`` as ``(u, n) [B, H, C, 1, 1]`` (``u`` a constant bound of the
    entries, :func:`_entry_bound`) by the fused Triton op at ``tl.dot`` precision
    ``precision`` (None: not used) for scalar gates and a rank-1 gradient, else None.

    ``z0 [B, H, r, s]``, ``decay [B, H, C, 1, 1]``, ``mask [B, H, C, C, 1, 1]``, ``grad`` an
    :class:`Outer` with ``left [B, H, C, r]``, ``right [B, H, C, s]``, ``gates = (η, α)
    [B, H, C, 1, 1]`` (the blocks of :func:`_block_starts`).
    """
    if (precision is None or not isinstance(grad, Outer) or ret.q <= 1
            or z0.dtype != torch.float32):
        return None
    m, g = _gated(mask, 4, "rs")
    d, gd = _gated(decay, 3, "rs")
    ops = None if g or gd else _token_norms_module()  # Triton imported only when used
    if ops is None:
        return None
    B, H, C = m.shape[:3]
    shape = (B, H, C) + (1,) * (z0.ndim - 2)
    left, right = grad.left, grad.right
    if NORM_BLOCK is not None and C > NORM_BLOCK:
        eta, alpha = (_gated(a, 3, "rs")[0] for a in gates)  # [B, H, C]
        z0, d, m, left, right = _block_starts(z0, d, m, left, right, eta, alpha, NORM_BLOCK)
    # lead axes [B, H] (or [B, H, k]) flattened into the op's N
    z0, d, m, left, right = (z0.flatten(0, -3), d.flatten(0, -2), m.flatten(0, -3),
                             left.flatten(0, -3), right.flatten(0, -3))
    u = _entry_bound(z0, d, m, left, right)[:, None, None]
    # ‖Z_t‖_q = u (Σ|Z_t/u|^q)^{1/q}, Z_t/u unrolled from Z0/u with the factors l_i/u
    total = ops.token_power_sums(z0 / u, d, m, left / u, right, float(ret.q), precision)
    u = u[:, :, 0].expand_as(total)

    def tokens(x):  # [N, C'] -> [B, H, C, 1, ..., 1]
        return x.reshape(B, H, -1)[:, :, :C].reshape(shape)

    return tokens(u), tokens(retentions.root(total, ret.q))


def _entry_bound(z0, decay, mask, left, right) -> torch.Tensor:
    """A constant ``u [N] > 0`` with ``|Z_t[r, s]| <= u`` for every token and entry
    (Eq 29: ``|Z_t| <= d_t max|Z0| + Σ_i m[t, i] max|l_i| max|r_i|``), so that the op's
    ``Σ|Z_t/u|^q`` stays below ``r·s`` however large the states grow (``Σ|Z_t|^q`` itself
    overflows float32 once ``|Z_t|`` passes ``1e38^{1/q}``: 1e9 for Moneta's ``q = 4``).
    ``z0 [N, r, s]``, ``decay [N, C]``, ``mask [N, C, C]``, ``left [N, C, r]``, ``right [N, C,
    s]``."""
    with torch.no_grad():
        rank1 = left.abs().amax(-1) * right.abs().amax(-1)  # [N, C]
        top = decay.abs() * z0.abs().amax((-2, -1))[:, None] + (
            mask.abs() @ rank1[..., None])[..., 0]
        u = top.amax(-1)
        return torch.where(u > 0, u, torch.ones_like(u))


def _block_starts(z0, decay, mask, left, right, eta, alpha, block: int):
    """The chunk's tokens as ``k = ⌈C / block⌉`` blocks, each with its own starting state, for
    :func:`miras_gpu.triton.token_norms.token_power_sums`.

    Block ``j`` starts from the state of the token before it (Eq 29 at ``e = j·block - 1``),
    ``Z_e = decay_e Z0 - Σ_{i<=e} mask[e, i] l_i r_i^T``, and its tokens unroll from there with
    the block's own coefficients (:func:`chunk_coefficients` of its gates), so the states are
    those of the whole chunk. The last block is padded with ``η = 0, α = 1`` tokens (zero
    factors), whose sums the caller drops.

    ``z0 [B, H, r, s]``, ``decay [B, H, C]``, ``mask [B, H, C, C]``, ``left [B, H, C, r]``,
    ``right [B, H, C, s]``, ``eta, alpha [B, H, C]`` -> ``z0 [B, H, k, r, s]``,
    ``decay [B, H, k, block]``, ``mask [B, H, k, block, block]``, ``left [B, H, k, block, r]``,
    ``right [B, H, k, block, s]``.
    """
    C = decay.shape[2]
    k = -(-C // block)
    ends = torch.arange(block - 1, (k - 1) * block, block, device=decay.device)
    # Eq 29 at the last token of every block but the last
    inner = decay[:, :, ends, None, None] * z0[:, :, None] - torch.einsum(
        "bhei,bhir,bhis->bhers", mask[:, :, ends], left, right)
    starts = torch.cat([z0[:, :, None], inner], dim=2)
    pad = k * block - C

    def blocks(x, fill=0.0):  # [B, H, C, ...] -> [B, H, k, block, ...]
        if pad:
            x = torch.cat([x, x.new_full((*x.shape[:2], pad, *x.shape[3:]), fill)], dim=2)
        return x.unflatten(2, (k, block))

    b_decay, b_mask = chunk_coefficients(blocks(eta), blocks(alpha, 1.0))
    return starts, b_decay, b_mask, blocks(left), blocks(right)


def _token_scale(scale, ret, own_ndim, kind, z0, decay, mask, *factors):
    """``s(Z_t)`` as ``(m, ŝ)``, ``Z_t = decay_t ⊙ Z0 - Σ_i mask[t, i] ⊙ G_i`` (Eq 29),
    ``G = kind(*factors)`` (:class:`Outer` or :class:`Dense`): each ``[B, H, C, 1, ..., 1]``."""
    z_t = decay * z0[:, :, None] - token_sum(mask, kind(*factors))
    return scale(ret, z_t, own_ndim)


def _scaled(x: torch.Tensor, scales: dict | None, name: str) -> torch.Tensor:
    """``s_t x_t = ŝ_t (x_t / m_t)`` for ``x [B, H, C, r]`` and ``scales[name] = (m, ŝ)
    [B, H, C, 1, 1]`` (:func:`miras_gpu.torch.retention.lq_scale`); ``x`` when the link is
    the identity (``scales`` None)."""
    if scales is None:
        return x
    m, s_hat = (a.flatten(start_dim=3) for a in scales[name])
    return (x / m) * s_hat


def _matrix_fast_read(config, z0, coeffs, grads, q, scales=None):
    """``y_t = ψ(Z_t) q_t`` by :func:`outer_read` (times ``s_t`` for a scalar link)."""
    decay, mask = coeffs["W"]
    return _scaled(outer_read(z0["W"], decay, mask, grads["W"], q), scales, "W")


def _mlp_read(config, layer_read, q):
    """``y_t = q_t + LN(W1_t σ(W2_t q_t))``, each layer's per-token read ``W_t x_t`` by
    ``layer_read(name, x [B, H, C, s]) -> [B, H, C, r]``."""
    h = layer_read("W2", q)
    u, _ = memories.layer_norm(layer_read("W1", memories.gelu(h)), config.memory.eps)
    return q + u


def _mlp_fast_read(config, z0, coeffs, grads, q, scales=None):
    """:func:`_mlp_read` with both layers read by :func:`outer_read` (``W_t = s_t Z_t`` for a
    scalar link)."""
    return _mlp_read(config, lambda n, x: _scaled(outer_read(z0[n], *coeffs[n], grads[n], x),
                                                  scales, n), q)


FAST_READS = {MatrixMemory: _matrix_fast_read, MLPMemory: _mlp_fast_read}


#: the reads of the row-softmax KL link (Memora's ``ψ(Z) = c·softmax(Z)`` over each row) by
#: the Triton op :func:`miras_gpu.triton.softmax_reads.softmax_reads`, which steps each
#: token's state in registers and never stores it, for scalar gates and float32 states:
#: ``None`` on CUDA when Triton imports, ``True`` on every device (the CPU under
#: ``TRITON_INTERPRET=1``, for tests), ``False`` never. Its arithmetic is float32 throughout.
FUSED_SOFTMAX_READS: bool | None = None


@functools.cache
def _softmax_reads_module():
    try:
        from ..triton import softmax_reads
    except ImportError:
        return None
    return softmax_reads


def softmax_reads_apply(config, device: torch.device) -> bool:
    """The chunked reads of ``config`` on ``device`` go through the fused softmax op
    (:data:`FUSED_SOFTMAX_READS`; a row-softmax KL link applied at every token's read on a
    matrix or MLP memory), given scalar gates and a float32 state; no per-token state is then
    formed or kept."""
    ret = config.retention
    if (FUSED_SOFTMAX_READS is False or not isinstance(ret, KLRetention) or ret.axis != -1
            or config.link_at != "token" or type(config.memory) not in FAST_READS):
        return False
    if FUSED_SOFTMAX_READS is None and device.type != "cuda":
        return False
    return _softmax_reads_module() is not None


def _softmax_read(config, z0: dict, gates: dict, grads: dict, q):
    """``y_t = M(c·softmax(Z_t), q_t)`` for every token of the chunk by the fused op
    (:func:`read_kind` ``"softmax"``); ``gates[n] = (η, α) [B, H, C, 1, 1]``."""
    B, H = q.shape[:2]
    ops = _softmax_reads_module()

    def layer_read(n, x):  # c softmax(Z_t) x_t, [B, H, C, s] -> [B, H, C, r]
        eta, alpha = (_gated(a, 3, "rs")[0].flatten(0, 1) for a in gates[n])
        left, right = grads[n].left, grads[n].right
        y = ops.softmax_reads(z0[n].flatten(0, 1), alpha, eta, left.flatten(0, 1),
                              right.flatten(0, 1), x.flatten(0, 1), config.retention.c)
        return y.unflatten(0, (B, H))

    if isinstance(config.memory, MLPMemory):
        return _mlp_read(config, layer_read, q)
    return layer_read("W", q)


def has_fast_read(config) -> bool:
    """The chunked form of ``config`` reads in the dual form (no per-token state kept): an
    identity or scalar link, or any link applied at chunk starts only (``link_at="chunk"``),
    on a matrix or MLP memory (element-wise gates excepted)."""
    ret = config.retention
    if not (config.link_at == "chunk" or retentions.ops_for(ret).identity_link
            or retentions.scalar_link(ret)):
        return False
    return type(config.memory) in FAST_READS


def read_kind(config, axes: dict, state: torch.Tensor) -> str | None:
    """How the queries of a chunk read without forming per-token states: ``"linear"``
    (``config.link_at == "chunk"``: the memory ``ψ(Z_{t'})`` after plain steps, read as an
    identity link), ``"softmax"`` (the fused op, :func:`softmax_reads_apply`; scalar gates,
    float32 state), ``"dual"`` (an identity or scalar link), or None (states formed). The dual
    and linear reads need :func:`has_fast_read` and gates that are not element-wise.

    ``axes[n]``: the own axes of parameter ``n`` on which the gates vary (``""`` scalar gates,
    ``"r"``/``"s"`` channel-wise, ``"rs"`` element-wise; :func:`gate_axes`); ``state``: any
    parameter of the chunk's starting state (its dtype and device).
    """
    if (not any(axes.values()) and state.dtype == torch.float32
            and softmax_reads_apply(config, state.device)):
        return "softmax"
    if has_fast_read(config) and all(a != "rs" for a in axes.values()):
        return "linear" if config.link_at == "chunk" else "dual"
    return None


def gate_axes(config, gates: dict) -> dict:
    """:func:`read_kind`'s ``axes`` from the gates ``[B, H, T, ...]`` of a call or a chunk."""
    mem = config.memory
    eta, alpha = (memories.gates_for(mem, gates[g][:, :, :1], lead=3) for g in ("eta", "alpha"))
    return {n: "".join(a for a, size in zip("rs", torch.broadcast_shapes(
        eta[n].shape, alpha[n].shape)[3:]) if size > 1) for n in eta}


# --------------------------------------------------------------------------------------------
# one chunk


@dataclasses.dataclass
class ChunkWrites:
    """What the reads of a chunk need from its writes (Eq 28-29), per memory parameter ``n``
    (every tensor ``[B, H, ...]``).

    z0 : the state at the chunk start ``[B, H, *shape]``
    coeffs : ``(decay [B, H, C, *g], mask [B, H, C, C, *g])`` (:func:`chunk_coefficients`)
    grads : the per-token gradients at the anchor (:class:`Outer` or :class:`Dense`)
    gates : ``(η, α) [B, H, C, *g]``
    """

    z0: dict
    coeffs: dict
    grads: dict
    gates: dict

    def end_state(self) -> dict:
        """The state after the chunk's last token (Eq 29 at ``t = C``)."""
        return {n: decay[:, :, -1] * self.z0[n] - last_sum(mask[:, :, -1], self.grads[n])
                for n, (decay, mask) in self.coeffs.items()}


def chunk_writes(config, z: dict, k, v, gates: dict) -> ChunkWrites:
    """The writes of one chunk in the chunk-parallel form (Eq 28-29), no lag token: every
    gradient at the chunk's starting state, and the decay and learning-rate masks.

    ``k [B, H, C, d_k]``, ``v [B, H, C, d_v]``, gates ``[B, H, C, ...]``, ``z`` the state at
    the chunk start.
    """
    mem, ret = config.memory, config.retention
    own = algs.own_ndims(config)
    eta = memories.gates_for(mem, gates["eta"], lead=3)
    alpha = memories.gates_for(mem, gates["alpha"], lead=3)
    # Eq 28: every gradient of the chunk at the chunk's starting state W_{t'}
    anchor = {n: retentions.anchor(ret, z[n], alpha[n][:, :, 0], nd) for n, nd in own.items()}
    delta = gates.get("delta")
    if delta is not None and delta.ndim == 3:
        delta = delta[..., None]  # [B, H, C] -> [B, H, C, 1]
    dy = biases.grad(config.bias, memories.forward(mem, anchor, k), v, delta)
    grads = memories.token_grads(mem, anchor, k, dy)  # per token, as factors
    coeffs = {n: chunk_coefficients(eta[n], alpha[n], nd) for n, nd in own.items()}
    return ChunkWrites(z, coeffs, grads, {n: (eta[n], alpha[n]) for n in own})


def chunk_reads(config, kind: str, w: ChunkWrites, q, norm_precision: str | None = None):
    """``y_t = M(ψ(Z_t), q_t)`` for every token of the chunk(s) of ``w``, read without forming
    per-token states: ``kind`` is :func:`read_kind`'s ``"linear"``, ``"softmax"`` or
    ``"dual"``; ``q [B, H, C, d_k]`` -> ``[B, H, C, d_v]`` (``norm_precision``:
    :func:`token_scales`). ``w`` may hold several chunks of the same length stacked on the
    batch axis."""
    if kind == "linear":
        # link_at="chunk" (Sec 5.4): W_t = (β_t/β_{t'}) ψ(Z_{t'}) - Σ_i mask[t, i] ∇ℓ_i, read
        # in the dual form of an identity link
        w0 = algs.memory_weights(config, w.z0)
        return FAST_READS[type(config.memory)](config, w0, w.coeffs, w.grads, q)
    if kind == "softmax":
        return _softmax_read(config, w.z0, w.gates, w.grads, q)
    scales = token_scales(config, w.z0, w.coeffs, w.grads, w.gates,  # None: identity link
                          norm_precision)
    return FAST_READS[type(config.memory)](config, w.z0, w.coeffs, w.grads, q, scales)


def chunk_step(config, z: dict, q, k, v, gates: dict, fast: bool = True,
               norm_precision: str | None = None):
    """One chunk in the chunk-parallel form (Eq 28-29), no lag token.

    ``q, k [B, H, C, d_k]``, ``v [B, H, C, d_v]``, gates ``[B, H, C, ...]``, ``z`` the state
    at the chunk start. Returns ``(y [B, H, C, d_v], z at the chunk end)``. ``fast=False``
    forces the per-token-state read (for testing the other paths against it);
    ``norm_precision`` goes to :func:`token_scales`.
    """
    w = chunk_writes(config, z, k, v, gates)
    kind = read_kind(config, gate_axes(config, gates), next(iter(z.values()))) if fast else None
    if kind is not None:
        return chunk_reads(config, kind, w, q, norm_precision), w.end_state()
    def unroll(x0):  # Eq 29: x_t = (β_t/β_{t'}) x_{t'} - Σ_i η_i (β_t/β_i) ∇ℓ(W_{t'}; k_i, v_i)
        return {n: decay * x0[n][:, :, None] - token_sum(mask, w.grads[n])
                for n, (decay, mask) in w.coeffs.items()}

    if config.link_at == "chunk":  # Sec 5.4: the memory ψ(Z_{t'}) takes the plain steps
        w_t = unroll(algs.memory_weights(config, z))
        y = memories.forward(config.memory, w_t, q[..., None, :])[..., 0, :]
        return y, w.end_state()
    z_t = unroll(z)
    y = read(config, z_t, q[..., None, :])[..., 0, :]  # y_t = M(ψ(Z_t), q_t)
    # clone: a view of the last token's state would keep all C per-token states alive
    return y, {n: z_t[n][:, :, -1].clone() for n in z_t}


def _lag_token(config, z: dict, q, k, v, gates: dict):
    """Eq 30: the lag token (the chunk's first) takes the exact non-linear step from the chunk
    state; ``q, k, v, gates`` are its parts ``[B, H, 1, ...]`` (:func:`_chunk_parts`). Returns
    its output ``[B, H, 1, d_v]`` and the state after it."""
    # squeezed, not indexed: a view, whose gradient is no zero-filled copy
    z = algs.step(config, z, k.squeeze(2), v.squeeze(2),
                  {n: a.squeeze(2) for n, a in gates.items()})
    return read(config, z, q), z


def process_chunk(config, z: dict, q, k, v, gates: dict, norm_precision: str | None = None):
    """One chunk with Memora's lag token (Eq 30-32) when ``config.lag_token``
    (``norm_precision``: :func:`token_scales`)."""
    if not config.lag_token:
        return chunk_step(config, z, q, k, v, gates, norm_precision=norm_precision)
    (lag, rest), = _chunk_parts(config, q, k, v, gates, q.shape[2])
    y0, z = _lag_token(config, z, *lag)
    if rest is None:
        return y0, z
    # Eq 31-32: the rest of the chunk at the lag token's state
    y, z = chunk_step(config, z, *rest, norm_precision=norm_precision)
    return torch.cat([y0, y], dim=2), z


def process_chunk_writes(config, z: dict, lag, rest):
    """:func:`process_chunk` without the reads that form no per-token state (the caller runs
    those for many chunks at once, :func:`chunk_reads`), on the chunk's parts: ``lag = (q, k,
    v, gates)`` of Memora's lag token ``[B, H, 1, ...]`` (None without one) and ``rest = (k,
    v, gates)`` of the other tokens (None when the chunk is its lag token alone).

    Returns ``(y_lag, writes, z_end)``: the lag token's output ``[B, H, 1, d_v]`` (None
    without a lag token), the :class:`ChunkWrites` of the rest (None without one) and the
    state at the chunk's end.
    """
    y0 = None
    if lag is not None:
        y0, z = _lag_token(config, z, *lag)
    if rest is None:
        return y0, None, z
    w = chunk_writes(config, z, *rest)
    return y0, w, w.end_state()


def _stack_writes(ws: list) -> ChunkWrites:
    """The :class:`ChunkWrites` of chunks of one length as one batch: every tensor
    concatenated on the batch axis (chunk ``j`` is rows ``j·B .. (j+1)·B``)."""
    if len(ws) == 1:
        return ws[0]

    def cat(parts):
        return torch.cat(list(parts), dim=0)

    first = ws[0]
    grads = {n: type(g)(*(cat(getattr(w.grads[n], f.name) for w in ws)
                          for f in dataclasses.fields(g))) for n, g in first.grads.items()}
    return ChunkWrites(
        z0={n: cat(w.z0[n] for w in ws) for n in first.z0},
        coeffs={n: tuple(cat(w.coeffs[n][i] for w in ws) for i in range(2))
                for n in first.coeffs},
        grads=grads,
        gates={n: tuple(cat(w.gates[n][i] for w in ws) for i in range(2)) for n in first.gates})


_COMPILED: dict[tuple, tuple] = {}
#: dynamo's recompile limit counts every variant (configuration, chunk shape, requires_grad
#: pattern, grad mode) of one code object; the default of 8 is too few for several models
RECOMPILE_LIMIT = 64


#: ``compile_chunks`` strings that name a ``torch.compile`` mode of inductor (any other string
#: names a ``torch.compile`` backend); "reduce-overhead" replays each chunk as a CUDA graph
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _compiled(fn, config, how: str):
    """``torch.compile`` of ``fn(config, *args)`` for ``config``, called as ``(*args)``
    (cached per function, config object and ``how``: a mode of :data:`COMPILE_MODES` or the
    name of a compile backend)."""
    key = (fn.__name__, id(config), how)
    entry = _COMPILED.get(key)
    if entry is None or entry[0] is not config:
        kw = {"mode": how} if how in COMPILE_MODES else {"backend": how}
        compiled = torch.compile(fn, dynamic=False, **kw)

        def call(*args):
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                return compiled(config, *args)

        entry = (config, call)
        _COMPILED[key] = entry
    return entry[1]


def compiled_chunk_fn(config, how: str = "inductor"):
    """``torch.compile`` of :func:`process_chunk` for ``config`` (cached per config object).

    ``how`` is a mode of :data:`COMPILE_MODES` (inductor) or the name of a compile backend.
    Every full chunk has the same shapes, so a sequence compiles at most twice (full chunks and
    a partial last one) and then reuses the kernels for every chunk.
    """
    compiled = _compiled(process_chunk, config, how)

    def chunk_fn(z, q, k, v, gates, norm_precision=None):
        y, z = compiled(z, q, k, v, gates, norm_precision)
        if how == "reduce-overhead":  # the next replay of the graph overwrites its outputs
            y, z = y.clone(), {n: a.clone() for n, a in z.items()}
        return y, z

    return chunk_fn


#: chunks whose reads run as one batch when the reads form no per-token state
#: (:func:`read_kind`): the loop over chunks then does only the sequential part (the writes,
#: :func:`process_chunk_writes`), and the reads of every ``READ_WINDOW`` chunks run at once
#: (:func:`chunk_reads` on the chunks stacked on the batch axis), which fills the device where
#: one chunk's reads would not. The window's writes are held until then. ``1``: each chunk is
#: read as it is written.
READ_WINDOW = 64


def chunked_forward(config, q, k, v, gates: dict, z: dict, chunk_size: int,
                    checkpoint: bool = False, compile_chunks: bool | str = False,
                    norm_precision: str | None = None):
    """The loop over chunks on validated tensors (no checks: safe to ``torch.compile``).

    ``q, k [B, H, T, d_k]``, ``v [B, H, T, d_v]``, gates ``[B, H, T, ...]`` in the compute
    dtype; ``norm_precision``: :func:`token_scales`. Returns ``(y [B, H, T, d_v], final
    state)``. Reads that form no per-token state are batched over :data:`READ_WINDOW` chunks,
    except with ``checkpoint`` (each chunk is recomputed whole) and ``"reduce-overhead"``
    (each chunk is one CUDA graph).
    """
    how = None
    if compile_chunks:
        how = compile_chunks if isinstance(compile_chunks, str) else "inductor"
    kind = read_kind(config, gate_axes(config, gates), next(iter(z.values())))
    if kind is not None and READ_WINDOW > 1 and not checkpoint and how != "reduce-overhead":
        return _windowed_forward(config, kind, _chunk_parts(config, q, k, v, gates,
                                                            chunk_size), z, how, norm_precision)
    chunks = _split(q, k, v, gates, chunk_size)
    if how:
        fn = functools.partial(compiled_chunk_fn(config, how), norm_precision=norm_precision)
    else:
        def fn(z, q, k, v, gates):
            return process_chunk(config, z, q, k, v, gates, norm_precision)
    ys = []
    for args in chunks:
        if checkpoint and torch.is_grad_enabled():
            y, z = _checkpoint(fn, z, *args, use_reentrant=False)
        else:
            y, z = fn(z, *args)
        ys.append(y)
    return torch.cat(ys, dim=2), z


def _chunk_parts(config, q, k, v, gates: dict, chunk_size: int) -> list:
    """Each chunk as ``(lag, rest)`` for :func:`process_chunk_writes` (and
    :func:`process_chunk`, on one chunk): ``lag = (q, k, v,
    gates)`` of Memora's lag token (None without one), ``rest = (q, k, v, gates)`` of the other
    tokens (None when the chunk is its lag token alone), split at every chunk and lag boundary
    by :func:`_split`."""
    T, lag = q.shape[2], int(config.lag_token)
    lengths = [min(chunk_size, T - s) for s in range(0, T, chunk_size)]
    sizes = [m for n in lengths for m in ([1, n - 1] if lag and n > 1 else [n])]
    parts = iter(_split(q, k, v, gates, sizes))
    return [(next(parts) if lag else None, next(parts) if n > lag else None) for n in lengths]


def _split(q, k, v, gates: dict, sizes) -> list:
    """``(q, k, v, gates)`` of each part of the time axis (``sizes``: ``torch.split``'s, an
    int or a list): one split per input, whose backward concatenates all the parts' gradients
    once, where slicing each part would add a zero-filled ``[B, H, T, ...]`` copy per slice."""
    qs, ks, vs = (x.split(sizes, dim=2) for x in (q, k, v))
    gs = {name: a.split(sizes, dim=2) for name, a in gates.items()}
    return [(qs[j], ks[j], vs[j], {name: a[j] for name, a in gs.items()})
            for j in range(len(qs))]


def _windowed_forward(config, kind: str, chunks: list, z: dict, how: str | None,
                      norm_precision: str | None):
    """:func:`chunked_forward` with the writes chunk by chunk and the reads of every
    :data:`READ_WINDOW` chunks at once; ``chunks``: ``(lag, rest)`` parts of each chunk
    (:func:`_chunk_parts`), ``how``: :func:`_compiled`'s (None: eager)."""
    write, reads = process_chunk_writes, chunk_reads
    if how:
        write, reads = _compiled(write, config, how), _compiled(reads, config, how)
    else:
        write, reads = (functools.partial(f, config) for f in (write, reads))
    ys, window = [], []
    for n, (lag, rest) in enumerate(chunks):
        y0, w, z = write(z, lag, None if rest is None else rest[1:])
        window.append((y0, w, None if rest is None else rest[0]))
        if len(window) == READ_WINDOW or n == len(chunks) - 1:
            ys += _window_reads(kind, window, reads, norm_precision)
            window = []
    return torch.cat(ys, dim=2), z


def _window_reads(kind: str, window: list, reads, norm_precision: str | None) -> list:
    """The outputs of the chunks of ``window`` (``(y_lag, writes, q)`` each,
    :func:`process_chunk_writes`) in order, each chunk's lag output (if any) then the rest's
    ``[B, H, C', d_v]``: the reads of all chunks of one length as one batch."""
    rest: dict[int, torch.Tensor] = {}
    by_length: dict[int, list[int]] = {}
    for i, (_, w, q) in enumerate(window):
        if w is not None:
            by_length.setdefault(q.shape[2], []).append(i)
    for idx in by_length.values():
        q = torch.cat([window[i][2] for i in idx], dim=0)
        y = reads(kind, _stack_writes([window[i][1] for i in idx]), q, norm_precision)
        rest.update(zip(idx, y.chunk(len(idx), dim=0)))
    out = []
    for i, (y0, _, _) in enumerate(window):
        out += [y for y in (y0, rest.get(i)) if y is not None]
    return out


def check_chunkable(config) -> None:
    """``ValueError`` unless ``config`` has a chunked form (:func:`miras_ref.chunked.
    check_chunkable`) that the torch backend's retention ops cover."""
    ref_check_chunkable(config)
    retentions.ops_for(config.retention)


def scan_chunked(config, q, k, v, gates=None, chunk_size=64, initial_state=None,
                 output_final_state=False, cu_seqlens=None, checkpoint=False,
                 compile_chunks: bool | str = False):
    """Chunk-parallel MIRAS forward (Eq 28-32), any ``T`` and any chunk size.

    Same arguments and returns as :func:`miras_gpu.torch.scan`, plus

    chunk_size : int or None
        Tokens per chunk (``None``: the exact recurrence, :func:`miras_gpu.torch.scan`).
    cu_seqlens : sequence of int, optional
        Packed variable-length sequences in one row (``B = 1``): sequence ``j`` is tokens
        ``cu_seqlens[j]:cu_seqlens[j+1]``, starts from its own initial state (row ``j`` of an
        ``initial_state`` with ``N = len(cu_seqlens) - 1`` rows, or the default) and is chunked
        from its own first token. Implemented by splitting at the boundaries
        (:mod:`miras_gpu.varlen`); the final state has ``N`` rows.
    checkpoint : bool
        Recompute each chunk in the backward pass (``torch.utils.checkpoint``) instead of
        keeping its intermediates: the per-token states of the non-identity links make those
        ``C`` times the memory's size per chunk.
    compile_chunks : bool or str
        Run each chunk through a cached ``torch.compile`` of the chunk step
        (:func:`compiled_chunk_fn`; ``True`` is inductor, a string is an inductor mode of
        :data:`COMPILE_MODES` such as ``"reduce-overhead"`` (each chunk replayed as a CUDA
        graph) or a ``torch.compile`` backend name): fewer kernel launches, the same values up
        to float rounding. ``"graphs"`` (CUDA only) captures the whole loop over chunks,
        forward and backward, as two CUDA graphs per call shape
        (:mod:`miras_gpu.torch.graphed`). The first call per configuration and shape pays the
        compilation (and capture).
    """
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    if cu_seqlens is not None:
        from ..varlen import split_scan

        if not isinstance(q, torch.Tensor):
            raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
        return split_scan(scan_chunked, config, q, k, v, gates, chunk_size, initial_state,
                          output_final_state, cu_seqlens, torch.cat, checkpoint=checkpoint,
                          compile_chunks=compile_chunks)
    if chunk_size is None:
        return scan(config, q, k, v, gates, initial_state, output_final_state)
    check_chunkable(config)
    if compile_chunks == "reduce-overhead" and checkpoint and torch.is_grad_enabled():
        raise ValueError("compile_chunks='reduce-overhead' cannot be combined with "
                         "checkpoint=True: recomputing a chunk in the backward pass replays "
                         "its CUDA graph and overwrites outputs that autograd still holds; use "
                         "compile_chunks='graphs' or True with checkpoint=True")
    inp = validate_inputs(config, q, k, v, gates)
    z = initial_memory_state(config, initial_state, inp,
                                 lambda: default_state(config, inp))
    norm_precision = fused_precision(inp.out_dtype, inp.q.device)
    if compile_chunks == "graphs":
        from .graphed import graphed_chunked_forward

        y, z = graphed_chunked_forward(config, inp.q, inp.k, inp.v, inp.gates, z, chunk_size,
                                       checkpoint, norm_precision)
        return y.movedim(1, 2).to(inp.out_dtype), (z if output_final_state else None)
    y, z = chunked_forward(config, inp.q, inp.k, inp.v, inp.gates, z, chunk_size, checkpoint,
                           compile_chunks, norm_precision)
    return y.movedim(1, 2).to(inp.out_dtype), (z if output_final_state else None)
