"""Datasets of the chat pipeline: pretraining documents, SFT pairs, preference pairs, evaluation prompts.

File names under the data directory (see data/chat/SOURCE.md and data/README.md):

    chat/pretrain/tinyshakespeare.txt, wikitext2_tokenized_{valid,test}.txt.gz
    compose/aeslc_train.jsonl.gz (email bodies), rag/{questions,answers}.jsonl.gz (Stack Exchange posts)
    translate/train.en.gz (Multi30k English side)
    chat/sft/sft_train.jsonl (train + dev by id hash), chat/sft/eval_user_oriented_252.jsonl (evaluation only)
    chat/preference/hh_harmless_pairs_{train,eval}.jsonl.gz

Also the batching helpers: a resumable length-bucketed loader (SFT/RM/DPO examples vary from 20 to 400
tokens; random batches would be mostly padding on a CPU) and collate functions for right-padded batches.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gensys.apps.chat.config import DataConfig
from gensys.apps.chat.template import Message, parse_hh_dialogue, sft_messages
from gensys.data.batching import IGNORE_INDEX, pad_batch
from gensys.data.readers import data_dir, iter_lines, read_jsonl, read_lines, read_text
from gensys.errors import DataError

SHAKESPEARE = "chat/pretrain/tinyshakespeare.txt"
WIKITEXT_VALID = "chat/pretrain/wikitext2_tokenized_valid.txt.gz"
WIKITEXT_TEST = "chat/pretrain/wikitext2_tokenized_test.txt.gz"
AESLC = "compose/aeslc_train.jsonl.gz"
SE_QUESTIONS = "rag/questions.jsonl.gz"
SE_ANSWERS = "rag/answers.jsonl.gz"
MULTI30K_EN = "translate/train.en.gz"
SFT_TRAIN = "chat/sft/sft_train.jsonl"
USER_ORIENTED = "chat/sft/eval_user_oriented_252.jsonl"
PREF_TRAIN = "chat/preference/hh_harmless_pairs_train.jsonl.gz"
PREF_EVAL = "chat/preference/hh_harmless_pairs_eval.jsonl.gz"


def _path(cfg: DataConfig, relative: str) -> Path:
    root = data_dir(cfg.data_dir or None)
    path = root / relative
    if not path.is_file():
        raise DataError(f"{relative} not found under {root} (set data.data_dir or $GENSYS_DATA)")
    return path


# ---------------------------------------------------------------------------------------------------------
# pretraining text


def detok_wikitext(text: str) -> str:
    """Undo WikiText's tokenised separators (" @-@ " -> "-", " @,@ " -> ",", " @.@ " -> ".")."""
    return text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")


def wikitext_articles(path: Path) -> list[str]:
    """Articles of a WikiText file: a new one starts at each top-level " = Title = " heading."""
    articles: list[list[str]] = []
    for line in iter_lines(path):
        if re.match(r"^ = [^=].* = $", line) or not articles:
            articles.append([])
        if line.strip():
            articles[-1].append(detok_wikitext(line.strip()))
    return ["\n".join(a) for a in articles if a]


def _chunks(paragraphs: Sequence[str], size: int, sep: str) -> list[str]:
    """Group consecutive paragraphs into documents of about `size` characters."""
    docs, cur, n = [], [], 0
    for p in paragraphs:
        cur.append(p)
        n += len(p)
        if n >= size:
            docs.append(sep.join(cur))
            cur, n = [], 0
    if cur:
        docs.append(sep.join(cur))
    return docs


def source_documents(cfg: DataConfig, name: str) -> list[str]:
    """The documents of one pretraining source, in file order."""
    if name == "shakespeare":
        speeches = [s.strip() for s in read_text(_path(cfg, SHAKESPEARE)).split("\n\n") if s.strip()]
        return _chunks(speeches, 2000, "\n\n")
    if name == "wikitext_valid":
        return wikitext_articles(_path(cfg, WIKITEXT_VALID))
    if name == "aeslc":
        return [r["body"] for r in read_jsonl(_path(cfg, AESLC)) if r.get("body", "").strip()]
    if name == "stackexchange":
        qs = [f"{q['title']}\n\n{q['body_text']}".strip() for q in read_jsonl(_path(cfg, SE_QUESTIONS))]
        ans = [a["body_text"].strip() for a in read_jsonl(_path(cfg, SE_ANSWERS))]
        return [d for d in qs + ans if d]
    if name == "multi30k":
        return _chunks([s for s in read_lines(_path(cfg, MULTI30K_EN)) if s.strip()], 1500, "\n")
    raise ValueError(f"unknown pretraining source {name!r}")


