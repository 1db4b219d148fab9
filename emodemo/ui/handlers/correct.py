"""Corrections from the Analyse tab and /correct: who they are recorded under, storing one
(once: a double submit stores one row), who speaks in the clip (optional: fine-tuning keeps each
speaker's clips on one side of its held-out check), and the language fields of C4 when the store
has them."""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional, TypedDict, Unpack

from ... import analysis
from ...errors import EmodemoError
from ...store.writes import clean_speaker
from .. import markdown as md
from .. import state as S
from .base import guard

FORM_CLEARED = {"label_in": None, "note_in": ""}     # the speaker stays, as the name does


class ApiExtras(TypedDict, total=False):
    """What `api_correct` takes by keyword beyond the /correct form's fields."""
    account: Optional[str]      # the signed-in account (see `identity`)
    speaker: Optional[str]      # who speaks in the clip, or the session (`clean_speaker`)


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


def _submission(state: dict, lab: str, transcript: Any, note: Any, who: dict,
                speaker: Optional[str]) -> str:
    """What makes two submits of the form the same correction."""
    return repr((state["path"], state["selected"], lab, analysis.blank_none(transcript),
                 analysis.blank_none(note), who["annotator"], speaker))


@guard("correct_msg")
def correct(ctx, state: Optional[dict], label: Any, annotator: Optional[str] = None,
            note: Optional[str] = None, transcript: Optional[str] = None,
            audio_weight: Optional[float] = None, speaker: Optional[str] = None,
            account: Optional[str] = None) -> dict:
    """Store the person's label for the shown clip (or segment) with the prediction and who
    speaks in it (optional), once: the same submission again names the stored row instead of
    adding one. Clears the label and the note."""
    if not state:
        raise EmodemoError("Analyse a clip first, then tell us the emotion you hear.")
    last = list((state.get("stored") or {}).values())
    if label in (None, "") and last:      # a second click on the cleared form: said, not an error
        return {"correct_msg": md.correction_kept(last[-1])}
    lab = analysis.check_label(label, ctx.labels)
    analysis.check_texts(ctx.limits, transcript, annotator, note)
    speaker = clean_speaker(speaker)      # stripped, blank: None; too long: said, nothing stored
    who = identity(ctx, annotator, account)
    key = _submission(state, lab, transcript, note, who, speaker)
    done = state.setdefault("stored", {})
    if key in done:
        return {"correct_msg": md.correction_duplicate(done[key]), "stored_id": done[key],
                **FORM_CLEARED}
    pred = S.prediction_record(ctx.rec, state, audio_weight)
    span = S.correction_span(state)
    cid = ctx.store.add(state["path"], lab, **who,
                        transcript=analysis.blank_none(transcript), prediction=pred,
                        note=analysis.blank_none(note), start=span[0], end=span[1],
                        speaker=speaker, **language_fields(ctx.store, S.selected(state)))
    done[key] = int(cid)
    if getattr(cid, "duplicate", False):     # the store recognised a double submit
        return {"correct_msg": md.correction_duplicate(int(cid)), "stored_id": int(cid),
                "state": state, **FORM_CLEARED}
    row = ctx.store.get(cid) or {}
    name = who["annotator"].strip() if who["annotator"] else None
    msg = md.correction_stored(int(cid), lab, pred["label"], row.get("media_sha256") or "", span, name,
                               speaker)
    return {"correct_msg": msg, "stored_id": int(cid), "state": state, **FORM_CLEARED}


def api_correct(ctx, audio: Any, label: Any, transcript: Optional[str] = None,
                annotator: Optional[str] = None, note: Optional[str] = None,
                start: Optional[float] = None, end: Optional[float] = None,
                prediction: Optional[Mapping] = None, **extras: Unpack[ApiExtras]) -> dict:
    """Store a correction for API callers; returns its id, label, clip hash, span and speaker.
    extras: account (the signed-in one), speaker (who speaks in the clip; optional)."""
    unknown = set(extras) - set(ApiExtras.__annotations__)
    if unknown:
        raise TypeError(f"api_correct() got unexpected keyword argument(s) {sorted(unknown)}")
    lab = analysis.check_label(label, ctx.labels)
    analysis.check_texts(ctx.limits, transcript, annotator, note)
    speaker = clean_speaker(extras.get("speaker"))
    who = identity(ctx, annotator, extras.get("account"))
    path = analysis.audio_path(audio, ctx.limits, ctx.work_dir)
    analysis.check_file(path, ctx.limits)
    if prediction is not None and not isinstance(prediction, Mapping):
        raise EmodemoError("prediction must be a JSON object (as returned by /predict)")
    pred = dict(prediction) if prediction else None
    if pred is not None:
        pred.pop("segments", None)
    cid = ctx.store.add(path, lab, **who,
                        transcript=analysis.blank_none(transcript), prediction=pred,
                        note=analysis.blank_none(note), start=start, end=end, speaker=speaker)
    row = ctx.store.get(cid)
    return {"id": int(cid), "label": lab, "media_sha256": row["media_sha256"] if row else None,
            "start": row["start"] if row else start, "end": row["end"] if row else end,
            "speaker": speaker}
