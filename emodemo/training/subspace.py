"""Subspaces of pooled feature rows that the pooled probe (`multicorpus.fit_probe`) fits in or
projects out: the top principal directions of the standardised rows (a faster fit), and the
directions in which training settings differ (nuisance attribute projection)."""
from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence

import numpy as np
import torch

from ..data import Item


def principal_basis(xs: torch.Tensor, k: int) -> Optional[torch.Tensor]:
    """The top-`k` principal directions [D, k] of standardised rows (None when k covers D)."""
    if k <= 0 or k >= min(xs.shape):
        return None
    torch.manual_seed(0)
    _, _, v = torch.pca_lowrank(xs, q=k, center=True, niter=3)
    return v


def nuisance_basis(xs: torch.Tensor, y: torch.Tensor, groups: Sequence[str], corpus: Sequence[str],
                   k: int) -> Optional[torch.Tensor]:
    """The top-`k` directions [D, k] in which training settings differ in standardised rows `xs`,
    not emotions (nuisance attribute projection): each row minus its class's mean (the mean of the
    corpora's class means), averaged per setting over its classes (a speaker with mostly sad clips
    is not a "sad voice"), each corpus's settings weighing 1 in all. Removing these directions
    makes a linear head blind to a speaker's, microphone's or corpus's constant offset along them."""
    if k <= 0:
        return None
    groups, corpus, y = np.asarray(groups), np.asarray(corpus), y.numpy()
    class_mean = {c: torch.stack([xs[torch.from_numpy((y == c) & (corpus == name))].mean(0)
                                  for name in sorted(set(corpus[y == c]))]).mean(0) for c in sorted(set(y))}
    resid = xs - torch.stack([class_mean[c] for c in y])
    corpus_of = dict(zip(groups.tolist(), corpus.tolist()))        # a setting lies in one corpus
    per_corpus = Counter(corpus_of.values())
    rows = []
    for g in sorted(corpus_of):
        m = groups == g
        offset = torch.stack([resid[torch.from_numpy(m & (y == c))].mean(0) for c in sorted(set(y[m]))]).mean(0)
        rows.append(offset / math.sqrt(per_corpus[corpus_of[g]]))
    _, _, vh = torch.linalg.svd(torch.stack(rows), full_matrices=False)
    return vh[:min(k, len(rows))].T.contiguous()


def setting_groups(items: Sequence[Item]) -> list[str]:
    """A setting per item: its corpus and speaker (a copy's speaker carries the copy's tag,
    `degrade.degraded`, so a voice in another room is a setting of its own)."""
    return [f"{i.corpus}:{i.speaker or i.id}" for i in items]


def without(w: torch.Tensor, basis: Optional[torch.Tensor]) -> torch.Tensor:
    """Rows of `w` with their components along `basis`'s columns removed."""
    return w if basis is None else w - (w @ basis) @ basis.T
