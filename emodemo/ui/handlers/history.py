"""History tab: the stored corrections (filtered, newest first; the text filter matches the
annotator, the speaker, the note, the transcript and the file), agreement per clip, exports,
playing a row's audio (its segment for a segment), and undo: soft delete and restore (C5).
Plain functions `fn(ctx, ...)`."""
from __future__ import annotations

import inspect
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional

from ... import analysis
from ... import audio as A
from ...analysis import NONE_DISPLAY, NONE_LABEL
from ...errors import EmodemoError
from .. import markdown as md
from .base import guard

MAX_HISTORY_ROWS = 500
HISTORY_COLUMNS = ["id", "file", "label", "predicted", "annotator", "speaker", "span (s)",
                   "transcript", "note", "when (UTC)", "model", "clip", "deleted"]
AGREEMENT_COLUMNS = ["clip", "span (s)", "annotators", "corrections", "majority", "agreement",
                     "votes", "tie"]
# what the text filter matches (case-insensitive, a part of any of them)
SEARCHED = ("annotator", "annotator_account", "speaker", "note", "transcript_corrected",
            "transcript_shown", "file_name")


def _span(row: Mapping) -> str:
    if row.get("start") is None and row.get("end") is None:
        return ""
    return f"{(row.get('start') or 0):.1f}–{(row.get('end') or 0):.1f}"


def _when(dt) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if dt else ""


def file_name(r: Mapping) -> str:
    """The name the clip was uploaded under when the store keeps it, else its stored file."""
    return str(r.get("file_name") or Path(str(r.get("media_path") or "")).name)


def history_row(r: Mapping) -> list:
    model = " ".join(x for x in (r.get("bundle_name"), r.get("bundle_version")) if x)
    label = NONE_DISPLAY if r.get("label") == NONE_LABEL else r.get("label")
    return [r.get("id"), file_name(r), label, r.get("predicted_label") or "",
            r.get("annotator") or "", r.get("speaker") or "", _span(r),
            r.get("transcript_corrected") or r.get("transcript_shown") or "",
            r.get("note") or "", _when(r.get("created_at")),
            model, (r.get("media_sha256") or "")[:12],
            f"{_when(r.get('deleted_at'))} by {r.get('deleted_by') or '?'}" if r.get("deleted_at") else ""]


def agreement_row(a: Mapping) -> list:
    votes = ", ".join(f"{k}: {v}" for k, v in (a.get("labels") or {}).items())
    return [(a.get("media_sha256") or "")[:12], _span(a), a.get("n_annotators"),
            a.get("n_corrections"), a.get("majority_label"),
            f"{float(a.get('agreement') or 0):.0%}", votes, "yes" if a.get("tie") else ""]


def _rows(store, label: Optional[str], deleted: bool) -> list:
    """Live corrections; with `deleted`, the soft-deleted ones too (stores with soft delete)."""
    kw = {"limit": 5000, "label": label}
    if deleted and "deleted" in inspect.signature(store.corrections).parameters:
        kw["deleted"] = None
    return store.corrections(**kw)


@guard("history_msg")
def history(ctx, label_filter: Optional[str] = None, text_filter: Optional[str] = None,
            show_deleted: bool = False) -> dict:
    """The stored corrections (newest first), filtered, and the per-clip agreement table."""
    import pandas as pd
    lab = (None if not label_filter or label_filter == "all"
           else analysis.check_label(label_filter, ctx.labels))
    rows = _rows(ctx.store, lab, bool(show_deleted))
    total = len(rows)
    needle = (text_filter or "").strip().lower()
    if needle:
        rows = [r for r in rows if any(needle in str(r.get(k) or "").lower() for k in SEARCHED)]
    matched = len(rows)
    if total == 0:
        msg = "No corrections match." if (lab or needle) else "No corrections stored yet."
    else:
        msg = (f"Showing {min(matched, MAX_HISTORY_ROWS)} of {matched} matching "
               f"correction{'' if matched == 1 else 's'}")
        msg += f" ({total} with this label)." if lab else "."
        msg += " Click a row to play it, undo it or restore it."
    agree = [agreement_row(a) for a in ctx.store.agreement(min_annotators=1)]
    return {"history": pd.DataFrame([history_row(r) for r in rows[:MAX_HISTORY_ROWS]],
                                    columns=HISTORY_COLUMNS),
            "agreement": pd.DataFrame(agree, columns=AGREEMENT_COLUMNS),
            "history_msg": msg}


