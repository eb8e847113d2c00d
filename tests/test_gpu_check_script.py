"""scripts/gpu_kernels_check.py on the CPU (``--dry-run``: Triton's interpreter, tiny sizes):
the stress section runs each row next to the exact float64 result and judges it by
``stress_verdict``.

Both run in a child process: the script sets ``TRITON_INTERPRET`` before importing triton,
and tests/test_triton.py must be the first to import it in this process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("needs triton", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_kernels_check.py")


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=600, **kw)


def test_stress_dry_run_passes_every_row(tmp_path):
    report = tmp_path / "stress.md"
    proc = _run([SCRIPT, "--dry-run", "--skip", "correctness,bench", "--report", str(report)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in report.read_text().splitlines()
            if line.startswith("| ") and "p=4" in line.split("|")[1]]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-1] == "pass", row
        assert cells[3] == "True" and cells[5] == "True", row  # forward and gradients finite
        assert float(cells[6]) > 0 and float(cells[7]) > 0, row  # the exact maxima


def test_stress_verdict():
    code = """
import json, math, sys
sys.argv = [sys.argv[0], "--dry-run"]
sys.path.insert(0, "scripts")
import gpu_kernels_check as g
big = 1e40
print(json.dumps([
    g.stress_verdict(1.0, 2.0, 1.0, 2.0),            # all finite: pass
    g.stress_verdict(1.0, math.inf, 1.0, 2.0),       # NaN gradients, exact ones finite: FAIL
    g.stress_verdict(math.inf, 2.0, 1.0, 2.0),       # NaN forward: FAIL
    g.stress_verdict(1.0, math.inf, 1.0, big),       # exact gradients beyond float32
    g.stress_verdict(1.0, math.inf, big, math.inf),  # exact forward beyond float32
    g.stress_verdict(math.inf, 2.0, 1.0, big),       # NaN forward is still checked
]))
"""
    proc = _run(["-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [ok for ok, _ in out] == [True, False, False, True, True, False]
    assert out[0][1] == "pass" and out[1][1] == "FAIL"
    assert "exact gradients beyond float32" in out[3][1]
    assert "exact result beyond float32" in out[4][1]
