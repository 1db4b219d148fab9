"""Which labels exist, "none of these", and the one rule for what a clip is and how votes count.

Both the History tab's agreement table (`CorrectionStore.agreement`) and the fine-tuning dataset
group corrections with `clip_key` and count them with `vote`, so they agree about every clip:

* a clip is the audio's SHA-256 plus start/end rounded to 10 ms; a start at 0 is no start, an
  end at the end of the file (within 10 ms) is no end, so a span covering the whole file is the
  same clip as no span;
* each voter counts once per clip, with their latest correction (latest ``updated_at``, then
  ``created_at``, then id): the signed-in account when there is one, else the typed annotator
  name, else the correction itself (every anonymous correction is a separate voter);
* the label with the most votes wins; several labels sharing the top count is a tie.

Imports nothing but the standard library.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
NONE_LABEL = "none"                      # "none of these"
NONE_DISPLAY = "none of these"           # how NONE_LABEL is offered to people (accepted as input too)
SPAN_DECIMALS = 2                        # start/end rounded to 10 ms


def normalize_label(value: Any, labels: Sequence[str] = LABELS) -> Optional[str]:
    """The canonical spelling of `value` among `labels` (plus ``"none"``, also written "none of
    these"), matched after stripping and case-insensitively; None when it is not one of them.
    The one label rule of the app's forms, the store and imports."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    key = value.strip().lower()
    if key in (NONE_LABEL, NONE_DISPLAY):
        return NONE_LABEL
    for label in labels:
        if str(label).strip().lower() == key:
            return str(label)
    return None


def unknown_label(value: Any, labels: Sequence[str] = LABELS) -> str:
    """The message for a label `normalize_label` did not accept: what was given, what is allowed."""
    given = repr(value)
    given = given if len(given) <= 40 else given[:37] + "..."
    return f"unknown label {given}; expected one of {', '.join(map(str, labels))}, or “{NONE_DISPLAY}”"


def clip_key(media_sha256: str, start: Optional[float], end: Optional[float],
             duration: Optional[float]) -> tuple[str, Optional[float], Optional[float]]:
    """(media_sha256, start, end) that identifies a clip: the span rounded to 10 ms, a start
    at 0 -> None, an end within 10 ms of the file's `duration` -> None."""
    s = None if start is None else round(float(start), SPAN_DECIMALS)
    if s is not None and s <= 0:
        s = None
    e = None if end is None else round(float(end), SPAN_DECIMALS)
    if e is not None and duration and e >= float(duration) - 10 ** -SPAN_DECIMALS:
        e = None
    return str(media_sha256), s, e


class Voter(NamedTuple):
    """Who cast a vote: a signed-in ``account``, a typed ``name``, or an ``anonymous``
    correction (name = its id). Accounts and typed names never merge, even when equal."""
    kind: str
    name: str

    def __str__(self) -> str:
        return f"(anonymous #{self.name})" if self.kind == "anonymous" else self.name


def _get(rec: Any, name: str, default: Any = None) -> Any:
    if isinstance(rec, Mapping):
        return rec.get(name, default)
    return getattr(rec, name, default)


def voter(rec: Any) -> Voter:
    """The voter of a correction record: its account, else its annotator, else anonymous."""
    for kind, key in (("account", "annotator_account"), ("name", "annotator")):
        value = _get(rec, key)
        if value is not None and str(value).strip():
            return Voter(kind, str(value).strip())
    return Voter("anonymous", str(_get(rec, "id")))


def _utc(dt: Any) -> Optional[datetime]:
    if dt is None:
        return None
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt)
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def time_order(rec: Any) -> tuple:
    """Sort key putting a voter's latest correction last: updated_at, created_at, id."""
    when = _utc(_get(rec, "updated_at")) or _utc(_get(rec, "created_at")) or _EPOCH
    return when, _get(rec, "id") or 0


@dataclass
class ClipVote:
    """The votes on one clip. `records` are (voter, record) in time order, all of them."""
    media_sha256: str
    start: Optional[float]
    end: Optional[float]
    votes: dict = field(default_factory=dict)       # Voter -> label of their latest correction
    records: list = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (self.media_sha256, self.start, self.end)

    @property
    def n_annotators(self) -> int:
        return len(self.votes)

    @property
    def n_corrections(self) -> int:
        return len(self.records)

    @property
    def counts(self) -> dict[str, int]:
        """{label: votes}, most votes first (then alphabetically)."""
        return dict(sorted(Counter(self.votes.values()).items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def leaders(self) -> tuple[str, ...]:
        """The labels with the most votes, alphabetically (more than one: a tie)."""
        counts = self.counts
        top = max(counts.values())
        return tuple(sorted(l for l, n in counts.items() if n == top))

    @property
    def tie(self) -> bool:
        return len(self.leaders) > 1

    @property
    def majority_label(self) -> str:
        """The winning label; in a tie the alphabetically first of the leaders."""
        return self.leaders[0]

    @property
    def majority_count(self) -> int:
        return self.counts[self.majority_label]

    @property
    def agreement(self) -> float:
        """The majority's share of the voters."""
        return self.majority_count / len(self.votes)

    @property
    def media_path(self) -> Optional[str]:
        return _get(self.records[-1][1], "media_path") if self.records else None

    @property
    def newest(self) -> Optional[datetime]:
        """When the newest of its corrections was created."""
        times = [t for t in (_utc(_get(r, "created_at")) for _, r in self.records) if t]
        return max(times) if times else None


def vote(records: Iterable[Any], labels: Optional[Sequence[str]] = None) -> list[ClipVote]:
    """Group correction records (dicts or objects with media_sha256, start, end, duration,
    label, annotator, annotator_account, id, created_at, updated_at) into clips and count one
    vote per voter: their latest label. Labels are compared case-insensitively; with `labels`
    they come back in their canonical spelling (unknown ones lower-cased). Clips come in the
    order their first correction was made."""
    clips: dict[tuple, ClipVote] = {}
    for rec in sorted(records, key=time_order):
        key = clip_key(_get(rec, "media_sha256"), _get(rec, "start"), _get(rec, "end"),
                       _get(rec, "duration"))
        clip = clips.get(key)
        if clip is None:
            clip = clips[key] = ClipVote(*key)
        raw = str(_get(rec, "label") or "")
        label = (normalize_label(raw, labels) if labels is not None else None) or raw.strip().lower()
        who = voter(rec)
        clip.votes[who] = label          # records are in time order: the latest one wins
        clip.records.append((who, rec))
    return list(clips.values())