def _row_id(value: Any) -> int:
    """The selected row's id (ids start at 1; nothing selected is an empty box)."""
    try:
        cid = int(value)
    except (TypeError, ValueError):
        cid = 0
    if cid < 1:
        raise EmodemoError("Click a correction in the table first.")
    return cid


def clip_audio(row: Mapping):
    """A row's audio for a player: the span for a span (sample rate, int16), else the file."""
    path = row.get("media_path")
    if not path or not Path(path).exists():
        raise EmodemoError(f"The audio of correction #{row.get('id')} is missing from the media folder.")
    if row.get("start") is None and row.get("end") is None:
        return str(path)
    import numpy as np
    wav = A.load_audio(str(path))
    a = int((row.get("start") or 0) * A.SAMPLE_RATE)
    b = int(row["end"] * A.SAMPLE_RATE) if row.get("end") is not None else wav.size
    return A.SAMPLE_RATE, (np.clip(wav[a:b], -1, 1) * 32767).astype(np.int16)


@guard("history_msg")
def pick(ctx, row_id: Any) -> dict:
    """The clicked correction: its audio (the segment for a segment) and its id."""
    row = ctx.store.get(_row_id(row_id))
    if row is None:
        raise EmodemoError(f"There is no correction #{row_id}.")
    what = f"#{row['id']} · {md.md_escape(file_name(row))} · {md.md_escape(row.get('label'))}"
    if row.get("speaker"):
        what += f" · speaker {md.md_escape(row['speaker'])}"
    return {"history_audio": clip_audio(row), "history_id": row["id"],
            "history_msg": f"Selected correction {what}{_span_text(row)}."}


def _span_text(row: Mapping) -> str:
    span = _span(row)
    return f" (segment {span} s)" if span else ""


def _who(ctx, annotator: Any, account: Optional[str], token: Any) -> tuple[str, bool]:
    by = account if ctx.sign_in else analysis.blank_none(annotator)
    admin = bool(ctx.registry.admin_token) and bool(token)
    if admin:
        ctx.registry.check_admin(token)
    if not by and not admin:
        raise EmodemoError("Type the name you stored the correction under (Analyse tab) or "
                           "sign in; the admin token undoes anyone's.")
    return by or "admin", admin


@guard("history_msg")
def undo(ctx, row_id: Any, annotator: Any = None, token: Any = None, restore: bool = False,
         account: Optional[str] = None) -> dict:
    """Soft-delete (or restore) a correction: your own, or anyone's with the admin token. The
    row stays in the database; deleted rows are left out of votes, fine-tuning and exports."""
    cid = _row_id(row_id)
    fn = getattr(ctx.store, "restore" if restore else "delete", None)
    if fn is None:
        raise EmodemoError("This store cannot undo corrections yet (it needs the soft-delete "
                           "migration: python -m emodemo.store upgrade).")
    by, admin = _who(ctx, annotator, account, token)
    fn(cid, by, admin=admin)
    out = history(ctx, "all", "", True)
    out["history_msg"] = md.ok(f"Correction #{cid} {'restored' if restore else 'deleted'} "
                               f"(by {md.md_escape(by)}). "
                               + ("" if restore else "It stays restorable here."))
    return out


@guard("history_msg")
def export(ctx, fmt: Any) -> dict:
    """Write all corrections to a fresh CSV or JSONL file for download."""
    fmt = str(fmt).lower().lstrip(".")
    if fmt not in ("csv", "jsonl"):
        raise EmodemoError(f"cannot export as {fmt!r}: choose CSV or JSONL")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    analysis.prune(ctx.work_dir, "corrections-*", 3600)  # Gradio has copied older ones
    path = ctx.work_dir / f"corrections-{stamp}-{os.urandom(3).hex()}.{fmt}"
    n = ctx.store.export(path)
    return {"export_file": str(path),
            "history_msg": f"Exported {n} correction{'' if n == 1 else 's'} as "
                           f"{fmt.upper()}: download below."}
