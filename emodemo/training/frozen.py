"""The first-stage default bundle: heads trained on frozen backbones (GE2E frames, MiniLM
embeddings cached once), then fusion fitted on paired RAVDESS validation data."""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..bundle import LABELS, build_speech, build_text, bundle_size, default_config, save_bundle
from ..data import Item, goemotions, ravdess
from ..fusion import fit_fusion
from .cards import model_card
from .features import backbone_extractor, extract_all
from .loops import EpochPlan, class_weights, fit_epochs, pad_frames, seed_everything
from .metrics import metrics
from .rundir import TRAIN_LOG
from .text import soft_targets_for

log = logging.getLogger(TRAIN_LOG)

VAL_ACTORS = (17, 18, 19, 20)   # speaker-independent validation: two male, two female actors
LINEAR_BATCH = 256              # batch of the text head's linear fit on cached embeddings
SPEECH_CROP = 200               # random-crop length (frames, 2 s of GE2E) of the speech head


# ---- speech: frozen backbone, cached frames ----------------------------------------------
def backbone_frames(backbone: nn.Module, items: Sequence[Item]) -> list[torch.Tensor]:
    """Frame outputs of a frozen backbone for each item (fp16, [T', D]; training.features)."""
    return [f.half() for f in extract_all(items, backbone_extractor(backbone))]


def _random_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """Half the time, a random `crop`-frame window of a longer sequence (augmentation)."""
    if crop and x.shape[0] > crop and random.random() < 0.5:
        s = random.randrange(0, x.shape[0] - crop)
        return x[s:s + crop]
    return x


@dataclass
class HeadOptions:
    """How `train_head` fits a frames head: epochs, learning rate, batch size, seed and the
    random-crop length in frames (0: whole clips)."""
    epochs: int = 40
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    crop: int = 0


