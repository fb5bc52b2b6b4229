"""Distributed training applied from outside the model: `init_distributed` and `parallelize(model, cfg)`.

Launch with `torchrun --nproc_per_node=N ...`; gloo on CPU, nccl on CUDA. One 3-D device mesh
("pp", "dp", "tp") covers every mode (sizes of 1 where unused):

    ddp      DistributedDataParallel: replicated params, all-reduced grads
    zero1    DDP + ZeroRedundancyOptimizer: the AdamW state is sharded over ranks (see `build_optimizer`)
    fsdp     FSDP2 `fully_shard` per block, then the root: params, grads and optimizer state sharded
    tp       DTensor tensor parallelism: q/k/v/up/gate column-wise, o/down row-wise, vocab-sharded embedding
             and lm_head (logits gathered)
    pp       `torch.distributed.pipelining`: blocks split into stages, GPipe or 1F1B over micro-batches
    fsdp_tp  TP inside each "tp" group, FSDP over the "dp" dimension of the 2-D mesh

Model code never changes: TP relies on attention deriving its local head count from `q_proj.out_features`,
which `apply_tp` sets to the per-rank size.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from gensys.train.config import ParallelConfig
from gensys.train.recompute import apply_activation_checkpointing, transformer_blocks

__all__ = [
    "DistEnv",
    "init_distributed",
    "dist_env",
    "destroy_distributed",
    "parallelize",
    "apply_fsdp",
    "apply_tp",
    "unwrap",
    "clip_grad_norm",
    "all_reduce_sum",
]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DistEnv:
    """Where this process sits: its rank, its device, and its coordinates on the (pp, dp, tp) mesh."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mode: str = "none"
    mesh: DeviceMesh | None = None
    dp_rank: int = 0
    dp_size: int = 1
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.mesh is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def group(self, dim: str) -> dist.ProcessGroup | None:
        """Process group of one mesh dimension ("dp", "tp" or "pp"); None when not distributed."""
        return None if self.mesh is None else self.mesh.get_group(dim)


