"""Measuring base and fine-tuned models: branch probabilities, metrics, calibration, the reference
gate, and the per-class account of what changed."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np


def fused_proba(fusion, pa, pt, mask):
    """Fusion where a transcript exists, the audio result elsewhere (as the recognizer does)."""
    out = pa.copy()
    if pt is not None and mask.any():
        out[mask] = fusion(pa[mask], pt)
    return out


def audio_proba(speech, temperature: float, rows) -> np.ndarray:
    """The audio branch's probabilities from clips' pooled rows (`features.Feats`: x pooled frames,
    b head logits): the model's adapter, if any, on (x, b), divided by the temperature, softmax;
    what its forward gives on those clips (`SpeechEmotionModel._logits`), without the backbone."""
    from .adapt import from_model
    return softmax(from_model(speech, rows.b.shape[1]).logits(rows.x, rows.b), temperature)


def evaluate_models(speech, text, fusion, cfg: dict, items: Sequence,
                    audio: Optional[np.ndarray] = None) -> dict:
    """UA/WA/macro-F1 of the audio, text (items with transcripts) and fused outputs on `items`
    (`audio`: their audio probabilities when already known, items with a label of `cfg` only)."""

    from ..training import metrics
    from ..training.evaluate import branch_proba
    labels = list(cfg["labels"])
    items = [i for i in items if i.label in labels]
    if not items:
        return {}
    if audio is not None and len(audio) != len(items):
        raise ValueError(f"{len(audio)} audio results for {len(items)} items")
    y = np.array([labels.index(i.label) for i in items])
    pa, pt, mask = branch_proba(speech, text, cfg, items, audio)
    out = {}
    if pa is not None:
        out["audio"] = metrics(y, pa.argmax(1), len(labels))
        out["fused"] = metrics(y, fused_proba(fusion, pa, pt, mask).argmax(1), len(labels))
    if pt is not None:
        out["text"] = metrics(y[mask], pt.argmax(1), len(labels))
    return out


def short_metrics(m: Mapping) -> dict:
    return {b: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in mm.items() if k != "confusion"}
            for b, mm in m.items()}


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


def with_recall(m: Mapping, labels: Sequence[str]) -> dict:
    """Short metrics plus per-class recall of the audio branch (from its confusion matrix)."""
    out = short_metrics(m)
    if "audio" in m and "confusion" in m["audio"]:
        cm = np.array(m["audio"]["confusion"])
        out["audio"]["recall"] = {lab: (round(float(cm[k, k] / cm[k].sum()), 4) if cm[k].sum() else None)
                                  for k, lab in enumerate(labels)}
    return out


def guard_metrics(guard, base, new, labels) -> dict:
    """Audio metrics of the base adapter and the new one (None: the base) on the replay guard."""
    from ..training import metrics
    n = len(labels)
    return {"before": {"audio": metrics(guard.y, base.logits(guard.x, guard.b).argmax(1), n)},
            "after": {"audio": metrics(guard.y, (new or base).logits(guard.x, guard.b).argmax(1), n)}}


def summary_for(m: Mapping) -> dict:
    a = m.get("audio") or {}
    return {"UA": a.get("UA"), "recall": a.get("recall")}


# ---- the gate's checks, named for what they are ----------------------------------------------
GUARD_SET = "base training clips (replay guard)"
RECALL_DROP = 0.05            # a class whose recall fell more than this is named in the advice


def dropped_classes(before: Mapping, after: Mapping, labels: Sequence[str]) -> list[tuple[str, float, float]]:
    """(label, recall before, after) of the classes whose audio recall fell by more than RECALL_DROP,
    largest fall first (recalls from `with_recall`)."""
    rb = (before.get("audio") or {}).get("recall") or {}
    ra = (after.get("audio") or {}).get("recall") or {}
    out = [(lab, rb[lab], ra[lab]) for lab in labels
           if rb.get(lab) is not None and ra.get(lab) is not None and ra[lab] < rb[lab] - RECALL_DROP]
    return sorted(out, key=lambda t: t[2] - t[1])


def advice(dropped: Sequence[tuple[str, float, float]], corrected: set, knobs: Mapping[str, str]) -> str:
    """What a person can do about a failed check, from which classes fell and whether anyone
    corrected clips of them."""
    force = knobs.get("force", "force writing it")
    absent = [d for d in dropped if d[0] not in corrected]
    present = [d for d in dropped if d[0] in corrected]
    fell = lambda ds: ", ".join(f"{lab} {b:.2f} → {a:.2f}" for lab, b, a in ds)  # noqa: E731
    if absent:
        names = " and ".join(lab for lab, _, _ in absent)
        return (f"recall of classes nobody corrected fell ({fell(absent)}): correct some {names} "
                f"clips too, or {force}")
    if present:
        return (f"recall of corrected classes fell on this data ({fell(present)}): the corrections may "
                f"come from a different setting; add more varied ones, or {force}")
    return f"add more corrections (from more speakers), or {force}"


def named_checks(reference: Mapping[str, Mapping], labels: Sequence[str], tolerance: float,
                 corrected: set, knobs: Mapping[str, str]) -> list[dict]:
    """One check per reference set and branch: the new UA must not fall below the base's minus
    `tolerance`. Each is {"name", "passed", "value", "threshold", "what_to_do"}, named for what it
    measures ("keeps what the base knew: base training clips (replay guard), audio UA")."""
    checks = []
    for spec, r in reference.items():
        before, after = r.get("before", {}), r.get("after", {})
        ref_b, ref_a = with_recall(before, labels), with_recall(after, labels)
        for branch in ("audio", "fused", "text"):
            if branch not in before or branch not in after:
                continue
            b, a = before[branch]["UA"], after[branch]["UA"]
            threshold = b - tolerance
            passed = a >= threshold - 1e-9
            where = ("keeps what the base knew: " + spec) if spec == GUARD_SET else f"reference set {spec}"
            checks.append({"name": f"{where}, {branch} UA", "passed": bool(passed), "value": round(a, 4),
                           "threshold": round(threshold, 4), "base": round(b, 4),
                           "what_to_do": "" if passed else advice(dropped_classes(ref_b, ref_a, labels),
                                                                   corrected, knobs)})
    return checks


def gate(reference: Mapping[str, Mapping], tolerance: float, force: bool = False,
         labels: Sequence[str] = (), corrected: Optional[set] = None,
         knobs: Optional[Mapping[str, str]] = None) -> dict:
    """Decide whether to write: reference = {set name: {"before": metrics, "after": metrics}}.
    "checks": the named checks (`named_checks`); "failures": one line per failed check."""
    checks = named_checks(reference, labels, tolerance, set(corrected or ()), knobs or {})
    failures = [f"{c['name']} {c['value']:.3f} < {c['threshold']:.3f} (base {c['base']:.3f} - tolerance "
                f"{tolerance:g}): {c['what_to_do']}" for c in checks if not c["passed"]]
    return {"passed": not failures, "forced": bool(force and failures), "write": not failures or force,
            "tolerance": tolerance, "failures": failures, "checks": list(checks)}
