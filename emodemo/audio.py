"""Audio front end: decoding, resampling, features, SpecAugment and segmenting long audio."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio

from . import vad
from .errors import AudioError, EmodemoError
from .vad import frame_energy_db  # noqa: F401 - loudness per frame, also audio's

# ---- front-end constants -------------------------------------------------------------------
SAMPLE_RATE = 16000          # every model in emodemo works at 16 kHz mono
# GE2E (resemblyzer) mel front end: linear-power mel, 25 ms Hann window, 10 ms hop, 40 bands.
MEL_WINDOW_MS = 25
MEL_HOP_MS = 10
MEL_BINS = 40
GE2E_TARGET_DBFS = -30.0     # resemblyzer normalises volume up to -30 dBFS (increase only)
# WeSpeaker / Kaldi fbank front end: 80 bins, 25/10 ms, hamming, no dither, int16 scale, mean CMN.
FBANK_BINS = 80
FBANK_FRAME_LENGTH_MS = 25.0
FBANK_FRAME_SHIFT_MS = 10.0
INT16_SCALE = 1 << 15
# Inputs shorter than this cannot produce a single analysis frame.
MIN_SAMPLES = int(SAMPLE_RATE * MEL_WINDOW_MS / 1000)
# Longest audio `load_audio` accepts by default (seconds). Files are measured from their header
# (soundfile / ffprobe) *before* decoding, so a 2-hour upload is refused without being read;
# ffmpeg never decodes more than this either. Pass `max_duration=` (or set this) to change it.
MAX_DURATION = 60 * 60.0
# Files with more samples than this (frames x channels) are downmixed block by block while
# reading, so a long multichannel file never sits in memory at full width.
BLOCKWISE_SAMPLES = 32 * 1024 * 1024
FFMPEG_TIMEOUT_S = 600

AudioInput = Union[str, os.PathLike, tuple]

SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".caf", ".w64"}


def _fmt_seconds(sec: float) -> str:
    return f"{sec:.1f} s" if sec < 120 else f"{sec / 60:.1f} min" if sec < 3600 else f"{sec / 3600:.1f} h"


def _too_long(name: str, dur: float, limit: float, at_least: bool = False) -> AudioError:
    return AudioError(f"{name} is too long ({'over ' if at_least else ''}{_fmt_seconds(dur)}); "
                      f"the limit is {_fmt_seconds(limit)}. Cut it into shorter pieces")


def _ffmpeg_input(path: Path) -> str:
    # "file:" makes ffmpeg take the name literally (no "concat:", "http:" ... protocols) and
    # an absolute path can never be read as an option.
    return "file:" + str(path.absolute())


def probe_duration(path: Union[str, os.PathLike]) -> Optional[float]:
    """Duration in seconds from the file header (soundfile, else ffprobe), without decoding;
    None when it cannot be told cheaply (not audio, no ffprobe, a stream without a duration)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        info = sf.info(str(path))
        if info.samplerate > 0 and info.frames >= 0:
            return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - not a soundfile format: try ffprobe
        pass
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    try:
        out = subprocess.run([ffprobe, "-v", "error", "-show_entries", "format=duration",
                              "-of", "default=noprint_wrappers=1:nokey=1", _ffmpeg_input(path)],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        dur = float(out.stdout.strip().splitlines()[0])
        return dur if np.isfinite(dur) and dur >= 0 else None
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def _decode_ffmpeg(path: Path, max_duration: float = float("inf")) -> tuple[np.ndarray, int]:
    """Decode anything ffmpeg understands (mp3, m4a, webm/opus, ...) to 16 kHz mono float32.

    The duration is checked with ffprobe first, and ffmpeg stops after `max_duration` (+1 s)
    even when the header lies, so the output is bounded."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioError(f"cannot decode {path.name}: this format needs ffmpeg, which is not installed")
    bounded = bool(np.isfinite(max_duration))
    if bounded:
        dur = probe_duration(path)
        if dur is not None and dur > max_duration:
            raise _too_long(path.name, dur, max_duration)
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", _ffmpeg_input(path)]
    if bounded:
        cmd += ["-t", f"{max_duration + 1:.3f}"]
    cmd += ["-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise AudioError(f"decoding {path.name} took too long") from exc
    if proc.returncode != 0:
        raise AudioError(f"{path.name} is not a readable audio file")
    wav = np.frombuffer(proc.stdout, dtype=np.float32).copy()
    if bounded and wav.size > max_duration * SAMPLE_RATE:
        raise _too_long(path.name, wav.size / SAMPLE_RATE, max_duration, at_least=True)
    return wav, SAMPLE_RATE


def _read_blockwise(path: Path, frames: int) -> np.ndarray:
    """Read a long multichannel file block by block, downmixing each block: [1, n] float32."""
    out = np.empty(frames, dtype=np.float32)
    n = 0
    for block in sf.blocks(str(path), blocksize=1 << 20, dtype="float32", always_2d=True):
        k = min(block.shape[0], out.size - n)
        out[n:n + k] = np.nan_to_num(block[:k], nan=0.0, posinf=1.0, neginf=-1.0).mean(axis=1)
        n += k
    return out[None, :n]


def decode(path: Union[str, os.PathLike], max_duration: Optional[float] = None) -> tuple[np.ndarray, int]:
    """Read an audio file as (float32 samples [channels, n], sample rate), without resampling.

    Refuses audio longer than `max_duration` seconds (default `MAX_DURATION`; inf = no limit)
    from its header, before reading it. A very long multichannel file comes back already
    downmixed to one channel (read block by block, so it never sits in memory at full width).
    """
    path = Path(path)
    limit = MAX_DURATION if max_duration is None else float(max_duration)
    if not path.exists():
        raise AudioError(f"file not found: {path}")
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise AudioError(f"{path.name} is not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path.name} is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
        info = None
    if info is not None and info.samplerate > 0:
        dur = info.frames / info.samplerate
        if dur > limit:
            raise _too_long(path.name, dur, limit)
        try:
            if info.channels > 1 and info.frames * info.channels > BLOCKWISE_SAMPLES:
                return _read_blockwise(path, info.frames), int(info.samplerate)
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
            return data.T, int(sr)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
            pass
    if path.suffix.lower() in {".wav", ".flac"} and shutil.which("ffmpeg") is None:
        raise AudioError(f"{path.name} is not a readable audio file") from None
    return _decode_ffmpeg(path, limit)


@functools.lru_cache(maxsize=8)
def resampler(orig: int) -> torchaudio.transforms.Resample:
    """`orig` Hz to 16 kHz with the sinc kernel computed once per rate (functional.resample: every
    call, 0.1-0.16 s at 22.05 or 44.1 kHz, more than the resampling); stateless, shared by threads."""
    return torchaudio.transforms.Resample(orig, SAMPLE_RATE)


def to_mono_16k(wav: np.ndarray | torch.Tensor, sr: int, owned: bool = False) -> np.ndarray:
    """Downmix to mono, replace non-finite samples, resample to 16 kHz; returns float32 [n].
    Works on at most one copy of the samples; the caller's array is never modified unless
    `owned` (the caller hands it over, e.g. freshly decoded samples: then no copy at all)."""
    src = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else wav
    arr = np.asarray(src, dtype=np.float32)
    owned = owned or not (isinstance(src, np.ndarray) and np.shares_memory(arr, src))
    t = torch.from_numpy(arr)
    if t.ndim == 2:
        # [channels, n] or [n, channels]: the shorter axis is the channel axis.
        if t.shape[0] > t.shape[1]:
            t = t.T
        if t.shape[0] == 1:
            t = t[0]
        else:
            t, owned = t.mean(dim=0), True
    elif t.ndim != 1:
        raise AudioError(f"expected a 1-D or 2-D waveform, got shape {tuple(t.shape)}")
    if not sr or sr <= 0:
        raise AudioError(f"invalid sample rate: {sr}")
    if int(sr) != SAMPLE_RATE and t.numel() > 0:
        t = resampler(int(sr))(torch.nan_to_num(t, nan=0.0, posinf=1.0, neginf=-1.0))
        owned = True
    if not owned:
        t = t.clone()
    torch.nan_to_num(t, nan=0.0, posinf=1.0, neginf=-1.0, out=t)
    t.clamp_(-1.0, 1.0)
    return t.contiguous().numpy()


def load_audio(audio: AudioInput, max_duration: Optional[float] = None) -> np.ndarray:
    """Load a path or a (waveform, sample_rate) pair as 16 kHz mono float32 and validate it.

    Raises AudioError with a readable message for empty, unreadable or non-audio input, and for
    audio longer than `max_duration` seconds (default `MAX_DURATION`, 1 h; inf = no limit),
    which a file is measured against from its header, before it is decoded.
    """
    limit = MAX_DURATION if max_duration is None else float(max_duration)
    if isinstance(audio, tuple):
        if len(audio) != 2:
            raise AudioError("audio must be a path or a (waveform, sample_rate) pair")
        wav, sr = audio
        if isinstance(wav, (int, float)) and not isinstance(sr, (int, float)):  # gradio order (sr, wav)
            wav, sr = sr, wav
        wav = np.asarray(wav)
        try:
            sr = int(sr)
        except (TypeError, ValueError):
            raise AudioError(f"invalid sample rate: {sr!r}") from None
        if sr > 0 and wav.ndim in (1, 2):
            n = max(wav.shape) if wav.ndim == 2 else wav.shape[0]
            if n / sr > limit:
                raise _too_long("the audio", n / sr, limit)
        if wav.dtype.kind in "iu":  # integer PCM (e.g. from a microphone component)
            info = np.iinfo(wav.dtype)
            wav = (wav.astype(np.float32) - (info.max + info.min + 1) / 2) / (info.max + 1 - (info.max + info.min + 1) / 2)
        elif wav.dtype.kind not in "fb":
            raise AudioError(f"audio samples must be numbers, got {wav.dtype}")
        out = to_mono_16k(wav, sr)
    elif isinstance(audio, (str, os.PathLike)):
        data, sr = decode(audio, limit)
        out = to_mono_16k(data, sr, owned=True)      # freshly decoded: cleaned in place
    else:
        raise AudioError(f"unsupported audio input of type {type(audio).__name__}")
    if out.size < MIN_SAMPLES:
        raise AudioError(f"audio is too short ({out.size / SAMPLE_RATE * 1000:.0f} ms); "
                         f"at least {MEL_WINDOW_MS} ms is needed")
    return out


def is_silent(wav: np.ndarray, threshold_dbfs: float = -60.0) -> bool:
    """True when the whole signal stays below `threshold_dbfs` RMS (after removing DC)."""
    x = wav - wav.mean()
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0
    return rms <= 10 ** (threshold_dbfs / 20)


# ---- features ------------------------------------------------------------------------------
_mel_cache: dict[str, torchaudio.transforms.MelSpectrogram] = {}


def ge2e_mel(wav: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The 40-band linear-power mel that resemblyzer's GE2E encoder was trained on: [frames, 40].

    Matches `resemblyzer.audio.wav_to_mel_spectrogram` (librosa, Slaney mel) after the same
    -30 dBFS increase-only volume normalisation as `resemblyzer.preprocess_wav`.
    """
    x = torch.as_tensor(wav, dtype=torch.float32)
    rms = torch.sqrt(torch.mean(x ** 2) + 1e-20)
    change_db = GE2E_TARGET_DBFS - 20 * torch.log10(rms)
    if change_db > 0:
        x = x * (10 ** (change_db / 20))
    if "ge2e" not in _mel_cache:
        _mel_cache["ge2e"] = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=SAMPLE_RATE * MEL_WINDOW_MS // 1000,
            hop_length=SAMPLE_RATE * MEL_HOP_MS // 1000, n_mels=MEL_BINS, power=2.0,
            norm="slaney", mel_scale="slaney", center=True, pad_mode="constant")
    return _mel_cache["ge2e"](x).T.contiguous()


