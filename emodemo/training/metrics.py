"""Classification metrics used by every training loop and evaluation: WA, UA, macro-F1."""
from __future__ import annotations

from typing import Sequence

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
