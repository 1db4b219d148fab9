"""WeSpeaker ResNet speaker-embedding model, re-implemented with WeSpeaker's exact parameter names.

Mirrors wespeaker/models/resnet.py and pooling_layers.py (wenet-e2e/wespeaker) so that a released
checkpoint such as `wespeaker-voxceleb-resnet34` (`config.yaml` + `avg_model.pt`) loads 1:1:

    conv1, bn1                        3x3 stem, 1 -> m_channels, no bias
    layer1..layer4                    BasicBlock / Bottleneck stacks, strides 1,2,2,2,
                                      channels m, 2m, 4m, 8m (x expansion);
                                      block: conv1,bn1,conv2,bn2[,conv3,bn3], shortcut.{0,1}
    pool                              TSTP: mean and std over time (no parameters)
    seg_1                             Linear(pooled dim, embed_dim) -> the speaker embedding
    seg_bn_1, seg_2                   only when two_emb_layer (BatchNorm1d(affine=False), Linear)

The training-time margin classifier lives under `projection.*` in WeSpeaker checkpoints and is
ignored when loading. Input is Kaldi fbank [B, T, feat_dim] (emodemo.audio.fbank), which the model
views as an image [B, 1, feat_dim, T]; time and frequency are both subsampled by 8.
"""
from __future__ import annotations

import logging
import os

from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import EmodemoError
from .checkpoint import LoadReport, load_checked

log = logging.getLogger(__name__)

SUBSAMPLING = 8                     # three stride-2 stages, in both time and frequency
CKPT_NAME = "avg_model.pt"          # what WeSpeaker's average_model.py writes
CONFIG_NAME = "config.yaml"
IGNORED_PREFIXES = ("projection.",)  # ArcMargin / softmax head used only for training
# WeSpeaker's defaults for the released voxceleb ResNet34 (examples/voxceleb/v2/conf/resnet.yaml).
DEFAULT_MODEL = "ResNet34"
DEFAULT_MODEL_ARGS = {"feat_dim": 80, "embed_dim": 256, "pooling_func": "TSTP", "two_emb_layer": False}


# ---- blocks --------------------------------------------------------------------------------
def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity, or WeSpeaker's 1x1 conv + BN projection (`shortcut.0`, `shortcut.1`)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


# ---- pooling (WeSpeaker pooling_layers, the parameter-free ones) ----------------------------
class TSTP(nn.Module):
    """Temporal statistics pooling: mean and std over the last (time) axis, flattened C-major."""

    def __init__(self, in_dim: int = 0):
        super().__init__()
        self.in_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1).flatten(start_dim=1)
        std = torch.sqrt(torch.var(x, dim=-1) + 1e-7).flatten(start_dim=1)  # unbiased, as WeSpeaker
        return torch.cat((mean, std), dim=1)

    def get_out_dim(self) -> int:
        return self.in_dim * 2


class TSDP(TSTP):
    """Temporal standard-deviation pooling (std only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.var(x, dim=-1) + 1e-7).flatten(start_dim=1)

    def get_out_dim(self) -> int:
        return self.in_dim


class TAP(TSTP):
    """Temporal average pooling (mean only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=-1).flatten(start_dim=1)

    def get_out_dim(self) -> int:
        return self.in_dim


POOLING = {"TSTP": TSTP, "TSDP": TSDP, "TAP": TAP}


