"""Runnable example: train a byte-level decoder LM on a text file, on one process or many with torchrun.

    python tests/train/train_example_text_lm.py train.max_steps=200
    torchrun --nproc_per_node=2 tests/train/train_example_text_lm.py train.parallel.mode=fsdp
    torchrun --nproc_per_node=2 tests/train/train_example_text_lm.py train.parallel.mode=pp

Any field of `ExampleConfig` can be overridden as `key.sub=value`, on top of the defaults below. It is the
whole recipe a system's `train` command needs: init_distributed -> seed -> model -> sharded loader ->
Trainer.fit. Bytes are the tokens (vocabulary 256), so nothing needs a trained tokenizer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gensys.config import apply_overrides, from_dict, to_dict
from gensys.models.decoder_lm import DecoderLM, DecoderLMConfig, llama_config
from gensys.train import (
    ResumableLoader,
    TrainConfig,
    Trainer,
    destroy_distributed,
    init_distributed,
    lm_eval_fn,
    seed_everything,
)

ROOT = Path(__file__).resolve().parents[2]


def _model() -> DecoderLMConfig:
    return llama_config(vocab_size=256, d_model=128, n_layers=4, n_heads=4, d_ff=352, max_seq_len=256)


def _train() -> TrainConfig:
    return TrainConfig(
        lr=3e-3,
        warmup_steps=20,
        max_steps=300,
        micro_batch_size=16,
        eval_every=100,
        log_every=10,
        out_dir="runs/text_lm",
    )


@dataclass
class ExampleConfig:
    text: str = str(ROOT / "data/chat/pretrain/tinyshakespeare.txt")
    seq_len: int = 128
    val_fraction: float = 0.05
    model: DecoderLMConfig = field(default_factory=_model)
    train: TrainConfig = field(default_factory=_train)


class ByteWindows:
    """Non-overlapping windows of seq_len + 1 bytes: inputs are the first seq_len, labels the last."""

    def __init__(self, data: torch.Tensor, seq_len: int) -> None:
        self.data, self.seq_len = data, seq_len

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        w = self.data[i * self.seq_len : (i + 1) * self.seq_len + 1]
        return {"input_ids": w[:-1], "labels": w[1:]}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def main(argv: list[str]) -> dict:
    # Overrides go on top of this example's defaults (gensys.config.load_config would rebuild a partially
    # overridden section from the dataclass's class defaults, dropping the factories' values).
    cfg = from_dict(ExampleConfig, apply_overrides(to_dict(ExampleConfig()), argv), source="overrides")
    env = init_distributed(cfg.train.parallel, cfg.train.device)
    seed_everything(cfg.train.seed)
    model = DecoderLM(cfg.model)
    data = torch.frombuffer(bytearray(Path(cfg.text).read_bytes()), dtype=torch.uint8).long()
    n_val = int(len(data) * cfg.val_fraction)
    train_set, val_set = ByteWindows(data[:-n_val], cfg.seq_len), ByteWindows(data[-n_val:], cfg.seq_len)
    loader = ResumableLoader(
        train_set,
        cfg.train.micro_batch_size,
        collate,
        seed=cfg.train.seed,
        rank=env.dp_rank,
        world_size=env.dp_size,
    )
    eval_fn = lm_eval_fn(val_set, cfg.train.micro_batch_size, collate, max_batches=cfg.train.eval_steps)
    summary = Trainer(model, cfg.train, train_data=loader, eval_fn=eval_fn).fit()
    if env.is_main:
        print(json.dumps(summary))
    destroy_distributed()
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