def fbank(wav: np.ndarray | torch.Tensor, cmn: bool = True) -> torch.Tensor:
    """Kaldi-compatible 80-bin log fbank as WeSpeaker computes it: [frames, 80], mean-normalised."""
    x = torch.as_tensor(wav, dtype=torch.float32).reshape(1, -1) * INT16_SCALE
    feats = torchaudio.compliance.kaldi.fbank(
        x, num_mel_bins=FBANK_BINS, frame_length=FBANK_FRAME_LENGTH_MS,
        frame_shift=FBANK_FRAME_SHIFT_MS, dither=0.0, sample_frequency=SAMPLE_RATE,
        window_type="hamming", energy_floor=0.0)
    if cmn:
        feats = feats - feats.mean(dim=0, keepdim=True)
    return feats


def whisper_mel(wav: np.ndarray | torch.Tensor) -> torch.Tensor:
    """openai-whisper's own log-mel (`whisper.log_mel_spectrogram`: 80 bins, 25/10 ms, log10
    floored 8 below the clip's maximum, scaled (x + 4) / 4) of the clip alone, without Whisper's
    30-s padding: [samples // 160, 80]. The encoder's window policy is in whisper_encoder.py."""
    from whisper.audio import log_mel_spectrogram
    return log_mel_spectrogram(torch.as_tensor(wav, dtype=torch.float32), 80).T.contiguous()


