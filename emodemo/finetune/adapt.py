"""Speech adaptation from a few hundred corrections: a gated residual adapter on frozen-backbone
features (the model is `speech.ResidualAdapter`).

    logits = head + g(z) · ((beta − 1) · head + W · z + c)       z = (pooled stats − mean) / std

`head` are the emotion head's logits (never changed by fine-tuning). W, c = 0 and beta = 1 is the
head alone; beta = 0 with W free is a linear probe. g(z) is a *domain gate*: a logistic regression
that tells the corrected clips (the user's voices, language, microphone) from the replay clips (the
base's training audio), so the correction applies to audio like the user's and leaves audio like the
old training data as it was. Without the gate, g = 1.

W and c are fitted full-batch with L-BFGS on

    ρ · CE(corrections) + (1 − ρ) · CE(replay) + λ/2 · ‖W‖²

each cross-entropy class-balanced over the classes present *in that part*. Rows of W and c for
classes the corrections lack stay zero, so those classes keep the head's evidence. The gate on/off,
beta and λ are chosen by speaker/recording-grouped cross-validation on the training corrections,
among candidates that stay within `tolerance` of the base bundle on the replay guard. Each run
refits from the head on all corrections in the store, so fine-tuning a fine-tuned bundle replaces
its adapter (the store still holds the earlier corrections). The linear probe (logistic regression on
the corrections alone) is measured alongside as the baseline to beat.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..training.metrics import ua
from .features import Feats

log = logging.getLogger(__name__)

GATES = (False, True)                    # domain gate off / on
BETAS = (1.0, 0.5, 0.0)                  # weight of the head's logits inside the correction
LAMBDAS = (0.01, 0.1, 1.0)               # L2 on W (features standardised)
CORRECTION_SHARE = 0.5                   # ρ: corrections vs replay in the loss
GATE_C = 0.05                            # inverse L2 strength of the domain gate
CV_FOLDS = 4
LBFGS_STEPS = 60
NO_GATE_BIAS = 30.0                      # sigmoid(30) = 1 in float32
SPAN_MAX_SHARE = 0.5                     # fit on the rows' span when rows < this share of dims


@dataclass
class Adapter:
    """A fitted adapter (numpy, float32); `u` = None means no gate (g = 1)."""
    W: np.ndarray        # [C, D]
    c: np.ndarray        # [C]
    beta: float
    mean: np.ndarray     # [D]
    std: np.ndarray      # [D]
    u: Optional[np.ndarray] = None    # [D] gate weight
    d: float = NO_GATE_BIAS           # gate bias

    def z(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def gate(self, x: np.ndarray) -> np.ndarray:
        if self.u is None:
            return np.ones(len(x), np.float32)
        return 1.0 / (1.0 + np.exp(-np.clip(self.z(x) @ self.u + self.d, -60, 60)))

    def logits(self, x: np.ndarray, head: np.ndarray) -> np.ndarray:
        delta = (self.beta - 1.0) * head + self.z(x) @ self.W.T + self.c
        return head + self.gate(x)[:, None] * delta

    @staticmethod
    def identity(dim: int, n: int) -> "Adapter":
        return Adapter(np.zeros((n, dim), np.float32), np.zeros(n, np.float32), 1.0,
                       np.zeros(dim, np.float32), np.ones(dim, np.float32))


def _balanced_weights(y: np.ndarray, n: int) -> np.ndarray:
    """Per-item weights: each class present gets the same total weight; items sum to 1."""
    counts = np.bincount(y, minlength=n).astype(np.float64)
    return 1.0 / ((counts > 0).sum() * counts[y]) if len(y) else np.zeros(0)


def standardisation(corr: Feats, replay: Feats) -> tuple[np.ndarray, np.ndarray]:
    allx = np.concatenate([corr.x, replay.x]) if len(replay) else corr.x
    return allx.mean(0).astype(np.float32), (allx.std(0) + 1e-4).astype(np.float32)


def fit_gate(corr: Feats, replay: Feats, mean: np.ndarray, std: np.ndarray) -> tuple[Optional[np.ndarray], float]:
    """The domain gate: logistic regression, corrected clips (1) vs replay clips (0)."""
    if not len(replay):
        return None, NO_GATE_BIAS
    from sklearn.linear_model import LogisticRegression
    x = (np.concatenate([corr.x, replay.x]) - mean) / std
    y = np.r_[np.ones(len(corr)), np.zeros(len(replay))]
    clf = LogisticRegression(C=GATE_C, class_weight="balanced", max_iter=2000).fit(x, y)
    return clf.coef_[0].astype(np.float32), float(clf.intercept_[0])


class one_thread:
    """L-BFGS on these small problems is thousands of tiny tensor ops: a second OpenMP thread only
    adds synchronisation (and stalls badly when another process holds a core)."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def fit(corr: Feats, replay: Feats, n_classes: int, beta: float, lam: float, mean: np.ndarray,
        std: np.ndarray, gated: bool = False, gate: Optional[tuple] = None) -> Adapter:
    """Fit the gate (if `gated`; `gate` = an already fitted (u, d)), then W and c for a fixed beta
    and λ (see the module docstring); the corrections weigh CORRECTION_SHARE against the replay."""
    rho, steps = CORRECTION_SHARE, LBFGS_STEPS
    torch.manual_seed(0)
    u, d = (gate or fit_gate(corr, replay, mean, std)) if gated else (None, NO_GATE_BIAS)
    shell = Adapter(np.zeros((n_classes, corr.x.shape[1]), np.float32), np.zeros(n_classes, np.float32),
                    beta, mean, std, u, d)
    present = np.zeros(n_classes, bool)
    present[np.unique(corr.y)] = True
    mask = torch.from_numpy(present.astype(np.float32))
    parts = [(corr, rho if len(replay) else 1.0)] + ([(replay, 1.0 - rho)] if len(replay) else [])
    data = []
    for f, share in parts:
        data.append((torch.from_numpy(shell.z(f.x).astype(np.float32)), torch.from_numpy(f.b.astype(np.float32)),
                     torch.from_numpy(shell.gate(f.x).astype(np.float32))[:, None], torch.from_numpy(f.y),
                     torch.from_numpy((share * _balanced_weights(f.y, n_classes)).astype(np.float32))))
    W = torch.zeros(n_classes, corr.x.shape[1], requires_grad=True)
    c = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, c], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        Wm, cm = W * mask[:, None], c * mask
        loss = 0.5 * lam * (Wm ** 2).sum()
        for z, b, g, y, w in data:
            out = b + g * ((beta - 1.0) * b + z @ Wm.T + cm)
            loss = loss + (w * F.cross_entropy(out, y, reduction="none")).sum()
        loss.backward()
        return loss

    with one_thread():
        opt.step(closure)
    with torch.no_grad():
        shell.W = (W * mask[:, None]).numpy().astype(np.float32)
        shell.c = (c * mask).numpy().astype(np.float32)
    return shell


