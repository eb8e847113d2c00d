"""Training MIRAS models: tasks generated from a seed (MQAR, S-NIAH-style needles, character
LM on a shipped public-domain text), the training loop (AdamW, warmup + cosine, clipping,
bf16 autocast, checkpoints and exact resumption, DDP/FSDP) and plots.
"""

from .loop import (
    ConfigError,
    TrainConfig,
    TrainingDiverged,
    evaluate,
    evaluate_run,
    read_log,
    train,
)
from .tasks import IGNORE, TASKS, Task, make_task

__all__ = [
    "IGNORE",
    "TASKS",
    "ConfigError",
    "Task",
    "TrainConfig",
    "TrainingDiverged",
    "evaluate",
    "evaluate_run",
    "make_task",
    "read_log",
    "train",
]
