"""Pipeline parallelism for decoder LMs with `torch.distributed.pipelining`.

The model is split by hand (no tracing): stage 0 holds `tok_emb` (+ learned positions) and the first blocks,
the last stage the remaining blocks, `norm` and `lm_head`; middle stages hold blocks only. Each stage keeps
the original parameter names (`blocks.5.attn.q_proj.weight` stays that), so the stages' state dicts merge
back into the single-device checkpoint format. Every micro-batch handed to the trainer is cut into
`n_microbatches` pipeline chunks scheduled by GPipe (all forwards, then all backwards) or 1F1B (one forward,
one backward in steady state: activation memory of pp chunks instead of n_microbatches).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gensys.nn.positions import sinusoidal
from gensys.train.config import ParallelConfig
from gensys.train.losses import token_cross_entropy
from gensys.train.parallel import DistEnv, _tied_embeddings
from gensys.train.recompute import apply_activation_checkpointing

__all__ = ["DecoderStage", "PipelinedModel", "split_layers"]


def split_layers(n_layers: int, n_stages: int) -> list[range]:
    """Contiguous block ranges per stage, as even as possible (earlier stages take the extra blocks)."""
    if n_layers < n_stages:
        raise ValueError(f"cannot split {n_layers} blocks over {n_stages} pipeline stages")
    base, extra = divmod(n_layers, n_stages)
    out, start = [], 0
    for s in range(n_stages):
        n = base + (1 if s < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


class DecoderStage(nn.Module):
    """One pipeline stage of a `gensys.models.decoder_lm.DecoderLM` (training forward: no cache, no padding).

    Stage 0 maps input_ids (B, T) to hidden states, middle stages map (B, T, D) -> (B, T, D), the last stage
    returns logits (B, T, V). The embedding prologue mirrors `DecoderLM.hidden`; a test checks the chained
    stages against the model's own forward so the two cannot drift apart.
    """

    def __init__(self, model: nn.Module, layers: range, first: bool, last: bool) -> None:
        super().__init__()
        self.cfg = model.cfg
        self.first, self.last = first, last
        self.tok_emb = model.tok_emb if first else None
        self.pos_emb = getattr(model, "pos_emb", None) if first else None
        self.drop = model.drop if first else None
        self.rope = getattr(model, "rope", None)
        # A ModuleDict keyed by the original index keeps the names `blocks.<i>.…` of the full model.
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in layers})
        self.norm = model.norm if last else None
        self.lm_head = model.lm_head if last else None

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        positions = torch.arange(t, device=x.device)[None]  # (1, T)
        if self.first:
            h = self.tok_emb(x)  # (B, T, D)
            if self.pos_emb is not None:
                h = h + self.pos_emb(positions)
            elif self.cfg.pos == "sinusoidal":
                h = h + sinusoidal(positions, self.cfg.d_model).to(h.dtype)
            h = self.drop(h)
        else:
            h = x
        rope = self.rope(positions) if self.rope is not None else None
        for i, block in self.blocks.items():
            # No padding in training batches, so SDPA's causal fast path applies (mask=None, is_causal=True).
            h = block(h, mask=None, is_causal=True, rope=rope, layer=int(i))
        if self.last:
            h = self.lm_head(self.norm(h))  # (B, T, V)
        return h


class PipelinedModel:
    """This rank's pipeline stage plus its schedule; the trainer calls `train_step` / `eval_step`.

    Every rank receives the whole batch (data parallelism is 1 in `pp` mode); stage 0 reads input_ids, the
    last stage reads labels, and the loss is `token_cross_entropy` on the logits (PP has no custom loss_fn).
    """

    def __init__(
        self,
        model: nn.Module,
        env: DistEnv,
        cfg: ParallelConfig,
        *,
        grad_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        if not hasattr(model, "blocks") or not hasattr(model, "cfg"):
            raise ValueError(f"pipeline parallelism supports decoder LMs; got {type(model).__name__}")
        if _tied_embeddings(model) and env.pp_size > 1:
            raise ValueError(
                "pipeline parallelism needs untied embeddings (tok_emb and lm_head on different stages)"
            )
        self.env = env
        self.n_stages, self.stage_index = env.pp_size, env.pp_rank
        layers = split_layers(len(model.blocks), self.n_stages)[self.stage_index]
        self.is_first, self.is_last = self.stage_index == 0, self.stage_index == self.n_stages - 1
        self.module = DecoderStage(model, layers, self.is_first, self.is_last).to(env.device)
        if grad_checkpointing:
            apply_activation_checkpointing(self.module)
        if compile:
            for block in self.module.blocks.values():
                block.compile()
        self.group = env.group("pp")
        self.stage = PipelineStage(self.module, self.stage_index, self.n_stages, env.device, group=self.group)
        schedule_cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[cfg.pp_schedule]
        # scale_grads=False: the loss below is already divided by the step's total target tokens.
        self.n_microbatches = cfg.n_microbatches
        self.schedule = schedule_cls(
            self.stage, n_microbatches=cfg.n_microbatches, loss_fn=self._chunk_loss, scale_grads=False
        )
        self._scale = 1.0
        self._sums: list[Tensor] = []
        self._counts: list[Tensor] = []

    # The nn.Module-like surface the trainer uses.
    def parameters(self):
        return self.module.parameters()

    def named_parameters(self):
        return self.module.named_parameters()

    def train(self, mode: bool = True) -> PipelinedModel:
        self.module.train(mode)
        return self

    def eval(self) -> PipelinedModel:
        return self.train(False)

    def _chunk_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        loss_sum, n = token_cross_entropy(logits, labels)
        self._sums.append(loss_sum.detach())
        self._counts.append(n)
        return loss_sum * self._scale

    def _run(self, batch: Mapping[str, Any], scale: float, train: bool) -> tuple[Tensor, Tensor]:
        if set(batch) - {"input_ids", "labels"}:
            raise ValueError("pipeline parallelism trains on unpadded {input_ids, labels} batches only")
        self._scale, self._sums, self._counts = scale, [], []
        run = self.schedule.step if train else self.schedule.eval
        if self.is_first and self.is_last:
            run(batch["input_ids"], target=batch["labels"])
        elif self.is_first:
            run(batch["input_ids"])
        elif self.is_last:
            run(target=batch["labels"])
        else:
            run()
        dev = self.env.device
        out = torch.zeros(2, dtype=torch.float64, device=dev)
        if self.is_last:
            # The last n_microbatches calls are this step's chunks; on the first step the stage's shape
            # inference also runs the loss once on placeholder data, which must not be counted.
            n = self.n_microbatches
            out[0] = torch.stack(self._sums[-n:]).sum().double()
            out[1] = torch.stack(self._counts[-n:]).sum().double()
        if (
            self.n_stages > 1
        ):  # only the last stage saw the logits: share (loss_sum, n_tokens) with all stages
            dist.all_reduce(out, group=self.group)
        return out[0].float(), out[1].long()

    def train_step(self, batch: Mapping[str, Any], scale: float) -> Tensor:
        """Forward + backward of one micro-batch; returns its loss sum (same value on every stage)."""
        return self._run(batch, scale, train=True)[0]

    @torch.no_grad()
    def eval_step(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Forward only; returns (loss_sum, n_tokens) on every stage."""
        return self._run(batch, 1.0, train=False)

    def stage_state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()
