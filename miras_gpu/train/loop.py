"""The training loop: AdamW, linear warmup + cosine decay, gradient clipping, bf16 autocast on
CUDA, periodic evaluation, a JSONL log, checkpoints and exact resumption, DDP / FSDP.

One run writes into ``out``:

==========================  ================================================================
``train_config.json``       the :class:`TrainConfig` of the run
``log.jsonl``               one JSON record per logged step (``loss``, ``lr``, ``tokens``,
                            ``tok_per_s``, ``grad_norm``) and per evaluation (``eval``)
``checkpoint.pt``           model, optimizer, scheduler, RNG states and the data position
                            (the step: the data of step ``s`` is a function of ``s``)
``model/``                  the model in :func:`miras_gpu.nn.save_pretrained` format
``summary.json``            final loss, last evaluation, parameters, throughput
==========================  ================================================================

``resume=True`` restarts from ``checkpoint.pt``: the model, the optimizer's moments, the
schedule and the RNG states come back, the log is cut to the checkpoint's step, and the steps
after it see the same data as an uninterrupted run, so the loss curve continues exactly.

Multi-GPU: run under ``torchrun --nproc_per_node N -m miras_gpu.cli train ...``. Each rank
reads its own slice ``[rank · b, (rank + 1) · b)`` of every global batch (``b = batch / N``),
so ranks never overlap and together read the single-process batch. The loss is the sum over
answer tokens divided by the global number of answer tokens, so DDP's gradient averaging gives
exactly the single-process gradient of the combined batch. ``fsdp=True`` shards every block
with ``torch.distributed.fsdp.fully_shard`` (FSDP2) instead of DDP.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from miras_ref import zoo

from ..nn import PRESETS, LMConfig, build_model, count_params, save_pretrained
from ..nn.layer import resolve_config
from ..torch._checks import NonFiniteError
from .tasks import IGNORE, make_task

__all__ = ["ConfigError", "TrainConfig", "TrainingDiverged", "evaluate", "model_config",
           "train"]

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
CONFIG = "train_config.json"


class ConfigError(ValueError):
    """A bad training configuration (the ``miras`` command prints it and exits with 2)."""


class TrainingDiverged(RuntimeError):
    """The loss (or an activation the memory op checks) became NaN or inf; the message names
    the step and the last checkpoint (the ``miras`` command prints it and exits with 1)."""


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``train_config.json``.

    ``model``: a :mod:`miras_ref.zoo` name for the MIRAS layer, or ``"transformer"``;
    ``size``: a :data:`miras_gpu.nn.PRESETS` key; ``d_model``/``n_layers``/``n_heads``
    override the preset; ``lr=None`` takes the preset's peak learning rate; ``chunk_size``
    ``"auto"``: 64 where the model has a chunked form, else the recurrence; ``link_at``:
    Moneta's and Memora's :attr:`miras_ref.config.MirasConfig.link_at`; ``batch`` is the
    global batch (split over ranks); ``dtype``: parameters' dtype (``float32``; ``float64``
    for exactness tests); ``precision``: ``"bf16"`` autocast (CUDA only) or ``"fp32"``.
    """

    model: str = "moneta"
    size: str = "tiny"
    task: str = "mqar"
    context: int = 64
    steps: int = 200
    batch: int = 32
    lr: float | None = None
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0
    eval_every: int = 0
    eval_batches: int = 4
    checkpoint_every: int = 0
    log_every: int = 1
    seed: int = 0
    out: str = "runs/run"
    device: str = "auto"
    fsdp: bool = False
    precision: str = "auto"
    dtype: str = "float32"
    hybrid: bool = False
    window: int = 512
    chunk_size: int | str | None = "auto"
    link_at: str = "token"
    rank: int = 32
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    vocab_size: int | None = None
    num_pairs: int | None = None
    progress: bool = True
    task_options: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ------------------------------------------------------------------------------------------
# configuration


