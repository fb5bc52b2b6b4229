"""Heads on a decoder-LM trunk (Chat's RLHF, RAG reranking/classification).

- `RewardModel`: trunk + linear `score` head -> one scalar per sequence (`forward`, read at each row's last
  real token) or per token (`values`, for a PPO value model).
- `Classifier`: trunk + linear `classifier` head -> class logits pooled at the last real token or averaged.

The trunk is a `DecoderLM` without its lm_head, so an SFT checkpoint's weights load into it directly
(`load_trunk`), and tensor parallelism / checkpointing see the usual `trunk.blocks[i]` names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gensys.models._util import config_from_dict
from gensys.models.decoder_lm import DecoderLM, DecoderLMConfig


def last_token_index(attention_mask: Tensor | None, seq_len: int, batch: int, device: torch.device) -> Tensor:
    """Index (B,) of each row's last real token (works for left and right padding)."""
    if attention_mask is None:
        return torch.full((batch,), seq_len - 1, dtype=torch.long, device=device)
    flipped_first = attention_mask.long().flip(1).argmax(dim=1)  # first real token from the right
    return seq_len - 1 - flipped_first


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    d = dict(d)
    if isinstance(d.get("lm"), dict):
        d["lm"] = DecoderLMConfig.from_dict(d["lm"])
    return config_from_dict(cls, d)


class _Trunk(nn.Module):
    """Shared part of the heads: a DecoderLM whose lm_head is removed."""

    def __init__(self, lm_cfg: DecoderLMConfig) -> None:
        super().__init__()
        self.trunk = DecoderLM(lm_cfg)
        self.trunk.lm_head = None  # unused: no dead parameters for DDP or the optimiser

    def load_trunk(self, lm_state: dict[str, Tensor]) -> None:
        """Load a DecoderLM state dict (e.g. the SFT model) into the trunk, ignoring its lm_head."""
        self.trunk.load_state_dict({k: v for k, v in lm_state.items() if not k.startswith("lm_head.")})

    def _hidden(self, input_ids: Tensor, attention_mask: Tensor | None, positions: Tensor | None) -> Tensor:
        return self.trunk.hidden(input_ids, attention_mask=attention_mask, positions=positions)  # (B, T, D)


@dataclass
class RewardConfig:
    """A reward / value model: the trunk's LM config and the number of outputs per position (usually 1)."""

    lm: DecoderLMConfig = field(default_factory=DecoderLMConfig)
    n_outputs: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RewardConfig:
        """Rebuild from `dataclasses.asdict` output (nested `lm` dict)."""
        return _from_dict(cls, d)


class RewardModel(_Trunk):
    """LM trunk + scalar head: `forward` -> (B,) rewards, `values` -> (B, T) per-token values."""

    def __init__(self, cfg: RewardConfig) -> None:
        super().__init__(cfg.lm)
        self.cfg = cfg
        self.score = nn.Linear(cfg.lm.d_model, cfg.n_outputs)
        nn.init.normal_(self.score.weight, std=cfg.lm.d_model**-0.5 / 10)
        nn.init.zeros_(self.score.bias)

    def values(
        self, input_ids: Tensor, *, attention_mask: Tensor | None = None, positions: Tensor | None = None
    ) -> Tensor:
        """Per-token outputs (B, T) (or (B, T, n_outputs) when n_outputs > 1)."""
        out = self.score(self._hidden(input_ids, attention_mask, positions))  # (B, T, n_outputs)
        return out.squeeze(-1) if self.cfg.n_outputs == 1 else out

    def forward(
        self, input_ids: Tensor, *, attention_mask: Tensor | None = None, positions: Tensor | None = None
    ) -> Tensor:
        """Sequence rewards (B,) (or (B, n_outputs)), read at each row's last real token."""
        b, t = input_ids.shape
        h = self._hidden(input_ids, attention_mask, positions)  # (B, T, D)
        idx = last_token_index(attention_mask, t, b, input_ids.device)
        out = self.score(h[torch.arange(b, device=h.device), idx])  # (B, n_outputs)
        return out.squeeze(-1) if self.cfg.n_outputs == 1 else out


@dataclass
class ClassifierConfig:
    """A sequence classifier: the trunk's LM config, number of classes and pooling ("last" or "mean")."""

    lm: DecoderLMConfig = field(default_factory=DecoderLMConfig)
    n_classes: int = 2
    pooling: str = "last"

    def __post_init__(self) -> None:
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"ClassifierConfig.pooling: unknown {self.pooling!r}; expected 'last' or 'mean'")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        """Rebuild from `dataclasses.asdict` output (nested `lm` dict)."""
        return _from_dict(cls, d)


class Classifier(_Trunk):
    """LM trunk + linear class head: `forward` -> logits (B, n_classes)."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__(cfg.lm)
        self.cfg = cfg
        self.classifier = nn.Linear(cfg.lm.d_model, cfg.n_classes)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self, input_ids: Tensor, *, attention_mask: Tensor | None = None, positions: Tensor | None = None
    ) -> Tensor:
        """Class logits (B, n_classes)."""
        b, t = input_ids.shape
        h = self._hidden(input_ids, attention_mask, positions)  # (B, T, D)
        if self.cfg.pooling == "last":
            pooled = h[torch.arange(b, device=h.device), last_token_index(attention_mask, t, b, h.device)]
        elif attention_mask is None:
            pooled = h.mean(dim=1)
        else:
            m = attention_mask.to(h.dtype)[..., None]  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1)
        return self.classifier(pooled)


__all__ = ["Classifier", "ClassifierConfig", "RewardConfig", "RewardModel", "last_token_index"]
