"""Pieces every training loop shares: seeding, the class-balanced loss weights, frame padding,
weight snapshots, the one best-epoch tracker (keep the weights of the best validation score) and
the one head-fitting loop over cached features (`fit_epochs`)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a model's state dict (best-epoch snapshots, weight mixing)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def class_weights(y: Sequence[int], n: int) -> torch.Tensor:
    """Inverse-frequency loss weights over `n` classes, mean 1 over the classes present in `y`.

    Classes absent from `y` get weight 0: with label smoothing, a positive weight on them would
    make the smoothing term push probability onto classes the data never shows (fine-tuning on a
    correction set with 4 of 7 classes then drifts towards the other 3)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n).astype(np.float64)
    present = counts > 0
    w = np.zeros(n)
    if present.any():
        w[present] = 1.0 / counts[present]
        w[present] /= w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


def pad_frames(batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[T_i, D] tensors → a zero-padded float batch [B, max T, D] and the true lengths."""
    lengths = torch.tensor([b.shape[0] for b in batch])
    x = torch.zeros(len(batch), int(lengths.max()), batch[0].shape[-1])
    for i, b in enumerate(batch):
        x[i, : b.shape[0]] = b.float()
    return x, lengths


class BestEpoch:
    """The best validation score so far, a copy of the weights that reached it, what else was
    true at that epoch (`info`, e.g. the prior-correction strength) and the epochs since (`bad`,
    for early stopping). `to_state` / `from_state` keep it in a resumable checkpoint."""

    def __init__(self, score: float = -1.0, state: Optional[dict] = None, bad: int = 0,
                 info: Optional[dict] = None):
        self.score, self.state, self.bad, self.info = score, state, bad, dict(info or {})

    def update(self, score: float, model: nn.Module, **info) -> bool:
        """Keep `model`'s weights if `score` beats the best; return whether it did."""
        if score > self.score:
            self.score, self.state, self.bad, self.info = score, state_copy(model), 0, info
            return True
        self.bad += 1
        return False

    def stop(self, patience: Optional[int]) -> bool:
        """True once `patience` epochs in a row have not improved (never with None)."""
        return patience is not None and self.bad >= patience

    def restore(self, model: nn.Module) -> None:
        """Load the best weights into `model` (nothing if no epoch was kept)."""
        if self.state is not None:
            model.load_state_dict(self.state)

    def to_state(self) -> dict:
        return {"best": self.score, "best_state": self.state, "bad": self.bad}

    @classmethod
    def from_state(cls, state: dict, **info) -> "BestEpoch":
        return cls(state["best"], state["best_state"], state.get("bad", 0), info)


Step = Callable[[np.ndarray], float]          # one batch (item indices) -> its mean loss
Validate = Callable[[int, float], float]      # (epoch, mean training loss) -> validation score


@dataclass
class EpochPlan:
    """How `fit_epochs` walks the data: `epochs` passes over `n` items in batches of `batch_size`,
    a fresh order each epoch (`order`, default a numpy permutation), the scheduler stepped after
    each epoch, early stop after `patience` epochs without a better score (None: never)."""
    n: int
    epochs: int
    batch_size: int
    sched: Optional[object] = None
    patience: Optional[int] = None
    order: Optional[Callable[[], Sequence[int]]] = None


def fit_epochs(model: nn.Module, plan: EpochPlan, step: Step, validate: Validate,
               judged: Optional[nn.Module] = None) -> BestEpoch:
    """The one head-fitting loop: train `model` batch by batch (`step` does the update and returns
    the batch's mean loss), score it after each epoch (`validate`), keep the weights of the best
    score (of `judged`, e.g. an EMA copy, when given) and load them into `model` at the end."""
    best = BestEpoch()
    for ep in range(plan.epochs):
        model.train()
        order = plan.order() if plan.order else np.random.permutation(plan.n)
        tot = 0.0
        for b in range(0, plan.n, plan.batch_size):
            idx = order[b:b + plan.batch_size]
            tot += step(idx) * len(idx)
        if plan.sched is not None:
            plan.sched.step()
        best.update(validate(ep, tot / max(1, plan.n)), judged if judged is not None else model)
        if best.stop(plan.patience):
            break
    best.restore(model)
    return best
