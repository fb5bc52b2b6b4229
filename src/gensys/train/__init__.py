"""gensys.train: the one trainer (AMP, activation checkpointing, resume), losses and `parallelize`.

A system's train command does:

    env = init_distributed(cfg.parallel)                  # no-op for a single process; torchrun sets the rest
    seed_everything(cfg.seed); model = build_model(...)
    data = ResumableLoader(train_set, cfg.micro_batch_size, collate, seed=cfg.seed,
                           rank=env.dp_rank, world_size=env.dp_size)
    Trainer(model, cfg, train_data=data, loss_fn=..., eval_fn=lm_eval_fn(val_set, ...)).fit()

tests/train/train_example_text_lm.py is a complete, runnable example on a text file (also under torchrun).
"""

from gensys.train.config import ParallelConfig, TrainConfig
from gensys.train.loader import ResumableIterator, ResumableLoader, eval_batches
from gensys.train.losses import (
    IGNORE_INDEX,
    batch_target_tokens,
    count_target_tokens,
    lm_loss,
    token_cross_entropy,
)
from gensys.train.optim import build_optimizer, param_groups
from gensys.train.parallel import (
    DistEnv,
    apply_fsdp,
    apply_tp,
    clip_grad_norm,
    destroy_distributed,
    dist_env,
    init_distributed,
    is_main_process,
    parallelize,
    unwrap,
)
from gensys.train.recompute import apply_activation_checkpointing
from gensys.train.schedules import build_scheduler, lr_multiplier
from gensys.train.trainer import Trainer, evaluate_loss, lm_eval_fn, move_to, seed_everything

__all__ = [
    "IGNORE_INDEX",
    "DistEnv",
    "ParallelConfig",
    "ResumableIterator",
    "ResumableLoader",
    "TrainConfig",
    "Trainer",
    "apply_activation_checkpointing",
    "apply_fsdp",
    "apply_tp",
    "batch_target_tokens",
    "build_optimizer",
    "build_scheduler",
    "clip_grad_norm",
    "count_target_tokens",
    "destroy_distributed",
    "dist_env",
    "eval_batches",
    "evaluate_loss",
    "init_distributed",
    "is_main_process",
    "lm_eval_fn",
    "lm_loss",
    "lr_multiplier",
    "move_to",
    "param_groups",
    "parallelize",
    "seed_everything",
    "token_cross_entropy",
    "unwrap",
]
