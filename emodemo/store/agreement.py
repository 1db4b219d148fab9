"""Inter-annotator agreement per clip, as the History tab and `corrections agreement` show it."""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .media import resolve
from .records import Record
from .schema import Correction, Media

if TYPE_CHECKING:
    from .corrections import CorrectionStore


def clip_agreement(store: "CorrectionStore", min_annotators: int = 2) -> list[Record]:
    """Inter-annotator agreement per clip (same audio hash and the same start/end).

    Each annotator counts once, with their latest label; each anonymous correction counts as
    a separate annotator. Returns clips with at least `min_annotators` annotators, least
    agreement first: media_sha256, media_path, start, end, n_annotators, n_corrections,
    labels ({label: votes}), majority_label, majority_count, agreement (majority share of
    annotators), tie (True when several labels share the top count; the majority_label is
    then the alphabetically first of them).
    """
    stmt = (select(Correction.id, Correction.media_sha256, Correction.start, Correction.end,
                   Correction.annotator, Correction.label, Media.path)
            .join(Media).order_by(Correction.id))
    clips: dict[tuple, dict[str, Any]] = {}
    with store.database.read() as s:
        for cid, sha, start, end, annotator, label, rel in s.execute(stmt):
            clip = clips.setdefault((sha, start, end), {"rel": rel, "votes": {}, "n": 0})
            clip["n"] += 1
            clip["votes"][annotator if annotator is not None else f"\x00anon{cid}"] = label
    out = []
    for (sha, start, end), clip in clips.items():
        votes = clip["votes"]
        if len(votes) < max(1, min_annotators):
            continue
        counts = Counter(votes.values())
        top = max(counts.values())
        leaders = sorted(l for l, n in counts.items() if n == top)
        out.append(Record(
            media_sha256=sha, media_path=str(resolve(store.media_dir, clip["rel"])), start=start,
            end=end, n_annotators=len(votes), n_corrections=clip["n"],
            labels=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            majority_label=leaders[0], majority_count=top, agreement=top / len(votes),
            tie=len(leaders) > 1))
    out.sort(key=lambda r: (r.agreement, -r.n_annotators, r.media_sha256,
                            -1.0 if r.start is None else r.start))
    return out
