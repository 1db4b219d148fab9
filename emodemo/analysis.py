"""Per-clip analysis, as a service for the front ends: upload checks, predictions per span, and
re-fusion of stored branch probabilities (a new fusion weight or an edited transcript never
re-runs ASR or the audio branch).

A *span record* is the JSON-able dict kept for each analysed span of a clip: start, end (s),
audio and text branch probabilities (lists in label order; text None without a transcript),
asr (what ASR heard), transcript (as used now) and warnings. `fuse` turns one back into a
`Prediction` for any audio weight.

Problems a person can fix raise `EmodemoError` with a message meant for them.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from . import audio as A
from .errors import EmodemoError, SettingsError
from .fusion import LateFusion
from .labels import NONE_DISPLAY, NONE_LABEL, normalize_label, unknown_label  # noqa: F401 (the UI's names)
from .textnorm import MAX_TEXT_CHARS, clean_text, text_too_long

from .store import MAX_ANNOTATOR_CHARS

#: fused top-1 minus top-2 probability below which a call is "unsure" (the one uncertainty rule)
UNSURE_MARGIN = 0.15

# ---- limits --------------------------------------------------------------------------------
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_UNITS = {"": 1, "b": 1}
for _i, _u in enumerate("kmgt", start=1):   # binary, as Gradio's max_file_size reads them
    _UNITS.update({_u: 1024**_i, _u + "b": 1024**_i, _u + "ib": 1024**_i})


def parse_size(size: str | int | float) -> int:
    """'50mb' / '2 GB' / '500kb' / 1048576 -> bytes, with binary units as Gradio's
    `launch(max_file_size=...)` reads them (50mb = 50 × 2^20 bytes)."""
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        if size <= 0:
            raise SettingsError(f"size must be positive, got {size}")
        return int(size)
    m = _SIZE_RE.match(str(size))
    unit = (m.group(2) or "").lower() if m else None
    if not m or unit not in _UNITS:
        raise SettingsError(f"not a size: {size!r} (use e.g. '50mb', '1gb' or a number of bytes)")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise SettingsError(f"size must be positive, got {size!r}")
    return value


@dataclass
class Limits:
    """What the app accepts. Sizes in bytes, durations in seconds."""
    max_file_bytes: int = 50 * 1024**2      # matches launch(max_file_size="50mb")
    max_duration: float = 30 * 60.0         # refuse longer audio
    long_audio: float = 30.0                # longer than this -> segmented, timeline shown
    segment_len: float = 10.0               # longest segment when segmenting
    max_text_chars: int = MAX_TEXT_CHARS    # transcript and note
    max_annotator_chars: int = MAX_ANNOTATOR_CHARS

    @classmethod
    def from_kwargs(cls, **kw: Any) -> "Limits":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - known - {"max_file_size"})
        if unknown:
            raise TypeError(f"unknown limit(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "max_file_size" in kw:
            kw["max_file_bytes"] = parse_size(kw.pop("max_file_size"))
        lim = cls(**kw)
        if lim.max_duration <= 0 or lim.long_audio <= 0 or lim.segment_len <= 0:
            raise SettingsError("durations must be positive")
        return lim


def format_duration(sec: float) -> str:
    sec = float(sec)
    if sec < 60:
        return f"{sec:.1f} s"
    m, s = divmod(int(round(sec)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def format_bytes(n: float) -> str:
    """Binary units, labelled as Gradio labels them (1 MB = 2^20 bytes)."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# ---- text from people ----------------------------------------------------------------------
def clean_input_text(value: Any) -> str:
    """Text from a browser or API caller, as typed (emodemo.textnorm's one cleaning rule)."""
    return clean_text(value, keep_whitespace=True)


def blank_none(value: Any) -> Optional[str]:
    """Cleaned text, or None when it is missing or only whitespace."""
    if value is None:
        return None
    s = clean_input_text(value)
    return s if s.strip() else None


def check_label(label: Any, labels: Sequence[str]) -> str:
    """A label a person picked: one of `labels`, or "none" (also written "none of these")."""
    if label is None or (isinstance(label, str) and not label.strip()):
        raise EmodemoError("Pick the emotion you hear first (or “none of these”).")
    found = normalize_label(label, labels)     # the store's rule (emodemo.labels)
    if found is None:
        raise EmodemoError(unknown_label(label, labels))
    return found


