"""The speech branch: a waveform dataset with perturbation and SpecAugment, and transfer learning
of a speaker backbone to emotion (head warm-up, then the backbone unfrozen; DDP under torchrun)."""
from __future__ import annotations

import logging
import random
import time
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .. import audio as A
from ..data import Item
from .loops import BestEpoch, class_weights, pad_frames, seed_everything
from .metrics import metrics
from .recipe import Recipe
from .rundir import TRAIN_LOG, Run, dist_setup

log = logging.getLogger(TRAIN_LOG)


class SpeechDataset(torch.utils.data.Dataset):
    """Items → (features, label). In training mode: speed/gain/noise perturbation, random crop to
    `max_seconds`, SpecAugment. Decoded waveforms are cached in memory."""

    def __init__(self, items: Sequence[Item], labels: Sequence[str], feature: str, train: bool,
                 cfg: Optional[dict] = None):
        self.items, self.labels, self.feature, self.train = list(items), list(labels), feature, train
        cfg = cfg or {}
        self.perturb = cfg.get("perturb", {}) if train else {}
        self.max_samples = int(cfg.get("max_seconds", 0) * A.SAMPLE_RATE) if train else 0
        self.specaug = A.SpecAugment(**cfg["specaugment"]) if train and cfg.get("specaugment") else None
        self._wavs: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def wav(self, i: int) -> np.ndarray:
        if i not in self._wavs:
            self._wavs[i] = A.load_audio(self.items[i].audio)
        return self._wavs[i]

    def _perturb(self, wav: np.ndarray) -> np.ndarray:
        p = self.perturb
        x = torch.from_numpy(wav)
        if p.get("speed"):
            f = random.choice(p["speed"])
            if f != 1.0:  # resampling trick: play back at another rate (pitch and tempo change)
                x = torchaudio_resample(x, int(A.SAMPLE_RATE * f), A.SAMPLE_RATE)
        if p.get("gain_db"):
            x = x * 10 ** (random.uniform(*p["gain_db"]) / 20)
        if p.get("noise_snr_db") and random.random() < p.get("noise_p", 0.5):
            snr = random.uniform(*p["noise_snr_db"])
            power = x.pow(2).mean().clamp_min(1e-10)
            x = x + torch.randn_like(x) * torch.sqrt(power / 10 ** (snr / 10))
        return x.clamp(-1, 1).numpy()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        wav = self.wav(i)
        if self.train:
            if self.max_samples and wav.size > self.max_samples:
                s = random.randrange(0, wav.size - self.max_samples)
                wav = wav[s:s + self.max_samples]
            wav = self._perturb(wav)
        feats = A.features(self.feature, wav)
        if self.specaug is not None:
            feats = self.specaug(feats)
        return feats, self.labels.index(self.items[i].label)


