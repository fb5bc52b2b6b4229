"""A tiny encoder-decoder memorises 20 sentence pairs: greedy and beam search reproduce every target exactly,
and `translate eval` scores the memorised pairs at BLEU 100."""

from __future__ import annotations

import json

import pytest

from gensys.apps.translate.predictor import load_predictor
from gensys.apps.translate.recipe import eval_main


@pytest.mark.parametrize("beam", [1, 4])
def test_tiny_model_reproduces_training_pairs(tiny_ckpt, tiny_pairs, beam):
    tr = load_predictor(tiny_ckpt)
    out = tr.translate([s for s, _ in tiny_pairs], beam=beam)
    wrong = [(o["translation"], t) for o, (_, t) in zip(out, tiny_pairs) if o["translation"] != t]
    assert wrong == []
    assert all(o["score"] < 0 for o in out)  # log-probabilities
    assert all(o["score"] > -0.5 for o in out)  # ... of confidently memorised sentences


def test_eval_scores_memorised_pairs_at_bleu_100(tiny_ckpt, tiny_pairs, tmp_path, capsys):
    src, ref = tmp_path / "src.en", tmp_path / "ref.de"
    src.write_text("".join(s + "\n" for s, _ in tiny_pairs), encoding="utf-8")
    ref.write_text("".join(t + "\n" for _, t in tiny_pairs), encoding="utf-8")
    out = tmp_path / "m.json"
    assert eval_main(["--ckpt", str(tiny_ckpt), "--src", str(src), "--ref", str(ref), "--beam", "2",
                      "--out", str(out)]) == 0  # fmt: skip
    m = json.loads(out.read_text())
    assert m["bleu"] == pytest.approx(100.0)
    assert m["chrf"] == pytest.approx(100.0)
    assert m["rougeL_f1"] == pytest.approx(100.0)
    assert m["meteor"] > 99.0  # METEOR's fragmentation penalty keeps it just under 100
    assert m["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert m["sentences"] == 20 and m["sentences_per_s"] > 0
    table = capsys.readouterr().out
    assert "BLEU" in table and "100.00" in table and "sentences/s" in table
