"""A tour of the reference: every model of Table 1 and Moneta, Yaad, Memora on one recall task.

Run ``python -m miras_ref.tour [--out DIR]``. It generates an associative-recall problem (unit
keys, values, a few outlier values of large magnitude), lets each model write the pairs
token by token, then queries every clean key with the final memory and reports the relative
recall error ``‖M(k_i) - v_i‖ / ‖v_i‖``. It prints a table of the four MIRAS choices and the
error, and saves a bar chart to ``DIR/tour.png`` (default ``outputs/``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from . import zoo
from .recurrent import read_memory, scan

#: learning rates tried for each model; the tour reports each model at its best one
ETA_GRID = (0.1, 0.3, 1.0, 3.0)
#: keys have unit norm, so softmax attention needs a sharper temperature than 1/sqrt(d)
MODEL_KWARGS = {"softmax_attention": {"scale": 20.0}}


def recall_problem(n_pairs: int = 8, d: int = 32, n_outliers: int = 1,
                   outlier_scale: float = 10.0, passes: int = 4, seed: int = 0):
    """An associative-recall sequence: ``passes`` repetitions of ``n_pairs`` pairs.

    Keys have unit norm, values ``N(0, 1)`` entries, ``n_outliers`` values are scaled by
    ``outlier_scale``. Returns keys and values ``[1, passes * n_pairs, 1, d]`` and the indices
    of the clean pairs (into the first pass).
    """
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((n_pairs, d))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((n_pairs, d))
    outliers = rng.choice(n_pairs, n_outliers, replace=False)
    v[outliers] *= outlier_scale
    clean = np.setdiff1d(np.arange(n_pairs), outliers)
    k, v = np.tile(k, (passes, 1)), np.tile(v, (passes, 1))
    return k[None, :, None, :], v[None, :, None, :], clean


def run_model(name: str, k: np.ndarray, v: np.ndarray, clean: np.ndarray,
              eta: float | None = None) -> float:
    """Write all pairs with model ``name`` (learning rate ``eta``, or the zoo's default) and
    return the mean relative recall error ``‖M(k_i) - v_i‖/‖v_i‖`` over ``clean``."""
    d = k.shape[-1]
    cfg = zoo.get(name, d, **MODEL_KWARGS.get(name, {}))
    B, T, H = k.shape[:3]
    gates = cfg.default_gates(B, T, H)
    if "eta" in gates and eta is not None:
        gates["eta"][:] = eta
    kk, vv = k, v
    if name == "hgrn2":  # HGRN2's key is 1 - α_t: give it key-dependent channel-wise α
        gates["alpha"] = np.clip(1.0 - np.abs(k), 0.05, 0.999)
    if name == "deltaproduct":  # two delta steps per token on the same pair
        kk = np.repeat(k[:, :, :, None], 2, axis=3)
        vv = np.repeat(v[:, :, :, None], 2, axis=3)
    _, state = scan(cfg, k, kk, vv, gates, output_final_state=True)
    y = read_memory(cfg, state, k)[0, :, 0]
    err = np.linalg.norm(y - v[0, :, 0], axis=-1) / np.linalg.norm(v[0, :, 0], axis=-1)
    return float(err[clean].mean())


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs", help="folder for tour.png")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.dim < 1:
        parser.error("--pairs and --dim must be positive")
    k, v, clean = recall_problem(args.pairs, args.dim)
    rows = []
    t0 = time.perf_counter()
    for name in zoo.ALL:
        cfg = zoo.get(name, args.dim)
        grid = ETA_GRID if "eta" in cfg.required_gates else (None,)
        err, eta = min((run_model(name, k, v, clean, e), e) for e in grid)
        rows.append({"model": name, **cfg.describe(), "eta": "-" if eta is None else f"{eta:g}",
                     "recall_error": err})
    elapsed = time.perf_counter() - t0
    header = ("model", "memory", "bias", "retention", "algorithm", "eta", "recall_error")
    widths = [max(len(h), *(len(f"{r[h]:.3f}" if h == "recall_error" else str(r[h]))
                            for r in rows)) for h in header]
    print(f"Associative recall: {args.pairs} pairs (1 outlier value x10) written 4 times, "
          f"d={args.dim}; error = mean ||M(k)-v||/||v|| over clean pairs, each model at its "
          f"best eta in {ETA_GRID}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        cells = [f"{r[h]:.3f}" if h == "recall_error" else str(r[h]) for h in header]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)))
    print(f"({len(rows)} models in {elapsed:.1f} s)")
    if not args.no_plot:
        path = Path(args.out) / "tour.png"
        _plot(rows, path)
        print(f"plot saved to {path}")
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    colors = {"vector": "tab:gray", "matrix": "tab:blue", "mlp": "tab:orange"}
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar([r["model"] for r in rows], [r["recall_error"] for r in rows],
           color=[colors.get(r["memory"], "tab:green") for r in rows])
    ax.set_ylabel("relative recall error (clean pairs)")
    ax.set_title("MIRAS models on one associative-recall problem with outliers")
    ax.tick_params(axis="x", rotation=60)
    for label, c in colors.items():
        ax.bar([], [], color=c, label=f"{label} memory")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
