"""Each logits processor equals its Hugging Face counterpart on random logits; applicability is enforced."""

from __future__ import annotations

import pytest
import torch
from transformers.generation import logits_process as hf

from gensys.generate import GenerationConfig, GenerationConfigError
from gensys.generate.processors import (
    BadWords,
    MinNewTokens,
    MinP,
    NoRepeatNGram,
    ProcessorList,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    check_applicable,
)

V = 50


def _inputs(seed: int, n: int = 6, t: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 12, (n, t), generator=g)  # small id range: plenty of repeats and repeated n-grams
    scores = torch.randn(n, V, generator=g) * 3
    return ids, scores


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("ours", "ref"),
    [
        (lambda: Temperature(0.7), lambda: hf.TemperatureLogitsWarper(0.7)),
        (lambda: Temperature(1.9), lambda: hf.TemperatureLogitsWarper(1.9)),
        (lambda: TopK(1), lambda: hf.TopKLogitsWarper(1)),
        (lambda: TopK(7), lambda: hf.TopKLogitsWarper(7)),
        (lambda: TopK(500), lambda: hf.TopKLogitsWarper(500)),
        (lambda: TopP(0.0), lambda: hf.TopPLogitsWarper(0.0)),
        (lambda: TopP(0.3), lambda: hf.TopPLogitsWarper(0.3)),
        (lambda: TopP(0.9), lambda: hf.TopPLogitsWarper(0.9)),
        (lambda: TopP(0.9, min_tokens_to_keep=5), lambda: hf.TopPLogitsWarper(0.9, min_tokens_to_keep=5)),
        (lambda: MinP(0.05), lambda: hf.MinPLogitsWarper(0.05)),
        (lambda: MinP(0.5), lambda: hf.MinPLogitsWarper(0.5)),
        (lambda: RepetitionPenalty(1.3), lambda: hf.RepetitionPenaltyLogitsProcessor(1.3)),
        (lambda: RepetitionPenalty(0.6), lambda: hf.RepetitionPenaltyLogitsProcessor(0.6)),
        (
            lambda: RepetitionPenalty(1.5, start=10),
            lambda: hf.RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=10),
        ),
        (
            lambda: RepetitionPenalty(1.5, start=torch.tensor([0, 3, 5, 20, 1, 0])),
            lambda: hf.RepetitionPenaltyLogitsProcessor(
                1.5, prompt_ignore_length=torch.tensor([0, 3, 5, 20, 1, 0])
            ),
        ),
        (lambda: NoRepeatNGram(1), lambda: hf.NoRepeatNGramLogitsProcessor(1)),
        (lambda: NoRepeatNGram(2), lambda: hf.NoRepeatNGramLogitsProcessor(2)),
        (lambda: NoRepeatNGram(3), lambda: hf.NoRepeatNGramLogitsProcessor(3)),
        (lambda: NoRepeatNGram(30), lambda: hf.NoRepeatNGramLogitsProcessor(30)),
        (
            lambda: BadWords([[3], [7, 8], [1, 2, 4], [5, 5], [9]], eos_token_id=9),
            lambda: hf.NoBadWordsLogitsProcessor([[3], [7, 8], [1, 2, 4], [5, 5], [9]], eos_token_id=9),
        ),
        (
            lambda: MinNewTokens(5, [2, 9], prompt_length=20),
            lambda: hf.MinNewTokensLengthLogitsProcessor(20, 5, [2, 9]),
        ),
        (
            lambda: MinNewTokens(4, 2, prompt_length=20),
            lambda: hf.MinNewTokensLengthLogitsProcessor(20, 4, 2),
        ),
    ],
)
def test_processor_equals_hf(seed, ours, ref):
    ids, scores = _inputs(seed)
    before = scores.clone()
    got = ours()(ids, scores)
    want = ref()(ids, scores.clone())
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(scores, before), "processors must not edit their input in place"


