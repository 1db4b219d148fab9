"""What the annotation queue takes in: audio files, folders, zip archives, long recordings.

`expand` turns the paths given into (audio file, name to show) pairs (a zip's audio members are
extracted into a work folder, never outside it); `clips_of` cuts a recording into the clips an
annotator hears (a short file is one clip; a long one is split at pauses by
`emodemo.audio.iter_segments`); `prelabel` runs the model on a clip (its prediction, and the
compact embedding the coverage order spreads over, `rank.compact`).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from ..store.media import AUDIO_SUFFIXES, MAX_MEDIA_BYTES
from ..textnorm import one_line
from .rank import compact

__all__ = ["AddReport", "expand", "clips_of", "prelabel"]


@dataclass
class AddReport:
    """What `AnnotationQueue.add` did: new item ids, clips already queued, files read, one message
    per problem; `speakers`: the clips already queued whose speaker was not the one given."""
    added: list = field(default_factory=list)
    skipped: int = 0
    files: int = 0
    errors: list = field(default_factory=list)
    speakers: list = field(default_factory=list)  # (name, start, end, kept or None: set, given)

    def speaker_lines(self) -> tuple[list[str], list[str]]:
        """What the add did to those speakers, as plain text for `queue add` and the Annotate tab:
        (the line saying how many got the one given, if any; one line per clip that has another
        speaker and keeps it: never overwritten)."""
        given = sum(had is None for _, _, _, had, _ in self.speakers)
        done = [f"speaker set on {given} already queued clip{'s' * (given != 1)} that had none"] if given else []
        kept = [f"{one_line(name, 100)} ({start:.2f}-{end:.2f} s) is queued with speaker "
                f"{one_line(had, 60)!r}: kept, not changed to {one_line(new, 60)!r}"
                for name, start, end, had, new in self.speakers if had is not None]
        return done, kept


def _is_audio(name: str) -> bool:
    return Path(name).suffix.lower() in AUDIO_SUFFIXES


def _unzip(archive: Path, work: Path, errors: list[str]) -> Iterator[tuple[Path, str]]:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        errors.append(f"{archive.name}: not a readable zip archive ({exc})")
        return
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir() and _is_audio(m.filename)]
        if not members:
            errors.append(f"{archive.name}: no audio files in the archive")
        for i, m in enumerate(sorted(members, key=lambda m: m.filename)):
            name = f"{archive.name}/{m.filename}"
            if m.file_size > MAX_MEDIA_BYTES:
                errors.append(f"{name}: too large ({m.file_size / 2**20:.0f} MiB)")
                continue
            # extracted under a made-up name: the member's own path never touches the disk
            target = work / f"{archive.stem[:40]}-{i:05d}{Path(m.filename).suffix.lower()}"
            with zf.open(m) as src, open(target, "wb") as dst:
                dst.write(src.read(MAX_MEDIA_BYTES + 1))
            yield target, name


def expand(paths: Iterable[Union[str, os.PathLike]], work: Path,
           errors: list[str]) -> Iterator[tuple[Path, str]]:
    """(audio file, display name) for every audio file named, in a folder (recursively, sorted)
    or in a zip archive; what cannot be used is reported in `errors` and skipped."""
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_audio(p.name))
            if not found:
                errors.append(f"{path}: no audio files in the folder")
            for p in found:
                yield p, p.relative_to(path).as_posix()
        elif path.is_file() and path.suffix.lower() == ".zip":
            yield from _unzip(path, work, errors)
        elif path.is_file():
            yield path, path.name
        else:
            errors.append(f"{path}: no such file or folder")


def clips_of(wav: np.ndarray, max_len: float) -> list[tuple[float, float, np.ndarray]]:
    """(start, end, samples) of each clip: the whole recording up to `max_len` s, else its
    speech segments (pauses split it; see `emodemo.audio.segment`), too-short ones dropped.
    (audio, and torch with it, is imported here: `queue next/list/vote` never need it.)"""
    from .. import audio as A
    total = wav.size / A.SAMPLE_RATE
    if total <= max_len:
        return [(0.0, round(total, 3), wav)]
    return [(round(seg.start, 3), round(seg.end, 3), chunk)
            for seg, chunk in A.iter_segments(wav, max_len=max_len)
            if chunk.size >= A.MIN_SAMPLES]


def prelabel(recognizer: Any, samples: np.ndarray, transcribe: bool) -> tuple[Any, Optional[list]]:
    """(the model's prediction for a clip, its compact embedding or None). With `transcribe` the
    ASR supplies the text branch's transcript, else audio only. The embedding comes from the
    same pass as the audio branch's probabilities (`audio_embedding`); a recognizer without it
    gives None (the queue then spreads over the probabilities)."""
    text = None if transcribe else ""
    embed = getattr(recognizer, "audio_embedding", None)
    if embed is None:
        return recognizer.predict_wave(samples, text), None
    p_audio, features = embed(samples)
    return recognizer.predict_wave(samples, text, p_audio=p_audio), compact(features)
