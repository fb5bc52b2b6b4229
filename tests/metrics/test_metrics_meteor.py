"""METEOR (nltk's definition) equals nltk.translate.meteor_score; the Porter stemmer equals nltk's."""

from __future__ import annotations

import pytest
from metrics_testdata import DEBIAN_WORDNET, perturb, read_gz

from gensys.metrics import MetricInputError, meteor
from gensys.metrics.stem import porter_stem


def test_porter_stemmer_equals_nltk_on_real_vocabulary() -> None:
    porter = pytest.importorskip("nltk.stem.porter")
    words = {w.lower().strip(".,;:!?\"'()") for line in read_gz("train.en.gz")[:6000] for w in line.split()}
    words |= {
        "skies",
        "dying",
        "ties",
        "tied",
        "generalli",
        "analogi",
        "hopping",
        "filing",
        "agreed",
        "sized",
        "y",
    }
    words.discard("")
    stemmer = porter.PorterStemmer()
    bad = [(w, stemmer.stem(w), porter_stem(w)) for w in sorted(words) if stemmer.stem(w) != porter_stem(w)]
    assert not bad, bad[:10]
    assert len(words) > 4000


def test_meteor_equals_nltk_with_wordnet(multi30k: dict[str, list[str]], nltk_wordnet) -> None:
    from nltk.translate.meteor_score import meteor_score

    refs1, refs2 = multi30k["test"][:700], multi30k["val"][:701]
    hyps = perturb(refs1)[:350] + refs2[350:700]  # near-misses and unrelated sentences (synonym matches)
    refs = [[a, b] for a, b in zip(refs1, refs2[1:])]
    ours = meteor(hyps, refs, wordnet_dir=str(DEBIAN_WORDNET))
    ref = [
        meteor_score([r.split() for r in rs], h.split(), wordnet=nltk_wordnet) for h, rs in zip(hyps, refs)
    ]
    assert ours.segments == pytest.approx(ref, abs=1e-12)
    assert ours.score == pytest.approx(sum(ref) / len(ref), abs=1e-12)
    # synonyms matter on this data, so the WordNet stage is really exercised
    assert meteor(hyps, refs, synonyms=False).score < ours.score


def test_meteor_without_wordnet_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(MetricInputError, match="WordNet 3.0 database not found"):
        meteor(["a cat"], [["a cat"]], wordnet_dir=str(tmp_path))
    assert meteor(["a cat"], [["a cat"]], synonyms=False).score == pytest.approx(0.9375)  # 1 - 0.5 * (1/2)^3
    assert meteor([""], [["a cat"]], synonyms=False).score == 0.0
