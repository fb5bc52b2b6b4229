"""The one training loop every system uses, from a laptop CPU to many GPUs under torchrun.

A system supplies the model, a resumable iterator of batches, and `loss_fn(model, batch) -> (loss_sum,
n_tokens, metrics)`; the trainer does the rest:

    for each step:  fetch grad_accum_steps micro-batches, count their target tokens, all-reduce the count
                    forward/backward each micro-batch on loss_sum * dp_size / total_tokens  (AMP, no_sync)
                    clip the global grad norm, AdamW step, lr schedule
                    log; every eval_every steps evaluate, keep best/, maybe stop early;
                    every save_every steps save last/

Dividing by the step's total target tokens (over micro-batches and ranks) makes the gradient that of one big
batch; DDP and FSDP average gradients over ranks, hence the `dp_size` factor. `last/` carries `train_state/`
(optimizer, scheduler, scaler, every rank's RNG and data position), so a killed run resumes where it was and,
on CPU with the same seed and thread count, reproduces the uninterrupted losses bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from gensys.checkpoint import (
    capture_rng_state,
    load_state_dict_verified,
    load_train_state,
    restore_rng_state,
    save_checkpoint,
)
from gensys.data.atomic import atomic_write_text
from gensys.train.config import TrainConfig
from gensys.train.loader import ResumableIterator, eval_batches
from gensys.train.losses import batch_target_tokens, lm_loss, token_cross_entropy
from gensys.train.monitor import MetricsLog, Progress, plot_losses, read_metrics
from gensys.train.optim import build_optimizer
from gensys.train.parallel import (
    DistEnv,
    all_reduce_sum,
    clip_grad_norm,
    dist_env,
    init_distributed,
    parallelize,
)
from gensys.train.pipeline import PipelinedModel
from gensys.train.schedules import build_scheduler

__all__ = ["Trainer", "LossFn", "EvalFn", "seed_everything", "move_to", "lm_eval_fn", "evaluate_loss"]

LossFn = Callable[[nn.Module, Any], tuple[Tensor, Tensor | int, dict[str, float]]]
EvalFn = Callable[[nn.Module], dict[str, float]]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_FAMILIES = {
    "DecoderLM": "decoder_lm",
    "Seq2Seq": "seq2seq",
    "Captioner": "captioner",
    "RewardModel": "reward",
    "Classifier": "classifier",
}


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices): call before building the model for identical init."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_to(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested dict/list/tuple) batch to `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


class _LossModule(nn.Module):
    """`loss_fn(model, batch)` as a module, so that DDP wraps the whole loss computation."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any):
        return self.loss_fn(self.model, batch)


class _StateDictView:
    """Hands a gathered state dict to `save_checkpoint`, which asks its model for `state_dict()`."""

    def __init__(self, state: dict[str, Tensor]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Tensor]:
        return self._state


