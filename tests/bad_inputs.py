"""A corpus of malformed and extreme inputs, generated at test time (nothing big is committed).

`make_corpus(folder)` writes every case into `folder` and returns a list of `BadInput`. Large
cases are sparse files (``f.truncate``): the 200 MB upload and the 2-hour recording take no real
disk space and no time to create.

Each case says what a caller should see:

* ``expect="ok"``: a prediction (possibly with a warning), finite probabilities.
* ``expect="error"``: `emodemo.AudioError` (or another `EmodemoError`) whose message matches
  `match` (a regex, case-insensitive): a message that names the problem, never a traceback.

The web app is stricter than the library (it refuses silence, uploads over its size limit and
audio over its duration limit before decoding), so a case may override what the app must do
with `app_expect` / `app_match`. The app limits these expectations assume are `APP_LIMITS`.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile as sf

SR = 16000
MB = 2**20
BIG_UPLOAD_BYTES = 200 * MB            # "a 200 MB upload"
LONG_SECONDS = 2 * 3600                # "a 2-hour file"
LONG_TEXT_CHARS = 100 * 1000           # "a 100 kB transcript"
# What the app tests run with (the app.py defaults: 50 MB, 30 min; text boxes 5000 characters).
APP_LIMITS = dict(max_file_bytes=50 * MB, max_duration=30 * 60.0, max_text_chars=5000)

# A few words of "speech" are not needed: the models must cope with any signal, and a harmonic
# tone with an envelope exercises the same code paths as speech at a fraction of the cost.
NON_UTF8_TRANSCRIPT = b"caf\xe9 \xff\xfe na\xefve \xc3"          # Latin-1 bytes, a cut UTF-8 tail
LONG_TRANSCRIPT = ("I am so happy today, this is wonderful news for all of us. " *
                   (LONG_TEXT_CHARS // 60 + 1))[:LONG_TEXT_CHARS]


@dataclass
class BadInput:
    name: str
    path: Optional[Path]
    expect: str                       # "ok" | "error"
    match: str = ""                   # regex for the error message (library, CLI)
    app_expect: Optional[str] = None  # None: same as `expect`
    app_match: Optional[str] = None   # None: same as `match`
    transcript: Union[str, bytes] = ""
    cli: bool = True                  # include in the one CLI run over the whole corpus
    what: str = ""                    # one line for the report

    @property
    def app(self) -> tuple[str, str]:
        return (self.app_expect or self.expect,
                self.match if self.app_match is None else self.app_match)

    def __repr__(self) -> str:  # pytest ids
        return self.name


def voice(seconds: float = 1.5, sr: int = SR, amp: float = 0.3, f0: float = 180.0) -> np.ndarray:
    """A speech-like harmonic signal with a syllable-rate envelope, float32 in [-amp, amp]."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 3.0 * t)
    x = x * env
    peak = float(np.max(np.abs(x))) if x.size else 1.0
    return (amp * x / (peak or 1.0)).astype(np.float32)


def wav_header(data_bytes: int, sr: int, channels: int = 1, bits: int = 16) -> bytes:
    """A canonical 44-byte PCM WAV header announcing `data_bytes` of sample data."""
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", min(36 + data_bytes, 0xFFFFFFFF)) + b"WAVE" +
            b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sr, sr * block, block, bits) +
            b"data" + struct.pack("<I", min(data_bytes, 0xFFFFFFFF)))


def sparse_wav(path: Path, seconds: float, sr: int, bits: int, total_bytes: Optional[int] = None) -> Path:
    """A WAV of `seconds` whose sample data is a hole (zeros): instant, no disk space used."""
    data = int(seconds * sr) * bits // 8 if total_bytes is None else total_bytes - 44
    with open(path, "wb") as f:
        f.write(wav_header(data, sr, 1, bits))
        f.truncate(44 + data)
    return path


def _ffmpeg(src: Path, dst: Path, *args: str) -> Optional[Path]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(src), *args, str(dst)],
                   check=True, timeout=60)
    return dst


def _png_bytes() -> bytes:
    import zlib
    raw = b"\x00" + b"\xff\x00\x00" * 4        # one 4-pixel red row
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 1, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


TOO_SHORT = r"too short"
UNREADABLE = r"not a readable audio file"
TOO_LONG = r"too long"


