"""Mixed-corpus training and multi-corpus validation for the speech branch.

- **Corpora** come from a config: each has `train` / `val` / `test` data specs with whole speakers
  apart (`default_corpora()` derives them deterministically). A corpus marked `aux` (e.g. flat
  espeak-ng speech relabelled neutral) is trained on but is not a validation corpus.
- **Balance**: each corpus weighs the same in the loss, and within a corpus each of its classes the
  same (`balance_weights`).
- **A corpus without a class says nothing about it**: the loss of an item is a softmax over the
  classes its corpus has (`class_masks`), so nEMO (no disgust) never pushes disgust's probability
  down. An `aux` corpus can opt out (`"mask": false`): "flat voice = neutral" is meant to push
  every emotion down.
- **Selection** on the mean validation UA over corpora (`select_score`), never on one corpus or on
  held-out speakers.
- **Reports**: UA per corpus, prediction histogram, expected calibration error (`ece`).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import Item, corpus_of, load_spec, speaker_split
from ..errors import DataError
from ..fusion import unweighted_accuracy
from .loops import EpochPlan, fit_epochs, pad_frames, seed_everything
from .metrics import ece, fit_temperature, tempered  # noqa: F401  (re-exported)
from .recipe import MulticorpusRecipe
from .subspace import nuisance_basis, principal_basis, setting_groups, without  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

RAVDESS_SPLIT = {"train": "ravdess:actors=1-12", "val": "ravdess:actors=13-16", "test": "ravdess:actors=17-20"}
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)      # train / val / test speakers of a corpus without a fixed split
GRAD_CLIP = 5.0                        # gradient-norm clip of the head's updates


# ---- corpora and splits -------------------------------------------------------------------
@dataclass
class Corpus:
    name: str
    train: list[Item]
    val: list[Item] = field(default_factory=list)
    test: list[Item] = field(default_factory=list)
    aux: bool = False           # trained on, but not a validation / test corpus
    mask: bool = True           # loss over this corpus's classes only

    def classes(self, labels: Sequence[str]) -> list[int]:
        return sorted({labels.index(i.label) for i in self.train + self.val + self.test})


def default_corpora(seed: int = 0, names: Sequence[str] = ("nemo", "emotiontts-ko")) -> dict[str, dict]:
    """Speaker-disjoint train/val/test specs: RAVDESS actors 1–12 / 13–16 / 17–20 (17–20 held out as
    ever), every other corpus split 60/20/20 by `speaker_split` (emotiontts-ko within each script
    type: `ne*` speakers read neutral scripts, `em*` emotional ones)."""
    out = {"ravdess": dict(RAVDESS_SPLIT)}
    for name in names:
        items = load_spec(name)
        strata: dict[str, list[Item]] = {}
        for it in items:
            raw = it.speaker.removeprefix(f"{name}-")
            strata.setdefault(raw[:2] if name == "emotiontts-ko" else "", []).append(it)
        parts: list[set[str]] = [set(), set(), set()]
        for _, group in sorted(strata.items()):
            for k, p in enumerate(speaker_split(group, SPLIT_FRACTIONS, seed)):
                parts[k] |= {i.speaker.removeprefix(f"{name}-") for i in p}
        out[name] = {part: f"{name}:speakers={','.join(sorted(spk))}"
                     for part, spk in zip(("train", "val", "test"), parts)}
    return out


def load_corpora(spec: dict[str, dict]) -> dict[str, Corpus]:
    """Corpora from a config mapping name -> {train, val, test (data specs), aux, mask}."""
    out = {}
    for name, c in spec.items():
        get = lambda k: load_spec(c[k]) if c.get(k) else []  # noqa: E731
        out[name] = Corpus(name, get("train"), get("val"), get("test"), bool(c.get("aux", False)),
                           bool(c.get("mask", not c.get("aux", False))))
        if not out[name].train:
            raise DataError(f"corpus {name}: no training items ({c.get('train')!r})")
        for part in ("val", "test"):
            clash = {i.speaker for i in getattr(out[name], part)} & {i.speaker for i in out[name].train}
            if clash:
                raise DataError(f"corpus {name}: speakers in both train and {part}: {sorted(clash)[:5]}")
    return out


def corpora_from_items(train: Sequence[Item], val: Sequence[Item], test: Sequence[Item],
                       aux: Sequence[str] = ()) -> dict[str, Corpus]:
    """Group items into `Corpus` objects by corpus; corpora named in `aux` are trained on with
    an unmasked loss and never validated on."""
    out: dict[str, Corpus] = {}
    for part, items in (("train", train), ("val", val), ("test", test)):
        for it in items:
            name = corpus_of(it)
            c = out.setdefault(name, Corpus(name, [], aux=name in aux, mask=name not in aux))
            getattr(c, part).append(it)
    for c in out.values():
        if not c.train:
            raise DataError(f"corpus {c.name} has validation or test items but no training items")
        for part in ("val", "test"):
            clash = {i.speaker for i in getattr(c, part)} & {i.speaker for i in c.train}
            if clash:
                raise DataError(f"corpus {c.name}: speakers in both train and {part}: {sorted(clash)[:5]}")
    return out


def drop_rare_classes(corpora: dict[str, Corpus], labels: Sequence[str], min_clips: int) -> dict[str, list[str]]:
    """Remove from each corpus (train, val and test) the classes with fewer than `min_clips`
    training clips: a handful of clips says nothing about a class, and the balanced loss would
    weigh each of them like hundreds (CREMA-D's 4 angry and 3 neutral clips). Returns what went."""
    dropped: dict[str, list[str]] = {}
    for name, c in corpora.items():
        counts: dict[str, int] = {}
        for it in c.train:
            counts[it.label] = counts.get(it.label, 0) + 1
        rare = sorted(lab for lab in {i.label for i in c.train + c.val + c.test} if counts.get(lab, 0) < min_clips)
        if rare:
            for part in ("train", "val", "test"):
                setattr(c, part, [i for i in getattr(c, part) if i.label not in rare])
            dropped[name] = rare
    return dropped


# ---- balance and masking -------------------------------------------------------------------
def balance_weights(items: Sequence[Item], corpus: Sequence[str], labels: Sequence[str],
                    corpus_weight: Optional[dict[str, float]] = None) -> np.ndarray:
    """Per-item loss weights, mean 1: every corpus gets the same total (times `corpus_weight`),
    split equally over the classes it has, then equally over the items of that class."""
    counts: dict[tuple[str, str], int] = {}
    for it, c in zip(items, corpus):
        counts[(c, it.label)] = counts.get((c, it.label), 0) + 1
    n_classes = {c: sum(1 for (cc, _) in counts if cc == c) for c in set(corpus)}
    cw = corpus_weight or {}
    w = np.array([cw.get(c, 1.0) / (n_classes[c] * counts[(c, it.label)]) for it, c in zip(items, corpus)])
    return w * len(w) / w.sum()


def class_masks(corpora: dict[str, Corpus], labels: Sequence[str]) -> dict[str, torch.Tensor]:
    """Which classes each corpus's loss is over (all classes for a corpus with mask=False)."""
    out = {}
    for name, c in corpora.items():
        m = torch.zeros(len(labels), dtype=torch.bool)
        m[c.classes(labels) if c.mask else list(range(len(labels)))] = True
        out[name] = m
    return out


def masked_loss(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                smoothing: float = 0.1, absent: float = 0.0) -> torch.Tensor:
    """Weighted cross-entropy over each row's allowed classes (`mask` [B, C]) with label smoothing
    spread over the allowed classes only; absent classes get no gradient from that row. With
    `absent` > 0 that share of the loss is the plain cross-entropy over all classes (a weak "not
    this class either" for the classes a corpus lacks)."""
    if absent > 0:
        full = torch.ones_like(mask)
        return ((1 - absent) * masked_loss(logits, y, mask, weight, smoothing)
                + absent * masked_loss(logits, y, full, weight, smoothing))
    logp = F.log_softmax(logits.masked_fill(~mask, -1e4), -1)
    k = mask.sum(1, keepdim=True).clamp_min(1)
    target = mask.float() * (smoothing / k)
    target = target.scatter_add(1, y[:, None], torch.full_like(y[:, None], 1.0 - smoothing, dtype=target.dtype))
    loss = -(target * logp.masked_fill(~mask, 0.0)).sum(1)
    return (loss * weight).sum() / weight.sum()


# ---- models on cached features -------------------------------------------------------------
class LinearProbe(nn.Module):
    """Standardised mean+std pooled frames → dropout → linear (the quick probe of issue 13)."""

    def __init__(self, in_dim: int, n_classes: int, dropout: float = 0.2):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(in_dim, n_classes)

    def fit_scaler(self, x: torch.Tensor) -> "LinearProbe":
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-4))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop((x - self.mean) / self.std))