def ge2e_whisper_mel(wav: np.ndarray | torch.Tensor) -> torch.Tensor:
    """GE2E mel (40) and Whisper log-mel (80) on the same 10-ms frames, side by side: [frames, 120]."""
    w = whisper_mel(wav)
    return torch.cat([ge2e_mel(wav)[: w.shape[0]], w], dim=1)


FEATURES = {"ge2e_mel": ge2e_mel, "fbank80": fbank, "whisper_mel": whisper_mel,
            "ge2e+whisper_mel": ge2e_whisper_mel}


TRIMMED = "trimmed:"         # feature-name prefix: leading and trailing silence cut off first (energy)
TRIMMED_VAD = "trimmed-vad:"  # ... where the voice activity detector hears no speech
TRIM_PREFIXES = {"energy": TRIMMED, "vad": TRIMMED_VAD}
SPAN = "span"   # speech.trim: the whole clip encoded (as the ASR hears it), its speech span pooled


def trim_prefix(trim: Union[bool, str, None]) -> str:
    """The feature-name prefix of a bundle's `speech.trim`: false/absent -> no trimming, true (old
    bundles) or "energy" -> energy trimming, "vad" -> trimming by the VAD; "span" -> none (the
    model cuts its frames to the speech span itself: speech.SpeechEmotionModel)."""
    if trim is None or trim is False or trim == SPAN:
        return ""
    method = "energy" if trim is True else trim
    if method not in TRIM_PREFIXES:
        raise EmodemoError(f"unknown speech.trim {trim!r}; use true, false, \"energy\", \"vad\" or \"span\"")
    return TRIM_PREFIXES[method]