def test_processors_actually_filter():
    # Guard against a parity test passing because both sides did nothing.
    ids, scores = _inputs(0)
    for p in (TopK(7), TopP(0.3), MinP(0.5), NoRepeatNGram(2), BadWords([[3], [7, 8]])):
        assert torch.isinf(p(ids, scores)).any(), type(p).__name__
    assert not torch.equal(RepetitionPenalty(1.3)(ids, scores), scores)
    assert torch.isinf(MinNewTokens(5, 2, prompt_length=20)(ids, scores)[:, 2]).all()
    assert torch.equal(MinNewTokens(4, 2, prompt_length=20)(ids, scores), scores)  # 24 - 20 >= 4: lifted


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8, 0.95, 0.999])
def test_top_p_keeps_smallest_set_reaching_p(p):
    g = torch.Generator().manual_seed(int(p * 1000))
    scores = torch.randn(32, V, generator=g) * 2
    kept = ~torch.isinf(TopP(p)(torch.zeros(32, 1, dtype=torch.long), scores))
    probs = scores.softmax(-1)
    for row in range(scores.shape[0]):
        order = probs[row].argsort(descending=True)
        cum = probs[row][order].cumsum(0)
        k = int((cum < p).sum()) + 1  # first prefix whose mass reaches p
        expected = torch.zeros(V, dtype=torch.bool)
        expected[order[: min(k, V)]] = True
        assert torch.equal(kept[row], expected)
        assert probs[row][kept[row]].sum() >= p - 1e-6
        smaller = kept[row].clone()
        smaller[order[k - 1]] = False  # dropping the least likely kept token falls below p
        assert probs[row][smaller].sum() < p


def test_pad_start_makes_penalties_batch_invariant():
    # The padded row is the real row left-padded by 4 pad tokens (id 5, which the row itself ends with).
    real = torch.tensor([[1, 2, 3, 1, 2, 5]])
    padded = torch.cat([torch.full((1, 4), 5), real], dim=1)
    scores = torch.randn(1, V)
    for make in (
        lambda s: RepetitionPenalty(1.4, start=s),
        lambda s: RepetitionPenalty(0.7, start=s),
        lambda s: NoRepeatNGram(2, start=s),
        lambda s: NoRepeatNGram(3, start=s),
    ):
        alone = make(torch.tensor([0]))(real, scores)
        in_batch = make(torch.tensor([4]))(padded, scores)
        assert torch.equal(alone, in_batch)
    # ...whereas counting the pads would change the result: the window (5, 5) inside the padding bans 5.
    assert torch.isinf(NoRepeatNGram(2)(padded, scores)[0, 5])
    assert not torch.isinf(NoRepeatNGram(2, start=torch.tensor([4]))(padded, scores)[0, 5])
    short_real, short_padded = real[:, :3], torch.cat([torch.full((1, 4), 5), real[:, :3]], dim=1)
    assert RepetitionPenalty(1.4)(short_padded, scores)[0, 5] != scores[0, 5]
    assert RepetitionPenalty(1.4, start=torch.tensor([4]))(short_padded, scores)[0, 5] == scores[0, 5]
    assert torch.equal(
        RepetitionPenalty(1.4)(short_real, scores), RepetitionPenalty(1.4, 4)(short_padded, scores)
    )


def test_processor_list_applies_in_order():
    ids, scores = _inputs(1)
    plist = ProcessorList([RepetitionPenalty(1.2), Temperature(0.5), TopK(5)])
    expected = TopK(5)(ids, Temperature(0.5)(ids, RepetitionPenalty(1.2)(ids, scores)))
    assert torch.equal(plist(ids, scores), expected)


@pytest.mark.parametrize(
    ("strategy", "knob"),
    [
        ("greedy", dict(temperature=0.7)),
        ("greedy", dict(top_k=5)),
        ("beam", dict(top_p=0.9)),
        ("beam", dict(min_p=0.1)),
        ("greedy", dict(num_beams=4)),
        ("sample", dict(length_penalty=0.8)),
        ("sample", dict(early_stopping=True)),
        ("greedy", dict(seed=1)),
        ("greedy", dict(num_return_sequences=2)),
        ("beam", dict(num_beams=2, num_return_sequences=3)),
        ("greedy", dict(min_new_tokens=2)),  # needs an EOS id to forbid
    ],
)
def test_knob_that_does_not_apply_is_an_error(strategy, knob):
    with pytest.raises(GenerationConfigError):
        GenerationConfig(strategy=strategy, **knob).validate()


