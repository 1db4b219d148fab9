"""What a fine-tuning run is asked to do (`FinetuneOptions`) and what it has found so far
(`FinetuneRun`, the state its small steps in pipeline.py read and fill in, one after another)."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from .dataset import MIN_PER_CLASS, VAL_FRACTION, FinetuneError
from .replay import DEFAULT_REPLAY_N

Progress = Callable[[float, str], None]
Specs = Union[str, Sequence[str], None]

#: How a message names each knob a person can turn; a front end passes its own words (the CLI its
#: flags, the app its form fields), so the app never tells anyone to "lower --min-per-class".
KNOBS = {"min_per_class": "the minimum clips per class", "force": "force writing it"}
CLI_KNOBS = {"min_per_class": "--min-per-class", "force": "--force"}


@dataclass
class FinetuneOptions:
    """The settings of one fine-tuning run (`finetune(..., options)` or its keyword arguments).

    replay_spec: data spec(s) of base training data (None: the base bundle's own training specs,
        skipping those not on this machine; "none" or []: none); the replay pack is always used.
    reference_spec: data spec(s) the new bundle must not be worse on by more than `tolerance` UA;
        the replay pack's guard part (the base's own training clips) is always checked too.
    epochs: text-branch epochs (the speech adapter is fitted to convergence).
    reference_metrics: {spec: {"before": ..., "after": ...}} to use instead of measuring (tests).
    knobs: how messages name the knobs (see KNOBS)."""
    replay_spec: Specs = None
    reference_spec: Specs = None
    tolerance: float = 0.02
    force: bool = False
    dry_run: bool = False
    min_per_class: int = MIN_PER_CLASS
    epochs: Optional[int] = None
    seed: int = 0
    replay_n: int = DEFAULT_REPLAY_N
    media_dir: Optional[str] = None
    val_fraction: float = VAL_FRACTION
    overrides: Optional[dict] = None
    overwrite: bool = False
    run_dir: Optional[Union[str, Path]] = None
    segment_cache: Optional[Union[str, Path]] = None
    feature_cache: Union[str, Path, None, bool] = None   # None: settings.cache_dir("features"); False: off
    reference_metrics: Optional[Mapping] = None
    knobs: Mapping[str, str] = field(default_factory=lambda: dict(KNOBS))

    @classmethod
    def of(cls, options: Optional["FinetuneOptions"] = None, **changes: Any) -> "FinetuneOptions":
        """`options` (default: the defaults) with `changes`; an unknown name is a FinetuneError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise FinetuneError(f"unknown fine-tuning option(s) {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(names))}")
        return dataclasses.replace(options or cls(), **changes)

    def knob(self, name: str) -> str:
        return {**KNOBS, **dict(self.knobs)}[name]


@dataclass
class FinetuneRun:
    """One run's state: the inputs, then what each step adds (None until that step ran)."""
    opts: FinetuneOptions
    base_bundle: Path
    out_dir: Path
    say: Progress
    started: float = field(default_factory=time.time)
    report: dict = field(default_factory=dict)
    # read and split the corrections
    labels: list = field(default_factory=list)
    db_shown: str = ""
    snapshot: Optional[datetime] = None
    ds: Any = None                      # dataset.Dataset
    clips: list = field(default_factory=list)
    too_few: dict = field(default_factory=dict)
    train_clips: list = field(default_factory=list)
    val_clips: list = field(default_factory=list)
    # the base bundle and the data
    cfg: Any = None                     # the base's BundleConfig
    speech: Any = None                  # being adapted
    text: Any = None
    base_speech: Any = None             # untouched copies for "before"
    base_text: Any = None
    base_fusion: Any = None
    ref_items: dict = field(default_factory=dict)
    train_items: list = field(default_factory=list)
    val_items: list = field(default_factory=list)
    tr: Any = None                      # features.Feats of the training / held-out corrections
    va: Any = None
    replay: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    # what the steps made
    new_cfg: Any = None
    eval_adapter: Any = None            # fitted without the held-out corrections (for their numbers)
    new_adapter: Any = None             # fitted on all corrections (what is written)
    report_speech: dict = field(default_factory=dict)
    report_text: dict = field(default_factory=dict)
    report_fusion: dict = field(default_factory=dict)
    fusion: Any = None
    reference: dict = field(default_factory=dict)
    decision: dict = field(default_factory=dict)

    def progress(self, lo: float, hi: float, what: str) -> Callable[[int, int], None]:
        """A (k, n) callback for a long step that moves the bar from `lo` to `hi` as it goes."""
        def cb(k: int, n: int) -> None:
            if k == n or k % max(1, n // 20) == 0:
                self.say(lo + (hi - lo) * k / max(1, n), f"{what}: {k}/{n}")
        return cb