def trim_silence(wav: np.ndarray | torch.Tensor, top_db: float = 40.0, pad: float = 0.1,
                 method: str = "energy"):
    """The clip without leading and trailing silence, `pad` s kept each side; a view. "energy": 10-ms
    frames `top_db` below the loudest are silence; "vad": whatever the VAD (vad.py) does not hear as
    speech, so the noise of a room is cut too (a clip where it hears none comes back whole).
    Corpora differ here (RAVDESS clips are half silence, nEMO's cut tight), and so do uploads: a
    model pooling over silence learns the recording, not the voice."""
    start, end = trim_bounds(wav, top_db, pad, method)
    return wav if (start, end) == (0, len(wav)) else wav[start:end]


def trim_bounds(wav: np.ndarray | torch.Tensor, top_db: float = 40.0, pad: float = 0.1,
                method: str = "energy") -> tuple[int, int]:
    """(first, end) sample of what `trim_silence` keeps; (0, len) where it finds no speech."""
    x = wav.numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    if method == "vad":
        spans = vad.speech_spans(x, vad.VadOptions(pad=pad))
        return (int(spans[0][0] * SAMPLE_RATE), int(round(spans[-1][1] * SAMPLE_RATE))) if spans else (0, x.size)
    if method != "energy":
        raise EmodemoError(f"unknown trimming method {method!r}; use \"energy\" or \"vad\"")
    hop = SAMPLE_RATE // 100
    span = _loud_frames(frame_energy_db(x, hop), top_db, pad)
    if span is None:
        return 0, x.size
    return int(max(0, span[0] * hop)), int(min(x.size, span[1] * hop))


def _loud_frames(e: np.ndarray, top_db: float, pad: float) -> Optional[tuple[int, int]]:
    """The energy rule, once: (first, end) of the 10-ms frames (dB `e`) within `top_db` of the
    loudest, `pad` s more each side (not clipped); None where there are none."""
    on = np.flatnonzero(e > e.max() - top_db) if e.size else e
    keep = int(pad * 100)
    return (int(on[0]) - keep, int(on[-1]) + 1 + keep) if on.size else None


def mel_speech_span(mel: torch.Tensor, top_db: float = 40.0, pad: float = 0.1) -> tuple[int, int]:
    """(first, end) frame of the speech in a Whisper log-mel [T, 80] (`whisper_mel`): the energy rule
    of `trim_bounds` on the power the log-mel holds (log10 power = 4·x − 4 per bin), so a model can
    find the span in its own input; (0, T) where nothing stands out."""
    T = int(mel.shape[0])
    if T == 0:
        return 0, 0
    power = torch.pow(10.0, 4.0 * mel.double() - 4.0).sum(-1)
    span = _loud_frames((10.0 * torch.log10(power.clamp_min(1e-20))).numpy(), top_db, pad)
    return (0, T) if span is None else (max(0, span[0]), min(T, span[1]))


