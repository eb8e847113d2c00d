"""Tests of miras_gpu.nn: the MIRAS layer against the NumPy reference block, gradients,
streaming and recurrent decoding against the parallel forward, save/load, presets."""

from __future__ import annotations

import numpy as np
import pytest

from miras_ref import zoo
from miras_ref.layer import init_layer_params, miras_layer_forward

torch = pytest.importorskip("torch")

from miras_gpu.nn import (  # noqa: E402
    PRESETS,
    LMConfig,
    MirasLayer,
    MirasLM,
    TransformerLM,
    count_params,
    generate,
    load_pretrained,
    save_pretrained,
)

B, T, DM, H, D, R = 2, 11, 12, 2, 4, 5


def _x(seed=0, t=T):
    return np.random.default_rng(seed).standard_normal((B, t, DM))


# --------------------------------------------------------------------------------------------
# the layer against miras_ref.layer.miras_layer_forward (gold), float64


@pytest.mark.parametrize("name,chunk", [
    ("moneta", None), ("yaad", None), ("memora", None), ("gated_deltanet", None),
    ("moneta", 4), ("yaad", 4), ("memora", 4), ("gated_deltanet", 4),
    ("titans_lmm", None), ("deltaproduct", None), ("mesa", None), ("hgrn2", None),
    ("softmax_attention", None), ("rwkv7", 3),
])
def test_layer_matches_reference(name, chunk):
    params = init_layer_params(DM, H, D, name, rank=R, seed=3)
    x = _x(1)
    gold, _ = miras_layer_forward(params, x, name, H, D, chunk_size=chunk)
    layer = MirasLayer.from_reference_params(params, H, D, model=name, chunk_size=chunk)
    mine = layer(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(mine, gold, rtol=0, atol=1e-10)
    # and back: the layer's weights are the reference dict
    back = layer.reference_params()
    assert set(back) == set(params)
    assert all(np.array_equal(back[k], params[k]) for k in params)


def test_layer_accepts_a_config_and_its_init_matches_reference_distribution():
    cfg = zoo.get("yaad", D)
    torch.manual_seed(0)
    layer = MirasLayer(64, 4, D, model=cfg, rank=8)
    ref = init_layer_params(64, 4, D, cfg, rank=8)
    for name, p in layer.named_parameters():
        assert tuple(p.shape) == ref[name].shape
        if name.endswith("_bias") or name == "norm_w":
            np.testing.assert_allclose(p.detach().numpy(), ref[name], rtol=1e-6)
    # N(0, 1/fan_in): the empirical std of W_q is close to 1/sqrt(64)
    assert abs(float(layer.W_q.detach().std()) * 8 - 1) < 0.15


def test_layer_streaming_equals_one_pass_reference_state():
    """Pieces that cut chunks in the middle give the one-pass output (memory at the last chunk
    boundary plus the unfinished chunk's tokens), and the conv state is the reference's."""
    params = init_layer_params(DM, H, D, "memora", rank=R, seed=5)
    x = _x(2)
    layer = MirasLayer.from_reference_params(params, H, D, model="memora", chunk_size=4)
    xt = torch.from_numpy(x)
    full = layer(xt)
    outs, state = [], None
    for a, b in ((0, 3), (3, 9), (9, 10), (10, T)):
        y, state = layer(xt[:, a:b], state, return_state=True)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=0, atol=1e-12)
    _, ref_state = miras_layer_forward(params, x, "memora", H, D, chunk_size=4,
                                       output_final_state=True)
    for s in ("q", "k", "v"):
        np.testing.assert_allclose(state["conv"][s].detach().numpy(), ref_state["conv"][s],
                                   atol=1e-14)
    assert state["pending"]["q"].shape[1] == T % 4


def test_layer_rejects_bad_configuration():
    with pytest.raises(ValueError, match="unknown model"):
        MirasLayer(8, 2, 4, model="no_such_model")
    with pytest.raises(ValueError, match="chunk_size=None"):
        MirasLayer(8, 2, 4, model="titans_lmm", chunk_size=16)
    with pytest.raises(ValueError, match="head_dim"):
        MirasLayer(8, 2, 4, model=zoo.get("moneta", 8))
    with pytest.raises(ValueError, match="n_heads"):
        MirasLM(50, 30, 1, 4)
    with pytest.raises(ValueError, match="d_model"):
        MirasLayer(8, 2, 4)(torch.zeros(1, 3, 9))


