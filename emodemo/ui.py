"""The Gradio demo: try a clip, see what each branch thinks, correct it, and browse corrections.

Two layers:

* `Handlers`: every event as a plain method that takes plain values (a file path, a slider value,
  the analysis state dict ...) and returns a dict of output values keyed by name ("summary",
  "probs_plot", ...). No Gradio needed to call them, so they are unit-tested directly. They never
  raise for bad input: the problem is turned into a readable message under "status" (or
  "correct_msg" / "history_msg"), and unexpected errors are logged with their traceback
  server-side and reported without it.
* `build_app(recognizer, store, **limits) -> gr.Blocks`: the layout, and the wiring of those
  handlers to components. Models are loaded by the caller, once, not per request.

The analysis state (a `gr.State`) keeps each branch's probabilities per analysed span, so moving
the fusion slider re-fuses and editing the transcript re-runs only the text branch: neither
re-runs ASR or the audio branch.

Named API endpoints (for `gradio_client`): ``/predict`` (audio file, optional transcript -> JSON
with audio/text/fused probabilities, label, transcript) and ``/correct`` (audio file, label,
transcript, annotator, note, start, end, prediction JSON -> the stored correction's id and clip
hash). The UI's own events are private.
"""
from __future__ import annotations

import dataclasses
import functools
import html
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from . import audio as A
from . import plots
from .errors import EmodemoError
from .finetune import FINETUNE_RECIPE, MIN_PER_CLASS
from .fusion import LateFusion

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "data" / "examples"
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MODEL_COLUMNS = ["", "folder", "name", "version", "created (UTC)", "size", "audio UA (val)",
                 "text macro-F1 (dev)", "fine-tuned from", "corrections used"]
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".oga", ".opus", ".webm", ".aac",
                  ".aiff", ".aif")
NONE_LABEL = "none"
NONE_DISPLAY = "none of these"
EMOJI = {"neutral": "😐", "happy": "😄", "sad": "😢", "angry": "😠", "fearful": "😨",
         "disgust": "🤢", "surprised": "😲", "calm": "😌", NONE_LABEL: "🤷"}
MAX_HISTORY_ROWS = 500
HISTORY_COLUMNS = ["id", "when (UTC)", "label", "predicted", "annotator", "transcript", "note",
                   "clip", "span (s)", "model"]
AGREEMENT_COLUMNS = ["clip", "span (s)", "annotators", "corrections", "majority", "agreement",
                     "votes", "tie"]


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
            raise ValueError(f"size must be positive, got {size}")
        return int(size)
    m = _SIZE_RE.match(str(size))
    unit = (m.group(2) or "").lower() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"not a size: {size!r} (use e.g. '50mb', '1gb' or a number of bytes)")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return value


@dataclass
class Limits:
    """What the demo accepts. Sizes in bytes, durations in seconds."""
    max_file_bytes: int = 50 * 1024**2      # matches launch(max_file_size="50mb")
    max_duration: float = 30 * 60.0         # refuse longer audio
    long_audio: float = 30.0                # longer than this -> segmented, timeline shown
    segment_len: float = 10.0               # longest segment when segmenting
    max_text_chars: int = 5000              # transcript and note
    max_annotator_chars: int = 200

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
            raise ValueError("durations must be positive")
        return lim


# ---- small helpers -------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]#|~$])")
_MD_LINE_START = re.compile(r"^(\s*)(?:([-+=])|(\d+)\.)", re.M)


def md_escape(text: Any) -> str:
    """Text shown literally inside Markdown: HTML-escaped (no tags), Markdown punctuation
    backslash-escaped (no emphasis, links, code, headings, lists, LaTeX), newlines kept."""
    s = html.escape("" if text is None else str(text), quote=True)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    s = _MD_LINE_START.sub(lambda m: m.group(1) + ("\\" + m.group(2) if m.group(2)
                                                   else m.group(3) + "\\."), s)
    return s.replace("\n", "  \n")