def pretrain_documents(cfg: DataConfig, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, val) documents of every configured source; every `val_every`-th document goes to val.

    `max_chars_per_source` keeps a seeded random subset of each source (small runs see every source).
    """
    train: list[str] = []
    val: list[str] = []
    sources = [(name, source_documents(cfg, name)) for name in cfg.pretrain_sources]
    for path in cfg.extra_text:
        sources.append((path, _chunks([s for s in read_lines(path) if s.strip()], 2000, "\n")))
    for name, docs in sources:
        if cfg.max_chars_per_source > 0:
            order = list(range(len(docs)))
            random.Random(f"{seed}-{name}").shuffle(order)
            kept, n = [], 0
            for i in order:
                if n >= cfg.max_chars_per_source:
                    break
                kept.append(i)
                n += len(docs[i])
            docs = [docs[i] for i in sorted(kept)]
        for i, d in enumerate(docs):
            (val if i % cfg.val_every == cfg.val_every - 1 else train).append(d)
    if not train:
        raise DataError("no pretraining text: data.pretrain_sources and data.extra_text are empty")
    return train, val


def wikitext_test(cfg: DataConfig) -> list[str]:
    """WikiText-2 test articles (held out from everything), separators undone like the training copy."""
    return wikitext_articles(_path(cfg, WIKITEXT_TEST))


# ---------------------------------------------------------------------------------------------------------
# SFT and evaluation prompts


@dataclass
class ChatExample:
    """A prompt (chat messages) and a reference reply."""

    id: str
    messages: list[Message]
    response: str


def _is_dev(example_id: str, fraction: float) -> bool:
    h = int(hashlib.sha1(example_id.encode("utf-8")).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def read_sft(cfg: DataConfig, system: str = "") -> tuple[list[ChatExample], list[ChatExample]]:
    """(train, dev) SFT examples from sft_train.jsonl; the dev split is a stable hash of each id."""
    rows = read_jsonl(_path(cfg, SFT_TRAIN))
    if cfg.max_sft_examples > 0:
        rows = rows[: cfg.max_sft_examples]
    train: list[ChatExample] = []
    dev: list[ChatExample] = []
    for r in rows:
        msgs = sft_messages(r["instruction"], r.get("input", ""), system)
        ex = ChatExample(f"{r.get('source', '')}:{r['id']}", msgs, r["output"])
        (dev if _is_dev(ex.id, cfg.sft_dev_fraction) else train).append(ex)
    if not train or not dev:
        raise DataError(f"SFT split is empty (train {len(train)}, dev {len(dev)}): use more examples")
    return train, dev


def read_user_oriented(cfg: DataConfig, system: str = "") -> list[ChatExample]:
    """Self-Instruct's 252 user-oriented tasks (instance 0 of each): evaluation only, never trained on."""
    out = []
    for r in read_jsonl(_path(cfg, USER_ORIENTED)):
        inst = (r.get("instances") or [{}])[0]
        msgs = sft_messages(r["instruction"], inst.get("input", ""), system)
        out.append(ChatExample(r["id"], msgs, inst.get("output", "")))
    return out


# ---------------------------------------------------------------------------------------------------------
# preference pairs


@dataclass
class PreferencePair:
    """A prompt and two replies, `chosen` preferred over `rejected`."""

    id: str
    messages: list[Message]
    chosen: str
    rejected: str


def _hh_pair(r: dict[str, Any]) -> PreferencePair:
    if r.get("prompt_matches", True):
        return PreferencePair(f"hh:{r['idx']}", parse_hh_dialogue(r["prompt"]), r["chosen"], r["rejected"])
    # The two dialogues differ before the last turn: keep the chosen one's history for both replies.
    chosen_msgs = parse_hh_dialogue(r["chosen_full"])
    rejected_msgs = parse_hh_dialogue(r["rejected_full"])
    prompt = chosen_msgs[:-1] if chosen_msgs and chosen_msgs[-1]["role"] == "assistant" else chosen_msgs
    last = rejected_msgs[-1]["content"] if rejected_msgs else r["rejected"]
    return PreferencePair(f"hh:{r['idx']}", prompt, chosen_msgs[-1]["content"], last)


