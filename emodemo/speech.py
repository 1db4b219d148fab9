"""Speech branch: a speaker-recognition backbone (built by name) plus an emotion head.

Backbones expose one small interface so the head does not care which one it sits on:

    feature: str                    # front end in emodemo.audio.features()
    frame_dim: int                  # size of each frame vector from frames()
    frames(feats [B,T,F], lengths) -> ([B,T',frame_dim], lengths')
    embed(feats [B,T,F]) -> [B,E]   # the original speaker embedding

`ge2e` is the resemblyzer GE2E encoder (3-layer LSTM, 40-mel) and `resnet34` the WeSpeaker
ResNet34 (see resnet.py).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import EmodemoError

log = logging.getLogger(__name__)

GE2E_HIDDEN = 256
GE2E_LAYERS = 3
GE2E_EMBED = 256
GE2E_PARTIAL_FRAMES = 160     # resemblyzer embeds 1.6 s partial windows ...
GE2E_PARTIAL_RATE = 1.3       # ... at 1.3 partials per second


@dataclass
class LoadReport:
    """What happened when foreign weights were loaded into a module."""
    source: str = ""
    missing: list[str] = field(default_factory=list)         # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)      # in the checkpoint, not in the model
    shape_mismatch: list[str] = field(default_factory=list)  # "key: checkpoint (..) vs model (..)"
    ignored: list[str] = field(default_factory=list)         # deliberately skipped (training heads)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], what: str,
                 ignore_prefixes: tuple[str, ...] = (), strict: bool = False) -> LoadReport:
    """Load `state` into `module` after explicit key and shape checks; log and return a report.

    `module.` prefixes (DDP) are stripped and keys under `ignore_prefixes` skipped. Raises
    EmodemoError on shape mismatches, when no key matches (wrong file), or, with `strict`, on
    missing/unexpected keys. BatchNorm step counters are not reported as missing.
    """
    own = module.state_dict()
    rep = LoadReport(source=what)
    clean: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if any(k.startswith(p) for p in ignore_prefixes):
            rep.ignored.append(k)
        elif k not in own:
            rep.unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            rep.shape_mismatch.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        else:
            clean[k] = v
    rep.missing = [k for k in own if k not in clean and not k.endswith("num_batches_tracked")]
    if rep.shape_mismatch:
        raise EmodemoError(f"{what}: shape mismatch: " + "; ".join(rep.shape_mismatch))
    if not clean:
        raise EmodemoError(f"{what}: no parameter in the checkpoint matches the model; is it the right file?")
    for kind in ("missing", "unexpected"):
        keys = getattr(rep, kind)
        if keys:
            log.warning("%s: %d %s keys: %s", what, len(keys), kind, ", ".join(keys[:8]))
    if strict and not rep.ok:
        raise EmodemoError(f"{what}: strict load failed: missing {rep.missing[:8]}, "
                           f"unexpected {rep.unexpected[:8]}")
    if rep.ignored:
        log.info("%s: ignored %d keys (%s)", what, len(rep.ignored), ", ".join(rep.ignored[:8]))
    # copy_ casts, so e.g. float num_batches_tracked from averaged checkpoints load fine
    module.load_state_dict(clean, strict=False)
    rep.loaded = len(clean)
    return rep


# ---- GE2E (resemblyzer) ------------------------------------------------------------------
def resemblyzer_weights() -> Path:
    """Path of the GE2E checkpoint that the `resemblyzer` package ships."""
    import importlib.util
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise EmodemoError("the ge2e backbone needs the 'resemblyzer' package (pip install resemblyzer)")
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"


class GE2E(nn.Module):
    """The GE2E speaker encoder of resemblyzer: LSTM(40→256, 3 layers) → Linear(256) → ReLU → L2.

    Parameter names match resemblyzer's `VoiceEncoder` (`lstm.*`, `linear.*`), so its
    `pretrained.pt` (`model_state`) loads directly.
    """
    feature = "ge2e_mel"
    frame_dim = GE2E_HIDDEN * GE2E_LAYERS

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, GE2E_HIDDEN, GE2E_LAYERS, batch_first=True)
        self.linear = nn.Linear(GE2E_HIDDEN, GE2E_EMBED)

    def _layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        l = self.lstm
        w = [getattr(l, f"{n}_l{i}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h0 = x.new_zeros(1, x.shape[0], GE2E_HIDDEN)
        # the same kernel nn.LSTM calls, one layer at a time so every layer's output is kept
        return torch._VF.lstm(x, (h0, h0), w, True, 1, 0.0, self.training, False, True)[0]

    def frames(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        """Per-frame outputs of all three LSTM layers, concatenated: [B, T, 768].

        Padded frames (beyond `lengths`) come after the valid ones, so the unidirectional LSTM's
        valid outputs are unaffected by padding.
        """
        outs, x = [], feats
        for i in range(GE2E_LAYERS):
            x = self._layer(i, x)
            outs.append(x)
        if lengths is None:
            lengths = torch.full((feats.shape[0],), feats.shape[1], dtype=torch.long)
        return torch.cat(outs, dim=-1), lengths

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """resemblyzer's forward: L2-normalised embedding of each [B, T, 40] window."""
        _, (hidden, _) = self.lstm(mels)
        e = F.relu(self.linear(hidden[-1]))
        return e / (e.norm(dim=1, keepdim=True) + 1e-12)

    def embed_wav(self, wav) -> torch.Tensor:
        """Utterance embedding exactly as resemblyzer's `embed_utterance`: mean of 1.6 s partials."""
        from .audio import ge2e_mel
        wav = torch.as_tensor(wav, dtype=torch.float32)
        slices = partial_slices(wav.numel())
        need = slices[-1][1] * 160
        if need >= wav.numel():
            wav = F.pad(wav, (0, need - wav.numel()))
        mel = ge2e_mel(wav)
        parts = self(torch.stack([mel[a:b] for a, b in slices]))
        e = parts.mean(0)
        return e / e.norm()

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """Speaker embedding of each [T, 40] mel in a batch (partials averaged, L2-normalised)."""
        out = []
        for m in feats:
            slices = partial_slices((m.shape[0] - 1) * 160)
            if slices[-1][1] > m.shape[0]:
                m = F.pad(m, (0, 0, 0, slices[-1][1] - m.shape[0]))
            e = self(torch.stack([m[a:b] for a, b in slices])).mean(0)
            out.append(e / e.norm())
        return torch.stack(out)

    @classmethod
    def from_source(cls, source: str = "resemblyzer") -> "GE2E":
        path = resemblyzer_weights() if source in ("", "resemblyzer", None) else Path(source)
        if not path.exists():
            raise EmodemoError(f"GE2E weights not found at {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt.get("model_state", ckpt)
        model = cls()
        load_checked(model, state, f"ge2e ({path.name})", ignore_prefixes=("similarity_",))
        return model.eval()


def partial_slices(n_samples: int, rate: float = GE2E_PARTIAL_RATE, min_coverage: float = 0.75):
    """Frame ranges of resemblyzer's partial utterances (its `compute_partial_slices`)."""
    hop = 160  # samples per 10 ms frame at 16 kHz
    n_frames = int(math.ceil((n_samples + 1) / hop))
    frame_step = int(round((16000 / rate) / hop))
    steps = max(1, n_frames - GE2E_PARTIAL_FRAMES + frame_step + 1)
    slices = [(i, i + GE2E_PARTIAL_FRAMES) for i in range(0, steps, frame_step)]
    start, stop = slices[-1][0] * hop, slices[-1][1] * hop
    if (n_samples - start) / (stop - start) < min_coverage and len(slices) > 1:
        slices = slices[:-1]
    return slices


# ---- registry ----------------------------------------------------------------------------
def build_backbone(name: str, source: Optional[str] = None, pretrained: bool = True,
                   **options) -> nn.Module:
    """Build a speaker backbone by name ('ge2e' | 'resnet34' | 'whisper-tiny[-mix|-final]' |
    'ge2e+whisper-tiny...'), loading weights from `source`. `options`: Whisper `layers` / `mix`."""
    name = name.lower()
    if name.startswith(("whisper", "ge2e+whisper")):
        from .whisper_encoder import build_whisper_backbone
        return build_whisper_backbone(name, source, pretrained, **options)
    if name == "ge2e":
        return GE2E.from_source(source or "resemblyzer") if pretrained else GE2E()
    if name in ("resnet34", "resnet18"):
        from .resnet import build_resnet, load_wespeaker
        if pretrained and source:
            model, _ = load_wespeaker(os.path.expanduser(source))
            return model.eval()
        if pretrained:
            raise EmodemoError(f"the {name} backbone needs `source`: a WeSpeaker model directory "
                               "(config.yaml + avg_model.pt), e.g. wespeaker-voxceleb-resnet34")
        return build_resnet("ResNet34" if name == "resnet34" else "ResNet18")
    raise EmodemoError(f"unknown speech backbone {name!r}; known: ge2e, resnet34, whisper-tiny, "
                       "ge2e+whisper-tiny")


# ---- emotion head ------------------------------------------------------------------------
def masked_stats(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation over valid frames: [B,T,D] → [B,2D]."""
    T = x.shape[1]
    mask = (torch.arange(T, device=x.device)[None, :] < lengths[:, None]).to(x.dtype).unsqueeze(-1)
    n = mask.sum(1).clamp_min(1.0)
    mean = (x * mask).sum(1) / n
    var = ((x - mean[:, None]) ** 2 * mask).sum(1) / n
    return torch.cat([mean, var.clamp_min(1e-6).sqrt()], dim=-1)


class EmotionHead(nn.Module):
    """Frame projection → statistics pooling (mean+std over time) → MLP → emotion logits."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 256, dropout: float = 0.3):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.frame = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.frame(self.norm(frames)))
        s = masked_stats(self.drop(h), lengths)
        return self.out(self.drop(F.relu(self.fc(s))))


class ResidualAdapter(nn.Module):
    """A correction of the head's logits learned from a few hundred user corrections:

        logits = head + g(z) · ((beta − 1) · head + W · z + bias)
        z = (stats(frames) − mean) / std,    g(z) = sigmoid(gate_weight · z + gate_bias)

    `stats` are the mean+std pooled backbone frames ([B, 2·frame_dim]), the features a linear probe
    would use. W = 0, beta = 1 is the base model; beta = 0 is a linear probe. The gate g says how much
    a clip resembles the corrected audio (a new language, microphone or speaker population) rather
    than the base's training audio; gate_weight = 0 and a large gate_bias make g = 1 everywhere.
    Fine-tuning (emodemo.finetune.adapt) fits all of it on frozen-backbone features, so a bundle
    stores only these few tensors on top of its base.
    """

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, n_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.register_buffer("beta", torch.ones(()))
        self.register_buffer("gate_weight", torch.zeros(in_dim))
        self.register_buffer("gate_bias", torch.full((), 30.0))      # sigmoid(30) = 1 in float32

    def forward(self, stats: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
        z = (stats - self.mean) / self.std
        g = torch.sigmoid(z @ self.gate_weight + self.gate_bias)[:, None]
        return base_logits + g * ((self.beta - 1) * base_logits + self.linear(z))


class SpeechEmotionModel(nn.Module):
    """Backbone + emotion head (+ an optional ResidualAdapter); takes front-end features,
    returns class logits."""

    def __init__(self, backbone: nn.Module, n_classes: int, hidden: int = 256, dropout: float = 0.3,
                 adapter: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = EmotionHead(backbone.frame_dim, n_classes, hidden, dropout)
        self.adapter = ResidualAdapter(2 * backbone.frame_dim, n_classes) if adapter else None

    @property
    def feature(self) -> str:
        return self.backbone.feature

    def pooled(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        """(pooled backbone stats [B, 2·frame_dim], head logits [B, C]) — what the adapter sees."""
        frames, lengths = self.backbone.frames(feats, lengths)
        return masked_stats(frames, lengths), self.head(frames, lengths)

    def forward(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        frames, lengths = self.backbone.frames(feats, lengths)
        logits = self.head(frames, lengths)
        if self.adapter is not None:
            logits = self.adapter(masked_stats(frames, lengths), logits)
        return logits