def check_texts(limits: Limits, transcript: Any = None, annotator: Any = None,
                note: Any = None) -> None:
    """Length limits of the free-text fields of a correction."""
    for name, value, limit in (("transcript", transcript, limits.max_text_chars),
                               ("note", note, limits.max_text_chars),
                               ("annotator", annotator, limits.max_annotator_chars)):
        n = len(clean_input_text(value)) if value is not None else 0
        if text_too_long(name, n, limit):
            raise EmodemoError(f"The {text_too_long(name, n, limit)}.")


def check_transcript(text: Any, limits: Limits) -> str:
    """An edited transcript: cleaned, within the limit, whitespace collapsed."""
    text = clean_input_text(text)
    if text_too_long("transcript", len(text), limits.max_text_chars):
        raise EmodemoError(f"The {text_too_long('transcript', len(text), limits.max_text_chars)}.")
    return " ".join(text.split())


# ---- uploads -------------------------------------------------------------------------------
def prune(folder: Path, pattern: str, max_age_s: float) -> None:
    """Delete files matching `pattern` in `folder` older than `max_age_s` seconds."""
    cutoff = time.time() - max_age_s
    for p in folder.glob(pattern):
        try:
            if p.stat().st_mtime < cutoff:
                p.unlink()
        except OSError:
            pass


def audio_path(audio: Any, limits: Limits, work_dir: Path) -> str:
    """A file path for the input: a path, a FileData-like dict, or a microphone array
    `(sample_rate, samples)` (written to a WAV file in `work_dir`)."""
    if audio is None or (isinstance(audio, str) and not audio.strip()):
        raise EmodemoError("No audio yet: upload a file, record with the microphone, or "
                           "click one of the examples.")
    if isinstance(audio, Mapping):  # FileData-like dict from an API caller
        audio = audio.get("path") or audio.get("name")
        if not audio:
            raise EmodemoError("the audio input has no file path")
    if isinstance(audio, tuple):
        import soundfile as sf
        wav = A.load_audio(audio, max_duration=limits.max_duration + 1)
        prune(work_dir, "mic-*.wav", 24 * 3600)
        fd, tmp = tempfile.mkstemp(prefix="mic-", suffix=".wav", dir=work_dir)
        os.close(fd)
        sf.write(tmp, wav, A.SAMPLE_RATE, subtype="PCM_16")
        return tmp
    if not isinstance(audio, (str, os.PathLike)):
        raise EmodemoError(f"unsupported audio input ({type(audio).__name__})")
    return os.fspath(audio)


def too_long(duration: float, limits: Limits) -> EmodemoError:
    return EmodemoError(f"The audio is too long ({format_duration(duration)}); the limit is "
                        f"{format_duration(limits.max_duration)}. Please cut it into shorter pieces.")


def check_file(path: str, limits: Limits) -> Optional[float]:
    """Size and duration checks before decoding; returns the probed duration (or None)."""
    p = Path(path)
    if not p.exists():
        raise EmodemoError(f"The file {p.name} is no longer available; please upload it again.")
    size = p.stat().st_size
    if size == 0:
        raise EmodemoError(f"{p.name} is empty (0 bytes). If you recorded, the recording "
                           "did not capture anything: check the microphone and try again.")
    if size > limits.max_file_bytes:
        raise EmodemoError(f"{p.name} is too big ({format_bytes(size)}); the limit is "
                           f"{format_bytes(limits.max_file_bytes)}. Trim or compress it "
                           "(e.g. to MP3 or FLAC) and try again.")
    dur = A.probe_duration(p)   # from the header, without decoding
    if dur is not None and dur > limits.max_duration + 1:
        raise too_long(dur, limits)
    return dur


def load_clip(audio: Any, limits: Limits, work_dir: Path) -> tuple[str, np.ndarray]:
    """Check and decode an upload: (path, 16 kHz mono waveform). Never decodes past the limit."""
    path = audio_path(audio, limits, work_dir)
    check_file(path, limits)
    wav = A.load_audio(path, max_duration=limits.max_duration + 1)
    dur = wav.size / A.SAMPLE_RATE
    if dur > limits.max_duration + 1:
        raise too_long(dur, limits)
    if A.is_silent(wav):
        raise EmodemoError("The recording is silent (or nearly so), so there is nothing to "
                           "analyse. If you used the microphone, check that the browser may "
                           "use it and that it is not muted, then record again.")
    return path, wav


