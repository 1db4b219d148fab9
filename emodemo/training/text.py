"""The text branch: fine-tune a BERT-family encoder's top layers and head on soft multi-label
targets, with a prior correction (logit adjustment) fitted on a calibration split."""
from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..data import Item
from .loops import BestEpoch, class_weights, seed_everything, state_copy
from .metrics import metrics
from .recipe import Recipe
from .rundir import TRAIN_LOG, Run

log = logging.getLogger(TRAIN_LOG)

TAU_GRID = tuple(round(0.1 * k, 1) for k in range(0, 21))   # prior-correction strengths tried
DEFAULT_CALIB_FRACTION = 0.05   # training share held out to fit the prior correction


def set_text_trainable(model, train_layers: int) -> None:
    """Freeze embeddings and all but the top `train_layers` transformer layers (-1: all)."""
    enc = model.encoder
    layers = enc.encoder.layer if hasattr(enc, "encoder") else []
    for p in enc.parameters():
        p.requires_grad = train_layers < 0
    if train_layers > 0:
        for layer in list(layers)[-train_layers:]:
            for p in layer.parameters():
                p.requires_grad = True


def soft_targets_for(items: Sequence[Item], labels: Sequence[str]) -> torch.Tensor:
    """Multi-label rows (GoEmotions) become soft targets spread evenly over their labels."""
    t = torch.zeros(len(items), len(labels))
    for i, it in enumerate(items):
        labs = [l for l in (it.labels or (it.label,)) if l in labels]
        for lab in labs:
            t[i, labels.index(lab)] += 1.0 / len(labs)
    return t


def prior_corrected(p: np.ndarray, log_prior: np.ndarray, tau: float) -> np.ndarray:
    """Class decisions after logit adjustment: argmax(log p + tau · log prior)."""
    return (np.log(np.asarray(p) + 1e-12) + tau * np.asarray(log_prior)).argmax(1)


def fit_prior_tau(p: np.ndarray, y: np.ndarray, log_prior: np.ndarray, n: int) -> float:
    """The logit-adjustment strength (Menon et al. 2021) that maximises macro-F1 on (p, y).
    Balanced training over-predicts rare classes; adding tau · log prior undoes part of that."""
    return max(TAU_GRID, key=lambda t: (round(metrics(y, prior_corrected(p, log_prior, t), n)["macro_F1"], 6), -t))


def _calibration_split(items: Sequence[Item], fraction: float, seed: int) -> tuple[list, list]:
    """(calibration items, training items): a seeded `fraction` held out, order kept."""
    order = np.random.default_rng(seed + 7).permutation(len(items))
    k = int(round(fraction * len(items)))
    return [items[i] for i in sorted(order[:k])], [items[i] for i in sorted(order[k:])]


def _epoch_batches(texts: list[str], primary: np.ndarray, n: int, bs: int, cap: int, seed: int,
                   ep: int) -> list[list[int]]:
    """Length-bucketed batches; with `max_per_class`, a fresh class-capped sample each epoch."""
    rng = np.random.default_rng(seed + ep)
    idx = np.arange(len(texts))
    if cap:
        idx = np.concatenate([rng.permutation(np.flatnonzero(primary == c))[:cap] for c in range(n)])
    order = sorted(idx.tolist(), key=lambda i: len(texts[i]))
    batches = [order[b:b + bs] for b in range(0, len(order), bs)]
    rng.shuffle(batches)
    return batches


