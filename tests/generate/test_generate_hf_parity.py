"""Our greedy and beam search on converted weights equal HF `generate` (tokens, step and sequence scores).

Tiny random GPT-2 and Llama (GQA) models are built from HF configs; their weights go through our converter
(`gensys.models.convert.model_from_hf`). Every case decodes with our KV cache and compares against HF's own
cached `generate` with the same settings.
"""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.generation import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
)

from gensys.generate import GenerationConfig, generate
from gensys.models.convert import model_from_hf

V = 96
PAD = 1


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=64, initializer_range=0.2, bos_token_id=0
    )
    return GPT2LMHeadModel(cfg).eval()


def _llama() -> torch.nn.Module:
    torch.manual_seed(1)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=V,
        max_position_embeddings=64,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request):
    hf = _gpt2() if request.param == "gpt2" else _llama()
    ours = model_from_hf(hf)
    prompts = torch.randint(3, V, (3, 6), generator=torch.Generator().manual_seed(7))
    # EOS ids the models actually produce: the most frequent tokens of an unconstrained greedy run.
    free = generate(ours, prompts, config=GenerationConfig(max_new_tokens=16)).sequences[:, 6:]
    common = [t for t, _ in Counter(free.flatten().tolist()).most_common(3)]
    return hf, ours, prompts, common


def _hf_kwargs(cfg: GenerationConfig) -> dict:
    kw = dict(
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
    )
    if cfg.strategy == "beam":
        kw.update(
            num_beams=cfg.num_beams,
            length_penalty=1.0 if cfg.length_penalty is None else cfg.length_penalty,
            early_stopping=False if cfg.early_stopping is None else cfg.early_stopping,
            num_return_sequences=cfg.num_return_sequences,
        )
    else:
        kw.update(num_beams=1)
    for knob in ("min_new_tokens", "no_repeat_ngram_size", "repetition_penalty", "bad_words_ids"):
        if getattr(cfg, knob):
            kw[knob] = getattr(cfg, knob)
    return kw


def _assert_same(hf_out, ours, beam: bool) -> None:
    assert torch.equal(ours.sequences, hf_out.sequences), (ours.sequences, hf_out.sequences)
    assert len(ours.scores) == len(hf_out.scores)
    for got, want in zip(ours.scores, hf_out.scores):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    if beam:
        torch.testing.assert_close(ours.sequences_scores, hf_out.sequences_scores, atol=2e-5, rtol=1e-5)