def make_collate(kind: str, crop: int = 0) -> Callable:
    """`frames`: pad [T, D] tensors (random crops of at most `crop` frames in training);
    `pooled`: stack vectors."""
    def collate(xs: Sequence[torch.Tensor], train: bool) -> tuple:
        if kind == "pooled":
            return (torch.stack(list(xs)).float(),)
        if train and crop:
            out = []
            for x in xs:
                if x.shape[0] > crop:
                    s = random.randrange(0, x.shape[0] - crop + 1)
                    x = x[s:s + crop]
                out.append(x)
            xs = out
        return pad_frames(xs)
    return collate


@torch.inference_mode()
def predict(model: nn.Module, xs: Sequence[torch.Tensor], collate: Callable, batch_size: int = 64,
            temperature: float = 1.0) -> np.ndarray:
    model.eval()
    order = sorted(range(len(xs)), key=lambda i: xs[i].shape[0])
    out = np.zeros((len(xs), 0))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        p = torch.softmax(model(*collate([xs[i] for i in idx], False)) / temperature, -1).double().numpy()
        if out.shape[1] == 0:
            out = np.zeros((len(xs), p.shape[1]))
        out[idx] = p
    return out


# ---- metrics --------------------------------------------------------------------------------
def histogram(pred: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Share of predictions per class."""
    counts = np.bincount(np.asarray(pred, dtype=int), minlength=len(labels))
    return {lab: round(float(c) / max(1, len(pred)), 4) for lab, c in zip(labels, counts)}


def report(p: np.ndarray, y: np.ndarray, labels: Sequence[str]) -> dict:
    """UA (over the classes present), WA, ECE, prediction histogram and its largest share."""
    pred = p.argmax(1)
    hist = histogram(pred, labels)
    return {"UA": unweighted_accuracy(y, pred, len(labels)), "WA": float((pred == y).mean()) if len(y) else 0.0,
            "ECE": ece(p, y, bins=15), "n": int(len(y)), "histogram": hist, "max_share": max(hist.values()),
            "true_max_share": max(np.bincount(y, minlength=len(labels)) / max(1, len(y)))}


def select_score(per_corpus: dict[str, dict]) -> float:
    """Model-selection score: the mean UA over corpora."""
    return float(np.mean([m["UA"] for m in per_corpus.values()])) if per_corpus else 0.0


# ---- the training loop ----------------------------------------------------------------------
def speaker_shifts(xs: Sequence[torch.Tensor], speakers: Sequence[str],
                   scale: float = 1.0) -> Callable[[int], torch.Tensor]:
    """shift(i): a random other training speaker's mean frame minus item i's speaker's mean frame;
    with `scale` != 1 that difference times a factor drawn uniformly from [0, scale] (> 1 reaches
    past the training speakers, towards voices and recordings further away)."""
    sums: dict[str, tuple[torch.Tensor, int]] = {}
    for x, s in zip(xs, speakers):
        t, n = sums.get(s, (0.0, 0))
        sums[s] = (t + x.float().sum(0), n + x.shape[0])
    names = sorted(sums)
    means = torch.stack([sums[s][0] / max(1, sums[s][1]) for s in names])
    own = [names.index(s) for s in speakers]
    if scale == 1.0:
        return lambda i: means[random.randrange(len(names))] - means[own[i]]
    return lambda i: random.uniform(0.0, scale) * (means[random.randrange(len(names))] - means[own[i]])



def shifted(x: torch.Tensor, speakers: Sequence[str], share: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(copies, their rows): a seeded `share` of the pooled vectors `x` [N, D], each moved from its
    speaker's mean vector to another training speaker's (any corpus): x - mean(own) + mean(other).
    The pooled head's form of `speaker_shifts`: the same emotion seen with many voices' and
    corpora's offsets, so a new corpus's offset moves the prediction less."""
    names = sorted(set(speakers))
    own = torch.tensor([names.index(s) for s in speakers])
    means = torch.stack([x[own == k].mean(0) for k in range(len(names))])
    g = torch.Generator().manual_seed(seed)
    rows = torch.nonzero(torch.rand(len(x), generator=g) < share).flatten()
    other = torch.randint(len(names), (len(rows),), generator=g)
    return x[rows] - means[own[rows]] + means[other], rows


@dataclass
class Split:
    """Features of one set of items, with labels and the corpus each item came from."""
    xs: list[torch.Tensor]
    y: np.ndarray
    corpus: list[str]


def gather(corpora: dict[str, Corpus], part: str, feats: Callable[[list[Item]], list[torch.Tensor]],
           labels: Sequence[str], names: Optional[Sequence[str]] = None) -> tuple[Split, list[Item]]:
    """The `part` ('train' / 'val' / 'test') items of the named corpora, with their features."""
    items, corpus = [], []
    for name in names if names is not None else list(corpora):
        part_items = getattr(corpora[name], part)
        items += part_items
        corpus += [name] * len(part_items)
    xs = feats(items) if items else []
    return Split(xs, np.array([labels.index(i.label) for i in items], dtype=int), corpus), items


def evaluate_corpora(model: nn.Module, split: Split, collate: Callable, labels: Sequence[str],
                     temperature: float = 1.0) -> dict[str, dict]:
    """`report()` per corpus of a split."""
    if not split.xs:
        return {}
    p = predict(model, split.xs, collate, temperature=temperature)
    corp = np.array(split.corpus)
    return {c: report(p[corp == c], split.y[corp == c], labels) | {"_p": p[corp == c]}
            for c in dict.fromkeys(split.corpus)}


def fit_multicorpus(model: nn.Module, train: Split, train_items: Sequence[Item], val: Split,
                    corpora: dict[str, Corpus], labels: Sequence[str], collate: Callable,
                    options: Optional[MulticorpusRecipe] = None, seed: int = 0,
                    log_every: int = 1) -> tuple[nn.Module, list[dict], float]:
    """Mixed-corpus training (balanced, class-masked loss); the epoch with the best mean
    validation UA over the validation corpora is kept. Returns (model, history, best score).
    `options` is the recipe's multi-corpus section (epochs, lr, batch_size, smoothing,
    weight_decay, patience, corpus_weight, absent, speaker_shift, shift_scale, ema).

    `speaker_shift`: the share of training clips whose frames are moved, as a whole, from their
    speaker's mean frame to another training speaker's (`speaker_shifts`): the head learns that a
    voice's (and a corpus's) constant offset says nothing about the emotion (`shift_scale`: see
    `speaker_shifts`). `ema` > 0: the model validated and kept is an exponential moving average of
    the weights (decay `ema` per step), which depends less on the last batches and on the seed
    than any single epoch's weights."""
    o = options or MulticorpusRecipe()
    seed_everything(seed)
    step, judged, opt = _masked_step(model, train, train_items, corpora, labels, collate, o)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, o.epochs))
    history: list[dict] = []

    def validate(ep: int, loss: float) -> float:
        per = {c: m for c, m in evaluate_corpora(judged, val, collate, labels).items() if not corpora[c].aux}
        score = select_score(per)
        history.append({"epoch": ep + 1, "train_loss": loss, "val_mean_UA": score}
                       | {f"val_UA_{c}": round(m["UA"], 4) for c, m in per.items()})
        if log_every and (ep + 1) % log_every == 0:
            log.info("epoch %d: loss %.3f, val mean UA %.3f (%s)", ep + 1, loss, score,
                     ", ".join(f"{c} {m['UA']:.3f}" for c, m in per.items()))
        return score

    plan = EpochPlan(len(train.xs), o.epochs, o.batch_size, sched, o.patience)
    best = fit_epochs(model, plan, step, validate, judged)
    return model, history, best.score


