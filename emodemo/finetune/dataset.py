"""Corrections → clips: the dataset rules of fine-tuning, the guards and the validation split.

Pure functions over store records (dicts or `store.Record`s); nothing here trains or reads audio.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..errors import EmodemoError, FinetuneError
from ..labels import NONE_LABEL, normalize_label, vote

MIN_PER_CLASS = 3            # clips per class for it to be used
MIN_CLASSES = 2              # classes with enough clips for a run
VAL_FRACTION = 0.25          # share of each class's clips held out
NO_SPEAKERS = ("no speakers given: clips are grouped by recording, so the held-out check may hear "
               "voices it trained on; give --speaker when queueing or a speaker column when importing")


class TooFewCorrections(FinetuneError):
    """The store does not hold enough usable corrections for a fine-tuning run."""


@dataclass
class Clip:
    """One clip the corrections agree on: the unit of training and validation."""
    media_sha256: str
    media_path: str
    start: Optional[float]
    end: Optional[float]
    label: str
    transcript: Optional[str] = None
    votes: dict = field(default_factory=dict)          # annotator -> latest label
    n_corrections: int = 0
    speaker: Optional[str] = None
    newest: Optional[datetime] = None

    @property
    def key(self) -> tuple:
        return (self.media_sha256, self.start, self.end)

    @property
    def group(self) -> str:
        """What must not straddle the train/validation split: the speaker, else the recording."""
        return f"speaker:{self.speaker}" if self.speaker else f"media:{self.media_sha256}"

    @property
    def id(self) -> str:
        span = "" if self.start is None and self.end is None else \
            f"@{self.start or 0:.2f}-{'end' if self.end is None else f'{self.end:.2f}'}"
        return self.media_sha256[:16] + span


@dataclass
class Dataset:
    """`build_dataset`'s result: usable clips plus everything left out, with the reasons."""
    clips: list[Clip]
    ties: list[dict]
    excluded: dict[str, list]       # reason -> [{clip, label, votes}]
    n_records: int
    per_annotator: dict[str, int]   # clips each annotator labelled (latest label counts)
    agreement: dict
    newest: Optional[datetime]

    def per_class(self, clips: Optional[Sequence[Clip]] = None) -> dict[str, int]:
        return dict(sorted(Counter(c.label for c in (self.clips if clips is None else clips)).items(),
                           key=lambda kv: (-kv[1], kv[0])))

    def speakers(self) -> dict:
        """How many clips name a speaker and how many speakers there are; with none named, the
        warning `NO_SPEAKERS` (the held-out check then groups by recording only)."""
        named = [c.speaker for c in self.clips if c.speaker]
        out: dict = {"clips": len(named), "distinct": len(set(named))}
        if self.clips and not named:
            out["warning"] = NO_SPEAKERS
        return out

    def summary(self) -> dict:
        return {"corrections": self.n_records, "clips": len(self.clips), "speakers": self.speakers(),
                "per_class": self.per_class(), "per_annotator": self.per_annotator,
                "agreement": self.agreement,
                "ties": [{k: v for k, v in t.items()} for t in self.ties],
                "excluded": {k: len(v) for k, v in self.excluded.items()},
                "excluded_detail": self.excluded,
                "transcripts": sum(1 for c in self.clips if c.transcript),
                "newest_correction": self.newest.isoformat() if self.newest else None}


def build_dataset(records: Iterable[Any], labels: Sequence[str], check_files: bool = True) -> Dataset:
    """Resolve stored corrections (dicts or `store.Record`s) into one labelled clip per audio span.

    Clips and votes follow the one rule in `emodemo.labels` (the History tab's agreement uses it
    too): clip = media hash + start/end rounded to 10 ms, a whole-file span equals no span; each
    voter (signed-in account, else typed name, else each anonymous correction) counts once with
    their latest label. Then:

    * the majority of votes wins; a tie is left out and reported in `ties`;
    * a majority of "none" (none of these) is left out (`excluded["none"]`);
    * a winning label outside `labels` is left out (`excluded["unknown_label"]`), matched
      case-insensitively otherwise;
    * with `check_files`, clips whose stored audio file is gone are left out (`excluded["missing_audio"]`).

    The clip's transcript is the newest non-empty corrected transcript, preferring voters who
    voted for the winning label (`clip_transcript`); its speaker the newest non-empty one among
    its votes (`clip_speaker`).
    """
    records = list(records)
    clips: list[Clip] = []
    ties: list[dict] = []
    excluded: dict[str, list] = {"none": [], "unknown_label": [], "missing_audio": []}
    per_annotator: Counter = Counter()
    multi, unanimous, shares = 0, 0, []
    newest = None
    for cv in vote(records, labels):
        for who in cv.votes:
            per_annotator["(anonymous)" if who.kind == "anonymous" else str(who)] += 1
        if cv.newest and (newest is None or cv.newest > newest):
            newest = cv.newest
        counts = cv.counts
        if cv.n_annotators > 1:
            multi += 1
            shares.append(cv.agreement)
            unanimous += len(counts) == 1
        start, end = cv.start, cv.end
        desc = {"clip": cv.media_sha256[:16] + ("" if start is None and end is None else f"@{start}-{end}"),
                "media_sha256": cv.media_sha256, "start": start, "end": end,
                "votes": {k.lower(): v for k, v in counts.items()}}
        if cv.tie:
            ties.append(desc | {"labels": [l.lower() for l in cv.leaders]})
            continue
        winner = cv.majority_label
        if winner == NONE_LABEL:
            excluded["none"].append(desc)
            continue
        if normalize_label(winner, labels) in (None, NONE_LABEL):
            excluded["unknown_label"].append(desc | {"label": winner.lower()})
            continue
        path = cv.media_path
        if check_files and (not path or not Path(path).is_file()):
            excluded["missing_audio"].append(desc | {"path": path})
            continue
        clips.append(Clip(cv.media_sha256, str(path), start, end, winner, clip_transcript(cv, winner),
                          {str(k): v for k, v in cv.votes.items()}, cv.n_corrections,
                          clip_speaker(cv), cv.newest))
    clips.sort(key=lambda c: (c.media_sha256, -1 if c.start is None else c.start))
    agreement = {"clips_with_several_annotators": multi, "unanimous": unanimous,
                 "mean_majority_share": round(sum(shares) / len(shares), 4) if shares else None,
                 "ties": len(ties)}
    return Dataset(clips, ties, excluded, len(records),
                   dict(sorted(per_annotator.items(), key=lambda kv: (-kv[1], kv[0]))), agreement, newest)


