"""The example clips offered under the upload box (data/examples) and what each one really is:
`labels.csv` gives the emotion that was performed, the language and the source, so the app can
show the true label next to the model's answer."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from ..settings import ROOT
from ..store.media import AUDIO_SUFFIXES       # the one list of audio file suffixes

EXAMPLES_DIR = ROOT / "data" / "examples"
LANGUAGES = {"en": "English", "pl": "Polish", "ko": "Korean"}


def example_files(examples_dir: Optional[Path] = None) -> list[str]:
    """The example clips offered under the upload box."""
    ex = Path(examples_dir or EXAMPLES_DIR)
    if not ex.is_dir():
        return []
    return [str(p) for p in sorted(ex.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES]


def truths(examples_dir: Optional[Path] = None) -> dict[str, dict]:
    """file name -> {label, language, source, speaker, text} from labels.csv ({} without it)."""
    f = Path(examples_dir or EXAMPLES_DIR) / "labels.csv"
    if not f.is_file():
        return {}
    with open(f, newline="", encoding="utf-8") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


def caption(path: str, table: dict[str, dict]) -> str:
    """How an example is offered: its performed label, language and source."""
    row = table.get(Path(path).name)
    if not row:
        return Path(path).stem.replace("_", " ")
    label = row.get("label") or "no acted emotion"
    lang = LANGUAGES.get(row.get("language", ""), row.get("language", ""))
    return f"{label} · {lang} · {row.get('source', '')}".strip(" ·")


def truth_line(name: str, table: dict[str, dict]) -> str:
    """Plain text: what the clip `name` really is, or "" when it is not an example."""
    row = table.get(name)
    if not row:
        return ""
    label = row.get("label")
    who = f", speaker {row['speaker']}" if row.get("speaker") else ""
    if not label:
        return f"Example from {row.get('source', '')}: synthetic speech, no acted emotion."
    return f"True label (what was performed): {label} — {row.get('source', '')}{who}."
