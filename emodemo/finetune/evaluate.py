"""Measuring base and fine-tuned models: branch probabilities, metrics, calibration, the reference
gate, and the per-class account of what changed."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np


def tempered(p, t: float):
    if t == 1.0:
        return p
    lp = np.log(np.clip(p, 1e-12, 1.0)) / t
    lp -= lp.max(1, keepdims=True)
    e = np.exp(lp)
    return e / e.sum(1, keepdims=True)


def fused_proba(fusion, pa, pt, mask):
    """Fusion where a transcript exists, the audio result elsewhere (as the recognizer does)."""
    out = pa.copy()
    if pt is not None and mask.any():
        out[mask] = fusion(pa[mask], pt)
    return out


def evaluate_models(speech, text, fusion, cfg: dict, items: Sequence) -> dict:
    """UA/WA/macro-F1 of the audio, text (items with transcripts) and fused outputs on `items`."""

    from ..training import metrics
    from ..training.evaluate import branch_proba
    labels = list(cfg["labels"])
    items = [i for i in items if i.label in labels]
    if not items:
        return {}
    y = np.array([labels.index(i.label) for i in items])
    pa, pt, mask = branch_proba(speech, text, cfg, items)
    out = {}
    if pa is not None:
        out["audio"] = metrics(y, pa.argmax(1), len(labels))
        out["fused"] = metrics(y, fused_proba(fusion, pa, pt, mask).argmax(1), len(labels))
    if pt is not None:
        out["text"] = metrics(y[mask], pt.argmax(1), len(labels))
    return out


def compare(before: Mapping, after: Mapping, tolerance: float) -> list[str]:
    """Reasons the new model is worse than the base beyond `tolerance` UA on a reference set."""
    bad = []
    for branch in ("audio", "fused", "text"):
        if branch in before and branch in after:
            b, a = before[branch]["UA"], after[branch]["UA"]
            if a < b - tolerance - 1e-9:
                bad.append(f"{branch} UA {a:.3f} < base {b:.3f} - tolerance {tolerance:g}")
    return bad


def gate(reference: Mapping[str, Mapping], tolerance: float, force: bool = False) -> dict:
    """Decide whether to write: reference = {spec: {"before": metrics, "after": metrics}}."""
    failures = []
    for spec, r in reference.items():
        failures += [f"{spec}: {m}" for m in compare(r.get("before", {}), r.get("after", {}), tolerance)]
    return {"passed": not failures, "forced": bool(force and failures), "write": not failures or force,
            "tolerance": tolerance, "failures": failures}


def short_metrics(m: Mapping) -> dict:
    return {b: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in mm.items() if k != "confusion"}
            for b, mm in m.items()}


def fit_temperature(p, y) -> float:
    """The temperature that minimises the negative log-likelihood of probabilities p (grid 0.2–5)."""
    y = np.asarray(y)
    best, best_t = float("inf"), 1.0
    for t in np.exp(np.linspace(np.log(0.2), np.log(5.0), 81)):
        nll = -np.log(tempered(p, float(t))[np.arange(len(y)), y] + 1e-12).mean()
        if nll < best:
            best, best_t = nll, float(t)
    return best_t


def softmax(logits: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / t
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def recalls(y: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> dict[str, Optional[float]]:
    """Recall per label (None where the label has no items)."""
    y, pred = np.asarray(y), np.asarray(pred)
    return {lab: (round(float((pred[y == k] == k).mean()), 4) if (y == k).any() else None)
            for k, lab in enumerate(labels)}


def changes(labels: Sequence[str], heldout: Mapping, reference: Mapping) -> dict:
    """Per-class recall before/after on the held-out corrections and the reference (first reference
    set), plus one sentence a person reads: the class that moved most on their clips, and the
    reference UA change. `heldout`/`reference`: {"before": {"recall": {...}, "UA"}, "after": ...}."""
    rows = []
    for lab in labels:
        row = {"label": lab}
        for name, src in (("heldout", heldout), ("reference", reference)):
            for when in ("before", "after"):
                row[f"{name}_{when}"] = ((src.get(when) or {}).get("recall") or {}).get(lab)
        rows.append(row)
    moved = [r for r in rows if r["heldout_before"] is not None and r["heldout_after"] is not None]
    parts = []
    if moved:
        r = max(moved, key=lambda r: abs(r["heldout_after"] - r["heldout_before"]))
        parts.append(f"{r['label']} recall on your clips {r['heldout_before']:.2f} → {r['heldout_after']:.2f}")
        hb, ha = heldout.get("before", {}).get("UA"), heldout.get("after", {}).get("UA")
        if hb is not None and ha is not None:
            parts.append(f"UA on your held-out clips {hb:.2f} → {ha:.2f}")
    rb, ra = (reference.get("before") or {}).get("UA"), (reference.get("after") or {}).get("UA")
    if rb is not None and ra is not None:
        parts.append(f"reference UA {ra - rb:+.2f}")
    return {"sentence": "; ".join(parts) + "." if parts else "", "per_class": rows}