def _positive(name, val):
    if isinstance(val, bool) or not isinstance(val, int) or val < 1:
        raise ConfigError(f"{name} must be a positive integer, got {val!r}")


def make_task_from(cfg: TrainConfig, context: int | None = None):
    opts = dict(cfg.task_options)
    if cfg.task == "mqar":
        opts.setdefault("num_pairs", cfg.num_pairs)
        opts.setdefault("vocab_size", cfg.vocab_size)
    try:
        return make_task(cfg.task, context or cfg.context, cfg.seed, **opts)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def model_config(cfg: TrainConfig, vocab_size: int) -> LMConfig:
    """The :class:`~miras_gpu.nn.LMConfig` of a run (``ConfigError`` if it cannot be built)."""
    if cfg.size not in PRESETS:
        raise ConfigError(f"unknown size {cfg.size!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[cfg.size]
    d = cfg.d_model or p["d_model"]
    L = cfg.n_layers or p["n_layers"]
    H = cfg.n_heads or p["n_heads"]
    for name, val in (("d_model", d), ("n_layers", L), ("n_heads", H)):
        _positive(name, val)
    if d % H:
        raise ConfigError(f"n_heads ({H}) must divide the model width d_model ({d})")
    D = d // H
    arch = "transformer" if cfg.model == "transformer" else "miras"
    try:
        if arch == "transformer":
            if D % 2:
                raise ConfigError(f"the head size d_model / n_heads = {D} must be even (RoPE)")
            return LMConfig(vocab_size, d, L, H, arch="transformer", model="softmax_attention",
                            window=None, rank=cfg.rank)
        mem = resolve_config(cfg.model, D)
        kwargs = {}
        if cfg.link_at != "token":
            # the zoo models whose constructor takes link_at (those whose retention has a link)
            takes = [n for n, make in zoo.ALL.items()
                     if "link_at" in inspect.signature(make).parameters]
            if mem.name not in takes:
                raise ConfigError(f"link_at={cfg.link_at!r} applies to {' and '.join(takes)}, "
                                  f"not {cfg.model!r}")
            kwargs = {"link_at": cfg.link_at}
            mem = resolve_config(cfg.model, D, **kwargs)
        chunk = cfg.chunk_size
        if chunk == "auto":
            from miras_gpu.torch.chunked import check_chunkable

            try:
                check_chunkable(mem)
                chunk = 64
            except ValueError:
                chunk = None
        if cfg.hybrid and D % 2:
            raise ConfigError(f"the head size d_model / n_heads = {D} must be even (RoPE)")
        lm = LMConfig(vocab_size, d, L, H, arch="miras", model=mem.name, hybrid=cfg.hybrid,
                      window=cfg.window, rank=cfg.rank, chunk_size=chunk, model_kwargs=kwargs)
        build_model(LMConfig(**{**lm.to_dict(), "vocab_size": 1, "n_layers": 1}))  # checks
        return lm
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def check_config(cfg: TrainConfig):
    """Validate a run's configuration; return ``(task, LMConfig)``."""
    _positive("context", cfg.context)
    _positive("steps", cfg.steps)
    _positive("batch", cfg.batch)
    if cfg.warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {cfg.warmup}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}")
    if cfg.clip is not None and cfg.clip < 0:
        raise ConfigError(f"clip must be >= 0 (0: no clipping), got {cfg.clip}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA device is available")
    if cfg.dtype not in ("float32", "float64", "bfloat16"):
        raise ConfigError(f"dtype must be float32, float64 or bfloat16, got {cfg.dtype!r}")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision must be auto, bf16 or fp32, got {cfg.precision!r}")
    task = make_task_from(cfg)
    return task, model_config(cfg, task.vocab_size)


# ------------------------------------------------------------------------------------------
# distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE > 1``), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
        here = True
    return Dist(rank, world, local, here)