def grouped_folds(groups: Sequence[str], y: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """k folds of item indices with whole groups (speakers/recordings) in one fold, each fold's
    classes as close to the whole set's shares as the groups allow (scikit-learn's
    StratifiedGroupKFold). Unstratified folds of a few dozen clips starve each training part of
    the classes its fold holds out: cross-validated UA fell below chance (0.10-0.23 for 17 clips
    of 4 classes that a probe reads at 0.75 on held-out clips) and a clearly useful fine-tune
    was refused."""
    from sklearn.model_selection import StratifiedGroupKFold
    y = np.asarray(y)
    if len(set(groups)) < k:  # too few groups: fall back to items, classes spread over the folds
        order = np.argsort(y, kind="stable")
        return [order[i::k] for i in range(k)]
    with warnings.catch_warnings():   # "the least populated class has fewer members than k"
        warnings.simplefilter("ignore", UserWarning)
        split = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return [np.sort(te) for _, te in split.split(np.zeros(len(y)), y, list(groups))]


def probe_adapter(corr: Feats, replay: Feats, n_classes: int, mean: np.ndarray, std: np.ndarray,
                  gate: Optional[tuple] = None) -> Adapter:
    """The linear probe as an adapter candidate: beta = 0 and the probe's logits on the gated
    (user-like) audio; classes the corrections lack get a very low logit there, the head elsewhere."""
    clf = linear_probe(corr, mean, std)
    W = np.zeros((n_classes, corr.x.shape[1]), np.float32)
    c = np.full(n_classes, -30.0, np.float32)
    coef, icpt = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:          # sklearn's binary case: one row for the second class
        coef, icpt = np.vstack([-coef / 2, coef / 2]), np.r_[-icpt / 2, icpt / 2]
    for row, k in enumerate(clf.classes_):
        W[k], c[k] = coef[row], icpt[row]
    u, d = gate if gate is not None else ((None, NO_GATE_BIAS) if not len(replay) else fit_gate(corr, replay, mean, std))
    return Adapter(W, c, 0.0, mean, std, u, d)


def linear_probe(corr: Feats, mean: np.ndarray, std: np.ndarray, C: float = 1.0):
    """The baseline: logistic regression on standardised pooled features of the corrections alone."""
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=C, class_weight="balanced", max_iter=2000).fit((corr.x - mean) / std, corr.y)


