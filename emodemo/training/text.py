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


def train_text(cfg: Recipe | dict, labels: Sequence[str], train_items: Sequence[Item],
               val_items: Sequence[Item], run: Run, model=None) -> tuple[nn.Module, dict, list]:
    """Fine-tune the BERT-family encoder's top layers and the head on soft multi-label targets
    (a row with k labels puts 1/k on each), class-balanced, best epoch by dev macro-F1.

    Class balancing (weights, per-class caps) makes the head over-predict rare classes. With
    `prior_correction: "fit"` (default) a calibration split of the *training* data
    (`calib_fraction`, never trained on in this run) picks after each epoch how much of the
    training prior to add back to the logits (tau · log prior); dev macro-F1 is measured after
    that correction, and the chosen correction is folded into the classifier bias at the end."""
    recipe = Recipe.coerce(cfg)
    tc = recipe.text
    n = len(labels)
    seed = recipe.seed
    seed_everything(seed)
    if model is None:
        from ..bundle import build_text
        model = build_text({"labels": list(labels), "text": tc.to_dict()})
    set_text_trainable(model, tc.train_layers)
    correction = tc.correction
    calib: list = []
    if correction == "fit":
        frac = 0.05 if tc.calib_fraction is None else float(tc.calib_fraction)
        calib, train_items = _calibration_split(train_items, frac, seed)
    texts = [i.transcript or "" for i in train_items]
    targets = soft_targets_for(train_items, labels)
    log_prior = np.log(np.maximum(targets.double().mean(0).numpy(), 1e-6))
    w = class_weights(targets.argmax(1).numpy(), n)
    enc_params = [p for p in model.encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": enc_params, "lr": tc.lr},
                             {"params": model.classifier.parameters(), "lr": tc.head_lr}],
                            weight_decay=1e-2)
    primary = targets.argmax(1).numpy()
    cap = int(tc.max_per_class or 0)

    def epoch_batches(ep: int) -> list[list[int]]:
        return _epoch_batches(texts, primary, n, tc.batch_size, cap, seed, ep)

    total_steps = len(epoch_batches(0)) * tc.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, s / max(1, total_steps // 20)) * max(0.0, 1 - s / max(1, total_steps)))
    yv = np.array([labels.index(i.label) for i in val_items])
    vt = [i.transcript or "" for i in val_items]
    yc = np.array([labels.index(i.label) for i in calib])
    ct = [i.transcript or "" for i in calib]

    def evaluate_dev() -> tuple[dict, float]:
        """Dev metrics after the prior correction fitted on the calibration split (tau 0 without)."""
        tau = 0.0
        if calib:
            tau = fit_prior_tau(model.predict_proba(ct).numpy(), yc, log_prior, n)
        elif isinstance(correction, (int, float)) and not isinstance(correction, bool):
            tau = float(correction)
        return metrics(yv, prior_corrected(model.predict_proba(vt).numpy(), log_prior, tau), n), tau

    start, history, best = 0, [], BestEpoch(info={"tau": 0.0})
    state = run.resume("text.ckpt")
    if state is None and tc.eval_init:
        m0, t0_ = evaluate_dev()
        best.update(m0["macro_F1"], model, tau=t0_)
        history.append({"epoch": 0, "train_loss": float("nan"), "dev_macro_F1": m0["macro_F1"],
                        "dev_UA": m0["UA"], "prior_tau": t0_, "seconds": 0.0})
        log.info("text epoch 0 (starting point): dev macro-F1 %.3f (prior tau %.1f)", m0["macro_F1"], t0_)
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, history = state["epoch"], state["history"]
        best = BestEpoch.from_state(state, tau=state.get("best_tau", 0.0))
        if state.get("select") != "prior-corrected" and best.state is not None:
            # a checkpoint from before the prior correction: re-measure its best under the new rule
            latest = state_copy(model)
            model.load_state_dict(best.state)
            mb, best.info["tau"] = evaluate_dev()
            best.score = mb["macro_F1"]
            model.load_state_dict(latest)
            log.info("text: resumed; best so far re-measured with the prior correction: %.3f", best.score)
    for ep in range(start, tc.epochs):
        model.train()
        batches = epoch_batches(ep)
        tot, t0, seen = 0.0, time.time(), 0
        for idx in tqdm(batches, desc=f"text epoch {ep + 1}", leave=False, disable=None):   # bar on a TTY only
            enc = model.tokenize([texts[i] for i in idx], max_length=tc.max_length)
            enc.pop("token_type_ids", None)
            logp = F.log_softmax(model(**enc), -1)
            loss = -(targets[idx] * logp * w).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot, seen = tot + float(loss.detach()) * len(idx), seen + len(idx)
        model.eval()
        m, tau = evaluate_dev()
        history.append({"epoch": ep + 1, "train_loss": tot / max(seen, 1), "dev_macro_F1": m["macro_F1"],
                        "dev_UA": m["UA"], "prior_tau": tau, "seconds": round(time.time() - t0, 1)})
        log.info("text epoch %d: loss %.3f dev macro-F1 %.3f (prior tau %.1f; %.0f s)", ep + 1,
                 history[-1]["train_loss"], m["macro_F1"], tau, time.time() - t0)
        best.update(m["macro_F1"], model, tau=tau)
        run.checkpoint("text.ckpt", {"model": model.state_dict(), "opt": opt.state_dict(),
                                     "sched": sched.state_dict(), "epoch": ep + 1,
                                     "best_tau": best.info.get("tau", 0.0), "select": "prior-corrected",
                                     "history": history, **best.to_state()})
    best.restore(model)
    best_tau = best.info.get("tau", 0.0)
    if best_tau:
        with torch.no_grad():   # fold the correction into the head: plain argmax is now corrected
            model.classifier.bias += torch.as_tensor(best_tau * log_prior, dtype=model.classifier.bias.dtype)
    model.eval()
    m = metrics(yv, model.predict_proba(vt).numpy().argmax(1), n)
    m["prior_tau"] = best_tau
    return model, m, history