def _masked_step(model: nn.Module, train: Split, train_items: Sequence[Item], corpora: dict[str, Corpus],
                 labels: Sequence[str], collate: Callable, o: MulticorpusRecipe):
    """(step(batch indices) -> loss, the model validated (an EMA copy with `o.ema` > 0), the
    optimiser) of `fit_multicorpus`: balanced, class-masked loss with speaker shifts."""
    shift = (speaker_shifts(train.xs, [i.speaker or i.id for i in train_items], o.shift_scale)
             if o.speaker_shift > 0 else None)
    masks = class_masks(corpora, labels)
    mask = torch.stack([masks[c] for c in train.corpus])
    weight = torch.tensor(balance_weights(train_items, train.corpus, labels, o.corpus_weight), dtype=torch.float32)
    y = torch.tensor(train.y)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr,
                            weight_decay=o.weight_decay)
    avg = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(o.ema)) if o.ema > 0 else None

    def step(idx) -> float:
        batch = [train.xs[i] for i in idx]
        if shift is not None:
            batch = [x + shift(i).to(x.dtype) if random.random() < o.speaker_shift else x
                     for x, i in zip(batch, idx)]
        loss = masked_loss(model(*collate(batch, True)), y[idx], mask[idx], weight[idx], o.smoothing, o.absent)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        if avg is not None:
            avg.update_parameters(model)
        return float(loss.detach())
    return step, (avg.module if avg is not None else model), opt


