"""Training and evaluation tasks, generated on the fly from a seed.

Every example is a pure function of ``(seed, split, index)``: example ``i`` of a split is drawn
from ``numpy.random.default_rng([seed, split_id, i])``. The training loop asks for the examples
``step · global_batch + rank · local_batch + j``, so the data order is fixed by the step
alone (resuming continues it exactly) and the ranks of a data-parallel run read disjoint
examples whose union is the single-process batch.

An example is ``(inputs [T], targets [T])`` of ``int64``: ``targets[t]`` is the token expected
after ``inputs[:t+1]``, or :data:`IGNORE` (``-100``) where no loss is taken.

Tasks (:data:`TASKS`):

* ``mqar``: multi-query associative recall (Zoology, Arora et al. 2023): ``N`` key-value pairs,
  then each key queried once at a random later position; loss and accuracy only at the query
  keys, whose target is the paired value. Tokens: ``0`` filler, keys ``[1, V/2)``, values
  ``[V/2, V)``; chance accuracy ``2/V``.
* ``niah_passkey``, ``niah_number``, ``niah_word``: S-NIAH-style needles (RULER, Hsieh et al.
  2024) at character level (ASCII, vocabulary 128): a 5-digit pass key hidden in repeated
  noise sentences (S-NIAH-PK); a 7-digit "special magic number" for a key word hidden in the
  shipped text (S-NIAH-N); a "special magic word" hidden among random words (S-NIAH-W). The
  needle sits at a uniform random depth; the question is at the end and the loss is on the
  answer's characters; accuracy is exact match of the whole answer.
* ``text``: character-level language modelling on the shipped public-domain text
  (:mod:`miras_gpu.data`, *Alice's Adventures in Wonderland*): random windows of the first
  90 % for training, of the last 10 % for evaluation; loss on every position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["IGNORE", "TASKS", "Task", "make_task"]

IGNORE = -100
_SPLITS = {"train": 0, "eval": 1}
ASCII_VOCAB = 128

_NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again. ")


def _encode(s: str) -> np.ndarray:
    b = np.frombuffer(s.encode("ascii", "replace"), dtype=np.uint8)
    return b.astype(np.int64)


@dataclass
class Task:
    """Base class: ``context`` tokens per example, ``vocab_size`` tokens, ``seed``."""

    context: int
    seed: int = 0
    name: str = "task"
    vocab_size: int = ASCII_VOCAB
    #: "exact" (every answer token right) or "token" accuracy is the headline metric
    metric: str = "exact"

    def __post_init__(self):
        if isinstance(self.context, bool) or not isinstance(self.context, (int, np.integer)):
            raise ValueError(f"context must be an integer, got {self.context!r}")
        if self.context < 1:
            raise ValueError(f"context must be >= 1, got {self.context}")
        self.context = int(self.context)
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` if the task cannot be built at this context length."""

    def rng(self, split: str, index: int) -> np.random.Generator:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        return np.random.default_rng([int(self.seed), _SPLITS[split], int(index)])

    def example(self, index: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def batch(self, indices, split: str = "train", device=None):
        """``(inputs, targets)`` LongTensors ``[len(indices), context]``."""
        xs, ys = zip(*(self.example(int(i), split) for i in indices))
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys))
        if device is not None:
            x, y = x.to(device), y.to(device)
        return x, y

    def describe(self) -> str:
        return f"{self.name} (context {self.context})"


def _answer_example(text: np.ndarray, answer_len: int, T: int):
    """``text`` holds ``T + 1`` tokens ending with the answer: inputs/targets with the loss on
    the answer tokens only."""
    x = text[:T].copy()
    y = np.full(T, IGNORE, dtype=np.int64)
    y[T - answer_len:] = text[T + 1 - answer_len:]
    return x, y


