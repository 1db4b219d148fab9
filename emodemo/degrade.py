"""Degraded copies of clips: the same speech as a phone, a far microphone or a noisy room would
record it, for training a speech branch that hears more than a studio (and for measuring it).

One copy of a clip is fixed by the clip's id (seeded), rendered once to a 16-kHz WAV under
`degraded_root()` and reused. Each copy draws, independently:

- **room** (p = `ROOM_P`): a synthetic room impulse response, exponentially decaying noise with a
  reverberation time in `RT60_S`, mixed after the direct sound;
- **channel** (p = `CHANNEL_P`): half the time a telephone line (band-limited to 8 kHz sampling
  and 8-bit mu-law, as G.711), else a microphone's colouration (a peaking EQ of +-`EQ_DB` dB
  somewhere in 150-5000 Hz and a high-pass);
- **noise** (p = `NOISE_P`) at an SNR in `SNR_DB`: white, pink or brown noise, or babble (three
  other clips of the same list, other speakers where there are some, mixed);
- **level**: a gain in `GAIN_DB`, then clipping to [-1, 1] as an overloaded input does.

`degraded(items, every=k)`: a copy of every k-th clip (sorted by id), with id, speaker and file
marked `~deg` (its speaker is a setting of its own: one voice in one room, for per-setting
normalisation), label and corpus kept. `load_spec("<spec>:degrade=k")` gives the same;
`load_spec("<spec>:codec=k")` copies through a real speech codec instead (`codec`: GSM, Opus
8 kbit/s, MP3 24 kbit/s; a channel `degrade` never makes, to measure on), and
`load_spec("<spec>:voice=k")` as another voice would say it (`voice`: speed perturbation, pitch
and formants moved together).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from .audio import SAMPLE_RATE, load_audio
from .settings import read_env

TAG = "~deg"
CODEC_TAG = "~codec"
VOICE_TAG = "~voice"
ROOM_P, CHANNEL_P, NOISE_P = 0.5, 0.6, 0.8
RT60_S = (0.2, 0.8)
DIRECT_TO_REVERB_DB = (0.0, 10.0)
EQ_DB = 8.0
SNR_DB = (0.0, 20.0)
GAIN_DB = (-12.0, 6.0)
PHONE_RATE = 8000
NOISE_KINDS = ("white", "pink", "brown", "babble")
BABBLE_VOICES = 3
VOICE_FACTOR = (0.04, 0.12)    # |speed factor - 1| of a `voice` copy, either direction
DEFAULT_ROOT = Path("runs") / "degraded"


def degraded_root() -> Path:
    """Where rendered copies live (`EMODEMO_DEGRADED_DIR`, default runs/degraded)."""
    return Path(read_env("degraded_dir") or DEFAULT_ROOT).resolve()


def _rng(item_id: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha1(item_id.encode()).hexdigest()[:12], 16))


def room(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clip in a synthetic room: direct sound + exponentially decaying diffuse tail."""
    rt60 = rng.uniform(*RT60_S)
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)     # -60 dB at rt60
    tail[: int(0.003 * SAMPLE_RATE)] = 0.0                           # first reflections after 3 ms
    tail *= 10 ** (-rng.uniform(*DIRECT_TO_REVERB_DB) / 20) / max(np.sqrt((tail ** 2).sum()), 1e-9)
    rir = torch.from_numpy(np.concatenate([[1.0], tail[1:]])).float()
    out = AF.fftconvolve(torch.from_numpy(wav).float(), rir)[: len(wav)]
    return out.numpy()