CASES = {
    "greedy_eos": dict(strategy="greedy", max_new_tokens=14),
    "greedy_penalties": dict(
        strategy="greedy", max_new_tokens=14, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=5
    ),
    "beam4_nbest": dict(strategy="beam", num_beams=4, num_return_sequences=3, max_new_tokens=12),
    "beam3_lp_early": dict(
        strategy="beam",
        num_beams=3,
        length_penalty=0.6,
        early_stopping=True,
        no_repeat_ngram_size=2,
        min_new_tokens=3,
        max_new_tokens=12,
    ),
    "beam4_never_nbest": dict(
        strategy="beam",
        num_beams=4,
        length_penalty=1.0,
        early_stopping="never",
        max_new_tokens=12,
        num_return_sequences=4,
    ),
    "beam2_negative_lp_rep": dict(
        strategy="beam", num_beams=2, length_penalty=-0.5, repetition_penalty=1.2, max_new_tokens=10
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n_eos", [1, 2])
@pytest.mark.parametrize("path", ["modules", "static"])
def test_matches_hf_generate(pair, case, n_eos, path):
    """Both model steps: the modules with a growing KVCache, and the fixed-shape step (nn.static_decode)."""
    hf, ours, prompts, common = pair
    eos = common[0] if n_eos == 1 else common[:2]
    cfg = GenerationConfig(**CASES[case], eos_token_id=eos, pad_token_id=PAD, decode_path=path)
    out = generate(ours, prompts, config=cfg, output_scores=True)
    ref = hf.generate(prompts, attention_mask=torch.ones_like(prompts), **_hf_kwargs(cfg))
    _assert_same(ref, out, beam=cfg.strategy == "beam")
    # The case must exercise EOS handling: some row or hypothesis ends early.
    assert (out.num_new_tokens < cfg.max_new_tokens).any()


@pytest.mark.parametrize("case", ["greedy_eos", "greedy_penalties", "beam4_nbest", "beam3_lp_early"])
@pytest.mark.parametrize("path", ["modules", "static"])
def test_left_padded_batch_matches_hf(pair, case, path):
    hf, ours, prompts, common = pair
    ids = prompts.clone()
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = PAD, 0  # row 0 has a 3-token prompt, row 2 a 5-token one
    ids[2, :1], mask[2, :1] = PAD, 0
    cfg = GenerationConfig(
        **{**CASES[case], "no_repeat_ngram_size": None},
        eos_token_id=common[0],
        pad_token_id=PAD,
        decode_path=path,
    )
    out = generate(ours, ids, mask, config=cfg, output_scores=True)
    ref = hf.generate(ids, attention_mask=mask, **_hf_kwargs(cfg))
    _assert_same(ref, out, beam=cfg.strategy == "beam")


def test_bad_words_match_hf(pair):
    hf, ours, prompts, common = pair
    bad = [[common[1]], [common[2], common[0]]]
    cfg = GenerationConfig(
        strategy="beam",
        num_beams=3,
        max_new_tokens=10,
        eos_token_id=common[0],
        pad_token_id=PAD,
        bad_words_ids=bad,
    )
    out = generate(ours, prompts, config=cfg, output_scores=True)
    _assert_same(
        hf.generate(prompts, attention_mask=torch.ones_like(prompts), **_hf_kwargs(cfg)), out, beam=True
    )
    assert common[1] not in out.sequences[:, prompts.shape[1] :].flatten().tolist()


class _EndsWith(StoppingCriteria):
    """HF stopping criterion for a token-level stop sequence (HF has no built-in one)."""

    def __init__(self, seq: list[int]) -> None:
        self.seq = torch.tensor(seq)

    def __call__(self, input_ids, scores, **kwargs):
        k = len(self.seq)
        return (input_ids[:, -k:] == self.seq).all(dim=1)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_token_stop_sequence_and_prompt_free_penalty_match_hf(pair, strategy):
    hf, ours, prompts, common = pair
    t0 = prompts.shape[1]
    beam = dict(num_beams=3) if strategy == "beam" else {}
    cfg = GenerationConfig(strategy=strategy, max_new_tokens=10, pad_token_id=PAD, repetition_penalty=1.5,
                           penalize_prompt=False, **beam)  # fmt: skip
    free = generate(ours, prompts[:1], config=cfg).sequences[0, t0:].tolist()
    stop = free[2:4]  # a 2-token sequence the model produces under these settings
    cfg = cfg.replace(stop_token_ids=[stop])
    out = generate(ours, prompts, config=cfg, output_scores=True)
    prompt_free = RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=t0)
    ref = hf.generate(
        prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=10, pad_token_id=PAD,
        do_sample=False, num_beams=beam.get("num_beams", 1), return_dict_in_generate=True, output_scores=True,
        stopping_criteria=StoppingCriteriaList([_EndsWith(stop)]),
        logits_processor=LogitsProcessorList([prompt_free]),
    )  # fmt: skip
    _assert_same(ref, out, beam=strategy == "beam")
    ended = [h.tokens[-2:] == stop for hyps in out.nbest for h in hyps]
    assert any(ended)  # the stop sequence really ended a row / hypothesis
    penalised = generate(ours, prompts, config=cfg.replace(penalize_prompt=True), output_scores=True)
    assert not torch.equal(penalised.scores[0], out.scores[0])  # the switch matters from the first step


@pytest.mark.parametrize(
    "knobs", [dict(temperature=0.7, top_k=20), dict(top_p=0.8, min_p=0.05), dict(temperature=1.3, top_p=0.9)]
)
def test_sampling_matches_hf_draw_for_draw(pair, knobs):
    # With the same global seed both draw with torch.multinomial from (numerically) the same processed
    # distribution, so the samples must agree token for token.
    hf, ours, prompts, common = pair
    cfg = GenerationConfig(
        strategy="sample", max_new_tokens=12, eos_token_id=common[0], pad_token_id=PAD, **knobs
    )
    torch.manual_seed(1234)
    out = generate(ours, prompts, config=cfg, output_scores=True)
    torch.manual_seed(1234)
    ref = hf.generate(
        prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=12, eos_token_id=common[0],
        pad_token_id=PAD, do_sample=True, top_k=knobs.get("top_k", 0), return_dict_in_generate=True,
        output_scores=True, **{k: v for k, v in knobs.items() if k != "top_k"},
    )  # fmt: skip
    _assert_same(ref, out, beam=False)


@pytest.mark.parametrize("case", ["beam4_nbest", "beam3_lp_early", "beam4_never_nbest"])
@pytest.mark.parametrize("padded", [False, True])
def test_beam_search_on_a_shared_prompt_cache_matches_hf(pair, case, padded, monkeypatch):
    """The beams' shared prompt keys/values (KVCache.expand(share_prefix=True), used for long prompts) are
    forced on for these short ones: still HF's tokens and scores, with and without left padding."""
    import gensys.generate.stepper as stepper_mod

    monkeypatch.setattr(stepper_mod, "SHARE_PREFIX_MIN_TOKENS", 0)
    hf, ours, prompts, common = pair
    ids, mask = prompts.clone(), torch.ones_like(prompts)
    if padded:
        ids[0, :3], mask[0, :3] = PAD, 0
    cfg = GenerationConfig(
        **{**CASES[case], "no_repeat_ngram_size": None},
        eos_token_id=common[0],
        pad_token_id=PAD,
        decode_path="modules",  # the shared prefix lives in KVCache, not in the fixed-shape step's buffers
    )
    out = generate(ours, ids, mask, config=cfg, output_scores=True)
    ref = hf.generate(ids, attention_mask=mask, **_hf_kwargs(cfg))
    _assert_same(ref, out, beam=True)


def test_wide_vocabulary_beam_search_matches_hf():
    """A vocabulary wide enough (4 beams x 4000) that the candidate top-k takes the blocked path."""
    torch.manual_seed(3)
    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=4000, n_positions=64, initializer_range=0.2)
    hf = GPT2LMHeadModel(cfg).eval()
    ours = model_from_hf(hf)
    prompts = torch.randint(3, 4000, (2, 5), generator=torch.Generator().manual_seed(8))
    gen = GenerationConfig(
        strategy="beam",
        num_beams=4,
        num_return_sequences=2,
        max_new_tokens=8,
        eos_token_id=7,
        pad_token_id=PAD,
    )
    out = generate(ours, prompts, config=gen, output_scores=True)
    ref = hf.generate(prompts, attention_mask=torch.ones_like(prompts), **_hf_kwargs(gen))
    _assert_same(ref, out, beam=True)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_compiled_decode_path_matches_hf_beam_search(pair):
    """The Inductor-compiled step (traced once per layout, no Dynamo guards) through a whole beam search."""
    hf, ours, prompts, common = pair
    cfg = GenerationConfig(
        **CASES["beam4_nbest"], eos_token_id=common[0], pad_token_id=PAD, decode_path="compiled"
    )
    out = generate(ours, prompts, config=cfg, output_scores=True)
    ref = hf.generate(prompts, attention_mask=torch.ones_like(prompts), **_hf_kwargs(cfg))
    _assert_same(ref, out, beam=True)
