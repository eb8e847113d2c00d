"""miras_gpu.triton.resources: the backend's launches recorded under the interpreter and
compiled for sm_90 on the CPU (shared memory from Triton, registers from ptxas).

The command runs in a child process: tests/test_triton.py imports the kernels under the
interpreter, and compiling needs them imported without it. Nothing here imports triton
while the test modules are collected (test_triton.py must be first to import it);
:func:`_resources` imports the module inside the tests."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("needs triton", allow_module_level=True)


def _resources():
    from miras_gpu.triton import resources

    return resources


@pytest.fixture(scope="module")
def deltanet_rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("resources") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "miras_gpu.triton.resources", "--models",
                           "deltanet", "--dims", "16", "--dtypes", "float32", "--chunk", "16",
                           "--json", str(path)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "matrix_state_kernel" in proc.stdout
    return json.loads(path.read_text())


def test_records_the_backends_forward_and_backward_launches(deltanet_rows):
    kernels = [r["kernel"] for r in deltanet_rows]
    # DeltaNet at d = 16 runs forward and backward on kernels (docs/kernels.md): state pass,
    # reads, then the backward's state-gradient pass and chunk-parallel gradients
    assert kernels[:2] == ["matrix_state_kernel", "matrix_output_kernel"]
    assert len(kernels) > 2 and all(k.startswith("matrix_") for k in kernels)
    first = deltanet_rows[0]
    assert first["args"]["k_ptr"] == {"ptr": "fp32"}
    assert first["args"]["BK"] == {"value": 16} and first["args"]["PREC"] == {"value": "ieee"}


def test_compiles_each_launch_for_sm90(deltanet_rows):
    resources = _resources()
    for r in deltanet_rows:
        # a 16 x 16 state and 16-token chunks: a few KiB of tiles, well under the limit
        assert 0 < r["shared"] <= resources.SM90_SHARED_BYTES, r["kernel"]
        assert 0 < r["registers"] <= 255, r["kernel"]
        assert r["spill_bytes"] >= 0
    text = resources.table(deltanet_rows)
    assert "`matrix_state_kernel`" in text and "**no**" not in text


def test_table_flags_a_kernel_over_the_limit(deltanet_rows):
    resources = _resources()
    big = {**deltanet_rows[0], "shared": resources.SM90_SHARED_BYTES + 1}
    assert "| **no** |" in resources.table([big])


def test_record_refuses_without_the_interpreter(monkeypatch):
    resources = _resources()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resources.record(models=["deltanet"], dims=[16])


def test_every_kernel_case_compiles_for_sm90(tmp_path):
    """Every launch of every case of :func:`miras_gpu.triton.cases.kernel_cases` (float32,
    d = 16, scalar and channel-wise gates) compiles for sm_90 with the installed Triton. The
    interpreter tests run the same kernels but do not compile them: a compiler's refusal (a
    loop-carried variable whose type changes) or crash shows only here, or on a GPU."""
    from miras_gpu.triton.cases import kernel_cases

    path = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cases = list(kernel_cases(16))
    proc = subprocess.run([sys.executable, "-m", "miras_gpu.triton.resources", "--models",
                           ",".join(cases), "--dims", "16", "--dtypes", "float32", "--chunk",
                           "16", "--gates", "scalar,channel", "--json", str(path)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(path.read_text())
    for name in cases:
        mine = [r for r in rows if r["model"].split(" ")[0] == name]
        assert mine, name
        assert all(0 < r["registers"] <= 255 for r in mine), name
    kernels = {r["kernel"] for r in rows}
    assert {"mlp_backward_norms_kernel", "mlp_backward_state_kernel",
            "mlp_backward_kl_reads_kernel", "matrix_backward_kernel"} <= kernels