def read_preference(cfg: DataConfig, split: str) -> list[PreferencePair]:
    """Anthropic HH harmless pairs of `split`: "train" (less the dev pairs), "dev" (`pref_dev_pairs` drawn
    from the train file with a fixed seed, for choosing checkpoints) or "eval"."""
    if split not in ("train", "dev", "eval"):
        raise ValueError(f"unknown preference split {split!r}")
    rel = PREF_EVAL if split == "eval" else PREF_TRAIN
    limit = cfg.max_pref_eval if split == "eval" else cfg.max_pref_train
    rows = read_jsonl(_path(cfg, rel))
    if limit > 0:
        rows = rows[:limit]
    pairs = [_hh_pair(r) for r in rows]
    pairs = [p for p in pairs if p.messages and p.chosen.strip() and p.rejected.strip()]
    if split == "eval":
        return pairs
    n_dev = cfg.pref_dev_pairs
    if n_dev >= len(pairs):
        raise DataError(f"data.pref_dev_pairs={n_dev} leaves none of {len(pairs)} train pairs to train on")
    dev = set(random.Random(12345).sample(range(len(pairs)), n_dev)) if n_dev > 0 else set()
    return [p for i, p in enumerate(pairs) if (i in dev) == (split == "dev")]


def se_vote_pairs(
    cfg: DataConfig, n: int, min_gap: int, seed: int = 0, max_chars: int = 1500
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out) helpfulness pairs from Stack Exchange votes: for one question, an answer scored at
    least `min_gap` higher is "chosen" over a lower one. At most one pair per question (the top vs the bottom
    answer) so no question dominates; 10% of the questions are held out."""
    questions = {(q["site"], q["id"]): q for q in read_jsonl(_path(cfg, SE_QUESTIONS))}
    answers: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for a in read_jsonl(_path(cfg, SE_ANSWERS)):
        answers[(a["site"], a["question_id"])].append(a)
    pairs = []
    for key, group in sorted(answers.items()):
        q = questions.get(key)
        if q is None or len(group) < 2:
            continue
        group = sorted(group, key=lambda a: a["score"])
        lo, hi = group[0], group[-1]
        if hi["score"] - lo["score"] < min_gap:
            continue
        msgs = [{"role": "user", "content": f"{q['title']}\n\n{q['body_text']}"[:max_chars]}]
        chosen, rejected = hi["body_text"][:max_chars], lo["body_text"][:max_chars]
        pairs.append(PreferencePair(f"se:{key[0]}:{key[1]}", msgs, chosen, rejected))
    random.Random(seed).shuffle(pairs)
    n_eval = max(1, len(pairs) // 10)
    return pairs[n_eval:][:n], pairs[:n_eval]


def prompt_pool(cfg: DataConfig, sources: Sequence[str], system: str = "") -> list[list[Message]]:
    """Training prompts for PPO: HH train prompts and/or SFT train prompts (never an evaluation prompt)."""
    pool: list[list[Message]] = []
    if "hh" in sources:
        pool += [p.messages for p in read_preference(cfg, "train")]
    if "sft" in sources:
        pool += [ex.messages for ex in read_sft(cfg, system)[0]]
    if not pool:
        raise DataError("PPO has no prompts: ppo.prompt_sources is empty")
    return pool


# ---------------------------------------------------------------------------------------------------------
# batching


class BucketedLoader:
    """Endless shuffled batches of similar length, resumable (the trainer's `ResumableIterator`).

    Each epoch shuffles the items with a generator seeded by (seed, epoch), cuts the order into windows of
    `batch_size * 16` items, sorts each window by length, slices it into batches and shuffles the batches,
    so batches hold similar lengths yet their order stays random. Incomplete trailing batches are dropped.
    """

    def __init__(
        self,
        items: Sequence[Any],
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any],
        length_fn: Callable[[Any], int],
        *,
        seed: int = 0,
        window: int = 16,
    ) -> None:
        if len(items) < batch_size:
            raise ValueError(f"{len(items)} items are too few for batch_size={batch_size}")
        self.items = items
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.lengths = [length_fn(it) for it in items]
        self.seed = seed
        self.window = window
        self.epoch = 0
        self.index = 0
        self._batches: list[list[int]] = []
        self._batches_epoch = -1

    def _epoch_batches(self) -> list[list[int]]:
        if self._batches_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(len(self.items), generator=g).tolist()
            w = self.batch_size * self.window
            batches = []
            for s in range(0, len(order), w):
                chunk = sorted(order[s : s + w], key=lambda i: self.lengths[i])
                batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
            batches = [b for b in batches if len(b) == self.batch_size]
            perm = torch.randperm(len(batches), generator=g).tolist()
            self._batches = [batches[i] for i in perm]
            self._batches_epoch = self.epoch
        return self._batches

    def __len__(self) -> int:
        return len(self.items) // self.batch_size

    def __iter__(self) -> BucketedLoader:
        return self

    def __next__(self) -> Any:
        batches = self._epoch_batches()
        if self.index >= len(batches):
            self.epoch += 1
            self.index = 0
            batches = self._epoch_batches()
        idx = batches[self.index]
        self.index += 1
        return self.collate_fn([self.items[i] for i in idx])

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"resuming a loader seeded {state['seed']} with seed {self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """(B, T) long tensor of id lists padded on the right with `value`."""
    t = max(len(r) for r in rows)
    out = torch.full((len(rows), t), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out


def pack_examples(items: Sequence[dict[str, list[int]]], max_len: int) -> list[dict[str, list[int]]]:
    """Whole examples packed into rows of at most `max_len` tokens, first-fit decreasing by length.

    Items are `{"input_ids", "labels"}` with labels already shifted inside the example (IGNORE_INDEX on the
    prompt and on the last token), so no label reaches into the next example. Each row is `{"input_ids",
    "labels", "segment_ids"}`, segment_ids 1..k numbering its examples; the model's block-diagonal mask
    (`DecoderLM(..., segment_ids=...)`) keeps them from attending to each other. Examples are never split:
    one longer than `max_len` is an error (`supervised_example` truncates when encoding).
    """
    lengths = [len(it["input_ids"]) for it in items]
    too_long = [n for n in lengths if n > max_len]
    if too_long:
        raise ValueError(f"{len(too_long)} examples exceed max_len={max_len} (longest {max(too_long)})")
    order = sorted((i for i in range(len(items)) if lengths[i] > 0), key=lambda i: (-lengths[i], i))
    room = np.zeros(len(order), dtype=np.int64)  # free tokens of each open row
    rows: list[list[int]] = []  # example indices per row
    for i in order:
        n = lengths[i]
        r = int(np.argmax(room[: len(rows)] >= n)) if rows else 0
        if not rows or room[r] < n:  # argmax of all-False is 0: no row has room
            r = len(rows)
            rows.append([])
            room[r] = max_len
        rows[r].append(i)
        room[r] -= n
    packed = []
    for members in rows:
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "segment_ids": []}
        for k, i in enumerate(members, start=1):
            row["input_ids"] += items[i]["input_ids"]
            row["labels"] += items[i]["labels"]
            row["segment_ids"] += [k] * lengths[i]
        packed.append(row)
    return packed


def collate_lm(items: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """SFT batch: right-padded `input_ids` and `labels` (IGNORE_INDEX on padding), plus `segment_ids` (0 on
    padding) when the items are packed rows (`pack_examples`).

    No attention mask: with right padding a real token never attends to the padding after it (causal), so
    unpacked batches keep the fast unmasked causal path.
    """
    batch = {
        "input_ids": pad_right([it["input_ids"] for it in items], pad_id),  # (B, T)
        "labels": pad_right([it["labels"] for it in items], IGNORE_INDEX),  # (B, T)
    }
    if "segment_ids" in items[0]:
        batch["segment_ids"] = pad_right([it["segment_ids"] for it in items], 0)  # (B, T)
    return batch


def collate_pairs(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Preference batch: rows 0..B-1 chosen, B..2B-1 rejected, right-padded, with labels and a mask.

    Items hold `chosen`/`rejected` `(ids, labels)` and optionally `ref_chosen`/`ref_rejected` log-probs.
    """
    rows = [it["chosen"] for it in items] + [it["rejected"] for it in items]
    ids, mask = pad_batch([r[0] for r in rows], pad_id, side="right")  # (2B, T)
    batch: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": pad_right([r[1] for r in rows], IGNORE_INDEX),  # (2B, T)
        "n_pairs": len(items),
    }
    if "ref_chosen" in items[0]:
        batch["ref_chosen"] = torch.tensor([it["ref_chosen"] for it in items])  # (B,)
        batch["ref_rejected"] = torch.tensor([it["ref_rejected"] for it in items])  # (B,)
    return batch


def n_pairs(batch: dict[str, Any]) -> int:
    """Token-count function of preference batches: the loss is normalised per pair."""
    return int(batch["n_pairs"])
