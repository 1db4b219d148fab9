"""Moving corrections in and out of a store: CSV / JSONL export, CSV import, SQLite backup.

CSV cells that a spreadsheet would run as a formula (starting with = + - @ tab CR) are exported
with a leading single quote, and importing an exported CSV removes those quotes again, so an
export imported into an empty store gives the same corrections. JSONL is verbatim.
"""
from __future__ import annotations

import csv
import json
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import EmodemoError
from .audiofolder import export_audiofolder
from .labelstudio import export_labelstudio
from .media import atomic_open, atomic_path
from .records import ImportResult, StoreError
from .validate import loads
from .writes import WritableStore


EXPORT_FIELDS = (
    "id", "created_at", "updated_at", "label", "annotator", "annotator_account", "note",
    "transcript_shown", "transcript_corrected", "predicted_label",
    "prob_audio", "prob_text", "prob_fused", "bundle_name", "bundle_version",
    "media_sha256", "media_path", "duration", "sample_rate", "start", "end",
    "file_name", "language", "language_probability", "translation", "speaker",
)
EXPORT_FORMATS = ("csv", "jsonl", "audiofolder", "labelstudio")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
PATH_COLUMNS = ("path", "media_path", "file", "audio")
PREDICTION_COLUMNS = ("predicted_label", "prob_audio", "prob_text", "prob_fused",
                      "transcript_shown", "bundle_name", "bundle_version")
# import column -> the header names it may have (first match wins)
IMPORT_COLUMNS = (("path", PATH_COLUMNS), ("label", ("label",)),
                  ("transcript", ("transcript", "transcript_corrected")),
                  ("annotator", ("annotator",)), ("account", ("annotator_account",)),
                  ("note", ("note",)),
                  ("start", ("start",)), ("end", ("end",)),
                  ("media_sha256", ("media_sha256",)), ("file_name", ("file_name",)),
                  ("language", ("language",)), ("language_probability", ("language_probability",)),
                  ("translation", ("translation",)), ("speaker", ("speaker",)),
                  *((k, (k,)) for k in PREDICTION_COLUMNS))
POSITIONAL_COLUMNS = {"path": 0, "label": 1, "transcript": 2, "annotator": 3}


# ---- export ----------------------------------------------------------------------------------
def formula_like(value: str) -> bool:
    """True when a spreadsheet would run `value` as a formula, also behind our own guard
    quotes (so that guarding is reversible: "'=x" is exported as "''=x")."""
    while value.startswith("'"):
        value = value[1:]
        if not value.startswith(("'",) + FORMULA_PREFIXES):
            return False
    return value.startswith(FORMULA_PREFIXES)


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: ISO times, JSON for dicts, formula guard on text."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and formula_like(value):
        return "'" + value  # keep spreadsheets from evaluating it as a formula
    return value


def json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def export_row(rec: Any) -> dict:
    """A record's export fields; ``media_path`` relative to the media folder ('/'-separated),
    never the server's absolute path."""
    row = {k: rec[k] for k in EXPORT_FIELDS}
    row["media_path"] = rec["media_file"]
    return row


def record_json(rec: Any) -> str:
    """One record as a JSON line (the export fields, verbatim)."""
    return json.dumps({k: json_value(v) for k, v in export_row(rec).items()}, ensure_ascii=False)


def export(store: WritableStore, path: Union[str, os.PathLike], format: Optional[str] = None,
           audio_url: Optional[str] = None) -> int:
    """Write all corrections to `path`; returns the number of rows (tasks for Label Studio).

    format: "csv" or "jsonl" (default: chosen by the suffix .csv / .jsonl / .ndjson),
    "audiofolder" (`path` is a new folder: `emodemo.store.audiofolder`) or "labelstudio"
    (Label Studio JSON tasks: `emodemo.store.labelstudio`; `audio_url` prefixes the audio).
    CSV and JSONL rows come newest first. CSV cells that a spreadsheet would run as a formula
    (starting with = + - @ tab CR) get a leading single quote; JSONL is verbatim.
    Probabilities are JSON objects (JSON text inside CSV cells)."""
    path = Path(path)
    fmt = (format or "").strip().lower() or {".csv": "csv", ".jsonl": "jsonl",
                                             ".ndjson": "jsonl"}.get(path.suffix.lower())
    if fmt == "audiofolder":
        return export_audiofolder(store, path)
    if fmt == "labelstudio":
        return export_labelstudio(store, path, audio_url=audio_url)
    if fmt not in ("csv", "jsonl"):
        raise StoreError(f"cannot export to {path.name}: use a .csv or .jsonl file name, or the "
                         f"format {' or '.join(repr(f) for f in EXPORT_FORMATS[2:])}")
    kind = ".csv" if fmt == "csv" else ".jsonl"
    n = 0
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        if kind == ".csv":
            writer = csv.writer(f)
            writer.writerow(EXPORT_FIELDS)
            for rec in store.iter_records():
                writer.writerow([csv_cell(v) for v in export_row(rec).values()])
                n += 1
        else:
            for rec in store.iter_records():
                f.write(record_json(rec) + "\n")
                n += 1
    return n


# ---- import ----------------------------------------------------------------------------------
def _header_columns(lowered: list[str]) -> dict[str, int]:
    columns: dict[str, int] = {}
    for want, aliases in IMPORT_COLUMNS:
        for a in aliases:
            if a in lowered:
                columns[want] = lowered.index(a)
                break
    return columns


