"""Each applied fix measured against a reproduction of the code before it (in process): torch
threads, the old ASR call (`BeforeASR`), batched vs one-by-one audio branch, and a WER check."""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Optional, Sequence

import numpy as np

from bench_common import BEFORE_TORCH_THREADS, CLI_BATCH_SIZE, SR
from bench_corpus import PASSAGE, VOICES, espeak
from bench_timing import interleaved


class BeforeASR:
    """The ASR call before fix 2 (measurement only): faster-whisper's own `transcribe` on the
    WhisperModel the recognizer already holds — every chunk zero-padded to the 30-s window, greedy
    with faster-whisper's default temperature fallback (0.0, 0.2, ... 1.0), as `FasterWhisperASR`
    did before it got `window="clip"` (and `temperature=0.0` in its "30s" mode)."""

    def __init__(self, fw_model, language: Optional[str] = "en", beam_size: int = 1):
        self.model, self.language, self.beam_size = fw_model, language, beam_size
        self.window = "30s (before)"

    @classmethod
    def of(cls, asr) -> "BeforeASR":
        """The before-version of a loaded `FasterWhisperASR` (same model, same settings)."""
        return cls(asr.model, asr.language, asr.beam_size)

    def transcribe(self, wav: np.ndarray) -> str:
        segments, _ = self.model.transcribe(
            np.asarray(wav, dtype=np.float32), language=self.language, beam_size=self.beam_size,
            condition_on_previous_text=False, vad_filter=False, without_timestamps=True)
        return " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.8).strip()


@contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` inside the block, restored after."""
    import torch
    n0 = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(n0)


@contextmanager
def asr_window(rec, window: str):
    """`rec.asr.window` switched to `window` ("clip" or "30s") inside the block."""
    asr = rec.asr
    w0 = asr.window
    asr.window = window
    try:
        yield
    finally:
        asr.window = w0


@contextmanager
def before_fixes(rec):
    """The recognizer as it ran before the fixes: `BEFORE_TORCH_THREADS` torch threads and the
    old ASR call (`BeforeASR` on the same model)."""
    asr = rec.asr                        # loads the ASR first, so its load cannot reset the threads
    with torch_threads(BEFORE_TORCH_THREADS):
        rec.asr = BeforeASR.of(asr)
        try:
            yield
        finally:
            rec.asr = asr


def _in(ctx: Callable[[], object], fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` wrapped so each call runs inside a fresh `ctx()` context."""
    def run():
        with ctx():
            return fn()
    return run


def before_after(rec, wav: np.ndarray, reps: int = 5) -> dict:
    """Interleaved timings on one clip, each fix before vs after (median over `reps`):
    audio branch with `BEFORE_TORCH_THREADS` torch threads vs `rec.threads` (fix 1); ASR before
    (`BeforeASR`: 30-s window + temperature fallback), the package's `window="30s"` (temperature 0)
    and `window="clip"` (fix 2); end to end before (both) vs after (`rec` as loaded: defaults)."""
    asr = rec.asr                                       # loaded before anything is timed
    bt, at = BEFORE_TORCH_THREADS, rec.threads
    after = lambda: torch_threads(at)                   # noqa: E731 - rec's own setting (no-op normally)
    fns = {f"audio_t{bt}_before": _in(lambda: torch_threads(bt), lambda: rec.audio_proba(wav)),
           f"audio_t{at}_after": _in(after, lambda: rec.audio_proba(wav)),
           "asr_before": _in(lambda: before_fixes(rec), lambda: rec.transcribe(wav)),
           "asr_30s_t0": _in(lambda: asr_window(rec, "30s"), lambda: rec.transcribe(wav)),
           "asr_after": _in(lambda: asr_window(rec, "clip"), lambda: rec.transcribe(wav)),
           "e2e_before": _in(lambda: before_fixes(rec), lambda: rec.predict((wav, SR))),
           "e2e_after": _in(after, lambda: rec.predict((wav, SR)))}
    t = interleaved(fns, reps)
    med = {k: v["median"] for k, v in t.items()}
    with before_fixes(rec):
        before_text = rec.transcribe(wav)
    with asr_window(rec, "clip"):
        after_text = rec.transcribe(wav)
    return {"seconds": wav.size / SR, "torch_threads": {"before": bt, "after": at},
            "asr_window_after": asr.window, "timings": t,
            "speedup": {"audio": med[f"audio_t{bt}_before"] / med[f"audio_t{at}_after"],
                        "asr": med["asr_before"] / med["asr_after"],
                        "e2e": med["e2e_before"] / med["e2e_after"]},
            "transcripts": {"before": before_text, "after": after_text}}


def batch_before_after(rec, clips: Sequence[np.ndarray], reps: int = 3, batch: int = CLI_BATCH_SIZE) -> dict:
    """Audio-branch throughput (clips/s) for a folder's worth of clips, in process: before = one
    clip at a time with `BEFORE_TORCH_THREADS` threads (the old CLI loop); after =
    `rec.audio_proba_batch` in batches of `batch` with `rec.threads` (what `predict_many` runs)."""
    from emodemo import audio as A
    bt, at = BEFORE_TORCH_THREADS, rec.threads

    def seq():
        return [rec.audio_proba(A.load_audio((w, SR))) for w in clips]

    def batched():
        return [rec.audio_proba_batch([A.load_audio((w, SR)) for w in clips[i:i + batch]])
                for i in range(0, len(clips), batch)]

    kb, ka = f"one_by_one_t{bt}_before", f"batch{batch}_t{at}_after"
    fns = {kb: _in(lambda: torch_threads(bt), seq), ka: _in(lambda: torch_threads(at), batched)}
    t = interleaved(fns, reps)
    with torch_threads(at):
        diff = float(np.abs(np.concatenate(batched()) - np.stack(seq())).max())
    return {"clips": len(clips), "clip_seconds": clips[0].size / SR, "batch": batch, "timings": t,
            "clips_per_s": {k: len(clips) / v["median"] for k, v in t.items()},
            "speedup": t[kb]["median"] / t[ka]["median"], "max_abs_diff": diff}


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def wer(ref: str, hyp: str) -> tuple[int, int]:
    """(word edits, reference words) by Levenshtein distance on normalised words."""
    r, h = _words(ref), _words(hyp)
    d = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
    return d[len(h)], len(r)


def asr_accuracy(rec, sentences: Sequence[str] = PASSAGE, voices=VOICES[:1]) -> dict:
    """WER before (`BeforeASR`: 30-s window + temperature fallback) vs after (`rec.asr` with
    window "clip") on single espeak sentences, so the speed-up is not bought with accuracy (espeak
    is clean speech: a sanity check, not a benchmark)."""
    from emodemo.text import clean_text
    old = BeforeASR.of(rec.asr)
    tot = {"before": [0, 0], "after": [0, 0]}
    with asr_window(rec, "clip"):
        for voice, speed in voices:
            for text in sentences:
                wav = espeak(text, voice, speed)
                for k, hyp in (("before", clean_text(old.transcribe(wav))), ("after", rec.transcribe(wav))):
                    e, n = wer(text, hyp)
                    tot[k][0] += e
                    tot[k][1] += n
    return {k: e / max(n, 1) for k, (e, n) in tot.items()} | {"sentences": len(sentences) * len(voices)}

