"""Turning token-id lists into tensors: padding (left or right) and packing documents into fixed-length rows.

Conventions shared with the models (see CONTRIBUTING.md): masks are bool with True = real token; positions of
a left-padded row are `cumsum(mask) - 1` (`gensys.nn.positions.positions_from_mask`) so a row's result never
depends on the other rows; labels use `IGNORE_INDEX` (-100, as in `gensys.train.losses` and PyTorch's
cross-entropy default) where no loss is taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from gensys.nn.attention import build_segment_mask

IGNORE_INDEX = -100


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right", pad_to: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to `(ids (B, T) long, mask (B, T) bool)`; T = longest row, or `pad_to` if given.

    `side="left"` puts padding before the tokens (for decoder-only generation, so every row ends at T-1).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if len(seqs) == 0:
        raise ValueError("pad_batch needs at least one sequence")
    longest = max(len(s) for s in seqs)
    T = longest if pad_to is None else pad_to
    if longest > T:
        raise ValueError(f"a sequence has {longest} tokens, more than pad_to={T}")
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)  # (B, T)
    for i, s in enumerate(seqs):
        n = len(s)
        if n == 0:
            continue
        sl = slice(T - n, T) if side == "left" else slice(0, n)
        ids[i, sl] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, sl] = True
    return ids, mask


def shift_labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token labels (B, T) for a padded batch: labels[:, t] = ids[:, t+1], IGNORE_INDEX where the target
    is padding or past the end (so `cross_entropy(logits.flatten(0, 1), labels.flatten())` is the LM loss)."""
    labels = torch.full_like(ids, IGNORE_INDEX)  # (B, T)
    labels[:, :-1] = torch.where(mask[:, 1:] & mask[:, :-1], ids[:, 1:], IGNORE_INDEX)
    return labels


@dataclass
class PackedBatch:
    """Documents packed into rows of `seq_len` tokens.

    Attention must stay inside a document: use `doc_ids` (or `block_causal_mask(doc_ids)`); `positions`
    restart at 0 for each document segment; `labels` are next-token targets within the same segment and
    IGNORE_INDEX elsewhere (segment ends and padding).
    """

    input_ids: torch.Tensor  # (N, T) long
    doc_ids: torch.Tensor  # (N, T) long: index of the segment within its row, -1 on padding
    positions: torch.Tensor  # (N, T) long
    labels: torch.Tensor  # (N, T) long

    @property
    def loss_mask(self) -> torch.Tensor:
        """(N, T) bool: where a label is taken."""
        return self.labels != IGNORE_INDEX

    @property
    def attention_mask(self) -> torch.Tensor:
        """(N, T) bool: real (non-padding) tokens."""
        return self.doc_ids >= 0


def pack_documents(
    docs: Iterable[Sequence[int]],
    seq_len: int,
    pad_id: int,
    eos_id: int | None = None,
    split_docs: bool = True,
) -> PackedBatch:
    """Pack documents (id lists) into rows of `seq_len` tokens, in order.

    `eos_id` is appended to each document first (so the model learns to stop). With `split_docs=True` rows
    are filled completely and a document may continue on the next row (no padding except in the last row);
    with `split_docs=False` a document that does not fit starts a new row, and one longer than `seq_len` is
    cut into `seq_len` pieces. Empty documents are skipped.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    rows: list[list[int]] = []
    segs: list[list[int]] = []  # per row: segment lengths
    cur: list[int] = []
    cur_segs: list[int] = []

    def close_row() -> None:
        nonlocal cur, cur_segs
        if cur:
            rows.append(cur)
            segs.append(cur_segs)
        cur, cur_segs = [], []

    for doc in docs:
        toks = [int(t) for t in doc]
        if not toks:
            continue
        if eos_id is not None:
            toks.append(eos_id)
        if not split_docs and len(cur) + len(toks) > seq_len:
            close_row()
        while toks:
            room = seq_len - len(cur)
            piece, toks = toks[:room], toks[room:]
            cur.extend(piece)
            cur_segs.append(len(piece))
            if len(cur) == seq_len:
                close_row()
    close_row()
    if not rows:
        raise ValueError("pack_documents got no non-empty documents")

    N = len(rows)
    input_ids = torch.full((N, seq_len), pad_id, dtype=torch.long)  # (N, T)
    doc_ids = torch.full((N, seq_len), -1, dtype=torch.long)  # (N, T)
    positions = torch.zeros((N, seq_len), dtype=torch.long)  # (N, T)
    for r, (row, lengths) in enumerate(zip(rows, segs)):
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        start = 0
        for k, n in enumerate(lengths):
            doc_ids[r, start : start + n] = k
            positions[r, start : start + n] = torch.arange(n)
            start += n
    labels = torch.full_like(input_ids, IGNORE_INDEX)  # (N, T)
    same_doc = (doc_ids[:, 1:] == doc_ids[:, :-1]) & (doc_ids[:, 1:] >= 0)  # (N, T-1)
    labels[:, :-1] = torch.where(same_doc, input_ids[:, 1:], IGNORE_INDEX)
    return PackedBatch(input_ids, doc_ids, positions, labels)


def block_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(N, T) segment ids -> (N, T, T) bool attention mask (True = may attend): causal and within a segment.

    Padding positions (-1) attend only to themselves so no softmax row is empty (which would give NaN).
    The model builds the same mask from `segment_ids = doc_ids + 1` (`DecoderLM(..., segment_ids=...)`).
    """
    return build_segment_mask(doc_ids + 1)[:, 0]  # (N, T, T)
