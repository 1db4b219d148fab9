"""How the annotation queue orders clips: the model's uncertainty, then annotators' disagreement.

* `uncertainty(probs, method)`: 1 - margin (top-1 minus top-2 fused probability) or the entropy
  of the fused probabilities over log(#labels); both in [0, 1], 1 = the model cannot tell.
* `tally(votes)`: one vote per voter (their latest label, `emodemo.labels.vote`'s rule) as
  ({label: count}, disagreement), disagreement = 1 - the majority's share (0 below two votes).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

from ..labels import time_order, voter

RANKINGS = ("margin", "entropy")


def uncertainty(probs: Optional[Mapping[str, float]], method: str = "margin") -> float:
    """How unsure the model is about a clip, in [0, 1]; 1.0 when there are no probabilities."""
    if method not in RANKINGS:
        raise ValueError(f"unknown ranking {method!r}; expected one of {', '.join(RANKINGS)}")
    p = sorted((max(0.0, float(v)) for v in (probs or {}).values() if v is not None
                and math.isfinite(float(v))), reverse=True)
    total = sum(p)
    if len(p) < 2 or total <= 0:
        return 1.0
    p = [v / total for v in p]
    if method == "margin":
        return float(min(1.0, max(0.0, 1.0 - (p[0] - p[1]))))
    ent = -sum(v * math.log(v) for v in p if v > 0)
    return float(min(1.0, ent / math.log(len(p))))


def tally(votes: Iterable[Any]) -> tuple[dict[str, int], float]:
    """({label: voters}, disagreement) of one clip's vote records (dicts with label, annotator,
    annotator_account, id, created_at); each voter counts once, with their latest label."""
    latest: dict[Any, str] = {}
    for rec in sorted(votes, key=time_order):
        latest[voter(rec)] = str(rec["label"])
    counts: dict[str, int] = {}
    for label in latest.values():
        counts[label] = counts.get(label, 0) + 1
    n = sum(counts.values())
    disagreement = 0.0 if n < 2 else 1.0 - max(counts.values()) / n
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))), disagreement
