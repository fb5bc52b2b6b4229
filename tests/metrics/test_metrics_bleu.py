"""BLEU / chrF equal sacrebleu; COCO BLEU-1..4 equals pycocoevalcap; perplexity and ExactMatch@N."""

from __future__ import annotations

import math

import pytest
import sacrebleu
import torch
from metrics_testdata import perturb

from gensys.metrics import (
    MetricInputError,
    PerplexityAccumulator,
    bleu,
    chrf,
    coco_bleu,
    coco_tokenize,
    exact_match_at_n,
    perplexity,
)


def test_bleu_and_chrf_equal_sacrebleu_on_multi30k(multi30k: dict[str, list[str]]) -> None:
    refs = multi30k["test"]
    hyps = perturb(refs)
    second = perturb(refs, seed=1)
    # variable reference counts: every third segment has a second reference
    seg_refs = [[r, s] if i % 3 == 0 else [r] for i, (r, s) in enumerate(zip(refs, second))]
    stream2 = [s if i % 3 == 0 else None for i, s in enumerate(second)]
    ours = bleu(hyps, seg_refs)
    ref = sacrebleu.BLEU().corpus_score(hyps, [refs, stream2])
    assert ours.score == ref.score
    assert ours.signature == "nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:" + sacrebleu.__version__
    assert 0 < ours.score < 100
    ch = chrf(hyps, [[r] for r in refs])
    assert ch.score == sacrebleu.CHRF().corpus_score(hyps, [refs]).score
    assert (
        chrf(hyps, refs, word_order=2).score == sacrebleu.CHRF(word_order=2).corpus_score(hyps, [refs]).score
    )


def test_coco_bleu_equals_pycocoevalcap(caption_sets: tuple[list[str], list[list[str]]]) -> None:
    bleu_ref = pytest.importorskip("pycocoevalcap.bleu.bleu")
    hyps_raw, refs_raw = caption_sets
    hyps = [coco_tokenize(h) for h in hyps_raw[:800]]
    refs = [[coco_tokenize(r) for r in rs] for rs in refs_raw[:800]]
    hyps[5] = ""  # an empty hypothesis is scored, not a crash
    gts = {i: rs for i, rs in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    ref_scores, ref_segments = bleu_ref.Bleu(4).compute_score(gts, res, verbose=0)
    ours = coco_bleu(hyps, refs)
    for k in range(4):
        assert ours.details[f"bleu_{k + 1}"] == pytest.approx(ref_scores[k], rel=1e-12, abs=1e-15)
    assert ours.segments == pytest.approx(ref_segments[3], rel=1e-12, abs=1e-15)
    assert ours.segments[5] == pytest.approx(0.0, abs=1e-12)


def test_text_bad_input() -> None:
    with pytest.raises(MetricInputError, match="2 hypotheses but 1 reference"):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(MetricInputError, match="empty reference set"):
        bleu(["a"], [[]])
    with pytest.raises(MetricInputError, match="expected str"):
        bleu([b"\xff"], [["a"]])  # type: ignore[list-item]
    with pytest.raises(MetricInputError, match="empty corpus"):
        coco_bleu([], [])
    assert bleu([""], [["a cat"]]).score == 0.0  # empty hypothesis: a documented 0, no crash


def test_perplexity_is_token_weighted_not_average_of_averages() -> None:
    g = torch.Generator().manual_seed(0)
    acc = PerplexityAccumulator()
    all_logits, all_targets, batch_means = [], [], []
    for t in (3, 17):  # batches of very different lengths
        logits = torch.randn(2, t, 11, generator=g)
        targets = torch.randint(0, 11, (2, t), generator=g)
        targets[0, -1] = -100  # a padded position does not count
        acc.add_logits(logits, targets)
        all_logits.append(logits.reshape(-1, 11))
        all_targets.append(targets.reshape(-1))
        batch_means.append(
            float(torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)))
        )
    full = torch.nn.functional.cross_entropy(
        torch.cat(all_logits), torch.cat(all_targets)
    )  # mean over tokens
    assert acc.n_tokens == 2 * 3 + 2 * 17 - 2
    assert acc.value == pytest.approx(math.exp(float(full)), rel=1e-6)
    assert acc.value != pytest.approx(math.exp(sum(batch_means) / 2), rel=1e-3)
    assert perplexity(0.0, 5) == 1.0
    with pytest.raises(MetricInputError):
        perplexity(1.0, 0)


def test_exact_match_at_n() -> None:
    sugg = ["thank you for", "see you", "let me know if", "Thank you so"]
    cont = ["thank you for your help", "see you soon", "let me check", "thank you so much"]
    s = exact_match_at_n(sugg, cont, 3)
    assert s.segments == [1.0, 0.0, 0.0, 0.0]  # 2-word suggestion cannot match 3 words; case matters
    assert s.score == 0.25 and s.details["coverage"] == 0.75
    assert exact_match_at_n(sugg, cont, 3, lowercase=True).score == 0.5
    with pytest.raises(MetricInputError):
        exact_match_at_n(sugg, cont[:2], 3)
