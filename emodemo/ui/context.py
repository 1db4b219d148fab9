"""`UIContext`: what the app's handlers depend on, passed to each of them explicitly.

Every handler is a plain function `fn(ctx, *values) -> {output name: value}` (see
emodemo.ui.handlers); `ctx` carries the services it may use: the model registry (the active
recognizer, shared by everyone), the corrections store, the upload limits, a private work folder,
whether annotators sign in, the fine-tuning runner and the annotation queue.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..analysis import Limits
from ..jobs import Finetuner
from ..registry import ModelRegistry
from ..settings import ROOT

MODELS_DIR = ROOT / "models"


@dataclass
class UIContext:
    """The services one app instance's handlers share (see the module docstring)."""
    registry: ModelRegistry
    store: Any                                   # emodemo.store.CorrectionStore
    limits: Limits = field(default_factory=Limits)
    sign_in: bool = False
    finetuner: Optional[Finetuner] = None
    queue: Any = None                            # emodemo.annotate.AnnotationQueue, when present
    work_folder: Optional[Path] = None
    examples_dir: Optional[Path] = None          # default: data/examples

    @classmethod
    def create(cls, recognizer, store, limits: Optional[Limits] = None, *,
               work_dir: Optional[str | Path] = None, models_dir: Optional[str | Path] = None,
               extra_model_dirs: Sequence[str | Path] = (), allow_finetune: bool = True,
               admin_token: Optional[str] = None, sign_in: bool = False) -> "UIContext":
        """A context around a loaded recognizer and an open store. models_dir: where new
        (fine-tuned) bundles go and bundles are listed from (default models/); extra_model_dirs:
        more folders listed; admin_token: needed to switch models and fine-tune when set."""
        folders = [Path(models_dir) if models_dir is not None else MODELS_DIR, *extra_model_dirs]
        registry = ModelRegistry(recognizer, folders, admin_token=admin_token)
        ctx = cls(registry=registry, store=store, limits=limits or Limits(), sign_in=bool(sign_in),
                  work_folder=Path(work_dir) if work_dir is not None else None)
        from .handlers.models import reference_choices
        ctx.finetuner = Finetuner(registry, store, allowed=allow_finetune,
                                  reference_choices=lambda: reference_choices(ctx))
        ctx.queue = _queue(store, registry)
        return ctx

    def follow_switch(self) -> None:
        """After a model switch: the annotation queue pre-labels new clips with the new model
        (the queue's state is in the store, so a new queue object carries on)."""
        if self.queue is not None:
            self.queue = _queue(self.store, self.registry, getattr(self.queue, "options", None))

    @property
    def rec(self):
        """The active recognizer (switching models replaces it for everyone)."""
        return self.registry.recognizer

    @property
    def labels(self) -> list[str]:
        return list(self.rec.labels)

    @property
    def work_dir(self) -> Path:
        """Where exports, cut segments and microphone arrays go (a private temp folder)."""
        if self.work_folder is None:
            self.work_folder = Path(tempfile.mkdtemp(prefix="emodemo-ui-"))
        self.work_folder.mkdir(parents=True, exist_ok=True)
        return self.work_folder

    @property
    def models_dir(self) -> Path:
        return self.registry.new_bundles_dir

    @property
    def allow_finetune(self) -> bool:
        return bool(self.finetuner and self.finetuner.allowed)

    @property
    def job(self):
        """The latest fine-tuning job started by this app (emodemo.jobs.FinetuneJob), or None."""
        return self.finetuner.job if self.finetuner else None

    @property
    def finetune_options(self) -> dict:
        """Extra finetune() arguments for the runs started here (replay_spec, overrides ...)."""
        return self.finetuner.options

    @finetune_options.setter
    def finetune_options(self, options: dict) -> None:
        self.finetuner.options = dict(options)


def _queue(store, registry, options=None):
    """The annotation queue service (emodemo.annotate, branch store) when it is installed."""
    try:
        from .. import annotate
    except ImportError:
        return None
    kw = {"options": options} if options is not None else {}
    return annotate.AnnotationQueue(store, recognizer=registry.recognizer, **kw)
