"""Backend registry: which implementation of the MIRAS ops runs a call.

Four backends are registered, all implementing the op spec that :mod:`miras_ref` defines
(``scan`` and ``scan_chunked``, same arguments, shapes and returns):

==========  ==============================================  ============
name        implementation                                  arrays
==========  ==============================================  ============
``numpy``   :mod:`miras_ref` itself (float64, CPU)          NumPy
``torch``   :mod:`miras_gpu.torch` (autograd, CPU and CUDA) torch
``triton``  :mod:`miras_gpu.triton` (fused chunk kernels)   torch
``cupy``    raw CUDA kernels (not implemented yet)          torch
==========  ==============================================  ============

Which backend runs a call, first match wins:

1. the call's own ``backend=`` argument;
2. the innermost :func:`use_backend` context;
3. the environment variable ``MIRAS_BACKEND``;
4. the type of the inputs: torch tensors -> ``"torch"``, anything else (NumPy arrays, lists)
   -> ``"numpy"``.

Detection is lazy: importing :mod:`miras_gpu` imports neither torch, triton nor cupy; a
backend's packages are imported the first time it is asked for. ``triton`` needs a CUDA
device unless ``TRITON_INTERPRET=1`` (Triton's CPU interpreter) is set. Asking for a backend that
cannot run here raises :class:`BackendUnavailableError`, whose message names what is missing:
the package, a CUDA device, or the implementation itself.

Inputs of one call must all be NumPy-like or all torch tensors (``TypeError`` naming the odd
argument otherwise). A torch-based backend given NumPy inputs converts them to tensors and
returns NumPy outputs; the ``numpy`` backend refuses torch tensors (it would silently drop
their autograd graph and device).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

ENV_VAR = "MIRAS_BACKEND"
#: every registered backend name, in order of preference for display
BACKENDS = ("numpy", "torch", "triton", "cupy")

_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("miras_backend",
                                                                     default=None)
_loaded: dict[str, Backend] = {}


class BackendUnavailableError(RuntimeError):
    """A registered backend cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class Backend:
    """A loaded backend: its ops and the array type it computes on.

    Attributes
    ----------
    name : str
        Registry name.
    array_kind : str
        ``"numpy"`` or ``"torch"``: the array type of its inputs and outputs.
    scan, scan_chunked : callable
        The ops, with the signatures of :func:`miras_ref.scan` and
        :func:`miras_ref.scan_chunked` (``scan_chunked`` also takes ``cu_seqlens``).
    """

    name: str
    array_kind: str
    scan: Callable
    scan_chunked: Callable


# --------------------------------------------------------------------------------------------
# detection (module-level functions so tests can monkeypatch them)


def _package_installed(package: str) -> bool:
    """True if ``package`` can be imported, without importing it."""
    if package in sys.modules:
        return True
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _cuda_device_present() -> bool:
    """True if a CUDA device is visible (asked through torch, then cupy)."""
    if _package_installed("torch"):
        import torch

        return bool(torch.cuda.is_available())
    if _package_installed("cupy"):  # pragma: no cover - no cupy without torch in CI
        try:
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:
            return False
    return False


def _unavailable(name: str, why: str) -> BackendUnavailableError:
    return BackendUnavailableError(f"backend {name!r} is not available: {why}")


# --------------------------------------------------------------------------------------------
# loaders


def _load_numpy() -> Backend:
    import miras_ref

    from .varlen import numpy_scan_chunked

    return Backend("numpy", "numpy", miras_ref.scan, numpy_scan_chunked)


def _load_torch() -> Backend:
    if not _package_installed("torch"):
        raise _unavailable("torch", "the 'torch' package is not installed "
                                    "(pip install 'miras[torch]')")
    from . import torch as torch_ops

    return Backend("torch", "torch", torch_ops.scan, torch_ops.scan_chunked)


#: the module of each GPU-kernel backend (a table so tests can point one elsewhere)
KERNEL_MODULES = {"triton": f"{__package__}.triton", "cupy": f"{__package__}.cupy"}


def _load_kernels(name: str, packages: tuple[str, ...], extra: str) -> Backend:
    """Load a GPU-kernel backend (``triton`` or ``cupy``) from its module, which must define
    ``scan`` and ``scan_chunked``."""
    for package in packages:
        if not _package_installed(package):
            raise _unavailable(name, f"the {package!r} package is not installed "
                                     f"(pip install 'miras[{extra}]')")
    # Triton's CPU interpreter (TRITON_INTERPRET=1, set before import) runs without a GPU
    interpreted = name == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
    if not interpreted and not _cuda_device_present():
        raise _unavailable(name, "it needs a CUDA device, and none is present")
    module_name = KERNEL_MODULES[name]
    not_yet = "not implemented yet in this version of miras_gpu (use backend='torch')"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise _unavailable(name, f"importing {module_name} failed: {err}") from err
        raise _unavailable(name, not_yet) from None
    if not all(callable(getattr(module, op, None)) for op in ("scan", "scan_chunked")):
        raise _unavailable(name, not_yet)
    return Backend(name, "torch", module.scan, module.scan_chunked)


