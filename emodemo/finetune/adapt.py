"""Speech adaptation from a few hundred corrections: a residual adapter on frozen-backbone features.

    logits = beta · base_logits + W · z + c          z = (pooled backbone stats − mean) / std

`base_logits` are the base bundle's audio logits (its head, plus its own adapter if it has one).
W and c start at zero (the base model); beta = 0 with W free is a linear probe. The adapter is
fitted full-batch with L-BFGS on

    ρ · CE(corrections) + (1 − ρ) · CE(replay) + λ/2 · ‖W‖²

each cross-entropy class-balanced over the classes present *in that part*. Rows of W and c for
classes the corrections lack stay zero, so those classes keep exactly the base model's evidence and
the replay sample (the base's training clips, carried by the bundle) keeps the old skills from
being traded away. beta and λ are chosen by speaker/recording-grouped cross-validation on the
training corrections, among candidates that stay within `tolerance` of the base on the replay
guard; the linear probe (logistic regression on the corrections alone) is measured alongside as the
baseline to beat.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .features import Feats

log = logging.getLogger(__name__)

BETAS = (1.0, 0.5, 0.0)                  # weight of the base logits
LAMBDAS = (1e-3, 1e-2, 1e-1)             # L2 on W (features standardised)
CORRECTION_SHARE = 0.5                   # ρ: corrections vs replay in the loss
CV_FOLDS = 4
LBFGS_STEPS = 60


@dataclass
class Adapter:
    """A fitted adapter in standardised-feature space (numpy, float32)."""
    W: np.ndarray        # [C, D]
    c: np.ndarray        # [C]
    beta: float
    mean: np.ndarray     # [D]
    std: np.ndarray      # [D]

    def logits(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        return self.beta * base + ((x - self.mean) / self.std) @ self.W.T + self.c

    @staticmethod
    def identity(dim: int, n: int, mean=None, std=None) -> "Adapter":
        return Adapter(np.zeros((n, dim), np.float32), np.zeros(n, np.float32), 1.0,
                       np.zeros(dim, np.float32) if mean is None else mean,
                       np.ones(dim, np.float32) if std is None else std)


def ua(y: np.ndarray, pred: np.ndarray, classes: Optional[Sequence[int]] = None) -> float:
    """Unweighted accuracy (mean recall) over `classes` (default: those present in y)."""
    cls = sorted(set(np.asarray(y).tolist())) if classes is None else list(classes)
    rec = [float((pred[y == k] == k).mean()) for k in cls if (y == k).any()]
    return float(np.mean(rec)) if rec else float("nan")


def _balanced_weights(y: np.ndarray, n: int) -> np.ndarray:
    """Per-item weights: each class present gets the same total weight; items sum to 1."""
    counts = np.bincount(y, minlength=n).astype(np.float64)
    present = counts > 0
    w = np.zeros(len(y))
    if len(y):
        w = 1.0 / (present.sum() * counts[y])
    return w


def fit(corr: Feats, replay: Feats, n_classes: int, beta: float, lam: float,
        mean: np.ndarray, std: np.ndarray, rho: float = CORRECTION_SHARE,
        steps: int = LBFGS_STEPS) -> Adapter:
    """Fit W, c for a fixed beta and λ (see the module docstring)."""
    torch.manual_seed(0)
    present = np.zeros(n_classes, bool)
    present[np.unique(corr.y)] = True
    mask = torch.from_numpy(present.astype(np.float32))
    parts = [(corr, rho if len(replay) else 1.0)] + ([(replay, 1.0 - rho)] if len(replay) else [])
    data = []
    for f, share in parts:
        z = torch.from_numpy(((f.x - mean) / std).astype(np.float32))
        data.append((z, torch.from_numpy(beta * f.b.astype(np.float32)), torch.from_numpy(f.y),
                     torch.from_numpy((share * _balanced_weights(f.y, n_classes)).astype(np.float32))))
    d = corr.x.shape[1]
    W = torch.zeros(n_classes, d, requires_grad=True)
    c = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, c], lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        Wm, cm = W * mask[:, None], c * mask
        loss = 0.5 * lam * (Wm ** 2).sum()
        for z, b, y, w in data:
            loss = loss + (w * F.cross_entropy(b + z @ Wm.T + cm, y, reduction="none")).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        Wf, cf = (W * mask[:, None]).numpy().copy(), (c * mask).numpy().copy()
    return Adapter(Wf.astype(np.float32), cf.astype(np.float32), float(beta), mean, std)


def grouped_folds(groups: Sequence[str], y: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """k folds of item indices with whole groups (speakers/recordings) in one fold, classes spread."""
    rng = np.random.default_rng(seed)
    uniq = sorted(set(groups))
    rng.shuffle(uniq)
    if len(uniq) < k:  # too few groups: fall back to items (still stratified by order)
        order = np.argsort(y, kind="stable")
        return [order[i::k] for i in range(k)]
    # greedy: biggest groups first into the currently smallest fold
    sizes = {g: 0 for g in uniq}
    for g in groups:
        sizes[g] += 1
    folds: list[list[str]] = [[] for _ in range(k)]
    load = [0] * k
    for g in sorted(uniq, key=lambda g: -sizes[g]):
        j = int(np.argmin(load))
        folds[j].append(g)
        load[j] += sizes[g]
    where = {g: j for j, gs in enumerate(folds) for g in gs}
    return [np.array([i for i, g in enumerate(groups) if where[g] == j]) for j in range(k)]


def linear_probe(corr: Feats, mean: np.ndarray, std: np.ndarray, C: float = 1.0):
    """The baseline: logistic regression on standardised pooled features of the corrections alone."""
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=2000)
    clf.fit((corr.x - mean) / std, corr.y)
    return clf


def probe_predict(clf, x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return clf.classes_[clf.predict_proba((x - mean) / std).argmax(1)]


def choose(corr: Feats, replay: Feats, guard: Feats, base: Adapter, n_classes: int,
           tolerance: float = 0.02, seed: int = 0) -> dict:
    """Pick (beta, λ) by grouped CV UA on the training corrections, among candidates whose UA on the
    replay guard stays within `tolerance` of the base; refit the winner on all training corrections.

    `base` maps the stored head logits to the base bundle's logits (its own adapter, if any), so a
    fine-tuned bundle can be fine-tuned again. Returns {"adapter", "beta", "lambda", "table", ...}.
    """
    mean = base.mean if np.any(base.std != 1) or np.any(base.mean != 0) else None
    allx = np.concatenate([corr.x, replay.x]) if len(replay) else corr.x
    if mean is None:
        mean = allx.mean(0).astype(np.float32)
        std = (allx.std(0) + 1e-4).astype(np.float32)
    else:
        std = base.std

    def with_base(f: Feats) -> Feats:   # head logits → the base bundle's logits
        return Feats(f.x, base.logits(f.x, f.b).astype(np.float32), f.y, f.groups)

    corr_b, replay_b, guard_b = with_base(corr), with_base(replay), with_base(guard)
    classes = sorted(set(corr.y.tolist()))
    folds = grouped_folds(corr.groups, corr.y, min(CV_FOLDS, max(2, len(set(corr.groups)))), seed)
    folds = [f for f in folds if len(f)]
    guard_base = ua(guard_b.y, guard_b.b.argmax(1)) if len(guard_b) else None
    table = []
    for beta in BETAS:
        for lam in LAMBDAS:
            preds = np.full(len(corr), -1)
            for te in folds:
                tr = np.setdiff1d(np.arange(len(corr)), te)
                if len(set(corr.y[tr].tolist())) < 2:
                    continue
                a = fit(corr_b.take(tr), replay_b, n_classes, beta, lam, mean, std)
                preds[te] = a.logits(corr_b.x[te], corr_b.b[te]).argmax(1)
            ok = preds >= 0
            cv = ua(corr.y[ok], preds[ok], classes) if ok.any() else float("nan")
            a_all = fit(corr_b, replay_b, n_classes, beta, lam, mean, std)
            g = ua(guard_b.y, a_all.logits(guard_b.x, guard_b.b).argmax(1)) if len(guard_b) else None
            table.append({"beta": beta, "lambda": lam, "cv_UA": round(cv, 4),
                          "guard_UA": None if g is None else round(g, 4), "adapter": a_all})
            log.info("adapter beta %.2f lambda %g: CV UA %.3f, guard UA %s", beta, lam, cv,
                     "-" if g is None else f"{g:.3f}")
    allowed = [r for r in table if guard_base is None or r["guard_UA"] >= guard_base - tolerance - 1e-9]
    best = max(allowed or table, key=lambda r: (r["cv_UA"], r["beta"], r["lambda"]))
    # the base itself, scored the same way: the adapter must beat it in CV to be used
    base_cv = ua(corr.y, corr_b.b.argmax(1), classes)
    return {"adapter": best["adapter"], "beta": best["beta"], "lambda": best["lambda"],
            "cv_UA": best["cv_UA"], "cv_UA_base": round(base_cv, 4),
            "guard_UA_base": None if guard_base is None else round(guard_base, 4),
            "guard_UA": best["guard_UA"], "guard_ok": bool(allowed),
            "table": [{k: v for k, v in r.items() if k != "adapter"} for r in table],
            "mean": mean, "std": std}


def compose(base: Adapter, new: Adapter) -> Adapter:
    """The adapter equivalent to applying `new` on top of `base` (same standardisation):
    beta'·head + W'z + c' with beta' = beta_new·beta_base, W' = beta_new·W_base + W_new, ..."""
    zb = (new.mean - base.mean) / base.std   # both use the same mean/std when base had an adapter
    W_base = base.W * (new.std / base.std)[None, :] if np.any(base.W) else base.W
    c_base = base.c + (base.W @ zb if np.any(base.W) else 0)
    return Adapter((new.beta * W_base + new.W).astype(np.float32),
                   (new.beta * c_base + new.c).astype(np.float32), new.beta * base.beta, new.mean, new.std)


def install(speech, adapter: Adapter) -> None:
    """Put a fitted adapter into a SpeechEmotionModel (creating its ResidualAdapter if needed)."""
    from ..speech import ResidualAdapter
    n, d = adapter.W.shape
    if speech.adapter is None:
        speech.adapter = ResidualAdapter(d, n)
    a = speech.adapter
    with torch.no_grad():
        a.linear.weight.copy_(torch.from_numpy(adapter.W))
        a.linear.bias.copy_(torch.from_numpy(adapter.c))
        a.mean.copy_(torch.from_numpy(adapter.mean))
        a.std.copy_(torch.from_numpy(adapter.std))
        a.beta.fill_(float(adapter.beta))


def from_model(speech, n_classes: int) -> Adapter:
    """The model's current adapter (identity when it has none)."""
    d = 2 * speech.backbone.frame_dim
    a = speech.adapter
    if a is None:
        return Adapter.identity(d, n_classes)
    return Adapter(a.linear.weight.detach().float().numpy().copy(), a.linear.bias.detach().float().numpy().copy(),
                   float(a.beta), a.mean.detach().float().numpy().copy(), a.std.detach().float().numpy().copy())
