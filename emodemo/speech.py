"""Speech branch: a speaker-recognition backbone (built by name) plus an emotion head.

Backbones expose one small interface so the head does not care which one it sits on:

    feature: str                    # front end in emodemo.audio.features()
    frame_dim: int                  # size of each frame vector from frames()
    frames(feats [B,T,F], lengths) -> ([B,T',frame_dim], lengths')
    embed(feats [B,T,F]) -> [B,E]   # the original speaker embedding

`ge2e` is the resemblyzer GE2E encoder (3-layer LSTM, 40-mel; ge2e.py), `resnet34` the WeSpeaker
ResNet34 (resnet.py), `whisper-tiny...` Whisper's encoder (whisper_encoder.py); checkpoints load
through checkpoint.load_checked.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .audio import SPAN, mel_speech_span, trim_prefix
from .checkpoint import LoadReport, load_checked  # noqa: F401  (re-exported: speech.load_checked)
from .errors import EmodemoError
from .ge2e import GE2E, partial_slices, resemblyzer_weights  # noqa: F401  (re-exported)


# per-recording normalisation (contract C3): serving modes and the rule of predict_segments
NORMALIZE = ("none", "batch")
NORMALIZE_MIN_SEGMENTS = 6       # a long recording is normalised by itself from 6 segments ...
NORMALIZE_MIN_SECONDS = 20.0     # ... holding at least 20 s of speech


# ---- registry ----------------------------------------------------------------------------
def build_backbone(name: str, source: Optional[str] = None, pretrained: bool = True,
                   **options) -> nn.Module:
    """Build a speaker backbone by name ('ge2e' | 'resnet34' | 'whisper-tiny[-mix|-final]' |
    'whisper-base[-mix|-final]' | 'ge2e+whisper-...'), loading weights from `source`. `options`: Whisper `layers` / `mix`."""
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
                       "whisper-base, ge2e+whisper-tiny")


# ---- emotion head ------------------------------------------------------------------------
def masked_stats(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation over valid frames: [B,T,D] → [B,2D]."""
    T = x.shape[1]
    mask = (torch.arange(T, device=x.device)[None, :] < lengths[:, None]).to(x.dtype).unsqueeze(-1)
    n = mask.sum(1).clamp_min(1.0)
    mean = (x * mask).sum(1) / n
    var = ((x - mean[:, None]) ** 2 * mask).sum(1) / n
    return torch.cat([mean, var.clamp_min(1e-6).sqrt()], dim=-1)


def speech_spans(feats: torch.Tensor, lengths: Optional[torch.Tensor]) -> list[tuple[int, int]]:
    """(first, end) log-mel frame of each clip's speech (`audio.mel_speech_span`) in a padded
    batch of Whisper log-mels [B, T, 80] (`lengths`: valid frames, None: all)."""
    n = [feats.shape[1]] * feats.shape[0] if lengths is None else [int(x) for x in lengths]
    return [mel_speech_span(feats[b, :n[b]]) for b in range(feats.shape[0])]


def span_frames(frames: torch.Tensor, lengths: torch.Tensor, spans: list[tuple[int, int]],
                hop: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip's frames [B, T', D] cut to its span (log-mel frames; `hop` of them per frame),
    left-aligned and zero-padded: ([B, T'', D], lengths'' ≥ 1)."""
    cut = []
    for b, (a, e) in enumerate(spans):
        n = int(lengths[b])
        first = min(a // hop, n - 1)
        cut.append(frames[b, first:max(first + 1, min(n, -(-e // hop)))])
    new_len = torch.tensor([len(c) for c in cut], dtype=torch.long)
    return nn.utils.rnn.pad_sequence(cut, batch_first=True), new_len


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


class HeadEnsemble(nn.Module):
    """Several heads trained alike from different seeds; their logits averaged. Each one's choice
    of epoch depends on its seed's luck; the mean depends less on it (recipe `speech.heads`)."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(frames, lengths) for m in self.members]).mean(0)


class PooledHead(nn.Module):
    """Mean+std pooled frames → standardised → linear (a linear probe), plus an optional second
    linear head for per-recording normalisation (`normalised`):

        single clip:   logits = out((stats − mean) / std)
        one setting:   logits = norm_out((stats − mean over the setting's clips − norm_mean) / norm_std)

    Several clips of one recording share speaker, microphone and room; their mean clip is that
    setting, not an emotion, so the second head (trained on features centred per training speaker)
    reads only how each clip differs from its setting. `has_norm` says whether it was trained."""

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        d = 2 * in_dim
        for name, value in (("mean", 0.0), ("std", 1.0), ("norm_mean", 0.0), ("norm_std", 1.0)):
            self.register_buffer(name, torch.full((d,), value))
        self.register_buffer("has_norm", torch.zeros((), dtype=torch.bool))
        self.out = nn.Linear(d, n_classes)
        self.norm_out = nn.Linear(d, n_classes)

    def pooled_logits(self, stats: torch.Tensor) -> torch.Tensor:
        return self.out((stats - self.mean) / self.std)

    def normalised_logits(self, stats: torch.Tensor, blend: float = 0.0) -> torch.Tensor:
        """Logits of clips [B, 2·in_dim] that form one setting (their mean is removed). `blend` > 0
        (bundle config speech.normalize.blend): the log of (1 − blend) × the normalised head's
        probabilities + blend × the single-clip head's, which hedges against a setting whose mean
        is not neutral (a batch of mostly one emotion)."""
        if not bool(self.has_norm):
            raise EmodemoError("this speech head has no per-recording normalisation (train it with "
                               "speech.normalize in the recipe)")
        logits = self.norm_out((stats - stats.mean(0, keepdim=True) - self.norm_mean) / self.norm_std)
        if blend <= 0:
            return logits
        return torch.log((1 - blend) * torch.softmax(logits, -1) + blend * torch.softmax(self.pooled_logits(stats), -1))

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.pooled_logits(masked_stats(frames, lengths))


