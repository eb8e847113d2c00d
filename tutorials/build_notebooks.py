"""Build (and run) the MIRAS tutorial notebooks.

Every notebook in ``tutorials/`` is written here as a list of Markdown and code cells, so the
notebooks can be regenerated, reviewed as plain Python and kept in step with ``miras_ref``::

    python tutorials/build_notebooks.py                 # write and execute every notebook
    python tutorials/build_notebooks.py 03 07           # only the notebooks whose name starts so
    python tutorials/build_notebooks.py --no-execute    # write the cells, keep no outputs

Executing runs each notebook top to bottom in a fresh ``python3`` kernel (``nbclient``) with
``tutorials/`` as working directory, stores its outputs (plots as PNG) in the ``.ipynb`` and
prints the wall-clock time each took. Needs ``nbformat``, ``nbclient`` and ``ipykernel``.

The cell specifications (:data:`NOTEBOOKS`) import nothing beyond the standard library, so
``tests/test_tutorials_meta.py`` can check that the committed notebooks match them.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: kernel the notebooks are written for
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text: str) -> tuple[str, str]:
    """A Markdown cell (leading indentation and surrounding blank lines removed).

    Headings hold no ``$...$`` math and no ``code``: the site's table of contents shows math
    raw and drops code spans (and its links then miss the heading's anchor), so write symbols
    in Unicode there (``ℓ2``, ``*δ*``) and keep math and code in the paragraph below.
    """
    text = textwrap.dedent(text).strip("\n")
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#") and ("$" in line or "`" in line):
            raise ValueError(f"math or code in a Markdown heading (the site's table of contents "
                             f"shows it wrongly; use plain text or Unicode): {line!r}")
    return ("markdown", text)


def code(text: str) -> tuple[str, str]:
    """A code cell (leading indentation and surrounding blank lines removed)."""
    return ("code", textwrap.dedent(text).strip("\n"))


# Shared first code cell: imports are added per notebook in front of this block.
PLOT_STYLE = r"""
plt.rcParams.update({"figure.dpi": 80, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
rng = np.random.default_rng(0)


def unit(x):
    '''Scale the last axis of x to unit Euclidean norm.'''
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
"""


def setup(imports: str) -> tuple[str, str]:
    """First code cell: the notebook's imports, the plot style, a seeded RNG and ``unit``."""
    return code(textwrap.dedent(imports).strip("\n") + "\n" + textwrap.dedent(PLOT_STYLE))


# ==============================================================================================
# 01 - associative memory
# ==============================================================================================
def nb01() -> list[tuple[str, str]]:
    return [
        md(r"""
        # 1. Associative memory: learning key → value pairs online

        MIRAS reads every sequence model as an **associative memory** that learns, while it
        reads the sequence, a map from keys to values. Definition 3.1 of the paper: given keys
        $\mathcal K \subseteq \mathbb R^{d_k}$ and values $\mathcal V \subseteq \mathbb R^{d_v}$,
        the memory is the operator that minimises an objective $\mathcal L$, the
        **attentional bias**:

        $$\mathcal M^* = \arg\min_{\mathcal M} \; \mathcal L(\mathcal M(\mathbf K); \mathbf V). \tag{Eq 4}$$

        With a parametric memory $\mathcal M(W, \mathbf k)$ and the per-token loss
        $\ell(W; \mathbf k_t, \mathbf v_t) := \mathcal L(\mathcal M(W, \mathbf k_t), \mathbf v_t)$,
        the simplest learning rule is one step of online gradient descent per token:

        $$W_t = W_{t-1} - \eta_t \nabla \ell(W_{t-1}; \mathbf k_t, \mathbf v_t). \tag{Eq 5}$$

        This notebook runs Eq 4-5 on a **matrix memory** $\mathcal M(W, \mathbf k) = W\mathbf k$,
        $W \in \mathbb R^{d_v \times d_k}$ (the library's orientation, see
        `docs/paper-notes.md`), with two attentional biases: the dot product (the Hebbian
        rule of linear attention) and the $\ell_2$ regression loss (the delta rule).
        """),
        setup("""
        import matplotlib.pyplot as plt
        import numpy as np

        from miras_ref import read_memory, scan, zoo
        from miras_ref.associative import (associative_objective, delta_rule_update,
                                           hebbian_update, online_gd_step)
        from miras_ref.bias import DotProductBias, L2Bias
        from miras_ref.memory import MatrixMemory
        """),
        md(r"""
        ## Eq 4 and Eq 5 with online_gd_step

        `associative_objective(memory, params, bias, keys, values)` evaluates Eq 4,
        $\sum_i \ell(W; \mathbf k_i, \mathbf v_i)$, and `online_gd_step` takes one step of
        Eq 5 on one pair. The two biases:

        * dot product, $\ell(W; \mathbf k, \mathbf v) = -\langle W\mathbf k, \mathbf v\rangle$;
        * $\ell_2$, $\ell(W; \mathbf k, \mathbf v) = \tfrac12\|W\mathbf k - \mathbf v\|_2^2$.

        Six pairs in $d = 16$ are written five times each, one pair per step.
        """),
        code(r"""
        d, N = 16, 6
        keys = unit(rng.standard_normal((N, d)))             # k_i, unit norm
        values = rng.standard_normal((N, d)) / np.sqrt(d)    # v_i, norm about 1
        memory = MatrixMemory(d_k=d, d_v=d)                  # M(W, k) = W k

        eta, passes = 1.0, 5
        history = {}
        for bias in (L2Bias(), DotProductBias()):
            params = {"W": np.zeros((d, d))}                 # W_0 = 0
            objective, norm = [], []
            for _ in range(passes):
                for k, v in zip(keys, values):
                    params = online_gd_step(memory, params, bias, k, v, eta)      # Eq 5
                    objective.append(associative_objective(memory, params, bias,  # Eq 4
                                                           keys, values))
                    norm.append(np.linalg.norm(params["W"]))
            history[bias.name] = objective, norm
            print(f"{bias.name:>3s} bias: Eq 4 objective after {len(objective)} steps = "
                  f"{objective[-1]:8.4f},  ||W||_F = {norm[-1]:.2f}")

        fig, axes = plt.subplots(1, 2, figsize=(8, 2.6))
        for name, (objective, norm) in history.items():
            steps = np.arange(1, len(objective) + 1)
            axes[0].plot(steps, objective, label=f"{name} bias")
            axes[1].plot(steps, norm, label=f"{name} bias")
        axes[0].set(xlabel="tokens written", ylabel="objective, Eq 4")
        axes[1].set(xlabel="tokens written", ylabel=r"$\|W_t\|_F$")
        axes[0].legend()
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        The $\ell_2$ objective goes to zero: six pairs fit exactly in a $16\times16$ matrix.
        The dot-product objective has **no minimiser**: $-\langle W\mathbf k, \mathbf v\rangle$
        decreases without bound as $W$ grows, so the Hebbian memory only ever adds, and its
        norm grows with every write. This is why Hebbian models need a retention gate
        ($\alpha < 1$ below) and why the delta rule recalls better.

        ## The Hebbian rule (Eq 8) and the delta rule (Eq 9)

        With the $\ell_2$ retention of the Learning-Retaining viewpoint, one GD step on the
        dot-product bias is the (gated) Hebbian rule of linear attention, RetNet and Mamba2:

        $$M_t = \alpha M_{t-1} + \mathbf v_t \mathbf k_t^\top \tag{Eq 8}$$

        and one step on the $\ell_2$ bias is the delta rule of DeltaNet, written here for
        $M \in \mathbb R^{d_v\times d_k}$ (the projector acts on the key side; the paper prints
        it on the left, see `docs/paper-notes.md`):

        $$M_t = \alpha M_{t-1}\left(I - \eta_t \mathbf k_t \mathbf k_t^\top\right)
        + \eta_t \mathbf v_t \mathbf k_t^\top. \tag{Eq 9}$$

        `hebbian_update` and `delta_rule_update` are these formulas as printed; they equal the
        generic gradient step of Eq 5:
        """),
        code(r"""
        M = 0.1 * rng.standard_normal((d, d))
        k, v, eta = keys[0], values[0], 0.7

        step = online_gd_step(memory, {"W": M}, DotProductBias(), k, v, eta)["W"]  # Eq 5
        print("Eq 5 with dot-product bias vs Eq 8:", np.abs(step - hebbian_update(M, k, v, 1.0, eta)).max())

        step = online_gd_step(memory, {"W": M}, L2Bias(), k, v, eta)["W"]          # Eq 5
        print("Eq 5 with l2 bias vs Eq 9:         ", np.abs(step - delta_rule_update(M, k, v, eta)).max())
        """),
        md(r"""
        ## The same rules as sequence models: scan

        A sequence model runs the rule over a whole sequence. `miras_ref.scan(config, q, k, v,
        gates)` takes a `MirasConfig` (the four MIRAS choices) and arrays shaped
        `[batch, time, heads, dim]`; after each write it reads the memory at the query,
        $\mathbf y_t = \mathcal M(W_t, \mathbf q_t)$. `zoo.linear_attention` and
        `zoo.deltanet` are Eq 8 and Eq 9 as configurations; the final state is the same matrix
        as the hand-written loop.
        """),
        code(r"""
        K, V = keys[None, :, None, :], values[None, :, None, :]   # [B=1, T=N, H=1, d]

        cfg = zoo.linear_attention(d)
        print(cfg.name, cfg.describe(), " write:", cfg.write)
        _, state = scan(cfg, K, K, V, output_final_state=True)
        M = np.zeros((d, d))
        for k, v in zip(keys, values):
            M = hebbian_update(M, k, v)                           # Eq 8, alpha = 1
        print("  state W", state["W"].shape, "max |scan - Eq 8 loop| =", np.abs(state["W"][0, 0] - M).max())

        cfg = zoo.deltanet(d)
        print(cfg.name, cfg.describe(), " write:", cfg.write)
        gates = {"eta": np.ones((1, N, 1))}                       # beta_t = 1 for every token
        _, state = scan(cfg, K, K, V, gates, output_final_state=True)
        M = np.zeros((d, d))
        for k, v in zip(keys, values):
            M = delta_rule_update(M, k, v, eta=1.0)               # Eq 9, alpha = 1
        print("  state W", state["W"].shape, "max |scan - Eq 9 loop| =", np.abs(state["W"][0, 0] - M).max())
        """),
        md(r"""
        ## How many pairs fit? Recall error against the number of stored pairs

        Write $N$ random pairs (unit keys) into a $16\times16$ memory, then query every key
        with the final memory (`read_memory`) and measure the relative recall error
        $\|\mathcal M(\mathbf k_i) - \mathbf v_i\| / \|\mathbf v_i\|$, averaged over pairs and
        16 random draws (the batch axis).

        * **Hebbian** (dot product): $M\mathbf k_j = \mathbf v_j + \sum_{i\ne j}\mathbf v_i
          (\mathbf k_i^\top\mathbf k_j)$; the crosstalk grows like $\sqrt{(N-1)/d}$ from the
          first extra pair on.
        * **Delta rule** ($\ell_2$): each write corrects what the memory already returns for
          that key. Written several times, it converges to the least-squares memory, exact
          while $N \le d$ (independent keys).
        * The best any linear memory can do is the least-squares solution; the Mesa layer's
          closed form (`zoo.mesa`, $W = P_t(Q_t + \lambda I)^{-1}$) with a tiny $\lambda$ gives it.
        """),
        code(r"""
        def recall_error(cfg, keys, values, passes=1, eta=None):
            '''Write every pair `passes` times; mean ||M(k_i) - v_i|| / ||v_i|| with the final memory.'''
            K = np.tile(keys, (1, passes, 1))[:, :, None, :]       # [B, T, H=1, d]
            V = np.tile(values, (1, passes, 1))[:, :, None, :]
            gates = None if eta is None else {"eta": np.full(K.shape[:3], eta)}
            _, state = scan(cfg, K, K, V, gates, output_final_state=True)
            y = read_memory(cfg, state, keys[:, :, None, :])[:, :, 0]
            return np.mean(np.linalg.norm(y - values, axis=-1) / np.linalg.norm(values, axis=-1))


        trials = 16
        Ns = [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48]
        runs = {
            "Hebbian (linear attention), 1 pass": (zoo.linear_attention(d), 1, 1.0),
            "delta rule (DeltaNet), 1 pass": (zoo.deltanet(d), 1, 1.0),
            "delta rule (DeltaNet), 10 passes": (zoo.deltanet(d), 10, 1.0),
            "least squares (Mesa, λ = 1e-6)": (zoo.mesa(d, lam=1e-6), 1, None),
        }
        errors = {label: [] for label in runs}
        for N in Ns:
            keys = unit(rng.standard_normal((trials, N, d)))
            values = rng.standard_normal((trials, N, d)) / np.sqrt(d)
            for label, (cfg, passes, eta) in runs.items():
                errors[label].append(recall_error(cfg, keys, values, passes, eta))

        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        for (label, err), style in zip(errors.items(), ["o-", "s-", "^-", "k--"]):
            ax.plot(Ns, err, style, ms=4, label=label)
        ax.plot(Ns, np.sqrt((np.array(Ns) - 1) / d), ":", color="gray", label=r"$\sqrt{(N-1)/d}$")
        ax.axvline(d, color="gray", lw=0.8)
        ax.text(d + 0.5, 1.45, "N = d", color="gray")
        ax.set(xlabel="number of stored pairs N", ylabel="relative recall error",
               title=f"matrix memory, d = {d}", ylim=(-0.05, 1.6))
        ax.legend(fontsize=8)
        plt.show()
        """),
        md(r"""
        **What the plot says.** The Hebbian memory is only exact for one pair (or for
        orthogonal keys): crosstalk follows $\sqrt{(N-1)/d}$. The delta rule removes much of it
        in one pass; written repeatedly it moves towards the least-squares limit, which is zero
        up to $N = d$ and then rises, because a $d\times d$ linear map cannot hold more than $d$
        independent pairs. (Near $N = d$ the keys are badly conditioned and repeated delta
        steps converge slowly, hence the gap at $N = 16$ after 10 passes.) Capacity beyond that needs a more expressive memory (the MLP memories of
        notebook 6) or a retention gate that decides what to keep (notebook 4).
        """),
    ]


# ==============================================================================================
# 02 - two viewpoints
# ==============================================================================================
def nb02() -> list[tuple[str, str]]:
    return [
        md(r"""
        # 2. Two viewpoints: FTRL and Learning-Retaining

        Section 3 of the paper reads the update of Eq 5 as the solution of an optimisation
        problem, in two ways.

        **FTRL viewpoint** (follow the regularised leader, Sec 3.2): the memory minimises the
        sum of (approximations $\hat\ell_i$ of) all past losses plus a memory-stability term,

        $$W_t = \arg\min_{W \in \mathcal W}\; \sum_{i=1}^t \hat\ell_i(W; \mathbf k_i, \mathbf v_i)
        + \frac{1}{\eta_t}\mathcal R_t(W). \tag{FTRL Viewpoint}$$

        With $W_0 = 0$, linearised losses and $\mathcal R = \frac12\|W\|^2$ this is online
        gradient descent (Eq 5):

        $$W_t = \arg\min_W \sum_{i=1}^t \langle W - W_{i-1}, \nabla\ell(W_{i-1}; \mathbf k_i, \mathbf v_i)\rangle
        + \frac{1}{2\eta}\|W\|_2^2. \tag{Eq 7}$$

        **Learning-Retaining viewpoint** (Sec 3.3): the memory learns the newest token while
        staying close to its previous state,

        $$W_t = \arg\min_{W}\; \tilde\ell_t(W; \mathbf k_t, \mathbf v_t) + \mathrm{Ret}_t(W, W_{t-1}),
        \qquad \mathrm{Ret}_t(W, W_{t-1}) = \frac{1}{\eta_t}\mathcal D_t(W, W_{t-1})
        + \frac{1}{\alpha_t}\mathcal G_t(W),$$

        with a local retention $\mathcal D_t$ (a premetric) and a global retention
        $\mathcal G_t$. `miras_ref.viewpoints` writes each of these problems explicitly and
        solves it numerically with SciPy, so every closed-form update can be put next to the
        argmin it claims to be.
        """),
        setup("""
        import matplotlib.pyplot as plt
        import numpy as np

        from miras_ref import viewpoints as vp
        from miras_ref.bias import L2Bias
        from miras_ref.memory import MatrixMemory
        from miras_ref.retention import L2Retention
        """),
        md(r"""
        ## Eq 7: FTRL with linearised losses is online gradient descent

        A memory with two parameters, $W \in \mathbb R^{1\times 2}$ ($d_k = 2$, $d_v = 1$), and
        the $\ell_2$ bias. `online_gd_as_ftrl` solves Eq 7 with a numeric argmin at every step
        (each gradient taken at the previous FTRL iterate) and runs Eq 5 beside it.
        """),
        code(r"""
        memory, bias = MatrixMemory(d_k=2, d_v=1), L2Bias()
        T, eta = 8, 0.4
        keys, values = rng.standard_normal((T, 2)), rng.standard_normal((T, 1))


        def grad_l2(W, i):
            '''grad of l(W; k_i, v_i) = 1/2 ||W k_i - v_i||^2 (i counts from 1): memory.vjp of bias.grad.'''
            k, v = keys[i - 1][None], values[i - 1][None]
            y = memory.forward({"W": W}, k)
            return memory.vjp({"W": W}, k, bias.grad(y, v))["W"]


        ftrl, gd = vp.online_gd_as_ftrl(grad_l2, eta, T, shape=(1, 2))
        print("max_t |W_t (Eq 7, numeric argmin) - W_t (Eq 5)| =",
              max(np.abs(a - b).max() for a, b in zip(ftrl, gd)))
        """),
        md(r"""
        ## Learning-Retaining with local and global ℓ2 retention

        `L2Retention` (Titans' gate, used by RWKV-7, Yaad, ...) updates
        $W_t = \alpha W_{t-1} - \eta\nabla\ell(W_{t-1})$. Its docstring states the problem this
        solves: with $g = \nabla\ell(W_{t-1})$,

        $$W_t = \arg\min_W \langle W - W_{t-1}, g\rangle + \frac{\alpha}{2\eta}\|W - W_{t-1}\|^2
        + \frac{1-\alpha}{2\eta}\|W\|^2,$$

        i.e. the paper's $\mathrm{Ret}_t = \frac1{\eta'}\mathcal D + \frac1{\alpha'}\mathcal G$
        with $\mathcal D = \frac12\|W - W'\|^2$, $\mathcal G = \frac12\|W\|^2$,
        $1/\eta' = \alpha/\eta$ and $1/\alpha' = (1-\alpha)/\eta$ (decoupled gates, Sec 5.3).
        """),
        code(r"""
        def half_sq_dist(W, W_prev):
            '''D(W, W') = 1/2 ||W - W'||^2 and its gradient in W.'''
            return 0.5 * float(np.sum((W - W_prev) ** 2)), W - W_prev


        def half_sq_norm(W):
            '''G(W) = R(W) = 1/2 ||W||^2 and its gradient.'''
            return 0.5 * float(np.sum(W**2)), W.copy()


        eta, alpha = 0.4, 0.9
        W_prev = rng.standard_normal((1, 2))
        g = grad_l2(W_prev, 1)
        ret = vp.local_global_retention(eta / alpha, eta / (1 - alpha), half_sq_dist, half_sq_norm)
        numeric = vp.learning_retaining_argmin(vp.linearized_loss(g, W_prev), ret, W_prev)
        closed = L2Retention().update(W_prev, g, eta, alpha, own_ndim=2)      # alpha W - eta g
        print("closed form ", closed.ravel())
        print("numeric     ", numeric.ravel())
        print("max |diff| =", np.abs(closed - numeric).max())
        """),
        md(r"""
        ## More closed forms against their argmin (Sec 5.2, variants 3 and 4)

        * **Elastic-net FTRL** (Eq 23): $A_t = A_{t-1} - \eta\nabla\ell(W_{t-1})$,
          $W_t = \mathcal S_{\eta/\alpha}(A_t)$ with the soft-thresholding
          $\mathcal S_\gamma(z) = \mathrm{sign}(z)\max(|z| - \gamma, 0)$. It is the argmin of
          $\langle W, G_t\rangle + \frac{1}{2\eta}\|W\|^2 + \frac1\alpha\|W\|_1$; the paper
          prints $\frac1\eta\|W\|^2$ (no $\frac12$), whose argmin is different
          (`docs/paper-notes.md`).
        * **$\ell_q$ FTRL** (variant 4): $W_t = \arg\min_W -\langle W, A_t\rangle +
          \frac{1}{2(q-1)}\|W\|_q^2$ for $1 < q \le 2$ is
          $(q-1)\|A\|_p^{2-p}\,\mathrm{sign}(A)\odot|A|^{p-1}$, $p = q/(q-1)$; the paper's
          simplified $A_t/\|A_t\|_p^{p-2}$ equals it only at $q = 2$.
        """),
        code(r"""
        G = rng.standard_normal((3, 3))          # running sum of gradients G_t
        A = rng.standard_normal((3, 3))          # FTRL accumulator A_t
        eta, l1, q = 0.5, 0.4, 1.5
        rows = [
            ("Eq 23, 1/(2 eta)||W||^2: closed form vs argmin",
             vp.elastic_net_ftrl_closed_form(G, eta, l1), vp.elastic_net_ftrl_argmin(G, eta, l1)),
            ("Eq 23 as printed, (1/eta)||W||^2: S_{eta/alpha}(A) vs argmin",
             vp.elastic_net_ftrl_closed_form(G, eta, l1), vp.elastic_net_ftrl_argmin(G, eta, l1, quad_coef=1.0)),
            ("l_q FTRL, q = 1.5: exact link vs argmin",
             vp.lq_ftrl_link(A, q), vp.lq_ftrl_argmin(A, q)),
            ("l_q FTRL, q = 1.5: paper's simplified link vs argmin",
             vp.lq_ftrl_link(A, q, simplified=True), vp.lq_ftrl_argmin(A, q)),
        ]
        for label, closed, numeric in rows:
            print(f"{label:62s} max |diff| = {np.abs(closed - numeric).max():.1e}")
        """),
        md(r"""
        The first and third rows agree to solver precision; the second and fourth are the
        errata listed in `docs/paper-notes.md` (the library implements the forms that are
        argmins, and keeps the printed ones available for comparison).

        ## Proposition 3.2: the two viewpoints give the same iterates

        Let $\eta_t = \eta$ and
        $h_t(W) = \sum_{i=1}^{t-1}\hat\ell_i(W; \mathbf k_i, \mathbf v_i) + \frac1\eta\mathcal R(W)$,
        strictly convex. Choose the Learning-Retaining retention to be its **Bregman
        divergence**,

        $$\mathrm{Ret}_t(W, W') = D_{h_t}(W, W') = h_t(W) - h_t(W') - \langle\nabla h_t(W'), W - W'\rangle,$$

        and $\tilde\ell_t = \hat\ell_t$. Then the Learning-Retaining update equals the FTRL
        update (Proposition 3.2, proof in Appendix B).

        To see it do something non-trivial, take a 2-parameter memory, **non-quadratic**
        losses (robust log-cosh regression,
        $\hat\ell_i(W) = \log\cosh(\langle W, \mathbf x_i\rangle - y_i)$) and a non-quadratic
        regulariser $\mathcal R(W) = \sum_j W_j^4/4 + W_j^2/2$. `proposition_3_2` runs FTRL
        (a numeric argmin of the growing sum) and the Learning-Retaining recursion with
        $D_{h_t}$ (one numeric argmin per step, started from FTRL's $W_1$).
        """),
        code(r"""
        T, eta = 10, 0.7
        xs, ys = rng.standard_normal((T, 2)), 2.0 * rng.standard_normal(T)


        def logcosh_loss(x, y):
            '''l(W) = log cosh(<W, x> - y) and its gradient tanh(.) x.'''
            def loss(W):
                r = float(W @ x) - y
                return float(np.logaddexp(r, -r) - np.log(2.0)), np.tanh(r) * x
            return loss


        def quartic_R(W):
            '''R(W) = sum W^4/4 + W^2/2: strictly convex, not quadratic, grad R(0) = 0.'''
            return float(np.sum(W**4 / 4 + W**2 / 2)), W**3 + W


        losses = [logcosh_loss(x, y) for x, y in zip(xs, ys)]
        ftrl, lr, diff = vp.proposition_3_2(losses, eta, quartic_R, (2,))
        print(f"Proposition 3.2: max_t |W_t(FTRL) - W_t(Learning-Retaining)| = {diff:.1e}")
        """),
        md(r"""
        **Negative control.** The equivalence needs the retention to be $D_{h_t}$, which
        carries the whole past. A Learning-Retaining memory with the plain Euclidean
        retention $\mathrm{Ret}_t = \frac1{2\eta}\|W - W_{t-1}\|^2$ (the Bregman divergence of
        $\frac12\|W\|^2$ alone) on the same losses, from the same $W_1$, walks elsewhere:
        """),
        code(r"""
        euclid = vp.local_global_retention(eta, None, vp.bregman_divergence(half_sq_norm))
        W = ftrl[0]
        control = [W]
        for loss in losses[1:]:
            W = vp.learning_retaining_argmin(loss, euclid, W)
            control.append(W)
        print("max_t |W_t(FTRL) - W_t(Euclidean retention)| =",
              f"{max(np.abs(a - b).max() for a, b in zip(ftrl, control)):.3f}")

        # the FTRL objective at t = T, sum_i l_i(W) + R(W) / eta, drawn as the background
        F, L, C = np.array(ftrl), np.array(lr), np.array(control)
        lo, hi = np.vstack([F, C]).min(axis=0) - 0.3, np.vstack([F, C]).max(axis=0) + 0.3
        g1, g2 = np.meshgrid(np.linspace(lo[0], hi[0], 121), np.linspace(lo[1], hi[1], 121))
        grid = np.stack([g1.ravel(), g2.ravel()], axis=-1)
        objective = np.array([sum(loss(w)[0] for loss in losses) + quartic_R(w)[0] / eta for w in grid])

        fig, ax = plt.subplots(figsize=(5.6, 4.4))
        ax.contour(g1, g2, objective.reshape(g1.shape), levels=np.quantile(objective, np.linspace(0, 0.9, 16)),
                   cmap="Greys", linewidths=0.6)
        ax.plot(F[:, 0], F[:, 1], "o-", mfc="none", ms=11, color="tab:blue", label="FTRL iterates")
        ax.plot(L[:, 0], L[:, 1], ".-", ms=7, color="tab:orange", label=r"Learning-Retaining, Ret = $D_{h_t}$")
        ax.plot(C[:, 0], C[:, 1], "x--", ms=6, color="tab:red", label="negative control: Euclidean Ret")
        for t, w in enumerate(ftrl, start=1):
            ax.annotate(str(t), w, textcoords="offset points", xytext=(6, 4), fontsize=7, color="tab:blue")
        ax.set(xlabel="$W_1$", ylabel="$W_2$", title="Proposition 3.2 in parameter space", aspect="equal")
        ax.legend(fontsize=7, loc="best")
        plt.show()
        """),
        md(r"""
        The orange dots sit inside the blue circles at every step: FTRL and Learning-Retaining
        with $D_{h_t}$ are the same algorithm. The red path, with a retention that forgets the
        past losses, is a different one.

        **One more condition.** Appendix B's induction starts both sequences "at the same
        point", which must be the same $W_1$. Started from the usual $W_0 = 0$ they agree only
        when $\nabla\mathcal R(0) = 0$; with
        $\mathcal R(W) = \mathrm{logsumexp}(W) + \frac12\|W\|^2$ ($\nabla\mathcal R(0) \ne 0$):
        """),
        code(r"""
        def lse_R(W):
            '''R(W) = logsumexp(W) + 1/2 ||W||^2: strictly convex, grad R(0) = 1/n != 0.'''
            e = np.exp(W - W.max())
            return float(W.max() + np.log(e.sum()) + 0.5 * W @ W), e / e.sum() + W


        for init in ("ftrl", "zero"):
            _, _, diff = vp.proposition_3_2(losses, eta, lse_R, (2,), init=init)
            print(f"init = {init!r:7s}: max_t |W_t(FTRL) - W_t(Learning-Retaining)| = {diff:.1e}")
        """),
    ]


# ==============================================================================================
# 03 - attentional biases
# ==============================================================================================
def nb03() -> list[tuple[str, str]]:
    return [
        md(r"""
        # 3. Attentional biases

        The attentional bias is the memory's inner objective,
        $\ell(W; \mathbf k, \mathbf v) = \mathcal L(\mathcal M(W, \mathbf k); \mathbf v)$ (Eq 4).
        It decides what the memory pays attention to. Each class in `miras_ref.bias` gives the
        loss $\mathcal L(\mathbf y; \mathbf v)$ and its gradient in the memory output
        $\mathbf y = \mathcal M(W, \mathbf k)$ (`loss(y, v, delta)`, `grad(y, v, delta)`); the
        gradient in the parameters is then `memory.vjp(params, k, grad)`. With
        $\mathbf e = \mathcal M(W, \mathbf k) - \mathbf v$:

        | bias | loss | class |
        |---|---|---|
        | $\ell_2$ (delta rule, Eq 9) | $\frac12\Vert \mathbf e\Vert _2^2$ | `L2Bias` |
        | $\ell_p$ (Eq 10-11) | $\Vert \mathbf e\Vert _p^p$ | `LpBias(p)` |
        | $\ell_1$, value-less (Eq 12) | $\Vert \mathbf e\Vert _1$ | `L1Bias` |
        | Huber, per coordinate (Eq 13-14) | $\sum_j \mathrm H_\delta(e_j)$ | `HuberCoordinateBias` |
        | Huber of the norm (Eq 15) | $\mathrm H_\delta(\Vert \mathbf e\Vert _2)$ | `HuberNormBias` |
        | smooth $\ell_2$/$\ell_1$ mixture (Eq 16, Yaad) | $\ell_2$ step if $\Vert \mathbf e\Vert \le\delta$, else $\delta\,\nabla\ell_1$ | `HuberMixtureBias` |
        | robust to value shifts (Eq 17) | $\max_{\Vert \boldsymbol\delta\mathbf v\Vert \le\Delta}\frac12\Vert \mathbf e - \boldsymbol\delta\mathbf v\Vert ^2$ | `ValueShiftRobustBias` |

        The Huber function is
        $\mathrm H_\delta(a) = \frac12 a^2$ if $|a| \le \delta$, else $\delta(|a| - \frac12\delta)$
        (Eq 13). $\mathrm{Sign}$ and $|\cdot|$ are smoothed as in Remark 5:
        $\mathrm{Sign}(x) \approx \tanh(a x)$, $|x| \approx \sqrt{x^2 + \epsilon}$
        ($a = 10$, $\epsilon = 10^{-6}$; `smooth=False` gives the exact forms).
        """),
        setup("""
        import matplotlib.pyplot as plt
        import numpy as np

        from miras_ref import MirasConfig, read_memory, scan
        from miras_ref.algorithms import GD
        from miras_ref.associative import online_gd_step
        from miras_ref.bias import (HuberCoordinateBias, HuberMixtureBias, HuberNormBias, L1Bias,
                                    L2Bias, LpBias, ValueShiftRobustBias)
        from miras_ref.memory import MatrixMemory
        from miras_ref.retention import L2Retention
        """),
        md(r"""
        ## Each loss and its gradient as a function of the error

        One output coordinate ($d_v = 1$), $\mathbf v = 0$, so $\mathbf y = e$. Huber
        thresholds $\delta = 1$, value-shift radius $\Delta = 0.5$. In one dimension the
        coordinate and norm Huber losses coincide.
        """),
        code(r"""
        e = np.linspace(-3, 3, 601)[:, None]          # [601, d_v = 1]
        v = np.zeros_like(e)
        delta = 1.0
        families = {
            r"$\ell_2$ / $\ell_p$ / $\ell_1$": {
                "ℓ2  (½ e²)": L2Bias(),
                "ℓ1  (smooth)": L1Bias(),
                "ℓp, p = 1.5": LpBias(1.5),
                "ℓp, p = 3": LpBias(3.0),
                "ℓp, p = 4": LpBias(4.0),
            },
            r"Huber family and value shift ($\delta = 1$, $\Delta = 0.5$)": {
                "ℓ2  (½ e²)": L2Bias(),
                "Huber (Eq 13-15)": HuberCoordinateBias(),
                r"mixture $\ell_2$/$\delta\ell_1$ (Eq 16)": HuberMixtureBias(),
                "value shift (Eq 17)": ValueShiftRobustBias(),
            },
        }
        fig, axes = plt.subplots(2, 2, figsize=(8.5, 5.2), sharex=True)
        for col, (title, biases) in enumerate(families.items()):
            for label, b in biases.items():
                dl = 0.5 if isinstance(b, ValueShiftRobustBias) else delta
                axes[0, col].plot(e[:, 0], b.loss(e, v, dl), label=label)
                axes[1, col].plot(e[:, 0], b.grad(e, v, dl)[:, 0], label=label)
            axes[0, col].set(title=title, ylim=(-0.2, 6), ylabel="loss  L(y; v)")
            axes[1, col].set(xlabel="error  e = M(k) - v", ylim=(-6, 6), ylabel="gradient  dL/dy")
            axes[0, col].legend(fontsize=8)
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        What to read off the gradients, which is what the memory actually writes:

        * $\ell_2$ writes in proportion to the error: an outlier gets an outlier-sized write.
        * $\ell_p$ with $p > 2$ grows faster than linearly (Eq 11: $p\,\mathrm{Sign}(e)|e|^{p-1}$):
          large errors dominate. $p < 2$ flattens them; $p = 1$ keeps only the sign (Eq 12), so the
          memory stores $\pm1$ directions, not magnitudes: "value-less".
        * The Huber variants are $\ell_2$ near zero and **clipped** beyond $\delta$: a write is
          never larger than $\delta$. Yaad's mixture (Eq 16) jumps from $e$ to
          $\delta\,\mathrm{Sign}(e)$ at $\|e\| = \delta$; its loss (what `loss` returns) is
          discontinuous there, its gradient is not.
        * The value-shift loss adds $\Delta\,\mathbf e/\|\mathbf e\|$: it is *larger* than $\ell_2$
          everywhere. It guards against small shifts of the value, not against outliers.

        In more than one dimension the three Huber variants clip differently. The arrows are the
        gradient $\partial\mathcal L/\partial\mathbf y$ at errors $\mathbf e \in \mathbb R^2$:
        the coordinate version clips each coordinate (a box), the norm version the length (a
        ball), the mixture switches to $\delta\,\mathrm{Sign}(\mathbf e)$, which points to a
        corner of the box whatever the direction of the error.
        """),
        code(r"""
        g1, g2 = np.meshgrid(np.linspace(-3, 3, 9), np.linspace(-3, 3, 9))
        E = np.stack([g1.ravel(), g2.ravel()], axis=-1)            # errors e, [81, 2]
        panels = {"ℓ2": L2Bias(), "Huber per coordinate (Eq 14)": HuberCoordinateBias(),
                  "Huber of the norm (Eq 15)": HuberNormBias(), "ℓ2 / δℓ1 mixture (Eq 16)": HuberMixtureBias()}
        fig, axes = plt.subplots(1, 4, figsize=(10, 2.9))
        for ax, (title, b) in zip(axes, panels.items()):
            G = b.grad(E, np.zeros_like(E), delta)
            ax.quiver(E[:, 0], E[:, 1], G[:, 0], G[:, 1], np.linalg.norm(G, axis=-1), angles="xy",
                      scale_units="xy", scale=2.5, cmap="viridis", clim=(0, 3), width=0.012)
            ax.add_patch(plt.Circle((0, 0), delta, fill=False, ls=":", color="gray"))
            ax.add_patch(plt.Rectangle((-delta, -delta), 2 * delta, 2 * delta, fill=False, ls="--", color="lightgray"))
            ax.set(title=title, aspect="equal", xlim=(-3.6, 3.6), ylim=(-3.6, 3.6), xlabel="$e_1$")
            ax.title.set_fontsize(8)
        axes[0].set_ylabel("$e_2$")
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        ## The matrix-memory update rules, by hand

        For $\mathcal M(W, \mathbf k) = W\mathbf k$ the paper writes each update explicitly.
        With $\mathbf e = W\mathbf k - \mathbf v$:

        * Eq 11: $W_t = W_{t-1} - \eta\,p\,(\mathrm{Sign}(\mathbf e)\odot|\mathbf e|^{p-1})\mathbf k^\top$
        * Eq 12: $W_t = W_{t-1} - \eta\,\mathrm{Sign}(\mathbf e)\mathbf k^\top$
        * Eq 14: $W_t = W_{t-1} - \eta\left[\mathbf e\mathbf k^\top \odot \mathbb I(|\mathbf e| \le \delta)\mathbf 1^\top
          + \delta\,\mathrm{Sign}(\mathbf e)\mathbf k^\top \odot \mathbb I(|\mathbf e| > \delta)\mathbf 1^\top\right]$
        * Eq 15: $W_t = W_{t-1} - \eta\,\mathbf e\mathbf k^\top$ if $\|\mathbf e\| \le \delta$, else
          $W_{t-1} - \eta\,\delta\frac{\mathbf e}{\|\mathbf e\|}\mathbf k^\top$
        * Eq 16: $W_t = W_{t-1} - \eta\,\mathbf e\mathbf k^\top$ if $\|\mathbf e\| \le \delta$, else
          $W_{t-1} - \eta\,\delta\,\mathrm{Sign}(\mathbf e)\mathbf k^\top$
        * Eq 17: $W_t = W_{t-1} - \eta\left(\mathbf e + \Delta\frac{\mathbf e}{\|\mathbf e\|}\right)\mathbf k^\top$

        Each equals `online_gd_step` (Eq 5) with the corresponding bias (exact `Sign`,
        `smooth=False`):
        """),
        code(r"""
        d, eta, p, delta = 4, 0.3, 3.0, 0.5
        memory = MatrixMemory(d, d)
        W = rng.standard_normal((d, d))
        k, v = unit(rng.standard_normal(d)), rng.standard_normal(d)
        e = W @ k - v
        n = np.linalg.norm(e)
        small = np.abs(e) <= delta
        by_hand = {
            "Eq 11  l_p, p = 3": (LpBias(p, smooth=False),
                                  W - eta * p * np.outer(np.sign(e) * np.abs(e) ** (p - 1), k)),
            "Eq 12  l_1": (L1Bias(smooth=False), W - eta * np.outer(np.sign(e), k)),
            "Eq 14  Huber per coordinate": (HuberCoordinateBias(),
                                            W - eta * (np.outer(e, k) * small[:, None]
                                                       + delta * np.outer(np.sign(e), k) * ~small[:, None])),
            "Eq 15  Huber of the norm": (HuberNormBias(),
                                         W - eta * (np.outer(e, k) if n <= delta else delta * np.outer(e / n, k))),
            "Eq 16  l2/l1 mixture": (HuberMixtureBias(smooth=False),
                                     W - eta * (np.outer(e, k) if n <= delta else delta * np.outer(np.sign(e), k))),
            "Eq 17  value shift": (ValueShiftRobustBias(), W - eta * np.outer(e + delta * e / n, k)),
        }
        print(f"||e|| = {n:.2f}, delta = {delta}")
        for label, (bias, W_next) in by_hand.items():
            step = online_gd_step(memory, {"W": W}, bias, k, v, eta, delta)["W"]
            print(f"{label:30s} max |online_gd_step - by hand| = {np.abs(step - W_next).max():.1e}")
        """),
        md(r"""
        **Eq 17's inner maximisation.** The worst shift in the ball of radius $\Delta$ is
        $\boldsymbol\delta\mathbf v^* = -\Delta\,\mathbf e/\|\mathbf e\|$ (`optimal_perturbation`),
        giving the robust loss $\frac12\|\mathbf e\|^2 + \Delta\|\mathbf e\| + \frac12\Delta^2$.
        Random shifts inside the ball never do worse for the memory:
        """),
        code(r"""
        b, Delta = ValueShiftRobustBias(), 0.5
        y = W @ k
        dv_star = b.optimal_perturbation(y, v, Delta)
        shifts = unit(rng.standard_normal((20000, d))) * Delta * rng.uniform(0, 1, (20000, 1)) ** (1 / d)
        sampled = 0.5 * np.sum((y - (v + shifts)) ** 2, axis=-1)
        print(f"closed-form robust loss         {b.loss(y, v, Delta):.6f}")
        print(f"1/2||y - (v + dv*)||^2          {0.5 * np.sum((y - v - dv_star) ** 2):.6f}")
        print(f"max over 20000 random shifts    {sampled.max():.6f}")
        """),
        md(r"""
        ## Outliers: recall error against outlier magnitude

        Now the biases inside a sequence model. Each configuration is built by hand from the
        four MIRAS choices: a matrix memory, the bias, the $\ell_2$ retention with
        $\alpha = 1$ (no forgetting) and gradient descent:
        `MirasConfig(name, MatrixMemory(d, d), bias, L2Retention(), GD(), gate_defaults)`.

        The task: 8 pairs ($d = 16$, unit keys) are written 6 times in order. Three tokens after
        the first pass are **corrupted**: the key is one of the 8, the value a random direction
        of length $s$. After the sequence, every key is queried; the error is the mean relative
        recall error of the true values over 8 random draws. Each bias gets its learning rate
        $\eta$ (and $\delta$ or $\Delta$) from a small grid, chosen at $s = 1$, then $s$ grows.
        """),
        code(r"""
        d, N, passes, trials, n_bad = 16, 8, 6, 8, 3
        keys = unit(rng.standard_normal((trials, N, d)))
        values = rng.standard_normal((trials, N, d)) / np.sqrt(d)
        order = np.tile(np.arange(N), passes)
        K, V = keys[:, order, None, :], values[:, order, None, :]      # [B, T, H=1, d]
        bad = rng.choice(np.arange(N, N * passes), n_bad, replace=False)
        noise = unit(rng.standard_normal((trials, n_bad, 1, d)))


        def corrupted_error(bias, eta, delta, s):
            '''Recall error of the clean pairs after the sequence with n_bad outliers of size s.'''
            cfg = MirasConfig(bias.name, MatrixMemory(d, d), bias, L2Retention(), GD(),
                              {"eta": eta, "alpha": 1.0, "delta": delta})
            Vs = V.copy()
            Vs[:, bad] = s * noise
            with np.errstate(all="ignore"):                  # l_p with p > 2 can blow up
                _, state = scan(cfg, K, K, Vs, output_final_state=True)
                y = read_memory(cfg, state, keys[:, :, None, :])[:, :, 0]
                err = np.mean(np.linalg.norm(y - values, axis=-1) / np.linalg.norm(values, axis=-1))
            return err if np.isfinite(err) else np.inf


        biases = {"ℓ2": L2Bias(), "ℓ1": L1Bias(), "ℓp, p = 1.5": LpBias(1.5),
                  "ℓp, p = 3": LpBias(3.0), "Huber per coord.": HuberCoordinateBias(),
                  "Huber of norm": HuberNormBias(), "mixture (Yaad)": HuberMixtureBias(),
                  "value shift": ValueShiftRobustBias()}
        thresholded = (HuberCoordinateBias, HuberNormBias, HuberMixtureBias, ValueShiftRobustBias)
        chosen = {}
        for label, b in biases.items():
            deltas = (0.05, 0.2, 0.5, 1.0) if isinstance(b, thresholded) else (1.0,)
            grid = [(corrupted_error(b, eta, dl, 1.0), eta, dl) for eta in (0.1, 0.3, 1.0) for dl in deltas]
            err, eta, dl = min(grid)
            chosen[label] = (eta, dl)
            print(f"{label:18s} eta = {eta:<4}  delta = {dl:<5}  error at s = 1: {err:.3f}")
        """),
        code(r"""
        scales = [0.3, 1, 3, 10, 30, 100]
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for label, b in biases.items():
            errs = np.array([corrupted_error(b, *chosen[label], s) for s in scales])
            shown = np.minimum(errs, 20.0)
            line, = ax.plot(scales, shown, "o-", ms=4, label=label)
            if np.any(errs > 20):
                ax.plot(np.array(scales)[errs > 20], shown[errs > 20], "x", ms=9, color=line.get_color())
        ax.set(xscale="log", yscale="log", xlabel="outlier magnitude s (clean values have norm about 1)",
               ylabel="relative recall error, clean pairs", title="3 corrupted tokens in 48 (x: diverged)")
        ax.legend(fontsize=7, ncol=2)
        plt.show()
        """),
        md(r"""
        **What the plot says.** $\ell_2$ and the value-shift bias write every outlier in full,
        so their error grows linearly with $s$. $\ell_3$ writes it *more* than in full and
        diverges. The clipped biases (the three Huber variants) bound the write of each
        corrupted token (by $\eta\delta$ in norm for Eq 15, by $\eta\delta$ per coordinate for
        Eq 14 and 16), whatever $s$: that is the "coping mechanism" of Sec 5.1 that Yaad
        builds on. $\ell_1$ is just as insensitive to $s$ but cannot store
        magnitudes, so its baseline is worse; $\ell_{1.5}$ sits in between.
        """),
    ]


# ==============================================================================================
# 04 - retention gates
# ==============================================================================================
def nb04() -> list[tuple[str, str]]:
    return [
        md(r"""
        # 4. Retention gates

        In the Learning-Retaining viewpoint the retention gate is the regulariser
        $\mathrm{Ret}_t(W, W_{t-1}) = \frac1{\eta_t}\mathcal D_t(W, W_{t-1}) + \frac1{\alpha_t}\mathcal G_t(W)$
        that decides how much of the past the memory keeps. With the linearised loss
        $\tilde\ell_t(W) = \langle W - W_{t-1}, g_t\rangle$, $g_t = \nabla\ell(W_{t-1}; \mathbf k_t, \mathbf v_t)$,
        each gate of `miras_ref.retention` has a closed-form update, and its class also gives
        the `objective` the update minimises. Every gate keeps a state $Z$ and reads the
        memory through a link $W = \psi(Z)$; most are *dual-linear*, $Z_t = \alpha_t Z_{t-1} - \eta_t g_t$.

        | gate | update | paper |
        |---|---|---|
        | $\ell_2$ (local + global) | $W_t = \alpha W_{t-1} - \eta g_t$ | Sec 4 (Titans) |
        | $\ell_q$ stability | $A_t = \alpha A_{t-1} - \eta g_t$; exact link $W = (q-1)\Vert A\Vert _p^{2-p}\mathrm{sign}(A)\lvert A\rvert^{p-1}$, simplified $W = A/\Vert A\Vert _q^{q-2}$ | Sec 5.2 v4, Eq 24 |
        | KL on the scaled simplex | $W_t = c\,\mathrm{Softmax}((1-\lambda)\log W_{t-1} - \eta' g_t)$ | Eq 19-21 |
        | elastic net (hard + soft forgetting) | $W_t = \mathcal S_\gamma(\lambda W_{t-1} - \zeta g_t)$ | Eq 22 |
        | sigmoid Bregman | $W_t = \sigma\!\left(\alpha\ln\frac{W_{t-1}}{1 - W_{t-1}} - \eta g_t\right)$ | Sec 5.2 v5 |

        $\mathcal S_\gamma(z) = \mathrm{sign}(z)\max(|z| - \gamma, 0)$ is soft thresholding; its
        smooth surrogate is $|z|\arctan(z/\gamma)/(\pi/2)$. The library decouples the gates as
        $\eta$ (learning rate) and $\alpha \in (0, 1]$ (retention, 1 = keep all); each class's
        docstring gives the map to the paper's coefficients (e.g. KL: $\alpha = 1 - \lambda$).
        """),
        setup("""
        import matplotlib.pyplot as plt
        import numpy as np
        from scipy.optimize import minimize

        from miras_ref import MirasConfig, scan
        from miras_ref.algorithms import GD, memory_weights
        from miras_ref.bias import DotProductBias
        from miras_ref.memory import MatrixMemory
        from miras_ref.retention import (ElasticNetRetention, KLRetention, L2Retention, LqRetention,
                                         SigmoidBregmanRetention)
        """),
        md(r"""
        ## One step: the closed form is the argmin of the gate's objective

        For each gate: a random previous state, a random gradient $g$, $\eta = 0.3$,
        $\alpha = 0.9$. The closed form is `gate.link(gate.update(Z, g, eta, alpha, 2), 2)`; the
        numeric answer minimises `gate.objective(W, W_prev, g, eta, alpha)` with SciPy
        (BFGS; SLSQP with the simplex constraints $\sum_l W_{jl} = c$, $W \ge 0$ for KL;
        Powell for the non-smooth $\ell_1$ term; box bounds $(0, 1)$ for the sigmoid gate).
        The $\ell_q$ gate is an FTRL gate: its `link_objective(W, A)` =
        $-\langle W, A\rangle + \frac{1}{2(q-1)}\|W\|_q^2$ is minimised by the exact link.
        """),
        code(r"""
        shape, eta, alpha = (3, 4), 0.3, 0.9
        g = rng.standard_normal(shape)
        flat = lambda f: (lambda w: f(w.reshape(shape)))     # scipy works on flat vectors
        results = []

        gate = L2Retention()
        W_prev = rng.standard_normal(shape)
        closed = gate.link(gate.update(W_prev, g, eta, alpha, 2), 2)
        res = minimize(flat(lambda w: gate.objective(w, W_prev, g, eta, alpha)), W_prev.ravel(),
                       method="BFGS", options={"gtol": 1e-12})
        results.append(("l2:  alpha W - eta g", closed, res.x))

        gate = KLRetention(c=1.0)                             # row-wise softmax (axis=-1)
        L_prev = rng.standard_normal(shape)                   # state: logits
        W_prev = gate.link(L_prev, 2)
        closed = gate.link(gate.update(L_prev, g, eta, alpha, 2), 2)
        rows = [{"type": "eq", "fun": (lambda w, j=j: w.reshape(shape)[j].sum() - gate.c)} for j in range(shape[0])]
        res = minimize(flat(lambda w: gate.objective(w, W_prev, g, eta, alpha)), W_prev.ravel(),
                       method="SLSQP", bounds=[(1e-12, None)] * W_prev.size, constraints=rows,
                       options={"ftol": 1e-15, "maxiter": 1000})
        results.append(("KL:  c Softmax(alpha log W - eta g)", closed, res.x))

        gate = ElasticNetRetention(gamma=0.1)
        W_prev = 0.3 * rng.standard_normal(shape)
        closed = gate.update(W_prev, g, eta, alpha, 2)
        res = minimize(flat(lambda w: gate.objective(w, W_prev, g, eta, alpha)), W_prev.ravel(),
                       method="Powell", options={"xtol": 1e-12, "ftol": 1e-15, "maxiter": 100000})
        results.append((f"elastic net:  S_gamma(.)  ({np.sum(closed == 0)} entries set to 0)", closed, res.x))

        gate = SigmoidBregmanRetention()
        z_prev = rng.standard_normal(shape)                   # state: logits
        W_prev = gate.link(z_prev, 2)
        closed = gate.link(gate.update(z_prev, g, eta, alpha, 2), 2)
        res = minimize(flat(lambda w: gate.objective(w, W_prev, g, eta, alpha)), W_prev.ravel(),
                       method="L-BFGS-B", bounds=[(1e-9, 1 - 1e-9)] * W_prev.size,
                       options={"ftol": 1e-15, "gtol": 1e-12})
        results.append(("sigmoid Bregman:  sigma(alpha logit W - eta g)", closed, res.x))

        A = rng.standard_normal(shape)                        # l_q: FTRL accumulator
        exact, simplified = LqRetention(1.5, link_kind="exact"), LqRetention(1.5, link_kind="simplified")
        res = minimize(flat(lambda w: exact.link_objective(w, A)), A.ravel(), method="BFGS",
                       options={"gtol": 1e-12})
        results.append(("l_q, q = 1.5, exact link", exact.link(A, 2), res.x))
        results.append(("l_q, q = 1.5, simplified link (Eq 24's form)", simplified.link(A, 2), res.x))

        for label, closed, numeric in results:
            print(f"{label:55s} max |closed form - argmin| = {np.abs(closed.ravel() - numeric).max():.1e}")
        """),
        md(r"""
        All closed forms are the argmin to solver precision except the simplified $\ell_q$
        link, which is not the argmin of the $\ell_q$ FTRL problem for $q \ne 2$ (an erratum in
        `docs/paper-notes.md`; Moneta uses that printed form, with $q = 4$).

        ## 2000 writes: what each gate does to the memory over time

        A matrix memory ($d = 8$) reads a long stream of random pairs (unit keys, Gaussian
        values). To isolate the gate, the bias is the **dot product**: its gradient
        $g_t = -\mathbf v_t\mathbf k_t^\top$ does not depend on the memory, so everything that
        happens to the memory's size and shape is the retention gate's doing. Every
        configuration is `MirasConfig(name, MatrixMemory(d, d), DotProductBias(), gate, GD(),
        {"eta": ..., "alpha": ...})`.

        `scan` returns only the final state, so the stream is fed in segments of 20 tokens,
        each starting from the previous segment's state (`initial_state`); the memory weights
        $W = \psi(Z)$ are read from each state with `algorithms.memory_weights`.
        """),
        code(r"""
        d, T, seg = 8, 2000, 20
        k = unit(rng.standard_normal((1, T, 1, d)))
        v = rng.standard_normal((1, T, 1, d))
        gates = {
            "ℓ2, α = 1": (L2Retention(), 0.1, 1.0),
            "ℓ2, α = 0.99": (L2Retention(), 0.1, 0.99),
            "ℓq, q = 4, simplified link": (LqRetention(4.0), 0.1, 1.0),
            "ℓq, q = 1.5, simplified link": (LqRetention(1.5), 0.1, 1.0),
            "ℓq, q = 1.5, exact link": (LqRetention(1.5, link_kind="exact"), 0.1, 1.0),
            "KL, α = 1": (KLRetention(), 0.1, 1.0),
            "KL, α = 0.99": (KLRetention(), 0.1, 0.99),
            "elastic net, hard": (ElasticNetRetention(0.02), 0.1, 0.99),
            "elastic net, soft (arctan)": (ElasticNetRetention(0.02, smooth=True), 0.1, 0.99),
            "sigmoid Bregman, α = 1": (SigmoidBregmanRetention(), 0.3, 1.0),
            "sigmoid Bregman, α = 0.99": (SigmoidBregmanRetention(), 0.3, 0.99),
        }
        traces = {}
        for label, (gate, eta, alpha) in gates.items():
            cfg = MirasConfig(label, MatrixMemory(d, d), DotProductBias(), gate, GD(), {"eta": eta, "alpha": alpha})
            state, Ws = None, []
            for s in range(0, T, seg):
                part = slice(s, s + seg)
                _, state = scan(cfg, k[:, part], k[:, part], v[:, part], initial_state=state,
                                output_final_state=True)
                Ws.append(memory_weights(cfg, state)["W"][0, 0])     # W = psi(Z), [d, d]
            traces[label] = np.array(Ws)
        steps = np.arange(seg, T + 1, seg)
        for label, W in traces.items():
            print(f"{label:30s} ||W_T||_F = {np.linalg.norm(W[-1]):8.3f}")
        """),
        code(r"""
        fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))
        ax = axes[0, 0]
        for label, W in traces.items():
            if not label.startswith(("KL", "sigmoid")):
                ax.plot(steps, np.linalg.norm(W, axis=(1, 2)), label=label)
        ax.set(yscale="log", xlabel="tokens written", ylabel=r"$\|W_t\|_F$", title="memory norm")
        ax.legend(fontsize=7, ncol=2)

        ax = axes[0, 1]
        for label in ("KL, α = 1", "KL, α = 0.99"):
            W = traces[label]
            ax.plot(steps, -np.sum(W * np.log(W), axis=-1).mean(axis=-1), label=label)
        ax.axhline(np.log(d), color="gray", ls=":", label=r"uniform rows, $\log d$")
        ax.set(xlabel="tokens written", ylabel="mean row entropy (nats)",
               title=r"KL gate: rows of $W$ live on the simplex ($c = 1$)")
        ax.legend(fontsize=7)

        ax = axes[1, 0]
        for label in ("elastic net, hard", "elastic net, soft (arctan)"):
            W = traces[label]
            ax.plot(steps, np.mean(W == 0, axis=(1, 2)), label=label + ": exactly 0")
            ax.plot(steps, np.mean(np.abs(W) < 1e-3, axis=(1, 2)), "--", label=label + r": $|W| < 10^{-3}$")
        ax.set(xlabel="tokens written", ylabel="fraction of entries", title=r"elastic net ($\gamma = 0.02$): sparsity")
        ax.legend(fontsize=7)

        ax = axes[1, 1]
        for label in ("sigmoid Bregman, α = 1", "sigmoid Bregman, α = 0.99"):
            ax.hist(traces[label][-1].ravel(), bins=np.linspace(0, 1, 21), alpha=0.6, label=label)
        ax.set(xlabel="entries of the final $W$", ylabel="count", title=r"sigmoid Bregman: $W \in (0, 1)$")
        ax.legend(fontsize=7)
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        **What the plots say.**

        * **$\ell_2$.** Without retention ($\alpha = 1$) the Hebbian memory is a random walk and
          its norm grows like $\sqrt t$; $\alpha = 0.99$ keeps it bounded (a soft, exponential
          forgetting with horizon $\approx 1/(1-\alpha)$).
        * **$\ell_q$.** The accumulator $A_t$ grows like $\sqrt t$ in every case, but the link
          decides what the memory sees: the exact $q = 1.5$ link grows with it, the simplified
          $q = 1.5$ link grows faster, and the simplified $q = 4$ link (Moneta's) **shrinks**
          the memory, since $\|W\|_4 = \|A\|_4^{3-q} = 1/\|A\|_4$ (`docs/paper-notes.md`).
        * **KL.** The memory stays on the simplex by construction. With $\alpha = 1$ the logits
          keep accumulating and the rows concentrate (entropy falls from $\log d$); with
          $\alpha < 1$ the pull towards the uniform distribution (the entropy term of Eq 19)
          holds the entropy near its maximum.
        * **Elastic net.** Hard thresholding sets a sizeable fraction of the memory to exactly
          zero at every step (hard forgetting) on top of the $\alpha$ decay (soft forgetting);
          the arctan surrogate only makes entries small, never zero, and since it shrinks by
          $2\gamma/\pi$ rather than $\gamma$ for large entries, it forgets less.
        * **Sigmoid Bregman.** Entries stay in $(0, 1)$; without retention the logits drift
          and entries pile up near 0 and 1 (a nearly binary memory); $\alpha < 1$ keeps them
          away from saturation.
        """),
    ]


# ==============================================================================================
# 05 - Table 1
# ==============================================================================================
def nb05() -> list[tuple[str, str]]:
    return [
        md(r"""
        # 5. Table 1: prior models as MIRAS configurations

        Table 1 of the paper lists recent sequence models by their four MIRAS choices: memory
        architecture, attentional bias, retention gate and memory learning algorithm.
        `miras_ref.zoo.TABLE1` maps each row to a function `build(d) -> MirasConfig`;
        `config.describe()` returns the four choices and `config.write` the model's own write
        rule as printed in the table. `zoo.MIRAS_VARIANTS` holds Moneta, Yaad and Memora
        (notebook 6).

        Gate names are shared across models: `eta` is the write strength ($\beta_t$ of the delta
        rule, $\Delta_t$ of Mamba2, $\theta_t$ of Titans), `alpha` the retention/decay
        ($\gamma$ of RetNet, $\alpha_t$ of GLA, $w_t$ of RWKV-7), `mu` Titans' momentum decay,
        `delta` Yaad's Huber threshold.
        """),
        setup("""
        import matplotlib.pyplot as plt
        import numpy as np

        from miras_ref import read_memory, scan, zoo
        from miras_ref.tour import recall_problem
        """),
        code(r"""
        d = 16
        header = ("model", "memory", "bias", "retention", "algorithm", "gates", "write rule")
        rows = []
        for name, build in {**zoo.TABLE1, **zoo.MIRAS_VARIANTS}.items():
            cfg = build(d)
            rows.append((name, *cfg.describe().values(), ",".join(cfg.required_gates) or "-", cfg.write))
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(6)]
        for r in [header] + rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(r[:6], widths)), " ", r[6])
        """),
        md(r"""
        Three things to notice in the table:

        * **Most rows differ only in the retention.** The first-generation RNNs (RetNet, linear
          attention, Lightning attention, GLA, Mamba2) share the dot-product bias and GD: they
          are all Eq 8, $M_t = \alpha M_{t-1} + \mathbf v_t\mathbf k_t^\top$, with a constant,
          data-dependent or channel-wise $\alpha$. The delta-rule family (DeltaNet, Gated
          DeltaNet, RWKV-7, ...) shares the $\ell_2$ bias (Eq 9).
        * **Two $\ell_2$ retentions.** Gated DeltaNet's
          $\alpha_t S_{t-1}(I - \beta_t\mathbf k_t\mathbf k_t^\top)$ takes its gradient at the
          decayed memory $\alpha_t S_{t-1}$ (`l2(decayed)`, the "scaled prior"
          $\|W - \alpha W_{t-1}\|^2$ of Sec 4); RWKV-7's
          $S_{t-1}(\mathrm{diag}(w_t) - \beta_t\mathbf k_t\mathbf k_t^\top)$ takes it at $S_{t-1}$.
        * **The algorithm column.** Longhorn is an *implicit* (proximal) GD step, DeltaProduct
          takes several GD steps per token, Titans uses momentum, and softmax attention is the
          non-parametric (Nadaraya-Watson) solution of the $\ell_2$ objective (Eq 2).

        ## Four rows against their own recurrences

        Each cell below writes a model's recurrence as its own paper does, as a plain loop
        over the memory $S \in \mathbb R^{d_v\times d_k}$ with the output $\mathbf o_t = S_t\mathbf q_t$
        read after the write, with random **data-dependent** gates, and compares it with
        `scan(zoo.<model>(d), q, k, v, gates)`.
        """),
        code(r"""
        T, dd = 24, 6
        q, k, v = rng.standard_normal((3, 1, T, 1, dd))
        k = unit(k)                                        # delta-rule models expect unit keys
        beta = rng.uniform(0.1, 0.9, (1, T, 1))            # write strength per token
        alpha = rng.uniform(0.8, 1.0, (1, T, 1))           # decay per token
        qt, kt, vt, bt, at = q[0, :, 0], k[0, :, 0], v[0, :, 0], beta[0, :, 0], alpha[0, :, 0]
        I = np.eye(dd)


        def check(name, gates, outputs):
            y, _ = scan(zoo.get(name, dd), q, k, v, gates)
            print(f"{name:16s} max |scan - own recurrence| = {np.abs(y[0, :, 0] - np.array(outputs)).max():.1e}")
        """),
        md(r"""
        **Linear attention** (Katharopoulos et al.): $S_t = S_{t-1} + \mathbf v_t\mathbf k_t^\top$ (Eq 8, $\alpha = 1$).
        """),
        code(r"""
        S, out = np.zeros((dd, dd)), []
        for t in range(T):
            S = S + np.outer(vt[t], kt[t])
            out.append(S @ qt[t])
        check("linear_attention", None, out)
        """),
        md(r"""
        **DeltaNet** (Schlag et al.): $S_t = S_{t-1}(I - \beta_t\mathbf k_t\mathbf k_t^\top) + \beta_t\mathbf v_t\mathbf k_t^\top$ (Eq 9, $\alpha = 1$).
        """),
        code(r"""
        S, out = np.zeros((dd, dd)), []
        for t in range(T):
            S = S @ (I - bt[t] * np.outer(kt[t], kt[t])) + bt[t] * np.outer(vt[t], kt[t])
            out.append(S @ qt[t])
        check("deltanet", {"eta": beta}, out)
        """),
        md(r"""
        **Gated DeltaNet** (Yang et al.): $S_t = \alpha_t S_{t-1}(I - \beta_t\mathbf k_t\mathbf k_t^\top) + \beta_t\mathbf v_t\mathbf k_t^\top$.
        """),
        code(r"""
        S, out = np.zeros((dd, dd)), []
        for t in range(T):
            S = at[t] * S @ (I - bt[t] * np.outer(kt[t], kt[t])) + bt[t] * np.outer(vt[t], kt[t])
            out.append(S @ qt[t])
        check("gated_deltanet", {"eta": beta, "alpha": alpha}, out)
        """),
        md(r"""
        **Longhorn** (Liu et al.): the implicit step
        $S_t = \arg\min_S \frac12\|S\mathbf k_t - \mathbf v_t\|^2 + \frac1{2\beta_t}\|S - S_{t-1}\|^2$, i.e.
        $S_t = S_{t-1}(I - \varepsilon_t\mathbf k_t\mathbf k_t^\top) + \varepsilon_t\mathbf v_t\mathbf k_t^\top$
        with $\varepsilon_t = \beta_t/(1 + \beta_t\mathbf k_t^\top\mathbf k_t)$.
        """),
        code(r"""
        S, out = np.zeros((dd, dd)), []
        for t in range(T):
            eps = bt[t] / (1 + bt[t] * kt[t] @ kt[t])
            S = S @ (I - eps * np.outer(kt[t], kt[t])) + eps * np.outer(vt[t], kt[t])
            out.append(S @ qt[t])
        check("longhorn", {"eta": beta, "alpha": np.ones_like(beta)}, out)
        """),
        md(r"""
        ## All rows on one recall task

        The task of `python -m miras_ref.tour` (`miras_ref.tour.recall_problem`): 8 pairs with
        unit keys in $d = 32$, written 4 times; then every key is queried with the final
        memory. Two versions: clean, and with one of the 8 values scaled by 10 (an outlier;
        the error is measured on the 7 clean pairs). Every model runs at its best $\eta$ in
        $\{0.1, 0.3, 1, 3\}$. Three rows need model-specific inputs, spelled out below:
        HGRN2 ties its key to the forget gate ($\mathbf k_t = 1 - \boldsymbol\alpha_t$, so it
        gets a key-dependent channel-wise $\alpha$), DeltaProduct takes two keys per token,
        and softmax attention gets a sharper score scale, since $\mathbf q\cdot\mathbf k/\sqrt d$
        with unit keys would make it nearly uniform.
        """),
        code(r"""
        def recall_error(name, k, v, clean, eta):
            '''Write the sequence with model `name`, query every key, mean relative error on `clean`.'''
            d = k.shape[-1]
            cfg = zoo.softmax_attention(d, scale=20.0) if name == "softmax_attention" else zoo.get(name, d)
            gates = cfg.default_gates(*k.shape[:3])
            if "eta" in gates:
                gates["eta"][:] = eta
            kk, vv = k, v
            if name == "hgrn2":              # k_t = 1 - alpha_t: channel-wise alpha from the key
                gates["alpha"] = np.clip(1.0 - np.abs(k), 0.05, 0.999)
            if name == "deltaproduct":       # two delta steps per token (on the same pair here)
                kk, vv = np.repeat(k[:, :, :, None], 2, axis=3), np.repeat(v[:, :, :, None], 2, axis=3)
            _, state = scan(cfg, k, kk, vv, gates, output_final_state=True)
            y = read_memory(cfg, state, k)[0, :, 0]
            err = np.linalg.norm(y - v[0, :, 0], axis=-1) / np.linalg.norm(v[0, :, 0], axis=-1)
            return float(err[clean].mean())


        models = list(zoo.TABLE1) + list(zoo.MIRAS_VARIANTS)
        results = {}
        for task, n_outliers in (("clean", 0), ("one outlier x10", 1)):
            k, v, clean = recall_problem(n_pairs=8, d=32, n_outliers=n_outliers, outlier_scale=10.0)
            results[task] = [min(recall_error(m, k, v, clean, eta) for eta in (0.1, 0.3, 1.0, 3.0))
                             for m in models]

        memory_of = {m: zoo.get(m, 8).memory.name for m in models}
        colors = {"vector": "tab:gray", "matrix": "tab:blue", "mlp": "tab:orange"}
        fig, ax = plt.subplots(figsize=(7, 5.2))
        y = np.arange(len(models))
        ax.barh(y - 0.2, results["clean"], 0.4, color=[colors[memory_of[m]] for m in models])
        ax.barh(y + 0.2, results["one outlier x10"], 0.4, color=[colors[memory_of[m]] for m in models],
                alpha=0.45, hatch="///")
        for yi, (a, b) in enumerate(zip(results["clean"], results["one outlier x10"])):
            ax.text(min(a, 1.55) + 0.01, yi - 0.2, f"{a:.2f}", va="center", fontsize=6)
            ax.text(min(b, 1.55) + 0.01, yi + 0.2, f"{b:.2f}", va="center", fontsize=6, color="dimgray")
        ax.set_yticks(y, models)
        ax.invert_yaxis()
        ax.set(xlabel="relative recall error (clean pairs), best eta", xlim=(0, 1.6),
               title="8 pairs, d = 32, written 4 times: solid = clean, hatched = one outlier x10")
        for mem, c in colors.items():
            ax.barh([0], [0], color=c, label=f"{mem} memory")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        **What the plot says.** On clean data DeltaNet, TTT-Linear, Longhorn and sharp softmax
        attention recall almost perfectly; the gated delta-rule models (Gated DeltaNet, RWKV-7,
        DeltaProduct) pay for their forgetting ($\alpha = 0.95$ over 32 tokens) and the Hebbian
        models for crosstalk between non-orthogonal keys (notebook 1). One outlier value hurts
        most models, since every $\ell_2$ write is proportional to the error; Yaad's robust
        bias (notebook 3) limits the damage. The small MLP memories are
        not at their best here: their output $\mathbf k + \mathrm{LN}(\cdot)$ has a fixed norm
        that these Gaussian values do not match (`docs/paper-notes.md`); notebook 6 uses values
        they can represent.
        """),
    ]


# ==============================================================================================
# 06 - Moneta, Yaad, Memora
# ==============================================================================================
def nb06() -> list[tuple[str, str]]:
    return [
        md(r"""
        # 6. Moneta, Yaad and Memora: the MLP-memory variants

        The paper's three new models (Sec 5.3) share the memory: a 2-layer MLP with residual
        and LayerNorm, $\mathcal M(\mathbf x) = \mathbf x + \mathrm{LN}(W_1\sigma(W_2\mathbf x))$,
        expansion 4, GELU. They differ in the other three choices:

        * **Moneta** — $\ell_p$ bias, $\ell_q$ + $\ell_2$ retention, GD:
          $$A_t = \alpha_t A_{t-1} - \eta_t\nabla\ell_p(W_{t-1}; \mathbf k_t, \mathbf v_t),\qquad
          W_t = \frac{A_t}{\|A_t\|_q^{q-2}} \tag{Eq 24}$$
          with $\nabla\ell_p$ the $\ell_p$ gradient of Eq 25 (= Eq 11 pushed through the MLP); the paper uses $(p, q) = (3, 4)$.
        * **Yaad** — the smooth Huber mixture (Eq 16), $\ell_2$ retention, GD:
          $$W_t = \alpha_t W_{t-1} - \begin{cases}\eta_t\nabla\ell_2(W_{t-1}; \mathbf k_t, \mathbf v_t) & \text{if } \|\mathcal M(\mathbf k_t) - \mathbf v_t\| \le \delta_t\\
          \eta_t\delta_t\nabla\ell_1(W_{t-1}; \mathbf k_t, \mathbf v_t) & \text{otherwise.}\end{cases} \tag{Eq 26}$$
        * **Memora** — $\ell_2$ bias, KL retention (Eq 21), GD:
          $$W_t = \mathrm{Softmax}(\alpha_t\log W_{t-1} - \eta_t\nabla\ell_2(W_{t-1}; \mathbf k_t, \mathbf v_t)). \tag{Eq 27}$$

        This notebook checks one step of each equation by hand, then runs a small version of the
        paper's ablation (Figure 4): what $p$, $\delta$ and $\alpha$ do on a synthetic recall task.
        """),
        setup("""
        import matplotlib.pyplot as plt
        import numpy as np

        from miras_ref import read_memory, scan, zoo
        from miras_ref.algorithms import memory_weights
        """),
        md(r"""
        ## One step of Eq 24, 26 and 27 by hand

        The memory state is a dict of weights `{"W1": [B, H, d, 4d], "W2": [B, H, 4d, d]}`
        (for Moneta the accumulators $A$, for Memora the logits);
        `algorithms.memory_weights(cfg, state)` applies the gate's link $W = \psi(Z)$. The
        gradient of any bias is `memory.vjp(W, k, bias.grad(M(k), v, delta))`. The first
        token from the default (seeded) initial state, by hand, against `scan`:
        """),
        code(r"""
        d = 8
        k = unit(rng.standard_normal((1, 1, 1, d)))            # one token, [B, T, H, d]
        v = rng.standard_normal((1, 1, 1, d))
        eta, alpha, delta = 0.05, 0.99, 1.0
        gates = {"eta": np.full((1, 1, 1), eta), "alpha": np.full((1, 1, 1), alpha),
                 "delta": np.full((1, 1, 1), delta)}
        kx, vx = k[:, 0, :, None, :], v[:, 0, :, None, :]     # [B, H, N = 1, d] for forward / vjp


        def grad_of(cfg, W, dy_fn):
            '''vjp of the bias gradient dy_fn(e), e = M(W, k) - v, through the MLP.'''
            e = cfg.memory.forward(W, kx) - vx
            return cfg.memory.vjp(W, kx, dy_fn(e))


        def softmax_rows(x):
            z = np.exp(x - x.max(axis=-1, keepdims=True))
            return z / z.sum(axis=-1, keepdims=True)


        # Moneta (Eq 24-25), p = 3, q = 4
        cfg = zoo.moneta(d)
        p, q = cfg.bias.p, cfg.retention.q
        A0 = cfg.memory.default_state(1, 1)
        W0 = {n: a / np.sum(np.abs(a) ** q, axis=(-2, -1), keepdims=True) ** ((q - 2) / q) for n, a in A0.items()}
        g = grad_of(cfg, W0, lambda e: p * np.tanh(10 * e) * np.sqrt(e**2 + 1e-6) ** (p - 1))
        A1 = {n: alpha * A0[n] - eta * g[n] for n in A0}
        _, state = scan(cfg, k, k, v, gates, output_final_state=True)
        print("Moneta, Eq 24:", max(np.abs(state[n] - A1[n]).max() for n in A1))

        # Yaad (Eq 26)
        cfg = zoo.yaad(d)
        W0 = cfg.memory.default_state(1, 1)
        g = grad_of(cfg, W0, lambda e: e if np.linalg.norm(e) <= delta else delta * np.tanh(10 * e))
        W1 = {n: alpha * W0[n] - eta * g[n] for n in W0}
        _, state = scan(cfg, k, k, v, gates, output_final_state=True)
        print("Yaad,   Eq 26:", max(np.abs(state[n] - W1[n]).max() for n in W1))

        # Memora (Eq 27), softmax over each row of each weight matrix
        cfg = zoo.memora(d)
        W0 = memory_weights(cfg, cfg.memory.default_state(1, 1))
        g = grad_of(cfg, W0, lambda e: e)
        W1 = {n: softmax_rows(alpha * np.log(W0[n]) - eta * g[n]) for n in W0}
        _, state = scan(cfg, k, k, v, gates, output_final_state=True)
        W_scan = memory_weights(cfg, state)
        print("Memora, Eq 27:", max(np.abs(W_scan[n] - W1[n]).max() for n in W1))
        """),
        md(r"""
        ## A recall task an MLP memory can solve

        $\mathrm{LN}(\cdot)$ has zero mean and norm $\sqrt d$, so $\mathcal M(\mathbf k) = \mathbf k + \mathrm{LN}(\cdot)$
        can only return values with $\mathbf v - \mathbf k$ of that form (`docs/paper-notes.md`).
        The task respects it: 4 pairs with unit keys and values $\mathbf v = \mathbf k + \mathbf u$,
        $\mathbf u$ zero-mean with norm $\sqrt d$, $d = 8$. The context is $T$ tokens, each a
        pair drawn in random order (every pair $T/4$ times). Optionally a fraction of tokens is
        **corrupted**: their value is $\mathbf k + 4\mathbf u'$ for a random $\mathbf u'$ of the
        same kind. After the context every key is queried; the error is
        $\|\mathcal M(\mathbf k_i) - \mathbf v_i\|/\sqrt d$, averaged over pairs and 4 draws.
        Every setting runs at its best $\eta$ from a small grid.
        """),
        code(r"""
        d, trials, n_pairs = 8, 4, 4


        def deviation(shape, rng):
            '''Random u with zero mean and norm sqrt(d) on the last axis (what k + LN(.) can add).'''
            u = rng.standard_normal(shape)
            return unit(u - u.mean(axis=-1, keepdims=True)) * np.sqrt(d)


        def recall_task(T, p_out=0.0, seed=0):
            rng = np.random.default_rng(seed)
            k = unit(rng.standard_normal((trials, n_pairs, 1, d)))
            v = k + deviation(k.shape, rng)
            idx = np.stack([rng.permutation(np.tile(np.arange(n_pairs), T // n_pairs)) for _ in range(trials)])
            K = np.take_along_axis(k, idx[:, :, None, None], axis=1)
            V = np.take_along_axis(v, idx[:, :, None, None], axis=1)
            corrupt = rng.random((trials, T, 1, 1)) < p_out
            return k, v, K, np.where(corrupt, K + 4 * deviation(K.shape, rng), V)


        def recall_error(cfg, task, etas, **gate_values):
            '''Best (over etas) mean ||M(k_i) - v_i|| / sqrt(d) after writing the task's context.'''
            k, v, K, V = task
            errors = []
            for eta in etas:
                gates = cfg.default_gates(*K.shape[:3])
                gates["eta"][:] = eta
                for name, value in gate_values.items():
                    gates[name][:] = value
                with np.errstate(all="ignore"):
                    _, state = scan(cfg, K, K, V, gates, output_final_state=True)
                    y = read_memory(cfg, state, k)
                    err = np.mean(np.linalg.norm(y - v, axis=-1)) / np.sqrt(d)
                errors.append(err if np.isfinite(err) else np.inf)
            return min(errors)
        """),
        md(r"""
        ## Moneta: what *p* does

        Figure 4 of the paper varies $p$ and plots perplexity against context length. Here:
        recall error against context length for $p \in \{1.5, 2, 3, 4\}$ ($q = 4$ as in the
        paper), on clean data and with 10% corrupted tokens.
        """),
        code(r"""
        Ts = [16, 32, 64, 128]
        ps = [1.5, 2.0, 3.0, 4.0]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
        for ax, p_out in zip(axes, (0.0, 0.1)):
            tasks = {T: recall_task(T, p_out) for T in Ts}
            for p in ps:
                cfg = zoo.moneta(d, p=p)
                ax.plot(Ts, [recall_error(cfg, tasks[T], (0.003, 0.01, 0.03)) for T in Ts], "o-", ms=4,
                        label=f"p = {p:g}")
            ax.set(xscale="log", xlabel="context length T", title=f"Moneta (q = 4), {p_out:.0%} corrupted tokens")
            ax.set_xticks(Ts, [str(T) for T in Ts])
            ax.minorticks_off()
        axes[0].set_ylabel("recall error")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        The gradient $p\,\mathrm{Sign}(e)|e|^{p-1}$ weighs large errors more as $p$ grows. On
        clean data, $p \le 2$ learns fastest on this small task and larger $p$ learns more
        slowly; with corrupted tokens, large $p$ turns each outlier into a huge write and the
        memory stops recalling, while $p = 1.5$ is the most robust. (The paper finds $p = 3$
        best for language modelling, a very different task; the point here is the mechanism.)
        Large writes also hurt Moneta through its $q = 4$ link, which shrinks $W$ as the
        accumulator grows (notebook 4).

        ## Yaad: what *δ* does

        $\delta$ is the error norm at which Yaad switches from the $\ell_2$ step to the
        clipped $\delta\,\mathrm{Sign}(\cdot)$ step. Recall error against $\delta$ at $T = 128$:
        """),
        code(r"""
        deltas = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
        cfg = zoo.yaad(d)
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        for p_out in (0.0, 0.1, 0.2):
            task = recall_task(128, p_out)
            ax.plot(deltas, [recall_error(cfg, task, (0.03, 0.1, 0.3), delta=dl) for dl in deltas],
                    "o-", ms=4, label=f"{p_out:.0%} corrupted")
        ax.set(xscale="log", xlabel=r"Huber threshold $\delta$", ylabel="recall error",
               title=r"Yaad, T = 128 (large $\delta$ = plain $\ell_2$)")
        ax.legend(fontsize=8)
        plt.show()
        """),
        md(r"""
        Small $\delta$ makes every step a clipped sign step: robust but slow, and unable to store
        magnitudes precisely (the "value-less" memory of Eq 12). Large $\delta$ makes Yaad a
        plain $\ell_2$ memory: best on clean data, but every outlier is written in full. With
        outliers the curve is U-shaped: the best $\delta$ (here about 1) lies between the error
        of a clean token late in learning and the error of a corrupted one ($\approx 4\sqrt d$).
        The right threshold depends on the data and on how far learning has gone, which is why
        Yaad makes $\delta_t$ data-dependent and channel-wise (Sec 5.4).

        ## Memora: what *α* does

        Memora's retention pulls the logits towards zero, i.e. every row of every weight
        matrix towards the uniform distribution. The task where forgetting should help: the
        context is a series of **episodes** of 16 tokens, each with 4 new pairs, and only the
        last episode's pairs are queried; older episodes are interference. For contrast, the
        same sweep for TTT-MLP, the same MLP memory with the $\ell_2$ retention gate.
        """),
        code(r"""
        def episodes_task(T, seed=0):
            '''T // 16 episodes of 4 new pairs x 4 repetitions; the queried pairs are the last episode's.'''
            rng = np.random.default_rng(seed)
            Ks, Vs = [], []
            for _ in range(T // 16):
                k = unit(rng.standard_normal((trials, n_pairs, 1, d)))
                v = k + deviation(k.shape, rng)
                idx = np.stack([rng.permutation(np.tile(np.arange(n_pairs), 4)) for _ in range(trials)])
                Ks.append(np.take_along_axis(k, idx[:, :, None, None], axis=1))
                Vs.append(np.take_along_axis(v, idx[:, :, None, None], axis=1))
            return k, v, np.concatenate(Ks, axis=1), np.concatenate(Vs, axis=1)


        alphas = [0.9, 0.95, 0.99, 1.0]
        tasks = {T: episodes_task(T) for T in Ts}
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
        for ax, name in zip(axes, ("memora", "ttt_mlp")):
            cfg = zoo.get(name, d)
            for a in alphas:
                ax.plot(Ts, [recall_error(cfg, tasks[T], (0.03, 0.1, 0.3), alpha=a) for T in Ts], "o-", ms=4,
                        label=rf"$\alpha$ = {a:g}")
            ax.set(xscale="log", xlabel="context length T",
                   title=f"{name}: {cfg.describe()['retention']} retention, last episode recalled")
            ax.set_xticks(Ts, [str(T) for T in Ts])
            ax.minorticks_off()
        axes[0].set_ylabel("recall error")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        For TTT-MLP the $\ell_2$ retention does what a retention gate is for: without it
        ($\alpha = 1$) the error grows with the number of old episodes; $\alpha = 0.99$ keeps
        it flat, and stronger forgetting ($\alpha \le 0.95$) loses the current episode too.
        For Memora, on this task, every $\alpha < 1$ hurts: its retention does not shrink the
        weights towards zero but flattens each row towards the uniform distribution, and a
        memory whose weights are all near $c/n$ cannot represent much. In the KL view
        ($\alpha = 1 - \lambda$, Eq 21), a useful $\alpha$ for Memora is very close to 1.

        Try other settings: `zoo.moneta(d, p=3, q=2)` removes the $\ell_q$ normalisation, and
        `cfg.gate_defaults` holds each model's default gates.
        """),
    ]


# ==============================================================================================
# 07 - chunked training
# ==============================================================================================
def nb07() -> list[tuple[str, str]]:
    return [
        md(r"""
        # 7. Chunk-parallel training (Eq 28-32)

        The recurrences of Moneta, Yaad and Memora are non-linear in the memory, so they cannot
        be trained in parallel over time as they stand. Sec 5.4 cuts the sequence into chunks
        of $b$ tokens and, inside a chunk, takes every gradient at the chunk's starting state
        $\mathcal M_{t'}$ instead of $\mathcal M_{t-1}$. The recurrence inside the chunk becomes
        linear and unrolls into one masked sum:

        $$\mathcal M_t = \alpha_t\mathcal M_{t-1} - \eta_t\nabla\ell(\mathcal M_{t-1}; \mathbf k_t, \mathbf v_t)
        \;\approx\; \beta_t\mathcal M_0 - \sum_{i=1}^t \eta_i\frac{\beta_t}{\beta_i}\nabla\ell(\mathcal M_{t'}; \mathbf k_i, \mathbf v_i),
        \qquad \beta_i = \prod_{j=1}^i\alpha_j. \tag{Eq 28}$$

        For the $\ell_p$ bias and a matrix memory, the whole chunk is matrix products with the
        learning-rate/decay mask $\mathbf E_b\odot\mathbf B_b$:

        $$\sum_{i=1}^b \eta_i\frac{\beta_b}{\beta_i}\nabla\ell(W_0; \mathbf k_i, \mathbf v_i)
        = p\,\mathbf E_b\odot\mathbf B_b\odot\mathrm{Sign}(W\mathbf k_t - \mathbf v_t)\odot(|W_0\mathbf K - \mathbf V|^{p-1})\mathbf K^\top. \tag{Eq 29}$$

        The non-linear link ($\ell_q$ normalisation, softmax) is applied when the memory is read
        and at the chunk end, never inside the chunk. Memora adds a **lag token** (Eq 30-32):
        the first token of each chunk takes an exact step,
        $\mathcal M_1 = \mathrm{Softmax}(\alpha_1\log\mathcal M_0 - \eta_1\nabla\ell_2(\mathcal M_0; \mathbf k_1, \mathbf v_1))$ (Eq 30),
        and the rest of the chunk takes its gradients at $\mathcal M_1$ (Eq 31-32).

        `miras_ref.scan_chunked(config, q, k, v, gates, chunk_size)` is this form;
        `miras_ref.scan` is the exact recurrence.
        """),
        setup("""
        import time

        import matplotlib.pyplot as plt
        import numpy as np

        from miras_ref import scan, scan_chunked, zoo
        from miras_ref.chunked import chunk_coefficients
        """),
        md(r"""
        ## The chunk mask E ⊙ B

        `chunk_coefficients(eta, alpha)` returns, for the tokens of one chunk, the decay
        $\beta_t/\beta_{t'}$ from the chunk start and the mask $\mathbf E_b\odot\mathbf B_b$ of Eq 29,
        $\mathrm{mask}[t, i] = \eta_i\,\beta_t/\beta_i = \eta_i\prod_{j=i+1}^t\alpha_j$ for $i \le t$
        (0 above the diagonal), computed in log space. Row $t$ holds the weights with which the
        chunk's gradients enter the state at token $t$.
        """),
        code(r"""
        C = 16
        eta = rng.uniform(0.2, 1.0, C)
        alpha = rng.uniform(0.7, 1.0, C)
        decay, mask = chunk_coefficients(eta, alpha)

        by_loop = np.zeros((C, C))
        for t in range(C):
            for i in range(t + 1):
                by_loop[t, i] = eta[i] * np.prod(alpha[i + 1:t + 1])    # eta_i beta_t / beta_i
        print("max |chunk_coefficients - loop| =", np.abs(mask - by_loop).max(),
              "  decay = cumprod(alpha):", np.allclose(decay, np.cumprod(alpha)))

        fig, axes = plt.subplots(1, 2, figsize=(8, 3.3), gridspec_kw={"width_ratios": [1, 1.25]})
        axes[0].bar(np.arange(C), eta, color="tab:blue", alpha=0.6, label=r"$\eta_i$")
        axes[0].plot(np.arange(C), alpha, "o-", color="tab:red", ms=3, label=r"$\alpha_i$")
        axes[0].plot(np.arange(C), decay, "s-", color="k", ms=3, label=r"$\beta_t/\beta_{t'}$")
        axes[0].set(xlabel="token in chunk", title="gates of one chunk")
        axes[0].legend(fontsize=7)
        im = axes[1].imshow(np.where(mask > 0, mask, np.nan), cmap="viridis")
        axes[1].set(xlabel="gradient of token i", ylabel="state at token t",
                    title=r"mask $\eta_i\,\beta_t/\beta_i$  ($\mathbf{E}_b \odot \mathbf{B}_b$)")
        axes[1].grid(False)
        fig.colorbar(im, ax=axes[1], shrink=0.85)
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        ## Eq 28 by hand for one chunk

        TTT-Linear with a decay gate: a matrix memory, $\ell_2$ bias, $\ell_2$ retention, GD. One
        chunk of $b = 16$ tokens from $W_0 = 0$: with every gradient at $W_0$, the state at the
        end of the chunk is the last row of the mask applied to the per-token gradients
        $(W_0\mathbf k_i - \mathbf v_i)\mathbf k_i^\top$.
        """),
        code(r"""
        d, b = 8, 16
        cfg = zoo.ttt_linear(d)
        q, k, v = rng.standard_normal((3, 1, b, 1, d))
        k = unit(k)
        gates = {"eta": eta[None, :, None], "alpha": alpha[None, :, None]}      # [B, T, H]
        W0 = 0.1 * rng.standard_normal((d, d))

        grads = np.einsum("ti,tj->tij", k[0, :, 0] @ W0.T - v[0, :, 0], k[0, :, 0])  # (W0 k_i - v_i) k_i^T
        W_b = decay[-1] * W0 - np.einsum("i,ijk->jk", mask[-1], grads)              # Eq 28 at t = b
        _, state = scan_chunked(cfg, q, k, v, gates, chunk_size=b,
                                initial_state={"W": W0[None, None]}, output_final_state=True)
        print("max |scan_chunked state - Eq 28 by hand| =", np.abs(state["W"][0, 0] - W_b).max())
        _, exact = scan(cfg, q, k, v, gates, initial_state={"W": W0[None, None]}, output_final_state=True)
        print("max |exact recurrence state - Eq 28|      =", np.abs(exact["W"][0, 0] - W_b).max(), "(the approximation)")
        """),
        md(r"""
        ## Chunk size 1 is the recurrence; larger chunks approximate it

        With $b = 1$ every gradient is taken at the previous state, so `scan_chunked` is `scan`.
        For $b > 1$ the error depends on how much the memory moves within a chunk. Two
        measures, for chunk sizes $1, 2, 4, \dots, 64$:

        1. **one chunk**: from the same start, the relative error of the state after $b$ tokens,
           $\|Z^{\text{chunked}}_b - Z^{\text{exact}}_b\| / \|Z^{\text{exact}}_b - Z_0\|$: the
           approximation of Eq 28 itself;
        2. **a whole sequence** of 256 tokens: the mean relative error of the outputs
           $\mathbf y_t$, where the per-chunk differences compound.

        Keys are unit vectors, values $\mathbf k + \mathbf u$ (fittable by the MLP memories, see
        notebook 6), $d = 16$, every model at its zoo default gates. Zeros are drawn at
        $10^{-17}$.
        """),
        code(r"""
        d, T = 16, 256
        q, k = unit(rng.standard_normal((2, 1, T, 1, d)))
        u = rng.standard_normal((1, T, 1, d))
        v = k + unit(u - u.mean(axis=-1, keepdims=True)) * np.sqrt(d)
        names = ["mamba2", "gated_deltanet", "ttt_linear", "ttt_mlp", "moneta", "yaad", "memora"]
        sizes = [1, 2, 4, 8, 16, 32, 64]
        gates = {name: zoo.get(name, d).default_gates(1, T, 1) for name in names}     # zoo defaults

        for name in names:
            cfg = zoo.get(name, d)
            y_exact, _ = scan(cfg, q, k, v)
            y1, _ = scan_chunked(cfg, q, k, v, chunk_size=1)
            print(f"{name:15s} max |scan_chunked(chunk_size=1) - scan| = {np.abs(y1 - y_exact).max():.1e}")
        """),
        code(r"""
        def norm_ratio(num, den):
            '''||num|| / ||den|| over all parameters of two state dicts.'''
            return float(np.sqrt(sum(np.sum(num[n] ** 2) for n in num) / sum(np.sum(den[n] ** 2) for n in den)))


        gates["gated_deltanet, η/10"] = {g: a / 10 if g == "eta" else a for g, a in gates["gated_deltanet"].items()}
        one_chunk, sequence = {}, {}
        for label, g in gates.items():
            cfg = zoo.get(label.split(",")[0], d)
            z0 = cfg.memory.default_state(1, 1)
            y_exact, _ = scan(cfg, q, k, v, g)
            one_chunk[label], sequence[label] = [], []
            for b in sizes:
                part = (q[:, :b], k[:, :b], v[:, :b], {n: a[:, :b] for n, a in g.items()})
                _, z_exact = scan(cfg, *part, output_final_state=True)
                _, z_chunk = scan_chunked(cfg, *part, chunk_size=b, output_final_state=True)
                moved = {n: z_exact[n] - z0[n] for n in z0}
                one_chunk[label].append(norm_ratio({n: z_chunk[n] - z_exact[n] for n in z0}, moved))
                y, _ = scan_chunked(cfg, q, k, v, g, chunk_size=b)
                sequence[label].append(np.mean(np.linalg.norm(y - y_exact, axis=-1) / np.linalg.norm(y_exact, axis=-1)))

        floor = 1e-4          # errors below 1e-12 (exact up to rounding) are drawn on this line
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for ax, data, title in ((axes[0], one_chunk, "one chunk: relative state error"),
                                (axes[1], sequence, f"{T}-token sequence: relative output error")):
            for label, err in data.items():
                err = np.array(err)
                ax.plot(sizes, np.where(err < 1e-12, floor, err), "o--" if "/" in label else "o-", ms=4, label=label)
            ax.axhline(floor, color="gray", lw=0.8)
            ax.text(5, floor * 1.4, "exact (error < 1e-12)", fontsize=7, color="gray")
            ax.set(xscale="log", yscale="log", ylim=(floor / 2, 10), xlabel="chunk size b", title=title)
            ax.set_xticks(sizes, [str(b) for b in sizes])
            ax.minorticks_off()
        axes[0].set_ylabel("error against the recurrence")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=8, fontsize=7)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        plt.show()
        """),
        md(r"""
        **What the plots say.**

        * **Mamba2** (and every Hebbian row of Table 1) is exact at every chunk size: the
          dot-product gradient $-\mathbf v\mathbf k^\top$ does not depend on the memory, so
          freezing it at the chunk start changes nothing (only rounding remains).
        * For the $\ell_2$ matrix memories the one-chunk error grows smoothly with $b$, and
          roughly in proportion to $\eta$ (dashed: Gated DeltaNet with $\eta/10$): how far the
          memory moves inside a chunk is what the approximation neglects.
        * **Memora** at $b = 2$ is exact: the lag token takes the exact step and the one token
          left takes its gradient at the lag-token state, which is the exact previous state.
        * The MLP memories move a lot per token at their default $\eta$, and their recurrence
          amplifies small differences, so over a whole sequence the chunked model is a
          different model, not a small perturbation of the recurrent one. This is expected:
          the paper *trains* with the chunked form, so that form is the model.

        ## Where the link is applied: every token or chunk starts

        Moneta and Memora keep a state $Z$ that a link turns into weights, $W = \psi(Z)$ (the
        $\ell_q$ normalisation, the row softmax). By default (`link_at="token"`) each query of
        a chunk reads its own token's $\psi(Z_t)$, so chunk size 1 is the recurrence. Sec 5.4
        of the paper instead applies the non-linearity only at the end of each chunk: inside
        the chunk the memory $\psi(Z_{t'})$ takes plain gradient steps,
        $W_t = (\beta_t/\beta_{t'})\,\psi(Z_{t'}) - \sum_i \eta_i (\beta_t/\beta_i)\,\nabla\ell(W_{t'}; \mathbf k_i, \mathbf v_i)$,
        and the state $Z$ takes the same steps (`link_at="chunk"`). The state after each chunk
        is the same in both forms; only the reads inside a chunk differ. The chunk-start form
        reads like an identity link, with no per-token state, which is what makes it fast on
        a GPU. Below: the output error of both forms against the recurrence.
        """),
        code(r"""
        from dataclasses import replace

        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        for name in ("moneta", "memora"):
            g = gates[name]
            y_exact, _ = scan(zoo.get(name, d), q, k, v, g)
            for link_at, style in (("token", "o-"), ("chunk", "s--")):
                cfg = replace(zoo.get(name, d), link_at=link_at)
                err = [np.mean(np.linalg.norm(scan_chunked(cfg, q, k, v, g, chunk_size=b)[0] - y_exact, axis=-1)
                               / np.linalg.norm(y_exact, axis=-1)) for b in sizes]
                print(f"{name:7s} link_at={link_at!r:8s}", "  ".join(f"b={b}: {e:.1e}" for b, e in zip(sizes, err)))
                ax.plot(sizes, np.maximum(err, floor), style, ms=4, label=f"{name}, link at {link_at}")
        ax.set(xscale="log", yscale="log", ylim=(floor / 2, 10), xlabel="chunk size b",
               ylabel="relative output error", title=f"{T}-token sequence against the recurrence")
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
        ax.legend(fontsize=7)
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        At $b = 1$ the token form is the recurrence (drawn on the floor line) and, for Moneta,
        the chunk-start form is not: its one token reads $\alpha\,\psi(Z_{t-1}) - \eta\nabla\ell$
        instead of $\psi(\alpha Z_{t-1} - \eta\nabla\ell)$. Inside a chunk its steps skip the
        normalisation that the recurrence applies to every step ($1/\|A\|_q^{q-2}$ for
        Moneta; at the zoo's initial state it is 0.28 for $W_2$ and 1.16 for $W_1$, so $W_2$
        moves 3.5 times farther per step), and its error stays above the token form's at every
        chunk size. Memora's chunks of 1 are all
        lag tokens, exact in both forms; from $b = 2$ on its chunk-start form reads the
        weights $W_1 - \eta\nabla\ell$ in place of a softmax. At the chunk sizes used for
        training both forms are far from the recurrence at these gates, each a model in its
        own right; `miras train --link-at chunk` trains the chunk-start form.

        ## Wall-clock: chunked vs recurrent (NumPy reference timings)

        The point of the chunked form is parallel hardware: a chunk becomes a few large matrix
        products. The timings below are of **this NumPy float64 reference on a CPU** (one
        batch, 2 heads, $d = 16$, best of 3). They show the algorithmic trade-off, not GPU
        speed: the masked sum costs $O(b^2)$ per chunk instead of $O(b)$, and NumPy only pays
        off where it replaces many small per-token operations (the MLP memory).
        """),
        code(r"""
        def best_of(fn, repeats=3):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)


        lengths = [128, 256, 512]
        timings = {}
        for name in ("gated_deltanet", "moneta"):
            cfg = zoo.get(name, d)
            for label, chunk in (("recurrent (scan)", None), ("chunked, b = 16", 16), ("chunked, b = 64", 64)):
                timings[name, label] = []
                for L in lengths:
                    qq, kk = unit(rng.standard_normal((2, 1, L, 2, d)))
                    vv = rng.standard_normal((1, L, 2, d))
                    with np.errstate(all="ignore"):
                        seconds = best_of(lambda: scan_chunked(cfg, qq, kk, vv, chunk_size=chunk))
                    timings[name, label].append(seconds)
                print(f"{name:15s} {label:17s}", "  ".join(f"T={L}: {t * 1e3:6.1f} ms" for L, t in zip(lengths, timings[name, label])))

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
        for ax, name in zip(axes, ("gated_deltanet", "moneta")):
            for label in ("recurrent (scan)", "chunked, b = 16", "chunked, b = 64"):
                ax.plot(lengths, np.array(timings[name, label]) * 1e3, "o-", ms=4, label=label)
            ax.set(xscale="log", yscale="log", xlabel="sequence length T", title=f"{name} (NumPy reference, CPU)")
            ax.set_xticks(lengths, [str(L) for L in lengths])
            ax.minorticks_off()
        axes[0].set_ylabel("wall-clock time (ms)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        Both forms scale linearly in $T$. In NumPy the chunked form is a small constant factor
        faster at a moderate chunk size, because it replaces many small per-token operations
        by a few larger ones; with large chunks the $O(b^2)$ masked sum eats that gain.
        (Timings vary from machine to machine and run to run.) On a GPU the same chunked form turns the sequential loop into
        `T / b` steps of dense matrix products, which is what makes the models trainable at
        scale; `miras_gpu` implements that and is checked against this reference.
        """),
    ]


# ==============================================================================================
# 08 - backends, conformance, training
# ==============================================================================================
def nb08() -> list[tuple[str, str]]:
    return [
        md(r"""
        # 8. Switching backends, reading a conformance report, training a small model

        Notebooks 1-7 ran `miras_ref`, the NumPy reference: every equation of the paper in
        float64, written to be read and checked rather than to be fast. `miras_gpu` runs the
        **same two operations** on other backends, with the same arguments, shapes and
        returns:

        * `scan`, the exact recurrence: one step of the memory's learning rule per token, in
          its simplest form the online gradient step
          $W_t = \alpha_t W_{t-1} - \eta_t\nabla\ell(W_{t-1}; \mathbf k_t, \mathbf v_t)$
          (Eq 5 with a retention gate), read out as $\mathbf y_t = \mathcal M(W_t, \mathbf q_t)$;
        * `scan_chunked`, the chunk-parallel training form of Eq 28-32 (notebook 7).

        On top of them it has PyTorch modules (`miras_gpu.nn`: `MirasLayer`, `MirasLM`) and a
        training command, `miras`. This notebook

        1. lists the backends, runs one model on two of them and shows how a call picks its
           backend;
        2. runs a slice of the **conformance suite**, the check of every backend against the
           reference, and reads its report and the committed report of a GPU run;
        3. trains a tiny MIRAS language model with `miras train` on a synthetic recall task
           and plots what it wrote.

        It runs on a CPU in under a minute. It imports `torch`; the `torch` backend runs on the
        CPU too. See also the Backends and Training pages of the documentation.
        """),
        setup("""
        import json
        import os
        import re
        import shlex
        import subprocess
        import sys
        import tempfile
        import time
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np
        import torch
        from IPython.display import Image, display

        import miras_gpu
        from miras_gpu import conformance
        from miras_gpu.backends import resolve
        from miras_gpu.nn import load_pretrained
        from miras_gpu.train import make_task, read_log
        from miras_ref import zoo

        torch.set_num_threads(1)   # the tensors here are tiny: one thread is the fastest
        """),
        md(r"""
        ## Backends: registered and available

        Four backends are registered: `numpy` (`miras_ref` itself), `torch` (every op, with
        autograd, on CPU and CUDA), `triton` (fused chunk kernels, CUDA only) and `cupy`
        (planned). `available_backends()` lists those that can run here; `get_backend(name)`
        loads one (lazily: importing `miras_gpu` imports neither torch, triton nor cupy) or
        raises `BackendUnavailableError` with what is missing.
        """),
        code(r"""
        print("registered:    ", ", ".join(miras_gpu.BACKENDS))
        print("available here:", ", ".join(miras_gpu.available_backends()))
        print()
        for name in miras_gpu.BACKENDS:
            try:
                backend = miras_gpu.get_backend(name)
            except miras_gpu.BackendUnavailableError as err:
                print(f"{name:7s} unavailable: {err}")
            else:
                print(f"{name:7s} loaded: computes on {backend.array_kind} arrays "
                      f"(scan from {backend.scan.__module__})")
        """),
        md(r"""
        ## One model, two backends, the same numbers

        Two models: **Gated DeltaNet** from Table 1 (a matrix memory, $\ell_2$ bias, $\ell_2$
        retention: $S_t = \alpha_t S_{t-1}(I - \beta_t\mathbf k_t\mathbf k_t^\top) + \beta_t\mathbf v_t\mathbf k_t^\top$)
        and **Yaad** (Eq 26: a 2-layer MLP memory, Huber bias, $\ell_2$ retention), both at
        their zoo default gates, on one random sequence. The `numpy` backend is the reference;
        the `torch` backend gets the same inputs as float64 tensors, so the two should agree up
        to float64 rounding, both in the recurrence and in the chunked form (chunk 16).
        """),
        code(r"""
        d, T, H = 16, 64, 2
        q, k = unit(rng.standard_normal((2, 1, T, H, d)))   # [B, T, H, D], unit-norm as in the MIRAS layer
        v = rng.standard_normal((1, T, H, d))


        def max_abs(a, b):
            '''max |a - b| over every entry, in float64 (a, b: NumPy arrays or torch tensors).'''
            a, b = (x.detach().double().numpy() if torch.is_tensor(x) else np.asarray(x, float) for x in (a, b))
            return float(np.max(np.abs(a - b)))


        for name in ("gated_deltanet", "yaad"):
            cfg = zoo.get(name, d)
            for op, options in (("scan", {}), ("scan_chunked", {"chunk_size": 16})):
                run = getattr(miras_gpu, op)
                y_ref, s_ref = run(cfg, q, k, v, output_final_state=True, backend="numpy", **options)
                y_t, s_t = run(cfg, *(torch.from_numpy(x) for x in (q, k, v)), output_final_state=True,
                               backend="torch", **options)
                print(f"{name:15s} {op:12s} max |torch - numpy|  output: {max_abs(y_t, y_ref):.1e}   "
                      f"final state: {max(max_abs(s_t[n], s_ref[n]) for n in s_ref):.1e}   "
                      f"(output scale {np.abs(y_ref).max():.1f})")
        """),
        md(r"""
        Both agree to float64 rounding, the matrix memory to about $10^{-16}$. The MLP memory's
        recurrence is less forgiving: each step feeds the memory's own output back into its
        gradient, so a rounding difference at one token is amplified at the next ones. The
        plot shows the error per token $t$, $\max|\mathbf y_t^{\text{torch}} - \mathbf y_t^{\text{numpy}}|$,
        of the recurrence in float64 and in float32, and for Yaad also at a learning rate
        $\eta/10$: a memory that moves less per token amplifies less. (The conformance suite
        below scales Yaad's $\eta$ by 0.1 for exactly this reason, so that float32 can be
        compared with float64 at all.)
        """),
        code(r"""
        def per_token_error(cfg, dtype, gates=None):
            '''max over batch, heads and channels of |torch - numpy| at each token (recurrent scan).'''
            y_ref, _ = miras_gpu.scan(cfg, q, k, v, gates, backend="numpy")
            qt, kt, vt = (torch.tensor(x, dtype=dtype) for x in (q, k, v))
            g = None if gates is None else {n: torch.tensor(a, dtype=dtype) for n, a in gates.items()}
            y, _ = miras_gpu.scan(cfg, qt, kt, vt, g)          # torch inputs: the torch backend
            return np.abs(y.double().numpy() - y_ref).max(axis=(0, 2, 3))


        slow = zoo.get("yaad", d).default_gates(1, T, H)
        slow["eta"] = slow["eta"] / 10
        runs = {"Gated DeltaNet": (zoo.get("gated_deltanet", d), None),
                "Yaad": (zoo.get("yaad", d), None),
                "Yaad, η/10": (zoo.get("yaad", d), slow)}
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
        for ax, dtype in zip(axes, (torch.float64, torch.float32)):
            for label, (cfg, gates) in runs.items():
                ax.plot(np.maximum(per_token_error(cfg, dtype, gates), 1e-17), label=label)
            ax.set(yscale="log", xlabel="token t", title=f"torch {str(dtype)[6:]} against numpy float64")
        axes[0].set_ylabel("max |y_t(torch) - y_t(numpy)|")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        ## Which backend runs a call

        `miras_gpu.scan` and `miras_gpu.scan_chunked` pick the backend of each call; the first
        rule that applies wins:

        1. the call's own argument, `backend="torch"`;
        2. the innermost `with miras_gpu.use_backend("torch"):` block (local to the thread or
           async task);
        3. the environment variable `MIRAS_BACKEND=torch`;
        4. the type of the inputs: torch tensors go to `torch`, NumPy arrays to `numpy`.

        `miras_gpu.backends.resolve(backend, input_kind)` is that rule on its own; below it is
        asked for each layer of settings in turn (the environment is restored afterwards).
        """),
        code(r"""
        saved = os.environ.pop("MIRAS_BACKEND", None)          # start from an unset variable
        try:
            print("NumPy inputs                       ->", resolve(None, "numpy").name)
            print("torch inputs                       ->", resolve(None, "torch").name)
            os.environ["MIRAS_BACKEND"] = "torch"
            print("MIRAS_BACKEND=torch, NumPy inputs  ->", resolve(None, "numpy").name)
            with miras_gpu.use_backend("numpy"):
                print("  + inside use_backend('numpy')    ->", resolve(None, "numpy").name)
                print("  + and backend='torch' in the call ->", resolve("torch", "numpy").name)
        finally:
            os.environ.pop("MIRAS_BACKEND", None)
            if saved is not None:
                os.environ["MIRAS_BACKEND"] = saved
        """),
        md(r"""
        A torch-based backend given NumPy inputs converts them to tensors and returns NumPy
        arrays, so existing NumPy code can switch backends without other changes. The reverse is
        refused: the `numpy` backend would silently drop a tensor's autograd graph and device.
        """),
        code(r"""
        cfg = zoo.get("gated_deltanet", d)
        y_ref, _ = miras_gpu.scan(cfg, q, k, v)                      # NumPy inputs: numpy backend
        with miras_gpu.use_backend("torch"):
            y, _ = miras_gpu.scan(cfg, q, k, v)                      # the same call, run by torch
        print(f"inside use_backend('torch'): a {type(y).__module__}.{type(y).__name__} back, "
              f"max |difference| = {max_abs(y, y_ref):.1e}")

        try:
            miras_gpu.scan(cfg, *(torch.from_numpy(x) for x in (q, k, v)), backend="numpy")
        except TypeError as err:
            print("TypeError:", err)
        try:
            with miras_gpu.use_backend("cupy"):
                pass
        except miras_gpu.BackendUnavailableError as err:
            print("BackendUnavailableError:", err)
        """),
        md(r"""
        ## The conformance suite: a slice of it, run here

        `miras_gpu.conformance` holds one list of cases, every combination of

        * an op: `scan`, `scan_chunked` with chunk 1 and with chunk 16;
        * a model: every `miras_ref.zoo` configuration the op supports, plus extra ones
          (`x_...`) for the biases and gates no zoo model uses;
        * a backend: the available ones among `torch`, `triton`, `cupy`;
        * a dtype: float64, float32, and bfloat16 on CUDA;
        * a size $[B, T, H, D]$: $[2, 63, 2, 24]$ and $[1, 1, 3, 16]$ (odd on purpose).

        Each case draws fresh random inputs from its own seed (never zeros), rounds them to the
        dtype, and compares the backend's output and final state with `miras_ref` in float64 on
        the same rounded inputs, by the normalised max error
        $\max|\mathbf y - \mathbf y^{\text{ref}}| / \max|\mathbf y^{\text{ref}}|$ (float64,
        float32) or the relative RMS error
        $\mathrm{rms}(\mathbf y - \mathbf y^{\text{ref}}) / \mathrm{rms}(\mathbf y^{\text{ref}})$
        (bfloat16). In float32 and bfloat16 it also compares the gradient of a random linear
        function of the outputs with respect to **every input** ($\mathbf q$, $\mathbf k$,
        $\mathbf v$, each gate, each initial-state entry) with torch float64 autograd of the
        same op, which itself passes `torch.autograd.gradcheck`.

        The whole suite is `pytest tests/test_conformance.py`, or, with a report,
        `python -m miras_gpu.conformance --device cpu --report conformance.md` (`-k TEXT`
        keeps the cases whose id contains `TEXT`). Here: the 24 CPU cases of Gated DeltaNet
        and Yaad and one gradcheck, through the module's own functions, with the report written
        to a temporary directory.
        """),
        code(r"""
        tmp = tempfile.TemporaryDirectory(prefix="miras-tutorial-08-")
        work = Path(tmp.name)                              # everything this notebook writes goes here

        picked = [case for case in conformance.cases("cpu", backends=["torch"])
                  if case.model in ("gated_deltanet", "yaad")]
        t0 = time.perf_counter()
        results = [conformance.run_case(case) for case in picked]
        gradchecks = [conformance.run_gradcheck("scan_chunked", 2, "gated_deltanet")]
        seconds = time.perf_counter() - t0
        conformance.write_report(str(work / "conformance_cpu.md"), "cpu", results, gradchecks,
                                 base_seed=0, seconds=seconds)
        n_failed = sum(not r.passed for r in results + gradchecks)
        print(f"{len(results)} cases + {len(gradchecks)} gradcheck in {seconds:.1f} s, {n_failed} failed\n")
        print((work / "conformance_cpu.md").read_text())
        """),
        md(r"""
        ## Reading a conformance report

        The report has five parts:

        * **the header table**: the device, the torch / NumPy / Python versions, the base seed
          of the random inputs, the wall time, the number of cases and the overall result
          (`all passed`, or `N FAILED`);
        * **Bounds**: the bound per dtype. float64 and float32 use the `max` error, bfloat16
          the `rms` error; for the MLP memory (Moneta, Yaad, Memora, TTT-MLP, ...) the float32
          bounds are 3× (forward) and 50× (gradients) wider, because its recurrence amplifies
          round-off as the plot above shows;
        * **Totals**: per dtype, the number of cases, how many passed, and the worst output,
          final-state and gradient errors over all of them;
        * **Gradcheck**: `torch.autograd.gradcheck` of the float64 torch op on tiny sizes;
        * **Cases**: one row per case. The id reads `op[chunk]-model-backend-dtype-size`, e.g.
          `scan_chunked[c16]-yaad-torch-float32-B2T63H2D24`. Then the output error, the worst
          final-state entry and the worst input gradient (each with the name of the entry,
          e.g. `gates['eta']`), pass or **FAIL**, and the seconds the case took. `-` means not
          compared: float64 cases have no gradient comparison (their reference *is* torch
          float64 autograd, checked by gradcheck).

        A case passes when **every** error is at most its bound. A NaN or infinite error, a
        shape mismatch or an exception is an infinite error: it never passes. The same errors
        as objects: each `Result` has `errors[name] = (error, bound)`, `passed` and
        `describe()`. The case closest to its bound, and a result with a NaN:
        """),
        code(r"""
        def headroom(result):
            '''The largest error / bound ratio of a case: <= 1 passes.'''
            return max(err / bound for err, bound in result.errors.values())


        closest = max(results, key=headroom)
        print(closest.describe())
        print(f"  -> largest error / bound = {headroom(closest):.2f}\n")

        broken = conformance.Result("example-with-a-nan", {"y": (float("nan"), 1e-5)})
        print(broken.describe(), f"\n  -> passed = {broken.passed}")
        """),
        md(r"""
        ## The committed GPU report

        The repository holds the report of a full run on an NVIDIA H200
        (`reports/conformance_h200.md`, written by
        `python -m miras_gpu.conformance --device cuda --report ...`). It can be read the same
        way; below, its summary, then every case's error divided by its bound, beside the CPU
        slice run above. Points below the line at 1 pass; the distance to the line is the
        margin. (The path is relative to `tutorials/`, where this notebook runs.)
        """),
        code(r"""
        committed = Path("..") / "reports" / "conformance_h200.md"


        def parse_case_id(case_id):
            '''The Case of an id such as "scan_chunked[c16]-yaad-torch-float32-B2T63H2D24".'''
            op, model, backend, dtype, size = case_id.split("-")
            op, _, chunk = op.partition("[c")
            return conformance.Case(op, int(chunk.rstrip("]")) if chunk else None, model, backend,
                                    dtype, tuple(int(n) for n in re.findall(r"\d+", size)))


        def parse_cases(text):
            '''(case, forward error, gradient error) for each row of a report's "Cases" table.'''
            rows, in_cases = [], False
            for line in text.splitlines():
                if line.startswith("## "):
                    in_cases = line == "## Cases"
                elif in_cases and line.startswith("| ") and not line.startswith(("| case", "| ---")):
                    cells = [c.strip() for c in line.strip("| ").split(" | ")]
                    err = [np.nan if c == "-" else float(c.split()[0]) for c in cells[1:4]]
                    rows.append((parse_case_id(cells[0]), np.nanmax(err[:2]), err[2]))
            return rows


        def ratios(rows):
            '''{dtype: ([forward error / bound], [gradient error / bound])}'''
            out = {}
            for case, forward, grad in rows:
                config = conformance.make_config(case.model, case.size[3])
                fwd, grd = out.setdefault(case.dtype, ([], []))
                fwd.append(forward / conformance.bounds(case, config, "forward")[1])
                if not np.isnan(grad):
                    grd.append(grad / conformance.bounds(case, config, "grad")[1])
            return out


        here = [(case, np.nanmax([r.worst("y")[0], r.worst("final_state")[0]]), r.worst("grad")[0])
                for case, r in zip(picked, results)]
        series = {"CPU slice (this notebook)": ratios(here)}
        if committed.is_file():
            text = committed.read_text()
            print(text.split("## Gradcheck")[0].strip())
            series["H200 report (committed)"] = ratios(parse_cases(text))
        else:
            print(f"{committed} not found: run this notebook from tutorials/ in a checkout of the repository")

        dtypes = ["float64", "float32", "bfloat16"]
        floor = 1e-9                                    # exact zeros are drawn on this line
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
        for (label, data), marker, offset in zip(series.items(), ("x", "o"), (-0.15, 0.15)):
            for i, dtype in enumerate(dtypes):
                for ax, values in zip(axes, data.get(dtype, ([], []))):
                    jitter = np.random.default_rng(i).uniform(-0.08, 0.08, len(values))
                    ax.scatter(i + offset + jitter, np.maximum(values, floor), s=10, marker=marker,
                               alpha=0.6, color=f"C{list(series).index(label)}",
                               label=label if i == 1 else None)
        for ax, title in zip(axes, ("output and final state", "input gradients (float64: none)")):
            ax.axhline(1.0, color="crimson", lw=1)
            ax.text(-0.4, 1.4, "bound", color="crimson", fontsize=8)
            ax.axhline(floor, color="gray", lw=0.8)
            ax.text(-0.4, floor * 1.6, "error exactly 0", color="gray", fontsize=7)
            ax.set(yscale="log", title=title, xlim=(-0.5, 2.5))
            ax.set_xticks(range(3), dtypes)
        axes[0].set_ylabel("error / bound  (pass: <= 1)")
        axes[0].legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        float64 cases sit more than three decades below their bound ($10^{-10}$): only
        rounding separates the backends. float32 and bfloat16 are closer: the worst float32
        cases (MLP memories, where round-off is amplified) come within a factor of about 1.3
        of the bound, which is what the bounds were set from, and bfloat16 within a factor of
        2 to 5. A backend change that loses precision, reads a gate in the wrong place or
        breaks a gradient shows up here as a point above the line, with its case id in the
        table.

        ## Training a tiny model with the miras command

        The task is **multi-query associative recall** (MQAR): a sequence starts with $N$
        key-value pairs, then each key is asked once at a random later position, and the model
        must answer with its value. Keys are tokens in $[1, V/2)$, values in $[V/2, V)$, `0` is
        filler; the loss and accuracy are taken only at the queried keys. Guessing among the
        $V/2$ values gives accuracy $2/V$ and loss $\ln(V/2)$. Here $V = 16$ and $N = 2$ in
        sequences of 32 tokens (chance: loss $\ln 8 \approx 2.08$, accuracy $1/8$). One example
        of the training split (a `.` marks a position without a target):
        """),
        code(r"""
        task = make_task("mqar", 32, num_pairs=2, vocab_size=16)
        x, y = task.example(3)
        print(task.describe())
        print("inputs :", " ".join(f"{t:2d}" for t in x))
        print("targets:", " ".join(" ." if t < 0 else f"{t:2d}" for t in y))
        """),
        md(r"""
        `miras train` builds a `MirasLM` (Llama-style blocks whose token mixer is the MIRAS
        layer of Sec 5.4, with the memory of a `miras_ref.zoo` model) or a Transformer, trains
        it with AdamW, warmup and cosine decay, and writes everything into `--out`. Two tiny
        models (2 blocks, width 64, 4 heads) for 120 steps of 16 sequences: Gated DeltaNet's
        memory in the MIRAS layer, trained with the chunked form (Eq 28-32, chunk 16), and a
        Transformer. `miras` is the console script of the package; `python -m miras_gpu.cli`
        is the same program, used here so that the notebook's own Python runs it. Add
        `--device cuda` for a GPU, `--size 170M` (or 340M, 780M) for the paper's sizes (Table
        5), `--resume` to continue a run; `torchrun ... -m miras_gpu.cli train` spreads it
        over GPUs.
        """),
        code(r"""
        def miras(*args):
            '''Run `miras ARGS` in the work directory and print what it prints.'''
            print("$ miras", shlex.join(args))
            done = subprocess.run([sys.executable, "-m", "miras_gpu.cli", *args], cwd=work,
                                  capture_output=True, text=True)
            print(done.stdout + done.stderr)
            done.check_returncode()


        setting = ["--task", "mqar", "--context", "32", "--num-pairs", "2", "--vocab-size", "16",
                   "--steps", "120", "--batch", "16", "--lr", "1e-2", "--warmup", "10", "--seed", "0",
                   "--device", "cpu", "--no-progress"]
        miras("train", "--model", "gated_deltanet", "--chunk-size", "16", "--out", "gated_deltanet", *setting)
        miras("train", "--model", "transformer", "--out", "transformer", *setting)
        """),
        md(r"""
        `miras eval RUN --contexts ...` reloads a run's model and measures loss, perplexity
        and recall accuracy at several context lengths (here up to four times the training
        length, with the same 2 pairs further apart), and writes `eval.json`; `miras plot`
        draws the loss curves and those accuracies into a PNG.
        """),
        code(r"""
        for run in ("gated_deltanet", "transformer"):
            miras("eval", run, "--contexts", "32,64,128", "--device", "cpu")
        miras("plot", "gated_deltanet", "transformer", "--out", "mqar.png",
              "--title", "MQAR: 2 pairs, 8 values, 120 steps")
        display(Image(filename=str(work / "mqar.png"), width=760))
        """),
        md(r"""
        Gated DeltaNet recalls more than 90% of the values after 120 steps, and keeps doing so
        at four times the training length: its memory is a fixed-size state with no length
        limit. The Transformer is well above chance ($1/8$) but, at this budget, not much
        better than picking one of the two values present in the sequence ($1/2$). This is a
        tiny run, not a ranking of architectures (the Training page shows a larger
        comparison).

        ## The training log and the trained model

        A run directory holds `train_config.json`, `log.jsonl` (one JSON record per step),
        `summary.json`, `checkpoint.pt` (for `--resume`) and `model/` (the weights in
        `save_pretrained` format). `miras_gpu.train.read_log` reads the log; the loss below is
        the cross-entropy at the queried keys, with the learning-rate schedule and the gradient
        norm (before clipping at 1) beside it.
        """),
        code(r"""
        run = work / "gated_deltanet"
        print("files:", ", ".join(sorted(p.name for p in run.iterdir())))
        summary = json.loads((run / "summary.json").read_text())
        print({key: summary[key] for key in ("model", "params", "steps", "final_loss")})
        log = [r for r in read_log(run) if "loss" in r]
        print("first record:", log[0])

        baseline = [r for r in read_log(work / "transformer") if "loss" in r]
        fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
        for name, records in (("gated_deltanet", log), ("transformer", baseline)):
            axes[0].plot([r["step"] for r in records], [r["loss"] for r in records], lw=1, label=name)
        axes[0].axhline(np.log(8), color="gray", ls="--", lw=1, label="chance, ln 8")
        axes[0].set(xlabel="step", ylabel="training loss", title="loss at the queried keys")
        axes[0].legend(fontsize=7)
        step = [r["step"] for r in log]
        axes[1].plot(step, [r["lr"] for r in log])
        axes[1].set(xlabel="step", title="learning rate: warmup + cosine")
        axes[2].plot(step, [r["grad_norm"] for r in log])
        axes[2].set(xlabel="step", yscale="log", title="gradient norm (Gated DeltaNet)")
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        The saved model loads back with `miras_gpu.nn.load_pretrained` as an ordinary
        `torch.nn.Module`. Its answers on a held-out example twice as long as the training
        sequences, at the queried keys (the prediction is the most likely next token):
        """),
        code(r"""
        model = load_pretrained(run / "model").eval()
        x, y = make_task("mqar", 64, num_pairs=2, vocab_size=16).example(0, split="eval")
        with torch.no_grad():
            predicted = model(torch.from_numpy(x)[None]).argmax(-1)[0].numpy()
        print(type(model).__name__, f"({sum(p.numel() for p in model.parameters()):,} parameters)")
        print("inputs:", " ".join(str(t) for t in x))
        for t in np.flatnonzero(y >= 0):
            print(f"  position {t:2d}: key {x[t]:2d} -> value {y[t]:2d}, predicted {predicted[t]:2d}")
        """),
        md(r"""
        The same model on a GPU: `miras train --device cuda ...`, where the MIRAS layer calls
        `miras_gpu.scan_chunked` on CUDA tensors, i.e. the `torch` backend by rule 4, or
        another backend through `MIRAS_BACKEND` or the model's `backend` setting. Whatever runs
        it, the conformance suite is what ties its numbers to the equations of the reference.

        The temporary directory is removed here (skip this cell to look at the files):
        """),
        code(r"""
        tmp.cleanup()
        """),
    ]


#: notebook file name -> cell specification
NOTEBOOKS = {
    "01_associative_memory.ipynb": nb01,
    "02_two_viewpoints.ipynb": nb02,
    "03_attentional_biases.ipynb": nb03,
    "04_retention_gates.ipynb": nb04,
    "05_table1_zoo.ipynb": nb05,
    "06_moneta_yaad_memora.ipynb": nb06,
    "07_chunked_training.ipynb": nb07,
    "08_backends_conformance_training.ipynb": nb08,
}


def build(name: str):
    """The notebook ``name`` as an ``nbformat`` node, without outputs."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(NOTEBOOKS[name]()):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
        cell["id"] = f"cell-{i:02d}"   # stable ids keep regenerated notebooks diff-friendly
        nb.cells.append(cell)
    return nb


def execute(nb, timeout: int = 600) -> float:
    """Run ``nb`` in place in a fresh kernel with ``tutorials/`` as working directory."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNELSPEC["name"],
                            resources={"metadata": {"path": str(HERE)}})
    t0 = time.perf_counter()
    client.execute()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="build only notebooks whose name starts with these")
    parser.add_argument("--no-execute", action="store_true", help="write cells without running them")
    args = parser.parse_args(argv)
    import nbformat

    names = [n for n in NOTEBOOKS if not args.only or any(n.startswith(p) for p in args.only)]
    if not names:
        parser.error(f"no notebook matches {args.only}; choose from {', '.join(NOTEBOOKS)}")
    for name in names:
        nb = build(name)
        seconds = None if args.no_execute else execute(nb)
        nbformat.write(nb, HERE / name)
        print(f"{name:32s} " + ("written" if seconds is None else f"executed in {seconds:5.1f} s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