def _is_header(lowered: list[str]) -> bool:
    return lowered[0] in PATH_COLUMNS or ("label" in lowered and bool(set(lowered) & set(PATH_COLUMNS)))


def _prediction(cell) -> Optional[dict]:
    if all(cell(k) is None for k in PREDICTION_COLUMNS):
        return None
    prediction = {k: loads(cell(k)) if k.startswith("prob_") else cell(k) for k in PREDICTION_COLUMNS}
    prediction["label"] = prediction.pop("predicted_label")
    prediction["transcript"] = prediction.pop("transcript_shown")
    return prediction


def _audio_file(audio: str, roots: list[Path], sha: Optional[str], store: WritableStore) -> Path:
    """An audio path from a CSV cell: absolute as it is; relative: the first of `roots` that
    has it, else this store's copy of the same audio (by hash), else as under the first root."""
    audio_path = Path(audio.strip()).expanduser()
    if audio_path.is_absolute():
        return audio_path
    for root in roots:
        if (root / audio_path).is_file():
            return root / audio_path
    if sha:
        try:
            return store.media_path(sha)
        except StoreError:
            pass
    return roots[0] / audio_path


def _language(cell) -> Optional[dict]:
    code, prob = cell("language"), cell("language_probability")
    return None if code is None else {"code": code, "probability": prob}


def import_csv(store: WritableStore, path: Union[str, os.PathLike],
               annotator: Optional[str] = None,
               media_root: Union[str, os.PathLike, None] = None) -> ImportResult:
    """Add corrections from a manifest CSV with rows ``path,label[,transcript][,annotator]``.

    A header row is optional (recognised when its first cell is "path"/"media_path"/"file",
    or when it names a path column and a "label" column; named columns may then come in any
    order; an optional "speaker" column names who speaks, which fine-tuning keeps on one side
    of its held-out check). A CSV written by `export` is read back as it was written: its formula guard
    quotes are removed and the model's prediction columns are kept. Relative audio paths
    are resolved against the CSV's folder, then `media_root` (the exporting store's media
    folder: exports hold paths relative to it; default: a ``media`` folder next to the CSV),
    then this store's own copy of the same audio. `annotator` is used for rows without one. Bad
    rows are skipped and reported: returns ImportResult(imported, errors) with errors like
    "line 3: file not found: ...".
    """
    path = Path(path)
    try:
        f = open(path, encoding="utf-8-sig", errors="replace", newline="")
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    base = path.resolve().parent
    roots = [base, Path(media_root).expanduser().resolve() if media_root else base / "media"]
    imported, errors = 0, []
    with f:
        reader = csv.reader(f)
        columns: Optional[dict[str, int]] = None
        exported = False
        for row in reader:
            line = reader.line_num
            if not row or not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            lowered = [c.strip().lower() for c in row]
            if columns is None and imported == 0 and not errors and _is_header(lowered):
                exported = {"id", "media_sha256", "label"} <= set(lowered)
                columns = _header_columns(lowered)
                if "label" not in columns:
                    errors.append(f"line {line}: the header has no 'label' column")
                    return ImportResult(0, errors)
                continue
            if columns is None:
                columns = dict(POSITIONAL_COLUMNS)

            def cell(name: str, row=row, columns=columns) -> Optional[str]:
                i = columns.get(name)
                if i is None or i >= len(row):
                    return None
                value = row[i]
                if exported and value.startswith("'") and formula_like(value[1:]):
                    value = value[1:]  # undo export()'s formula guard
                return value if value.strip() else None

            try:
                audio, label = cell("path"), cell("label")
                if audio is None or label is None:
                    raise StoreError("each row needs a path and a label")
                audio_path = _audio_file(audio, roots, cell("media_sha256"), store)
                extra = {"file_name": cell("file_name")} if exported else {}
                store.add(audio_path, label.strip(), annotator=cell("annotator") or annotator,
                          account=cell("account"), transcript=cell("transcript"),
                          note=cell("note"), start=cell("start"), end=cell("end"),
                          prediction=_prediction(cell), language=_language(cell),
                          translation=cell("translation"), speaker=cell("speaker"), **extra)
                imported += 1
            except (EmodemoError, OSError) as exc:
                errors.append(f"line {line}: {exc}")
    return ImportResult(imported, errors)


# ---- backup ----------------------------------------------------------------------------------
def backup(store: WritableStore, path: Union[str, os.PathLike]) -> Path:
    """Consistent copy of a SQLite database (sqlite3 backup API) written atomically to `path`.
    The media folder is not included."""
    if not store.is_sqlite or store.db_file is None:
        raise StoreError("backup() works for SQLite database files only; "
                         "use the server's own tools (e.g. pg_dump) otherwise")
    path = Path(path).expanduser().resolve()
    if path == store.db_file:
        raise StoreError("the backup must not overwrite the database itself")
    raw = store.database.raw_connection()
    try:
        with atomic_path(path, ".db") as tmp:
            dest = sqlite3.connect(tmp)
            try:
                raw.driver_connection.backup(dest)
                dest.execute("PRAGMA journal_mode = DELETE")  # a self-contained single file
            finally:
                dest.close()
    finally:
        raw.close()
    return path
