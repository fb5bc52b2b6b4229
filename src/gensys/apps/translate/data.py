"""Translate data glue: corpora (Multi30k or your own files), masked-LM inputs, length-bucketed batches.

Sequence layout (one joint tokenizer for both languages):

    fine-tuning   src_ids = x_1..x_n <eos>          tgt_in = <bos> y_1..y_m      labels = y_1..y_m <eos>
    MLM           src_ids = x_1 <mask> x_3.. <eos>  tgt_in = <bos> x_1..x_n      labels = x_1..x_n <eos>

Batches are built by padded-token budget rather than sentence count: sentences are sorted by length inside a
shuffled epoch so that a batch wastes little on padding, and the batch order is shuffled again. Every epoch's
batches are a pure function of (seed, epoch), so a resumed run sees the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gensys.apps.translate.config import MULTI30K_SPLITS, DataConfig
from gensys.data.batching import IGNORE_INDEX, pad_batch
from gensys.data.readers import data_path, read_lines, read_parallel
from gensys.data.tokenizer import Tokenizer
from gensys.errors import DataError

Pair = tuple[list[int], list[int]]

# ---------------------------------------------------------------------------------------------------------
# corpora


def multi30k_path(data: DataConfig, split: str, lang: str) -> Path:
    """Path of a Multi30k file `translate/<split>.<lang>.gz` under the data directory."""
    if split not in MULTI30K_SPLITS:
        raise DataError(f"unknown split {split!r}; Multi30k has {', '.join(MULTI30K_SPLITS)}")
    return data_path(f"translate/{split}.{lang}.gz", data.data_dir or None)


def split_files(data: DataConfig, split: str) -> tuple[Path, Path]:
    """(source file, target file) of `split` ("train" / "val" / a Multi30k test split).

    Explicit `data.{train,val}_{src,tgt}` files win; otherwise the Multi30k files of `data.pair`.
    """
    explicit = {"train": (data.train_src, data.train_tgt), "val": (data.val_src, data.val_tgt)}.get(split)
    if explicit and any(explicit):
        if not all(explicit):
            raise DataError(f"data.{split}_src and data.{split}_tgt must be given together")
        return Path(explicit[0]), Path(explicit[1])
    return multi30k_path(data, split, data.src_lang), multi30k_path(data, split, data.tgt_lang)


def read_pairs(data: DataConfig, split: str, limit: int = 0) -> list[tuple[str, str]]:
    """Sentence pairs of `split` (pairs with an empty side are dropped); `limit` > 0 keeps the first N."""
    src, tgt = split_files(data, split)
    pairs = [(s.strip(), t.strip()) for s, t in read_parallel(src, tgt)]
    pairs = [(s, t) for s, t in pairs if s and t]
    if not pairs:
        raise DataError(f"no non-empty sentence pairs in {src} / {tgt}")
    return pairs[:limit] if limit > 0 else pairs


def monolingual_text(data: DataConfig, extra_files: Sequence[str] = (), limit: int = 0) -> list[str]:
    """Monolingual sentences of both languages for MLM: both sides of the training pairs + `extra_files`."""
    pairs = read_pairs(data, "train", data.max_train_pairs)
    text = [s for s, _ in pairs] + [t for _, t in pairs]
    for f in extra_files:
        text.extend(line.strip() for line in read_lines(f) if line.strip())
    return text[:limit] if limit > 0 else text


def encode_pairs(tok: Tokenizer, pairs: Sequence[tuple[str, str]], max_len: int) -> list[Pair]:
    """Token ids of each pair, each side truncated to `max_len - 1` tokens and ended with <eos>."""
    srcs = tok.encode_batch([s for s, _ in pairs])
    tgts = tok.encode_batch([t for _, t in pairs])
    eos = tok.eos_id
    return [(s[: max_len - 1] + [eos], t[: max_len - 1] + [eos]) for s, t in zip(srcs, tgts)]


def encode_sentences(tok: Tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids of each sentence, truncated to `max_len - 1` tokens and ended with <eos>."""
    eos = tok.eos_id
    return [ids[: max_len - 1] + [eos] for ids in tok.encode_batch(list(texts)) if ids]


# ---------------------------------------------------------------------------------------------------------
# masked-LM inputs


