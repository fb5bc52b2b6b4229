"""Classification metrics: accuracy, precision / recall / F1 (binary, micro, macro, weighted), confusion.

Definitions follow scikit-learn (proven equal in tests/metrics/test_metrics_classification.py): labels are the
sorted union of the labels seen in `y_true` and `y_pred` unless given; a ratio whose denominator is zero takes
`zero_division` (default 0.0, scikit-learn's value after its warning).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from gensys.metrics.inputs import MetricInputError, check_same_length

Average = Literal["binary", "micro", "macro", "weighted"] | None


def _labels_arrays(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise MetricInputError(f"expected 1-D label arrays, got shapes {t.shape} and {p.shape}")
    check_same_length(t, p)
    if t.size == 0:
        raise MetricInputError("empty input: no labels to score")
    return t, p


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of positions where the predicted label equals the true label."""
    t, p = _labels_arrays(y_true, y_pred)
    return float(np.mean(t == p))


def confusion_matrix(y_true: Any, y_pred: Any, labels: Any = None) -> np.ndarray:
    """(C, C) int matrix: row = true label, column = predicted label, in the order of `labels`."""
    t, p = _labels_arrays(y_true, y_pred)
    labels = np.unique(np.concatenate([t, p])) if labels is None else np.asarray(labels)
    index = {lab: i for i, lab in enumerate(labels.tolist())}
    keep = [(index[a], index[b]) for a, b in zip(t.tolist(), p.tolist()) if a in index and b in index]
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    if keep:
        rows, cols = np.array(keep).T
        np.add.at(cm, (rows, cols), 1)
    return cm


def _ratio(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    num, den = num.astype(np.float64), den.astype(np.float64)
    out = np.full(num.shape, float(zero_division))
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_recall_f1(
    y_true: Any,
    y_pred: Any,
    *,
    average: Average = "binary",
    pos_label: Any = 1,
    labels: Any = None,
    beta: float = 1.0,
    zero_division: float = 0.0,
) -> tuple[Any, Any, Any]:
    """Precision, recall and F-beta. `average=None` returns per-label arrays in label order.

    binary: scores of `pos_label` only; micro: from tp/fp/fn summed over labels; macro: unweighted mean over
    labels; weighted: mean weighted by each label's support (its count in `y_true`).
    """
    t, p = _labels_arrays(y_true, y_pred)
    present = np.unique(np.concatenate([t, p]))
    if average == "binary":
        if len(present) > 2:
            raise MetricInputError(
                f"average='binary' needs at most 2 labels, found {len(present)}; use macro/micro"
            )
        if len(present) == 2 and pos_label not in present.tolist():
            raise MetricInputError(f"pos_label={pos_label!r} is not one of the labels {present.tolist()}")
        labels = np.asarray([pos_label])
    elif average not in ("micro", "macro", "weighted", None):
        raise MetricInputError(f"unknown average {average!r}: use binary, micro, macro, weighted or None")
    labels = present if labels is None else np.asarray(labels)
    cm = confusion_matrix(t, p, labels=np.unique(np.concatenate([present, labels])))
    all_labels = np.unique(np.concatenate([present, labels])).tolist()
    idx = np.array([all_labels.index(lab) for lab in labels.tolist()])
    tp = np.diag(cm)[idx]
    fp = cm.sum(axis=0)[idx] - tp  # predicted as the label, truly something else
    fn = cm.sum(axis=1)[idx] - tp  # truly the label, predicted as something else
    support = tp + fn
    if average == "micro":
        tp, fp, fn = tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True)
    precision = _ratio(tp, tp + fp, zero_division)
    recall = _ratio(tp, tp + fn, zero_division)
    b2 = beta * beta
    # F from counts (not from rounded P and R), as scikit-learn >= 1.3 does; 0/0 -> zero_division
    f = _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp, zero_division)
    if average is None:
        return precision, recall, f
    if average == "weighted":
        if support.sum() == 0:
            return (float(zero_division),) * 3
        w = support / support.sum()
        return float(precision @ w), float(recall @ w), float(f @ w)
    return float(precision.mean()), float(recall.mean()), float(f.mean())


def precision(y_true: Any, y_pred: Any, **kw: Any) -> Any:
    """Precision tp / (tp + fp); keyword arguments as `precision_recall_f1`."""
    return precision_recall_f1(y_true, y_pred, **kw)[0]


def recall(y_true: Any, y_pred: Any, **kw: Any) -> Any:
    """Recall tp / (tp + fn); keyword arguments as `precision_recall_f1`."""
    return precision_recall_f1(y_true, y_pred, **kw)[1]


def f1(y_true: Any, y_pred: Any, **kw: Any) -> Any:
    """F1 = 2 tp / (2 tp + fp + fn); keyword arguments as `precision_recall_f1`."""
    return precision_recall_f1(y_true, y_pred, **kw)[2]
