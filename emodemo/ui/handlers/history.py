"""History tab: the stored corrections (filtered, newest first), agreement per clip, exports."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

from ... import analysis
from ...analysis import NONE_DISPLAY, NONE_LABEL
from ...errors import EmodemoError
from .base import guard

MAX_HISTORY_ROWS = 500
HISTORY_COLUMNS = ["id", "when (UTC)", "label", "predicted", "annotator", "transcript", "note",
                   "clip", "span (s)", "model"]
AGREEMENT_COLUMNS = ["clip", "span (s)", "annotators", "corrections", "majority", "agreement",
                     "votes", "tie"]
SEARCHED = ("annotator", "annotator_account", "note", "transcript_corrected", "transcript_shown")


def _span(row: Mapping) -> str:
    if row.get("start") is None and row.get("end") is None:
        return ""
    return f"{(row.get('start') or 0):.1f}–{(row.get('end') or 0):.1f}"


def history_row(r: Mapping) -> list:
    created = r.get("created_at")
    model = " ".join(x for x in (r.get("bundle_name"), r.get("bundle_version")) if x)
    label = NONE_DISPLAY if r.get("label") == NONE_LABEL else r.get("label")
    return [r.get("id"),
            created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if created else "",
            label, r.get("predicted_label") or "", r.get("annotator") or "",
            r.get("transcript_corrected") or r.get("transcript_shown") or "",
            r.get("note") or "", (r.get("media_sha256") or "")[:12], _span(r), model]


def agreement_row(a: Mapping) -> list:
    votes = ", ".join(f"{k}: {v}" for k, v in (a.get("labels") or {}).items())
    return [(a.get("media_sha256") or "")[:12], _span(a), a.get("n_annotators"),
            a.get("n_corrections"), a.get("majority_label"),
            f"{float(a.get('agreement') or 0):.0%}", votes, "yes" if a.get("tie") else ""]


class HistoryHandlers:
    """Mixed into `Handlers`; uses store, labels and work_dir from it."""

    @guard("history_msg")
    def history(self, label_filter: Optional[str] = None, text_filter: Optional[str] = None) -> dict:
        """The stored corrections (newest first), filtered, and the per-clip agreement table."""
        import pandas as pd
        lab = (None if not label_filter or label_filter == "all"
               else analysis.check_label(label_filter, self.labels))
        rows = self.store.corrections(limit=5000, label=lab)
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
        agree = [agreement_row(a) for a in self.store.agreement(min_annotators=1)]
        return {"history": pd.DataFrame([history_row(r) for r in rows[:MAX_HISTORY_ROWS]],
                                        columns=HISTORY_COLUMNS),
                "agreement": pd.DataFrame(agree, columns=AGREEMENT_COLUMNS),
                "history_msg": msg}

    @guard("history_msg")
    def export(self, fmt: Any) -> dict:
        """Write all corrections to a fresh CSV or JSONL file for download."""
        fmt = str(fmt).lower().lstrip(".")
        if fmt not in ("csv", "jsonl"):
            raise EmodemoError(f"cannot export as {fmt!r}: choose CSV or JSONL")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        analysis.prune(self.work_dir, "corrections-*", 3600)  # Gradio has copied older ones
        path = self.work_dir / f"corrections-{stamp}-{os.urandom(3).hex()}.{fmt}"
        n = self.store.export(path)
        return {"export_file": str(path),
                "history_msg": f"Exported {n} correction{'' if n == 1 else 's'} as "
                               f"{fmt.upper()}: download below."}