# --------------------------------------------------------------------------------------------
# models: gradients, decoding, save / load


def _tiny(kind, **kw):
    torch.manual_seed(0)
    if kind == "transformer":
        return TransformerLM(40, 16, 2, 2, **kw)
    return MirasLM(40, 16, 2, 2, model=kind, rank=4, **kw)


@pytest.mark.parametrize("kind,kw", [
    ("moneta", {"chunk_size": 4}), ("yaad", {"chunk_size": 4}), ("memora", {"chunk_size": 4}),
    ("gated_deltanet", {"hybrid": True, "window": 4, "chunk_size": 4}), ("transformer", {}),
])
def test_gradients_reach_every_parameter(kind, kw):
    model = _tiny(kind, **kw)
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    logits = model(ids)
    assert logits.shape == (2, 9, 40)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 40), ids.roll(-1, 1).reshape(-1)
                                      ).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind,kw", [
    ("moneta", {"chunk_size": None}),
    ("yaad", {"chunk_size": None, "hybrid": True, "window": 3}),
    ("memora", {"chunk_size": None}),
    ("memora", {"chunk_size": 4}),  # chunked form with Memora's lag token
    ("transformer", {}),
])
def test_recurrent_decoding_equals_parallel_forward(kind, kw):
    model = _tiny(kind, **kw).double()
    prompt = torch.randint(0, 40, (2, 3), generator=torch.Generator().manual_seed(2))
    ids, step_logits = generate(model, prompt, max_new_tokens=8, return_logits=True)
    assert ids.shape == (2, 11)
    with torch.no_grad():
        full = model(ids)
    # the logits that chose token t+1 are the parallel forward's logits at position t
    torch.testing.assert_close(step_logits, full[:, 2:10], rtol=0, atol=1e-10)
    assert torch.equal(ids[:, 3:], full[:, 2:10].argmax(-1))


def test_decoding_state_is_bounded():
    model = _tiny("gated_deltanet", hybrid=True, window=3, chunk_size=4).double()
    ids = torch.randint(0, 40, (1, 20))
    state = None
    with torch.no_grad():
        for t in range(20):
            _, state = model(ids[:, t:t + 1], state, True)
            for block in state:
                assert block["attn"]["k"].shape[2] <= 2  # window - 1
                pend = block["mixer"]["pending"]
                assert pend is None or pend["q"].shape[1] <= 3  # chunk_size - 1


def test_sampling_is_reproducible():
    model = _tiny("yaad", chunk_size=4)
    prompt = torch.zeros(1, 2, dtype=torch.long)
    a = generate(model, prompt, 5, temperature=1.0, top_k=5,
                 generator=torch.Generator().manual_seed(0))
    b = generate(model, prompt, 5, temperature=1.0, top_k=5,
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (1, 7)


@pytest.mark.parametrize("kind,kw", [("memora", {"hybrid": True, "window": 4}),
                                     ("transformer", {"tie_embeddings": False})])
def test_save_load_round_trip(tmp_path, kind, kw):
    model = _tiny(kind, **kw)
    ids = torch.randint(0, 40, (2, 7))
    save_pretrained(model, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    back = load_pretrained(tmp_path / "m")
    assert type(back) is type(model)
    assert back.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids), rtol=0, atol=0)
    assert (back.lm_head.weight is back.embed.weight) == model.config.tie_embeddings
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "missing")


def test_presets_follow_table_5():
    assert {k: (v["n_layers"], v["d_model"], v["n_heads"], v["lr"])
            for k, v in PRESETS.items() if k != "tiny"} == {
        "170M": (12, 768, 16, 3e-3), "340M": (24, 1024, 16, 1.5e-3),
        "780M": (24, 1536, 16, 1.25e-3)}
    with torch.device("meta"):
        p = PRESETS["340M"]
        m = MirasLM(32000, p["d_model"], p["n_layers"], p["n_heads"], model="yaad")
    assert 300e6 < count_params(m) < 400e6
    cfg = LMConfig.from_dict(m.config.to_dict())
    assert cfg.head_dim == 64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_autocast_forward_backward_on_cuda():
    model = _tiny("moneta", chunk_size=4).cuda()
    ids = torch.randint(0, 40, (2, 16), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids)
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