def _fmt_dur(sec: float) -> str:
    sec = float(sec)
    if sec < 60:
        return f"{sec:.1f} s"
    m, s = divmod(int(round(sec)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _fmt_bytes(n: float) -> str:
    """Binary units, labelled as Gradio labels them (1 MB = 2^20 bytes)."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _error(msg: str) -> str:
    return f"⚠️ {md_escape(msg)}"


def _ok(msg_md: str) -> str:
    return f"✅ {msg_md}"


def probe_duration(path: str | os.PathLike) -> Optional[float]:
    """Duration in seconds from the file header (soundfile, else ffprobe), without decoding;
    None when it cannot be told cheaply (see `emodemo.audio.probe_duration`)."""
    return A.probe_duration(path)


def clean_input_text(value: Any) -> str:
    """Text from a browser or API caller as a plain str: bytes decoded leniently, lone
    surrogates (JSON "\\ud800", undecodable argv) replaced by U+FFFD (tokenizers reject them)."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    value = str(value)
    try:  # undecodable bytes smuggled in as U+DC80..U+DCFF (surrogateescape): one U+FFFD each
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # other lone surrogates
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _guard(msg_key: str):
    """Turn exceptions in a handler into a message under `msg_key` (plus "_error" for a toast).
    EmodemoError (AudioError, StoreError ...) is the person's to fix: its message is shown.
    Anything else is ours: logged with its traceback, reported without it."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except EmodemoError as exc:
                log.info("%s: %s", fn.__name__, exc)
                return {msg_key: _error(str(exc)), "_error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - never show a traceback to the person
                log.exception("handler %s failed", fn.__name__)
                msg = (f"Something went wrong on our side ({type(exc).__name__}). "
                       "The details are in the server log; please try again or try another clip.")
                return {msg_key: _error(msg), "_error": msg}
        return wrapper
    return deco


# ---- handlers ------------------------------------------------------------------------------
class Handlers:
    """The demo's events as plain functions over plain values (see module docstring)."""

    def __init__(self, recognizer, store, limits: Optional[Limits] = None,
                 work_dir: Optional[str | os.PathLike] = None,
                 models_dir: Optional[str | os.PathLike] = None, allow_finetune: bool = True,
                 extra_model_dirs: Sequence[str | os.PathLike] = (),
                 admin_token: Optional[str] = None):
        self.rec = recognizer
        self.store = store
        self.limits = limits or Limits()
        self.labels: list[str] = list(recognizer.labels)
        self._work_dir = Path(work_dir) if work_dir is not None else None
        self.models_dir = Path(models_dir) if models_dir is not None else MODELS_DIR  # new bundles go here
        self.model_dirs = [self.models_dir] + [Path(d) for d in extra_model_dirs
                                               if Path(d).resolve() != self.models_dir.resolve()]
        self.allow_finetune = allow_finetune
        self.job = None                      # the latest registry.FinetuneJob
        self.finetune_options: dict = {}     # extra finetune() arguments (replay_spec, overrides ...)
        self.admin_token = admin_token or None   # when set, switching and fine-tuning need it
        self._switch_lock = threading.Lock()

    @property
    def work_dir(self) -> Path:
        """Where exports and microphone arrays written as WAV go (a private temp folder)."""
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="emodemo-ui-"))
        self._work_dir.mkdir(parents=True, exist_ok=True)
        return self._work_dir

    def _prune(self, pattern: str, max_age_s: float) -> None:
        cutoff = time.time() - max_age_s
        for p in self.work_dir.glob(pattern):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except OSError:
                pass

    # -- fusion ----------------------------------------------------------------------------
    def fusion(self, audio_weight: Optional[float] = None) -> LateFusion:
        base = self.rec.fusion
        if audio_weight is None:
            return dataclasses.replace(base)
        return dataclasses.replace(base, audio_weight=float(np.clip(float(audio_weight), 0.0, 1.0)))

    def _vec(self, probs: Optional[Mapping[str, float]]) -> Optional[np.ndarray]:
        if probs is None:
            return None
        return np.array([float(probs.get(k, 0.0)) for k in self.labels], dtype=np.float64)

    def _seg_prediction(self, state: dict, i: int, audio_weight: Optional[float]):
        seg = state["segments"][i]
        return self.rec.combine(np.asarray(seg["audio"], dtype=np.float64),
                                None if seg["text"] is None else np.asarray(seg["text"], dtype=np.float64),
                                seg["transcript"], fusion=self.fusion(audio_weight),
                                duration=seg["end"] - seg["start"], start=seg["start"],
                                end=seg["end"], warnings=list(seg.get("warnings", [])))

    def _all_predictions(self, state: dict, audio_weight: Optional[float]) -> list:
        return [self._seg_prediction(state, i, audio_weight) for i in range(len(state["segments"]))]

    def _overall(self, preds: Sequence) -> dict:
        """Duration-weighted mean of segment probabilities (one span: that span)."""
        w = np.array([max(p.end - p.start, 1e-3) for p in preds], dtype=np.float64)
        w = w / w.sum()

        def mean(key: str) -> Optional[dict]:
            rows = [(wi, getattr(p, key)) for wi, p in zip(w, preds) if getattr(p, key) is not None]
            if not rows:
                return None
            tot = sum(wi for wi, _ in rows)
            return {k: float(sum(wi * d[k] for wi, d in rows) / tot) for k in self.labels}

        fused = mean("fused")
        label = max(fused, key=fused.get)
        share: dict[str, float] = {}
        for wi, p in zip(w, preds):
            share[p.label] = share.get(p.label, 0.0) + float(wi)
        return {"label": label, "confidence": fused[label], "fused": fused, "audio": mean("audio"),
                "text": mean("text"), "share": share}

    # -- loading ---------------------------------------------------------------------------
    def _audio_path(self, audio: Any) -> str:
        """A file path for the input (a Gradio numpy tuple is written to a temp WAV)."""
        if audio is None or (isinstance(audio, str) and not audio.strip()):
            raise EmodemoError("No audio yet: upload a file, record with the microphone, or "
                               "click one of the examples.")
        if isinstance(audio, Mapping):  # FileData-like dict from an API caller
            audio = audio.get("path") or audio.get("name")
            if not audio:
                raise EmodemoError("the audio input has no file path")
        if isinstance(audio, tuple):
            import soundfile as sf
            wav = A.load_audio(audio, max_duration=self.limits.max_duration + 1)
            self._prune("mic-*.wav", 24 * 3600)
            fd, tmp = tempfile.mkstemp(prefix="mic-", suffix=".wav", dir=self.work_dir)
            os.close(fd)
            sf.write(tmp, wav, A.SAMPLE_RATE, subtype="PCM_16")
            return tmp
        if not isinstance(audio, (str, os.PathLike)):
            raise EmodemoError(f"unsupported audio input ({type(audio).__name__})")
        return os.fspath(audio)

    def _check_file(self, path: str) -> Optional[float]:
        """Size and duration checks before decoding; returns the probed duration (or None)."""
        p = Path(path)
        if not p.exists():
            raise EmodemoError(f"The file {p.name} is no longer available; please upload it again.")
        size = p.stat().st_size
        if size == 0:
            raise EmodemoError(f"{p.name} is empty (0 bytes). If you recorded, the recording "
                               "did not capture anything: check the microphone and try again.")
        if size > self.limits.max_file_bytes:
            raise EmodemoError(f"{p.name} is too big ({_fmt_bytes(size)}); the limit is "
                               f"{_fmt_bytes(self.limits.max_file_bytes)}. Trim or compress it "
                               "(e.g. to MP3 or FLAC) and try again.")
        dur = probe_duration(p)
        if dur is not None and dur > self.limits.max_duration + 1:
            raise EmodemoError(self._too_long(dur))
        return dur

    def _too_long(self, dur: float) -> str:
        return (f"The audio is too long ({_fmt_dur(dur)}); the limit is "
                f"{_fmt_dur(self.limits.max_duration)}. Please cut it into shorter pieces.")

    def _load(self, audio: Any) -> tuple[str, np.ndarray]:
        path = self._audio_path(audio)
        self._check_file(path)
        # AudioError with a readable message; never decodes past the duration limit
        wav = A.load_audio(path, max_duration=self.limits.max_duration + 1)
        dur = wav.size / A.SAMPLE_RATE
        if dur > self.limits.max_duration + 1:
            raise EmodemoError(self._too_long(dur))
        if A.is_silent(wav):
            raise EmodemoError("The recording is silent (or nearly so), so there is nothing to "
                               "analyse. If you used the microphone, check that the browser may "
                               "use it and that it is not muted, then record again.")
        return path, wav

    def _analyse_wave(self, wav: np.ndarray, progress: Optional[Callable] = None) -> list:
        dur = wav.size / A.SAMPLE_RATE
        if dur > self.limits.long_audio:
            if progress:
                progress(0.1, desc=f"Splitting {_fmt_dur(dur)} of audio into segments and "
                                   "analysing each")
            preds = self.rec.predict_segments(wav, transcribe=True, max_len=self.limits.segment_len)
        else:
            if progress:
                progress(0.1, desc="Transcribing and analysing")
            preds = [self.rec.predict_wave(wav)]        # start 0, end = its duration
        return preds

    def _new_state(self, path: str, wav: np.ndarray, preds: Sequence) -> dict:
        dur = wav.size / A.SAMPLE_RATE
        long = dur > self.limits.long_audio
        segs = []
        for p in preds:
            segs.append({"start": float(p.start), "end": float(p.end),
                         "audio": self._vec(p.audio).tolist(),
                         "text": None if p.text is None else self._vec(p.text).tolist(),
                         "asr": p.transcript, "transcript": p.transcript,
                         "warnings": list(p.warnings)})
        return {"path": path, "name": Path(path).name, "duration": dur, "long": long,
                "env": plots.envelope(wav), "segments": segs, "selected": 0,
                "bundle": getattr(self.rec, "name", ""),
                "bundle_version": getattr(self.rec, "version", "")}

    # -- rendering -------------------------------------------------------------------------
    def _summary(self, state: dict, preds: Sequence, audio_weight: Optional[float]) -> str:
        i = state["selected"]
        p = preds[i]
        fus = self.fusion(audio_weight)
        lines = []
        if state["long"]:
            ov = self._overall(preds)
            share = sorted(ov["share"].items(), key=lambda kv: -kv[1])
            mix = ", ".join(f"{EMOJI.get(k, '')} {md_escape(k)} {v:.0%}" for k, v in share[:3])
            lines.append(f"**Whole recording** ({_fmt_dur(state['duration'])}, "
                         f"{len(preds)} segments): overall **{md_escape(ov['label'])}** "
                         f"({ov['confidence']:.0%}); share of speech time: {mix}.")
            lines.append(f"**Segment #{i + 1}** ({p.start:.1f}–{p.end:.1f} s):")
        lines.append(f"## {EMOJI.get(p.label, '')} {md_escape(p.label)} · {p.confidence:.0%}")
        a_top = max(p.audio, key=p.audio.get)
        branch = [f"audio branch: **{md_escape(a_top)}** {p.audio[a_top]:.0%}"]
        if p.text is not None:
            t_top = max(p.text, key=p.text.get)
            branch.append(f"text branch: **{md_escape(t_top)}** {p.text[t_top]:.0%}")
        else:
            branch.append("text branch: not used (no transcript)")
        mode = {"confidence": "confidence-weighted",
                "evidence": "evidence-aware (neutral = no emotion heard or read)"}.get(fus.mode, fus.mode)
        branch.append(f"fusion: {mode}, audio weight {fus.audio_weight:.2f}")
        lines.append(" · ".join(branch))
        tr = p.transcript
        lines.append(f"Transcript used: “{md_escape(tr)}”" if tr else
                     "Transcript used: *(none — nothing was recognised, or it was cleared)*")
        return "\n\n".join(lines)

    def _render(self, state: dict, audio_weight: Optional[float], keys: Sequence[str]) -> dict:
        import gradio as gr
        preds = self._all_predictions(state, audio_weight)
        i = state["selected"]
        p = preds[i]
        out: dict[str, Any] = {"state": state}
        if "summary" in keys:
            out["summary"] = self._summary(state, preds, audio_weight)
        if "probs_plot" in keys:
            title = (f"Class probabilities — segment #{i + 1}" if state["long"]
                     else "Class probabilities")
            out["probs_plot"] = plots.probabilities_figure(self.labels, p.audio, p.text, p.fused,
                                                           title=title)
        spans = [{"start": q.start, "end": q.end, "label": q.label} for q in preds]
        if "wave_plot" in keys:
            out["wave_plot"] = plots.waveform_figure(
                state["env"], state["duration"], spans, selected=i if state["long"] else None,
                labels=self.labels,
                title="Waveform (shaded: analysed segments)" if state["long"] else "Waveform")
        if "timeline_plot" in keys:
            out["timeline_plot"] = plots.timeline_figure(
                [{"start": q.start, "end": q.end, "label": q.label, "fused": q.fused,
                  "transcript": q.transcript} for q in preds], self.labels,
                selected=i) if state["long"] else None
        if "long_box" in keys:
            out["long_box"] = gr.update(visible=bool(state["long"]))
        if "segment_dd" in keys:
            choices = [(f"#{k + 1}  {q.start:.1f}–{q.end:.1f} s · {q.label}", k)
                       for k, q in enumerate(preds)]
            out["segment_dd"] = gr.update(choices=choices, value=i)
        if "transcript" in keys:
            out["transcript"] = state["segments"][i]["transcript"]
        return out

    VIEW_KEYS = ("state", "summary", "probs_plot", "wave_plot", "timeline_plot", "long_box",
                 "segment_dd", "transcript")

    def _cleared(self, status: str) -> dict:
        import gradio as gr
        return {"state": None, "status": status, "summary": "", "probs_plot": None,
                "wave_plot": None, "timeline_plot": None, "long_box": gr.update(visible=False),
                "segment_dd": gr.update(choices=[], value=None), "transcript": "",
                "correct_msg": ""}

    # -- events ----------------------------------------------------------------------------
    def analyse(self, audio: Any, audio_weight: Optional[float] = None,
                progress: Optional[Callable] = None) -> dict:
        """Decode, check, predict (segmenting long audio), and render everything."""
        if audio is None:
            return self._cleared("Upload a clip, record one, or click an example to start.")
        t0 = time.perf_counter()
        try:
            path, wav = self._load(audio)
            preds = self._analyse_wave(wav, progress)
            state = self._new_state(path, wav, preds)
            out = self._render(state, audio_weight, self.VIEW_KEYS)
        except EmodemoError as exc:
            log.info("analyse: %s", exc)
            return {**self._cleared(_error(str(exc))), "_error": str(exc)}
        except Exception as exc:  # noqa: BLE001
            log.exception("analyse failed")
            msg = (f"Something went wrong on our side while analysing ({type(exc).__name__}). "
                   "The details are in the server log; please try again or try another clip.")
            return {**self._cleared(_error(msg)), "_error": msg}
        took = time.perf_counter() - t0
        warns = sorted({w for s in state["segments"] for w in s.get("warnings", [])})
        status = f"Analysed **{md_escape(state['name'])}** ({_fmt_dur(state['duration'])}"
        status += f", {len(preds)} segments" if state["long"] else ""
        status += f") in {took:.1f} s."
        if warns:
            status += " " + " ".join(f"⚠️ {md_escape(w)}." for w in warns)
        out.update(status=status, correct_msg="")
        return out

    @_guard("status")
    def rerun_text(self, state: Optional[dict], transcript: Optional[str],
                   audio_weight: Optional[float] = None) -> dict:
        """Re-run only the text branch on an edited transcript, then re-fuse (no ASR, no audio)."""
        if not state:
            raise EmodemoError("Analyse a clip first; then you can edit its transcript.")
        text = clean_input_text(transcript)
        if len(text) > self.limits.max_text_chars:
            raise EmodemoError(f"The transcript is too long ({len(text)} characters; the limit "
                               f"is {self.limits.max_text_chars}).")
        text = " ".join(text.split())
        seg = state["segments"][state["selected"]]
        seg["transcript"] = text
        seg["text"] = self.rec.text_proba([text])[0].tolist() if text else None
        out = self._render(state, audio_weight,
                           ("state", "summary", "probs_plot", "wave_plot", "timeline_plot",
                            "segment_dd"))
        where = f" for segment #{state['selected'] + 1}" if state["long"] else ""
        out["status"] = ("Re-ran the text branch on your transcript" + where + "." if text else
                         "The transcript is empty: using the audio branch only" + where + ".")
        return out

    @_guard("status")
    def refuse(self, state: Optional[dict], audio_weight: Optional[float]) -> dict:
        """Re-fuse every span with a new audio weight (no model runs)."""
        if not state:
            return {}
        return self._render(state, audio_weight,
                            ("state", "summary", "probs_plot", "wave_plot", "timeline_plot",
                             "segment_dd"))

    @_guard("status")
    def select_segment(self, state: Optional[dict], index: Any,
                       audio_weight: Optional[float] = None) -> dict:
        """Show one segment of a long recording on its own (plots, transcript, correction)."""
        if not state:
            return {}
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise EmodemoError(f"unknown segment {index!r}") from None
        if not 0 <= i < len(state["segments"]):
            raise EmodemoError(f"there is no segment #{i + 1}")
        state["selected"] = i
        out = self._render(state, audio_weight, ("state", "summary", "probs_plot", "wave_plot",
                                                 "timeline_plot", "transcript"))
        out["correct_msg"] = ""
        return out

    def _label_value(self, label: Any) -> str:
        if label is None or (isinstance(label, str) and not label.strip()):
            raise EmodemoError("Pick the emotion you hear first (or “none of these”).")
        lab = str(label).strip()
        if lab.lower() in (NONE_DISPLAY, NONE_LABEL):
            return NONE_LABEL
        if lab not in self.labels:
            raise EmodemoError(f"unknown label {lab[:40]!r}; expected one of "
                               f"{', '.join(self.labels)}, or “{NONE_DISPLAY}”")
        return lab

    def _check_texts(self, transcript: Any, annotator: Any, note: Any) -> None:
        for name, value, limit in (("transcript", transcript, self.limits.max_text_chars),
                                   ("note", note, self.limits.max_text_chars),
                                   ("annotator", annotator, self.limits.max_annotator_chars)):
            n = len(clean_input_text(value)) if value is not None else 0
            if n > limit:
                raise EmodemoError(f"The {name} is too long ({n} characters; the "
                                   f"limit is {limit}).")

    @staticmethod
    def _blank_none(value: Any) -> Optional[str]:
        if value is None:
            return None
        s = clean_input_text(value)
        return s if s.strip() else None

    @_guard("correct_msg")
    def correct(self, state: Optional[dict], label: Any, annotator: Optional[str] = None,
                note: Optional[str] = None, transcript: Optional[str] = None,
                audio_weight: Optional[float] = None) -> dict:
        """Store the person's label for the shown clip (or segment) with the prediction."""
        if not state:
            raise EmodemoError("Analyse a clip first, then tell us the emotion you hear.")
        lab = self._label_value(label)
        self._check_texts(transcript, annotator, note)
        i = state["selected"]
        seg = state["segments"][i]
        pred = self._seg_prediction(state, i, audio_weight).to_dict()
        pred["transcript"] = seg["asr"]            # what the recogniser heard ("shown")
        start, end = (seg["start"], seg["end"]) if state["long"] else (None, None)
        cid = self.store.add(state["path"], lab, annotator=self._blank_none(annotator),
                             transcript=self._blank_none(transcript), prediction=pred,
                             note=self._blank_none(note), start=start, end=end)
        rec = self.store.get(cid)
        sha = (rec["media_sha256"] if rec else "")[:12]
        span = f", segment {start:.1f}–{end:.1f} s" if start is not None else ""
        who = f" by **{md_escape(annotator.strip())}**" if self._blank_none(annotator) else ""
        shown = NONE_DISPLAY if lab == NONE_LABEL else lab
        msg = (f"Stored correction **#{cid}**: **{md_escape(shown)}** (the model said "
               f"*{md_escape(pred['label'])}*) for clip `{sha}`{span}{who}. Thank you!")
        return {"correct_msg": _ok(msg), "stored_id": cid}

    # -- models ----------------------------------------------------------------------------
    def _active(self) -> Optional[Path]:
        p = getattr(self.rec, "bundle_path", None)
        return Path(p).resolve() if p else None

    def _bundles(self) -> list:
        from .registry import find_bundles
        out, seen = [], set()
        for d in self.model_dirs:             # a folder name shadowed by an earlier folder is skipped
            for b in find_bundles(d):
                if b.key not in seen:
                    seen.add(b.key)
                    out.append(b)
        return out

    def reference_choices(self) -> list[tuple[str, str]]:
        """Reference sets offered for the fine-tuning gate: none, or the active bundle's own
        validation data when it is present on this machine (never a path typed by a visitor)."""
        from .data import SHARED_DATA
        out = [("none (no reference check)", "")]
        rc = ((self.rec.config.get("training") or {}).get("run_config") or {})
        val = (rc.get("speech") or {}).get("val") or []
        for spec in ([val] if isinstance(val, str) else val):
            kind = spec.split(":", 1)[0]
            if kind == "ravdess" and ":root=" not in spec and (SHARED_DATA / kind).exists():
                out.append((spec, spec))
        return out

    @_guard("models_msg")
    def models(self) -> dict:
        """The bundles under the models folder, the active one marked."""
        import gradio as gr
        bundles = self._bundles()
        active = self._active()
        rows = []
        for b in bundles:
            rows.append(["● active" if b.path == active else "", b.key, b.name, b.version,
                         b.created[:16].replace("T", " "), _fmt_bytes(b.size),
                         "–" if b.audio_ua is None else f"{b.audio_ua:.3f}",
                         "–" if b.text_f1 is None else f"{b.text_f1:.3f}", b.base or "–",
                         "–" if b.corrections is None else str(b.corrections)])
        keys = [b.key for b in bundles]
        value = next((b.key for b in bundles if b.path == active), None)
        where = " and ".join(f"`{md_escape(str(d))}`" for d in self.model_dirs)
        now = (f"Active: **{md_escape(self.rec.name)} v{md_escape(self.rec.version)}**"
               + (f" (`{md_escape(active.name)}`)" if active else ""))
        msg = (f"{len(bundles)} model bundle{'s' if len(bundles) != 1 else ''} in {where}. {now}."
               if bundles else f"No model bundles in {where}. {now}.")
        return {"models_table": rows, "models_dd": gr.update(choices=keys, value=value),
                "models_msg": _ok(msg)}

    def _check_admin(self, token: Any) -> None:
        import hmac
        if self.admin_token and not hmac.compare_digest(str(token or "").encode(),
                                                        self.admin_token.encode()):
            raise EmodemoError("This needs the admin token (the app's owner sets it with "
                               "--admin-token or EMODEMO_ADMIN_TOKEN).")

    @_guard("models_msg")
    def switch_model(self, key: Optional[str], token: Any = None) -> dict:
        """Make the bundle `key` (a folder name listed by `models`) the active model."""
        from .recognizer import load_recognizer
        self._check_admin(token)
        found = {b.key: b for b in self._bundles()}
        if not key or key not in found:
            raise EmodemoError("Choose one of the listed models first.")
        b = found[key]
        if b.labels != self.labels:
            raise EmodemoError(f"'{key}' predicts {', '.join(b.labels)}, but this app was started with "
                               f"{', '.join(self.labels)}. Restart it with --bundle models/{key}.")
        with self._switch_lock:
            if b.path == self._active():
                out = self.models()
                out["models_msg"] = _ok(f"**{md_escape(key)}** is already the active model.")
                return out
            old = self.rec
            from .bundle import read_config
            same_asr = read_config(b.path).get("asr") == old.config.get("asr")
            new = load_recognizer(b.path, asr=old._asr if same_asr else None)
            self.rec = new                    # one reference swap: requests in flight finish on the old one
        out = self.models()
        out["weight"] = float(new.fusion.audio_weight)
        out["models_msg"] = _ok(f"Now using **{md_escape(new.name)} v{md_escape(new.version)}** "
                                f"(`{md_escape(key)}`) for everyone using this app. New predictions "
                                "and corrections record this version.")
        return out

    def _ft_kwargs(self, epochs: Any, min_per_class: Any, reference: Any, force: Any) -> dict:
        try:
            mpc = int(min_per_class) if min_per_class not in (None, "") else MIN_PER_CLASS
            ep = int(epochs) if epochs not in (None, "") else None
        except (TypeError, ValueError):
            raise EmodemoError("Epochs and the minimum per class must be whole numbers.") from None
        if not 1 <= mpc <= 1000:
            raise EmodemoError("The minimum number of corrections per class must be 1–1000.")
        if ep is not None and not 1 <= ep <= 50:
            raise EmodemoError("Epochs must be 1–50.")
        offered = {v for _, v in self.reference_choices() if v}
        ref = str(reference or "")
        return {"epochs": ep, "min_per_class": mpc, "reference_spec": ref if ref in offered else None,
                "force": bool(force), "media_dir": str(self.store.media_dir)}

    def _dry_run(self, base: Path, out: Path, kw: Mapping[str, Any]) -> dict:
        from .finetune import finetune
        return finetune(self.store.url, base, out, dry_run=True, min_per_class=kw["min_per_class"],
                        media_dir=kw["media_dir"])

    @_guard("ft_msg")
    def finetune_dry_run(self, min_per_class: Any = None) -> dict:
        """What the store holds for fine-tuning: counts per class and annotator, agreement."""
        from .finetune import format_summary
        kw = self._ft_kwargs(None, min_per_class, "", False)
        base = self._active() or self.models_dir / "default"
        rep = self._dry_run(base, self.work_dir / "dry-run", kw)
        text = format_summary(rep["dataset"])
        verdict = (f"⚠️ {md_escape(rep['guard'])}" if rep.get("guard")
                   else "✅ Enough corrections to fine-tune.")
        return {"ft_msg": f"{verdict}\n\n```text\n{text}\n```"}

    @_guard("ft_msg")
    def start_finetune(self, name: Any, epochs: Any = None, min_per_class: Any = None,
                       reference: Any = None, force: Any = False, token: Any = None) -> dict:
        """Start fine-tuning a new bundle `models/<name>` from the active one in the background."""
        import gradio as gr

        from .finetune import format_summary
        from .registry import FinetuneJob, check_new_name
        if not self.allow_finetune:
            raise EmodemoError("Fine-tuning is switched off in this app (started with --no-finetune).")
        self._check_admin(token)
        if self.job is not None and self.job.running:
            raise EmodemoError("A fine-tuning run is already going; wait for it to finish.")
        name = clean_input_text(name)
        # taken in any listed folder: refused; the new bundle goes to the first (models_dir)
        out = [check_new_name(d, name) for d in self.model_dirs][0]
        kw = self._ft_kwargs(epochs, min_per_class, reference, force)
        base = self._active()
        if base is None:
            raise EmodemoError("The active model was not loaded from a folder; cannot fine-tune it.")
        dry = self._dry_run(base, out, kw)
        if dry.get("guard"):
            raise EmodemoError(f"{dry['guard']}\n\n{format_summary(dry['dataset'])}")
        self.job = FinetuneJob(base=base, out=out, kwargs={**self.finetune_options, **kw})
        self.job.start(self.store.url)
        msg = (f"Fine-tuning **{md_escape(out.name)}** from **{md_escape(base.name)}** on "
               f"{dry['dataset']['clips']} corrected clips. You can keep using the app; the new "
               "model appears in the table when it is done.")
        return {"ft_msg": _ok(msg), "ft_timer": gr.Timer(active=True),
                "ft_progress": self._job_markdown()}

    def _job_markdown(self) -> str:
        j = self.job
        if j is None:
            return "No fine-tuning run yet."
        pct = int(round(100 * j.fraction))
        head = {"queued": "⏳ starting", "running": "⏳ running", "written": "✅ done: written",
                "not written": "⚠️ done: not written", "failed": "❌ failed"}[j.state]
        lines = [f"**{md_escape(j.out.name)}** — {head} · {pct}% · "
                 f"{_fmt_dur((j.finished or time.time()) - j.started)}",
                 f'<progress value="{pct}" max="100" style="width:100%"></progress>']
        if j.error:
            lines.append(f"**{md_escape(j.error)}**")
        rep = j.report or {}
        if rep.get("gate") and not rep["gate"].get("write", True):
            lines.append("Worse on the reference set: " + md_escape("; ".join(rep["gate"].get("failures", [])))
                         + ". Tick *write even if worse* to keep it anyway.")
        ho = (rep.get("metrics") or {}).get("heldout_corrections") or {}
        if ho.get("before") and ho.get("after"):
            rows = ["| held-out corrections | before | after |", "|---|---|---|"]
            for br in ("audio", "text", "fused"):
                if br in ho["before"] and br in ho["after"]:
                    rows.append(f"| {br} UA | {ho['before'][br]['UA']:.3f} | {ho['after'][br]['UA']:.3f} |")
            lines.append("\n".join(rows))
        if j.log:
            lines.append("```text\n" + "\n".join(j.log[-8:]) + "\n```")
        return "\n\n".join(lines)

    def finetune_status(self) -> dict:
        """Progress of the current or last fine-tuning run (polled by a timer while it runs)."""
        import gradio as gr
        out = {"ft_progress": self._job_markdown(),
               "ft_timer": gr.Timer(active=bool(self.job is not None and self.job.running))}
        if self.job is not None and not self.job.running:
            out.update({k: v for k, v in self.models().items() if k != "models_msg"})
        return out

    # -- history ---------------------------------------------------------------------------
    @_guard("history_msg")
    def history(self, label_filter: Optional[str] = None, text_filter: Optional[str] = None) -> dict:
        """The stored corrections (newest first), filtered, and the per-clip agreement table."""
        import pandas as pd
        lab = None if not label_filter or label_filter == "all" else self._label_value(label_filter)
        rows = self.store.corrections(limit=5000, label=lab)
        total = len(rows)
        needle = (text_filter or "").strip().lower()
        if needle:
            rows = [r for r in rows if any(needle in str(r.get(k) or "").lower()
                                           for k in ("annotator", "note", "transcript_corrected",
                                                     "transcript_shown"))]
        matched = len(rows)
        table = []
        for r in rows[:MAX_HISTORY_ROWS]:
            created = r.get("created_at")
            span = ("" if r.get("start") is None and r.get("end") is None else
                    f"{(r.get('start') or 0):.1f}–{(r.get('end') or 0):.1f}")
            model = " ".join(x for x in (r.get("bundle_name"), r.get("bundle_version")) if x)
            label = NONE_DISPLAY if r.get("label") == NONE_LABEL else r.get("label")
            table.append([r.get("id"),
                          created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if created else "",
                          label, r.get("predicted_label") or "", r.get("annotator") or "",
                          r.get("transcript_corrected") or r.get("transcript_shown") or "",
                          r.get("note") or "", (r.get("media_sha256") or "")[:12], span, model])
        agree = []
        for a in self.store.agreement(min_annotators=1):
            span = ("" if a.get("start") is None and a.get("end") is None else
                    f"{(a.get('start') or 0):.1f}–{(a.get('end') or 0):.1f}")
            votes = ", ".join(f"{k}: {v}" for k, v in (a.get("labels") or {}).items())
            agree.append([(a.get("media_sha256") or "")[:12], span, a.get("n_annotators"),
                          a.get("n_corrections"), a.get("majority_label"),
                          f"{float(a.get('agreement') or 0):.0%}", votes,
                          "yes" if a.get("tie") else ""])
        if total == 0:
            msg = "No corrections match." if (lab or needle) else "No corrections stored yet."
        else:
            msg = (f"Showing {min(matched, MAX_HISTORY_ROWS)} of {matched} matching "
                   f"correction{'' if matched == 1 else 's'}")
            msg += f" ({total} with this label)." if lab else "."
        return {"history": pd.DataFrame(table, columns=HISTORY_COLUMNS),
                "agreement": pd.DataFrame(agree, columns=AGREEMENT_COLUMNS),
                "history_msg": msg}

    @_guard("history_msg")
    def export(self, fmt: str) -> dict:
        """Write all corrections to a fresh CSV or JSONL file for download."""
        fmt = str(fmt).lower().lstrip(".")
        if fmt not in ("csv", "jsonl"):
            raise EmodemoError(f"cannot export as {fmt!r}: choose CSV or JSONL")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        self._prune("corrections-*", 3600)  # Gradio has copied older ones to its cache
        path = self.work_dir / f"corrections-{stamp}-{os.urandom(3).hex()}.{fmt}"
        n = self.store.export(path)
        return {"export_file": str(path),
                "history_msg": f"Exported {n} correction{'' if n == 1 else 's'} as "
                               f"{fmt.upper()}: download below."}

    # -- API -------------------------------------------------------------------------------
    def api_predict(self, audio: Any, transcript: Optional[str] = None,
                    progress: Optional[Callable] = None) -> dict:
        """JSON prediction for API callers. Raises EmodemoError (message only) for bad input.
        An empty transcript means: transcribe with ASR."""
        transcript = None if transcript is None else clean_input_text(transcript)
        if transcript is not None and len(transcript) > self.limits.max_text_chars:
            raise EmodemoError(f"The transcript is too long ({len(transcript)} characters; "
                               f"the limit is {self.limits.max_text_chars}).")
        path, wav = self._load(audio)
        text = self._blank_none(transcript)
        dur = wav.size / A.SAMPLE_RATE
        if text is not None or dur <= self.limits.long_audio:
            out = self.rec.predict_wave(wav, text).to_dict()
            out["segments"] = []
            return out
        preds = self._analyse_wave(wav, progress)
        ov = self._overall(preds)
        return {"label": ov["label"], "confidence": ov["confidence"], "fused": ov["fused"],
                "audio": ov["audio"], "text": ov["text"],
                "transcript": " ".join(p.transcript for p in preds if p.transcript),
                "duration": dur, "start": 0.0, "end": dur,
                "bundle": getattr(self.rec, "name", ""),
                "bundle_version": getattr(self.rec, "version", ""),
                "warnings": sorted({w for p in preds for w in p.warnings}),
                "segments": [p.to_dict() for p in preds]}

    def api_correct(self, audio: Any, label: Any, transcript: Optional[str] = None,
                    annotator: Optional[str] = None, note: Optional[str] = None,
                    start: Optional[float] = None, end: Optional[float] = None,
                    prediction: Optional[Mapping] = None) -> dict:
        """Store a correction for API callers; returns its id, label and clip hash."""
        lab = self._label_value(label)
        self._check_texts(transcript, annotator, note)
        path = self._audio_path(audio)
        self._check_file(path)
        if prediction is not None and not isinstance(prediction, Mapping):
            raise EmodemoError("prediction must be a JSON object (as returned by /predict)")
        pred = dict(prediction) if prediction else None
        if pred is not None:
            pred.pop("segments", None)
        cid = self.store.add(path, lab, annotator=self._blank_none(annotator),
                             transcript=self._blank_none(transcript), prediction=pred,
                             note=self._blank_none(note), start=start, end=end)
        rec = self.store.get(cid)
        return {"id": cid, "label": lab, "media_sha256": rec["media_sha256"] if rec else None,
                "start": rec["start"] if rec else start, "end": rec["end"] if rec else end}


