"""Export the corrections as a Hugging Face ``audiofolder`` dataset.

    out/
      metadata.jsonl          one row per correction: file_name, label, annotator, transcript,
                              speaker (who speaks, or the session), ...
      audio/<sha256>.wav      a whole recording, byte for byte as stored
      audio/<sha256>_1250-3400.wav   a span of one (start-end in ms), cut out as WAV

``datasets.load_dataset("audiofolder", data_dir="out")`` loads it with the ``audio`` column
decoded. The metadata is JSON Lines rather than CSV on purpose: ``datasets`` reads a
``metadata.csv`` with pandas, which turns an annotator called "007" into the number 7.0 and a
transcript "NA" or "None" into a missing value; JSON keeps every value's type.

Rows follow the store (newest first); corrections of the same clip (`emodemo.labels.clip_key`)
share one audio file, so votes can be grouped by ``file_name``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Union

from ..labels import clip_key
from .base import StoreBase
from .records import StoreError


METADATA = "metadata.jsonl"
# suffixes both the store and `datasets`' audiofolder know; other stored files become WAV
COPY_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".au", ".caf",
                           ".w64", ".webm", ".mp4", ".wma"})
COLUMNS = ("file_name", "label", "annotator", "annotator_account", "transcript",
           "transcript_shown", "prediction", "prob_audio", "prob_text", "prob_fused", "note",
           "created_at", "updated_at", "correction_id", "media_sha256", "start", "end",
           "bundle_name", "bundle_version", "speaker")


def _file_name(key: tuple, source: Path) -> str:
    sha, start, end = key
    if start is None and end is None:
        suffix = source.suffix.lower()
        return f"audio/{sha}{suffix if suffix in COPY_SUFFIXES else '.wav'}"
    a = int(round((start or 0.0) * 1000))
    b = "end" if end is None else int(round(end * 1000))
    return f"audio/{sha}_{a}-{b}.wav"


def _write_audio(source: Path, target: Path, start: Any, end: Any) -> None:
    """`source` (or its start-end span, in seconds) as `target`: a byte copy when it is the whole
    file in a format audiofolder reads, else WAV (native rate via soundfile, or 16 kHz mono via
    `emodemo.audio.load_audio` for formats only ffmpeg decodes)."""
    import soundfile as sf

    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == source.suffix.lower() and start is None and end is None:
        shutil.copyfile(source, target)
        return
    try:
        with sf.SoundFile(str(source)) as f:
            sr = f.samplerate
            a = int(round((start or 0.0) * sr))
            b = f.frames if end is None else min(f.frames, int(round(end * sr)))
            f.seek(min(a, f.frames))
            data = f.read(max(0, b - a), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError):
        from ..audio import SAMPLE_RATE, load_audio  # ffmpeg formats (m4a, aac ...): 16 kHz mono
        wav, sr = load_audio(source), SAMPLE_RATE
        a = int(round((start or 0.0) * sr))
        data = wav[a: None if end is None else int(round(end * sr))]
    sf.write(str(target), data, sr, format="WAV", subtype="PCM_16")


def _row(rec: Any, file_name: str) -> dict:
    transcript = rec.transcript_corrected if rec.transcript_corrected is not None \
        else rec.transcript_shown
    return {
        "file_name": file_name, "label": rec.label, "annotator": rec.annotator,
        "annotator_account": rec.get("annotator_account"), "transcript": transcript,
        "transcript_shown": rec.transcript_shown, "prediction": rec.predicted_label,
        "prob_audio": rec.prob_audio, "prob_text": rec.prob_text, "prob_fused": rec.prob_fused,
        "note": rec.note, "created_at": rec.created_at.isoformat(),
        "updated_at": rec.updated_at.isoformat() if rec.updated_at else None,
        "correction_id": rec.id, "media_sha256": rec.media_sha256, "start": rec.start,
        "end": rec.end, "bundle_name": rec.bundle_name, "bundle_version": rec.bundle_version,
        "speaker": rec.speaker,
    }


def export_audiofolder(store: StoreBase, out_dir: Union[str, os.PathLike]) -> int:
    """Write every correction to `out_dir` (created; it must not exist or be empty) as an
    audiofolder dataset; returns the number of rows. The folder appears complete or not at all
    (built next to it, then renamed into place)."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreError(f"{out} already exists and is not an empty folder; choose a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-audiofolder-", dir=out.parent))
    try:
        written: dict[tuple, str] = {}
        n = 0
        with open(tmp / METADATA, "w", encoding="utf-8") as meta:
            for rec in store.iter_records():
                key = clip_key(rec.media_sha256, rec.start, rec.end, rec.duration)
                name = written.get(key)
                if name is None:
                    source = Path(rec.media_path)
                    if not source.is_file():
                        raise StoreError(f"the stored audio of correction {rec.id} is missing: "
                                         f"{source}")
                    name = written[key] = _file_name(key, source)
                    _write_audio(source, tmp / name, key[1], key[2])
                meta.write(json.dumps(_row(rec, name), ensure_ascii=False) + "\n")
                n += 1
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n