def _all_sum(values: list[float], d: Dist, device) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ------------------------------------------------------------------------------------------
# schedule, loss, evaluation


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def token_loss_sum(logits, targets):
    """Sum of cross-entropy over the non-ignored targets, and their number."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


@torch.no_grad()
def evaluate(model, task, n_batches: int, batch: int, device, d: Dist | None = None,
             autocast=None) -> dict:
    """Loss, perplexity, token accuracy and exact match on ``n_batches`` evaluation batches.

    Every rank evaluates its own disjoint examples and the sums are all-reduced.
    ``accuracy`` is the task's headline metric: exact match of the whole answer for the
    needle tasks, per-token accuracy for MQAR and text.
    """
    d = d or Dist()
    was = model.training
    model.eval()
    local = max(1, batch // d.world)
    loss_sum = n_tok = correct = exact = n_ex = 0.0
    for i in range(n_batches):
        lo = (i * d.world + d.rank) * local
        idx = range(lo, lo + local)
        x, y = task.batch(idx, "eval", device)
        with autocast():
            logits = model(x)
        ls, n = token_loss_sum(logits, y)
        mask = y != IGNORE
        hit = (logits.argmax(-1) == y) & mask
        loss_sum += float(ls)
        n_tok += n
        correct += float(hit.sum())
        exact += float(((hit | ~mask).all(dim=1) & mask.any(dim=1)).sum())
        n_ex += float(mask.any(dim=1).sum())
    loss_sum, n_tok, correct, exact, n_ex = _all_sum([loss_sum, n_tok, correct, exact, n_ex], d,
                                                     device)
    model.train(was)
    loss = loss_sum / max(n_tok, 1)
    out = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "token_acc": correct / max(n_tok, 1),
           "exact": exact / max(n_ex, 1), "context": task.context, "examples": int(n_ex)}
    out["accuracy"] = out["exact"] if task.metric == "exact" else out["token_acc"]
    if task.metric == "ppl":
        out["bpc"] = loss / math.log(2)
    return out


# ------------------------------------------------------------------------------------------
# checkpoints


def _rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),  # noqa: NPY002
         "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])  # noqa: NPY002
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _full_state(model, optimizer, fsdp: bool):
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(model, optimizer, options=opts)
    inner = getattr(model, "module", model)
    return inner.state_dict(), optimizer.state_dict()


def _load_full_state(model, optimizer, msd, osd, fsdp: bool):
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd,
                       options=StateDictOptions(full_state_dict=True))
        return
    getattr(model, "module", model).load_state_dict(msd)
    optimizer.load_state_dict(osd)


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, cfg, d: Dist,
                    lm_cfg: LMConfig, base_model):
    msd, osd = _full_state(model, optimizer, cfg.fsdp)
    if d.main:
        ckpt = {"step": step, "model": msd, "optimizer": osd,
                "scheduler": scheduler.state_dict(), "rng": _rng_state(),
                "train_config": asdict(cfg), "model_config": lm_cfg.to_dict()}
        tmp = out / (CHECKPOINT + ".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, out / CHECKPOINT)
        if cfg.fsdp:
            clone = build_model(lm_cfg)
            clone.load_state_dict(msd)
            save_pretrained(clone, out / "model")
        else:
            save_pretrained(base_model, out / "model")
    if d.world > 1:
        dist.barrier()


# ------------------------------------------------------------------------------------------
# the loop


def _device(cfg: TrainConfig, d_local: int) -> torch.device:
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind.startswith("cuda"):
        if ":" in kind:
            return torch.device(kind)
        return torch.device("cuda", d_local)
    return torch.device("cpu")


def _log(out: Path, record: dict) -> None:
    with open(out / LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


def _cut_log(out: Path, step: int) -> None:
    """Keep only the records of steps ``<= step`` (the ones the checkpoint has seen)."""
    path = out / LOG
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def read_log(out) -> list[dict]:
    """The records of ``out/log.jsonl``."""
    path = Path(out) / LOG
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _diverged(step: int, what: str, out: Path) -> TrainingDiverged:
    ckpt = out / "checkpoint.pt"
    where = (f"the last checkpoint is {ckpt}" if ckpt.is_file()
             else "no checkpoint was written yet")
    return TrainingDiverged(f"training diverged at step {step}: {what}; {where}; try a lower "
                            "--lr, a gradient clip (--clip) or --precision fp32")


def train(cfg: TrainConfig, resume: bool = False, stop_at: int | None = None,
          steps: int | None = None) -> dict:
    """Run (or resume) training as :class:`TrainConfig` says; return the summary dict.

    ``resume``: continue the run in ``cfg.out`` from its checkpoint with its saved
    configuration (only ``cfg.out`` and ``cfg.progress`` are read from ``cfg``); ``steps``
    then extends the run to that many steps (which changes the cosine schedule).
    ``stop_at``: stop after this step (a checkpoint is written), as an interruption would.
    """
    out = Path(cfg.out)
    if resume:
        ck_path = out / CHECKPOINT
        if not ck_path.is_file():
            raise ConfigError(f"cannot resume: no checkpoint at {ck_path}")
        saved = torch.load(ck_path, map_location="cpu", weights_only=False)
        progress = cfg.progress
        cfg = TrainConfig.from_dict(saved["train_config"])
        cfg.progress = progress
        if steps:
            if steps < int(saved["step"]):
                raise ConfigError(f"cannot resume to step {steps}: the checkpoint is already "
                                  f"at step {saved['step']}")
            cfg.steps = steps
    task, lm_cfg = check_config(cfg)
    device_kind = "cuda" if _device(cfg, 0).type == "cuda" else "cpu"
    d = init_distributed(device_kind)
    device = _device(cfg, d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.batch % d.world:
        raise ConfigError(f"batch ({cfg.batch}) must be divisible by the number of processes "
                          f"({d.world})")
    local_batch = cfg.batch // d.world
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type != "cuda":
        raise ConfigError("precision 'bf16' (autocast) needs a CUDA device")

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16)

    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG).write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    torch.manual_seed(cfg.seed)
    dtype = getattr(torch, cfg.dtype)
    base = build_model(lm_cfg).to(device=device, dtype=dtype)
    n_params = count_params(base)
    model = base
    if d.world > 1 and not cfg.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(base, device_ids=[device.index] if device.type == "cuda" else None)
    elif cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in base.blocks:
            fully_shard(block)
        fully_shard(base)
    lr = cfg.lr if cfg.lr is not None else PRESETS[cfg.size]["lr"]
    decay = [p for n, p in base.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in base.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup, cfg.steps, cfg.min_lr_ratio))
    start = 0
    if resume:
        _load_full_state(model, optimizer, saved["model"], saved["optimizer"], cfg.fsdp)
        scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"])
        start = int(saved["step"])
        if d.main:
            _cut_log(out, start)
        del saved
    elif d.main and (out / LOG).exists():
        (out / LOG).unlink()
    if d.world > 1:
        dist.barrier()

    tokens_per_step = cfg.batch * cfg.context
    last = {"loss": float("nan")}
    eval_result = None
    bar = None
    if d.main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"{cfg.model}/{cfg.task}",
                   dynamic_ncols=True, leave=True)
    train_time = 0.0
    train_tokens = 0
    step = start
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    ckpt_every = cfg.checkpoint_every or cfg.eval_every
    try:
        for step in range(start + 1, end + 1):
            t0 = time.perf_counter()
            lo = (step - 1) * cfg.batch + d.rank * local_batch
            x, y = task.batch(range(lo, lo + local_batch), "train", device)
            try:
                with autocast():
                    logits = model(x)
            except NonFiniteError as err:
                raise _diverged(step, str(err), out) from err
            loss_sum, n_local = token_loss_sum(logits, y)
            n_global, total = _all_sum([float(n_local), float(loss_sum.detach())], d, device)
            step_loss = total / max(n_global, 1.0)
            if not math.isfinite(step_loss):  # stop before a non-finite update
                raise _diverged(step, f"the loss is {step_loss}", out)
            # Σ_local / (N_global / world): DDP's mean over ranks gives Σ_global / N_global
            loss = loss_sum * (d.world / max(n_global, 1.0))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = None
            if cfg.clip:
                gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip))
            optimizer.step()
            scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            train_time += dt
            train_tokens += tokens_per_step
            last = {"step": step, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                    "tokens": step * tokens_per_step, "tok_per_s": tokens_per_step / dt,
                    "grad_norm": gnorm, "time": train_time}
            if d.main and (step % cfg.log_every == 0 or step == end):
                _log(out, last)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{train_tokens / train_time:.0f}")
            if cfg.eval_every and step % cfg.eval_every == 0:
                eval_result = evaluate(model, task, cfg.eval_batches, cfg.batch, device, d,
                                       autocast)
                if d.main:
                    _log(out, {"step": step, "eval": eval_result})
                    if bar is not None:
                        bar.write(f"step {step}: eval loss {eval_result['loss']:.4f} "
                                  f"accuracy {eval_result['accuracy']:.3f}")
            if ckpt_every and step % ckpt_every == 0 and step != end:
                save_checkpoint(out, step, model, optimizer, scheduler, cfg, d, lm_cfg, base)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        done = step - 1 if last.get("step") != step else step
        save_checkpoint(out, done, model, optimizer, scheduler, cfg, d, lm_cfg, base)
        raise
    if bar is not None:
        bar.close()
    save_checkpoint(out, end, model, optimizer, scheduler, cfg, d, lm_cfg, base)
    summary = {"model": cfg.model, "size": cfg.size, "task": cfg.task, "context": cfg.context,
               "params": n_params, "steps": end, "final_loss": last["loss"],
               "tok_per_s": train_tokens / train_time if train_time else None,
               "train_time_s": train_time, "world_size": d.world, "device": str(device),
               "eval": eval_result}
    if d.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if d.initialized_here:
        dist.destroy_process_group()
    return summary


# ------------------------------------------------------------------------------------------
# evaluating a finished run


def evaluate_run(run_dir, contexts=None, task: str | None = None, n_batches: int = 4,
                 batch: int = 32, device: str = "auto", write: bool = True) -> list[dict]:
    """Evaluate the model saved in ``run_dir`` at each context length; write ``eval.json``.

    ``run_dir`` is a training output directory (its ``model/`` and ``train_config.json``).
    The task is the run's own unless ``task`` is given; ``contexts`` defaults to the run's.
    """
    from ..nn import load_pretrained

    run = Path(run_dir)
    cfg_path = run / CONFIG
    model_dir = run / "model"
    if not cfg_path.is_file() or not (model_dir / "config.json").is_file():
        raise ConfigError(f"{run} is not a finished training run (needs {cfg_path} and "
                          f"{model_dir}/config.json): train one with `miras train --out {run}`")
    cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
    if task is not None:
        cfg.task = task
    contexts = list(contexts or [cfg.context])
    for c in contexts:
        _positive("context", c)
    dev = _device(TrainConfig(device=device), 0)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA device is available")
    model = load_pretrained(model_dir, device=dev)
    if model.config.vocab_size < make_task_from(cfg, contexts[0]).vocab_size:
        raise ConfigError(f"task {cfg.task!r} needs a vocabulary of "
                          f"{make_task_from(cfg, contexts[0]).vocab_size} tokens; the model "
                          f"has {model.config.vocab_size}")
    use_bf16 = dev.type == "cuda" and cfg.precision != "fp32"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16)

    results = []
    for c in contexts:
        t = make_task_from(cfg, c)
        results.append(evaluate(model, t, n_batches, batch, dev, None, autocast))
        results[-1]["task"] = t.describe()
    if write:
        (run / "eval.json").write_text(json.dumps({"task": cfg.task, "results": results},
                                                  indent=2) + "\n")
    return results
