"""Analyse tab and /predict: analyse a clip, re-run the text branch on an edited transcript,
re-fuse with another weight, pick (and play) a segment. Plain functions `fn(ctx, ...)`."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ... import analysis, plots
from ... import audio as A
from ...errors import EmodemoError
from .. import markdown as md
from .. import state as S
from ..examples import truth_line, truths
from .base import failure, guard

VIEW_KEYS = ("state", "summary", "probs_plot", "wave_plot", "timeline_plot", "long_box",
             "segment_dd", "segment_audio", "transcript", "language_md")
REFUSE_KEYS = ("state", "summary", "probs_plot", "wave_plot", "timeline_plot", "segment_dd")
SELECT_KEYS = ("state", "summary", "probs_plot", "wave_plot", "timeline_plot", "segment_audio",
               "transcript", "language_md")
START = "Upload a clip, record one, or click an example to start."


def fusion(ctx, audio_weight: Optional[float] = None):
    """The active recognizer's fusion with this audio weight."""
    return analysis.fusion_at(ctx.rec, audio_weight)


def _figures(ctx, state: dict, preds: Sequence, keys: Sequence[str]) -> dict:
    i, long, labels = state["selected"], bool(state["long"]), ctx.labels
    p, out = preds[i], {}
    if "probs_plot" in keys:
        out["probs_plot"] = plots.probabilities_figure(
            labels, p.audio, p.text, p.fused,
            title=f"Class probabilities — segment #{i + 1}" if long else "Class probabilities")
    if "wave_plot" in keys:
        spans = [{"start": q.start, "end": q.end, "label": q.label} for q in preds]
        out["wave_plot"] = plots.waveform_figure(
            state["env"], state["duration"], spans, selected=i if long else None, labels=labels,
            title="Waveform (shaded: analysed segments)" if long else "Waveform")
    if "timeline_plot" in keys:
        out["timeline_plot"] = plots.timeline_figure(
            [{"start": q.start, "end": q.end, "label": q.label, "fused": q.fused,
              "transcript": q.transcript, "call": analysis.call(q.fused)} for q in preds],
            labels, selected=i) if long else None
    return out


def render(ctx, state: dict, audio_weight: Optional[float], keys: Sequence[str]) -> dict:
    """The outputs in `keys` for `state`, re-fused with `audio_weight` (no model runs).
    long_box: whether the timeline is shown; segment_dd: {"choices", "value"}."""
    preds = S.predictions(ctx.rec, state, audio_weight)
    i, long = state["selected"], bool(state["long"])
    out: dict[str, Any] = {"state": state, **_figures(ctx, state, preds, keys)}
    if "summary" in keys:
        ov = analysis.overall(ctx.labels, preds) if long else None
        out["summary"] = md.summary(state, preds, fusion(ctx, audio_weight), ov)
    if "long_box" in keys:
        out["long_box"] = long
    if "segment_dd" in keys:
        out["segment_dd"] = {"choices": [(f"#{k + 1}  {q.start:.1f}–{q.end:.1f} s · "
                                          f"{analysis.call(q.fused)}", k)
                                         for k, q in enumerate(preds)], "value": i}
    if "segment_audio" in keys:
        out["segment_audio"] = segment_audio(state) if long else None
    if "transcript" in keys:
        out["transcript"] = S.selected(state)["transcript"]
    if "language_md" in keys:
        out["language_md"] = md.language(S.selected(state))
    return out


def segment_audio(state: dict) -> Optional[tuple[int, np.ndarray]]:
    """The selected segment's samples (sample rate, int16) for a player, or None if the file
    has gone."""
    s = S.selected(state)
    try:
        wav = A.load_audio(state["path"])
    except Exception:  # noqa: BLE001 - the player is a convenience: no segment, no error
        return None
    a, b = int(s["start"] * A.SAMPLE_RATE), int(s["end"] * A.SAMPLE_RATE)
    return A.SAMPLE_RATE, (np.clip(wav[a:b], -1, 1) * 32767).astype(np.int16)


def cleared(status: str) -> dict:
    return {"state": None, "status": status, "summary": "", "probs_plot": None,
            "wave_plot": None, "timeline_plot": None, "long_box": False,
            "segment_dd": {"choices": [], "value": None}, "segment_audio": None,
            "transcript": "", "language_md": "", "correct_msg": ""}


def analyse(ctx, audio: Any, audio_weight: Optional[float] = None,
            progress: Optional[Callable] = None) -> dict:
    """Decode, check, predict (segmenting long audio), and render everything."""
    if audio is None:
        return cleared(START)
    t0 = time.perf_counter()
    try:
        path, wav = analysis.load_clip(audio, ctx.limits, ctx.work_dir)
        preds = analysis.predict_spans(ctx.rec, wav, ctx.limits, progress)
        state = S.new_state(ctx.rec, path, wav, preds, analysis.is_long(wav, ctx.limits))
        out = render(ctx, state, audio_weight, VIEW_KEYS)
    except Exception as exc:  # noqa: BLE001 - a message, never a traceback
        bad = failure("status", exc, "analyse")
        return {**cleared(bad["status"]), "_error": bad["_error"]}
    out.update(status=md.analysed_status(state, time.perf_counter() - t0), correct_msg="")
    truth = truth_line(state["name"], truths(ctx.examples_dir))
    if truth:      # an example: what the speaker performed, next to the model's answer
        out["summary"] += f"\n\n🎭 {md.md_escape(truth)}"
    return out


@guard("status")
def rerun_text(ctx, state: Optional[dict], transcript: Optional[str],
               audio_weight: Optional[float] = None) -> dict:
    """Re-run only the text branch on an edited transcript, then re-fuse (no ASR, no audio)."""
    if not state:
        raise EmodemoError("Analyse a clip first; then you can edit its transcript.")
    text = analysis.check_transcript(transcript, ctx.limits)
    analysis.set_transcript(ctx.rec, S.selected(state), text)
    out = render(ctx, state, audio_weight, REFUSE_KEYS)
    where = f" for segment #{state['selected'] + 1}" if state["long"] else ""
    out["status"] = ("Re-ran the text branch on your transcript" + where + "." if text else
                     "The transcript is empty: using the audio branch only" + where + ".")
    return out


@guard("status")
def refuse(ctx, state: Optional[dict], audio_weight: Optional[float]) -> dict:
    """Re-fuse every span with a new audio weight (no model runs)."""
    if not state:
        return {}
    return render(ctx, state, audio_weight, REFUSE_KEYS)


@guard("status")
def select_segment(ctx, state: Optional[dict], index: Any,
                   audio_weight: Optional[float] = None) -> dict:
    """Show one segment of a long recording on its own (plots, player, transcript, correction)."""
    if not state:
        return {}
    S.select(state, index)
    out = render(ctx, state, audio_weight, SELECT_KEYS)
    out["correct_msg"] = ""
    return out


def api_predict(ctx, audio: Any, transcript: Optional[str] = None,
                progress: Optional[Callable] = None) -> dict:
    """JSON prediction for API callers. Raises EmodemoError (message only) for bad input.
    An empty or missing transcript means: transcribe with ASR."""
    return analysis.predict_clip(ctx.rec, audio, transcript, ctx.limits, ctx.work_dir, progress)


def active_model(ctx) -> dict:
    """The line naming the active model (Analyse tab) and the About text, for every visitor."""
    return {"active_md": md.active_model(ctx.rec), "about": md.about(ctx.rec, ctx.limits, ctx.sign_in)}
