"""Audio files of the store, content-addressed by SHA-256, written atomically.

A path is kept byte for byte as ``<media_dir>/<sha[:2]>/<sha><suffix>``; the suffix comes from
the detected format or a whitelist of audio suffixes, never from the caller's file name. A
``(waveform, sr)`` pair is stored as the 16 kHz mono 16-bit PCM WAV that
`emodemo.audio.load_audio` makes of it. Files are written to a temp file, fsynced and moved into
place (``os.replace``), so a reader sees either nothing or the complete file.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Union

from ..settings import VARIABLES, read_env
from .records import NOT_STORED, StoreError

MEDIA_ENV = VARIABLES["media_dir"][0]    # EMODEMO_MEDIA_DIR, read by emodemo.settings
MAX_MEDIA_BYTES = 512 * 1024 * 1024      # refuse to copy larger files into the store

# Suffixes a stored media file may carry (lower case). Anything else gets the suffix of the
# format soundfile detects, or ".bin".
AUDIO_SUFFIXES = frozenset({
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".aiff", ".aif",
    ".au", ".caf", ".w64", ".wma", ".mp4",
})
SF_FORMAT_SUFFIX = {
    "WAV": ".wav", "WAVEX": ".wav", "FLAC": ".flac", "OGG": ".ogg", "AIFF": ".aiff", "AU": ".au",
    "CAF": ".caf", "W64": ".w64", "MP3": ".mp3", "MPEG": ".mp3",
}


class MediaClip(NamedTuple):
    """Validated audio, ready to store: its bytes, their hash, the suffix to store them under."""
    sha256: str
    data: bytes
    suffix: str
    duration: float
    sample_rate: int

    @property
    def relative_path(self) -> str:
        """Where a new file for these bytes goes, relative to the media folder."""
        return f"{self.sha256[:2]}/{self.sha256}{self.suffix}"


def default_media_dir(db_file: Optional[Path]) -> Path:
    """``$EMODEMO_MEDIA_DIR`` (read through emodemo.settings), else ``<db folder>/media`` for a
    SQLite file, else ``data/media``."""
    configured = read_env("media_dir")
    return Path(configured) if configured else (db_file.parent / "media" if db_file else Path("data") / "media")


def ingest(audio: Any) -> MediaClip:
    """Validate the audio (via load_audio; AudioError if unusable) and produce the bytes to store.

    audio: a file path (kept byte for byte) or a ``(waveform, sample_rate)`` pair."""
    import soundfile as sf

    from ..audio import SAMPLE_RATE, load_audio  # imported lazily: pulls in torch

    if isinstance(audio, (str, os.PathLike)):
        path = Path(audio)
        if path.is_file() and path.stat().st_size > MAX_MEDIA_BYTES:
            raise StoreError(f"{path.name} is too large to store "
                             f"({path.stat().st_size / 2**20:.0f} MiB; the limit is "
                             f"{MAX_MEDIA_BYTES // 2**20} MiB)")
        wav = load_audio(path)  # AudioError with a readable message if unusable
        data = path.read_bytes()
        sample_rate, duration, suffix = SAMPLE_RATE, wav.size / SAMPLE_RATE, None
        try:
            info = sf.info(io.BytesIO(data))
            if info.samplerate > 0 and info.frames > 0:
                sample_rate, duration = int(info.samplerate), info.frames / info.samplerate
            suffix = SF_FORMAT_SUFFIX.get(str(info.format).upper())
        except Exception:  # noqa: BLE001 - decoded by ffmpeg: keep 16 kHz figures
            pass
        if suffix is None:
            user = path.suffix.lower()
            suffix = user if user in AUDIO_SUFFIXES else ".bin"
    else:
        wav = load_audio(audio)
        buf = io.BytesIO()
        sf.write(buf, wav, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        data, suffix = buf.getvalue(), ".wav"
        sample_rate, duration = SAMPLE_RATE, wav.size / SAMPLE_RATE
    return MediaClip(hashlib.sha256(data).hexdigest(), data, suffix, float(duration), int(sample_rate))


def resolve(media_dir: Path, rel: str) -> Path:
    """The absolute path of a stored file; StoreError if `rel` points outside `media_dir`."""
    path = (media_dir / Path(*rel.split("/"))).resolve()
    if not path.is_relative_to(media_dir):
        raise StoreError(f"media path {rel!r} points outside the media folder")
    return path


def ensure_file(target: Path, data: bytes) -> None:
    """Make sure `target` holds `data` (written atomically unless a file of that size is there:
    names are content hashes, so the same name and size is the same content)."""
    try:
        if target.stat().st_size == len(data):
            return
    except FileNotFoundError:
        pass
    atomic_write(target, data)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".part") -> Iterator[str]:
    """A temp file name next to `path`: on success it is os.replace'd onto `path`, on any error
    removed, so `path` is either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def atomic_open(path: Union[str, os.PathLike], mode: str = "wb", **kw: Any) -> Iterator[Any]:
    """Open a temp file next to `path`; on success fsync it and move it onto `path` (see
    `atomic_path`)."""
    with atomic_path(Path(path)) as tmp:
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path) as f:
        f.write(data)


def media_write_error(exc: OSError) -> StoreError:
    """A readable StoreError for a failure to write an audio file into the media folder."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk holding the media folder is full (no space left on device)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the media folder is read-only or not writable"
    else:
        why = f"the audio file could not be written ({exc.strerror or exc})"
    return StoreError(f"Could not save the correction: {why}. {NOT_STORED}")