def test_valid_configs_pass_and_custom_processors_are_checked():
    GenerationConfig(strategy="sample", temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, seed=1).validate()
    GenerationConfig(strategy="beam", num_beams=3, length_penalty=0.5, early_stopping="never").validate()
    GenerationConfig(repetition_penalty=1.2, no_repeat_ngram_size=3, bad_words_ids=[[1]]).validate()
    check_applicable([RepetitionPenalty(1.1), NoRepeatNGram(2)], "beam")
    with pytest.raises(GenerationConfigError, match="TopK"):
        check_applicable([TopK(3)], "beam")
    with pytest.raises(GenerationConfigError):
        Temperature(0.0)


def test_corpus_fusion_mixes_probabilities():
    from gensys.generate.processors import CorpusFusion
    from gensys.models.infinigram import InfiniGram

    index = InfiniGram.build([[5, 6, 7, 8], [1, 6, 7, 9], [6, 7, 8]], max_match=4)
    weights = [0.0, 0.1, 0.5, 0.9]  # w[n]; longer matches take the last entry
    proc = CorpusFusion(index, weights)
    torch.manual_seed(0)
    logits = torch.randn(3, 12)
    ids = torch.tensor([[2, 5, 6, 7], [0, 0, 3, 3], [0, 1, 6, 7]])
    out = proc(ids, logits)
    p_model = logits.log_softmax(-1).exp()
    # Row 0: "5 6 7" matched (n=3) -> next 8 once; row 1: nothing; row 2: "1 6 7" (n=3) -> 9.
    want0 = (1 - 0.9) * p_model[0]
    want0[8] += 0.9
    assert torch.allclose(out[0].exp(), want0, atol=1e-6)
    assert torch.allclose(out[1], logits[1].log_softmax(-1))
    want2 = (1 - 0.9) * p_model[2]
    want2[9] += 0.9
    assert torch.allclose(out[2].exp(), want2, atol=1e-6)
    assert torch.allclose(out.exp().sum(-1), torch.ones(3), atol=1e-5)
    # A two-token match "6 7" -> {8: 2, 9: 1} mixes with weight 0.5.
    out = proc(torch.tensor([[4, 6, 7]]), logits[:1])
    want = 0.5 * p_model[0]
    want[8] += 0.5 * 2 / 3
    want[9] += 0.5 / 3
    assert torch.allclose(out[0].exp(), want, atol=1e-6)
    with pytest.raises(GenerationConfigError):
        CorpusFusion(index, [0.0, 1.0])


def test_corpus_fusion_ignores_left_padding():
    from gensys.generate.processors import CorpusFusion
    from gensys.models.infinigram import InfiniGram

    index = InfiniGram.build([[0, 3, 4]], max_match=4)  # token 0 doubles as the pad id here
    logits = torch.zeros(1, 6)
    padded = torch.tensor([[0, 0, 3]])
    with_pad = CorpusFusion(index, [0.0, 0.2, 0.6], start=None)(padded, logits)
    no_pad = CorpusFusion(index, [0.0, 0.2, 0.6], start=torch.tensor([2]))(padded, logits)
    assert with_pad[0, 4].exp().item() == pytest.approx(0.4 / 6 + 0.6)  # "0 3" matched: n=2
    assert no_pad[0, 4].exp().item() == pytest.approx(0.8 / 6 + 0.2)  # "3" only: n=1


def test_corpus_fusion_keeps_masked_tokens_masked():
    from gensys.generate.processors import CorpusFusion
    from gensys.models.infinigram import InfiniGram

    index = InfiniGram.build([[5, 6, 7, 8], [5, 6, 7, 9]], max_match=4)  # "5 6 7" -> 8 or 9, once each
    logits = torch.zeros(1, 12)
    logits[0, 8] = float("-inf")  # banned by an earlier processor (e.g. no_repeat_ngram)
    out = CorpusFusion(index, [0.0, 0.5, 0.5, 0.8])(torch.tensor([[5, 6, 7]]), logits)
    assert out[0, 8].item() == float("-inf")
    assert out.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    # Of the corpus's 0.8, the half on the banned 8 is spread with the rest: 9 keeps the most mass.
    p_model = 0.2 / 11
    want9 = (p_model + 0.4) / (1 - 0.4)
    assert out[0, 9].exp().item() == pytest.approx(want9, rel=1e-5)
