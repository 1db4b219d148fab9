"""Frozen-backbone features of audio items: what the residual adapter trains on (extracted by
training/features.py, the one extractor).

Each clip is run once through the base speech model; we keep the mean+std pooled backbone frames
(the input of a linear probe) and the head's logits. Adapting on these takes seconds on a CPU,
where fine-tuning the backbone takes minutes per epoch.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

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


#: Bump when what a cached row holds changes (pooled stats of `speech.frames`, then head logits).
FEATURES_VERSION = 1


def cache_key(speech) -> str:
    """What a clip's row depends on: the speech model's weights (all but its adapter, which acts
    after the row: fine-tunes of one base share their rows) and its front end."""
    h = hashlib.sha256(f"v{FEATURES_VERSION}|{speech.feature}".encode())
    for name, t in sorted(speech.state_dict().items()):
        if not name.startswith("adapter."):
            h.update(name.encode())
            h.update(t.detach().cpu().float().numpy().tobytes())
    return "finetune-" + h.hexdigest()[:24]


def feature_cache(speech, root: Path) -> FT.FrameCache:
    """The on-disk rows of `speech` under `root` (float32: rows equal a fresh extraction), keyed by
    model and clip (`Clip.id`: content hash and span), so a fine-tune run computes only the clips
    no earlier run of the same base has seen."""
    return FT.FrameCache(cache_key(speech), root, dtype=torch.float32)


def extract(speech, items: Sequence, labels: Sequence[str],
            progress: Optional[Callable[[int, int], None]] = None,
            cache: Optional[FT.FrameCache] = None) -> Feats:
    """Run each item's audio through the (frozen) speech model once (training.features, the one
    extractor), or read its row from `cache`. Items whose label is not in `labels` are skipped;
    unreadable audio raises (callers check files first)."""
    speech.eval()
    items = [i for i in items if i.label in labels]
    rows = FT.extract_all(items, FT.pooled_extractor(speech.frames, speech.feature, speech.head),
                          progress=progress, cache=cache)
    d, c = pooled_dim(speech), len(labels)
    x = np.array([r[:d].float().numpy() for r in rows], np.float32).reshape(-1, d)
    b = np.array([r[d:].float().numpy() for r in rows], np.float32).reshape(-1, c)
    return Feats(x, b, np.array([labels.index(i.label) for i in items], np.int64),
                 [i.speaker or i.audio for i in items])