# ---- layout --------------------------------------------------------------------------------
CSS = """
#emodemo-summary h2 { margin: 0.2em 0 0.3em 0; font-size: 1.9em; }
#emodemo-status { min-height: 1.5em; }
footer { visibility: visible; }
"""


def theme():
    import gradio as gr
    return gr.themes.Soft(primary_hue="orange", secondary_hue="blue")


def launch_kwargs(limits: Optional[Limits] = None, examples_dir: Optional[Path] = None) -> dict:
    """Keyword arguments for `Blocks.launch()` that belong with this UI (Gradio 6 takes theme
    and css there): theme, css, max_file_size and the examples folder as an allowed path."""
    limits = limits or Limits()
    ex = Path(examples_dir or EXAMPLES_DIR)
    return {"theme": theme(), "css": CSS, "max_file_size": limits.max_file_bytes,
            "allowed_paths": [str(ex)] if ex.is_dir() else []}


def example_files(examples_dir: Optional[Path] = None) -> list[str]:
    ex = Path(examples_dir or EXAMPLES_DIR)
    if not ex.is_dir():
        return []
    return [str(p) for p in sorted(ex.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES]


def _bind(fn: Callable, keys: Sequence[str], with_progress: bool = False) -> Callable:
    """Adapt a handler returning {key: value} to Gradio's positional outputs (missing keys are
    left unchanged) and show its error, if any, as a toast."""
    import gradio as gr

    def emit(out: dict):
        err = out.get("_error")
        if err:
            gr.Warning(html.escape(err))
        vals = [out[k] if k in out else gr.skip() for k in keys]
        return vals[0] if len(vals) == 1 else tuple(vals)

    # no functools.wraps: Gradio reads the signature (and would follow __wrapped__)
    if with_progress:
        def run(*args, progress=gr.Progress()):
            return emit(fn(*args, progress=progress))
    else:
        def run(*args):
            return emit(fn(*args))
    run.__name__ = getattr(fn, "__name__", "handler")
    run.__doc__ = getattr(fn, "__doc__", None)
    return run


def _api_errors(fn: Callable) -> Callable:
    """API endpoints: person-fixable problems become gr.Error(message), never a traceback."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmodemoError as exc:
            raise gr.Error(html.escape(str(exc))) from None
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("API call %s failed", fn.__name__)
            raise gr.Error(f"internal error ({type(exc).__name__}); see the server log") from None
    return wrapper


def build_app(recognizer, store, *, examples_dir: Optional[str | Path] = None,
              title: str = "emodemo — speech + text emotion recognition",
              preload_asr: bool = False, concurrency_limit: int = 1,
              work_dir: Optional[str | Path] = None, models_dir: Optional[str | Path] = None,
              allow_finetune: bool = True, extra_model_dirs: Sequence[str | Path] = (),
              admin_token: Optional[str] = None, **limits: Any):
    """The Gradio Blocks app around an already-loaded recognizer and an open CorrectionStore.

    limits: fields of `Limits` (max_file_bytes or max_file_size like "50mb", max_duration,
    long_audio, segment_len, max_text_chars, max_annotator_chars). preload_asr: load (and warm
    up) the ASR model in a background thread now rather than on the first request. concurrency_limit: model runs at once (they
    share one queue). work_dir: folder for exports (default: a private temp folder).
    models_dir: where the Models tab looks for bundles and writes fine-tuned ones (default
    models/); extra_model_dirs: more folders it lists bundles from (e.g. the shipped models/ when
    models_dir is a persistent volume). allow_finetune: offer fine-tuning runs in the Models tab. Launch
    with `**launch_kwargs(demo.emodemo_limits)`.
    """
    import gradio as gr

    lim = Limits.from_kwargs(**limits)
    h = Handlers(recognizer, store, lim, work_dir=work_dir, models_dir=models_dir,
                 allow_finetune=allow_finetune, extra_model_dirs=extra_model_dirs,
                 admin_token=admin_token)
    if preload_asr:      # in the background: the page is served while the ASR loads and warms up
        recognizer.preload()
    labels = list(recognizer.labels)
    weight0 = float(recognizer.fusion.audio_weight)
    bundle = " ".join(x for x in (getattr(recognizer, "name", ""),
                                  getattr(recognizer, "version", "")) if x) or "unnamed"
    examples = example_files(Path(examples_dir) if examples_dir else None)
    label_choices = [(f"{EMOJI.get(l, '')} {l}".strip(), l) for l in labels] + \
                    [(f"{EMOJI[NONE_LABEL]} {NONE_DISPLAY}", NONE_LABEL)]
    model_q = dict(concurrency_id="model", concurrency_limit=concurrency_limit)

    # uploads and recordings land in Gradio's cache: drop those older than a day, hourly
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(
            f"# {html.escape(title)}\n"
            "Upload or record a short clip of speech. The **audio branch** listens to *how* it "
            "is said, the **text branch** reads *what* is said (from automatic speech "
            "recognition), and the two are fused. Then tell us what you hear: corrections are "
            "stored (with the audio) to improve the model.")
        state = gr.State(None)
        with gr.Tabs():
            with gr.Tab("Analyse", id="analyse"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=320):
                        audio_in = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                            label="Speech clip (wav, flac, mp3, m4a, ogg, webm)",
                                            elem_id="emodemo-audio")
                        analyse_btn = gr.Button("Analyse", variant="primary",
                                                elem_id="emodemo-analyse")
                        if examples:
                            gr.Examples(examples=[[p] for p in examples], inputs=[audio_in],
                                        label="Examples (click one)",
                                        example_labels=[Path(p).stem.replace("_", " ")
                                                        for p in examples])
                        weight = gr.Slider(0.0, 1.0, value=weight0, step=0.05,
                                           label="Audio weight in the fusion",
                                           info="0 = text only, 1 = audio only; updates live",
                                           elem_id="emodemo-weight")
                        with gr.Group():
                            transcript = gr.Textbox(
                                label="Transcript (edit it, then re-run the text branch)",
                                lines=2, max_lines=6, elem_id="emodemo-transcript",
                                max_length=lim.max_text_chars,
                                placeholder="The recognised words appear here.")
                            rerun_btn = gr.Button("Re-run text", size="sm",
                                                  elem_id="emodemo-rerun")
                    with gr.Column(scale=3, min_width=360):
                        status = gr.Markdown("Upload a clip, record one, or click an example "
                                             "to start.", elem_id="emodemo-status")
                        summary = gr.Markdown("", elem_id="emodemo-summary")
                        with gr.Column(visible=False) as long_box:
                            timeline = gr.Plot(label="Emotion timeline", show_label=False,
                                               elem_id="emodemo-timeline")
                            segment_dd = gr.Dropdown(choices=[], value=None, type="value",
                                                     label="Segment to view and correct",
                                                     elem_id="emodemo-segment")
                        probs_plot = gr.Plot(label="Probabilities", show_label=False,
                                             elem_id="emodemo-probs")
                        wave_plot = gr.Plot(label="Waveform", show_label=False,
                                            elem_id="emodemo-wave")
                with gr.Accordion("Is this right? Tell us what you hear", open=True):
                    with gr.Row():
                        label_in = gr.Radio(label_choices, value=None, label="Emotion you hear",
                                            elem_id="emodemo-label", scale=3)
                        with gr.Column(scale=2):
                            annotator_in = gr.Textbox(label="Your name or id (optional)",
                                                      max_lines=1, elem_id="emodemo-annotator",
                                                      max_length=lim.max_annotator_chars)
                            note_in = gr.Textbox(label="Note (optional)", lines=1, max_lines=4,
                                                 elem_id="emodemo-note",
                                                 max_length=lim.max_text_chars)
                    correct_btn = gr.Button("Submit correction", variant="primary",
                                            elem_id="emodemo-submit")
                    correct_msg = gr.Markdown("", elem_id="emodemo-correct-msg")
                    gr.Markdown(
                        "<small>Submitting stores the audio, your label, the transcript as "
                        "shown in the box, the model's prediction and your optional name and "
                        "note.</small>")
            with gr.Tab("History", id="history") as history_tab:
                with gr.Row():
                    label_filter = gr.Dropdown(["all"] + labels + [NONE_LABEL], value="all",
                                               label="Label", elem_id="emodemo-filter-label")
                    text_filter = gr.Textbox(label="Annotator / text contains", max_lines=1,
                                             placeholder="type, then press Enter",
                                             elem_id="emodemo-filter-text")
                    refresh_btn = gr.Button("Refresh", elem_id="emodemo-refresh")
                history_msg = gr.Markdown("", elem_id="emodemo-history-msg")
                history_df = gr.Dataframe(headers=HISTORY_COLUMNS, datatype="str",
                                          interactive=False, wrap=True, max_height=420,
                                          label="Corrections (newest first)",
                                          elem_id="emodemo-history")
                agreement_df = gr.Dataframe(headers=AGREEMENT_COLUMNS, datatype="str",
                                            interactive=False, max_height=300,
                                            label="Agreement per clip (least agreement first)",
                                            elem_id="emodemo-agreement")
                with gr.Row():
                    csv_btn = gr.Button("Export CSV", elem_id="emodemo-export-csv")
                    jsonl_btn = gr.Button("Export JSONL", elem_id="emodemo-export-jsonl")
                export_file = gr.File(label="Download", interactive=False,
                                      elem_id="emodemo-export-file")
            with gr.Tab("Models", id="models") as models_tab:
                models_msg = gr.Markdown("", elem_id="emodemo-models-msg")
                models_table = gr.Dataframe(headers=MODEL_COLUMNS, datatype="str",
                                            interactive=False, wrap=True, max_height=320,
                                            label="Model bundles", elem_id="emodemo-models")
                with gr.Row():
                    models_dd = gr.Dropdown(choices=[], value=None, label="Model",
                                            elem_id="emodemo-models-dd", scale=3)
                    switch_btn = gr.Button("Use this model", variant="primary",
                                           elem_id="emodemo-switch", scale=1)
                    models_refresh = gr.Button("Refresh", elem_id="emodemo-models-refresh",
                                               scale=1)
                gr.Markdown("<small>Switching changes the model for everyone using this app; "
                            "every prediction and correction records the model version that "
                            "made it.</small>")
                admin_in = gr.Textbox(label="Admin token (needed to switch models and fine-tune)",
                                      type="password", max_lines=1, visible=bool(admin_token),
                                      elem_id="emodemo-admin-token")
                with gr.Group(visible=allow_finetune):
                    gr.Markdown("### Fine-tune a new version from the stored corrections\n"
                                "Starts from the active model, holds out a quarter of the corrected "
                                "clips to measure before/after, mixes in a sample of the original "
                                "training data so old skills are kept, and writes a new bundle with "
                                "its lineage card into `models/<name>`.")
                    with gr.Row():
                        ft_name = gr.Textbox(label="Name of the new model", max_lines=1,
                                             placeholder="e.g. my-voices-v1",
                                             elem_id="emodemo-ft-name")
                        ft_epochs = gr.Number(value=FINETUNE_RECIPE["speech"]["epochs"],
                                              precision=0, minimum=1, maximum=50,
                                              label="Speech epochs (at most)",
                                              elem_id="emodemo-ft-epochs")
                        ft_min = gr.Number(value=MIN_PER_CLASS, precision=0, minimum=1,
                                           maximum=1000, label="Min. corrections per class",
                                           elem_id="emodemo-ft-min")
                    with gr.Row():
                        ft_ref = gr.Dropdown(h.reference_choices(), value="",
                                             label="Reference set (must not get worse)",
                                             elem_id="emodemo-ft-ref", scale=3)
                        ft_force = gr.Checkbox(label="write even if worse on the reference",
                                               elem_id="emodemo-ft-force", scale=2)
                    with gr.Row():
                        ft_dry = gr.Button("Check the data (dry run)", elem_id="emodemo-ft-dry")
                        ft_start = gr.Button("Start fine-tuning", variant="primary",
                                             elem_id="emodemo-ft-start")
                    ft_msg = gr.Markdown("", elem_id="emodemo-ft-msg")
                    ft_progress = gr.Markdown("", elem_id="emodemo-ft-progress")
                ft_timer = gr.Timer(2.0, active=False)
            with gr.Tab("About", id="about"):
                gr.Markdown(
                    f"**Model bundle:** `{html.escape(bundle)}` · labels: "
                    f"{', '.join(html.escape(l) for l in labels)} · fusion: "
                    f"{html.escape(recognizer.fusion.mode)}, default audio weight "
                    f"{weight0:.2f}\n\n"
                    f"**Limits:** files up to {_fmt_bytes(lim.max_file_bytes)}, audio up to "
                    f"{_fmt_dur(lim.max_duration)}; recordings longer than "
                    f"{_fmt_dur(lim.long_audio)} are split into segments of at most "
                    f"{_fmt_dur(lim.segment_len)}.\n\n"
                    "**Examples:** four RAVDESS clips (Livingstone & Russo 2018, PLoS ONE "
                    "13(5): e0196391, CC BY-NC-SA 4.0) and one synthetic espeak-ng clip; see "
                    "`data/examples/ATTRIBUTION.md`.\n\n"
                    "**API:** `/predict` (audio, transcript) and `/correct` — see “Use via API”.")

        # hidden components for the named API endpoints
        with gr.Column(visible=False):
            api_transcript = gr.Textbox(label="transcript")
            api_label = gr.Textbox(label="label")
            api_annotator = gr.Textbox(label="annotator")
            api_note = gr.Textbox(label="note")
            api_start = gr.Number(label="start", value=None)
            api_end = gr.Number(label="end", value=None)
            api_prediction = gr.JSON(label="prediction", value=None)
            api_out = gr.JSON(label="result")
            api_predict_btn = gr.Button("predict")
            api_correct_btn = gr.Button("correct")

        comp = {"state": state, "status": status, "summary": summary, "probs_plot": probs_plot,
                "wave_plot": wave_plot, "timeline_plot": timeline, "long_box": long_box,
                "segment_dd": segment_dd, "transcript": transcript, "correct_msg": correct_msg,
                "history": history_df, "agreement": agreement_df, "history_msg": history_msg,
                "export_file": export_file, "weight": weight, "models_table": models_table,
                "models_dd": models_dd, "models_msg": models_msg, "ft_msg": ft_msg,
                "ft_progress": ft_progress, "ft_timer": ft_timer}

        def wire(trigger, fn, inputs, keys, progress=False, name=None, **kw):
            # the UI's own events are private, and named so they never take /predict or /correct
            trigger(_bind(fn, keys, with_progress=progress), inputs=inputs,
                    outputs=[comp[k] for k in keys], api_visibility="private",
                    api_name="ui_" + (name or fn.__name__), **kw)

        analyse_keys = list(Handlers.VIEW_KEYS) + ["status", "correct_msg"]
        wire(audio_in.change, h.analyse, [audio_in, weight], analyse_keys, progress=True,
             trigger_mode="always_last", **model_q)
        wire(analyse_btn.click, h.analyse, [audio_in, weight], analyse_keys, progress=True,
             **model_q)
        rerun_keys = ["state", "summary", "probs_plot", "wave_plot", "timeline_plot",
                      "segment_dd", "status"]
        wire(rerun_btn.click, h.rerun_text, [state, transcript, weight], rerun_keys, **model_q)
        wire(transcript.submit, h.rerun_text, [state, transcript, weight], rerun_keys, **model_q)
        wire(weight.change, h.refuse, [state, weight], rerun_keys, show_progress="hidden",
             trigger_mode="always_last")
        wire(segment_dd.input, h.select_segment, [state, segment_dd, weight],
             ["state", "summary", "probs_plot", "wave_plot", "timeline_plot", "transcript",
              "correct_msg", "status"])
        wire(correct_btn.click, h.correct,
             [state, label_in, annotator_in, note_in, transcript, weight], ["correct_msg"])
        hist_keys = ["history", "agreement", "history_msg"]
        for trig in (refresh_btn.click, history_tab.select, label_filter.change,
                     text_filter.submit):
            wire(trig, h.history, [label_filter, text_filter], hist_keys)
        wire(csv_btn.click, lambda: h.export("csv"), [], ["export_file", "history_msg"],
             name="export_csv")
        wire(jsonl_btn.click, lambda: h.export("jsonl"), [], ["export_file", "history_msg"],
             name="export_jsonl")

        models_keys = ["models_table", "models_dd", "models_msg"]
        for trig in (models_tab.select, models_refresh.click):
            wire(trig, h.models, [], models_keys)
        wire(switch_btn.click, h.switch_model, [models_dd, admin_in], models_keys + ["weight"],
             **model_q)
        wire(ft_dry.click, h.finetune_dry_run, [ft_min], ["ft_msg"])
        wire(ft_start.click, h.start_finetune,
             [ft_name, ft_epochs, ft_min, ft_ref, ft_force, admin_in],
             ["ft_msg", "ft_timer", "ft_progress"])
        wire(ft_timer.tick, h.finetune_status, [], ["ft_progress", "ft_timer"] + models_keys[:2],
             show_progress="hidden")

        def predict(audio, transcript, progress=gr.Progress()):
            """Predict the emotion of a speech clip. `transcript`: leave empty to transcribe
            with ASR. Returns label, confidence, and the audio / text / fused probabilities."""
            return h.api_predict(audio, transcript, progress=progress)

        def correct(audio, label, transcript, annotator, note, start, end, prediction):
            """Store a correction: the emotion label a person hears in the clip (one of the
            model's labels, or "none"), optional corrected transcript, annotator, note, the
            start/end (seconds) of the span it is about, and the /predict result."""
            return h.api_correct(audio, label, transcript, annotator, note, start, end, prediction)

        api_predict_btn.click(_api_errors(predict), inputs=[audio_in, api_transcript],
                              outputs=api_out, api_name="predict", **model_q)
        api_correct_btn.click(_api_errors(correct),
                              inputs=[audio_in, api_label, api_transcript, api_annotator,
                                      api_note, api_start, api_end, api_prediction],
                              outputs=api_out, api_name="correct")
    demo.emodemo_handlers = h   # for tests and embedding
    demo.emodemo_limits = lim
    return demo
