"""Classification, regression and ranking metrics equal scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from gensys.metrics import (
    MetricInputError,
    accuracy,
    average_precision_score,
    confusion_matrix,
    mae,
    mean_average_precision,
    mrr,
    mse,
    ndcg_at_k,
    ndcg_score,
    precision_at_k,
    precision_recall_f1,
    recall_at_k,
    rmse,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None])
def test_multiclass_prf_equals_sklearn(seed: int, average: str | None) -> None:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.6, t, rng.integers(0, 6, 300))  # label 5 only predicted: zero support
    ours = precision_recall_f1(t, p, average=average)
    ref = skm.precision_recall_fscore_support(t, p, average=average, zero_division=0.0)[:3]
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert accuracy(t, p) == skm.accuracy_score(t, p)
    np.testing.assert_array_equal(confusion_matrix(t, p), skm.confusion_matrix(t, p))


def test_binary_and_labels_subset_equal_sklearn() -> None:
    rng = np.random.default_rng(3)
    t, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    for pos in (0, 1):
        ours = precision_recall_f1(t, p, average="binary", pos_label=pos)
        ref = skm.precision_recall_fscore_support(t, p, average="binary", pos_label=pos)[:3]
        np.testing.assert_allclose(ours, ref, atol=1e-12)
    t3, p3 = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    for avg in ("micro", "macro"):
        ours = precision_recall_f1(t3, p3, average=avg, labels=[1, 3])
        ref = skm.precision_recall_fscore_support(t3, p3, average=avg, labels=[1, 3])[:3]
        np.testing.assert_allclose(ours, ref, atol=1e-12)
    cm_labels = ["b", "a"]
    ts, ps = np.array(["a", "b", "c", "a"]), np.array(["b", "b", "a", "a"])
    np.testing.assert_array_equal(
        confusion_matrix(ts, ps, labels=cm_labels), skm.confusion_matrix(ts, ps, labels=cm_labels)
    )


def test_zero_division_value_is_used() -> None:
    # nothing predicted positive: precision is 0/0
    assert precision_recall_f1([1, 0, 1], [0, 0, 0], average="binary")[0] == 0.0
    assert precision_recall_f1([1, 0, 1], [0, 0, 0], average="binary", zero_division=1.0)[0] == 1.0


def test_regression_equals_sklearn() -> None:
    rng = np.random.default_rng(0)
    t, p = rng.normal(size=500), rng.normal(size=500)
    assert mse(t, p) == pytest.approx(skm.mean_squared_error(t, p), abs=1e-12)
    assert mae(t, p) == pytest.approx(skm.mean_absolute_error(t, p), abs=1e-12)
    assert rmse(t, p) == pytest.approx(skm.root_mean_squared_error(t, p), abs=1e-12)
    t2, p2 = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    assert rmse(t2, p2) == pytest.approx(skm.root_mean_squared_error(t2, p2), abs=1e-12)


def test_average_precision_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 60)
        y[0] = 1
        s = rng.integers(0, 8, 60).astype(float)  # many ties
        assert average_precision_score(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("k", [None, 1, 3, 10])
def test_ndcg_equals_sklearn_with_ties_and_graded_gains(k: int | None) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, (30, 12)).astype(float)
    y[0] = 0  # a query without relevant items scores 0 in both
    s = rng.integers(0, 5, (30, 12)).astype(float)
    assert ndcg_score(y, s, k=k) == pytest.approx(skm.ndcg_score(y, s, k=k), abs=1e-12)


def test_ranked_list_metrics_match_score_based_references() -> None:
    rng = np.random.default_rng(2)
    ranked, rel_sets, graded, aps, nd = [], [], [], [], []
    for _ in range(25):
        gains = rng.integers(0, 3, 15).astype(float)
        gains[rng.integers(15)] = 2.0
        score = rng.permutation(15).astype(float)  # no ties: a strict ranking
        order = list(np.argsort(-score))
        ranked.append(order)
        rel_sets.append({i for i in range(15) if gains[i] > 0})
        graded.append({i: gains[i] for i in range(15) if gains[i] > 0})
        aps.append(skm.average_precision_score(gains > 0, score))
        nd.append(skm.ndcg_score(gains[None], score[None], k=5))
    assert mean_average_precision(ranked, rel_sets) == pytest.approx(np.mean(aps), abs=1e-12)
    assert ndcg_at_k(ranked, graded, k=5) == pytest.approx(np.mean(nd), abs=1e-12)
    # precision@k / recall@k / MRR from their definitions
    p3 = np.mean([len(set(r[:3]) & rel) / 3 for r, rel in zip(ranked, rel_sets)])
    r3 = np.mean([len(set(r[:3]) & rel) / len(rel) for r, rel in zip(ranked, rel_sets)])
    rr = np.mean([1 / (1 + next(i for i, d in enumerate(r) if d in rel)) for r, rel in zip(ranked, rel_sets)])
    assert precision_at_k(ranked, rel_sets, 3) == pytest.approx(p3)
    assert recall_at_k(ranked, rel_sets, 3) == pytest.approx(r3)
    assert mrr(ranked, rel_sets) == pytest.approx(rr)
    assert mrr([["x", "y"]], [{"z"}]) == 0.0


def test_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(MetricInputError, match="different lengths"):
        accuracy([1, 2], [1])
    with pytest.raises(MetricInputError, match="empty"):
        accuracy([], [])
    with pytest.raises(MetricInputError, match="at most 2 labels"):
        precision_recall_f1([0, 1, 2], [0, 1, 2], average="binary")
    with pytest.raises(MetricInputError, match="NaN"):
        mse([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(MetricInputError, match="no relevant"):
        recall_at_k([["a"]], [set()], 1)
    with pytest.raises(MetricInputError, match="no positive"):
        average_precision_score([0, 0], [0.1, 0.2])
