"""Analyse tab and the API endpoints: analyse a clip, re-run the text branch on an edited
transcript, re-fuse with another weight, pick a segment, store a correction."""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional, Sequence

from ... import analysis, plots
from ...errors import EmodemoError
from .. import markdown as md
from .. import state as S
from .base import failure, guard

VIEW_KEYS = ("state", "summary", "probs_plot", "wave_plot", "timeline_plot", "long_box",
             "segment_dd", "transcript")
REFUSE_KEYS = ("state", "summary", "probs_plot", "wave_plot", "timeline_plot", "segment_dd")
START = "Upload a clip, record one, or click an example to start."


class AnalyseHandlers:
    """Mixed into `Handlers`; uses rec, store, limits, work_dir and sign_in from it."""

    VIEW_KEYS = VIEW_KEYS

    def fusion(self, audio_weight: Optional[float] = None):
        """The active recognizer's fusion with this audio weight."""
        return analysis.fusion_at(self.rec, audio_weight)

    # -- rendering -------------------------------------------------------------------------
    def render(self, state: dict, audio_weight: Optional[float], keys: Sequence[str]) -> dict:
        """The outputs in `keys` for `state`, re-fused with `audio_weight` (no model runs).
        long_box: whether the timeline is shown; segment_dd: {"choices", "value"}."""
        preds = S.predictions(self.rec, state, audio_weight)
        i = state["selected"]
        p = preds[i]
        long = bool(state["long"])
        out: dict[str, Any] = {"state": state}
        if "summary" in keys:
            ov = analysis.overall(self.labels, preds) if long else None
            out["summary"] = md.summary(state, preds, self.fusion(audio_weight), ov)
        if "probs_plot" in keys:
            out["probs_plot"] = plots.probabilities_figure(
                self.labels, p.audio, p.text, p.fused,
                title=f"Class probabilities — segment #{i + 1}" if long else "Class probabilities")
        if "wave_plot" in keys:
            spans = [{"start": q.start, "end": q.end, "label": q.label} for q in preds]
            out["wave_plot"] = plots.waveform_figure(
                state["env"], state["duration"], spans, selected=i if long else None,
                labels=self.labels,
                title="Waveform (shaded: analysed segments)" if long else "Waveform")
        if "timeline_plot" in keys:
            out["timeline_plot"] = plots.timeline_figure(
                [{"start": q.start, "end": q.end, "label": q.label, "fused": q.fused,
                  "transcript": q.transcript} for q in preds], self.labels,
                selected=i) if long else None
        if "long_box" in keys:
            out["long_box"] = long
        if "segment_dd" in keys:
            out["segment_dd"] = {"choices": [(f"#{k + 1}  {q.start:.1f}–{q.end:.1f} s · {q.label}", k)
                                             for k, q in enumerate(preds)], "value": i}
        if "transcript" in keys:
            out["transcript"] = S.selected(state)["transcript"]
        return out

    @staticmethod
    def cleared(status: str) -> dict:
        return {"state": None, "status": status, "summary": "", "probs_plot": None,
                "wave_plot": None, "timeline_plot": None, "long_box": False,
                "segment_dd": {"choices": [], "value": None}, "transcript": "",
                "correct_msg": ""}

    # -- events ----------------------------------------------------------------------------
    def analyse(self, audio: Any, audio_weight: Optional[float] = None,
                progress: Optional[Callable] = None) -> dict:
        """Decode, check, predict (segmenting long audio), and render everything."""
        if audio is None:
            return self.cleared(START)
        t0 = time.perf_counter()
        try:
            path, wav = analysis.load_clip(audio, self.limits, self.work_dir)
            preds = analysis.predict_spans(self.rec, wav, self.limits, progress)
            state = S.new_state(self.rec, path, wav, preds, analysis.is_long(wav, self.limits))
            out = self.render(state, audio_weight, VIEW_KEYS)
        except Exception as exc:  # noqa: BLE001 - a message, never a traceback
            bad = failure("status", exc, "analyse")
            return {**self.cleared(bad["status"]), "_error": bad["_error"]}
        out.update(status=md.analysed_status(state, time.perf_counter() - t0), correct_msg="")
        return out

    @guard("status")
    def rerun_text(self, state: Optional[dict], transcript: Optional[str],
                   audio_weight: Optional[float] = None) -> dict:
        """Re-run only the text branch on an edited transcript, then re-fuse (no ASR, no audio)."""
        if not state:
            raise EmodemoError("Analyse a clip first; then you can edit its transcript.")
        text = analysis.check_transcript(transcript, self.limits)
        analysis.set_transcript(self.rec, S.selected(state), text)
        out = self.render(state, audio_weight, REFUSE_KEYS)
        where = f" for segment #{state['selected'] + 1}" if state["long"] else ""
        out["status"] = ("Re-ran the text branch on your transcript" + where + "." if text else
                         "The transcript is empty: using the audio branch only" + where + ".")
        return out

    @guard("status")
    def refuse(self, state: Optional[dict], audio_weight: Optional[float]) -> dict:
        """Re-fuse every span with a new audio weight (no model runs)."""
        if not state:
            return {}
        return self.render(state, audio_weight, REFUSE_KEYS)

    @guard("status")
    def select_segment(self, state: Optional[dict], index: Any,
                       audio_weight: Optional[float] = None) -> dict:
        """Show one segment of a long recording on its own (plots, transcript, correction)."""
        if not state:
            return {}
        S.select(state, index)
        out = self.render(state, audio_weight, ("state", "summary", "probs_plot", "wave_plot",
                                                "timeline_plot", "transcript"))
        out["correct_msg"] = ""
        return out

    def identity(self, annotator: Any, account: Optional[str]) -> dict:
        """Who a correction is recorded under ({"annotator", "account"} for the store): where
        sign-in is on, the signed-in account (shown as the annotator too; a typed name is never
        trusted there), else the optional typed name and no account."""
        if self.sign_in:
            if not account:
                raise EmodemoError("Sign in with your Hugging Face account to submit corrections.")
            return {"annotator": account, "account": account}
        return {"annotator": analysis.blank_none(annotator), "account": None}

    @guard("correct_msg")
    def correct(self, state: Optional[dict], label: Any, annotator: Optional[str] = None,
                note: Optional[str] = None, transcript: Optional[str] = None,
                audio_weight: Optional[float] = None, account: Optional[str] = None) -> dict:
        """Store the person's label for the shown clip (or segment) with the prediction.
        `account`: the signed-in Hugging Face account name, if any."""
        if not state:
            raise EmodemoError("Analyse a clip first, then tell us the emotion you hear.")
        lab = analysis.check_label(label, self.labels)
        analysis.check_texts(self.limits, transcript, annotator, note)
        who = self.identity(annotator, account)
        pred = S.prediction_record(self.rec, state, audio_weight)
        span = S.correction_span(state)
        cid = self.store.add(state["path"], lab, **who,
                             transcript=analysis.blank_none(transcript), prediction=pred,
                             note=analysis.blank_none(note), start=span[0], end=span[1])
        row = self.store.get(cid)
        sha = row["media_sha256"] if row else ""
        name = who["annotator"].strip() if who["annotator"] else None
        return {"correct_msg": md.correction_stored(cid, lab, pred["label"], sha, span, name),
                "stored_id": cid}

    # -- API -------------------------------------------------------------------------------
    def api_predict(self, audio: Any, transcript: Optional[str] = None,
                    progress: Optional[Callable] = None) -> dict:
        """JSON prediction for API callers. Raises EmodemoError (message only) for bad input.
        An empty or missing transcript means: transcribe with ASR."""
        return analysis.predict_clip(self.rec, audio, transcript, self.limits, self.work_dir,
                                     progress)

    def api_correct(self, audio: Any, label: Any, transcript: Optional[str] = None,
                    annotator: Optional[str] = None, note: Optional[str] = None,
                    start: Optional[float] = None, end: Optional[float] = None,
                    prediction: Optional[Mapping] = None, account: Optional[str] = None) -> dict:
        """Store a correction for API callers; returns its id, label and clip hash."""
        lab = analysis.check_label(label, self.labels)
        analysis.check_texts(self.limits, transcript, annotator, note)
        who = self.identity(annotator, account)
        path = analysis.audio_path(audio, self.limits, self.work_dir)
        analysis.check_file(path, self.limits)
        if prediction is not None and not isinstance(prediction, Mapping):
            raise EmodemoError("prediction must be a JSON object (as returned by /predict)")
        pred = dict(prediction) if prediction else None
        if pred is not None:
            pred.pop("segments", None)
        cid = self.store.add(path, lab, **who,
                             transcript=analysis.blank_none(transcript), prediction=pred,
                             note=analysis.blank_none(note), start=start, end=end)
        row = self.store.get(cid)
        return {"id": cid, "label": lab, "media_sha256": row["media_sha256"] if row else None,
                "start": row["start"] if row else start, "end": row["end"] if row else end}
