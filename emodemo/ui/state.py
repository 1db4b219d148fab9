"""The per-clip state the Analyse tab keeps between events (a JSON-able dict in a `gr.State`).

    {"path", "name", "duration", "long", "env" (waveform envelope for the plot),
     "segments": [span records, see emodemo.analysis], "selected": index,
     "bundle", "bundle_version", "stored": {submission: correction id} (added by the first
     correction: the same submission again is not stored twice)}

Moving the fusion slider re-fuses the stored span records and editing the transcript re-runs
only the text branch of the selected span: neither re-runs ASR or the audio branch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import analysis, plots
from .. import audio as A


def new_state(rec, path: str, wav: np.ndarray, preds: Sequence, long: bool) -> dict:
    """The state of a freshly analysed clip (the first span selected)."""
    return {"path": path, "name": Path(path).name, "duration": wav.size / A.SAMPLE_RATE,
            "long": bool(long), "env": plots.envelope(wav),
            "segments": [analysis.span_record(rec.labels, p) for p in preds], "selected": 0,
            "bundle": getattr(rec, "name", ""), "bundle_version": getattr(rec, "version", "")}


def selected(state: dict) -> dict:
    """The span record shown now."""
    return state["segments"][state["selected"]]


def select(state: dict, index) -> None:
    """Show span `index` (0-based); a clear error for anything else."""
    from ..errors import EmodemoError
    try:
        i = int(index)
    except (TypeError, ValueError):
        raise EmodemoError(f"unknown segment {index!r}") from None
    if not 0 <= i < len(state["segments"]):
        raise EmodemoError(f"there is no segment #{i + 1}")
    state["selected"] = i


def predictions(rec, state: dict, audio_weight: Optional[float]) -> list:
    """Every span re-fused with `audio_weight` (no model runs)."""
    return [analysis.fuse(rec, s, audio_weight) for s in state["segments"]]


def correction_span(state: dict) -> tuple[Optional[float], Optional[float]]:
    """The span a correction is about: the selected segment of long audio, else the whole clip."""
    if not state["long"]:
        return None, None
    s = selected(state)
    return s["start"], s["end"]


def prediction_record(rec, state: dict, audio_weight: Optional[float]) -> dict:
    """The shown prediction of the selected span as stored with a correction; its transcript
    is what the recogniser heard ("shown"), not the edit."""
    s = selected(state)
    pred = analysis.fuse(rec, s, audio_weight).to_dict()
    pred["transcript"] = s["asr"]
    return pred