def make_corpus(folder: Path) -> list[BadInput]:
    """Write every case into `folder` (created) and return them. Takes about a second."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    cases: list[BadInput] = []

    def add(name: str, path: Optional[Path], expect: str, match: str = "", **kw) -> None:
        cases.append(BadInput(name, path, expect, match, **kw))

    def write(name: str, x: np.ndarray, sr: int = SR, **sfkw) -> Path:
        p = d / name
        sf.write(str(p), x, sr, **sfkw)
        return p

    base = voice(1.5)
    ref = write("reference.wav", base)

    # -- emptiness and length ------------------------------------------------------------------
    (d / "empty.wav").write_bytes(b"")
    add("empty_file", d / "empty.wav", "error", r"empty \(0 bytes\)", what="0-byte .wav")
    (d / "upload.webm").write_bytes(b"")
    add("zero_byte_upload", d / "upload.webm", "error", r"empty \(0 bytes\)",
        what="0-byte browser recording (.webm)")
    add("zero_samples", write("zero_samples.wav", np.zeros(0, np.float32)), "error", TOO_SHORT,
        what="valid WAV header, 0 samples")
    add("one_sample", write("one_sample.wav", np.array([0.5], np.float32)), "error", TOO_SHORT,
        what="1 sample")
    add("ten_ms", write("ten_ms.wav", base[: SR // 100]), "error", TOO_SHORT, what="10 ms")
    add("silence", write("silence.wav", np.zeros(2 * SR, np.float32)), "ok",
        app_expect="error", app_match=r"silent", what="2 s of digital silence")
    add("dc_only", write("dc_only.wav", np.full(2 * SR, 0.4, np.float32)), "ok",
        app_expect="error", app_match=r"silent", what="constant DC, no signal")

    # -- level problems -------------------------------------------------------------------------
    add("dc_offset", write("dc_offset.wav", np.clip(base + 0.5, -1, 1)), "ok",
        what="speech + 0.5 DC offset")
    add("clipping", write("clipping.wav", np.clip(base * 40, -1, 1), subtype="PCM_16"), "ok",
        what="clipped at full scale (square-ish)")
    nan = base.copy()
    nan[1000:1400] = np.nan
    nan[5000] = np.inf
    nan[7000:7010] = -np.inf
    add("nan_inf_float", write("nan_inf.wav", nan, subtype="FLOAT"), "ok",
        what="float WAV with NaN, +inf, -inf samples")
    add("all_nan_float", write("all_nan.wav", np.full(SR, np.nan, np.float32), subtype="FLOAT"),
        "ok", app_expect="error", app_match=r"silent", what="float WAV, every sample NaN")
    add("huge_float", write("huge_float.wav", base * 1e30, subtype="FLOAT"), "ok",
        what="float WAV with samples around 1e29 (far outside [-1, 1])")
    add("near_silent", write("near_silent.wav", base * 1e-6, subtype="FLOAT"), "ok",
        app_expect="error", app_match=r"silent", what="-120 dBFS (denormal-ish) signal")

    # -- sample rates, channels, sample formats -------------------------------------------------
    for sr in (8000, 22050, 44100, 96000):
        add(f"sr_{sr}", write(f"sr_{sr}.wav", voice(1.5, sr), sr), "ok", what=f"{sr} Hz")
    add("sr_4000_odd", write("sr_4000.wav", voice(1.0, 4000), 4000), "ok", what="4 kHz")
    add("stereo_dead_channel", write("stereo_dead.wav", np.stack([base, np.zeros_like(base)], 1)),
        "ok", what="stereo, right channel silent")
    six = np.stack([base * (k % 2) for k in range(6)], 1)
    add("six_channels", write("six_ch.wav", six), "ok", what="6 channels (5.1), 16 kHz")
    add("pcm_u8", write("pcm_u8.wav", base, subtype="PCM_U8"), "ok", what="8-bit unsigned PCM")
    add("pcm_24", write("pcm_24.wav", base, subtype="PCM_24"), "ok", what="24-bit PCM")
    add("float32", write("float32.wav", base, subtype="FLOAT"), "ok", what="32-bit float PCM")
    add("flac_named_wav", write("really_flac.wav", base, format="FLAC"), "ok",
        what="FLAC content with a .wav name")

    # -- compressed formats (ffmpeg) ------------------------------------------------------------
    for suffix, args in ((".mp3", ()), (".ogg", ("-c:a", "libvorbis")),
                         (".m4a", ("-c:a", "aac")), (".webm", ("-c:a", "libopus"))):
        p = _ffmpeg(ref, d / f"compressed{suffix}", *args)
        if p is not None:
            add(f"ffmpeg_{suffix[1:]}", p, "ok", what=f"{suffix[1:]} via ffmpeg")

    # -- broken and disguised files -------------------------------------------------------------
    good = ref.read_bytes()
    (d / "truncated_header.wav").write_bytes(good[:20])
    add("truncated_header", d / "truncated_header.wav", "error", UNREADABLE,
        what="WAV cut inside its 44-byte header")
    (d / "truncated_data.wav").write_bytes(good[: 44 + len(good) // 3])
    add("truncated_data", d / "truncated_data.wav", "ok",
        what="WAV header announces 1.5 s, a third of the data is there")
    with open(d / "claims_2h.wav", "wb") as f:
        u8 = np.round(voice(2.0, 8000) * 127 + 128).astype(np.uint8)
        f.write(wav_header(LONG_SECONDS * 8000, 8000, 1, 8) + u8.tobytes())
    add("header_claims_2h", d / "claims_2h.wav", "ok",
        what="WAV header claims 2 h, 2 s of data present")
    (d / "notes.wav").write_text("Dear diary, this is not audio at all.\n" * 40, encoding="utf-8")
    add("text_as_wav", d / "notes.wav", "error", UNREADABLE, what="text file renamed .wav")
    (d / "picture.mp3").write_bytes(_png_bytes())
    add("png_as_mp3", d / "picture.mp3", "error", UNREADABLE, what="PNG renamed .mp3")
    (d / "random.flac").write_bytes(np.random.default_rng(0).bytes(64 * 1024))
    add("random_bytes", d / "random.flac", "error", UNREADABLE, what="64 kB of random bytes .flac")
    fifo = d / "pipe.wav"
    try:
        os.mkfifo(fifo)
        add("fifo", fifo, "error", r"empty|not a regular file|not a readable",
            what="a named pipe called .wav (must not block)")
    except (AttributeError, OSError):
        pass
    (d / "folder.wav").mkdir()
    add("directory", d / "folder.wav", "error", r"folder", what="a directory called .wav")
    add("missing", d / "does-not-exist.wav", "error", r"not found|no longer available",
        what="path that does not exist")

    # -- size and duration limits ---------------------------------------------------------------
    add("upload_200mb", sparse_wav(d / "big upload.wav", 0, SR, 16, BIG_UPLOAD_BYTES), "error",
        TOO_LONG, app_match=r"too big", cli=True,
        what="200 MB WAV upload (1.8 h at 16 kHz; sparse)")
    add("two_hours", sparse_wav(d / "two_hours.wav", LONG_SECONDS, 4000, 8), "error", TOO_LONG,
        what="real 2 h WAV, 4 kHz 8-bit (28.8 MB: under the upload limit; sparse)")

    # -- names and transcripts ------------------------------------------------------------------
    uni = d / "dir with spaces" / "ünïcødé 声音 😀 clip (1).wav"
    uni.parent.mkdir()
    shutil.copy(ref, uni)
    add("unicode_path", uni, "ok", what="path with spaces, accents, CJK, emoji")
    html_name = d / "<img src=x onerror=alert(1)>.wav"
    shutil.copy(ref, html_name)
    add("html_file_name", html_name, "ok", what="file name that is an HTML tag")
    add("non_utf8_transcript", ref, "ok", transcript=NON_UTF8_TRANSCRIPT, cli=False,
        what="transcript given as non-UTF-8 bytes")
    add("surrogate_transcript", ref, "ok", transcript="caf\udce9 \ud800 lone surrogates",
        cli=False, what="transcript str with lone surrogates (argv / JSON \\ud800)")
    add("long_transcript", ref, "ok", transcript=LONG_TRANSCRIPT, app_expect="error",
        app_match=r"transcript is too long", cli=False, what="100 kB transcript")
    add("control_chars_transcript", ref, "ok", transcript="\x00\x07\x1b[31mred\x1b[0m\r\n\t<b>",
        cli=False, what="NUL, BEL, ANSI escapes, CR/LF in the transcript")
    return cases
