"""Learning-rate schedules as multipliers of the base lr: linear warmup, then cosine decay or constant."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["lr_multiplier", "build_scheduler"]


def lr_multiplier(
    step: int, *, warmup_steps: int, max_steps: int, schedule: str = "cosine", min_lr_ratio: float = 0.1
) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based: the first update uses step 0).

    Warmup ramps linearly to 1 over `warmup_steps` updates (step 0 already gets 1/warmup, never lr=0, which
    would waste an update). Cosine then falls from 1 to `min_lr_ratio` at `max_steps` and stays there.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r} (cosine or constant)")
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: Optimizer,
    *,
    warmup_steps: int,
    max_steps: int,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.1,
) -> LambdaLR:
    """A LambdaLR over `lr_multiplier`; its state_dict (last_epoch) is all that resume needs."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r} (cosine or constant)")

    def fn(step: int) -> float:
        return lr_multiplier(
            step, warmup_steps=warmup_steps, max_steps=max_steps, schedule=schedule, min_lr_ratio=min_lr_ratio
        )

    return LambdaLR(optimizer, fn)