def _infer_model_config(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and dataclasses.is_dataclass(cfg):
        return {
            "family": _FAMILIES.get(type(model).__name__, type(model).__name__),
            "model": dataclasses.asdict(cfg),
        }
    return {}


class Trainer:
    """Train `model` under `cfg`; see the module docstring for the loop.

    model: single-device module (the trainer moves it to the device and applies `cfg.parallel`).
    train_data: iterator of batches with `state_dict()`/`load_state_dict()` (e.g. `ResumableLoader`); under
        data parallelism it yields this rank's shard (build it with `env.dp_rank`, `env.dp_size` from
        `init_distributed`).
    loss_fn: `(model, batch) -> (loss_sum, n_tokens, metrics)`; default: decoder-LM cross-entropy.
        It must call `model(...)` (or, under FSDP, `hidden`/`encode`/`decode`) so DDP/FSDP hooks run.
    token_count_fn: target tokens of a batch, known before the forward (default: labels != -100); must
        agree with the `n_tokens` that `loss_fn` returns (checked on the first step).
    eval_fn: `(model) -> {"val_loss": ..., ...}`, called on every rank in eval mode under no_grad (see
        `lm_eval_fn`); its `cfg.early_stop_metric` decides `best/` and early stopping.
    model_config: the checkpoint's config.json content (`{"family", "model"}`); inferred from `model.cfg`.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        *,
        train_data: ResumableIterator,
        loss_fn: LossFn | None = None,
        eval_fn: EvalFn | None = None,
        token_count_fn: Callable[[Any], int] = batch_target_tokens,
        model_config: Mapping[str, Any] | None = None,
        tokenizer: Any = None,
        optimizer_factory: Callable[[nn.Module, TrainConfig], torch.optim.Optimizer] = build_optimizer,
    ) -> None:
        self.cfg = cfg
        self.env: DistEnv = init_distributed(cfg.parallel, cfg.device)
        self.device = self.env.device
        self.out_dir = Path(cfg.out_dir)
        self.train_data = train_data
        # Under compile=true the default loss's log-softmax is compiled too (fused forward and backward:
        # 127 vs 171 ms for 2048 x 8192 logits on 2 busy cores); the blocks are compiled by `parallelize`.
        ce = torch.compile(token_cross_entropy) if cfg.compile else token_cross_entropy
        self.loss_fn = loss_fn or partial(lm_loss, label_smoothing=cfg.label_smoothing, ce=ce)
        self.eval_fn = eval_fn
        self.token_count_fn = token_count_fn
        self.model_config = dict(model_config) if model_config is not None else _infer_model_config(model)
        self.tokenizer = tokenizer
        if cfg.parallel.mode == "pp" and loss_fn is not None:
            raise ValueError("parallel.mode=pp computes the LM loss inside the pipeline; loss_fn is not used")
        if cfg.parallel.mode == "pp" and cfg.precision == "fp16":
            raise ValueError(
                "parallel.mode=pp supports fp32 and bf16 (the fp16 loss scaler would miss the pipeline)"
            )

        # Resume: weights go into the single-device model before it is sharded; the rest is loaded below.
        state = self._resume_state()
        if state is not None:
            load_state_dict_verified(model, self.out_dir / "last")
        model.to(self.device)
        # DDP synchronises gradients only for computations run inside its forward, so under ddp/zero1 the
        # whole loss_fn (which may call encode/decode/hidden, not just forward) runs inside it.
        self._ddp: nn.parallel.DistributedDataParallel | None = None
        replicated = cfg.parallel.mode in ("ddp", "zero1")
        wrapped = parallelize(
            _LossModule(model, self.loss_fn) if replicated else model,
            cfg.parallel,
            self.env,
            grad_checkpointing=cfg.grad_checkpointing,
            compile=cfg.compile,
        )
        if replicated:
            self._ddp, self.model = wrapped, model
        else:
            self.model = wrapped
        # FSDP/TP hold DTensor shards: their state dicts are gathered through torch.distributed.checkpoint.
        self._sharded = cfg.parallel.mode in ("fsdp", "tp", "fsdp_tp")
        self.pipelined = isinstance(self.model, PipelinedModel)
        params_owner = self.model.module if self.pipelined else self.model
        self.optimizer = optimizer_factory(params_owner, cfg)
        self.scheduler = build_scheduler(
            self.optimizer,
            warmup_steps=cfg.warmup_steps,
            max_steps=cfg.max_steps,
            schedule=cfg.schedule,
            min_lr_ratio=cfg.min_lr_ratio,
        )
        self.scaler = self._make_scaler()
        self.step = 0
        self.best_metric: float | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self._checked_counts = False
        main = self.env.is_main
        tb_dir = str(self.out_dir / "tensorboard") if cfg.tensorboard else None
        self.log = MetricsLog(self.out_dir / "metrics.jsonl", enabled=main, tensorboard_dir=tb_dir)
        if state is not None:
            self._load_state(state)
            self.log.truncate_after(self.step)
        elif main:
            # A fresh run starts a fresh log (an old one would mix two runs' curves).
            (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------------------
    # numerics helpers

    def _make_scaler(self) -> torch.amp.GradScaler | None:
        if self.cfg.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)

    def _unscale(self) -> None:
        """Unscale fp16 gradients; with DTensor (FSDP/TP) shards the inf check is all-reduced over the mesh.

        DTensor's handler for the unscale kernel reduces `found_inf` over each gradient's mesh, so every rank
        skips or takes the step together; the scaler's plain scale tensors join via implicit replication.
        """
        from torch.distributed.tensor.experimental import implicit_replication

        with implicit_replication():
            self.scaler.unscale_(self.optimizer)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16/fp16 autocast per `cfg.precision`; a no-op for fp32."""
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.cfg.precision])

    def _grad_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce/reduce-scatter on all but the last micro-batch of a step."""
        if self._ddp is not None and not sync:
            return self._ddp.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            self.model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def _dp_group(self):
        return self.env.group("dp") if self.env.distributed else None

    # ------------------------------------------------------------------------------------------------------
    # one optimizer step

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over `grad_accum_steps` micro-batches; returns its figures (loss as tensor)."""
        cfg = self.cfg
        micro = [next(self.train_data) for _ in range(cfg.grad_accum_steps)]
        counts = [int(self.token_count_fn(b)) for b in micro]  # on the host batches: no device sync
        total = float(sum(counts))
        if self.env.dp_size > 1:
            n_local = torch.tensor(total, dtype=torch.float64, device=self.device)
            total = float(all_reduce_sum(n_local, self._dp_group()))
        if total <= 0:
            raise ValueError(f"step {self.step}: no target tokens in {cfg.grad_accum_steps} micro-batch(es)")
        # Gradient averaging over dp ranks (DDP/FSDP divide by dp_size) is undone by the dp_size factor.
        scale = self.env.dp_size / total
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        extra: dict[str, float] = {}
        for i, batch in enumerate(micro):
            batch = move_to(batch, self.device)
            last = i == len(micro) - 1
            if self.pipelined:
                with self.autocast():
                    ls = self.model.train_step(batch, scale)
            else:
                with self._grad_sync(last), self.autocast():
                    if self._ddp is not None:
                        ls, n, metrics = self._ddp(batch)
                    else:
                        ls, n, metrics = self.loss_fn(self.model, batch)
                    loss = ls * scale
                if not self._checked_counts and int(n) != counts[i]:
                    raise ValueError(
                        f"loss_fn counted {int(n)} target tokens but token_count_fn {counts[i]}: the loss "
                        "would be normalised by the wrong count"
                    )
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
                for k, v in metrics.items():
                    extra[k] = extra.get(k, 0.0) + float(v) / len(micro)
            loss_sum += ls.detach().float()
        self._checked_counts = True
        if self.scaler is not None:
            self._unscale()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        pp_group = self.env.group("pp") if self.pipelined else None
        grad_norm = clip_grad_norm(params, cfg.grad_clip, pp_group=pp_group)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.env.dp_size > 1 and not self.pipelined:
            loss_sum = all_reduce_sum(loss_sum, self._dp_group())
        return {"loss": loss_sum / total, "grad_norm": grad_norm, "lr": lr, "tokens": int(total), **extra}

    # ------------------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> dict[str, Any]:
        """Train until `max_steps` or early stop; returns a summary (final loss, best metric, paths, ...)."""
        cfg, main = self.cfg, self.env.is_main
        progress = Progress(cfg.max_steps, self.step, enabled=main and cfg.progress)
        last_eval_step = -1
        window_tokens, window_t0, window_steps = 0, time.perf_counter(), 0
        last: dict[str, Any] = {}
        try:
            while self.step < cfg.max_steps and not self.stopped_early:
                out = self.train_step()
                self.step += 1
                window_tokens += out["tokens"]
                window_steps += 1
                if self.step % max(1, cfg.log_every) == 0 or self.step == cfg.max_steps:
                    elapsed = time.perf_counter() - window_t0
                    last = {
                        "step": self.step,
                        "loss": float(out["loss"]),
                        "lr": out["lr"],
                        "grad_norm": float(out["grad_norm"]),
                        "tok_per_s": window_tokens / max(elapsed, 1e-9),
                        **{k: v for k, v in out.items() if k not in ("loss", "lr", "grad_norm", "tokens")},
                    }
                    self.log.log(last)
                    progress.update(window_steps, loss=last["loss"], tok_s=last["tok_per_s"], lr=last["lr"])
                    window_tokens, window_t0, window_steps = 0, time.perf_counter(), 0
                t_pause = time.perf_counter()
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._evaluate(progress)
                    last_eval_step = self.step
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                    self.save("last")
                window_t0 += time.perf_counter() - t_pause  # tokens/s counts training time only
            progress.update(window_steps)
            if self.eval_fn is not None and last_eval_step != self.step:
                self._evaluate(progress)
            self.save("last")
        finally:
            progress.close()
            self.log.close()
        if "loss" not in last:  # nothing left to train (resumed a finished run): report the logged loss
            logged = [r for r in read_metrics(self.out_dir / "metrics.jsonl") if "loss" in r]
            last = logged[-1] if logged else {}
        return {
            "step": self.step,
            "loss": last.get("loss"),
            "best_metric": self.best_metric,
            "stopped_early": self.stopped_early,
            "last": str(self.out_dir / "last"),
            "best": str(self.out_dir / "best") if (self.out_dir / "best").exists() else None,
            "metrics": str(self.out_dir / "metrics.jsonl"),
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Run `eval_fn` in eval mode (every rank); returns its metrics."""
        if self.eval_fn is None:
            return {}
        self.model.eval()
        try:
            with self.autocast():
                return {k: float(v) for k, v in self.eval_fn(self.model).items()}
        finally:
            self.model.train()

    def _evaluate(self, progress: Progress) -> None:
        metrics = self.evaluate()
        if not metrics:
            return
        self.log.log({"step": self.step, **metrics})
        progress.write(f"step {self.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        key = self.cfg.early_stop_metric
        if key not in metrics:
            raise KeyError(f"eval_fn returned {sorted(metrics)}, not early_stop_metric {key!r}")
        value = metrics[key]
        better = self.best_metric is None or (
            value < self.best_metric if self.cfg.early_stop_mode == "min" else value > self.best_metric
        )
        if better and math.isfinite(value):
            self.best_metric, self.bad_evals = value, 0
            self.save("best")
        else:
            self.bad_evals += 1
            if self.cfg.early_stop_patience and self.bad_evals >= self.cfg.early_stop_patience:
                self.stopped_early = True
                progress.write(
                    f"early stop at step {self.step}: {key} did not improve in {self.bad_evals} evals"
                )

    # ------------------------------------------------------------------------------------------------------
    # checkpoints

    def full_model_state(self) -> dict[str, Tensor]:
        """The whole model's state dict gathered on rank 0 (CPU tensors; empty on other ranks)."""
        if not self._sharded and not self.pipelined:  # single process, DDP, ZeRO-1: every rank has it all
            return (
                {k: v.detach().cpu() for k, v in self.model.state_dict().items()} if self.env.is_main else {}
            )
        if self.pipelined:
            parts = _gather_objects({k: v.detach().cpu() for k, v in self.model.stage_state_dict().items()})
            return {k: v for part in parts for k, v in part.items()} if parts else {}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def _optimizer_state(self) -> Any:
        mode = self.cfg.parallel.mode
        if mode == "zero1":
            self.optimizer.consolidate_state_dict(to=0)
            return self.optimizer.state_dict() if self.env.is_main else None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        if self.pipelined:
            return _gather_objects(get_optimizer_state_dict(self.model.module, self.optimizer))
        if not self._sharded:
            return get_optimizer_state_dict(self.model, self.optimizer) if self.env.is_main else None
        return get_optimizer_state_dict(
            self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def _load_optimizer_state(self, opt_state: Any) -> None:
        mode = self.cfg.parallel.mode
        if mode == "zero1":
            self.optimizer.load_state_dict(opt_state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if self.pipelined:
            if len(opt_state) != self.env.pp_size:
                raise ValueError(
                    f"checkpoint has {len(opt_state)} pipeline stages, this run {self.env.pp_size}"
                )
            set_optimizer_state_dict(self.model.module, self.optimizer, opt_state[self.env.pp_rank])
            return
        set_optimizer_state_dict(
            self.model, self.optimizer, opt_state, options=StateDictOptions(full_state_dict=self._sharded)
        )

    def _train_state(self) -> dict[str, Any] | None:
        """Everything but the weights that resume needs; collective, returns the dict on rank 0 only."""
        opt = self._optimizer_state()
        ranks = _gather_objects({"rng": capture_rng_state(), "data": self.train_data.state_dict()})
        if not self.env.is_main:
            return None
        return {
            "step": self.step,
            "optimizer": opt,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ranks": ranks,
            "world_size": self.env.world_size,
            "best_metric": self.best_metric,
            "bad_evals": self.bad_evals,
            "stopped_early": self.stopped_early,
        }

    def save(self, kind: str = "last") -> Path:
        """Write `out_dir/<kind>/` (gathered weights; `last` adds train_state and, optionally, a DCP copy)."""
        path = self.out_dir / kind
        state = self.full_model_state()
        train_state = self._train_state() if kind == "last" else None
        if kind == "last" and self.cfg.parallel.sharded_checkpoint and self.env.distributed:
            self._save_sharded(self.out_dir / "last_sharded")
        if self.env.is_main:
            config = {**self.model_config, "train": dataclasses.asdict(self.cfg), "step": self.step}
            save_checkpoint(path, _StateDictView(state), config, self.tokenizer, train_state=train_state)
            if self.cfg.plot:
                plot_losses(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png")
        if self.env.distributed:
            dist.barrier()
        return path

    def _save_sharded(self, path: Path) -> None:
        """Each rank writes its own shards of weights and optimizer state (torch.distributed.checkpoint)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        owner = self.model.module if self.pipelined else self.model
        model_sd, optim_sd = get_state_dict(owner, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
        if self.env.is_main:
            atomic_write_text(path / "step.json", json.dumps({"step": self.step}))

    def _load_sharded(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        owner = self.model.module if self.pipelined else self.model
        model_sd, optim_sd = get_state_dict(owner, self.optimizer)
        sd = {"model": model_sd, "optim": optim_sd}
        dcp.load(sd, checkpoint_id=str(path))
        set_state_dict(owner, self.optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])

    def _resume_state(self) -> dict[str, Any] | None:
        if not self.cfg.resume:
            return None
        return load_train_state(self.out_dir / "last")

    def _load_state(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.env.world_size:
            raise ValueError(
                f"{self.out_dir / 'last'} was written by {state['world_size']} ranks; "
                "resume with the same number"
            )
        sharded = self.out_dir / "last_sharded" / "step.json"
        if (
            self.cfg.parallel.sharded_checkpoint
            and self.env.distributed
            and sharded.is_file()
            and json.loads(sharded.read_text())["step"] == state["step"]
        ):
            self._load_sharded(sharded.parent)
        else:
            self._load_optimizer_state(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        mine = state["ranks"][self.env.rank]
        restore_rng_state(mine["rng"])
        self.train_data.load_state_dict(mine["data"])
        self.step = int(state["step"])
        self.best_metric = state.get("best_metric")
        self.bad_evals = int(state.get("bad_evals", 0))
        self.stopped_early = bool(state.get("stopped_early", False))


def _gather_objects(obj: Any) -> list[Any] | None:
    """Gather a picklable object from every rank to rank 0 (list on rank 0, None elsewhere)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


# ----------------------------------------------------------------------------------------------------
# evaluation helpers
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_loss(
    model: Any,
    batches: Iterable[tuple[Any, bool]],
    loss_fn: LossFn = lm_loss,
    env: DistEnv | None = None,
) -> dict[str, float]:
    """Token-weighted mean loss over `(batch, counts)` pairs from `eval_batches`, summed over dp ranks.

    Returns val_loss (nats/token), val_ppl and val_tokens. Under pipeline parallelism the model's own
    pipelined forward is used (loss_fn is ignored).
    """
    env = env or dist_env()
    device = env.device
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for batch, counts in batches:
        batch = move_to(batch, device)
        if isinstance(model, PipelinedModel):
            ls, n = model.eval_step(batch)
        else:
            ls, n, _ = loss_fn(model, batch)
        if counts:
            total[0] += ls.double()
            total[1] += float(n)
    if env.dp_size > 1:
        dist.all_reduce(total, group=env.group("dp"))
    loss = float(total[0] / total[1].clamp_min(1))
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": float(total[1])}


def lm_eval_fn(
    dataset: Any,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any],
    *,
    max_batches: int = 0,
    loss_fn: LossFn = lm_loss,
) -> EvalFn:
    """An `eval_fn` computing val_loss/val_ppl over `dataset`, split over data-parallel ranks."""

    def run(model: Any) -> dict[str, float]:
        env = dist_env()
        batches = eval_batches(
            dataset, batch_size, collate_fn, rank=env.dp_rank, world_size=env.dp_size, max_batches=max_batches
        )
        return evaluate_loss(model, batches, loss_fn, env)

    return run