def torchaudio_resample(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    import torchaudio
    return torchaudio.functional.resample(x, orig, new)


def pad_collate(batch):
    feats, labels = zip(*batch)
    x, lengths = pad_frames(list(feats))
    return x, lengths, torch.tensor(labels)


@torch.inference_mode()
def speech_proba(model: nn.Module, ds: SpeechDataset, batch_size: int = 16,
                 temperature: float = 1.0) -> np.ndarray:
    """Audio-branch probabilities for every item of an (eval-mode) dataset: softmax(logits / T)."""
    model.eval()
    order = sorted(range(len(ds)), key=lambda i: ds.wav(i).size)
    out = np.zeros((len(ds), len(ds.labels)))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        x, lengths, _ = pad_collate([ds[i] for i in idx])
        out[idx] = torch.softmax(model(x, lengths) / temperature, -1).numpy()
    return out


def set_trainable(model, unfreeze: str) -> None:
    """'none': head only; 'top': the backbone's last block; 'all': everything."""
    bb = model.backbone
    for p in bb.parameters():
        p.requires_grad = unfreeze == "all"
    if unfreeze == "top":
        if hasattr(bb, "lstm"):
            for n, p in bb.lstm.named_parameters():
                p.requires_grad = n.endswith(f"l{bb.lstm.num_layers - 1}")
        elif hasattr(bb, "layer4"):
            for p in bb.layer4.parameters():
                p.requires_grad = True
    if hasattr(bb, "linear"):          # GE2E's embedding layer is not used by frames()
        for p in bb.linear.parameters():
            p.requires_grad = False


def train_speech(cfg: Recipe | dict, labels: Sequence[str], train_items: Sequence[Item],
                 val_items: Sequence[Item], run: Run, model=None) -> tuple[nn.Module, dict, list]:
    """Transfer learning of a speaker backbone to emotion: head warm-up, then the backbone unfrozen
    at a lower learning rate; SpecAugment + perturbation; class-balanced loss; early stopping on
    speaker-independent validation UA. Resumes from run/speech.ckpt. Runs under torchrun (DDP)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    recipe = Recipe.coerce(cfg)
    sc = recipe.speech
    rank, world = dist_setup()
    seed_everything(recipe.seed + rank)
    if model is None:
        from ..bundle import build_speech
        model = build_speech({"labels": list(labels), "speech": sc.to_dict()})
    n = len(labels)
    ds = SpeechDataset(train_items, labels, model.feature, True, sc.to_dict())
    dv = SpeechDataset(val_items, labels, model.feature, False)
    y = [labels.index(i.label) for i in train_items]
    yv = [labels.index(i.label) for i in val_items]
    sampler = torch.utils.data.DistributedSampler(ds, world, rank, shuffle=True, seed=recipe.seed) \
        if world > 1 else None
    loader = torch.utils.data.DataLoader(ds, batch_size=sc.batch_size, shuffle=sampler is None,
                                         sampler=sampler, collate_fn=pad_collate, num_workers=0)
    crit = nn.CrossEntropyLoss(weight=class_weights(y, n), label_smoothing=0.1)
    opt = torch.optim.AdamW([{"params": list(model.head.parameters()), "lr": sc.lr},
                             {"params": list(model.backbone.parameters()), "lr": sc.backbone_lr}],
                            weight_decay=1e-2)
    start, history, best = 0, [], BestEpoch()
    state = run.resume("speech.ckpt")
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, history, best = state["epoch"], state["history"], BestEpoch.from_state(state)
        log.info("speech: resumed at epoch %d (best UA %.3f)", start, best.score)
    if state is None and rank == 0 and sc.eval_init:
        m0 = metrics(yv, speech_proba(model, dv).argmax(1), n)
        best.update(m0["UA"], model)
        history.append({"epoch": 0, "train_loss": float("nan"), "val_UA": m0["UA"], "val_WA": m0["WA"],
                        "val_macro_F1": m0["macro_F1"], "seconds": 0.0})
        log.info("speech epoch 0 (starting point): val UA %.3f WA %.3f", m0["UA"], m0["WA"])
    ddp = DDP(model, find_unused_parameters=True) if world > 1 else model
    if rank == 0:
        log.info("speech: %d train / %d val items, world size %d", len(ds), len(dv), world)
    for ep in range(start, sc.epochs):
        set_trainable(model, "none" if ep < sc.head_epochs else sc.unfreeze)
        if sampler is not None:
            sampler.set_epoch(ep)
        ddp.train()
        tot, cnt, t0 = 0.0, 0, time.time()
        bar_off = True if rank > 0 else None      # None: a bar on a TTY only, no escape codes in logs
        for x, lengths, yb in tqdm(loader, desc=f"speech epoch {ep + 1}", leave=False, disable=bar_off):
            loss = crit(ddp(x, lengths), yb)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            tot, cnt = tot + float(loss.detach()) * len(yb), cnt + len(yb)
        if rank == 0:
            m = metrics(yv, speech_proba(model, dv).argmax(1), n)
            history.append({"epoch": ep + 1, "train_loss": tot / max(cnt, 1), "val_UA": m["UA"],
                            "val_WA": m["WA"], "val_macro_F1": m["macro_F1"], "seconds": round(time.time() - t0, 1)})
            log.info("speech epoch %d: loss %.3f val UA %.3f WA %.3f (%.0f s)", ep + 1,
                     history[-1]["train_loss"], m["UA"], m["WA"], time.time() - t0)
            best.update(m["UA"], model)
            run.checkpoint("speech.ckpt", {"model": model.state_dict(), "opt": opt.state_dict(),
                                           "epoch": ep + 1, "history": history, **best.to_state()})
        stop = torch.tensor([int(rank == 0 and best.stop(sc.patience))])
        if world > 1:
            import torch.distributed as dist
            dist.broadcast(stop, 0)
        if int(stop):
            log.info("speech: early stop after epoch %d", ep + 1)
            break
    best.restore(model)
    m = metrics(yv, speech_proba(model, dv).argmax(1), n) if rank == 0 else {}
    return model, m, history