_LOADERS: dict[str, Callable[[], Backend]] = {
    "numpy": _load_numpy,
    "torch": _load_torch,
    "triton": lambda: _load_kernels("triton", ("torch", "triton"), "triton"),
    "cupy": lambda: _load_kernels("cupy", ("torch", "cupy"), "cupy"),
}


def _check_name(name, source: str = "backend") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a backend name (str), got {type(name).__name__}")
    if name not in _LOADERS:
        raise ValueError(f"{source}={name!r} is not a backend; choose one of "
                         f"{', '.join(BACKENDS)}")
    return name


def get_backend(name: str) -> Backend:
    """Return the named backend, loading it on first use.

    Raises
    ------
    ValueError
        ``name`` is not a registered backend.
    BackendUnavailableError
        The backend is registered but cannot run here (package missing, no CUDA device, or
        not implemented yet); the message says which.
    """
    name = _check_name(name)
    if name not in _loaded:
        _loaded[name] = _LOADERS[name]()
    return _loaded[name]


def available_backends() -> list[str]:
    """Names of the backends that can run here (loading each one to find out)."""
    out = []
    for name in BACKENDS:
        try:
            get_backend(name)
        except BackendUnavailableError:
            continue
        out.append(name)
    return out


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Context manager: calls inside it that pass no ``backend=`` run on ``name``.

    The backend is loaded on entry, so an unavailable one fails here, not at the first call.
    Contexts nest; the innermost wins. It is local to the thread / async task
    (a :class:`contextvars.ContextVar`).
    """
    backend = get_backend(name)
    token = _context.set(name)
    try:
        yield backend
    finally:
        _context.reset(token)


# --------------------------------------------------------------------------------------------
# resolution and dispatch


def array_kind(x) -> str:
    """``"torch"`` for a torch tensor, else ``"numpy"`` (torch is never imported here)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    return "numpy"


def named_inputs(q, k, v, gates, initial_state) -> dict[str, object]:
    """The array arguments of a call by their names in the signature (``gates['eta']`` ...)."""
    named = {"q": q, "k": k, "v": v}
    for prefix, group in (("gates", gates), ("initial_state", initial_state)):
        if isinstance(group, Mapping):
            named.update({f"{prefix}[{key!r}]": val for key, val in group.items()})
    return named


def input_kind(named: Mapping[str, object]) -> str:
    """The common array kind of the inputs; ``TypeError`` naming the first odd argument."""
    kind, first = None, None
    for name, x in named.items():
        if x is None:
            continue
        this = array_kind(x)
        if kind is None:
            kind, first = this, name
        elif this != kind:
            what = {"torch": "a torch tensor", "numpy": "a NumPy array"}
            raise TypeError(f"{name} is {what[this]} but {first} is {what[kind]}: pass all "
                            "inputs of one call as NumPy arrays or all as torch tensors")
    return kind or "numpy"


def resolve(backend: str | None, kind: str) -> Backend:
    """Pick the backend of a call (per-call > context > ``MIRAS_BACKEND`` > input type)."""
    if backend is not None:
        return get_backend(_check_name(backend, "backend"))
    name = _context.get()
    if name is not None:
        return get_backend(name)
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return get_backend(_check_name(env, ENV_VAR))
    return get_backend("torch" if kind == "torch" else "numpy")


def call(op: str, config, q, k, v, gates, initial_state, backend, **kwargs):
    """Run ``op`` (``"scan"`` or ``"scan_chunked"``) on the backend chosen for these inputs."""
    named = named_inputs(q, k, v, gates, initial_state)
    kind = input_kind(named)
    chosen = resolve(backend, kind)
    fn = getattr(chosen, op)
    if chosen.array_kind == kind:
        return fn(config, q, k, v, gates=gates, initial_state=initial_state, **kwargs)
    if chosen.array_kind == "numpy":
        name = next(n for n, x in named.items() if x is not None and array_kind(x) == "torch")
        raise TypeError(f"{name} is a torch tensor, but backend {chosen.name!r} takes NumPy "
                        "arrays; pass x.detach().cpu().numpy() or use backend='torch'")
    return _run_on_numpy_inputs(chosen, fn, config, q, k, v, gates, initial_state, **kwargs)


def _run_on_numpy_inputs(chosen, fn, config, q, k, v, gates, initial_state, **kwargs):
    """A torch-based backend called with NumPy inputs: convert in, run, convert back."""
    import numpy as np
    import torch

    device = "cpu" if chosen.name == "torch" else "cuda"

    def to_tensor(x):
        a = np.asarray(x)
        if not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float64)  # ints / bools, as miras_ref accepts them
        return torch.as_tensor(a, device=device)

    def to_dict(d):
        return None if d is None else {key: to_tensor(val) for key, val in d.items()}

    y, final = fn(config, to_tensor(q), to_tensor(k), to_tensor(v), gates=to_dict(gates),
                  initial_state=to_dict(initial_state), **kwargs)
    y = y.detach().cpu().numpy()
    if final is not None:
        final = {key: val.detach().cpu().numpy() for key, val in final.items()}
    return y, final