def _field(rec: Any, name: str) -> Optional[str]:
    """A record's text field (dict or object), whitespace collapsed; None when empty or absent."""
    value = rec.get(name) if isinstance(rec, Mapping) else getattr(rec, name, None)
    text = " ".join(str(value).split()) if value is not None else ""
    return text or None


def clip_transcript(cv: Any, winner: str) -> Optional[str]:
    """The newest non-empty corrected transcript of a clip's records (`labels.ClipVote`, time
    order), preferring those of voters who voted for the winning label."""
    texts = [(cv.votes.get(who) == winner, t) for who, r in cv.records
             if (t := _field(r, "transcript_corrected"))]
    agreeing = [t for a, t in texts if a]
    return (agreeing or [t for _, t in texts] or [None])[-1]


def clip_speaker(cv: Any) -> Optional[str]:
    """Who speaks in a clip: the newest non-empty speaker among its records (time order; votes
    that disagree: the newest wins). None when no vote names one: the clip is then grouped by its
    recording (`Clip.group`)."""
    speakers = [sp for _, r in cv.records if (sp := _field(r, "speaker"))]
    return speakers[-1] if speakers else None


def check_counts(ds: Dataset, min_per_class: int = MIN_PER_CLASS, min_classes: int = MIN_CLASSES,
                 knob: str = "the minimum clips per class") -> tuple[list[Clip], dict[str, int]]:
    """Clips of the classes with at least `min_per_class` clips, and the classes left out for having
    fewer. Raises TooFewCorrections (with the counts and what is needed) when fewer than
    `min_classes` classes qualify; `knob` is how the caller names the minimum ("--min-per-class")."""
    counts = ds.per_class()
    ok = {l for l, n in counts.items() if n >= min_per_class}
    too_few = {l: n for l, n in counts.items() if l not in ok}
    if len(ok) < min_classes:
        have = ", ".join(f"{l} {n}" for l, n in counts.items()) or "none usable"
        left = []
        if ds.ties:
            left.append(f"{len(ds.ties)} tied")
        for reason, lst in ds.excluded.items():
            if lst:
                left.append(f"{len(lst)} {reason.replace('_', ' ')}")
        raise TooFewCorrections(
            f"too few corrections to fine-tune: need at least {min_per_class} clips per class for at "
            f"least {min_classes} classes; the store has {ds.n_records} corrections giving: {have}"
            + (f" (left out: {', '.join(left)})" if left else "")
            + f"; add corrections or lower {knob}")
    return [c for c in ds.clips if c.label in ok], too_few