class TextFit:
    """One `train_text` run's state: the model, its training texts and soft targets, the loss
    weights, the optimiser and schedule, the dev and calibration sets and the training prior."""

    def __init__(self, recipe: Recipe, labels: Sequence[str], train_items: Sequence[Item],
                 val_items: Sequence[Item], model=None):
        self.tc, self.labels, self.n, self.seed = recipe.text, list(labels), len(labels), recipe.seed
        tc = self.tc
        seed_everything(self.seed)
        if model is None:
            from ..bundle import build_text
            model = build_text({"labels": list(labels), "text": tc.to_dict()})
        self.model = model
        set_text_trainable(model, tc.train_layers)
        calib: list = []
        if tc.correction == "fit":
            frac = DEFAULT_CALIB_FRACTION if tc.calib_fraction is None else float(tc.calib_fraction)
            calib, train_items = _calibration_split(train_items, frac, self.seed)
        self.texts = [i.transcript or "" for i in train_items]
        self.targets = soft_targets_for(train_items, labels)
        self.log_prior = np.log(np.maximum(self.targets.double().mean(0).numpy(), 1e-6))
        self.w = class_weights(self.targets.argmax(1).numpy(), self.n)
        self.primary = self.targets.argmax(1).numpy()
        self.opt, self.sched = self._optimiser()
        self.yv, self.vt = self._labelled(val_items)
        self.yc, self.ct = self._labelled(calib)

    def _labelled(self, items: Sequence[Item]) -> tuple[np.ndarray, list[str]]:
        return np.array([self.labels.index(i.label) for i in items]), [i.transcript or "" for i in items]

    def _optimiser(self):
        """AdamW (encoder and head learning rates) with linear warm-up (5 %) and linear decay."""
        tc, model = self.tc, self.model
        enc_params = [p for p in model.encoder.parameters() if p.requires_grad]
        opt = torch.optim.AdamW([{"params": enc_params, "lr": tc.lr},
                                 {"params": model.classifier.parameters(), "lr": tc.head_lr}],
                                weight_decay=1e-2)
        total = len(self.epoch_batches(0)) * tc.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, s / max(1, total // 20)) * max(0.0, 1 - s / max(1, total)))
        return opt, sched

    def epoch_batches(self, ep: int) -> list[list[int]]:
        return _epoch_batches(self.texts, self.primary, self.n, self.tc.batch_size,
                              int(self.tc.max_per_class or 0), self.seed, ep)

    def evaluate_dev(self) -> tuple[dict, float]:
        """Dev metrics after the prior correction fitted on the calibration split (tau 0 without)."""
        tau, correction = 0.0, self.tc.correction
        if len(self.ct):
            tau = fit_prior_tau(self.model.predict_proba(self.ct).numpy(), self.yc, self.log_prior, self.n)
        elif isinstance(correction, (int, float)) and not isinstance(correction, bool):
            tau = float(correction)
        p = self.model.predict_proba(self.vt).numpy()
        return metrics(self.yv, prior_corrected(p, self.log_prior, tau), self.n), tau

    def start(self, run: Run) -> tuple[int, list, BestEpoch]:
        """(first epoch, history, best so far): from the run's checkpoint, else from scratch
        (with `eval_init`, the starting point measured as epoch 0)."""
        best, state = BestEpoch(info={"tau": 0.0}), run.resume("text.ckpt")
        if state is None:
            history = [self._epoch_zero(best)] if self.tc.eval_init else []
            return 0, history, best
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        best = BestEpoch.from_state(state, tau=state.get("best_tau", 0.0))
        if state.get("select") != "prior-corrected" and best.state is not None:
            self._remeasure(best)
        return state["epoch"], state["history"], best

    def _epoch_zero(self, best: BestEpoch) -> dict:
        m0, tau = self.evaluate_dev()
        best.update(m0["macro_F1"], self.model, tau=tau)
        log.info("text epoch 0 (starting point): dev macro-F1 %.3f (prior tau %.1f)", m0["macro_F1"], tau)
        return {"epoch": 0, "train_loss": float("nan"), "dev_macro_F1": m0["macro_F1"],
                "dev_UA": m0["UA"], "prior_tau": tau, "seconds": 0.0}

    def _remeasure(self, best: BestEpoch) -> None:
        """A checkpoint from before the prior correction: re-measure its best under the new rule."""
        latest = state_copy(self.model)
        self.model.load_state_dict(best.state)
        mb, best.info["tau"] = self.evaluate_dev()
        best.score = mb["macro_F1"]
        self.model.load_state_dict(latest)
        log.info("text: resumed; best so far re-measured with the prior correction: %.3f", best.score)

    def train_epoch(self, ep: int) -> float:
        """One pass over this epoch's batches; the mean training loss."""
        model, tc = self.model, self.tc
        model.train()
        tot, seen = 0.0, 0
        for idx in tqdm(self.epoch_batches(ep), desc=f"text epoch {ep + 1}", leave=False,
                        disable=None):   # bar on a TTY only
            enc = model.tokenize([self.texts[i] for i in idx], max_length=tc.max_length)
            enc.pop("token_type_ids", None)
            logp = F.log_softmax(model(**enc), -1)
            loss = -(self.targets[idx] * logp * self.w).sum(1).mean()
            self.opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            self.opt.step()
            self.sched.step()
            tot, seen = tot + float(loss.detach()) * len(idx), seen + len(idx)
        model.eval()
        return tot / max(seen, 1)

    def checkpoint(self, run: Run, ep: int, history: list, best: BestEpoch) -> None:
        run.checkpoint("text.ckpt", {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                                     "sched": self.sched.state_dict(), "epoch": ep + 1,
                                     "best_tau": best.info.get("tau", 0.0), "select": "prior-corrected",
                                     "history": history, **best.to_state()})

    def finish(self, best: BestEpoch) -> dict:
        """Load the best epoch, fold its prior correction into the classifier bias (plain argmax is
        then corrected) and measure it on dev."""
        best.restore(self.model)
        best_tau = best.info.get("tau", 0.0)
        if best_tau:
            with torch.no_grad():
                bias = self.model.classifier.bias
                bias += torch.as_tensor(best_tau * self.log_prior, dtype=bias.dtype)
        self.model.eval()
        m = metrics(self.yv, self.model.predict_proba(self.vt).numpy().argmax(1), self.n)
        m["prior_tau"] = best_tau
        return m


def train_text(cfg: Recipe | dict, labels: Sequence[str], train_items: Sequence[Item],
               val_items: Sequence[Item], run: Run, model=None) -> tuple[nn.Module, dict, list]:
    """Fine-tune the BERT-family encoder's top layers and the head on soft multi-label targets
    (a row with k labels puts 1/k on each), class-balanced, best epoch by dev macro-F1.

    Class balancing (weights, per-class caps) makes the head over-predict rare classes. With
    `prior_correction: "fit"` (default) a calibration split of the *training* data
    (`calib_fraction`, never trained on in this run) picks after each epoch how much of the
    training prior to add back to the logits (tau · log prior); dev macro-F1 is measured after
    that correction, and the chosen correction is folded into the classifier bias at the end."""
    fit = TextFit(Recipe.coerce(cfg), labels, train_items, val_items, model)
    start, history, best = fit.start(run)
    for ep in range(start, fit.tc.epochs):
        t0 = time.time()
        loss = fit.train_epoch(ep)
        m, tau = fit.evaluate_dev()
        history.append({"epoch": ep + 1, "train_loss": loss, "dev_macro_F1": m["macro_F1"],
                        "dev_UA": m["UA"], "prior_tau": tau, "seconds": round(time.time() - t0, 1)})
        log.info("text epoch %d: loss %.3f dev macro-F1 %.3f (prior tau %.1f; %.0f s)", ep + 1, loss,
                 m["macro_F1"], tau, time.time() - t0)
        best.update(m["macro_F1"], fit.model, tau=tau)
        fit.checkpoint(run, ep, history, best)
    return fit.model, fit.finish(best), history