def channel(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A telephone line (8 kHz, 8-bit mu-law) or a coloured microphone (peaking EQ + high-pass)."""
    x = torch.from_numpy(wav).float()
    if rng.random() < 0.5:
        x = AF.resample(x, SAMPLE_RATE, PHONE_RATE)
        peak = float(x.abs().max().clamp_min(1e-6))
        x = AF.mu_law_decoding(AF.mu_law_encoding(x / peak, 256), 256) * peak
        x = AF.resample(x, PHONE_RATE, SAMPLE_RATE)[: len(wav)]
    else:
        centre = float(np.exp(rng.uniform(np.log(150), np.log(5000))))
        x = AF.equalizer_biquad(x, SAMPLE_RATE, centre, rng.uniform(-EQ_DB, EQ_DB), Q=0.9)
        x = AF.highpass_biquad(x, SAMPLE_RATE, float(rng.uniform(60, 300)))
    return x.numpy()


def coloured_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2) noise, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
    spec *= {"white": 1.0, "pink": f ** -0.5, "brown": f ** -1.0}[kind]
    x = np.fft.irfft(spec, n)
    return x / max(float(np.sqrt((x ** 2).mean())), 1e-9)


def babble(n: int, others: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """Several other clips mixed at random offsets (a room of talkers), unit RMS."""
    out = np.zeros(n)
    for path in rng.choice(list(others), size=min(BABBLE_VOICES, len(others)), replace=False):
        v = load_audio(str(path)).astype(np.float64)
        v = np.tile(v, int(np.ceil(n / max(len(v), 1))) + 1)
        start = int(rng.integers(0, max(len(v) - n, 1)))
        out += v[start:start + n] / max(float(np.sqrt((v ** 2).mean())), 1e-9)
    return out / max(float(np.sqrt((out ** 2).mean())), 1e-9)


def add_noise(wav: np.ndarray, others: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))] if others else NOISE_KINDS[int(rng.integers(3))]
    noise = babble(len(wav), others, rng) if kind == "babble" else coloured_noise(len(wav), kind, rng)
    rms = float(np.sqrt((wav.astype(np.float64) ** 2).mean()))
    return wav + noise * rms * 10 ** (-rng.uniform(*SNR_DB) / 20)


def degrade(wav: np.ndarray, item_id: str, others: Sequence[str] = ()) -> np.ndarray:
    """One degraded copy of a 16-kHz clip, fixed by `item_id` (see the module docstring)."""
    rng = _rng(item_id)
    x = np.asarray(wav, np.float64)
    if rng.random() < ROOM_P:
        x = room(x, rng)
    if rng.random() < CHANNEL_P:
        x = channel(x, rng)
    if rng.random() < NOISE_P:
        x = add_noise(x, others, rng)
    x = x * 10 ** (rng.uniform(*GAIN_DB) / 20)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def codec(wav: np.ndarray, item_id: str, others: Sequence[str] = ()) -> np.ndarray:
    """The clip through one real speech codec, fixed by `item_id`: GSM full rate (8 kHz, as on
    2G phones), Opus at 8 kbit/s (VoIP on a bad line) or MP3 at 24 kbit/s. None of them is in
    `degrade`: copies made this way measure robustness to a channel the head never trained on."""
    name = CODECS[int(_rng(item_id).integers(len(CODECS)))]
    with tempfile.TemporaryDirectory() as d:
        src, enc = Path(d) / "in.wav", Path(d) / f"enc.{CODEC_ARGS[name][0]}"
        sf.write(src, np.asarray(wav, np.float32), SAMPLE_RATE, subtype="PCM_16")
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), *CODEC_ARGS[name][1:],
                        str(enc)], check=True, timeout=120)
        out = load_audio(str(enc))
    return np.pad(out, (0, max(0, len(wav) - len(out))))[: len(wav)].astype(np.float32)


def voice(wav: np.ndarray, item_id: str, others: Sequence[str] = ()) -> np.ndarray:
    """The clip as another voice would say it, fixed by `item_id`: played faster or slower by a
    factor f with 4-12 % from 1 (Kaldi's speed perturbation): pitch and formants move by f, as a
    longer or shorter vocal tract and a lower or higher voice would, and the tempo by f (well
    inside the range of one speaker's rate). The speaker of a copy is a setting of its own."""
    rng = _rng(item_id + VOICE_TAG)
    f = 1.0 + float(rng.choice((-1.0, 1.0))) * rng.uniform(*VOICE_FACTOR)
    orig = int(round(SAMPLE_RATE * f / 100.0)) * 100          # rates with a large common divisor
    x = AF.resample(torch.from_numpy(np.asarray(wav, np.float32)), orig_freq=orig, new_freq=SAMPLE_RATE)
    return np.clip(x.numpy(), -1.0, 1.0).astype(np.float32)


CODECS = ("gsm", "opus-8k", "mp3-24k")
CODEC_ARGS = {"gsm": ("gsm", "-ar", "8000", "-ac", "1", "-c:a", "libgsm"),
              "opus-8k": ("ogg", "-c:a", "libopus", "-b:a", "8k"),
              "mp3-24k": ("mp3", "-c:a", "libmp3lame", "-b:a", "24k")}
KINDS = {TAG: degrade, CODEC_TAG: codec, VOICE_TAG: voice}   # tag -> copy function(wav, item id, other clips)
SPEC_TAGS = {"degrade": TAG, "codec": CODEC_TAG, "voice": VOICE_TAG}   # data spec option -> tag (data.COPY_SPEC)


def is_copy_name(name: str) -> bool:
    """Whether a clip id or speaker name is a copy's (any kind made here: ends with its tag)."""
    return str(name).endswith(tuple(KINDS))


def is_copy(item: Any) -> bool:
    """Whether a clip is a copy made here (any kind), not an original recording."""
    return is_copy_name(getattr(item, "id", ""))


def _others(ordered: Sequence[Any], item: Any) -> list[str]:
    """The clips babble may mix under `item`: other speakers' (else any other clip)."""
    return ([str(o.audio) for o in ordered if o.speaker != item.speaker]
            or [str(o.audio) for o in ordered if o is not item])


def _render(item: Any, ordered: Sequence[Any], root: Path, tag: str) -> Path:
    """The copy's file, rendered on first use (the other clips are gathered only then)."""
    out = root / (item.corpus or "misc") / f"{(item.id or Path(str(item.audio)).stem).replace('/', '__')}{tag}.wav"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp.wav")
        sf.write(tmp, KINDS[tag](load_audio(str(item.audio)), item.id or str(item.audio), _others(ordered, item)),
                 SAMPLE_RATE, subtype="PCM_16")
        tmp.replace(out)
    return out


def degraded(items: Sequence[Any], every: int = 1, tag: str = TAG) -> list[Any]:
    """Copies of every `every`-th clip of `items` (`data.Item`s, sorted by id) made by `KINDS[tag]` (`TAG`:
    `degrade`, `CODEC_TAG`: `codec`), id and speaker marked with the tag; see the module."""
    ordered = sorted((it for it in items if it.audio), key=lambda it: it.id or str(it.audio))
    root = degraded_root()
    out = []
    for it in ordered[::max(1, int(every))]:
        out.append(dataclasses.replace(it, audio=str(_render(it, ordered, root, tag)), id=f"{it.id}{tag}",
                                       speaker=f"{it.speaker}{tag}" if it.speaker else None))
    return out
