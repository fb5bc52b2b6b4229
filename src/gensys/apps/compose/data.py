"""AESLC emails for Smart Compose: cleaning, de-duplication, tokenizer, and the LM's example layout.

An example is `<bos> subject <sep> previous email <sep> body <eos>`; the loss covers body and `<eos>` only,
so the model learns to continue a draft given its subject (and, when there is one, the email it answers).
The same `context_ids` builds the prompt at serving time, so training and serving cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gensys.apps.compose.config import DataConfig
from gensys.data.atomic import atomic_write_text
from gensys.data.batching import IGNORE_INDEX, pad_batch
from gensys.data.readers import data_path, iter_jsonl
from gensys.data.tokenizer import Tokenizer, train_bpe
from gensys.errors import DataError

SPLITS = ("train", "dev", "test")
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<sep>"]


@dataclass(frozen=True)
class Email:
    """One cleaned email; `folder` (user_folder) groups emails of one mailbox folder."""

    id: str
    subject: str
    body: str

    @property
    def folder(self) -> str:
        return self.id.rsplit("_", 1)[0]


_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Whitespace-normalised text: runs of spaces/tabs become one space, lines are stripped at the right,
    at most one blank line in a row (AESLC bodies often carry double spaces left by its own clean-up)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", ln).strip() for ln in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _dedup_key(body: str) -> str:
    return hashlib.sha1(" ".join(body.lower().split()).encode("utf-8")).hexdigest()


def read_split(path: Path, min_words: int, limit: int = 0) -> list[Email]:
    """Cleaned emails of one AESLC JSONL file (bodies shorter than `min_words` words are dropped)."""
    out: list[Email] = []
    for obj in iter_jsonl(path):
        if "body" not in obj or "id" not in obj:
            raise DataError(f"{path}: record without 'id'/'body': {str(obj)[:80]}")
        body = clean_text(str(obj["body"]))
        if len(body.split()) < min_words:
            continue
        out.append(Email(str(obj["id"]), clean_text(str(obj.get("subject", ""))), body))
        if limit and len(out) >= limit:
            break
    return out


def dedupe(splits: dict[str, list[Email]]) -> tuple[dict[str, list[Email]], dict[str, int]]:
    """Drop repeated bodies inside each split and bodies of train/dev that also occur in a later split.

    Test wins over dev and dev over train, so evaluation never scores an email the model was trained on.
    """
    seen: set[str] = set()
    out: dict[str, list[Email]] = {}
    dropped: dict[str, int] = {}
    for name in ("test", "dev", "train"):
        kept = []
        for e in splits.get(name, []):
            key = _dedup_key(e.body)
            if key in seen:
                continue
            seen.add(key)
            kept.append(e)
        dropped[name] = len(splits.get(name, [])) - len(kept)
        out[name] = kept
    return {k: out[k] for k in SPLITS if k in out}, dropped


def prepare(cfg: DataConfig) -> dict:
    """Clean, de-duplicate and write the splits and a byte-level BPE tokenizer to `cfg.prepared_dir`.

    Returns the statistics also written to `stats.json`.
    """
    files = {"train": cfg.train_file, "dev": cfg.dev_file, "test": cfg.test_file}
    raw = {}
    for name, rel in files.items():
        limit = cfg.max_train_emails if name == "train" else cfg.max_eval_emails
        raw[name] = read_split(data_path(rel, cfg.data_dir or None), cfg.min_body_words, limit)
    splits, dropped = dedupe(raw)
    texts = [e.subject for e in splits["train"]] + [e.body for e in splits["train"]]
    tok = train_bpe(texts, cfg.vocab_size, special_tokens=SPECIALS)
    out = Path(cfg.prepared_dir)
    for name, emails in splits.items():
        lines = "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in emails)
        atomic_write_text(out / f"{name}.jsonl", lines)
    tok.save(out)
    stats = {
        "emails": {k: len(v) for k, v in splits.items()},
        "duplicates_dropped": dropped,
        "body_words": {k: sum(len(e.body.split()) for e in v) for k, v in splits.items()},
        "vocab_size": tok.vocab_size,
    }
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    return stats


def load_prepared(cfg: DataConfig) -> tuple[dict[str, list[Email]], Tokenizer]:
    """The splits and tokenizer written by `prepare` (a clear error if `prepare` has not run)."""
    root = Path(cfg.prepared_dir)
    if not (root / "tokenizer.json").is_file():
        raise DataError(f"{root} has no prepared data: run `gensys compose prepare` first")
    splits = {name: [Email(**obj) for obj in iter_jsonl(root / f"{name}.jsonl")] for name in SPLITS}
    return splits, Tokenizer.load(root)


# ----------------------------------------------------------------------------------------------------------
# example layout


def context_ids(
    tok: Tokenizer, subject: str, previous: str, subject_max: int, previous_max: int
) -> list[int]:
    """`<bos> subject <sep> previous <sep>`: the prompt head shared by training and serving.

    The subject keeps its first tokens, the previous email its first tokens (its opening says what it asks).
    """
    sep = tok.special_id("sep")
    subj = tok.encode(subject)[:subject_max] if subject else []
    prev = tok.encode(previous)[:previous_max] if previous else []
    return [tok.bos_id, *subj, sep, *prev, sep]


class LMExamples(Sequence):
    """Training examples `(ids, context length)`, built once (the `previous` email is drawn with a seed).

    Labels are the next tokens for body positions and IGNORE_INDEX over the context, so the loss (and the
    perplexity) covers what the user would type.
    """

    def __init__(self, emails: list[Email], tok: Tokenizer, cfg: DataConfig, seed: int = 0) -> None:
        rng = random.Random(seed)
        bodies = tok.encode_batch([e.body for e in emails])
        self.items: list[tuple[list[int], int]] = []  # (ids incl. eos, context length)
        for i, (e, body) in enumerate(zip(emails, bodies)):
            previous = ""
            if i > 0 and emails[i - 1].folder == e.folder and rng.random() < cfg.previous_prob:
                previous = emails[i - 1].body
            ctx = context_ids(tok, e.subject, previous, cfg.subject_max_tokens, cfg.previous_max_tokens)
            ids = (ctx + body + [tok.eos_id])[: cfg.max_seq_len + 1]
            self.items.append((ids, len(ctx)))
        self.pad_id = tok.pad_id

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.items[i]

    def target_tokens(self) -> int:
        """Body tokens (+ eos) that carry a loss, over the whole set."""
        return sum(len(ids) - ctx for ids, ctx in self.items)


class LengthBuckets(Sequence):
    """Batches of examples of similar length, formed once (seeded); a loader then shuffles whole batches.

    Emails range from a few to hundreds of tokens, so random batches are mostly padding; grouping examples
    of similar length first keeps the compute on real tokens. Each item is one batch (a list of examples).
    """

    def __init__(self, examples: Sequence, batch_size: int, seed: int = 0, pool: int = 50) -> None:
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        self.batches: list[list] = []
        span = batch_size * pool  # sort within pools so batches still mix emails from all over the corpus
        for s in range(0, len(order), span):
            chunk = sorted(order[s : s + span], key=lambda i: len(examples[i][0]))
            for b in range(0, len(chunk), batch_size):
                self.batches.append([examples[i] for i in chunk[b : b + batch_size]])
        # Batches leave each pool shortest first; shuffled, any first k of them (the trainer's `eval_steps`
        # dev batches) are a fair sample rather than the shortest emails, whose perplexity is half the rest.
        random.Random(seed + 1).shuffle(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list:
        return self.batches[i]


def collate(items: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch {"input_ids", "labels"} (B, T); labels only on body tokens.

    No attention mask: with right padding no real token ever attends to a pad (they come after it), so the
    model keeps SDPA's causal fast path.
    """
    ids, _ = pad_batch([x[:-1] for x, _ in items], pad_id, side="right")  # (B, T)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for b, (x, ctx) in enumerate(items):
        n = len(x) - 1
        # position t predicts x[t + 1]; only body tokens (index >= ctx) are targets
        labels[b, ctx - 1 : n] = torch.as_tensor(x[ctx:], dtype=torch.long)
    return {"input_ids": ids, "labels": labels}


__all__ = [
    "Email",
    "LMExamples",
    "LengthBuckets",
    "SPECIALS",
    "SPLITS",
    "clean_text",
    "collate",
    "context_ids",
    "dedupe",
    "load_prepared",
    "prepare",
    "read_split",
]
