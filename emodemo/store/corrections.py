"""`CorrectionStore`: people's corrections of emodemo predictions, with the audio they refer to.

Usage::

    from emodemo.store import CorrectionStore
    store = CorrectionStore("sqlite:///data/corrections.db")   # any SQLAlchemy URL
    cid = store.add("clip.wav", "happy", annotator="ana", prediction=pred, transcript="fixed text")
    store.corrections()          # newest first
    store.delete(cid, by="ana"); store.restore(cid, by="ana")
    store.export("out.csv")      # or out.jsonl

The facade over the store's layers: opening and reading (`base.StoreBase`), writing
(`writes.WritableStore`), and the modules built on those two (agreement, export, import,
backup), which it dispatches to. Imports go one way: those modules never import this one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from . import transfer
from .agreement import clip_agreement
from .labelstudio import import_labelstudio
from .records import ImportResult, Record
from .writes import UNSET, CorrectionId, WritableStore

__all__ = ["CorrectionStore", "CorrectionId"]


class CorrectionStore(WritableStore):
    """Corrections plus the audio they refer to, in SQLite or any SQLAlchemy database.

    url: SQLAlchemy URL (or a plain SQLite file path); None -> `default_url()`.
    media_dir: where audio files go; None -> ``$EMODEMO_MEDIA_DIR``, else ``<db folder>/media``
        for a SQLite file, else ``./data/media``.
    labels: the accepted labels (``"none"`` = "none of these" is always accepted too).

    Writes to a read-only database, a full disk or an unreachable server raise a StoreError that
    says which, with nothing half-stored.
    """

    def add(self, audio: Any, label: str, annotator: Optional[str] = None,
            transcript: Optional[str] = None, prediction: Any = None, note: Optional[str] = None,
            start: Optional[float] = None, end: Optional[float] = None,
            account: Optional[str] = None, *, language: Any = None,
            translation: Optional[str] = None, file_name: Any = UNSET,
            queue_item_id: Optional[int] = None) -> CorrectionId:
        """Store one correction and return its id.

        audio: a file path (kept byte for byte) or a ``(waveform, sample_rate)`` pair (stored as
            16 kHz 16-bit WAV). Raises `emodemo.errors.AudioError` if it is not usable audio.
        label: one of `labels`, or ``"none"`` ("none of these"); StoreError otherwise.
        transcript: the corrected transcript; the shown one comes from `prediction`.
        prediction: dict or object with label, audio, text, fused, transcript, bundle,
            bundle_version, language, translation (whatever is present is stored).
        start, end: the span of the audio the correction is about, in seconds.
        account: the signed-in account (e.g. the Hugging Face user name) that made it; where
            given, agreement and fine-tuning count one vote per account instead of per
            `annotator` name (which is free text anyone can type).
        language: the speaker's language, a code ("pl") or the recognizer's dict with
            "code" and "probability"; translation: the English text the model read.
        file_name: the name to show (default: the audio file's name).
        queue_item_id: the annotation-queue item this correction is a vote on.

        A double submit (same clip/span, label, voter, transcript, note within
        `writes.DUPLICATE_WINDOW_S` seconds) stores nothing new: the returned `CorrectionId` is
        the first row's, with ``duplicate=True``.
        """
        return super().add(audio, label, annotator, transcript, prediction, note, start, end,
                           account, language=language, translation=translation,
                           file_name=file_name, queue_item_id=queue_item_id)

    def agreement(self, min_annotators: int = 2) -> list[Record]:
        """Inter-annotator agreement per clip; see `emodemo.store.agreement.clip_agreement`."""
        return clip_agreement(self, min_annotators)

    # -- import / export / backup (emodemo.store.transfer) -------------------------------------
    def export(self, path: Union[str, os.PathLike], format: Optional[str] = None,
               audio_url: Optional[str] = None) -> int:
        """Write all corrections to CSV or JSONL (chosen by the suffix), or with `format` as a
        Hugging Face "audiofolder" or "labelstudio" JSON; returns the number of rows (tasks for
        Label Studio). See `emodemo.store.transfer.export`."""
        return transfer.export(self, path, format=format, audio_url=audio_url)

    def import_csv(self, path: Union[str, os.PathLike], annotator: Optional[str] = None,
                   media_root: Union[str, os.PathLike, None] = None) -> ImportResult:
        """Add corrections from a manifest CSV (``path,label[,transcript][,annotator]``, or a CSV
        written by `export`, whose paths are relative to `media_root`); bad rows are skipped
        and reported. See `emodemo.store.transfer.import_csv`."""
        return transfer.import_csv(self, path, annotator, media_root=media_root)

    def import_labelstudio(self, path: Union[str, os.PathLike],
                           audio_root: Union[str, os.PathLike, None] = None,
                           annotator: Optional[str] = None) -> ImportResult:
        """Add the annotations of a Label Studio JSON export; bad tasks are skipped and
        reported. See `emodemo.store.labelstudio.import_labelstudio`."""
        return import_labelstudio(self, path, audio_root=audio_root, annotator=annotator)

    def backup(self, path: Union[str, os.PathLike]) -> Path:
        """Consistent copy of a SQLite database written atomically to `path` (the media folder is
        not included). See `emodemo.store.transfer.backup`."""
        return transfer.backup(self, path)
