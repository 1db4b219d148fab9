"""Frozen-backbone features of audio items: what the residual adapter trains on (extracted by
training/features.py, the one extractor).

Each clip is run once through the base speech model; we keep the mean+std pooled backbone frames
(the input of a linear probe) and the head's logits. Adapting on these takes seconds on a CPU,
where fine-tuning the backbone takes minutes per epoch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ..training import features as FT

log = logging.getLogger(__name__)


@dataclass
class Feats:
    """Pooled features of n clips: x [n, D] backbone stats, b [n, C] head logits, y [n] labels."""
    x: np.ndarray
    b: np.ndarray
    y: np.ndarray
    groups: list = field(default_factory=list)   # speaker or recording: kept on one side of a split

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx) -> "Feats":
        idx = np.asarray(idx, dtype=int)
        return Feats(self.x[idx], self.b[idx], self.y[idx], [self.groups[i] for i in idx])

    @staticmethod
    def concat(parts: Sequence["Feats"], dim: int, n_classes: int) -> "Feats":
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return Feats(np.zeros((0, dim), np.float32), np.zeros((0, n_classes), np.float32),
                         np.zeros(0, np.int64), [])
        return Feats(np.concatenate([p.x for p in parts]), np.concatenate([p.b for p in parts]),
                     np.concatenate([p.y for p in parts]), [g for p in parts for g in p.groups])


def pooled_dim(speech) -> int:
    return 2 * int(speech.backbone.frame_dim)


def extract(speech, items: Sequence, labels: Sequence[str],
            progress: Optional[Callable[[int, int], None]] = None) -> Feats:
    """Run each item's audio through the (frozen) speech model once (training.features, the one
    extractor). Items whose label is not in `labels` are skipped; unreadable audio raises (callers
    check files first)."""
    speech.eval()
    items = [i for i in items if i.label in labels]
    rows = FT.extract_all(items, FT.pooled_extractor(speech.frames, speech.feature, speech.head),
                          progress=progress)
    d, c = pooled_dim(speech), len(labels)
    x = np.array([r[:d].float().numpy() for r in rows], np.float32).reshape(-1, d)
    b = np.array([r[d:].float().numpy() for r in rows], np.float32).reshape(-1, c)
    return Feats(x, b, np.array([labels.index(i.label) for i in items], np.int64),
                 [i.speaker or i.audio for i in items])
