"""AdamW with weight decay on matrices only; ZeRO-1 shards its state over data-parallel ranks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import increment_version
from torch.optim import AdamW, Optimizer

from gensys.train.config import TrainConfig

__all__ = ["param_groups", "build_optimizer"]


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two groups: >= 2-D tensors (matmul weights, embeddings) decay; norms and biases (1-D) do not.

    Decaying a norm's gain or a bias pulls it toward 0, which only fights the optimiser (GPT-2/-3 practice).
    Parameters seen twice (tied embeddings) are listed once.
    """
    decay, no_decay, seen = [], [], set()
    for _, p in named_params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> Optimizer:
    """AdamW over `model`'s parameters; with `parallel.mode=zero1` a ZeroRedundancyOptimizer around it.

    ZeRO-1 keeps each rank's Adam moments for 1/world of the parameters only and broadcasts the updated
    parameters after each step; gradients are still all-reduced by DDP.
    """
    groups = param_groups(model.named_parameters(), cfg.weight_decay)
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.parallel.mode == "zero1":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        opt = ZeroRedundancyOptimizer(
            groups[0]["params"], optimizer_class=AdamW, weight_decay=cfg.weight_decay, **kwargs
        )
        for g in groups[1:]:
            opt.add_param_group(g)
        opt.register_step_post_hook(_bump_versions)  # the broadcast of updated parameters: see below
        return opt
    # The fused kernel updates all parameters in a few launches, on CUDA and on the CPU (7x faster than the
    # default per-parameter loop for a 7M-parameter model on 2 cores: 3.4 vs 23.8 ms a step, measured
    # 2026-11-27); it takes plain tensors of one device type, not DTensors (FSDP/TP keep the default).
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    fused = (
        bool(params)
        and len(devices) == 1
        and devices <= {"cpu", "cuda"}
        and all(type(p) is nn.Parameter and p.dtype in _FUSED_DTYPES for p in params)
    )
    opt = AdamW(groups, fused=fused or None, **kwargs)
    if fused:
        # The fused kernel writes the parameters without bumping their version counters, and a version is
        # how `gensys.nn.layers.decoding` tells that its packed copies of the weights went stale: without
        # this, generation during training (CIDEr / BLEU at eval time) decodes with its first call's weights.
        opt.register_step_post_hook(_bump_versions)
    return opt


def _bump_versions(opt: Optimizer, args: Any, kwargs: Any) -> None:
    increment_version([p for g in opt.param_groups for p in g["params"]])
