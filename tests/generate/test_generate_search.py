"""Strategies on a converted tiny Llama: batch invariance, cache = recompute, seeded sampling, stops."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM

from gensys.generate import GenerationConfig, RecomputeStepper, generate
from gensys.models.convert import model_from_hf

V = 64
PAD = 1


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(3)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        vocab_size=V,
        max_position_embeddings=64,
        initializer_range=0.2,
    )
    return model_from_hf(LlamaForCausalLM(cfg).eval())


def _prompts(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (n,), generator=g) for n in lengths]


def _left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), PAD)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r) :], mask[i, t - len(r) :] = r, 1
    return ids, mask


def _eos(lm, n_new: int = 12) -> int:
    """A token the model emits mid-way through a greedy run, so EOS handling is exercised."""
    out = generate(lm, _prompts([5])[0][None], config=GenerationConfig(max_new_tokens=n_new))
    return int(out.sequences[0, 5 + n_new // 2])


CONFIGS = {
    "greedy": dict(strategy="greedy", repetition_penalty=1.2),
    "beam": dict(strategy="beam", num_beams=3, num_return_sequences=2, length_penalty=0.8),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_batch_equals_one_at_a_time(lm, name):
    rows = _prompts([3, 7, 5, 1])
    cfg = GenerationConfig(**CONFIGS[name], max_new_tokens=10, eos_token_id=_eos(lm), pad_token_id=PAD)
    ids, mask = _left_pad(rows)
    batched = generate(lm, ids, mask, config=cfg)
    for i, r in enumerate(rows):
        alone = generate(lm, r[None], config=cfg)
        for got, want in zip(batched.nbest[i], alone.nbest[0]):
            assert got.tokens == want.tokens
            assert got.score == pytest.approx(want.score, abs=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_kv_cache_equals_full_recompute(lm, name):
    ids, mask = _left_pad(_prompts([4, 6], seed=1))
    cfg = GenerationConfig(**CONFIGS[name], max_new_tokens=10, pad_token_id=PAD)
    cached = generate(lm, ids, mask, config=cfg, output_scores=True)
    recompute = RecomputeStepper(lambda x, m: lm(x, attention_mask=m))
    full = generate(lm, ids, mask, config=cfg, stepper=recompute, output_scores=True)
    assert torch.equal(cached.sequences, full.sequences)
    for a, b in zip(cached.scores, full.scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_beam_search_computes_the_prompt_once(lm):
    seen: list[int] = []
    hook = lm.tok_emb.register_forward_hook(lambda m, inp, out: seen.append(inp[0].numel()))
    try:
        ids = torch.stack(_prompts([9, 9], seed=2))
        generate(lm, ids, config=GenerationConfig(strategy="beam", num_beams=4, max_new_tokens=5))
    finally:
        hook.remove()
    assert seen[0] == 2 * 9  # prefill: each prompt once, not once per beam
    assert all(n == 2 * 4 for n in seen[1:])  # then one token per beam per step


def test_sampling_is_reproducible_with_a_seed(lm):
    ids = torch.stack(_prompts([4, 4], seed=3))
    cfg = GenerationConfig(
        strategy="sample", max_new_tokens=12, temperature=1.3, seed=123, num_return_sequences=3
    )
    a, b = generate(lm, ids, config=cfg), generate(lm, ids, config=cfg)
    assert torch.equal(a.sequences, b.sequences)
    assert a.sequences.shape == (6, 16)
    assert len({tuple(h.tokens) for h in a.nbest[0]}) > 1  # three samples of one prompt are not all equal
    c = generate(lm, ids, config=cfg.replace(seed=124))
    assert not torch.equal(a.sequences, c.sequences)


def test_per_row_generators_make_samples_batch_invariant(lm):
    rows = _prompts([2, 6, 4], seed=4)
    cfg = GenerationConfig(strategy="sample", max_new_tokens=8, top_p=0.9)
    ids, mask = _left_pad(rows)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    batched = generate(lm, ids, mask, config=cfg, generator=gens)
    for i, r in enumerate(rows):
        alone = generate(lm, r[None], config=cfg, generator=[torch.Generator().manual_seed(10 + i)])
        assert batched.nbest[i][0].tokens == alone.nbest[0][0].tokens


def test_sampling_draws_from_the_processed_distribution(lm):
    ids = torch.stack(_prompts([4], seed=5) * 8)
    greedy = generate(lm, ids[:1], config=GenerationConfig(max_new_tokens=6))
    top1 = generate(
        lm, ids[:1], config=GenerationConfig(strategy="sample", top_k=1, max_new_tokens=6, seed=0)
    )
    assert torch.equal(greedy.sequences, top1.sequences)
    out = generate(lm, ids, config=GenerationConfig(strategy="sample", top_k=2, max_new_tokens=1, seed=0),
                   output_scores=True)  # fmt: skip
    allowed = torch.topk(out.scores[0][0], 2).indices.tolist()
    assert set(out.sequences[:, -1].tolist()) <= set(allowed)
    # token_logprobs are the log-probs of the drawn tokens under the processed (top-2) distribution
    lp = out.scores[0].log_softmax(-1).gather(1, out.sequences[:, -1:])[:, 0]
    torch.testing.assert_close(out.token_logprobs[:, 0], lp)


def test_eos_and_token_stop_sequences_end_rows(lm):
    ids = torch.stack(_prompts([5, 5], seed=0))
    free = generate(lm, ids, config=GenerationConfig(max_new_tokens=12)).sequences[:, 5:]
    a, b = int(free[0, 3]), int(free[0, 4])
    out = generate(
        lm, ids, config=GenerationConfig(max_new_tokens=12, stop_token_ids=[[a, b]], pad_token_id=PAD)
    )
    assert out.nbest[0][0].tokens == free[0, :5].tolist()  # stops right after the stop sequence, keeping it
    eos = int(free[1, 2])
    out = generate(lm, ids, config=GenerationConfig(max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD))
    k = free[1].tolist().index(eos) + 1
    assert out.nbest[1][0].tokens == free[1, :k].tolist()
    assert int(out.num_new_tokens[1]) == k
    assert (out.sequences[1, 5 + k :] == PAD).all()


@pytest.mark.parametrize("beams", [1, 3])
def test_custom_stop_criteria_end_rows_like_a_stop_sequence(lm, beams):
    ids = torch.stack(_prompts([5, 5], seed=0))
    free = generate(lm, ids, config=GenerationConfig(max_new_tokens=12)).sequences[:, 5:]
    a, b = int(free[0, 3]), int(free[0, 4])
    kw = {"strategy": "beam", "num_beams": beams} if beams > 1 else {}
    cfg = GenerationConfig(max_new_tokens=12, pad_token_id=PAD, **kw)
    want = generate(lm, ids, config=cfg.replace(stop_token_ids=[[a, b]]))

    def ends_with_ab(seqs: torch.Tensor) -> torch.Tensor:  # (N, T) -> (N,)
        return (seqs[:, -2] == a) & (seqs[:, -1] == b) & torch.tensor(seqs.shape[1] >= 7)

    got = generate(lm, ids, config=cfg, stopping=[ends_with_ab])
    assert [[h.tokens for h in nb] for nb in got.nbest] == [[h.tokens for h in nb] for nb in want.nbest]
    assert got.nbest[0][0].tokens[-2:] == [a, b] or beams > 1


def _word_tokenizer() -> Tokenizer:
    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(V)}, unk_token="w0"))
    tok.pre_tokenizer = WhitespaceSplit()
    return tok


def test_stop_strings_cut_the_text(lm):
    tok = _word_tokenizer()
    ids = torch.stack(_prompts([5], seed=0))
    free = generate(lm, ids, config=GenerationConfig(max_new_tokens=12), tokenizer=tok)
    words = free.texts[0].split()
    stop = f"{words[4]} {words[5]}"
    out = generate(lm, ids, config=GenerationConfig(max_new_tokens=12, stop_strings=[stop]), tokenizer=tok)
    new = free.sequences[0, 5:].tolist()
    first = next(j for j in range(1, 13) if stop in tok.decode(new[:j]))  # the stop string completes here
    assert out.nbest[0][0].tokens == new[:first]
    assert out.texts[0] == free.texts[0][: free.texts[0].index(stop)]
    with pytest.raises(ValueError, match="tokenizer"):
        generate(lm, ids, config=GenerationConfig(stop_strings=["x"]))


def test_encoder_decoder_needs_source_and_rejects_misuse(lm):
    with pytest.raises(ValueError, match="decoder-only"):
        generate(lm, torch.ones(1, 2, dtype=torch.long), encoder_inputs=(torch.ones(1, 2),))
    with pytest.raises(ValueError, match="left-padded"):
        generate(lm, torch.ones(1, 3, dtype=torch.long), torch.tensor([[1, 1, 0]]))


@pytest.mark.parametrize("width", [999, 32000, 4 * 50257])
def test_top_candidates_equal_torch_topk(width):
    from gensys.generate.search import top_candidates

    g = torch.Generator().manual_seed(width)
    scores = torch.randn(3, width, generator=g)
    scores[1, : width // 2] = float("-inf")  # masked tokens (a constraint, banned words)
    scores[2, 17] = 50.0  # one far ahead
    for k in (1, 8):
        want_v, want_i = torch.topk(scores, k, dim=1)
        got_v, got_i = top_candidates(scores, k)
        assert torch.equal(got_v, want_v) and torch.equal(got_i, want_i)