# ---- predictions and re-fusion -------------------------------------------------------------
def is_long(wav: np.ndarray, limits: Limits) -> bool:
    return wav.size / A.SAMPLE_RATE > limits.long_audio


def predict_spans(rec, wav: np.ndarray, limits: Limits, progress: Optional[Callable] = None) -> list:
    """One Prediction for a short clip (start 0, end = its duration), one per segment of long
    audio. `progress(fraction, desc=...)` is told what is happening."""
    if is_long(wav, limits):
        if progress:
            progress(0.1, desc=f"Splitting {format_duration(wav.size / A.SAMPLE_RATE)} of audio "
                               "into segments and analysing each")
        return rec.predict_segments(wav, transcribe=True, max_len=limits.segment_len)
    if progress:
        progress(0.1, desc=f"Transcribing and analysing {format_duration(wav.size / A.SAMPLE_RATE)}"
                           " of audio")
    return [rec.predict_wave(wav)]


# ---- uncertainty: one rule --------------------------------------------------------------------
def margin(probs: Mapping[str, float]) -> float:
    """Top-1 minus top-2 probability (1.0 with a single label)."""
    top = sorted((float(v) for v in probs.values()), reverse=True)
    return top[0] - top[1] if len(top) > 1 else 1.0


def is_unsure(probs: Mapping[str, float]) -> bool:
    """A tie or a near tie between the two most likely labels (margin < UNSURE_MARGIN)."""
    return margin(probs) < UNSURE_MARGIN


def call(probs: Mapping[str, float]) -> str:
    """What the model says, in words: "angry", or "angry or fearful — unsure" when unsure."""
    ranked = sorted(probs, key=lambda k: -float(probs[k]))
    if len(ranked) > 1 and is_unsure(probs):
        return f"{ranked[0]} or {ranked[1]} — unsure"
    return ranked[0]


def verdict(probs: Mapping[str, float]) -> dict:
    """The JSON fields of the call: margin, unsure, call (see `call`)."""
    return {"margin": round(margin(probs), 6), "unsure": is_unsure(probs), "call": call(probs)}


ONE_SIDED_CLIPS = 8       # clips a batch needs before its label histogram says anything
ONE_SIDED_SHARE = 0.6     # one label's share of a batch that earns a note (7 labels: 1/7 if even)


def one_sided(labels: Sequence[str]) -> Optional[str]:
    """A note when one label takes most of a batch of clips (`labels`: the called label of each):
    on a voice, language or microphone the model never heard, it tends to call most clips one
    label (docs/generalisation.md), and a person should know it before trusting the histogram.
    None for small batches or a spread of labels."""
    if len(labels) < ONE_SIDED_CLIPS:
        return None
    (top, n), = Counter(labels).most_common(1)      # >= 60 %: no tie for the top
    if n < ONE_SIDED_SHARE * len(labels):
        return None
    return (f"{n} of {len(labels)} clips were called {top}. If they are not mostly {top}, the model "
            f"may not know this voice, language or microphone.")


def prelabel_note(labels: Sequence[Optional[str]]) -> Optional[str]:
    """`one_sided` said of an annotation queue's pre-labels (the model's label of each clip)."""
    note = one_sided([lab for lab in labels if lab])
    return f"Pre-labels: {note} Vote on what you hear, not on the pre-label." if note else None


def _vec(labels: Sequence[str], probs: Optional[Mapping[str, float]]) -> Optional[list]:
    return None if probs is None else [float(probs.get(k, 0.0)) for k in labels]


def span_record(labels: Sequence[str], p) -> dict:
    """The JSON-able record of one predicted span (see the module docstring)."""
    translation = getattr(p, "translation", "") or ""      # C1 (branch asr): read defensively
    read = translation or p.transcript                       # what the (English) text model read
    return {"start": float(p.start), "end": float(p.end), "audio": _vec(labels, p.audio),
            "text": _vec(labels, p.text), "asr": read, "transcript": read,
            "original": p.transcript if translation else None,
            "language": getattr(p, "language", None), "asr_trust": getattr(p, "asr_trust", None),
            "warnings": list(p.warnings)}


