"""Branch probabilities over data items (the one rule: temperature divides the logits), and the
evaluation of a bundle on a data spec (WA / UA / macro-F1 per branch and fused)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..bundle import SpeechConfig, TextConfig
from ..data import Item
from ..text import clean_text
from .cards import plot_confusion
from .metrics import metrics
from .speech import SpeechDataset, speech_proba


def branch_proba(speech, text, cfg: Mapping, items: Sequence[Item], audio: Optional[np.ndarray] = None
                 ) -> tuple[Optional[np.ndarray], Optional[np.ndarray], np.ndarray]:
    """Audio and text probabilities of `items` under a bundle config's labels and temperatures.

    Returns (p_audio [n, C] or None when some item has no audio, p_text [k, C] for the k items whose
    cleaned transcript is not empty or None when there are none or `text` is None, has_text [n]
    boolean mask of those items). Each branch's temperature (`cfg["speech"]["temperature"]`,
    `cfg["text"]["temperature"]`, default 1) divides its logits before the softmax, as the
    recognizer does. `audio`: the items' audio probabilities when already known (fine-tuning reads
    them from the pooled rows it extracted), so the backbone does not run again."""
    labels = list(cfg["labels"])
    pa = audio
    if pa is None and items and all(i.audio for i in items):
        t = SpeechConfig.from_dict(cfg.get("speech") or {}).temperature     # its default: bundle.py
        pa = speech_proba(speech, SpeechDataset(items, labels, speech.feature, False), temperature=t)
    texts = [clean_text(i.transcript) for i in items]
    mask = np.array([bool(x) for x in texts], dtype=bool)
    pt = None
    if mask.any() and text is not None:
        t = TextConfig.from_dict(cfg.get("text") or {}).temperature
        pt = text.predict_proba([x for x in texts if x], temperature=t).double().numpy()
    return pa, pt, mask


def paired_proba(speech, text, items: Sequence[Item], labels: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_audio, p_text, y) for every item, for fitting and measuring fusion on paired data.
    An item without a transcript gets the text model's output for empty text."""
    pa, pt, mask = branch_proba(speech, text, {"labels": list(labels)}, items)
    if not mask.all():
        full = np.empty((len(items), len(labels)))
        full[~mask] = text.predict_proba([""]).double().numpy()
        if pt is not None:
            full[mask] = pt
        pt = full
    return pa, pt, np.array([list(labels).index(i.label) for i in items])


def evaluate(bundle: str | Path, spec: str, out_dir: str | Path | None = None) -> dict:
    """WA / UA / macro-F1 per branch and fused for a bundle on a data spec; JSON + confusion PNGs."""
    from ..data import load_spec
    from ..recognizer import load_recognizer
    rec = load_recognizer(bundle)
    labels = rec.labels
    items = [i for i in load_spec(spec) if i.label in labels]
    n = len(labels)
    y = np.array([labels.index(i.label) for i in items])
    report: dict = {"bundle": str(bundle), "data": spec, "n": len(items)}
    pa, pt, mask = branch_proba(rec.speech, rec.text_model, rec.config, items)
    pt = pt if mask.all() else None
    if pa is not None:
        report["audio"] = metrics(y, pa.argmax(1), n)
    if pt is not None:
        report["text"] = metrics(y, pt.argmax(1), n)
    if pa is not None:
        report["fused"] = metrics(y, rec.fusion(pa, pt).argmax(1), n)
    out = Path(out_dir or Path("runs") / "eval")
    out.mkdir(parents=True, exist_ok=True)
    for branch in ("audio", "text", "fused"):
        if branch in report:
            plot_confusion(report[branch]["confusion"], labels, out / f"confusion_{branch}.png",
                           f"{branch}: {spec}")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
