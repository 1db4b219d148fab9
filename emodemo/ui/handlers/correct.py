"""Corrections from the Analyse tab and /correct: who they are recorded under, storing one
(once: a double submit stores one row), and the language fields of C4 when the store has them."""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional

from ... import analysis
from ...errors import EmodemoError
from .. import markdown as md
from .. import state as S
from .base import guard

FORM_CLEARED = {"label_in": None, "note_in": ""}


def identity(ctx, annotator: Any, account: Optional[str]) -> dict:
    """Who a correction is recorded under ({"annotator", "account"} for the store): where
    sign-in is on, the signed-in account (shown as the annotator too; a typed name is never
    trusted there), else the optional typed name and no account."""
    if ctx.sign_in:
        if not account:
            raise EmodemoError("Sign in with your Hugging Face account to submit corrections.")
        return {"annotator": account, "account": account}
    return {"annotator": analysis.blank_none(annotator), "account": None}


def language_fields(store, span: Mapping) -> dict:
    """language= / translation= for `store.add` (C4) when the store accepts them and a
    language was identified; {} otherwise (a store without the columns, typed transcripts)."""
    lang = span.get("language") or None
    if not lang:
        return {}
    try:
        params = inspect.signature(store.add).parameters
    except (TypeError, ValueError):
        return {}
    out = {}
    if "language" in params:
        out["language"] = dict(lang)
    if "translation" in params and span.get("original"):
        out["translation"] = span.get("asr")
    return out


def _submission(state: dict, lab: str, transcript: Any, note: Any, who: dict) -> str:
    """What makes two submits of the form the same correction."""
    return repr((state["path"], state["selected"], lab, analysis.blank_none(transcript),
                 analysis.blank_none(note), who["annotator"]))


@guard("correct_msg")
def correct(ctx, state: Optional[dict], label: Any, annotator: Optional[str] = None,
            note: Optional[str] = None, transcript: Optional[str] = None,
            audio_weight: Optional[float] = None, account: Optional[str] = None) -> dict:
    """Store the person's label for the shown clip (or segment) with the prediction, once:
    the same submission again names the stored row instead of adding one. Clears the form."""
    if not state:
        raise EmodemoError("Analyse a clip first, then tell us the emotion you hear.")
    last = list((state.get("stored") or {}).values())
    if label in (None, "") and last:      # a second click on the cleared form: said, not an error
        return {"correct_msg": md.correction_kept(last[-1])}
    lab = analysis.check_label(label, ctx.labels)
    analysis.check_texts(ctx.limits, transcript, annotator, note)
    who = identity(ctx, annotator, account)
    key = _submission(state, lab, transcript, note, who)
    done = state.setdefault("stored", {})
    if key in done:
        return {"correct_msg": md.correction_duplicate(done[key]), "stored_id": done[key],
                **FORM_CLEARED}
    pred = S.prediction_record(ctx.rec, state, audio_weight)
    span = S.correction_span(state)
    cid = ctx.store.add(state["path"], lab, **who,
                        transcript=analysis.blank_none(transcript), prediction=pred,
                        note=analysis.blank_none(note), start=span[0], end=span[1],
                        **language_fields(ctx.store, S.selected(state)))
    done[key] = int(cid)
    if getattr(cid, "duplicate", False):     # the store recognised a double submit
        return {"correct_msg": md.correction_duplicate(int(cid)), "stored_id": int(cid),
                "state": state, **FORM_CLEARED}
    row = ctx.store.get(cid) or {}
    name = who["annotator"].strip() if who["annotator"] else None
    msg = md.correction_stored(int(cid), lab, pred["label"], row.get("media_sha256") or "", span, name)
    return {"correct_msg": msg, "stored_id": int(cid), "state": state, **FORM_CLEARED}


def api_correct(ctx, audio: Any, label: Any, transcript: Optional[str] = None,
                annotator: Optional[str] = None, note: Optional[str] = None,
                start: Optional[float] = None, end: Optional[float] = None,
                prediction: Optional[Mapping] = None, account: Optional[str] = None) -> dict:
    """Store a correction for API callers; returns its id, label and clip hash."""
    lab = analysis.check_label(label, ctx.labels)
    analysis.check_texts(ctx.limits, transcript, annotator, note)
    who = identity(ctx, annotator, account)
    path = analysis.audio_path(audio, ctx.limits, ctx.work_dir)
    analysis.check_file(path, ctx.limits)
    if prediction is not None and not isinstance(prediction, Mapping):
        raise EmodemoError("prediction must be a JSON object (as returned by /predict)")
    pred = dict(prediction) if prediction else None
    if pred is not None:
        pred.pop("segments", None)
    cid = ctx.store.add(path, lab, **who,
                        transcript=analysis.blank_none(transcript), prediction=pred,
                        note=analysis.blank_none(note), start=start, end=end)
    row = ctx.store.get(cid)
    return {"id": int(cid), "label": lab, "media_sha256": row["media_sha256"] if row else None,
            "start": row["start"] if row else start, "end": row["end"] if row else end}
