"""Where the speech is: Silero VAD (MIT), the copy that ships inside faster-whisper.

faster-whisper is already the default ASR backend, so its `silero_vad_v6.onnx` and
`faster_whisper.vad.get_speech_timestamps` add no dependency, no download and no second runtime
(onnxruntime comes with it; the `silero-vad` pip package would bring the same network again as
TorchScript). A frame is speech by what it sounds like, not by how loud it is, so a noisy room's
floor is not taken for speech the way an energy threshold takes it.

`speech_spans(wav)` -> [(start_s, end_s)] for 16 kHz mono audio; the model is loaded once per
process (under a lock) and runs on the CPU, one ONNX thread, deterministically; one session is
safe to share between threads. `sentences()` groups those spans into sentence-level segments of
long recordings (short pauses bridged, short pieces joined, long ones split at their longest
pause); `energy_segments()` is the older loudness rule, kept as an option and as the fallback for
audio without speech. Everything here reads 16 kHz mono samples and imports nothing from emodemo
but the errors, so audio.py (trim_silence, segment) builds on it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .errors import AudioError

VAD_SAMPLE_RATE = 16000     # the only rate this Silero model reads (emodemo works at 16 kHz)
VAD_FRAME = 512             # samples the model scores at a time (32 ms)
CHUNK_FRAMES = 1875         # long audio goes to the model 60 s at a time

Span = tuple[float, float]  # (start, end) in seconds
# Silero decides on 32-ms frames and hears a quiet onset late: on espeak-ng sentences its span
# starts a median 18-27 ms (90th percentile 85 ms) after the first frame within 40 dB of the peak.
# Sentence segments are widened by this much on top of their pad (benchmarks/bench_vad.py).
EDGE = 0.05

_lock = threading.Lock()
_model = None


def vad_model():
    """The Silero ONNX session (faster-whisper's), built once per process."""
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                from faster_whisper.vad import get_vad_model
                _model = get_vad_model()
    return _model


@dataclass(frozen=True)
class VadOptions:
    """How speech probabilities become spans (faster-whisper's `VadOptions`, in seconds).

    threshold: a 32-ms frame with a speech probability at or above it starts speech; speech
    ends below `threshold - 0.15`. min_speech: shorter bursts (a click, a cough) are dropped.
    min_silence: shorter pauses stay inside one span. pad: kept around each span (half the gap
    each side when two spans are closer than 2 * pad)."""
    threshold: float = 0.5
    min_speech: float = 0.1
    min_silence: float = 0.1
    pad: float = 0.1

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise AudioError(f"VAD threshold must be between 0 and 1, got {self.threshold}")
        if min(self.min_speech, self.min_silence, self.pad) < 0:
            raise AudioError("VAD durations (min_speech, min_silence, pad) cannot be negative")


DEFAULT = VadOptions()


def _samples(wav) -> np.ndarray:
    x = wav.detach().cpu().numpy() if hasattr(wav, "detach") else wav
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise AudioError(f"the VAD reads mono audio (1-D samples), got shape {x.shape}")
    return x


def speech_probabilities(wav) -> np.ndarray:
    """Silero's speech probability of every 32-ms frame (`VAD_FRAME` samples, the last one
    zero-padded) of 16 kHz audio, a minute at a time."""
    x, step = _samples(wav), CHUNK_FRAMES * VAD_FRAME
    out = [np.zeros(0, np.float32)]
    for at in range(0, x.size, step):
        chunk = np.pad(x[at:at + step], (0, -min(step, x.size - at) % VAD_FRAME))   # a copy: the model writes in it
        out.append(np.asarray(vad_model()(chunk), dtype=np.float32).reshape(-1)[: chunk.size // VAD_FRAME])
    return np.concatenate(out)


def widen(spans: list[Span], pad: float, total: float) -> list[Span]:
    """Each span `pad` s wider on both sides, but never past the middle of the pause to its
    neighbour, nor outside [0, total]; rounded to the millisecond."""
    out = []
    for k, (a, b) in enumerate(spans):
        lo = (spans[k - 1][1] + a) / 2 if k else 0.0
        hi = (b + spans[k + 1][0]) / 2 if k + 1 < len(spans) else total
        out.append((round(max(lo, a - pad), 3), round(min(hi, b + pad), 3)))
    return out


def speech_spans(wav, options: Optional[VadOptions] = None) -> list[Span]:
    """Spans of speech in 16 kHz mono audio (numpy or torch, 1-D), in seconds, in order; [] when
    there is none. Same audio, same options -> the same spans. Long audio is scored a minute
    (`CHUNK_FRAMES`) at a time, so memory does not grow with its length (the whole file at once
    cost 2.2x its size: 86 MB for 10 min); a span across a chunk boundary is joined again."""
    from faster_whisper.vad import VadOptions as FwOptions, get_speech_timestamps
    o, sr = options or DEFAULT, VAD_SAMPLE_RATE
    x = _samples(wav)
    vad_model()
    fw = FwOptions(threshold=o.threshold, min_speech_duration_ms=int(round(o.min_speech * 1000)),
                   min_silence_duration_ms=int(round(o.min_silence * 1000)), speech_pad_ms=0)
    spans: list[Span] = []
    step = CHUNK_FRAMES * VAD_FRAME
    for at in range(0, x.size, step):
        for s in get_speech_timestamps(x[at:at + step], fw, sampling_rate=sr):
            a, b = (at + s["start"]) / sr, (at + s["end"]) / sr
            if spans and a - spans[-1][1] < o.min_silence:
                spans[-1] = (spans[-1][0], b)
            else:
                spans.append((a, b))
    return widen(spans, o.pad, x.size / sr)


# ---- sentence-level segments of long audio -------------------------------------------------
@dataclass(frozen=True)
class SegmentOptions:
    """How a long recording is cut (audio.segment): every pause of at least `min_pause` s ends
    a segment; one shorter than `min_len` s joins a neighbour across the shorter pause (when the
    result fits `max_len`); one longer than `max_len` s is split at its longest pause (at its
    quietest 200 ms when it has none); `pad` s of pause is kept each side. `frame_ms` and
    `silence_db` are the loudness rule's (`energy_segments`)."""
    max_len: float = 10.0
    min_len: float = 1.0
    # A comma's pause (espeak-ng: ~0.3 s) stays inside; 0.3 split 3-12 % of noisy 6-sentence
    # recordings (white 10/0 dB, pink 5/0 dB) at a comma, 0.35-0.45 none of 48 (sentence pauses >= 0.4 s).
    min_pause: float = 0.35
    pad: float = 0.05
    frame_ms: int = 10
    silence_db: float = -40.0


def frame_energy_db(wav: np.ndarray, hop: int, block: int = 1024) -> np.ndarray:
    """Mean power per `hop`-sample frame in dB, computed on a view in blocks of frames so that
    memory does not grow with the length of the audio."""
    nfr = wav.size // hop
    frames = wav[: nfr * hop].reshape(nfr, hop)
    energy = np.empty(nfr)
    for a in range(0, nfr, block):
        f = frames[a:a + block].astype(np.float64)
        energy[a:a + block] = np.einsum("ij,ij->i", f, f) / hop
    return 10 * np.log10(energy + 1e-12)


def quietest(energy: np.ndarray, width: int) -> int:
    """Index of the middle of the quietest `width`-frame stretch of `energy` (dB per frame)."""
    width = min(width, max(1, energy.size // 4))
    return int(np.argmin(np.convolve(energy, np.ones(width) / width, mode="same")))


def group(spans: list[Span], min_pause: float) -> list[list[Span]]:
    """Runs of spans whose pauses are shorter than `min_pause`."""
    groups: list[list[Span]] = []
    for s in spans:
        if groups and s[0] - groups[-1][-1][1] < min_pause:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def join_short(regions: list, min_len: float, max_len: float, ends=None) -> list:
    """Join every region shorter than `min_len` to the neighbour across the shorter gap, when the
    two fit `max_len`. Regions are (start, end) pairs in any unit, or lists of them with
    `ends(region) -> (start, end)` (then lists are concatenated, pairs spanned)."""
    bounds = ends or (lambda r: r)
    out = list(regions)
    k = 0
    while k < len(out) and len(out) > 1:
        a, b = bounds(out[k])
        options = []
        for j in (k - 1, k + 1):
            if 0 <= j < len(out):
                ja, jb = bounds(out[j])
                if max(b, jb) - min(a, ja) <= max_len:
                    options.append((a - jb if j < k else ja - b, j))
        if b - a < min_len and options:
            k = min(k, min(options)[1])
            first, second = out[k], out[k + 1]
            out[k:k + 2] = [first + second if ends else (first[0], second[1])]
        else:
            k += 1
    return out


def split_long(runs: list[list[Span]], max_len: float, min_len: float,
               cut: Callable[[float, float], float]) -> list[Span]:
    """(start, end) of each run, a run longer than `max_len` split at its longest pause that
    leaves both sides at least `min_len` (any pause if none does), recursively; a single span
    still too long is split at `cut(lo, hi)`, a time between lo and hi."""
    out: list[Span] = []
    todo = list(runs)
    while todo:
        run = todo.pop(0)
        a, b = run[0][0], run[-1][1]
        if b - a <= max_len:
            out.append((a, b))
        elif len(run) > 1:
            gaps = [(run[i + 1][0] - run[i][1], i) for i in range(len(run) - 1)]
            fair = [g for g in gaps if run[g[1]][1] - a >= min_len and b - run[g[1] + 1][0] >= min_len]
            i = max(fair or gaps)[1]
            todo[:0] = [run[: i + 1], run[i + 1:]]
        else:
            lo, hi = a + min(min_len, (b - a) / 2), min(b - min_len, a + max_len)
            t = cut(lo, hi) if hi > lo else a + max_len
            t = min(max(t, a + 0.01), a + max_len)
            todo[:0] = [[(a, t)], [(t, b)]]
    return out


def sentences(spans: list[Span], wav: np.ndarray, options: SegmentOptions = SegmentOptions()) -> list[Span]:
    """Sentence-level segments (seconds) of 16 kHz `wav` from its speech `spans` (unpadded:
    `speech_spans(wav, VadOptions(pad=0))`); see SegmentOptions. Each is widened by `EDGE` + pad
(never past the middle of a pause) and stays within max_len."""
    o, sr, hop = options, VAD_SAMPLE_RATE, VAD_SAMPLE_RATE // 100

    def cut(lo: float, hi: float) -> float:              # continuous speech: its quietest 200 ms
        e = frame_energy_db(wav[int(lo * sr):int(hi * sr)], hop)
        return lo + (quietest(e, 20) * hop if e.size else 0) / sr
    pad = o.pad + EDGE
    budget = max(o.max_len - 2 * pad, o.max_len / 2)
    runs = join_short(group(spans, o.min_pause), o.min_len, budget, ends=lambda r: (r[0][0], r[-1][1]))
    return widen(split_long(runs, budget, o.min_len, cut), pad, wav.size / sr)


def energy_segments(wav: np.ndarray, options: SegmentOptions = SegmentOptions()) -> list[Span]:
    """Segments (seconds) of 16 kHz `wav` by loudness, the rule before the VAD, on `frame_ms`
    frames: a frame is a pause when it is `silence_db` below the loudest frame, or (in a noisy
    recording) less than 10 dB above the noise floor (5th percentile), but never when it is within
    20 dB of the loudest, so quiet speech next to loud speech is still speech; a segment's edges
    then reach down to `silence_db` below its own loudest frame (the fading end of a quiet
    sentence belongs to it). Pauses, short and long segments and padding as SegmentOptions says;
    a long one is cut at its quietest 200 ms."""
    o, n = options, wav.size
    hop = VAD_SAMPLE_RATE * o.frame_ms // 1000
    energy = frame_energy_db(wav, hop)
    top, floor = float(energy.max()), float(np.percentile(energy, 5)) + 10.0
    voiced = np.flatnonzero(energy > max(top + o.silence_db, min(floor, top - 20.0)))
    if voiced.size == 0:
        return [(0.0, n / VAD_SAMPLE_RATE)]
    fr = lambda sec: max(1, int(round(sec * 1000 / o.frame_ms)))  # noqa: E731
    max_fr, min_fr = fr(o.max_len), fr(o.min_len)
    breaks = np.flatnonzero(np.diff(voiced) > fr(o.min_pause))
    regions = join_short([(int(a), int(b) + 1) for a, b in zip(np.r_[voiced[0], voiced[breaks + 1]],
                                                               np.r_[voiced[breaks], voiced[-1]])], min_fr, max_fr)
    out: list[tuple[int, int]] = []
    while regions:                                   # long ones are cut at their quietest part
        a, b = regions.pop(0)
        if b - a <= max_fr:
            out.append((a, b))
            continue
        lo, hi = a + min(min_fr, (b - a) // 2), min(b - min_fr, a + max_fr)
        if hi <= lo:
            lo, hi = a + 1, a + max_fr
        c = lo + quietest(energy[lo:hi], fr(0.2))
        regions[:0] = [(a, c), (c, b)]
    segs = []
    for k, (a, b) in enumerate(out):                 # edges: down to `silence_db` below the segment's own peak
        edge = max(float(energy[a:b].max()) + o.silence_db, floor)
        lo, hi = (out[k - 1][1] + a) // 2 if k else 0, (b + out[k + 1][0]) // 2 if k + 1 < len(out) else energy.size
        while a > lo and energy[a - 1] > edge:
            a -= 1
        while b < hi and energy[b] > edge:
            b += 1
        start = max(a - fr(o.pad), (out[k - 1][1] + a) // 2 if k else 0)
        stop = min(b + fr(o.pad), (b + out[k + 1][0] + 1) // 2 if k + 1 < len(out) else energy.size)
        segs.append((round(start * hop / VAD_SAMPLE_RATE, 3), round(min(stop * hop, n) / VAD_SAMPLE_RATE, 3)))
    return segs