def build_head(in_dim: int, n_classes: int, hidden: int = 256, dropout: float = 0.3, heads: int = 1,
               kind: str = "frames") -> nn.Module:
    """One EmotionHead, a HeadEnsemble of `heads` of them, or (kind 'pooled') a PooledHead."""
    if kind == "pooled":
        return PooledHead(in_dim, n_classes)
    if heads > 1:
        return HeadEnsemble([EmotionHead(in_dim, n_classes, hidden, dropout) for _ in range(heads)])
    return EmotionHead(in_dim, n_classes, hidden, dropout)


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


class FrameShift(nn.Module):
    """A constant added to every backbone frame: unlabelled calibration to a new kind of recording
    (emodemo.finetune.calibrate). shift = (mean frame of the training audio) − (mean frame of the
    new setting's clips), so the new setting's audio arrives where the head learned; a new
    corpus's constant offset is what makes a head call most of it one class."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("shift", torch.zeros(dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames + self.shift.to(frames.dtype)


class SpeechEmotionModel(nn.Module):
    """Backbone + emotion head (+ an optional ResidualAdapter); takes front-end features,
    returns class logits."""

    def __init__(self, backbone: nn.Module, n_classes: int, hidden: int = 256, dropout: float = 0.3,
                 adapter: bool = False, trim: bool | str = False, calibrated: bool = False, heads: int = 1,
                 head: str = "frames"):
        super().__init__()
        self.backbone = backbone
        self.trim = trim          # front end cuts leading/trailing silence: True/"energy", "vad" (audio.trim_silence);
                                  # "span": the whole clip is encoded, the frames of its speech pooled
        trim_prefix(trim)         # an unknown method is refused when the model is built
        if trim == SPAN and backbone.feature != "whisper_mel":
            raise EmodemoError(f"speech.trim \"span\" finds the speech in Whisper's log-mel; the "
                               f"{type(backbone).__name__} backbone reads {backbone.feature!r}: use "
                               "true, \"energy\" or \"vad\"")
        self.head = build_head(backbone.frame_dim, n_classes, hidden, dropout, heads, head)
        self.adapter = ResidualAdapter(2 * backbone.frame_dim, n_classes) if adapter else None
        self.calibration = FrameShift(backbone.frame_dim) if calibrated else None

    def backbone_frames(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        """The backbone's frames of what the head pools (trim "span": the speech span of the
        whole clip's frames) and their lengths."""
        return self._speech_only(*self.backbone.frames(feats, lengths), feats, lengths)

    def _speech_only(self, frames: torch.Tensor, out_len: torch.Tensor, feats: torch.Tensor,
                     lengths: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone frames cut to each clip's speech span where the bundle trims "span"."""
        if self.trim != SPAN:
            return frames, out_len
        return span_frames(frames, out_len, speech_spans(feats, lengths))

    def frames(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        """`backbone_frames` moved by the calibration shift (if any), and their lengths."""
        frames, lengths = self.backbone_frames(feats, lengths)
        return (frames if self.calibration is None else self.calibration(frames)), lengths

    @property
    def feature(self) -> str:
        return trim_prefix(self.trim) + self.backbone.feature

    def pooled(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        """(pooled backbone stats [B, 2·frame_dim], head logits [B, C]) — what the adapter sees."""
        frames, lengths = self.frames(feats, lengths)
        return masked_stats(frames, lengths), self.head(frames, lengths)

    @property
    def can_normalize(self) -> bool:
        """Whether the head has a per-recording normalised path (PooledHead with `has_norm`)."""
        return isinstance(self.head, PooledHead) and bool(self.head.has_norm)

    def normalised(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                   blend: float = 0.0) -> torch.Tensor:
        """Logits of a batch of clips of ONE recording / setting, normalised by their mean
        (`blend`: PooledHead.normalised_logits)."""
        frames, lengths = self.frames(feats, lengths)
        return self.head.normalised_logits(masked_stats(frames, lengths), blend)

    def forward(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._logits(*self.frames(feats, lengths))

    def _logits(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        logits = self.head(frames, lengths)
        if self.adapter is not None:
            logits = self.adapter(masked_stats(frames, lengths), logits)
        return logits

    def shares_encoder_with(self, source: Optional[str]) -> bool:
        """Whether one backbone pass can also give the ASR its encoder output: a Whisper backbone
        (not combined with GE2E) whose encoder is exactly the ASR model's (`source`), on the clip
        as the ASR hears it: no trimming, or trim "span" (the whole clip encoded, its speech span
        pooled). Not with a trimmed front end: Whisper transcribes a clip cut 0.1 s before the
        speech much worse (espeak-ng, 21 sentences in 4 languages: WER 0.28 -> 0.48, repetition
        loops; benchmarks/README.md), so such a bundle's branches encode separately."""
        shares = getattr(self.backbone, "shares_weights", None)
        return bool(shares and not trim_prefix(self.trim) and shares(source))

    def logits_and_encoding(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [1, C], the Whisper encoder output of the clip's window [1, T'', n_state]) of
        one clip of at most 30 s (feats [1, T, n_mels]) from one backbone pass; for a backbone
        that `shares_encoder_with` the ASR."""
        frames, lengths, encoded = self.backbone.clip_outputs(feats)
        frames, lengths = self._speech_only(frames, lengths, feats, None)
        if self.calibration is not None:
            frames = self.calibration(frames)
        return self._logits(frames, lengths), encoded
