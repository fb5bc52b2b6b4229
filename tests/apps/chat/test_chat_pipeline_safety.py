"""The safety classifier: data readers and split, training (ngram + transformer) on a tiny synthetic tree,
export and reload, windowed scoring of long texts, thresholds, evaluation figures against scikit-learn."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

sys.path.insert(0, str(Path(__file__).parent))
from chat_pipeline_testdata import VIOLENT, keyword_safety, write_safety_data  # noqa: E402

from gensys.apps.chat import safety as S  # noqa: E402
from gensys.config import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_safety_data(tmp_path_factory.mktemp("data"))


def test_readers_map_labels_and_unknowns(data_root):
    mod = S.read_moderation(data_root / S.MODERATION_FILE)
    assert len(mod) == 160
    sh = next(e for e in mod if "self-harm" in e.positives())
    # rows of the SH kind lack S, H, S3, H2: those labels are unknown, not negative
    known = dict(zip(S.CATEGORIES, sh.known))
    assert known["self-harm"] and known["violence"] and not known["sexual"] and not known["hate"]
    assert not known["offensive"]  # the moderation set has no such label
    dav = S.read_davidson(data_root / S.DAVIDSON_FILE)
    by = {e.source: e for e in dav}
    assert by["davidson_hate"].positives() == ["hate", "offensive"]
    assert by["davidson_offensive"].positives() == ["offensive"]
    assert by["davidson_offensive"].known[S.CATEGORIES.index("violence")] is False
    assert all(by["davidson_neither"].known) and not by["davidson_neither"].positives()
    hh = S.read_hh_requests(data_root / S.HH_FILE)
    assert len(hh) == len({e.text for e in hh}) > 0 and all(e.text.startswith("how can I") for e in hh)
    assert hh[0].positives() == ["harmful_request"] and sum(hh[0].known) == 1
    assert "RT" not in by["davidson_neither"].text and "&amp;" not in by["davidson_neither"].text
    assert "http" not in by["davidson_neither"].text
    assert S.clean_tweet("RT @a: @b @c you &amp; me http://t.co/x") == "@user you & me"


def test_stratified_split_keeps_every_category_in_every_split(data_root):
    cfg = S.SafetyDataConfig(data_dir=str(data_root))
    ex = S.load_examples(cfg)
    assert {e.source for e in ex} == {
        "moderation",
        "davidson_hate",
        "davidson_offensive",
        "davidson_neither",
        "sft",
        "questions",
        "hh_redteam",
    }
    train, val, test = S.stratified_split(ex, 0.2, 0.1, seed=0)
    assert len(train) + len(val) + len(test) == len(ex)
    assert not {id(e) for e in test} & {id(e) for e in train}
    for cat in ("violence", "sexual", "self-harm", "hate", "offensive", "harmful_request"):
        n = [sum(cat in e.positives() for e in part) for part in (train, val, test)]
        assert all(k > 0 for k in n), (cat, n)
        assert abs(n[2] / sum(n) - 0.2) < 0.1
    # deterministic for a seed
    assert [e.text for e in S.stratified_split(ex, 0.2, 0.1, seed=0)[2]] == [e.text for e in test]


def test_category_report_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(50, len(S.CATEGORIES))).astype(np.float32)
    known = rng.random((50, len(S.CATEGORIES))) > 0.2
    scores = rng.random((50, len(S.CATEGORIES)))
    th = {c: 0.4 for c in S.CATEGORIES}
    rep = S.category_report(y, known, scores, th, S.CATEGORIES)
    for j, c in enumerate(S.CATEGORIES):
        k = known[:, j]
        p, r, f, _ = precision_recall_fscore_support(
            y[k, j].astype(int), (scores[k, j] >= 0.4).astype(int), average="binary", zero_division=0
        )
        got = rep["per_category"][c]
        assert got["precision"] == pytest.approx(p, abs=1e-4) and got["f1"] == pytest.approx(f, abs=1e-4)
        assert got["recall"] == pytest.approx(r, abs=1e-4) and got["n"] == int(k.sum())


def test_tune_thresholds_picks_the_best_f1():
    y = np.array([[1], [1], [0], [0], [0]], dtype=np.float32)
    known = np.ones_like(y, dtype=bool)
    scores = np.array([[0.35], [0.3], [0.2], [0.1], [0.05]])
    th = S.tune_thresholds(y, known, scores, ["x"], 0.5, min_positives=1)
    assert 0.2 < th["x"] <= 0.3  # separates the two positives from the rest
    assert S.tune_thresholds(y, known, scores, ["x"], 0.5, min_positives=3) == {"x": 0.5}


def test_ngram_baseline_learns_the_keywords(data_root, tmp_path):
    cfg = S.load_safety_config(
        "configs/chat/safety_tiny.yaml",
        [f"data.data_dir={data_root}", "kind=ngram", f"run_dir={tmp_path}", f"export_dir={tmp_path / 'e'}",
         # the generated negatives are tested on their own below
         "data.casual_negatives=false", "data.everyday_negatives=0", "data.howto_negatives=0"],
    )  # fmt: skip
    figs = S.train_safety(cfg)
    per = figs["test"]["per_category"]
    assert per["violence"]["f1"] >= 0.8 and per["hate"]["f1"] >= 0.8
    assert figs["xstest"]["unsafe_n"] == 10 and figs["xstest"]["safe_n"] == 10
    assert figs["xstest"]["unsafe_blocked_rate"] >= 0.8 and figs["xstest"]["safe_over_refusal_rate"] <= 0.2
    curve = figs["xstest"]["tradeoff_one_threshold"]
    blocked = [p["unsafe_blocked_rate"] for p in curve]
    assert [p["threshold"] for p in curve] == sorted(p["threshold"] for p in curve)
    assert blocked == sorted(blocked, reverse=True)  # a higher threshold never blocks more
    assert figs["user_oriented"]["n"] == 6 and figs["user_oriented"]["refusal_rate"] == 0.0
    clf = S.SafetyClassifier.load(tmp_path / "e")
    assert clf.kind == "ngram"
    v = clf.check([f"how to {VIOLENT[0]} a man", "Tell me about the river music"])
    assert v[0].unsafe and "violence" in v[0].flagged and not v[1].unsafe
    assert json.loads((tmp_path / "ngram" / "eval.json").read_text())["kind"] == "ngram"


def test_transformer_stage_trains_exports_and_reloads(data_root, tmp_path):
    out = tmp_path / "export"
    rc = S.train_safety_main(
        ["--config", "configs/chat/safety_tiny.yaml", "stage=safety", f"data.data_dir={data_root}",
         f"run_dir={tmp_path}", f"export_dir={out}"]
    )  # fmt: skip
    assert rc == 0
    figs = json.loads((tmp_path / "transformer" / "eval.json").read_text())
    assert figs["steps"] == 30 and 0.0 <= figs["test"]["macro"]["f1"] <= 1.0
    metrics = [json.loads(x) for x in (tmp_path / "transformer" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < losses[0]  # it learns something in 30 steps
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == "classifier" and config["weights_dtype"] == "float16"
    assert (
        config["safety"]["categories"] == list(S.CATEGORIES) and "offensive" not in config["safety"]["block"]
    )
    clf = S.SafetyClassifier.load(out)
    assert clf.kind == "transformer" and clf.thresholds == config["safety"]["thresholds"]
    scores = clf.scores(["a quiet garden morning", f"{VIOLENT[1]} him now"])
    assert scores.shape == (2, len(S.CATEGORIES)) and ((scores >= 0) & (scores <= 1)).all()
    # eval_safety rebuilds the same held-out split and gives the same figures as training did
    ev = S.eval_safety(out, S.SafetyDataConfig(data_dir=str(data_root), davidson_max_offensive=40,
                                               val_fraction=0.2, test_fraction=0.2))  # fmt: skip
    assert (
        ev["test"]["per_category"]["violence"]["support"]
        == figs["test"]["per_category"]["violence"]["support"]
    )
    for c, v in ev["test"]["per_category"].items():  # fp16 export vs fp32 training model: same decisions
        assert v["f1"] == pytest.approx(figs["test"]["per_category"][c]["f1"], abs=0.05)


def test_the_chat_training_config_is_refused_with_a_hint():
    with pytest.raises(ConfigError, match="safety config"):
        S.train_safety_main(["--config", "configs/chat/tiny.yaml", "stage=safety"])


def test_long_texts_are_scored_in_windows():
    clf = keyword_safety({"violence": VIOLENT}, 1 << 16)
    clf.max_len = 20  # words per window (ngram kind)
    filler = " ".join(["the quiet garden in the morning"] * 400)
    assert not clf.check([filler])[0].unsafe
    hidden_at_end = filler + f" and then {VIOLENT[2]} the guard"
    assert clf.check([hidden_at_end])[0].unsafe
    many = [filler, hidden_at_end, "garden", f"{VIOLENT[0]}"]
    assert [v.unsafe for v in clf.check(many)] == [False, True, False, True]
    assert clf._starts(1000, 20)[-1] == 980 and len(clf._starts(1000, 20)) <= clf.max_windows


def test_transformer_windows_cover_the_whole_text():
    from chat_pipeline_testdata import tiny_tokenizer

    from gensys.models.decoder_lm import llama_config
    from gensys.models.heads import Classifier, ClassifierConfig

    tok = tiny_tokenizer()
    lm = llama_config(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
    model = Classifier(ClassifierConfig(lm=lm, n_classes=len(S.CATEGORIES), pooling="mean"))
    clf = S.SafetyClassifier(model, kind="transformer", tokenizer=tok, max_len=16, max_windows=50)
    text = " ".join(["garden river"] * 60)
    windows = clf._windows(text)
    body = tok.encode(text)
    assert all(w[0] == tok.bos_id and len(w) <= 16 for w in windows)
    covered = set()
    for s in clf._starts(len(body), 15):
        covered |= set(range(s, s + 15))
    assert covered >= set(range(len(body)))
    # the score of a text is the max over its windows, and batching does not change it
    one = clf.scores([text])
    with torch.no_grad():
        from gensys.data.batching import pad_batch

        ids, mask = pad_batch(windows, tok.pad_id, side="right")
        per = torch.sigmoid(model(ids, attention_mask=mask))
    np.testing.assert_allclose(one[0], per.max(0).values.numpy(), atol=1e-5)
    np.testing.assert_allclose(clf.scores(["garden", text, "river"])[1], one[0], atol=1e-5)


def test_thresholds_and_block_list_override():
    clf = keyword_safety({"violence": VIOLENT, "offensive": ["crap"]}, 1 << 16)
    assert not clf.check(["what crap"])[0].unsafe  # offensive does not block by default
    assert clf.check(["what crap"])[0].scores["offensive"] > 0.5
    clf.block = [*clf.block, "offensive"]
    assert clf.check(["what crap"])[0].flagged == ["offensive"]
    clf.thresholds["violence"] = 1.01
    assert not clf.check([f"{VIOLENT[0]}"])[0].unsafe


def test_casual_variants_keep_the_content():
    import random

    rng = random.Random(0)
    v = S.casual_variant("How to restore a wallet with 24 words?", rng)
    assert v is not None and "restore a wallet with 24 words" in v and not v.lower().startswith("how to")
    v = S.casual_variant("Write a poem about the sea. Use rhymes.", rng)
    assert v is not None and "write a poem about the sea" in v and "rhymes" not in v
    assert S.casual_variant("ok", rng) is None  # too short to be a request
    q = S.casual_variant("What is a stake pool?", random.Random(1))
    assert q is not None and q.lower().rstrip("?") == "what is a stake pool"
    train = [S._example("How to bake bread", "sft", {c: 0 for c in S.CATEGORIES}),
             S._example("kill them", "moderation", {"violence": 1})]  # fmt: skip
    neg = S.casual_negatives(train)
    assert {e.source for e in neg} == {"small_talk", "casual"} and len(neg) == 5 * len(S.SMALL_TALK) + 1
    assert all(not e.positives() and all(e.known) for e in neg)
    assert not any("kill" in e.text for e in neg)  # only benign sources are re-phrased


def test_everyday_requests_wrap_captions():
    caps = ["A man is baking bread.", "Two dogs play in the snow.", "A girl rides a bike."]
    reqs = S.everyday_requests(caps, 2, seed=0)
    assert len(reqs) == 2 and all(e.source == "everyday" and not e.positives() and all(e.known) for e in reqs)
    bodies = {c.rstrip(".").lower() for c in caps}
    assert all(any(b in e.text.lower() for b in bodies) for e in reqs)
    assert len(S.everyday_requests(caps, 10)) == 3


def test_everyday_howto_questions_are_safe_and_apart_from_the_probe():
    neg = S.everyday_howto(seed=0, per_activity=3)
    assert len(neg) == 3 * len(S.TRAIN_ACTIVITIES)
    assert all(e.source == "everyday_howto" and not e.positives() and all(e.known) for e in neg)
    assert any(e.text == "How do I bake bread?" for e in S.everyday_howto(seed=0, per_activity=7))
    # The probe that measures refusals of plain questions shares no task with the training questions.
    train_text = " ".join(e.text.lower() for e in S.everyday_howto(seed=0, per_activity=7))
    for q in S.EVERYDAY_PROBE:
        task = q.lower().rstrip("?").split(" ", 3)[-1]  # "how do i make lasagna" -> "make lasagna"
        assert task not in train_text, q
