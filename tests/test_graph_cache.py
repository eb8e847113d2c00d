"""The cache policy of ``miras_gpu.torch.graphed.graphed_call`` on the CPU.

The capture itself needs CUDA (tests/test_conformance.py runs it on a GPU); here ``capture`` is
replaced by a stand-in that records each capture and returns the function, so what is checked
is which call captures, which replays, what is shared and what is dropped."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from miras_gpu.torch import graphed  # noqa: E402
from miras_ref import zoo  # noqa: E402


@pytest.fixture
def captures(monkeypatch):
    """The ``samples`` of every capture, in order (the stand-in replays ``fn`` itself)."""
    made = []

    def fake_capture(fn, samples):
        made.append(samples)
        return fn

    monkeypatch.setattr(graphed, "capture", fake_capture)
    graphed.clear_graphs()
    yield made
    graphed.clear_graphs()


def _double(x):
    return (2 * x, None)


def test_second_call_captures_and_later_calls_replay(captures):
    cfg = zoo.get("moneta", 8)
    x = torch.arange(4.0)
    first = graphed.graphed_call(("k",), cfg, _double, (x,))
    assert captures == []  # a shape met once runs op by op
    second = graphed.graphed_call(("k",), cfg, _double, (x + 1,))
    assert len(captures) == 1 and torch.equal(captures[0][0], x + 1)
    assert captures[0][0] is not x  # the capture's static input is a copy
    third = graphed.graphed_call(("k",), cfg, _double, (x + 2,))
    assert len(captures) == 1
    for out, want in ((first, 2 * x), (second, 2 * x + 2), (third, 2 * x + 4)):
        assert torch.equal(out[0], want) and out[1] is None


def test_equal_configs_share_and_other_values_do_not(captures):
    cfg = zoo.get("moneta", 8)
    twin = dataclasses.replace(cfg)
    other = zoo.get("moneta", 8, expansion=2)
    x = torch.ones(3)
    for c in (cfg, cfg, twin, twin):
        graphed.graphed_call(("k",), c, _double, (x,))
    assert len(captures) == 1
    for _ in range(2):
        graphed.graphed_call(("k",), other, _double, (x,))
    graphed.graphed_call(("k",), cfg, _double, (torch.ones(5),))  # another shape: met once
    assert len(captures) == 2


def test_returned_tensors_are_copies(captures):
    kept = torch.zeros(2)

    def same(x):
        return (kept,)

    cfg = zoo.get("moneta", 8)
    for _ in range(3):
        out = graphed.graphed_call(("k",), cfg, same, (torch.ones(2),))
    assert out[0] is not kept and torch.equal(out[0], kept)


def test_least_recently_used_capture_is_dropped(captures, monkeypatch):
    monkeypatch.setattr(graphed, "MAX_CALL_GRAPHS", 2)
    cfg = zoo.get("moneta", 8)

    def call(n):
        graphed.graphed_call(("k",), cfg, _double, (torch.ones(n),))

    for n in (1, 2):
        call(n)
        call(n)
    call(1)  # shape 1 used last: shape 2 is the least recently used
    call(3)
    call(3)  # the third capture drops shape 2's
    assert len(captures) == 3 and len(graphed._CALLS) == 2
    call(1)
    assert len(captures) == 3  # still cached
    call(2)
    call(2)
    assert len(captures) == 4  # met again after being dropped: captured again