def train_head(head: nn.Module, xs: list[torch.Tensor], y: list[int], xv: list[torch.Tensor],
               yv: list[int], n_classes: int, options: Optional[HeadOptions] = None) -> tuple[dict, list[dict]]:
    """Train a head on cached frames with class-balanced loss; keep the best epoch by val UA."""
    o = options or HeadOptions()
    seed_everything(o.seed)
    opt = torch.optim.AdamW(head.parameters(), lr=o.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs)
    crit = nn.CrossEntropyLoss(weight=class_weights(y, n_classes), label_smoothing=0.1)
    history: list[dict] = []

    def step(idx) -> float:
        x, lengths = pad_frames([_random_crop(xs[i], o.crop) for i in idx])
        loss = crit(head(x, lengths), torch.tensor([y[i] for i in idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    def validate(ep: int, loss: float) -> float:
        m = metrics(yv, predict_head(head, xv).argmax(1), n_classes)
        history.append({"epoch": ep + 1, "loss": loss, "val_UA": m["UA"], "val_WA": m["WA"]})
        return m["UA"]

    fit_epochs(head, EpochPlan(len(xs), o.epochs, o.batch_size, sched), step, validate)
    return metrics(yv, predict_head(head, xv).argmax(1), n_classes), history


@torch.inference_mode()
def predict_head(head: nn.Module, xs: list[torch.Tensor], batch_size: int = 64) -> np.ndarray:
    head.eval()
    out = []
    for b in range(0, len(xs), batch_size):
        x, lengths = pad_frames(xs[b:b + batch_size])
        out.append(torch.softmax(head(x, lengths), -1))
    return torch.cat(out).numpy()


# ---- text: frozen encoder, cached pooled embeddings --------------------------------------
@torch.inference_mode()
def text_embeddings(model, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """Mean-pooled encoder embeddings [N, hidden], computed in length-sorted batches."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), model.encoder.config.hidden_size)
    for b in tqdm(range(0, len(order), batch_size), desc="text embeddings", leave=False):
        idx = order[b:b + batch_size]
        enc = model.tokenize([texts[i] for i in idx])
        enc.pop("token_type_ids", None)
        out[idx] = model.pooled(**enc)
    return out


def train_linear(classifier: nn.Linear, x: torch.Tensor, t: torch.Tensor, xv: torch.Tensor,
                 yv: np.ndarray, n_classes: int, epochs: int = 30, lr: float = 3e-3,
                 seed: int = 0) -> dict:
    """Class-balanced soft-target training of a linear head on fixed embeddings."""
    seed_everything(seed)
    w = class_weights(t.argmax(1).numpy(), n_classes)
    opt = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)

    def step(idx) -> float:
        logp = F.log_softmax(classifier(x[idx]), -1)
        loss = -(t[idx] * logp * w).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    def validate(ep: int, loss: float) -> float:
        with torch.no_grad():
            return metrics(yv, classifier(xv).argmax(1).numpy(), n_classes)["macro_F1"]

    fit_epochs(classifier, EpochPlan(len(x), epochs, LINEAR_BATCH, order=lambda: torch.randperm(len(x))),
               step, validate)
    with torch.no_grad():
        return metrics(yv, classifier(xv).argmax(1).numpy(), n_classes)


# ---- the default bundle ------------------------------------------------------------------
def _text_embeddings_cached(text, tr: Sequence[Item], dv: Sequence[Item],
                            cache: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if cache and Path(cache).exists():
        return torch.load(cache)
    emb_tr = text_embeddings(text, [i.transcript for i in tr])
    emb_dv = text_embeddings(text, [i.transcript for i in dv])
    if cache:
        torch.save((emb_tr, emb_dv), cache)
    return emb_tr, emb_dv


def train_frozen_default(out_dir: str | Path, seed: int = 0, text_cache: Optional[str] = None) -> dict:
    """Train both heads on frozen backbones (GE2E, MiniLM), fit fusion, write a bundle."""
    seed_everything(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = default_config()
    cfg["version"] = "1"
    n = len(LABELS)
    t0 = time.time()
    speech = build_speech(cfg)
    train_items = ravdess(actors=[a for a in range(1, 21) if a not in VAL_ACTORS])
    val_items = ravdess(actors=VAL_ACTORS)
    xs = backbone_frames(speech.backbone, train_items)
    xv = backbone_frames(speech.backbone, val_items)
    ys = [LABELS.index(i.label) for i in train_items]
    yv = [LABELS.index(i.label) for i in val_items]
    m_speech, hist = train_head(speech.head, xs, ys, xv, yv, n, HeadOptions(seed=seed, crop=SPEECH_CROP))
    p_audio_val = predict_head(speech.head, xv)
    log.info("speech head: %s", {k: v for k, v in m_speech.items() if k != "confusion"})

    text = build_text(cfg)
    tr, dv = goemotions("train"), goemotions("dev")
    emb_tr, emb_dv = _text_embeddings_cached(text, tr, dv, text_cache)
    y_dv = np.array([LABELS.index(i.label) for i in dv])
    m_text = train_linear(text.classifier, emb_tr, soft_targets_for(tr, LABELS), emb_dv, y_dv, n, seed=seed)
    log.info("text head: %s", {k: v for k, v in m_text.items() if k != "confusion"})

    # Fusion on paired RAVDESS validation data (audio + its transcript).
    p_text_val = text.predict_proba([i.transcript for i in val_items]).numpy()
    fusion, fused_ua = fit_fusion(p_audio_val, p_text_val, np.array(yv))
    cfg["fusion"] = fusion.to_config()
    m_fused = metrics(yv, fusion(p_audio_val, p_text_val).argmax(1), n)
    report = {"speech_val": m_speech, "text_dev": m_text, "fused_val": m_fused,
              "val_actors": list(VAL_ACTORS), "train_seconds": round(time.time() - t0, 1),
              "history": hist, "seed": seed}
    cfg["training"] = {"recipe": "frozen-backbones", "seed": seed, "val_actors": list(VAL_ACTORS),
                       "metrics": {"speech_val_UA": m_speech["UA"], "speech_val_WA": m_speech["WA"],
                                   "speech_val_macro_F1": m_speech["macro_F1"],
                                   "text_dev_macro_F1": m_text["macro_F1"], "text_dev_UA": m_text["UA"],
                                   "fused_val_UA": m_fused["UA"]}}
    out = save_bundle(out_dir, cfg, speech, text, card="(card pending)\n")
    (Path(out) / "README.md").write_text(model_card(cfg, report, bundle_size(out)))
    (Path(out) / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
