"""decoder_lm with `segment_ids` (packed rows): each packed example gets exactly the logits and the loss
gradient it would get run alone, in GPT-2 style (learned positions) and Llama style (RoPE, GQA)."""

from __future__ import annotations

import pytest
import torch

from gensys.data.batching import IGNORE_INDEX
from gensys.models.decoder_lm import DecoderLM, gpt2_config, llama_config
from gensys.nn.attention import segment_positions
from gensys.train.losses import lm_loss, token_cross_entropy

V = 53
STYLES = {
    "gpt2": lambda: gpt2_config(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=64),
    "llama_gqa": lambda: llama_config(
        vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=64
    ),
}


def _model(style: str) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(STYLES[style]()).eval()


def _examples(lengths: list[int], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, labels) per example: labels shifted inside the example, the first 2 (a 'prompt') and the last
    ignored, as `supervised_example` makes them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(1, V, (n,), generator=g)
        labels = torch.full((n,), IGNORE_INDEX)
        labels[2:-1] = ids[3:]
        out.append((ids, labels))
    return out


def _pack(rows: list[list[tuple[torch.Tensor, torch.Tensor]]], t: int) -> dict[str, torch.Tensor]:
    """Right-padded packed batch written out by hand: segment k+1 for the k-th example of a row."""
    batch = {
        "input_ids": torch.zeros(len(rows), t, dtype=torch.long),
        "labels": torch.full((len(rows), t), IGNORE_INDEX),
        "segment_ids": torch.zeros(len(rows), t, dtype=torch.long),
    }
    for r, examples in enumerate(rows):
        s = 0
        for k, (ids, labels) in enumerate(examples):
            batch["input_ids"][r, s : s + len(ids)] = ids
            batch["labels"][r, s : s + len(ids)] = labels
            batch["segment_ids"][r, s : s + len(ids)] = k + 1
            s += len(ids)
    return batch


@pytest.mark.parametrize("style", sorted(STYLES))
def test_packed_logits_and_grads_equal_each_example_alone(style: str) -> None:
    model = _model(style)
    rows = [_examples([6, 9, 5], seed=1), _examples([11, 4], seed=2)]  # row 0: 3 examples + 3 padding
    batch = _pack(rows, t=23)

    logits = model(batch["input_ids"], segment_ids=batch["segment_ids"])  # (2, 23, V)
    assert torch.isfinite(logits).all()  # padding rows of the mask are never empty
    for r, examples in enumerate(rows):
        s = 0
        for ids, _ in examples:
            alone = model(ids[None])[0]  # (n, V)
            torch.testing.assert_close(logits[r, s : s + len(ids)], alone, atol=1e-5, rtol=1e-5)
            s += len(ids)

    # Gradient of the packed loss (the trainer's lm_loss, normalised by target tokens) equals that of the
    # examples' losses summed one by one under the same normalisation.
    params = [model.tok_emb.weight, model.blocks[0].attn.q_proj.weight, model.blocks[1].mlp.down_proj.weight]
    loss_sum, n, _ = lm_loss(model, batch)
    got = torch.autograd.grad(loss_sum / n, params)
    total = sum(token_cross_entropy(model(ids[None]), labels[None])[0] for ex in rows for ids, labels in ex)
    n_ref = sum(int((labels != IGNORE_INDEX).sum()) for ex in rows for _, labels in ex)
    assert int(n) == n_ref
    want = torch.autograd.grad(total / n_ref, params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)


def test_packing_without_segment_ids_does_contaminate() -> None:
    """The check above has teeth: plain causal attention over the same row changes later examples."""
    model = _model("llama_gqa")
    batch = _pack([_examples([6, 9, 5], seed=1)], t=20)
    ids2 = batch["input_ids"][0, 6:15]
    with torch.no_grad():
        plain = model(batch["input_ids"])[0, 6:15]
        alone = model(ids2[None])[0]
    assert (plain - alone).abs().max() > 1e-3


def test_segment_positions_restart_per_example() -> None:
    seg = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 2, 2, 2]])
    want = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 0], [0, 1, 2, 3, 4, 0, 1, 2]])
    assert torch.equal(segment_positions(seg), want)


def test_segment_ids_refuse_a_cache_or_mask() -> None:
    model = _model("llama_gqa")
    ids = torch.randint(1, V, (1, 5))
    seg = torch.ones_like(ids)
    with pytest.raises(ValueError, match="segment_ids"):
        model(ids, segment_ids=seg, cache=model.new_cache())
    with pytest.raises(ValueError, match="segment_ids"):
        model(ids, segment_ids=seg, attention_mask=torch.ones_like(ids, dtype=torch.bool))
