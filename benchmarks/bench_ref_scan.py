"""Time the NumPy reference's recurrent MLP-memory scan (the foundation's speed goal).

Runs Moneta, Yaad, Memora and TTT-MLP (2-layer MLP memory, expansion 4) token by token at
B=1, H=2, D=16, T=1024 in float64 on the CPU, and the chunked form at chunk 16 next to it,
and prints the seconds per call (best of ``--repeat``) and the ratio to the 2 s goal.

    python benchmarks/bench_ref_scan.py [--repeat 3] [--length 1024]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from miras_ref import scan, scan_chunked, zoo

GOAL_S = 2.0


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--length", type=int, default=1024)
    args = parser.parse_args(argv)
    B, T, H, D = 1, args.length, 2, 16
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, T, H, D)) for _ in range(3))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    print(f"numpy {np.__version__}, python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}; B={B} T={T} H={H} D={D}, float64")
    print(f"{'model':10s} {'recurrent s':>12s} {'vs 2 s goal':>12s} {'chunked(16) s':>14s}")
    for name in ("moneta", "yaad", "memora", "ttt_mlp"):
        cfg = zoo.get(name, D)
        rec = best_time(lambda cfg=cfg: scan(cfg, q, k, v), args.repeat)
        chk = best_time(lambda cfg=cfg: scan_chunked(cfg, q, k, v, chunk_size=16), args.repeat)
        print(f"{name:10s} {rec:12.3f} {rec / GOAL_S:11.2f}x {chk:14.3f}")


if __name__ == "__main__":
    main()