@dataclass
class MQAR(Task):
    """Multi-query associative recall (see the module docstring).

    ``num_pairs`` key-value pairs (default ``max(1, context // 8)``), ``vocab_size`` >= 4.
    """

    name: str = "mqar"
    vocab_size: int = 64
    num_pairs: int | None = None
    metric: str = "token"

    def check(self):
        if self.num_pairs is None:
            self.num_pairs = max(1, self.context // 8)
        if self.vocab_size < 4:
            raise ValueError(f"mqar needs vocab_size >= 4, got {self.vocab_size}")
        n_keys = self.vocab_size // 2 - 1
        if self.num_pairs > n_keys:
            raise ValueError(f"mqar: {self.num_pairs} pairs need at least that many distinct "
                             f"keys; vocab_size {self.vocab_size} has {n_keys}")
        if self.context < 4 * self.num_pairs:
            raise ValueError(f"mqar: context {self.context} is too short for {self.num_pairs} "
                             f"key-value pairs (needs >= {4 * self.num_pairs})")

    def example(self, index, split="train"):
        rng = self.rng(split, index)
        T, N, V = self.context, self.num_pairs, self.vocab_size
        keys = rng.choice(np.arange(1, V // 2), size=N, replace=False)
        values = rng.integers(V // 2, V, size=N)
        x = np.zeros(T, dtype=np.int64)
        y = np.full(T, IGNORE, dtype=np.int64)
        x[0:2 * N:2], x[1:2 * N:2] = keys, values
        # queries: each key once, in a random order, at random slots of 2 tokens after the pairs
        slots = (T - 2 * N) // 2
        where = 2 * N + 2 * np.sort(rng.choice(slots, size=N, replace=False))
        order = rng.permutation(N)
        x[where] = keys[order]
        y[where] = values[order]
        x[where + 1] = values[order]
        return x, y

    def describe(self):
        return f"mqar (context {self.context}, {self.num_pairs} pairs, vocab {self.vocab_size})"


def _words(text: str) -> list[str]:
    ws = {w for w in "".join(c if c.isalpha() else " " for c in text.lower()).split()
          if 3 <= len(w) <= 8}
    return sorted(ws)


_TEXT_CACHE: dict[str, object] = {}


def _corpus() -> tuple[str, np.ndarray, list[str]]:
    if "text" not in _TEXT_CACHE:
        from miras_gpu.data import load_text

        text = load_text()
        _TEXT_CACHE["text"] = (text, _encode(text), _words(text))
    return _TEXT_CACHE["text"]


@dataclass
class Needle(Task):
    """S-NIAH-style needle in a haystack at character level (see the module docstring).

    ``kind``: ``"passkey"`` (digits in noise), ``"number"`` (digits in the shipped text),
    ``"word"`` (a word among random words).
    """

    name: str = "niah_passkey"
    kind: str = "passkey"

    _LONGEST = {"passkey": 160, "number": 190, "word": 110}

    def check(self):
        if self.kind not in self._LONGEST:
            raise ValueError(f"needle kind must be passkey, number or word, got {self.kind!r}")
        if self.context < self._LONGEST[self.kind]:
            raise ValueError(f"{self.name}: context {self.context} is too short for the needle "
                             f"and the question (needs >= {self._LONGEST[self.kind]})")

    def _parts(self, rng):
        text, _, words = _corpus()
        if self.kind == "passkey":
            ans = "".join(str(d) for d in rng.integers(0, 10, size=5))
            needle = f"The pass key is {ans}. Remember it. {ans} is the pass key. "
            question = "\nWhat is the pass key? The pass key is "
        elif self.kind == "number":
            key = words[rng.integers(len(words))]
            ans = "".join(str(d) for d in rng.integers(0, 10, size=7))
            needle = f"One of the special magic numbers for {key} is: {ans}. "
            question = (f"\nWhat is the special magic number for {key}? "
                        f"The special magic number for {key} is: ")
        else:
            ans = words[rng.integers(len(words))]
            needle = f"The special magic word is {ans}. "
            question = "\nWhat is the special magic word? The special magic word is "
        return needle, question, ans

    def _haystack(self, rng, n: int) -> str:
        if n <= 0:
            return ""
        if self.kind == "passkey":
            reps = n // len(_NOISE) + 2
            start = rng.integers(len(_NOISE))
            return (_NOISE * reps)[start:start + n]
        if self.kind == "number":
            text = _corpus()[0]
            start = rng.integers(0, max(1, len(text) - n))
            s = text[start:start + n]
            while len(s) < n:  # longer than the book: wrap around
                s += "\n" + text[: n - len(s) - 1]
            return s[:n]
        words = _corpus()[2]
        out = " ".join(words[i] for i in rng.integers(len(words), size=n // 4 + 2)) + " "
        return out[:n]

    def example(self, index, split="train"):
        rng = self.rng(split, index)
        T = self.context
        needle, question, ans = self._parts(rng)
        hay = self._haystack(rng, T + 1 - len(needle) - len(question) - len(ans))
        # the needle at a uniform random depth, moved to the next space (between words)
        cut = int(rng.integers(0, len(hay) + 1))
        space = hay.find(" ", cut)
        cut = space + 1 if space >= 0 else len(hay)
        s = hay[:cut] + needle + hay[cut:] + question + ans
        return _answer_example(_encode(s), len(ans), T)


@dataclass
class CharText(Task):
    """Character-level LM on the shipped text: windows of the first 90 % for training, of the
    last 10 % for evaluation."""

    name: str = "text"
    metric: str = "ppl"

    def check(self):
        ids = _corpus()[1]
        n_eval = len(ids) // 10
        if self.context + 1 > n_eval:
            raise ValueError(f"text: context {self.context} is longer than the evaluation part "
                             f"of the text ({n_eval - 1} characters)")

    def example(self, index, split="train"):
        ids = _corpus()[1]
        n_eval = len(ids) // 10
        lo, hi = (0, len(ids) - n_eval) if split == "train" else (len(ids) - n_eval, len(ids))
        start = lo + int(self.rng(split, index).integers(0, hi - lo - self.context))
        w = ids[start:start + self.context + 1]
        return w[:-1].copy(), w[1:].copy()


TASKS = {
    "mqar": lambda context, seed, **kw: MQAR(context, seed, **kw),
    "niah_passkey": lambda context, seed, **kw: Needle(context, seed, name="niah_passkey",
                                                       kind="passkey", **kw),
    "niah_number": lambda context, seed, **kw: Needle(context, seed, name="niah_number",
                                                      kind="number", **kw),
    "niah_word": lambda context, seed, **kw: Needle(context, seed, name="niah_word", kind="word",
                                                    **kw),
    "text": lambda context, seed, **kw: CharText(context, seed, **kw),
}


def make_task(name: str, context: int, seed: int = 0, **options) -> Task:
    """Build a task by name (:data:`TASKS`); ``options`` are task fields (``num_pairs``,
    ``vocab_size`` for ``mqar``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name](context, seed, **{k: v for k, v in options.items() if v is not None})
