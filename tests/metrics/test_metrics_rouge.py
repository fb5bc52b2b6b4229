"""ROUGE-1/2/L/Lsum equal rouge-score; COCO ROUGE-L equals pycocoevalcap; bit-parallel LCS equals the DP."""

from __future__ import annotations

import random

import numpy as np
import pytest
from metrics_testdata import perturb
from rouge_score import rouge_scorer

from gensys.metrics import coco_rouge_l, coco_tokenize, rouge
from gensys.metrics.rouge import lcs_length


@pytest.mark.parametrize("stem", [False, True])
def test_rouge_equals_rouge_score(multi30k: dict[str, list[str]], stem: bool) -> None:
    refs1, refs2 = multi30k["test"][:600], multi30k["val"][:600]
    hyps = perturb(refs1)
    # multi-sentence texts for Lsum: split at " and " / ", "
    hyps = [h.replace(" and ", "\n") for h in hyps]
    refs = [[a.replace(", ", "\n"), b] for a, b in zip(refs1, refs2)]
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=stem)
    ref = [scorer.score_multi(r, h) for h, r in zip(hyps, refs)]
    ours = rouge(hyps, refs, use_stemmer=stem)
    for t in types:
        np.testing.assert_allclose(ours[t].segments, [x[t].fmeasure for x in ref], rtol=0, atol=1e-12)
        assert ours[t].details["precision"] == pytest.approx(
            np.mean([x[t].precision for x in ref]), abs=1e-12
        )
        assert ours[t].details["recall"] == pytest.approx(np.mean([x[t].recall for x in ref]), abs=1e-12)
        assert 0 < ours[t].score < 1


def test_coco_rouge_l_equals_pycocoevalcap(caption_sets: tuple[list[str], list[list[str]]]) -> None:
    ref_mod = pytest.importorskip("pycocoevalcap.rouge.rouge")
    hyps = [coco_tokenize(h) for h in caption_sets[0][:800]]
    refs = [[coco_tokenize(r) for r in rs] for rs in caption_sets[1][:800]]
    score, segs = ref_mod.Rouge().compute_score(dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)})
    ours = coco_rouge_l(hyps, refs)
    assert ours.score == pytest.approx(score, abs=1e-12)
    np.testing.assert_allclose(ours.segments, segs, atol=1e-12)


def test_bit_parallel_lcs_equals_dynamic_programming() -> None:
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]  # > 64 tokens crosses a machine word
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                t[i][j] = t[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(t[i - 1][j], t[i][j - 1])
        assert lcs_length(a, b) == t[-1][-1]
