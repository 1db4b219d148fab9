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
