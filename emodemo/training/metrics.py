"""Classification metrics used by every training loop and evaluation: WA, UA, macro-F1, the
expected calibration error and the softmax temperature fit."""
from __future__ import annotations

from typing import Sequence

import math

import numpy as np

from ..fusion import unweighted_accuracy


def metrics(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> dict:
    """WA (accuracy), UA (mean per-class recall), macro-F1 and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    present = [c for c in range(n_classes) if cm[c].sum() > 0]
    f1 = []
    for c in present:
        tp, fp, fn = cm[c, c], cm[:, c].sum() - cm[c, c], cm[c].sum() - cm[c, c]
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"WA": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
            "UA": unweighted_accuracy(y_true, y_pred, n_classes),
            "macro_F1": float(np.mean(f1)) if f1 else 0.0,
            "n": int(len(y_true)), "confusion": cm.tolist()}


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence (equal-width bins)."""
    p, y = np.asarray(p), np.asarray(y)
    if not len(y):
        return float("nan")
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    out = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            out += m.mean() * abs(float((pred[m] == y[m]).mean()) - float(conf[m].mean()))
    return float(out)


def fit_temperature(p_sets: Sequence[np.ndarray], y_sets: Sequence[np.ndarray]) -> float:
    """The softmax temperature minimising the mean (over sets) NLL, searched on a log grid."""
    best, best_t = math.inf, 1.0
    for t in np.exp(np.linspace(np.log(0.5), np.log(4.0), 29)):
        nll = 0.0
        for p, y in zip(p_sets, y_sets):
            q = np.exp(np.log(np.clip(p, 1e-12, 1)) / t)
            q /= q.sum(1, keepdims=True)
            nll += -np.log(np.clip(q[np.arange(len(y)), y], 1e-12, 1)).mean()
        if nll < best:
            best, best_t = nll, float(t)
    return round(best_t, 3)


def tempered(p: np.ndarray, t: float) -> np.ndarray:
    q = np.exp(np.log(np.clip(p, 1e-12, 1)) / t)
    return q / q.sum(1, keepdims=True)
