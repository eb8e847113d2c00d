"""Recurrent decoding: prefill the prompt, then one token at a time with the streaming state.

Each MIRAS layer carries its memory state, its convolution state and the unfinished chunk's
tokens (at most ``chunk_size - 1``), so the memory per generated token is constant; each
sliding-window attention layer carries a KV cache of at most ``window - 1`` tokens; a
Transformer's full attention carries all of them. The logits of step-by-step decoding equal the
parallel forward's (``tests/test_nn.py``).
"""

from __future__ import annotations

import torch

__all__ = ["generate"]


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator):
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             eos_token_id: int | None = None, return_logits: bool = False):
    """Continue ``prompt_ids [B, T0]`` by ``max_new_tokens`` tokens, one step at a time.

    Parameters
    ----------
    model : MirasLM or TransformerLM
    prompt_ids : LongTensor ``[B, T0]`` (``T0 >= 1``)
    max_new_tokens : int
    temperature : float
        ``0``: greedy (argmax); otherwise sample from ``softmax(logits / temperature)``.
    top_k : int, optional
        Sample among the ``top_k`` most likely tokens only.
    generator : torch.Generator, optional
        Random source of the sampling.
    eos_token_id : int, optional
        Stop once every row has produced it.
    return_logits : bool
        Also return the logits of every generated step ``[B, n, vocab]``.

    Returns
    -------
    ids : LongTensor ``[B, T0 + n]`` (``n <= max_new_tokens``), and the logits if asked.
    """
    if prompt_ids.ndim != 2 or prompt_ids.shape[1] < 1:
        raise ValueError(f"prompt_ids must have shape [B, T0] with T0 >= 1, "
                         f"got {tuple(prompt_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    was_training = model.training
    model.eval()
    try:
        ids = prompt_ids
        logits, state = model(prompt_ids, return_state=True)
        last = logits[:, -1]
        steps = []
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for i in range(max_new_tokens):
            steps.append(last)
            nxt = _pick(last, temperature, top_k, generator)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if eos_token_id is not None:
                done |= nxt == eos_token_id
                if bool(done.all()):
                    break
            if i + 1 < max_new_tokens:
                logits, state = model(nxt[:, None], state, True)
                last = logits[:, -1]
    finally:
        model.train(was_training)
    if return_logits:
        out = torch.stack(steps, dim=1) if steps else ids.new_zeros((ids.shape[0], 0, 0))
        return ids, out
    return ids
