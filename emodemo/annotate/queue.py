"""`AnnotationQueue`: clips the model is least sure about, served to a team of annotators.

* `add` takes files, folders, zips and long recordings (cut at pauses), with who speaks in them;
  the model pre-labels every clip, its uncertainty (`rank.uncertainty`) is the clip's priority
  and its compact embedding (`rank.compact`) places it among the others.
* Serving order: clips that have votes but need more first, those whose votes disagree before
  the others; then clips nobody voted on, in `QueueOptions.order` (each order listed there, its
  rule in `rank`; the default "coverage": the most typical clip first, then each time the clip
  that is typical and far from every clip already voted on or being voted on). A clip is done
  with `votes_needed` agreeing votes, or `max_votes` when they disagree.
* `next(annotator)` leases a clip to one annotator for `lease_seconds` (a conditional UPDATE that
  only succeeds while nobody else holds a live lease: safe on SQLite and PostgreSQL), so people
  working at once get different clips; an expired lease (someone walked away) frees the clip.
* A vote is a correction in the store (with ``queue_item_id``), so it flows into agreement,
  exports and fine-tuning; a soft-deleted vote stops counting. Everything is in the database:
  the queue survives restarts and is shared by every process using the same store.
* A campaign's scale (tens of thousands of clips; benchmarks/bench_queue.py): what depends only
  on the clips is kept per process (`rank`'s memos, parsed JSON, media paths), a vote refers to
  the stored recording (`store.stored`), `item` reads one row and `progress` only the votes.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import AudioError, EmodemoError, StoreError
from ..store.base import now_utc as _now
from ..store.schema import Correction, Media, QueueSkip
from ..store.schema import QueueItem as QueueRow
from ..store.validate import MAX_ANNOTATOR_CHARS, clean_field, loads, probs_json
from ..store.writes import clean_speaker
from .ingest import AddReport, clips_of, expand, prelabel
from .rank import (ORDERS, RANKINGS, SPACES, balanced_order, coverage_order, embedding_matrix,
                   hybrid_order, spread_order, tally, uncertainty)

__all__ = ["AnnotationQueue", "QueueOptions", "QueueItem", "AddReport", "Progress", "SpeakerOf"]

#: (a path given to `add`, a clip's display name) -> who speaks in it (the CLI's --speaker-from)
SpeakerOf = Callable[[Path, str], Optional[str]]


@dataclass(frozen=True)
class QueueOptions:
    """votes_needed: agreeing votes that finish a clip; max_votes: votes that finish it when they
    disagree (None: votes_needed + 1); lease_seconds: how long a served clip is held for its
    annotator; order: how clips nobody voted on yet are served, "coverage" (the default: spread
    over the clips' embeddings, typical clips first), "uncertainty" (the model's least sure first),
    "hybrid" (coverage weighted by the uncertainty, after `rank.LABEL_FLOOR` clips of each
    predicted label), "balanced" (coverage weighted by the need for each true class as the votes so
    far say; `rank.balanced_order`) or "spread" (seeded random choice stratified over k-means
    clusters of the clips, `rank.spread_order`; seed: its seed, the same order for the same seed);
    coverage beats random choice on average in scripts/queue_benchmark.py's leave-one-corpus-out
    runs (nEMO, Korean, EMOVO: 0.614 vs 0.587, README), spread does not; space: what the orders
    but "uncertainty" spread over, the fused "probabilities" (the default: it won on nEMO) or the
    stored audio "embedding" (`rank.compact`);
    ranking: the uncertainty, "margin" or "entropy" (the priority shown, and the "uncertainty" and
    "hybrid" orders); transcribe: pre-label with the ASR transcript (else audio only); max_len:
    recordings longer than this (s) are cut into segments; balance_labels (order "uncertainty"
    only): serve those clips in turns by the model's label (the most uncertain of each first)."""
    votes_needed: int = 2
    max_votes: Optional[int] = None
    lease_seconds: float = 600.0
    order: str = "coverage"
    space: str = "probabilities"
    ranking: str = "margin"
    transcribe: bool = True
    max_len: float = 10.0
    balance_labels: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= int(self.votes_needed) <= 100:
            raise EmodemoError("votes_needed must be 1-100")
        if self.max_votes is not None and int(self.max_votes) < int(self.votes_needed):
            raise EmodemoError("max_votes must be at least votes_needed")
        if not float(self.lease_seconds) > 0:
            raise EmodemoError("lease_seconds must be positive")
        if self.ranking not in RANKINGS:
            raise EmodemoError(f"ranking must be one of {', '.join(RANKINGS)}")
        if self.order not in ORDERS:
            raise EmodemoError(f"order must be one of {', '.join(ORDERS)}")
        if self.space not in SPACES:
            raise EmodemoError(f"space must be one of {', '.join(SPACES)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise EmodemoError("seed must be a non-negative integer")

    @property
    def votes_if_disagreeing(self) -> int:
        return int(self.max_votes) if self.max_votes is not None else int(self.votes_needed) + 1


@dataclass
class QueueItem:
    """One clip of the queue as the UI shows it (`to_dict` for JSON)."""
    id: int
    file_name: str
    media_path: str
    start: float
    end: float
    priority: float                       # the model's uncertainty, 0..1
    model_label: Optional[str]
    probabilities: dict
    votes: dict                           # {label: voters}
    transcript: str = ""
    media_sha256: str = ""
    n_votes: int = 0
    disagreement: float = 0.0
    done: bool = False
    leased_by: Optional[str] = None
    speaker: Optional[str] = None         # copied into its votes (fine-tuning groups by it)
    embedding: Optional[list] = field(default=None, repr=False)   # rank.compact; not in to_dict

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("embedding")
        return out


@dataclass
class Progress:
    """done / total clips, and live votes per annotator."""
    done: int
    total: int
    per_annotator: dict


def _votes_by_item(s: Any, item_id: Optional[int] = None) -> dict[int, list[dict]]:
    """{queue item id: its live votes (dicts for `rank.tally`)}; every item's, or one's."""
    q = select(Correction.id, Correction.queue_item_id, Correction.label, Correction.annotator,
               Correction.annotator_account, Correction.created_at, Correction.updated_at).where(
        Correction.queue_item_id.is_not(None), Correction.deleted_at.is_(None))
    if item_id is not None:
        q = q.where(Correction.queue_item_id == item_id)
    by_item: dict[int, list[dict]] = {}
    for v in s.execute(q).mappings():
        by_item.setdefault(v["queue_item_id"], []).append(dict(v))
    return by_item


_ROW_COLUMNS = ("id", "file_name", "start", "end", "priority", "model_label", "prob_fused",
                "transcript", "media_sha256", "lease_annotator", "lease_until", "embedding", "speaker")


def _who(annotator: Any) -> str:
    who = clean_field(annotator, "annotator", MAX_ANNOTATOR_CHARS, strip=True)
    if not who:
        raise StoreError("an annotator name is needed")
    return who


class AnnotationQueue:
    """The active-learning queue on a `CorrectionStore` (see the module docstring).
    recognizer: pre-labels added clips (None: `load_recognizer()` on first add)."""

    def __init__(self, store: Any, recognizer: Any = None, options: QueueOptions = QueueOptions()):
        self.store = store
        self.options = options
        self._recognizer = recognizer
        self.clock = time.time            # the lease clock (tests may replace it)
        self._paths: dict[str, str] = {}   # media path (relative) -> absolute, see _media_path
        self._json: dict[str, Any] = {}    # stored JSON text -> its value, see _parsed

    @property
    def recognizer(self) -> Any:
        if self._recognizer is None:
            from ..recognizer import load_recognizer
            self._recognizer = load_recognizer()
        return self._recognizer

    # -- adding --------------------------------------------------------------------------------
    def add(self, paths: Iterable[Union[str, os.PathLike]],
            speaker: Union[str, SpeakerOf, None] = None) -> AddReport:
        """Queue every clip of the audio files, folders and zips in `paths`, pre-labelled by the
        model; unusable files are reported, clips already queued skipped (counted; one without a
        speaker gets the one given). `speaker`: who speaks in every clip (or the session), or a
        `SpeakerOf` giving it per file; kept on the item and copied into its votes, so that
        fine-tuning keeps each speaker's clips on one side of its held-out check."""
        report = AddReport()
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        fixed = None if callable(speaker) else clean_speaker(speaker)  # a bad name stops it here
        with tempfile.TemporaryDirectory(prefix="emodemo-queue-") as tmp:
            for given in paths:                     # one at a time: `speaker` sees which
                for path, name in expand([given], Path(tmp), report.errors):
                    report.files += 1
                    try:
                        who = speaker(Path(given), name) if callable(speaker) else fixed
                        self._add_file(path, name, report, clean_speaker(who))
                    except (AudioError, StoreError) as exc:  # this file; a bad setting or bundle stops all
                        report.errors.append(f"{name}: {exc}")
        return report

    def _add_file(self, path: Path, name: str, report: AddReport, speaker: Optional[str]) -> None:
        from ..audio import load_audio

        wav = load_audio(path)
        media = self.store.store_media(path)
        for start, end, samples in clips_of(wav, self.options.max_len):
            if self._queued(media.sha256, start, end, report, name, speaker):
                continue
            pred, emb = prelabel(self.recognizer, samples, self.options.transcribe)
            row = QueueRow(media_sha256=media.sha256, file_name=name[-300:], start=start,
                           end=end, priority=uncertainty(pred.fused, self.options.ranking),
                           model_label=pred.label, prob_fused=probs_json(pred.fused, "fused"),
                           transcript=pred.transcript or None, bundle_name=pred.bundle or None,
                           embedding=None if emb is None else json.dumps(emb), speaker=speaker,
                           created_at=_now())
            try:
                report.added.append(self.store.database.retry_write(lambda row=row: self._insert(row)))
            except IntegrityError:                      # queued by someone else meanwhile
                self._queued(media.sha256, start, end, report, name, speaker)

    def _queued(self, sha: str, start: float, end: float, report: AddReport, name: str, speaker: Any) -> bool:
        """Whether the clip is queued (counted); one without a speaker gets the one given."""
        q = select(QueueRow.speaker).where(QueueRow.media_sha256 == sha, QueueRow.start == start,
                                           QueueRow.end == end)

        def look() -> Any:      # given a speaker, a locked write: one named meanwhile is kept
            with (self.store.database.write() if speaker else self.store.database.read()) as s, s.begin():
                row = s.execute(q.with_for_update() if speaker else q).first()
                if row is not None and speaker and row.speaker is None:
                    s.execute(update(QueueRow).where(q.whereclause).values(speaker=speaker))
                return row
        row = self.store.database.retry_write(look)
        report.skipped += row is not None
        if row is not None and speaker and row.speaker != speaker:   # kept (None: given it now)
            report.speakers.append((name, start, end, row.speaker, speaker))
        return row is not None

    def _insert(self, row: QueueRow) -> int:
        with self.store.database.write() as s, s.begin():
            s.add(row)
            s.flush()
            return row.id

    # -- reading -------------------------------------------------------------------------------
    def _load(self, item_id: Optional[int] = None) -> tuple[list[QueueItem], dict[int, set], dict[int, float]]:
        """(items unordered, {item id: names of its voters}, {item id: lease end}); every clip,
        or only `item_id`'s."""
        rows_q = select(*(getattr(QueueRow, c) for c in _ROW_COLUMNS), Media.path).join(
            Media, QueueRow.media_sha256 == Media.sha256)
        if item_id is not None:
            rows_q = rows_q.where(QueueRow.id == item_id)
        with self.store.database.read() as s:
            rows = s.execute(rows_q).all()
            by_item = _votes_by_item(s, item_id)
        items, voters, leases = [], {}, {}
        now = self.clock()
        for row in rows:
            rel = row.path
            counts, disagreement = tally(by_item.get(row.id, []))
            n = sum(counts.values())
            live = row.lease_annotator if (row.lease_until or 0) > now else None
            items.append(QueueItem(
                id=row.id, file_name=row.file_name or Path(rel).name,
                media_path=self._media_path(rel), start=row.start, end=row.end,
                priority=row.priority, model_label=row.model_label,
                probabilities=dict(self._parsed(row.prob_fused) or {}), votes=counts,
                transcript=row.transcript or "", media_sha256=row.media_sha256, n_votes=n,
                disagreement=round(disagreement, 4), done=self._done(n, disagreement), leased_by=live,
                speaker=row.speaker, embedding=self._parsed(row.embedding)))
            voters[row.id] = {x for v in by_item.get(row.id, [])
                              for x in (v["annotator"], v["annotator_account"]) if x}
            leases[row.id] = row.lease_until or 0.0
        return items, voters, leases

    def _done(self, n_votes: int, disagreement: float) -> bool:
        """A clip is done with votes_needed agreeing votes, or votes_if_disagreeing otherwise."""
        return n_votes >= (self.options.votes_needed if disagreement == 0
                           else self.options.votes_if_disagreeing)

    def _parsed(self, text: Optional[str]) -> Any:
        """A stored JSON value (a clip's probabilities or embedding, written once when it was
        queued) parsed once per process; the same text gives the same object: read it only."""
        if not text:
            return None
        if text not in self._json:
            self._json[text] = loads(text)
        return self._json[text]

    def _media_path(self, rel: str) -> str:
        """A stored file's absolute path, resolved once per process (the media folder's files
        are content-addressed and never move; 20,000 clips resolved them on every load before)."""
        if rel not in self._paths:
            self._paths[rel] = str(self.store.abs_media(rel))
        return self._paths[rel]

    @staticmethod
    def _order(item: QueueItem) -> tuple:
        return item.done, -item.disagreement, -item.priority, item.id

    def items(self) -> list[QueueItem]:
        """Every clip, in serving order (done ones last)."""
        return self._serving_order(self._load()[0])

    def _serving_order(self, items: list[QueueItem]) -> list[QueueItem]:
        ordered = sorted(items, key=self._order)
        if self.options.order in ("coverage", "hybrid", "balanced", "spread"):
            return self._coverage_order(ordered)
        if not self.options.balance_labels:
            return ordered
        fresh = [it for it in ordered if not it.done and it.n_votes == 0]
        # a clip's turn: how many clips of its predicted label were voted on before it, plus
        # its rank in that label (most uncertain first); a label labelled less goes first
        taken: dict[Optional[str], int] = {}
        for it in ordered:
            if it.n_votes > 0:
                taken[it.model_label] = taken.get(it.model_label, 0) + 1
        turn: dict[int, int] = {}
        for it in fresh:
            turn[it.id] = taken.get(it.model_label, 0)
            taken[it.model_label] = turn[it.id] + 1
        interleaved = sorted(fresh, key=lambda it: (turn[it.id], -it.priority, it.id))
        started = [it for it in ordered if not it.done and it.n_votes > 0]
        return started + interleaved + [it for it in ordered if it.done]

    def _coverage_order(self, ordered: list[QueueItem]) -> list[QueueItem]:
        """Started clips (disagreeing first), then the ones being voted on for the first time,
        then the fresh ones in `rank.coverage_order` (order "hybrid": `rank.hybrid_order`,
        "balanced": `rank.balanced_order` with each clip's votes, "spread": `rank.spread_order` with
        the options' seed; covered: every clip that has votes or a live lease), then the done ones."""
        fresh = [not it.done and it.n_votes == 0 and it.leased_by is None for it in ordered]
        emb = embedding_matrix([it.embedding for it in ordered], [it.probabilities for it in ordered],
                               self.options.space)
        started = [it for it, f in zip(ordered, fresh) if not f and not it.done]
        covered = ~np.array(fresh, bool)
        if self.options.order == "hybrid":
            order = hybrid_order(emb, covered, [it.priority for it in ordered],
                                 [it.model_label for it in ordered])
        elif self.options.order == "balanced":
            order = balanced_order(emb, covered, [it.probabilities for it in ordered],
                                   [it.votes for it in ordered])
        elif self.options.order == "spread":
            order = spread_order(emb, covered, self.options.seed, [it.id for it in ordered])
        else:
            order = coverage_order(emb, covered)
        served = [ordered[i] for i in order]
        return started + served + [it for it in ordered if it.done]

    def model_labels(self) -> list[Optional[str]]:
        """The model's pre-label of every queued clip (no serving order: `analysis.prelabel_note`
        needs only these)."""
        with self.store.database.read() as s:
            return list(s.scalars(select(QueueRow.model_label).join(
                Media, QueueRow.media_sha256 == Media.sha256)))

    def item(self, item_id: int) -> QueueItem:
        for it in self._load(int(item_id))[0]:
            return it
        raise StoreError(f"no queue item with id {item_id}")

    def progress(self) -> Progress:
        """Clips done of all, and live votes per annotator (from the votes alone: a clip nobody
        voted on is not done)."""
        with self.store.database.read() as s:
            total = s.scalar(select(func.count(QueueRow.id)).join(
                Media, QueueRow.media_sha256 == Media.sha256)) or 0
            by_item = _votes_by_item(s)
        done, per = 0, {}
        for votes in by_item.values():
            counts, disagreement = tally(votes)
            done += self._done(sum(counts.values()), disagreement)
            for v in votes:
                key = v["annotator_account"] or v["annotator"] or "(anonymous)"
                per[key] = per.get(key, 0) + 1
        return Progress(done=done, total=int(total),
                        per_annotator=dict(sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))))

    # -- serving -------------------------------------------------------------------------------
    def next(self, annotator: str) -> Optional[QueueItem]:
        """The next clip for `annotator`, leased to them (the one they already hold, if any);
        None when nothing is left for them (all done, voted, skipped, or held by others)."""
        who = _who(annotator)
        items, voters, leases = self._load()
        with self.store.database.read() as s:
            skipped = set(s.scalars(select(QueueSkip.item_id).where(QueueSkip.annotator == who)))
        open_ = [it for it in self._serving_order(items)
                 if not it.done and who not in voters[it.id] and it.id not in skipped]
        for it in sorted(open_, key=lambda it: it.leased_by != who):  # their own lease first
            if it.leased_by not in (None, who):
                continue
            if self._lease(it.id, who):
                it.leased_by = who
                return it
        return None

    def _lease(self, item_id: int, who: str) -> bool:
        """Take (or renew) the lease on `item_id` unless someone else holds a live one."""
        def take() -> bool:
            now = self.clock()
            with self.store.database.write() as s, s.begin():
                res = s.execute(update(QueueRow).where(
                    QueueRow.id == item_id,
                    or_(QueueRow.lease_annotator.is_(None), QueueRow.lease_until < now,
                        QueueRow.lease_annotator == who))
                    .values(lease_annotator=who, lease_until=now + self.options.lease_seconds))
                return res.rowcount == 1
        return self.store.database.retry_write(take)

    def _release(self, item_id: int, who: str) -> None:
        def free() -> None:
            with self.store.database.write() as s, s.begin():
                s.execute(update(QueueRow).where(QueueRow.id == item_id, QueueRow.lease_annotator == who)
                          .values(lease_annotator=None, lease_until=None))
        self.store.database.retry_write(free)

    def vote(self, item_id: int, annotator: str, label: str, transcript: Optional[str] = None,
             account: Optional[str] = None) -> int:
        """Store `annotator`'s label for a clip as a correction (its span and speaker, the
        model's pre-label as the prediction) and free their lease; returns the correction id."""
        who = _who(annotator)
        it = self.item(item_id)
        pred = {"label": it.model_label, "fused": it.probabilities,
                "transcript": it.transcript or None}
        cid = self.store.add(self.store.stored(it.media_sha256), label, annotator=who, account=account,
                             transcript=transcript, prediction=pred, start=it.start, end=it.end,
                             queue_item_id=it.id, file_name=it.file_name, speaker=it.speaker)
        self._release(it.id, who)
        return cid

    def skip(self, item_id: int, annotator: str) -> None:
        """`annotator` passes on a clip: it is not served to them again (others still get it)."""
        who = _who(annotator)
        self.item(item_id)

        def mark() -> None:
            with self.store.database.write() as s, s.begin():
                if s.get(QueueSkip, (int(item_id), who)) is None:
                    s.add(QueueSkip(item_id=int(item_id), annotator=who, created_at=_now()))
        self.store.database.retry_write(mark)
        self._release(int(item_id), who)
