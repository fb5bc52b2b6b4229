"""torchrun worker for the distributed parity tests: trains the tiny LM under each requested mode.

    torchrun --nproc_per_node=2 tests/train/train_dist_worker.py OUT_DIR ddp zero1 fsdp tp pp_gpipe ...

For each mode, rank 0 writes OUT_DIR/<mode>.pt with the per-step losses, the full gradients of the first
step (gathered from shards / stages) and the final full parameters; the test compares them with one process.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.dirname(__file__))

from train_helpers import collate, small_cfg, tiny_gpt2, tiny_llama, token_data  # noqa: E402

from gensys.train import ResumableLoader, Trainer, init_distributed, token_cross_entropy  # noqa: E402
from gensys.train.monitor import read_metrics  # noqa: E402

B_LOCAL = 2  # sequences per micro-batch per data-parallel rank


def _gathered_grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Full gradients by parameter name: DTensor shards gathered, pipeline stages merged on rank 0."""
    owner = trainer.model.module if trainer.pipelined else trainer.model
    grads = {}
    for name, p in owner.named_parameters():
        name = name.removeprefix("module.")
        g = p.grad
        if isinstance(g, DTensor):
            g = g.full_tensor()
        grads[name] = g.detach().clone().cpu()
    if trainer.pipelined:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, grads)
        grads = {k: v for part in parts for k, v in part.items()}
    return grads


def _loss_via_hidden(model, batch):
    logits = model.lm_head(model.hidden(batch["input_ids"]))  # (B, T, V)
    loss_sum, n = token_cross_entropy(logits, batch["labels"])
    return loss_sum, n, {}


def run_mode(out_dir: str, name: str) -> None:
    mode, extra = name, {}
    build, loss_fn = tiny_llama, None
    if name == "ddp_hidden":  # the loss glue calls a method other than forward: DDP must still sync grads
        mode, loss_fn = "ddp", _loss_via_hidden
    if name == "tp_gpt2":  # tied embeddings (one vocab-sharded DTensor for both), learned positions, biases
        mode, build = "tp", tiny_gpt2
    if name.startswith("pp_"):
        mode, extra = "pp", {"par_pp_schedule": name[3:]}
    if name == "fsdp_ckpt":  # FSDP with activation checkpointing
        mode, extra = "fsdp", {"grad_checkpointing": True}
    if name == "fsdp_fp16":  # fp16 autocast + loss scaling over sharded (DTensor) gradients
        mode, extra = "fsdp", {"precision": "fp16"}
    run_dir = os.path.join(out_dir, name)
    cfg = small_cfg(run_dir, mode, **extra)
    env = init_distributed(cfg.parallel)
    model = build()
    data = ResumableLoader(
        token_data(), B_LOCAL, collate, seed=cfg.seed, rank=env.dp_rank, world_size=env.dp_size
    )
    trainer = Trainer(model, cfg, train_data=data, loss_fn=loss_fn)
    first_grads: dict[str, torch.Tensor] = {}

    def grab(opt, args, kwargs):
        if not first_grads:
            first_grads.update(_gathered_grads(trainer))

    trainer.optimizer.register_step_pre_hook(grab)
    trainer.fit()
    params = trainer.full_model_state()
    if env.is_main:
        losses = [r["loss"] for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "loss" in r]
        torch.save(
            {"losses": losses, "grads": first_grads, "params": params}, os.path.join(out_dir, f"{name}.pt")
        )


def run_resume(out_dir: str, name: str) -> None:
    """2 steps, save last/, a fresh trainer resumes from disk and takes the 3rd step; report it.

    `fsdp_resume` also writes and reads the DCP sharded copy; the others go through the gathered checkpoint
    (full optimizer state for fsdp/tp, consolidated ZeroRedundancyOptimizer state, per-stage state for pp).
    """
    mode = name.removesuffix("_resume")
    extra = {"par_sharded_checkpoint": True} if mode == "fsdp" else {}
    if mode.startswith("pp_"):
        mode, extra = "pp", {"par_pp_schedule": mode[3:]}
    run_dir = os.path.join(out_dir, name)
    cfg = small_cfg(run_dir, mode, **extra)
    env = init_distributed(cfg.parallel)

    def make() -> Trainer:
        data = ResumableLoader(
            token_data(), B_LOCAL, collate, seed=0, rank=env.dp_rank, world_size=env.dp_size
        )
        return Trainer(tiny_llama(), cfg, train_data=data)

    t = make()
    for _ in range(2):
        t.train_step()
        t.step += 1
    t.save("last")
    t2 = make()  # resumes from last/ + last_sharded/
    resumed_step = t2.step
    out = t2.train_step()
    params = t2.full_model_state()  # a collective: every rank takes part
    if env.is_main:
        torch.save(
            {"resumed_step": resumed_step, "loss3": float(out["loss"]), "params": params},
            os.path.join(out_dir, f"{name}.pt"),
        )


def run_all(out_dir: str, names: list[str]) -> None:
    for name in names:
        if name.endswith("_resume"):
            run_resume(out_dir, name)
        else:
            run_mode(out_dir, name)
        dist.barrier()


def main() -> None:
    torch.set_num_threads(1)
    run_all(sys.argv[1], sys.argv[2:])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