def probe_predict(clf, x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return clf.classes_[clf.predict_proba((x - mean) / std).argmax(1)]


@dataclass
class Span:
    """The standardised rows of the corrections and the replay, in an orthonormal basis Q [D, r]
    of their span (r = rows < D), or as they are (Q = None) when there are not clearly fewer rows
    than dimensions.

    Every fit in `choose` (the adapter's W, the domain gate, the probe) sees its weights only
    through z · Wᵀ and an L2 penalty on them, so the optimum lies in the rows' span, and each
    L-BFGS step from W = 0 is a combination of gradients that lie in it. Fitting V = W · Q in r
    dimensions takes the same steps (Q keeps every norm and inner product) at r/D of the cost:
    ~470 rows of 6,144 dimensions, 13x fewer multiply-adds; W = V · Qᵀ. A row outside the span
    (the guard) is projected: its component off the span meets W = 0."""
    mean: np.ndarray     # [D]
    std: np.ndarray      # [D]
    q: Optional[np.ndarray] = None    # [D, r]

    @staticmethod
    def of(corr: Feats, replay: Feats, mean: Optional[np.ndarray] = None,
           std: Optional[np.ndarray] = None) -> "Span":
        """The span of these rows, standardised by `mean`/`std` (default: their own)."""
        if mean is None or std is None:
            mean, std = standardisation(corr, replay)
        if len(corr) + len(replay) > SPAN_MAX_SHARE * len(mean):
            return Span(mean, std)
        z = (np.concatenate([corr.x, replay.x]) if len(replay) else corr.x) - mean
        q, _ = np.linalg.qr((z / std).astype(np.float64).T)
        return Span(mean, std, q.astype(np.float32))

    def standardisation(self) -> tuple[np.ndarray, np.ndarray]:
        """mean and std for fits on projected rows (already standardised there)."""
        if self.q is None:
            return self.mean, self.std
        return np.zeros(self.q.shape[1], np.float32), np.ones(self.q.shape[1], np.float32)

    def project(self, f: Feats) -> Feats:
        """Rows in the basis' coordinates, standardised (as they are without a basis)."""
        if self.q is None:
            return f
        return Feats((((f.x - self.mean) / self.std) @ self.q).astype(np.float32), f.b, f.y, f.groups)

    def lift(self, a: Adapter) -> Adapter:
        """An adapter fitted on projected rows, on the features themselves."""
        if self.q is None:
            return a
        u = None if a.u is None else (a.u @ self.q.T).astype(np.float32)
        return Adapter((a.W @ self.q.T).astype(np.float32), a.c, a.beta, self.mean, self.std, u, a.d)


def _cv_splits(corr: Feats, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, stratified (train, test) index pairs whose training part has 2+ classes."""
    k = min(CV_FOLDS, max(2, len(set(corr.groups))))
    folds = [f for f in grouped_folds(corr.groups, corr.y, k, seed) if len(f)]
    splits = [(np.setdiff1d(np.arange(len(corr)), te), te) for te in folds]
    return [(tr, te) for tr, te in splits if len(set(corr.y[tr].tolist())) >= 2]


def _row(corr: Feats, guard: Feats, oof: np.ndarray, a_all: Adapter, classes: list, **setting) -> dict:
    """A candidate's line of the table: CV UA from its out-of-fold logits, guard UA of a_all."""
    ok = ~np.isnan(oof[:, 0])
    cv = ua(corr.y[ok], oof[ok].argmax(1), classes) if ok.any() else float("nan")
    g = ua(guard.y, a_all.logits(guard.x, guard.b).argmax(1)) if len(guard) else None
    return {**setting, "cv_UA": round(cv, 4), "guard_UA": None if g is None else round(g, 4),
            "adapter": a_all, "oof": oof[ok], "oof_y": corr.y[ok]}


def _candidates(corr: Feats, replay: Feats, guard: Feats, n_classes: int, mean: np.ndarray,
                std: np.ndarray, splits: list, tick: Callable[[int], None]) -> list[dict]:
    """Every (gate, beta, λ) setting and the linear probe, cross-validated on `splits`; the
    domain gate depends on the fold only, so it is fitted once per fold. `tick(k)` after step k."""
    classes = sorted(set(corr.y.tolist()))
    gates: dict = {}
    if len(replay):
        for j, (tr, _) in enumerate(splits):
            gates[j] = fit_gate(corr.take(tr), replay, mean, std)
            tick(j + 1)
        gates["all"] = fit_gate(corr, replay, mean, std)
    step = len(gates)
    table = []
    for gated in (GATES if len(replay) else (False,)):
        for beta in BETAS:
            for lam in LAMBDAS:
                oof = np.full((len(corr), n_classes), np.nan, np.float32)   # out-of-fold logits
                for j, (tr, te) in enumerate(splits):
                    a = fit(corr.take(tr), replay, n_classes, beta, lam, mean, std, gated, gate=gates.get(j))
                    oof[te] = a.logits(corr.x[te], corr.b[te])
                a_all = fit(corr, replay, n_classes, beta, lam, mean, std, gated, gate=gates.get("all"))
                table.append(_row(corr, guard, oof, a_all, classes, gate=gated, beta=beta, **{"lambda": lam}))
                log.info("adapter gate %s beta %.2f lambda %g: CV UA %.3f, guard UA %s", gated, beta, lam,
                         table[-1]["cv_UA"], table[-1]["guard_UA"])
                tick(step + len(table))
    # the linear probe itself (gated when there is replay) competes on the same terms
    oof = np.full((len(corr), n_classes), np.nan, np.float32)
    for j, (tr, te) in enumerate(splits):
        oof[te] = probe_adapter(corr.take(tr), replay, n_classes, mean, std, gates.get(j)).logits(corr.x[te], corr.b[te])
        tick(step + len(table) + j + 1)
    a_all = probe_adapter(corr, replay, n_classes, mean, std, gates.get("all"))
    table.append(_row(corr, guard, oof, a_all, classes, gate=bool(len(replay)), beta=0.0, **{"lambda": "probe"}))
    return table


def choose(corr: Feats, replay: Feats, guard: Feats, base: Adapter, n_classes: int,
           tolerance: float = 0.02, seed: int = 0,
           progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Pick (gate, beta, λ) by grouped CV UA on the training corrections, among candidates whose UA
    on the replay guard stays within `tolerance` of the base bundle (`base`: its adapter, identity
    when it has none); the winner refitted on all training corrections is returned as "adapter".
    `progress(k, n)` after each domain gate and each candidate setting (the slow part of a run).
    The fits run on the rows' span (`Span`): the same adapters, a fraction of the work."""
    span = Span.of(corr, replay)
    classes = sorted(set(corr.y.tolist()))
    splits = _cv_splits(corr, seed)
    guard_base = ua(guard.y, base.logits(guard.x, guard.b).argmax(1)) if len(guard) else None
    base_cv = ua(corr.y, base.logits(corr.x, corr.b).argmax(1), classes)
    n_gates = len(splits) + 1 if len(replay) else 0
    total = n_gates + (len(GATES) if len(replay) else 1) * len(BETAS) * len(LAMBDAS) + len(splits) + 1
    tick = (lambda k: progress(k, total)) if progress else (lambda k: None)
    table = _candidates(span.project(corr), span.project(replay), span.project(guard), n_classes,
                        *span.standardisation(), splits, tick)
    tick(total)
    allowed = [r for r in table if guard_base is None or r["guard_UA"] >= guard_base - tolerance - 1e-9]
    # ties: prefer the gate, then more of the head, then stronger regularisation
    best = max(allowed or table, key=lambda r: (r["cv_UA"], r["gate"], r["beta"],
                                                 -1 if r["lambda"] == "probe" else r["lambda"]))
    return {"adapter": span.lift(best["adapter"]), "gate": best["gate"], "beta": best["beta"],
            "lambda": best["lambda"], "kind": "linear probe" if best["lambda"] == "probe" else "adapter",
            "cv_UA": best["cv_UA"], "cv_UA_base": round(base_cv, 4),
            "guard_UA_base": None if guard_base is None else round(guard_base, 4),
            "guard_UA": best["guard_UA"], "guard_ok": bool(allowed),
            "table": [{k: v for k, v in r.items() if k not in ("adapter", "oof", "oof_y")} for r in table],
            "oof": best["oof"], "oof_y": best["oof_y"], "mean": span.mean, "std": span.std}


def refit(choice: dict, corr: Feats, replay: Feats, n_classes: int) -> Adapter:
    """The setting `choose` picked, fitted again on `corr` (e.g. all corrections)."""
    span = Span.of(corr, replay, choice["mean"], choice["std"])
    pc, pr, (mean, std) = span.project(corr), span.project(replay), span.standardisation()
    if choice["lambda"] == "probe":
        return span.lift(probe_adapter(pc, pr, n_classes, mean, std))
    return span.lift(fit(pc, pr, n_classes, choice["beta"], choice["lambda"], mean, std, choice["gate"]))


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
        a.gate_weight.copy_(torch.from_numpy(np.zeros(d, np.float32) if adapter.u is None else adapter.u))
        a.gate_bias.fill_(float(adapter.d))


def from_model(speech, n_classes: int) -> Adapter:
    """The model's current adapter (identity when it has none)."""
    a = speech.adapter
    if a is None:
        return Adapter.identity(2 * speech.backbone.frame_dim, n_classes)
    np_ = lambda t: t.detach().float().numpy().copy()  # noqa: E731
    u = np_(a.gate_weight)
    return Adapter(np_(a.linear.weight), np_(a.linear.bias), float(a.beta), np_(a.mean), np_(a.std),
                   None if not np.any(u) else u, float(a.gate_bias))