_ENV: DistEnv | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resolve_sizes(cfg: ParallelConfig, world: int) -> tuple[int, int, int]:
    """(pp, dp, tp) sizes for `cfg.mode` on `world` ranks; an impossible combination is an error."""
    mode = cfg.mode
    if mode == "none":
        if world != 1:
            raise ValueError(
                f"launched on {world} ranks with parallel.mode=none; choose ddp, fsdp, tp, pp, ..."
            )
        pp, dp, tp = 1, 1, 1
    elif mode in ("ddp", "zero1", "fsdp"):
        pp, dp, tp = 1, cfg.dp_size or world, 1
    elif mode == "tp":
        pp, dp, tp = 1, 1, cfg.tp_size or world
    elif mode == "pp":
        pp, dp, tp = cfg.pp_size or world, 1, 1
    elif mode == "fsdp_tp":
        tp = cfg.tp_size or min(2, world)
        pp, dp = 1, cfg.dp_size or max(1, world // tp)
    else:
        raise ValueError(f"unknown parallel mode {mode!r}")
    if pp * dp * tp != world:
        raise ValueError(f"parallel.mode={mode}: pp={pp} x dp={dp} x tp={tp} != world size {world}")
    return pp, dp, tp


def init_distributed(cfg: ParallelConfig, device: str = "auto") -> DistEnv:
    """Join the process group torchrun set up (env:// RANK, WORLD_SIZE, MASTER_ADDR...) and build the mesh.

    Idempotent: a later call with the same mode and sizes returns the same `DistEnv`; another layout keeps the
    process group and builds a new mesh. With `mode=none` and no torchrun, nothing is set up. A single process
    with another mode gets a 1-rank group (useful to run the same code path on a laptop).
    """
    global _ENV
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    pp, dp, tp = _resolve_sizes(cfg, world)
    if _ENV is not None and (_ENV.mode, _ENV.pp_size, _ENV.dp_size, _ENV.tp_size) == (cfg.mode, pp, dp, tp):
        return _ENV
    if device == "auto":
        dev = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if cfg.mode == "none":
        _ENV = DistEnv(device=dev)
        return _ENV
    if not dist.is_initialized():
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
        if world == 1 and "MASTER_ADDR" not in os.environ:
            os.environ["MASTER_ADDR"] = "127.0.0.1"
            os.environ["MASTER_PORT"] = str(_free_port())
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=cfg.timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    mesh = init_device_mesh(dev.type, (pp, dp, tp), mesh_dim_names=("pp", "dp", "tp"))
    _ENV = DistEnv(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        device=dev,
        mode=cfg.mode,
        mesh=mesh,
        dp_rank=mesh.get_local_rank("dp"),
        dp_size=dp,
        tp_size=tp,
        pp_rank=mesh.get_local_rank("pp"),
        pp_size=pp,
    )
    return _ENV


def dist_env() -> DistEnv:
    """The current `DistEnv` (a single-process one before `init_distributed` was called)."""
    return _ENV if _ENV is not None else DistEnv()


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0: the one process that exports, writes reports and builds
    side artefacts after training (every rank would otherwise write the same files at once)."""
    if _ENV is not None:
        return _ENV.is_main
    return int(os.environ.get("RANK", "0")) == 0


def destroy_distributed() -> None:
    """Leave the process group (end of a torchrun job, or between tests)."""
    global _ENV
    _ENV = None
    if dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------
# Applying a parallel mode
# ----------------------------------------------------------------------------------------------------


def apply_tp(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Shard q/k/v/up/gate column-wise and o/down row-wise over `mesh` (1-D), in place.

    Each block then computes with H/tp local heads and a 1/tp slice of the FFN, and its two row-wise layers
    all-reduce their outputs, so activations between blocks are replicated. The token embedding is sharded
    over the vocabulary (row-wise, output all-reduced) and lm_head over its output vocabulary with the logits
    gathered, so the loss is computed on full logits exactly as in a single process. Norms stay replicated.
    """
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = mesh.size()
    tied = _tied_embeddings(model)
    for block in transformer_blocks(model):
        plan: dict[str, object] = {}
        for attn_name in ("attn", "cross_attn"):
            attn = getattr(block, attn_name, None)
            if attn is None:
                continue
            for proj in ("q_proj", "k_proj", "v_proj"):
                # Whole heads per rank: features must split into tp groups of complete heads.
                heads = getattr(attn, proj).out_features // getattr(attn, "head_dim", 1)
                _check_divisible(heads, tp, f"{attn_name}.{proj} heads")
                plan[f"{attn_name}.{proj}"] = ColwiseParallel()
            plan[f"{attn_name}.o_proj"] = RowwiseParallel()
        mlp = getattr(block, "mlp", None)
        if mlp is not None:
            for proj in ("up_proj", "gate_proj"):
                if getattr(mlp, proj, None) is not None:
                    _check_divisible(getattr(mlp, proj).out_features, tp, f"mlp.{proj} features")
                    plan[f"mlp.{proj}"] = ColwiseParallel()
            plan["mlp.down_proj"] = RowwiseParallel()
        parallelize_module(block, mesh, plan)
        # Modules read their local sizes from these attributes (e.g. heads = q_proj.out_features // head_dim).
        for name, style in plan.items():
            lin = block.get_submodule(name)
            if isinstance(style, ColwiseParallel):
                lin.out_features //= tp
            else:
                lin.in_features //= tp
    top: dict[str, object] = {}
    if isinstance(getattr(model, "tok_emb", None), nn.Embedding):
        top["tok_emb"] = RowwiseParallel(input_layouts=Replicate())
    if isinstance(getattr(model, "lm_head", None), nn.Linear):
        top["lm_head"] = ColwiseParallel(output_layouts=Replicate())
    if top:
        parallelize_module(model, mesh, top)
    if tied and "tok_emb" in top and "lm_head" in top:
        # Both shard the (V, D) matrix on dim 0, so one DTensor parameter serves both: re-tie it.
        model.lm_head.weight = model.tok_emb.weight
    return model


def _check_divisible(n: int, tp: int, what: str) -> None:
    if n % tp != 0:
        raise ValueError(f"tensor parallel size {tp} does not divide {what} ({n})")


def _tied_embeddings(model: nn.Module) -> bool:
    emb, head = getattr(model, "tok_emb", None), getattr(model, "lm_head", None)
    return emb is not None and head is not None and getattr(head, "weight", None) is emb.weight


def apply_fsdp(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    param_dtype: str = "fp32",
    reduce_dtype: str = "fp32",
    reshard_after_forward: bool = True,
) -> nn.Module:
    """FSDP2: `fully_shard` every transformer block, then the root (embeddings, final norm, lm_head).

    Per-block units bound peak memory to one gathered block at a time; the mixed-precision policy casts the
    gathered parameters to `param_dtype` for compute and reduces gradients in `reduce_dtype`, keeping fp32
    master parameters and optimizer state.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mp = MixedPrecisionPolicy(
        param_dtype=None if param_dtype == "fp32" else _DTYPES[param_dtype],
        reduce_dtype=None if reduce_dtype == "fp32" else _DTYPES[reduce_dtype],
    )
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # The root's parameters are used at both ends of the forward; keeping them gathered after forward saves a
    # second all-gather in backward.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    # Methods other than forward that systems call (heads read hidden states, seq2seq encodes/decodes) need
    # FSDP's unshard hooks too.
    for method in ("hidden", "encode", "decode"):
        if callable(getattr(model, method, None)):
            register_fsdp_forward_method(model, method)
    return model


def parallelize(
    model: nn.Module,
    cfg: ParallelConfig,
    env: DistEnv | None = None,
    *,
    grad_checkpointing: bool = False,
    compile: bool = False,
) -> nn.Module:
    """Apply `cfg.mode` to a single-device model already on `env.device`; returns what the trainer drives.

    Order matters and follows what composes in PyTorch: TP first (it rewrites parameters into DTensors), then
    activation checkpointing and `torch.compile` per block, then the data-parallel wrapper (DDP or FSDP2).
    For `pp` the result is a `PipelinedModel` (see gensys.train.pipeline) holding this rank's stage.
    """
    env = env or init_distributed(cfg)
    if cfg.mode == "pp":
        from gensys.train.pipeline import PipelinedModel

        return PipelinedModel(model, env, cfg, grad_checkpointing=grad_checkpointing, compile=compile)
    if cfg.mode in ("tp", "fsdp_tp"):
        assert env.mesh is not None
        apply_tp(model, env.mesh["tp"])
    if grad_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        for block in transformer_blocks(model):
            block.compile()
    if cfg.mode in ("ddp", "zero1"):
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return DDP(model, device_ids=device_ids)
    if cfg.mode in ("fsdp", "fsdp_tp"):
        assert env.mesh is not None
        return apply_fsdp(
            model,
            env.mesh["dp"],
            param_dtype=cfg.fsdp_param_dtype,
            reduce_dtype=cfg.fsdp_reduce_dtype,
            reshard_after_forward=cfg.fsdp_reshard_after_forward,
        )
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 and TP modify the module in place, nothing to unwrap)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------------------------------
# Collectives the trainer needs
# ----------------------------------------------------------------------------------------------------


def all_reduce_sum(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Sum `x` over `group` (a no-op when not distributed); returns a new tensor."""
    x = x.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


@torch.no_grad()
def clip_grad_norm(
    params: Iterable[nn.Parameter], max_norm: float, *, pp_group: dist.ProcessGroup | None = None
) -> Tensor:
    """Clip the global L2 norm of the gradients to `max_norm` (0 = only measure); returns the norm before.

    Works for plain tensors and DTensors (FSDP/TP shards) alike: the norm of each group of DTensors sharing a
    layout is reduced over its mesh, and with pipeline stages the squared norms are summed over stages.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    groups: dict[object, list[Tensor]] = {}
    for g in grads:
        key = (g.device_mesh, g.placements) if isinstance(g, DTensor) else ("local", g.device)
        groups.setdefault(key, []).append(g)
    sq = torch.zeros((), dtype=torch.float32, device=grads[0].device if grads else "cpu")
    for gs in groups.values():
        n = torch.nn.utils.get_total_norm(gs, norm_type=2.0, foreach=True)
        if isinstance(n, DTensor):
            n = n.full_tensor()
        sq = sq + n.float().to(sq.device) ** 2
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        dist.all_reduce(sq, group=pp_group)
    total = sq.sqrt()
    if max_norm > 0 and grads:
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
        host_coef = None
        for key, gs in groups.items():
            if key[0] == "local":
                torch._foreach_mul_(gs, coef.to(gs[0].device))  # stays on the device: no host sync
            else:
                # DTensors take a Python scalar (a plain-tensor factor does not mix with DTensors).
                host_coef = float(coef) if host_coef is None else host_coef
                torch._foreach_mul_(gs, host_coef)
    return total