def mask_tokens(
    ids: Tensor, real: Tensor, rate: float, mask_id: int, protected: Sequence[int], generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Replace `rate` of each row's maskable tokens by `mask_id`; returns (masked ids, where masked).

    ids, real: (B, T); `real` marks non-padding positions. Tokens in `protected` (special tokens: <eos>,
    <bos>, <pad>, ...) are never masked. Each row masks `floor(rate * n + u)` of its n maskable tokens (u
    uniform in [0, 1)), so the expected fraction is exactly `rate` for every sentence length, short ones
    included, and which tokens is uniform among the maskable ones.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mask rate must be in [0, 1], got {rate}")
    maskable = real.bool().clone()  # (B, T)
    for p in protected:
        maskable &= ids != p
    n_maskable = maskable.sum(dim=1)  # (B,)
    u = torch.rand(ids.shape[0], generator=generator)
    n_mask = torch.floor(rate * n_maskable.float() + u).long().clamp(max=n_maskable)  # (B,)
    # Random priority per position; non-maskable positions go last, then the first n_mask ranks are masked.
    prio = torch.rand(ids.shape, generator=generator).masked_fill(~maskable, 2.0)  # (B, T)
    rank = prio.argsort(dim=1).argsort(dim=1)  # (B, T) rank of each position within its row
    chosen = (rank < n_mask[:, None]) & maskable
    return ids.masked_fill(chosen, mask_id), chosen


def collate_pairs(items: Sequence[Pair], pad_id: int, bos_id: int) -> dict[str, Tensor]:
    """Fine-tuning batch: src_ids/src_mask (B, S), tgt_in (B, T) = <bos> + target, labels (B, T)."""
    src_ids, src_mask = pad_batch([s for s, _ in items], pad_id)  # (B, S)
    tgt_in, _ = pad_batch([[bos_id, *t[:-1]] for _, t in items], pad_id)  # (B, T)
    labels, tgt_mask = pad_batch([t for _, t in items], pad_id)  # (B, T)
    labels = labels.masked_fill(~tgt_mask, IGNORE_INDEX)
    return {"src_ids": src_ids, "src_mask": src_mask, "tgt_in": tgt_in, "labels": labels}


def collate_mlm(
    items: Sequence[list[int]],
    pad_id: int,
    bos_id: int,
    mask_id: int,
    rate: float,
    protected: Sequence[int],
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """MLM batch: the encoder gets the sentence with masked tokens, the decoder the whole sentence shifted
    right behind <bos>; labels are every token of the sentence (and its <eos>)."""
    ids, real = pad_batch(items, pad_id)  # (B, T)
    src_ids, _ = mask_tokens(ids, real, rate, mask_id, protected, generator)
    batch = collate_pairs([(s, s) for s in items], pad_id, bos_id)
    batch["src_ids"] = src_ids
    return batch


# ---------------------------------------------------------------------------------------------------------
# batching by tokens


def _cost(item: Any) -> int:
    if isinstance(item, tuple):
        return max(len(item[0]), len(item[1]))
    return len(item)


class TokenBatchLoader:
    """Endless, resumable batches of at most `tokens_per_batch` padded tokens (longest side x sentences).

    Epoch e: shuffle with seed (seed, e), sort by length (stable, so equal lengths stay shuffled), cut into
    batches, shuffle the batch order. Data-parallel rank r takes batches r, r + world_size, ...
    `collate_fn(items, generator)` gets a generator seeded by (seed, epoch, batch) for any randomness it needs
    (MLM masking), which keeps resumed runs identical.
    """

    def __init__(
        self,
        dataset: Sequence[Any],
        tokens_per_batch: int,
        collate_fn: Callable[[list[Any], torch.Generator], Any],
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_sentences: int = 0,
    ) -> None:
        if not dataset:
            raise DataError("no training examples")
        longest = max(_cost(x) for x in dataset)
        if tokens_per_batch < longest:
            raise ValueError(f"tokens_per_batch={tokens_per_batch} is below the longest example ({longest})")
        self.dataset = dataset
        self.tokens_per_batch = tokens_per_batch
        self.collate_fn = collate_fn
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.max_sentences = max_sentences
        self.costs = torch.tensor([_cost(x) for x in dataset])
        self.epoch = 0
        self.index = 0
        self._batches: list[list[int]] = []
        self._batches_epoch = -1
        if len(self._epoch_batches()) // world_size == 0:
            raise ValueError(f"{len(dataset)} examples make fewer batches than {world_size} ranks")

    def _epoch_batches(self) -> list[list[int]]:
        if self._batches_epoch == self.epoch:
            return self._batches
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.dataset), generator=g)
        order = perm[torch.sort(self.costs[perm], stable=True).indices].tolist()
        batches: list[list[int]] = []
        cur: list[int] = []
        cur_max = 0
        for i in order:
            c = int(self.costs[i])
            full = self.max_sentences and len(cur) >= self.max_sentences
            if cur and (full or max(cur_max, c) * (len(cur) + 1) > self.tokens_per_batch):
                batches.append(cur)
                cur, cur_max = [], 0
            cur.append(i)
            cur_max = max(cur_max, c)
        if cur:
            batches.append(cur)
        shuffled = torch.randperm(len(batches), generator=g).tolist()
        self._batches = [batches[j] for j in shuffled]
        self._batches_epoch = self.epoch
        return self._batches

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self._epoch_batches()) // self.world_size

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.index >= len(self):
            self.epoch += 1
            self.index = 0
        k = self.index * self.world_size + self.rank
        idx = self._epoch_batches()[k]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + k)
        self.index += 1
        return self.collate_fn([self.dataset[i] for i in idx], g)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"resuming a loader seeded {state['seed']} with seed {self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