def features(name: str, wav: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Compute the named feature type (a key of FEATURES, optionally prefixed `trimmed:` or
    `trimmed-vad:`) as [frames, bins]."""
    for method, prefix in TRIM_PREFIXES.items():
        if name.startswith(prefix):
            return features(name[len(prefix):], trim_silence(wav, method=method))
    try:
        return FEATURES[name](wav)
    except KeyError:
        raise EmodemoError(f"unknown feature type {name!r}; known: {sorted(FEATURES)}") from None


@dataclass
class SpecAugment:
    """Time and frequency masking on [frames, bins] (or [batch, frames, bins]) features with
    torchaudio's transforms, filled with the utterance mean (right for linear-power GE2E mel and
    for the mean-normalised fbank alike)."""
    freq_mask: int = 6        # max width of each frequency mask, in bins
    time_mask: int = 20       # max width of each time mask, in frames
    n_freq_masks: int = 2
    n_time_masks: int = 2
    p: float = 1.0            # probability of augmenting an utterance

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        if self.p < 1.0 and torch.rand(()) > self.p:
            return feats
        squeeze = feats.ndim == 2
        x = feats.unsqueeze(0) if squeeze else feats
        x = x.transpose(1, 2)  # torchaudio masks expect [..., freq, time]
        fill = float(x.mean())
        fm = torchaudio.transforms.FrequencyMasking(self.freq_mask)
        tm = torchaudio.transforms.TimeMasking(min(self.time_mask, max(1, x.shape[-1] // 5)))
        for _ in range(self.n_freq_masks):
            x = fm(x, mask_value=fill)
        for _ in range(self.n_time_masks):
            x = tm(x, mask_value=fill)
        x = x.transpose(1, 2)
        return x.squeeze(0) if squeeze else x


# ---- segmenting long audio -----------------------------------------------------------------
@dataclass
class Segment:
    start: float   # seconds
    end: float

    def slice(self, wav: np.ndarray) -> np.ndarray:
        return wav[int(self.start * SAMPLE_RATE):int(self.end * SAMPLE_RATE)]


_SEG = vad.SegmentOptions()     # the defaults, written once


def segment(wav: np.ndarray, max_len: float = _SEG.max_len, min_len: float = _SEG.min_len,
            frame_ms: int = _SEG.frame_ms, silence_db: float = _SEG.silence_db,
            min_pause: float = _SEG.min_pause, pad: float = _SEG.pad, method: str = "vad") -> list[Segment]:
    """Split speech at the pauses a listener hears as sentence breaks, into segments of at most
    `max_len` s; audio up to `max_len` s stays one segment.

    "vad" (default): where the VAD hears speech (vad.py), so a noisy room's floor is not speech;
    every pause of at least `min_pause` s ends a segment, a segment shorter than `min_len` joins
    its neighbour across the shorter pause (if the result fits `max_len`), one longer than
    `max_len` is split at its longest pause (speech without one at its quietest 200 ms); segments
    keep `pad` s of the pause on each side; leading and trailing silence is dropped. "energy":
    the older loudness rule on `frame_ms` frames with `silence_db` (`vad.energy_segments`), also
    used where the VAD hears no speech at all (music, tones).
    """
    total = wav.size / SAMPLE_RATE
    if total <= max_len:
        return [Segment(0.0, total)]
    if method not in ("vad", "energy"):
        raise EmodemoError(f"unknown segmentation method {method!r}; use \"vad\" or \"energy\"")
    o = vad.SegmentOptions(max_len=max_len, min_len=min_len, min_pause=min_pause, pad=pad,
                           frame_ms=frame_ms, silence_db=silence_db)
    spans = vad.speech_spans(wav, vad.VadOptions(pad=0.0)) if method == "vad" else []
    found = vad.sentences(spans, wav, o) if spans else vad.energy_segments(wav, o)
    return [Segment(a, b) for a, b in found]


def iter_segments(wav: np.ndarray, **kw) -> Iterator[tuple[Segment, np.ndarray]]:
    """Yield (segment, samples) pairs for `segment(wav, **kw)` without copying the whole file."""
    for seg in segment(wav, **kw):
        yield seg, seg.slice(wav)