def fusion_at(rec, audio_weight: Optional[float] = None) -> LateFusion:
    """The recognizer's fusion, with another audio weight (clipped to 0..1) when given."""
    if audio_weight is None:
        return dataclasses.replace(rec.fusion)
    return dataclasses.replace(rec.fusion, audio_weight=float(np.clip(float(audio_weight), 0.0, 1.0)))


def _asr_fields(span: Mapping) -> dict:
    """The C1 Prediction fields a span record keeps (only those it has: recognizers without
    them take none): the ASR's trust, which weights the text branch in the fusion, the
    language and the English translation the text branch read (as the person may have edited
    it; the Prediction's transcript stays the words in the speaker's language)."""
    out = {}
    if span.get("asr_trust") is not None:
        out["asr_trust"] = span["asr_trust"]
    if span.get("language"):
        out.update(language=span["language"],
                   translation=span["transcript"] if span.get("original") else "")
    return out


def fuse(rec, span: Mapping, audio_weight: Optional[float] = None):
    """A span record re-fused into a Prediction (no model runs)."""
    text = span["text"]
    return rec.combine(np.asarray(span["audio"], dtype=np.float64),
                       None if text is None else np.asarray(text, dtype=np.float64),
                       span.get("original") or span["transcript"], fusion=fusion_at(rec, audio_weight),
                       duration=span["end"] - span["start"], start=span["start"], end=span["end"],
                       warnings=list(span.get("warnings", [])), **_asr_fields(span))


def set_transcript(rec, span: dict, text: str) -> None:
    """Use `text` (already checked) as the span's transcript: re-runs only the text branch.
    Text a person typed is read with full weight (the ASR's trust no longer applies)."""
    if text != span.get("asr"):
        span["asr_trust"] = None
    span["transcript"] = text
    span["text"] = rec.text_proba([text])[0].tolist() if text else None


def overall(labels: Sequence[str], preds: Sequence) -> dict:
    """Duration-weighted mean of span probabilities (one span: that span), with each label's
    share of the time."""
    w = np.array([max(p.end - p.start, 1e-3) for p in preds], dtype=np.float64)
    w = w / w.sum()

    def mean(key: str) -> Optional[dict]:
        rows = [(wi, getattr(p, key)) for wi, p in zip(w, preds) if getattr(p, key) is not None]
        if not rows:
            return None
        tot = sum(wi for wi, _ in rows)
        return {k: float(sum(wi * d[k] for wi, d in rows) / tot) for k in labels}

    fused = mean("fused")
    label = max(fused, key=fused.get)
    share: dict[str, float] = {}
    for wi, p in zip(w, preds):
        share[p.label] = share.get(p.label, 0.0) + float(wi)
    return {"label": label, "confidence": fused[label], "fused": fused, "audio": mean("audio"),
            "text": mean("text"), "share": share}


def predict_clip(rec, audio: Any, transcript: Optional[str], limits: Limits, work_dir: Path,
                 progress: Optional[Callable] = None) -> dict:
    """The JSON prediction of the /predict endpoint. An empty or missing transcript means:
    transcribe with ASR. Long audio without a transcript is segmented (overall + segments)."""
    transcript = None if transcript is None else clean_input_text(transcript)
    if transcript is not None and len(transcript) > limits.max_text_chars:
        raise EmodemoError(f"The transcript is too long ({len(transcript)} characters; "
                           f"the limit is {limits.max_text_chars}).")
    _, wav = load_clip(audio, limits, work_dir)
    text = blank_none(transcript)
    dur = wav.size / A.SAMPLE_RATE
    if text is not None or not is_long(wav, limits):
        out = rec.predict_wave(wav, text).to_dict()
        out.update(verdict(out["fused"]), segments=[])
        return out
    preds = predict_spans(rec, wav, limits, progress)
    ov = overall(rec.labels, preds)
    return {"label": ov["label"], "confidence": ov["confidence"], "fused": ov["fused"],
            "audio": ov["audio"], "text": ov["text"],
            "transcript": " ".join(p.transcript for p in preds if p.transcript),
            "duration": dur, "start": 0.0, "end": dur,
            "bundle": getattr(rec, "name", ""), "bundle_version": getattr(rec, "version", ""),
            "warnings": sorted({w for p in preds for w in p.warnings}), **verdict(ov["fused"]),
            "segments": [{**p.to_dict(), **verdict(p.fused)} for p in preds]}
