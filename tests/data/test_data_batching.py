"""Padding, positions, next-token labels and document packing, checked against plain-Python references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gensys.data.batching import (
    IGNORE_INDEX,
    block_causal_mask,
    pack_documents,
    pad_batch,
    shift_labels,
)
from gensys.nn.positions import positions_from_mask

PAD, EOS = 0, 2


def test_pad_right_and_left() -> None:
    seqs = [[5, 6, 7], [8], []]
    ids, mask = pad_batch(seqs, PAD)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    ids, mask = pad_batch(seqs, PAD, side="left", pad_to=4)
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8], [0, 0, 0, 0]]
    assert mask.sum(1).tolist() == [3, 1, 0] and ids.dtype == torch.long and mask.dtype == torch.bool
    assert positions_from_mask(mask, 4).tolist() == [[0, 0, 1, 2], [0, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="more than pad_to=2"):
        pad_batch(seqs, PAD, pad_to=2)
    with pytest.raises(ValueError, match="side"):
        pad_batch(seqs, PAD, side="middle")
    with pytest.raises(ValueError, match="at least one"):
        pad_batch([], PAD)


def test_left_padding_positions_match_unpadded() -> None:
    # The models' position convention on our padding: a row's real tokens get 0..n-1, as if unpadded.
    seqs = [[1, 2, 3, 4], [9, 9]]
    _, mask = pad_batch(seqs, PAD, side="left")
    pos = positions_from_mask(mask, mask.shape[1])
    for row, s in enumerate(seqs):
        assert pos[row][mask[row]].tolist() == list(range(len(s)))


def test_shift_labels_against_loop() -> None:
    seqs = [[5, 6, 7, 8], [9, 10], [11]]
    for side in ("left", "right"):
        ids, mask = pad_batch(seqs, PAD, side=side)
        labels = shift_labels(ids, mask)
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                ok = t + 1 < ids.shape[1] and mask[b, t] and mask[b, t + 1]
                assert labels[b, t].item() == (ids[b, t + 1].item() if ok else IGNORE_INDEX)


def _segments(packed, r: int) -> list[list[int]]:
    """The token lists of the segments of row r, from doc_ids."""
    out: dict[int, list[int]] = {}
    for tok, d in zip(packed.input_ids[r].tolist(), packed.doc_ids[r].tolist()):
        if d >= 0:
            out.setdefault(d, []).append(tok)
    return [out[k] for k in sorted(out)]


def test_pack_split_docs() -> None:
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33, 34]]
    p = pack_documents(docs, seq_len=4, pad_id=PAD, eos_id=EOS)
    # 13 tokens with EOS -> rows of 4: full, full, full, 1 + padding
    assert p.input_ids.tolist() == [[10, 11, 12, 2], [20, 21, 2, 30], [31, 32, 33, 34], [2, 0, 0, 0]]
    assert p.doc_ids.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, -1, -1, -1]]
    assert p.positions.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 3], [0, 0, 0, 0]]
    assert p.labels.tolist() == [
        [11, 12, 2, IGNORE_INDEX],
        [21, 2, IGNORE_INDEX, IGNORE_INDEX],
        [32, 33, 34, IGNORE_INDEX],
        [IGNORE_INDEX] * 4,
    ]
    assert p.attention_mask.sum().item() == 13


def test_pack_whole_docs() -> None:
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33, 34, 35], [], [40]]
    p = pack_documents(docs, seq_len=4, pad_id=PAD, eos_id=None, split_docs=False)
    assert p.input_ids.tolist() == [[10, 11, 12, 0], [20, 21, 0, 0], [30, 31, 32, 33], [34, 35, 40, 0]]
    assert _segments(p, 3) == [[34, 35], [40]]
    with pytest.raises(ValueError, match="no non-empty"):
        pack_documents([[], []], seq_len=4, pad_id=PAD)


@settings(max_examples=150, deadline=None)
@given(
    docs=st.lists(st.lists(st.integers(3, 50), max_size=12), min_size=1, max_size=10),
    seq_len=st.integers(1, 9),
    split=st.booleans(),
)
def test_pack_property(docs: list[list[int]], seq_len: int, split: bool) -> None:
    if not any(docs):
        return
    p = pack_documents(docs, seq_len=seq_len, pad_id=PAD, eos_id=EOS, split_docs=split)
    real = p.input_ids[p.attention_mask].tolist()
    # Nothing lost, nothing reordered.
    assert real == [t for d in docs if d for t in [*d, EOS]]
    pairs = []
    for r in range(p.input_ids.shape[0]):
        for seg in _segments(p, r):
            assert p.positions[r][p.doc_ids[r] >= 0].tolist()  # every row has real tokens
            pairs += list(zip(seg[:-1], seg[1:]))
        # positions restart at 0 for each segment
        for d in p.doc_ids[r].unique().tolist():
            if d >= 0:
                assert p.positions[r][p.doc_ids[r] == d].tolist() == list(
                    range(int((p.doc_ids[r] == d).sum()))
                )
    # Labels: exactly the next-token pairs inside each segment.
    lm = p.loss_mask
    assert sorted(zip(p.input_ids[lm].tolist(), p.labels[lm].tolist())) == sorted(pairs)
    if split:  # only the last row may have padding
        assert bool(p.attention_mask[:-1].all())


def test_block_causal_mask_against_loop() -> None:
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, -1], [0, 1, 2, 2, -1, -1]])
    m = block_causal_mask(doc_ids)
    for n in range(2):
        for q in range(6):
            for k in range(6):
                dq, dk = doc_ids[n, q].item(), doc_ids[n, k].item()
                want = (dq >= 0 and dq == dk and k <= q) or (dq < 0 and q == k)
                assert m[n, q, k].item() == want


def test_packed_attention_equals_per_document_attention() -> None:
    # Attention over a packed row with the block mask == causal attention over each document alone.
    torch.manual_seed(0)
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    p = pack_documents(docs, seq_len=12, pad_id=PAD)
    T, H, Dh = 12, 2, 8
    q, k, v = (torch.randn(1, H, T, Dh) for _ in range(3))  # (B, H, T, Dh)
    packed = F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(p.doc_ids)[:, None])
    start = 0
    for d in docs:
        sl = slice(start, start + len(d))
        alone = F.scaled_dot_product_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], is_causal=True)
        torch.testing.assert_close(packed[:, :, sl], alone)
        start += len(d)
    assert torch.isfinite(packed).all()  # padding rows attend to themselves: no NaN


def test_packed_loss_counts_tokens_once() -> None:
    # Mean loss over packed labels == mean over every document's own next-token losses.
    torch.manual_seed(0)
    V = 50
    docs = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
    p = pack_documents(docs, seq_len=5, pad_id=PAD, eos_id=EOS)
    table = torch.randn(V, V)  # logits depend only on the current token, so positions do not matter
    packed_loss = F.cross_entropy(
        table[p.input_ids].flatten(0, 1), p.labels.flatten(), ignore_index=IGNORE_INDEX
    )
    losses = []
    for r in range(p.input_ids.shape[0]):
        for seg in _segments(p, r):
            for a, b in zip(seg[:-1], seg[1:]):
                losses.append(F.cross_entropy(table[a][None], torch.tensor([b])))
    torch.testing.assert_close(packed_loss, torch.stack(losses).mean())
