"""Checks on what goes into the store: labels, text fields, spans, the model's prediction.

Each check returns the value as it is stored or raises a StoreError whose message says what is
wrong (field name, limit, the allowed labels).
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Optional, Sequence

from ..labels import LABELS as DEFAULT_LABELS
from ..labels import NONE_LABEL, normalize_label, unknown_label
from ..textnorm import MAX_TEXT_CHARS, clean_text, text_too_long
from .records import StoreError

MAX_ANNOTATOR_CHARS = 200
MAX_LABEL_CHARS = 64                     # labels and predicted label
MAX_BUNDLE_CHARS = 200
MAX_BUNDLE_VERSION_CHARS = 100
SPAN_TOLERANCE_S = 0.1                   # start/end may overshoot the clip by this much


def short(value: Any, n: int = 40) -> str:
    """repr(value), cut to `n` characters: for messages about bad input."""
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def clean_field(value: Any, field: str, limit: int, strip: bool = False) -> Optional[str]:
    """Text as stored: `emodemo.textnorm.clean_text` with the whitespace kept (undecodable bytes,
    lone surrogates and NUL -> U+FFFD); None stays None; over `limit` characters is an error."""
    if value is None:
        return None
    if not isinstance(value, (str, bytes, bytearray, memoryview)):
        raise StoreError(f"{field} must be text, got {type(value).__name__}")
    value = clean_text(value, keep_whitespace=True)
    if strip:
        value = value.strip()
        if not value:
            return None
    if text_too_long(field, len(value), limit):
        raise StoreError(text_too_long(field, len(value), limit))
    return value


class LabelSet:
    """The labels a store accepts (``"none"`` = none of these always included), matched as
    `emodemo.labels.normalize_label` does and returned in their canonical spelling."""

    def __init__(self, labels: Optional[Sequence[str]] = None):
        self.labels = tuple(labels) if labels is not None else DEFAULT_LABELS
        if not self.labels:
            raise StoreError("labels must not be empty")

    def check(self, label: Any) -> str:
        canonical = normalize_label(label, self.labels)
        if canonical is None:
            raise StoreError(unknown_label(label, self.labels))
        return canonical


def seconds(value: Any, name: str) -> Optional[float]:
    """A time in seconds: None, or a finite non-negative number."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise StoreError(f"{name} must be a number of seconds, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise StoreError(f"{name} must be a number of seconds, got {short(value)}") from None
    if not math.isfinite(x) or x < 0:
        raise StoreError(f"{name} must be a finite, non-negative number of seconds, got {x}")
    return x


def check_span(start: Any, end: Any, duration: Optional[float]) -> tuple[Optional[float], Optional[float]]:
    """(start, end) in seconds: end after start, both inside the audio (when its duration is
    known) give or take SPAN_TOLERANCE_S."""
    s, e = seconds(start, "start"), seconds(end, "end")
    if s is not None and e is not None and e <= s:
        raise StoreError(f"end ({e:g} s) must be after start ({s:g} s)")
    if duration:
        if s is not None and s >= duration + SPAN_TOLERANCE_S:
            raise StoreError(f"start ({s:g} s) is past the end of the audio ({duration:.3f} s)")
        if e is not None and e > duration + SPAN_TOLERANCE_S:
            raise StoreError(f"end ({e:g} s) is past the end of the audio ({duration:.3f} s)")
    return s, e


def probs_json(value: Any, field: str) -> Optional[str]:
    """{label: probability} as JSON text; non-finite probabilities become null."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        try:
            value = dict(value)
        except (TypeError, ValueError):
            raise StoreError(f"prediction {field} must be a mapping of label -> probability, "
                             f"got {type(value).__name__}") from None
    out: dict[str, Optional[float]] = {}
    for k, v in value.items():
        key = clean_field(k if isinstance(k, (str, bytes)) else str(k), f"prediction {field} label",
                          MAX_LABEL_CHARS)
        try:
            p = float(v)
        except (TypeError, ValueError):
            raise StoreError(f"prediction {field}[{key!r}] is not a number: {short(v)}") from None
        out[key] = p if math.isfinite(p) else None
    return json.dumps(out, ensure_ascii=False, allow_nan=False)


def loads(value: Optional[str]) -> Any:
    """JSON text back to a value; text that is not JSON is returned as it is."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


MAX_LANGUAGE_CHARS = 16


def check_language(value: Any) -> dict[str, Any]:
    """The language columns from a code ("pl") or the recognizer's dict ({"code": "pl",
    "name": "Polish", "probability": 0.98}, `emodemo.recognizer.Prediction.language`)."""
    if value is None:
        return {}
    prob = None
    if isinstance(value, Mapping):
        code, prob = value.get("code"), value.get("probability")
    else:
        code = value
    code = clean_field(code if code is None or isinstance(code, (str, bytes)) else str(code),
                       "language", MAX_LANGUAGE_CHARS, strip=True)
    if prob is not None:
        try:
            prob = float(prob)
        except (TypeError, ValueError):
            raise StoreError(f"language probability is not a number: {short(prob)}") from None
        if not (math.isfinite(prob) and 0.0 <= prob <= 1.0):
            raise StoreError(f"language probability must be in [0, 1], got {prob}")
    out: dict[str, Any] = {"language": code.lower() if code else None}
    if prob is not None:
        out["language_probability"] = prob
    return out


def _pred_get(pred: Any, *names: str) -> Any:
    for name in names:
        if isinstance(pred, Mapping):
            if name in pred:
                return pred[name]
        elif hasattr(pred, name):
            return getattr(pred, name)
    return None


def prediction_fields(pred: Any) -> dict[str, Any]:
    """Column values from a prediction dict or object (label, audio, text, fused, transcript,
    bundle / bundle_name, bundle_version); whatever is missing is stored as NULL."""
    if pred is None:
        return {}
    if isinstance(pred, (str, bytes, int, float)):
        raise StoreError("prediction must be a dict or a Prediction object, "
                         f"got {type(pred).__name__}")
    bundle = _pred_get(pred, "bundle_name", "bundle")
    version = _pred_get(pred, "bundle_version")
    if bundle is not None and not isinstance(bundle, (str, bytes)):  # a bundle object
        version = version if version is not None else getattr(bundle, "version", None)
        bundle = getattr(bundle, "name", None)
    if version is not None and not isinstance(version, (str, bytes)):
        version = str(version)
    predicted = _pred_get(pred, "label")
    if predicted is not None and not isinstance(predicted, (str, bytes)):
        predicted = str(predicted)
    # start/end/confidence of a Prediction are not taken over: pass start/end to add() explicitly.
    extra = check_language(_pred_get(pred, "language"))
    translation = clean_field(_pred_get(pred, "translation"), "translation", MAX_TEXT_CHARS)
    if translation:
        extra["translation"] = translation
    return {
        **extra,
        "predicted_label": clean_field(predicted, "predicted label", MAX_LABEL_CHARS),
        "prob_audio": probs_json(_pred_get(pred, "audio", "prob_audio"), "audio"),
        "prob_text": probs_json(_pred_get(pred, "text", "prob_text"), "text"),
        "prob_fused": probs_json(_pred_get(pred, "fused", "prob_fused"), "fused"),
        "transcript_shown": clean_field(_pred_get(pred, "transcript"), "predicted transcript",
                                        MAX_TEXT_CHARS),
        "bundle_name": clean_field(bundle, "bundle name", MAX_BUNDLE_CHARS, strip=True),
        "bundle_version": clean_field(version, "bundle version", MAX_BUNDLE_VERSION_CHARS,
                                      strip=True),
    }
