"""The backend registry (miras_gpu.backends) and the torch backend's input validation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import miras_gpu
import miras_ref
from miras_gpu import backends
from miras_gpu.backends import BACKENDS, Backend, BackendUnavailableError
from miras_ref import zoo

torch = pytest.importorskip("torch")


def _inputs(B=1, T=5, H=2, D=8, seed=0):
    rng = np.random.default_rng(seed)
    q, k = (x / np.linalg.norm(x, axis=-1, keepdims=True)
            for x in rng.standard_normal((2, B, T, H, D)))
    v = rng.standard_normal((B, T, H, D))
    gates = {"eta": rng.uniform(0.2, 0.6, (B, T, H)), "alpha": rng.uniform(0.9, 1.0, (B, T, H))}
    return q, k, v, gates


def _t(x):
    return torch.as_tensor(x)


# --------------------------------------------------------------------------------------------
# registry


@pytest.fixture
def fakes(monkeypatch):
    """Replace every backend by a stub, so resolution can be checked without running ops."""
    def make(name):
        def op(*args, **kwargs):
            return name, None
        return Backend(name, "torch" if name != "numpy" else "numpy", op, op)

    monkeypatch.setattr(backends, "_loaded", {n: make(n) for n in BACKENDS})
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


def test_registered_names():
    assert BACKENDS == ("numpy", "torch", "triton", "cupy")


def test_available_backends_here():
    avail = miras_gpu.available_backends()
    assert avail[:2] == ["numpy", "torch"] and set(avail) <= set(BACKENDS)
    for name in set(BACKENDS) - set(avail):  # the others fail with the clear error
        with pytest.raises(BackendUnavailableError, match=f"backend '{name}' is not available"):
            miras_gpu.get_backend(name)


def test_unknown_name():
    with pytest.raises(ValueError, match="choose one of numpy, torch, triton, cupy"):
        miras_gpu.get_backend("jax")
    with pytest.raises(TypeError, match="backend must be a backend name"):
        miras_gpu.get_backend(3)


def test_precedence(fakes):
    resolve = backends.resolve
    assert resolve(None, "numpy").name == "numpy"  # by input type
    assert resolve(None, "torch").name == "torch"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIRAS_BACKEND", "cupy")  # env beats input type
        assert resolve(None, "numpy").name == "cupy"
        with miras_gpu.use_backend("triton"):  # context beats env
            assert resolve(None, "numpy").name == "triton"
            assert resolve("numpy", "torch").name == "numpy"  # per call beats context
            with miras_gpu.use_backend("torch"):  # innermost context wins
                assert resolve(None, "numpy").name == "torch"
            assert resolve(None, "numpy").name == "triton"
        assert resolve(None, "numpy").name == "cupy"
    assert resolve(None, "numpy").name == "numpy"


def test_precedence_through_public_ops(fakes):
    q, k, v, gates = _inputs()
    cfg = zoo.deltanet(8)
    assert miras_gpu.scan(cfg, q, k, v, gates)[0] == "numpy"
    assert miras_gpu.scan(cfg, q, k, v, gates, backend="numpy")[0] == "numpy"
    with miras_gpu.use_backend("numpy"):
        assert miras_gpu.scan_chunked(cfg, q, k, v, gates, chunk_size=2)[0] == "numpy"
    tq, tk, tv = _t(q), _t(k), _t(v)
    assert miras_gpu.scan(cfg, tq, tk, tv)[0] == "torch"
    assert miras_gpu.scan(cfg, tq, tk, tv, backend="cupy")[0] == "cupy"


def test_env_var_invalid_name(fakes, monkeypatch):
    monkeypatch.setenv("MIRAS_BACKEND", "tpu")
    with pytest.raises(ValueError, match="MIRAS_BACKEND='tpu' is not a backend"):
        backends.resolve(None, "numpy")
    monkeypatch.setenv("MIRAS_BACKEND", "  ")  # blank: ignored
    assert backends.resolve(None, "numpy").name == "numpy"


def test_context_resets_after_error(fakes):
    with pytest.raises(RuntimeError):
        with miras_gpu.use_backend("cupy"):
            raise RuntimeError
    assert backends.resolve(None, "numpy").name == "numpy"


@pytest.mark.parametrize("name", ["triton", "cupy"])
def test_missing_package(monkeypatch, name):
    monkeypatch.setattr(backends, "_loaded", {})
    monkeypatch.setattr(backends, "_package_installed", lambda p: p != name)
    with pytest.raises(BackendUnavailableError,
                       match=f"backend '{name}' is not available: the '{name}' package is not "
                             "installed"):
        miras_gpu.get_backend(name)


def test_missing_torch(monkeypatch):
    monkeypatch.setattr(backends, "_loaded", {})
    monkeypatch.setattr(backends, "_package_installed", lambda p: p != "torch")
    for name in ("torch", "triton", "cupy"):
        with pytest.raises(BackendUnavailableError, match="'torch' package is not installed"):
            miras_gpu.get_backend(name)


@pytest.mark.parametrize("name", ["triton", "cupy"])
def test_no_cuda_device(monkeypatch, name):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(backends, "_loaded", {})
    monkeypatch.setattr(backends, "_package_installed", lambda p: True)
    monkeypatch.setattr(backends, "_cuda_device_present", lambda: False)
    with pytest.raises(BackendUnavailableError, match="needs a CUDA device, and none is present"):
        miras_gpu.get_backend(name)


def test_triton_interpreter_needs_no_cuda_device(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(backends, "_loaded", {})
    monkeypatch.setattr(backends, "_package_installed", lambda p: True)
    monkeypatch.setattr(backends, "_cuda_device_present", lambda: False)
    monkeypatch.setitem(backends.KERNEL_MODULES, "triton", "miras_gpu._no_such_backend")
    with pytest.raises(BackendUnavailableError, match="not implemented yet"):  # got past CUDA
        miras_gpu.get_backend("triton")
    with pytest.raises(BackendUnavailableError, match="needs a CUDA device"):
        miras_gpu.get_backend("cupy")


@pytest.mark.parametrize("name", ["triton", "cupy"])
def test_not_implemented_yet(monkeypatch, name):
    monkeypatch.setattr(backends, "_loaded", {})
    monkeypatch.setattr(backends, "_package_installed", lambda p: True)
    monkeypatch.setattr(backends, "_cuda_device_present", lambda: True)
    monkeypatch.setitem(backends.KERNEL_MODULES, name, "miras_gpu._no_such_backend")
    with pytest.raises(BackendUnavailableError, match="not implemented yet in this version"):
        miras_gpu.get_backend(name)
    with pytest.raises(BackendUnavailableError, match="not implemented yet"):
        with miras_gpu.use_backend(name):
            pass
    monkeypatch.setitem(backends.KERNEL_MODULES, name, "miras_ref.zoo")  # no scan/scan_chunked
    with pytest.raises(BackendUnavailableError, match="not implemented yet"):
        miras_gpu.get_backend(name)


def test_real_missing_backends_fail_clearly(monkeypatch):
    monkeypatch.setattr(backends, "_loaded", {})
    missing = [n for n in ("triton", "cupy") if n not in miras_gpu.available_backends()]
    for name in missing:
        with pytest.raises(BackendUnavailableError, match=f"backend '{name}' is not available: "
                           "(the .* package is not installed|it needs a CUDA device|not "
                           "implemented yet)"):
            miras_gpu.get_backend(name)
    if missing:
        monkeypatch.setenv("MIRAS_BACKEND", missing[0])
        q, k, v, gates = _inputs()
        with pytest.raises(BackendUnavailableError):
            miras_gpu.scan(zoo.deltanet(8), q, k, v, gates)


def test_import_is_lazy():
    code = ("import sys, numpy as np, miras_gpu\n"
            "bad = [m for m in ('torch', 'triton', 'cupy') if m in sys.modules]\n"
            "assert not bad, bad\n"
            "from miras_ref import zoo\n"
            "x = np.ones((1, 3, 1, 4)) / 2\n"
            "miras_gpu.scan(zoo.deltanet(4), x, x, x)\n"  # numpy backend: still no torch
            "miras_gpu.scan_chunked(zoo.deltanet(4), x, x, x, chunk_size=2)\n"
            "bad = [m for m in ('torch', 'triton', 'cupy') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# dispatch on input types


def test_auto_numpy_and_torch_agree_with_reference():
    q, k, v, gates = _inputs()
    cfg = zoo.gated_deltanet(8)
    y_ref, s_ref = miras_ref.scan(cfg, q, k, v, gates, output_final_state=True)
    y, s = miras_gpu.scan(cfg, q, k, v, gates, output_final_state=True)
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, y_ref)
    yt, st = miras_gpu.scan(cfg, _t(q), _t(k), _t(v), {n: _t(a) for n, a in gates.items()},
                            output_final_state=True)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float64
    np.testing.assert_allclose(yt.numpy(), y_ref, atol=1e-12)
    np.testing.assert_allclose(st["W"].numpy(), s_ref["W"], atol=1e-12)


def test_torch_backend_on_numpy_inputs_returns_numpy(monkeypatch):
    q, k, v, gates = _inputs()
    cfg = zoo.gated_deltanet(8)
    y_ref, s_ref = miras_ref.scan_chunked(cfg, q, k, v, gates, chunk_size=2,
                                          output_final_state=True)
    monkeypatch.setenv("MIRAS_BACKEND", "torch")
    y, s = miras_gpu.scan_chunked(cfg, q, k, v, gates, chunk_size=2, output_final_state=True)
    assert isinstance(y, np.ndarray) and isinstance(s["W"], np.ndarray)
    np.testing.assert_allclose(y, y_ref, atol=1e-12)
    np.testing.assert_allclose(s["W"], s_ref["W"], atol=1e-12)


def test_numpy_backend_refuses_tensors():
    q, k, v, gates = _inputs()
    with pytest.raises(TypeError, match="q is a torch tensor, but backend 'numpy' takes NumPy"):
        miras_gpu.scan(zoo.deltanet(8), _t(q), _t(k), _t(v), backend="numpy")


@pytest.mark.parametrize("odd", ["k", "v", "gates['eta']", "initial_state['W']"])
def test_mixing_numpy_and_torch_names_the_argument(odd):
    q, k, v, gates = _inputs()
    init = {"W": np.full((1, 2, 8, 8), 0.1)}
    args = {"k": k, "v": v, "gates['eta']": gates["eta"], "initial_state['W']": init["W"]}
    args[odd] = _t(args[odd])
    with pytest.raises(TypeError, match=rf"{odd.replace('[', '.').replace(']', '.')} is a torch "
                                        "tensor but q is a NumPy array"):
        miras_gpu.scan(zoo.deltanet(8), q, args["k"], args["v"],
                       {"eta": args["gates['eta']"], "alpha": gates["alpha"]},
                       initial_state={"W": args["initial_state['W']"]})


def test_mixing_torch_first():
    q, k, v, gates = _inputs()
    with pytest.raises(TypeError, match="v is a NumPy array but q is a torch tensor"):
        miras_gpu.scan_chunked(zoo.deltanet(8), _t(q), _t(k), v, chunk_size=2)


# --------------------------------------------------------------------------------------------
# the torch backend validates its inputs like miras_ref


def _tin(dtype=torch.float64):
    q, k, v, gates = _inputs()
    return ([torch.as_tensor(x, dtype=dtype) for x in (q, k, v)],
            {n: torch.as_tensor(a, dtype=dtype) for n, a in gates.items()})


OPS = [lambda *a, **kw: miras_gpu.scan(*a, backend="torch", **kw),
       lambda *a, **kw: miras_gpu.scan_chunked(*a, backend="torch", chunk_size=2, **kw)]


@pytest.mark.parametrize("op", OPS, ids=["scan", "scan_chunked"])
def test_torch_validation(op):
    (q, k, v), gates = _tin()
    cfg = zoo.gated_deltanet(8)
    from miras_gpu.torch import scan as torch_scan

    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        torch_scan(cfg, q.numpy(), k, v)
    with pytest.raises(TypeError, match="k has dtype torch.float32 but q has torch.float64"):
        op(cfg, q, k.float(), v)
    with pytest.raises(ValueError, match="v is on meta but q is on cpu"):
        op(cfg, q, k, v.to("meta"))
    with pytest.raises(TypeError, match="v must be a floating-point tensor"):
        op(cfg, q, k, v.long())
    with pytest.raises(ValueError, match="v contains NaN or inf"):
        op(cfg, q, k, torch.where(v > 0, v, float("nan")))
    with pytest.raises(ValueError, match="k must have the same"):
        op(cfg, q, k[:, :3], v)
    with pytest.raises(ValueError, match="must have d_k = 6"):
        op(zoo.gated_deltanet(6), q, k, v)
    with pytest.raises(ValueError, match=r"gates\['alpha'\] must be in \(0.0, 1.0\]"):
        op(cfg, q, k, v, {**gates, "alpha": gates["alpha"] + 1.0})
    with pytest.raises(ValueError, match=r"gates\['eta'\] must start with"):
        op(cfg, q, k, v, {**gates, "eta": gates["eta"][:, :2]})
    with pytest.raises(ValueError, match="gates has unknown keys"):
        op(cfg, q, k, v, {**gates, "beta": gates["eta"]})
    with pytest.raises(ValueError, match=r"initial_state must have keys \['W'\]"):
        op(cfg, q, k, v, gates, initial_state={"A": torch.zeros(1, 2, 8, 8)})
    with pytest.raises(ValueError, match=r"initial_state\['W'\] must have shape"):
        op(cfg, q, k, v, gates, initial_state={"W": torch.zeros(1, 2, 8, 7)})


def test_torch_chunked_refusals():
    (q, k, v), gates = _tin()
    from miras_gpu.torch import scan_chunked

    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        scan_chunked(zoo.deltanet(8), q, k, v, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size must be an integer"):
        scan_chunked(zoo.deltanet(8), q, k, v, chunk_size=2.0)
    with pytest.raises(ValueError, match="defined for plain GD, not momentum"):
        scan_chunked(zoo.titans_lmm(8), q, k, v, chunk_size=2)


def test_torch_not_implemented_parts_say_so():
    from miras_ref.algorithms import GD, ImplicitGD
    from miras_ref.bias import L2Bias, LpBias
    from miras_ref.config import MirasConfig
    from miras_ref.memory import MatrixMemory
    from miras_ref.retention import FDivergenceRetention, L2Retention

    (q, k, v), gates = _tin()
    fdiv = MirasConfig("fdiv", MatrixMemory(8, 8), L2Bias(), FDivergenceRetention(), GD(),
                       {"eta": 0.1, "alpha": 1.0})
    init = {"W": torch.full((1, 2, 8, 8), 1.0 / 64)}
    with pytest.raises(ValueError, match="torch backend has no twin of FDivergenceRetention"):
        miras_gpu.scan(fdiv, q, k, v, {"eta": gates["eta"]}, initial_state=init)
    implicit_lp = MirasConfig("x", MatrixMemory(8, 8), LpBias(3.0), L2Retention(), ImplicitGD())
    with pytest.raises(ValueError, match="ImplicitGD in the torch backend has only the closed"):
        miras_gpu.scan(implicit_lp, q, k, v, gates)