@dataclass
class ProbeOptions:
    """How `fit_probe` fits: the L2 strengths tried, the `absent` share of masked_loss, the
    principal directions used (0: all dimensions), per-corpus loss weights, L-BFGS iterations,
    and whether the pooled head is refitted on train + validation speakers (`pooled.fit_pooled`)."""
    l2_grid: Sequence[float] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    absent: float = 0.0
    components: int = 0
    corpus_weight: Optional[dict[str, float]] = None
    max_iter: int = 200
    refit: bool = False           # fit_pooled: refit on train + validation with the chosen L2
    speaker_shift: float = 0.0    # share of training vectors that also get a shifted copy (`shifted`)
    nuisance: int = 0             # between-setting directions removed before fitting (`nuisance_basis`)

    @classmethod
    def of(cls, mc: MulticorpusRecipe, **overrides) -> "ProbeOptions":
        """The options a recipe's `speech.multicorpus` section asks for (`overrides` win)."""
        return cls(**{"l2_grid": mc.l2_grid, "absent": mc.absent, "components": mc.components,
                      "corpus_weight": mc.corpus_weight, "refit": mc.refit, "speaker_shift": mc.speaker_shift,
                      "nuisance": mc.nuisance, **overrides})


def fit_probe(train: Split, train_items: Sequence[Item], val: Split, corpora: dict[str, Corpus],
              labels: Sequence[str], options: Optional[ProbeOptions] = None) -> tuple[LinearProbe, list[dict], float]:
    """A linear probe on pooled vectors, fitted full-batch (L-BFGS) with the balanced, class-masked
    loss plus l2 · |W|²; the L2 strength with the best mean validation UA over corpora is kept.
    `options.components` > 0: fitted on the top principal directions of the standardised training
    vectors (much faster for thousands of dimensions) and folded back into a probe on all of them."""
    o = options or ProbeOptions()
    l2_grid, absent, max_iter, components, corpus_weight = o.l2_grid, o.absent, o.max_iter, o.components, o.corpus_weight
    torch.manual_seed(0)
    x = torch.stack(train.xs).float()
    masks = class_masks(corpora, labels)
    mask = torch.stack([masks[c] for c in train.corpus])
    weight = torch.tensor(balance_weights(train_items, train.corpus, labels, corpus_weight), dtype=torch.float32)
    y = torch.tensor(train.y)
    collate = make_collate("pooled")
    scaler = LinearProbe(x.shape[1], len(labels), dropout=0.0).fit_scaler(x)
    if o.speaker_shift > 0:
        extra, idx = shifted(x, [i.speaker or i.id for i in train_items], o.speaker_shift)
        rows = torch.cat([torch.arange(len(y)), idx])          # each original, then each copy's source
        x, y, mask, weight = torch.cat([x, extra]), y[rows], mask[rows], weight[rows]
    xs = (x - scaler.mean) / scaler.std
    n = len(train_items)                                        # the original rows (before shifted copies)
    blind = nuisance_basis(xs[:n], y[:n], setting_groups(train_items), train.corpus, o.nuisance) if o.nuisance else None
    xs = without(xs, blind)
    basis = principal_basis(xs, components)
    z = xs if basis is None else xs @ basis
    best, best_state, history = -1.0, None, []
    for l2 in l2_grid:
        lin = nn.Linear(z.shape[1], len(labels))
        opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = masked_loss(lin(z), y, mask, weight, 0.0, absent) + l2 * lin.weight.pow(2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        probe = LinearProbe(x.shape[1], len(labels), dropout=0.0).fit_scaler(x)
        with torch.no_grad():
            probe.out.weight.copy_(without(lin.weight if basis is None else lin.weight @ basis.T, blind))
            probe.out.bias.copy_(lin.bias)
        per = {c: m for c, m in evaluate_corpora(probe, val, collate, labels).items() if not corpora[c].aux}
        score = select_score(per)
        history.append({"l2": l2, "val_mean_UA": score} | {f"val_UA_{c}": round(m["UA"], 4) for c, m in per.items()})
        if score > best:
            best, best_state = score, probe
    return best_state, history, best
