"""Regression metrics: mean squared error, mean absolute error, root mean squared error (as scikit-learn)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gensys.metrics.inputs import MetricInputError


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true.detach().cpu() if hasattr(y_true, "detach") else y_true, dtype=np.float64)
    p = np.asarray(y_pred.detach().cpu() if hasattr(y_pred, "detach") else y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise MetricInputError(f"y_true and y_pred have different shapes {t.shape} and {p.shape}")
    if t.size == 0:
        raise MetricInputError("empty input: nothing to score")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise MetricInputError("y_true / y_pred contain NaN or inf")
    return t, p


def mse(y_true: Any, y_pred: Any) -> float:
    """Mean of squared errors over all elements (multi-output: uniform average over outputs)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean((t - p) ** 2))


def mae(y_true: Any, y_pred: Any) -> float:
    """Mean of absolute errors over all elements."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def rmse(y_true: Any, y_pred: Any) -> float:
    """Square root of the MSE (for 2-D input: mean over outputs of each output's RMSE, as scikit-learn)."""
    t, p = _pair(y_true, y_pred)
    if t.ndim == 2:
        return float(np.mean(np.sqrt(np.mean((t - p) ** 2, axis=0))))
    return float(np.sqrt(np.mean((t - p) ** 2)))
