"""Frozen-backbone frame features cached on disk, so heads and probes on them train in seconds.

A cache is a folder per backbone key (`runs/features/ge2e-resemblyzer/`), one float16 tensor
[T', D] per item in `<corpus>/<item id>.pt`. Entries are written atomically, so an interrupted
extraction resumes where it stopped. The key must change whenever the frames would (another
backbone, other weights, another window): `backbone_key()` builds it from the speech config.
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .. import audio as A
from ..data import Item, corpus_of
from ..speech import masked_stats

log = logging.getLogger(__name__)

Extractor = Callable[[np.ndarray], torch.Tensor]   # waveform (16 kHz mono) -> frames [T', D]
DEFAULT_ROOT = Path("runs") / "features"


def backbone_key(speech_cfg: dict) -> str:
    """Cache key of a frozen backbone: name, weight source and (if any) its frame options."""
    name = str(speech_cfg.get("backbone", "ge2e"))
    source = Path(str(speech_cfg.get("source") or "default")).name or "default"
    extra = {k: speech_cfg[k] for k in sorted(speech_cfg)
             if k in ("layers", "window", "min_seconds", "level", "trim") and speech_cfg[k] is not None}
    tail = "-" + hashlib.sha1(repr(extra).encode()).hexdigest()[:8] if extra else ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}-{source}{tail}")


def backbone_extractor(backbone: nn.Module, feature: Optional[str] = None) -> Extractor:
    """Frames of a frozen backbone for one waveform: its front end (`feature`, default the
    backbone's own; a SpeechEmotionModel's `feature` adds its trimming), then `frames()`."""
    backbone.eval()
    feature = feature or backbone.feature

    @torch.inference_mode()
    def extract(wav: np.ndarray) -> torch.Tensor:
        feats = A.features(feature, wav)[None]
        frames, lengths = backbone.frames(feats)
        return frames[0, : int(lengths[0])]
    return extract


class FrameCache:
    """Backbone frames per item on disk under `root/key`."""

    def __init__(self, key: str, root: str | Path = DEFAULT_ROOT):
        self.key = key
        self.path = Path(root) / key

    def entry(self, item: Item) -> Path:
        ident = item.id or hashlib.sha1(str(item.audio).encode()).hexdigest()[:16]
        corpus = corpus_of(item) or "misc"
        if ident.startswith(corpus + "/"):
            ident = ident[len(corpus) + 1:]
        safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", ident.replace("/", "__"))
        return self.path / re.sub(r"[^A-Za-z0-9_.-]+", "_", corpus) / f"{safe}.pt"

    def missing(self, items: Sequence[Item]) -> list[Item]:
        return [it for it in items if not self.entry(it).exists()]

    def fill(self, items: Sequence[Item], extract: Extractor, desc: str = "frames") -> int:
        """Compute and store the frames of every item not cached yet; returns how many."""
        todo = self.missing(items)
        for it in tqdm(todo, desc=f"{desc} ({self.key})", leave=False, disable=not todo):
            out = self.entry(it)
            out.parent.mkdir(parents=True, exist_ok=True)
            frames = extract(A.load_audio(it.audio)).detach().to(torch.float16).contiguous()
            tmp = out.with_suffix(".tmp")
            torch.save(frames.clone(), tmp)
            tmp.replace(out)
        if todo:
            log.info("feature cache %s: %d new entries", self.key, len(todo))
        return len(todo)

    def load(self, items: Sequence[Item], extract: Optional[Extractor] = None,
             desc: str = "frames") -> list[torch.Tensor]:
        """Frames [T', D] (float16) of each item, computing missing ones with `extract`."""
        if extract is not None:
            self.fill(items, extract, desc)
        elif self.missing(items):
            raise FileNotFoundError(f"{len(self.missing(items))} items not in feature cache {self.path}; "
                                    "pass an extractor to compute them")
        return [torch.load(self.entry(it), weights_only=True) for it in items]


def pooled(frames: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean+std over time of each item's frames: [N, 2D] float32 (what a linear probe sees)."""
    out = []
    for f in frames:
        f = f.float()[None]
        out.append(masked_stats(f, torch.tensor([f.shape[1]]))[0])
    return torch.stack(out)


def select_dims(frames: Sequence[torch.Tensor], dims: Optional[slice | Sequence[int]]) -> list[torch.Tensor]:
    """A subset of the frame dimensions (e.g. some layers of an all-layer backbone)."""
    if dims is None:
        return list(frames)
    return [f[:, dims] for f in frames]


def align_concat(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Frame-level concatenation of two backbones' frames at different rates: the faster one is
    average-pooled down to the slower one's length (e.g. GE2E 100 fps onto Whisper 50 fps)."""
    out = []
    for x, y in zip(a, b):
        if x.shape[0] < y.shape[0]:
            x, y, swap = y, x, True
        else:
            swap = False
        if y.shape[0] == 0:
            raise ValueError("an item has no frames")
        pooled_x = torch.nn.functional.adaptive_avg_pool1d(x.float().T[None], y.shape[0])[0].T.to(x.dtype)
        out.append(torch.cat([y, pooled_x] if swap else [pooled_x, y], dim=-1))
    return out
