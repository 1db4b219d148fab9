"""Close the loop: fine-tune a new bundle version from the corrections people stored in the app.

    python -m emodemo finetune --db sqlite:///data/corrections.db --base models/default --out models/ft1

dataset (corrections → clips, guards, split) · features (frozen-backbone pooled features) ·
replay (the bundle's replay pack + base training data where present) · adapt (the residual adapter
and the linear-probe baseline) · options (`FinetuneOptions`, the run's state) · branches (speech,
text, fusion fitted and kept only when better) · evaluate (metrics, named checks, gate, what
changed) · pipeline (`finetune()`, small named steps) · write (lineage) · card (model card) · calibrate (the unlabelled alternative: one frame
shift for a new setting) · cli (command line). See docs/finetune.md.
"""
from .dataset import (MIN_CLASSES, MIN_PER_CLASS, NONE_LABEL, VAL_FRACTION, Clip, Dataset, FinetuneError,
                      TooFewCorrections, build_dataset, check_counts, format_summary, split_clips)
from ..training.metrics import ece, fit_temperature
from .evaluate import evaluate_models, gate
from .options import FinetuneOptions
from .pipeline import FINETUNE_RECIPE, finetune, next_version
from .replay import DEFAULT_REPLAY_N, clip_items, default_replay, pack_replay, replay_items
from .cli import main_finetune

__all__ = ["MIN_CLASSES", "MIN_PER_CLASS", "NONE_LABEL", "VAL_FRACTION", "Clip", "Dataset", "FinetuneError",
           "TooFewCorrections", "build_dataset", "check_counts", "format_summary", "split_clips",
           "ece", "evaluate_models", "fit_temperature", "gate", "FINETUNE_RECIPE", "FinetuneOptions", "finetune", "next_version",
           "DEFAULT_REPLAY_N", "clip_items", "default_replay", "pack_replay", "replay_items", "main_finetune"]
