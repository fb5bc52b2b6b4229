"""Typed training configuration: one `TrainConfig` with a nested `ParallelConfig`.

Plain dataclasses with defaults, so `gensys.config.load_config` can read them from YAML and apply
`train.lr=1e-3 train.parallel.mode=fsdp` style overrides; an unknown key or a wrong type is an error there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ParallelMode = Literal["none", "ddp", "zero1", "fsdp", "tp", "pp", "fsdp_tp"]
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class ParallelConfig:
    """How the model is spread over processes (applied from outside the model by `parallelize`).

    Sizes of 0 are derived from the world size: `ddp`/`zero1`/`fsdp` use all ranks for data parallelism,
    `tp` all ranks for tensor parallelism, `pp` all ranks for pipeline stages, and `fsdp_tp` needs `tp_size`
    (default 2) with the remaining ranks sharding data.
    """

    mode: ParallelMode = "none"
    dp_size: int = 0
    tp_size: int = 0
    pp_size: int = 0
    pp_schedule: Literal["gpipe", "1f1b"] = "1f1b"
    n_microbatches: int = 2  # pipeline micro-batches per micro-batch handed to the trainer
    # FSDP2 MixedPrecisionPolicy: dtype of the gathered parameters for compute, and of the gradient reduction.
    fsdp_param_dtype: Precision = "fp32"
    fsdp_reduce_dtype: Precision = "fp32"
    fsdp_reshard_after_forward: bool = True
    sharded_checkpoint: bool = False  # also write a torch.distributed.checkpoint (DCP) sharded copy
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with CUDA, gloo on CPU
    timeout_s: int = 600


@dataclass
class TrainConfig:
    """Everything the trainer needs; the batch -> loss glue lives in each system's recipe."""

    # Optimiser (AdamW; weight decay only on matrices, not on norms/biases).
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    # Schedule: linear warmup then cosine decay to lr * min_lr_ratio at max_steps (or constant after warmup).
    warmup_steps: int = 100
    max_steps: int = 1000
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    # Batching: micro_batch_size is read by the recipe that builds the loader; the trainer accumulates
    # grad_accum_steps micro-batches per optimizer step.
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    label_smoothing: float = 0.0
    # Evaluation and early stopping (eval_every=0: only at the end; early_stop_patience=0: never stop early).
    eval_every: int = 0
    eval_steps: int = 0  # batches per evaluation, 0 = the whole validation set (read by the eval function)
    early_stop_patience: int = 0
    early_stop_metric: str = "val_loss"
    early_stop_mode: Literal["min", "max"] = "min"
    # Reproducibility and numerics.
    seed: int = 0
    precision: Precision = "fp32"  # bf16/fp16 autocast; fp16 adds a gradient scaler
    grad_checkpointing: bool = False  # recompute each transformer block in backward
    compile: bool = False  # torch.compile each block
    device: str = "auto"  # auto: cuda:<local_rank> if available, else cpu
    # Output.
    log_every: int = 10
    save_every: int = 0  # write last/ (with train_state for resume) every N steps; 0 = only at the end
    out_dir: str = "runs/train"
    resume: bool = True  # continue from out_dir/last/train_state when it exists
    progress: bool = True  # progress bar on rank 0
    plot: bool = True  # loss.png next to the checkpoints
    tensorboard: bool = False  # needs the `tensorboard` package
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.max_steps < 0 or self.warmup_steps < 0:
            raise ValueError("max_steps and warmup_steps must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
