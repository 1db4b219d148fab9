"""Classification metrics used by every training loop, evaluation and fine-tuning: WA, UA, macro-F1,
ECE, and temperature fitting (one home; fine-tuning and the multi-corpus recipe import them)."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

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


def ua(y_true: Sequence[int], y_pred: Sequence[int], classes: Optional[Iterable[int]] = None,
       empty: float = float("nan")) -> float:
    """UA (mean per-class recall) over `classes` (default: every class in `y_true`); `empty` when
    none of them has an item. The recall rule itself is `fusion.unweighted_accuracy` (fusion, in
    core, fits on it; this is the one implementation)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    keep = np.ones(len(y_true), bool) if classes is None else np.isin(y_true, list(classes))
    if not keep.any():
        return empty
    n = int(max(y_true.max(), y_pred.max() if len(y_pred) else 0)) + 1
    return unweighted_accuracy(y_true[keep], y_pred[keep], n)


def tempered(p: np.ndarray, t: float) -> np.ndarray:
    """Probabilities `p` re-tempered: softmax(log p / t)."""
    p = np.asarray(p, np.float64)
    if t == 1.0:
        return p
    lp = np.log(np.clip(p, 1e-12, 1.0)) / t
    lp -= lp.max(-1, keepdims=True)
    e = np.exp(lp)
    return e / e.sum(-1, keepdims=True)


TEMPERATURE_GRID = (0.2, 5.0, 81)      # log-spaced search: lowest, highest, points
HEAD_TEMPERATURE_GRID = (0.5, 4.0, 29)  # the multi-corpus recipes' heads (v5-v7 were fitted on it)


def fit_temperature(p: np.ndarray | Sequence[np.ndarray], y: np.ndarray | Sequence[np.ndarray],
                    grid: tuple[float, float, int] = TEMPERATURE_GRID) -> float:
    """The temperature minimising the negative log-likelihood of probabilities `p` [n, classes]
    with labels `y`; given lists of sets, the mean over sets of each set's NLL (every set counts
    the same, whatever its size). Searched on a log grid (lowest, highest, points)."""
    sets = [(p, y)] if isinstance(p, np.ndarray) and p.ndim == 2 else list(zip(p, y))
    sets = [(np.asarray(ps), np.asarray(ys)) for ps, ys in sets if len(ys)]
    if not sets:
        return 1.0
    lo, hi, steps = grid
    best, best_t = float("inf"), 1.0
    for t in np.exp(np.linspace(np.log(lo), np.log(hi), int(steps))):
        nll = sum(-np.log(tempered(ps, float(t))[np.arange(len(ys)), ys] + 1e-12).mean() for ps, ys in sets)
        if nll < best:
            best, best_t = nll, float(t)
    return best_t