def format_summary(summary: Mapping) -> str:
    """The dry-run text: counts per class and annotator, agreement, ties and exclusions."""
    lines = [f"corrections: {summary['corrections']}  ->  usable clips: {summary['clips']}"
             f" ({summary.get('transcripts', 0)} with a corrected transcript)"]
    if "speakers" in summary:
        lines.append(speakers_line(summary["speakers"], summary["clips"]))
    lines.append("per class:      " + (", ".join(f"{k} {v}" for k, v in summary["per_class"].items()) or "-"))
    lines.append("per annotator:  " + (", ".join(f"{k} {v}" for k, v in summary["per_annotator"].items()) or "-"))
    ag = summary["agreement"]
    share = ag.get("mean_majority_share")
    lines.append(f"agreement:      {ag['clips_with_several_annotators']} clips with several annotators, "
                 f"{ag['unanimous']} unanimous, mean majority share "
                 f"{'-' if share is None else f'{share:.2f}'}")
    ties = summary.get("ties", [])
    lines.append(f"ties (left out): {len(ties)}" + "".join(
        f"\n  {t['clip']}: " + ", ".join(f"{k} {v}" for k, v in t["votes"].items()) for t in ties[:20]))
    ex = summary["excluded"]
    lines.append("excluded:       " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in ex.items()))
    for t in summary.get("excluded_detail", {}).get("unknown_label", [])[:20]:
        lines.append(f"  unknown label {t['label']!r}: {t['clip']}")
    if summary.get("too_few"):
        lines.append("classes left out (too few clips): "
                     + ", ".join(f"{k} {v}" for k, v in summary["too_few"].items()))
    if summary.get("uncorrected"):
        lines.append(uncorrected_line(summary["uncorrected"]))
    if "split" in summary:
        sp = summary["split"]
        total = sp["train"] + sp["val"]
        lines.append(f"split:          holds out {sp['val']} of {total} clips to measure on "
                     f"(stratified by class, grouped by speaker, else recording); trains on "
                     f"{sp['train']}")
    return "\n".join(lines)


def uncorrected(labels: Sequence[str], clips: Sequence[Clip]) -> list[str]:
    """The model's classes with no clip in the training corrections, in the model's order."""
    have = {c.label for c in clips}
    return [lab for lab in labels if lab not in have]


def uncorrected_line(classes: Sequence[str]) -> str:
    """The dry-run warning on classes nobody corrected: the fine-tuned model learns that audio
    like the corrections (their voices, room, language) is one of the corrected classes, and the
    replay guard cannot see it (measured in docs/finetune.md: a speaker corrected as angry, sad
    and neutral only — happy recall on their other clips 0.65 -> 0.00, and the run passed)."""
    return (f"not corrected:  {', '.join(classes)} — on audio like these corrections the new model "
            "will seldom say these; correct a few clips of each class you expect to hear")


def uncorrected_warning(report: Mapping) -> Optional[str]:
    """A finished run's `uncorrected_line`, when its speech branch was adapted without corrections
    of some classes (the CLI and the Models tab say it after the run); else None."""
    missing = (report.get("dataset") or {}).get("uncorrected")
    return uncorrected_line(missing) if missing and (report.get("speech") or {}).get("updated") else None


def speakers_line(speakers: Mapping, n_clips: int) -> str:
    """The dry-run line on speakers: how many clips name one and how many there are, or the
    plain warning that the held-out check groups by recording only."""
    if speakers.get("warning"):
        return f"speakers:       {speakers['warning']}"
    line = f"speakers:       {speakers['distinct']} (named on {speakers['clips']} of {n_clips} clips)"
    rest = n_clips - speakers["clips"]
    return line + (f"; the other {rest} are grouped by recording" if rest else "")


def split_clips(clips: Sequence[Clip], val_fraction: float = VAL_FRACTION,
                seed: int = 0) -> tuple[list[Clip], list[Clip]]:
    """Stratified, grouped (speaker, else recording) validation split, deterministic by seed.

    Each class with at least two clips aims at max(1, round(val_fraction · n)) validation clips,
    never all of its clips; whole groups go to one side."""
    by_group: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        by_group[c.group].append(c)
    n = Counter(c.label for c in clips)
    target = {l: (min(k - 1, max(1, round(val_fraction * k))) if k >= 2 else 0) for l, k in n.items()}
    rng = random.Random(seed)
    groups = sorted(by_group)
    rng.shuffle(groups)
    # small groups first, so that the targets can be met exactly where possible
    groups.sort(key=lambda g: len(by_group[g]))
    have: Counter = Counter()
    val_groups = set()
    for g in groups:
        need = Counter(c.label for c in by_group[g])
        if all(have[l] + k <= target[l] for l, k in need.items()):
            val_groups.add(g)
            have.update(need)
    train = [c for c in clips if c.group not in val_groups]
    val = [c for c in clips if c.group in val_groups]
    return train, val


def read_corrections(source: Any, media_dir: Optional[str] = None) -> tuple[list, str]:
    """(records, where they came from) from a CorrectionStore, a database URL / SQLite path, or an
    iterable of records (dicts or store Records)."""
    from ..store import CorrectionStore, normalize_url, redact_url
    if isinstance(source, CorrectionStore):
        return source.corrections(), redact_url(source.url)
    if not isinstance(source, (str, os.PathLike)):
        return list(source), "(records)"
    from sqlalchemy.engine import make_url
    url = normalize_url(str(source))
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001
        raise FinetuneError(f"not a database URL: {source}") from exc
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database or ""
        if db and db != ":memory:" and not db.startswith("file:") and not Path(db).expanduser().exists():
            raise FinetuneError(f"no corrections database at {db}")
    try:
        store = CorrectionStore(url, media_dir=media_dir)
    except EmodemoError as exc:
        raise FinetuneError(str(exc)) from None
    try:
        return store.corrections(), redact_url(store.url)
    finally:
        store.close()
