"""Corrections store: people's corrections of emodemo predictions, with the audio they refer to.

Usage::

    from emodemo.store import CorrectionStore
    store = CorrectionStore("sqlite:///data/corrections.db")   # any SQLAlchemy URL
    cid = store.add("clip.wav", "happy", annotator="ana", prediction=pred, transcript="fixed text")
    store.corrections()          # newest first
    store.export("out.csv")      # or out.jsonl

Modules, one job each:

=================  ==========================================================================
``schema``         the ORM tables at the head revision (what the Alembic environment loads)
``db``             URLs (`normalize_url`, `redact_url`), engine, SQLite pragmas, retries, migrations
``media``          audio files by SHA-256, atomic writes
``validate``       labels, text fields, spans, the model's prediction
``base``           `StoreBase`: opening and reading (what the modules below the facade use)
``writes``         `WritableStore`: add (double submits kept once), update, soft delete, restore
``corrections``    `CorrectionStore`: the facade (base + writes + the modules below)
``agreement``      inter-annotator agreement per clip
``transfer``       CSV / JSONL export, CSV import, SQLite backup; `export` dispatches every format
``audiofolder``    Hugging Face audiofolder export (``datasets.load_dataset("audiofolder", ...)``)
``labelstudio``    Label Studio JSON export and import
``cli``            ``python -m emodemo corrections ...``
=================  ==========================================================================

The names below are loaded on first use, so importing one module (e.g. ``schema``) does not
load the others.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "CorrectionStore": "corrections", "CorrectionId": "writes",
    "QueueItem": "schema", "QueueSkip": "schema",
    "Record": "records", "ImportResult": "records", "StoreError": "records",
    "Base": "schema", "Media": "schema", "Correction": "schema", "VERSION_TABLE": "schema",
    "DEFAULT_URL": "db", "DB_ENV": "db", "default_url": "db", "normalize_url": "db",
    "redact_url": "db", "alembic_config": "db",
    "MEDIA_ENV": "media", "AUDIO_SUFFIXES": "media", "MAX_MEDIA_BYTES": "media",
    "DEFAULT_LABELS": "validate", "NONE_LABEL": "validate", "MAX_TEXT_CHARS": "validate",
    "MAX_ANNOTATOR_CHARS": "validate",
    "EXPORT_FIELDS": "transfer",
    "main_corrections": "cli",
}

__all__ = [
    "AUDIO_SUFFIXES", "Base", "Correction", "CorrectionId", "CorrectionStore", "QueueItem",
    "QueueSkip", "DB_ENV", "DEFAULT_LABELS",
    "DEFAULT_URL", "EXPORT_FIELDS", "ImportResult", "MAX_ANNOTATOR_CHARS", "MAX_MEDIA_BYTES",
    "MAX_TEXT_CHARS", "MEDIA_ENV", "Media", "NONE_LABEL", "Record", "StoreError", "VERSION_TABLE",
    "alembic_config", "default_url", "main_corrections", "normalize_url", "redact_url",
]
assert sorted(__all__) == sorted(_PUBLIC)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .cli import main_corrections
    from .corrections import CorrectionStore
    from .db import (DB_ENV, DEFAULT_URL, alembic_config, default_url, normalize_url,
                     redact_url)
    from .media import AUDIO_SUFFIXES, MAX_MEDIA_BYTES, MEDIA_ENV
    from .records import ImportResult, Record, StoreError
    from .schema import VERSION_TABLE, Base, Correction, Media, QueueItem, QueueSkip
    from .transfer import EXPORT_FIELDS
    from .writes import CorrectionId
    from .validate import DEFAULT_LABELS, MAX_ANNOTATOR_CHARS, MAX_TEXT_CHARS, NONE_LABEL


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
