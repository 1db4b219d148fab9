"""Inter-annotator agreement per clip, as the History tab and `corrections agreement` show it.

Clips and votes follow the one rule in `emodemo.labels` (`clip_key`, `vote`), the same that the
fine-tuning dataset uses.
"""
from __future__ import annotations

from sqlalchemy import select

from ..labels import vote
from .base import StoreBase
from .media import resolve
from .records import Record
from .schema import Correction, Media


# what `labels.vote` needs of each correction (a light query: no probabilities, no notes)
_COLUMNS = (Correction.id, Correction.media_sha256, Correction.start, Correction.end,
            Correction.annotator, Correction.annotator_account, Correction.label,
            Correction.created_at, Correction.updated_at, Media.path, Media.duration)


def clip_agreement(store: StoreBase, min_annotators: int = 2) -> list[Record]:
    """Inter-annotator agreement per clip (`emodemo.labels.clip_key`: the audio hash and the span
    rounded to 10 ms, a whole-file span being no span).

    Each voter (the signed-in account, else the typed annotator name) counts once, with their
    latest label; each anonymous correction counts as a separate voter (`emodemo.labels.vote`).
    Returns clips with at least `min_annotators` voters, least agreement first: media_sha256,
    media_path, start, end, n_annotators, n_corrections, labels ({label: votes}), majority_label,
    majority_count, agreement (majority share of voters), tie (True when several labels share
    the top count; the majority_label is then the alphabetically first of them).
    """
    stmt = select(*_COLUMNS).join(Media, Correction.media_sha256 == Media.sha256).where(
        Correction.deleted_at.is_(None))                     # soft-deleted ones do not vote
    with store.database.read() as s:
        rows = [dict(id=r.id, media_sha256=r.media_sha256, start=r.start, end=r.end,
                     annotator=r.annotator, annotator_account=r.annotator_account,
                     label=r.label, created_at=r.created_at, updated_at=r.updated_at,
                     path=r.path, duration=r.duration)
                for r in s.execute(stmt)]
    out = []
    for clip in vote(rows, labels=store.labels):
        if clip.n_annotators < max(1, min_annotators):
            continue
        out.append(Record(
            media_sha256=clip.media_sha256,
            media_path=str(resolve(store.media_dir, clip.records[-1][1]["path"])),
            start=clip.start, end=clip.end, n_annotators=clip.n_annotators,
            n_corrections=clip.n_corrections, labels=clip.counts,
            majority_label=clip.majority_label, majority_count=clip.majority_count,
            agreement=clip.agreement, tie=clip.tie))
    out.sort(key=lambda r: (r.agreement, -r.n_annotators, r.media_sha256,
                            -1.0 if r.start is None else r.start))
    return out