# ---- model ---------------------------------------------------------------------------------
class ResNet(nn.Module):
    """WeSpeaker ResNet (same attribute names and math) with the emodemo backbone interface."""

    feature = "fbank80"   # emodemo.audio.features() front end: Kaldi fbank, 80 bins, mean CMN

    def __init__(self, block: type[nn.Module], num_blocks: list[int], m_channels: int = 32,
                 feat_dim: int = 80, embed_dim: int = 256, pooling_func: str = "TSTP",
                 two_emb_layer: bool = False):
        super().__init__()
        if feat_dim % SUBSAMPLING:
            raise EmodemoError(f"feat_dim must be a multiple of {SUBSAMPLING}, got {feat_dim}")
        if pooling_func not in POOLING:
            raise EmodemoError(f"unsupported pooling_func {pooling_func!r}; supported: {sorted(POOLING)}")
        self.in_planes = m_channels
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        self.stats_dim = int(feat_dim / 8) * m_channels * 8
        self.two_emb_layer = two_emb_layer
        # emodemo interface: one frame = all channels x remaining frequency bins of layer4
        self.frame_dim = self.stats_dim * block.expansion

        self.conv1 = nn.Conv2d(1, m_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.layer1 = self._make_layer(block, m_channels, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, m_channels * 2, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, m_channels * 4, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, m_channels * 8, num_blocks[3], stride=2)

        self.pool = POOLING[pooling_func](in_dim=self.stats_dim * block.expansion)
        self.pool_out_dim = self.pool.get_out_dim()
        self.seg_1 = nn.Linear(self.pool_out_dim, embed_dim)
        if two_emb_layer:
            self.seg_bn_1 = nn.BatchNorm1d(embed_dim, affine=False)
            self.seg_2 = nn.Linear(embed_dim, embed_dim)
        else:
            self.seg_bn_1 = nn.Identity()
            self.seg_2 = nn.Identity()

    def _make_layer(self, block: type[nn.Module], planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def _check(self, feats: torch.Tensor) -> None:
        if feats.ndim != 3 or feats.shape[-1] != self.feat_dim:
            raise EmodemoError(f"expected features [batch, frames, {self.feat_dim}], got {tuple(feats.shape)}")
        if feats.shape[1] < 1:
            raise EmodemoError("expected at least one feature frame")

    def feature_map(self, feats: torch.Tensor) -> torch.Tensor:
        """layer4 output [B, C, F/8, ceil(T/8)] for fbank features [B, T, F]."""
        self._check(feats)
        x = feats.permute(0, 2, 1).unsqueeze(1)  # [B, T, F] -> [B, 1, F, T]
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        return self.layer4(out)

    def frames(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame-level features ([B, ceil(T/8), frame_dim], lengths') for fbank [B, T, F].

        Each frame is layer4's [C, F/8] map flattened C-major (the order TSTP pools in).
        `lengths` (valid input frames per item, default T) becomes ceil(lengths / 8).
        """
        out = self.feature_map(feats)
        B, C, Fq, T = out.shape
        out = out.reshape(B, C * Fq, T).transpose(1, 2)
        if lengths is None:
            lengths = torch.full((B,), feats.shape[1], dtype=torch.long, device=feats.device)
        lengths = torch.div(lengths.to(torch.long) + SUBSAMPLING - 1, SUBSAMPLING, rounding_mode="floor")
        return out, lengths.clamp(min=1, max=T)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """Speaker embedding [B, embed_dim], as WeSpeaker extracts it (last of its outputs)."""
        out = self.feature_map(feats)
        if out.shape[-1] < 2 and not isinstance(self.pool, TAP):
            raise EmodemoError(f"{feats.shape[1]} feature frames are too few for std pooling; "
                               f"need at least {SUBSAMPLING + 1}")
        embed_a = self.seg_1(self.pool(out))
        if not self.two_emb_layer:
            return embed_a
        return self.seg_2(self.seg_bn_1(F.relu(embed_a)))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.embed(feats)


# ---- factory -------------------------------------------------------------------------------
ARCHS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "ResNet18": (BasicBlock, [2, 2, 2, 2]),
    "ResNet34": (BasicBlock, [3, 4, 6, 3]),
    "ResNet50": (Bottleneck, [3, 4, 6, 3]),
    "ResNet101": (Bottleneck, [3, 4, 23, 3]),
    "ResNet152": (Bottleneck, [3, 8, 36, 3]),
    "ResNet221": (Bottleneck, [6, 16, 48, 3]),
    "ResNet293": (Bottleneck, [10, 20, 64, 3]),
}


def build_resnet(name: str = DEFAULT_MODEL, **model_args) -> ResNet:
    """Build a WeSpeaker ResNet by its WeSpeaker name ('ResNet34', ...) with WeSpeaker model_args.

    Unspecified args take the voxceleb ResNet34 recipe values (feat_dim 80, embed_dim 256, TSTP,
    two_emb_layer False); `m_channels` (32) may also be given.
    """
    if name not in ARCHS:
        raise EmodemoError(f"unsupported WeSpeaker model {name!r}; supported: {', '.join(ARCHS)}")
    allowed = set(DEFAULT_MODEL_ARGS) | {"m_channels"}
    unknown = sorted(set(model_args) - allowed)
    if unknown:
        raise EmodemoError(f"unsupported model_args for {name}: {unknown}; allowed: {sorted(allowed)}")
    block, num_blocks = ARCHS[name]
    return ResNet(block, num_blocks, **{**DEFAULT_MODEL_ARGS, **model_args})


# ---- loading WeSpeaker checkpoints ---------------------------------------------------------
def _read_config(path: Path) -> tuple[str, dict]:
    import yaml
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EmodemoError(f"cannot read WeSpeaker config {path}: {exc}") from exc
    if not isinstance(cfg, dict):
        raise EmodemoError(f"{path} is not a WeSpeaker config (expected a mapping)")
    name = cfg.get("model", DEFAULT_MODEL)
    args = cfg.get("model_args") or {}
    if not isinstance(args, dict):
        raise EmodemoError(f"{path}: model_args must be a mapping")
    return str(name), dict(args)


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EmodemoError(f"{path} does not contain a state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _resolve(model_dir_or_ckpt: Union[str, os.PathLike]) -> tuple[Path, Optional[Path]]:
    p = Path(os.path.expanduser(str(model_dir_or_ckpt)))
    if p.is_dir():
        ckpt = p / CKPT_NAME
        if not ckpt.exists():
            pts = sorted(p.glob("*.pt"))
            if len(pts) != 1:
                raise EmodemoError(f"{p} has no {CKPT_NAME} (found {[x.name for x in pts]}); "
                                   "expected a WeSpeaker model directory (config.yaml + avg_model.pt)")
            ckpt = pts[0]
        cfg = p / CONFIG_NAME
    elif p.is_file():
        ckpt, cfg = p, p.parent / CONFIG_NAME
    else:
        raise EmodemoError(f"WeSpeaker model not found: {p}")
    return ckpt, (cfg if cfg.is_file() else None)


def load_wespeaker(model_dir_or_ckpt: Union[str, os.PathLike], strict: bool = False
                   ) -> tuple[ResNet, LoadReport]:
    """Build the model from `config.yaml` and load `avg_model.pt` (or a .pt path) into it.

    Keys and shapes are checked explicitly: `module.` prefixes are stripped, `projection.*` is
    ignored, and missing/unexpected keys are logged. Raises EmodemoError on any shape mismatch,
    when no backbone key matches (wrong file), or, with `strict`, on missing/unexpected keys.
    Without a config.yaml the voxceleb ResNet34 settings are assumed. Returns (model in eval
    mode, report).
    """
    ckpt_path, cfg_path = _resolve(model_dir_or_ckpt)
    name, args = _read_config(cfg_path) if cfg_path else (DEFAULT_MODEL, {})
    if cfg_path is None:
        log.warning("%s: no %s next to it; assuming %s %s", ckpt_path, CONFIG_NAME, name, DEFAULT_MODEL_ARGS)
    model = build_resnet(name, **args)
    try:
        obj = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-torch files
        raise EmodemoError(f"cannot read checkpoint {ckpt_path}: {exc}") from exc
    state = _state_dict(obj, ckpt_path)

    what = f"WeSpeaker {name} ({ckpt_path})"
    try:
        report = load_checked(model, state, what, ignore_prefixes=IGNORED_PREFIXES, strict=strict)
    except EmodemoError as exc:
        if "shape mismatch" in str(exc):
            raise EmodemoError(f"{exc} (the checkpoint does not fit model_args {args})") from None
        raise
    return model.eval(), report
