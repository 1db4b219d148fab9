"""The app's events as plain methods over plain values, without Gradio.

Each takes plain values (a file path, a slider value, the per-clip state dict ...) and returns a
dict of output values keyed by name ("summary", "probs_plot", ...): strings, numbers, figures,
data frames, and for component properties plain dicts or booleans ("long_box": visible,
"segment_dd"/"models_dd": {"choices", "value"}, "ft_timer": active). emodemo.ui.app turns those
into Gradio updates. Handlers never raise for bad input: the problem becomes a readable message
under "status" (or "correct_msg", "history_msg", "models_msg", "ft_msg") plus "_error" for a
toast; unexpected errors are logged with their traceback server-side and reported without it.
The API handlers (`api_predict`, `api_correct`) raise EmodemoError instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ...analysis import Limits
from ...jobs import Finetuner
from ...registry import ModelRegistry
from ...settings import ROOT
from .analyse import AnalyseHandlers
from .base import HandlerBase
from .history import HistoryHandlers
from .models import ModelsHandlers

MODELS_DIR = ROOT / "models"


class Handlers(AnalyseHandlers, HistoryHandlers, ModelsHandlers, HandlerBase):
    """Every event of the app (Analyse, History, Models tabs and the API).

    models_dir: where new (fine-tuned) bundles go and bundles are listed from (default models/);
    extra_model_dirs: more folders listed; allow_finetune: offer fine-tuning; admin_token: needed
    to switch models and fine-tune when set; sign_in: corrections are recorded under the signed-in
    Hugging Face account, and refused without one.
    """

    def __init__(self, recognizer, store, limits: Optional[Limits] = None,
                 work_dir: Optional[str | Path] = None,
                 models_dir: Optional[str | Path] = None, allow_finetune: bool = True,
                 extra_model_dirs: Sequence[str | Path] = (),
                 admin_token: Optional[str] = None, sign_in: bool = False):
        folders = [Path(models_dir) if models_dir is not None else MODELS_DIR, *extra_model_dirs]
        registry = ModelRegistry(recognizer, folders, admin_token=admin_token)
        super().__init__(registry, store, limits, work_dir)
        self.sign_in = bool(sign_in)
        self.finetuner = Finetuner(registry, store, allowed=allow_finetune,
                                   reference_choices=self.reference_choices)

    # the services' state, under the names the app and scripts use
    @property
    def models_dir(self) -> Path:
        return self.registry.new_bundles_dir

    @property
    def model_dirs(self) -> list[Path]:
        return list(self.registry.folders)

    @property
    def admin_token(self) -> Optional[str]:
        return self.registry.admin_token

    @admin_token.setter
    def admin_token(self, token: Optional[str]) -> None:
        self.registry.admin_token = token or None

    @property
    def allow_finetune(self) -> bool:
        return self.finetuner.allowed

    @property
    def job(self):
        """The latest fine-tuning job (emodemo.jobs.FinetuneJob), or None."""
        return self.finetuner.job

    @property
    def finetune_options(self) -> dict:
        """Extra finetune() arguments for the runs started here (replay_spec, overrides ...)."""
        return self.finetuner.options

    @finetune_options.setter
    def finetune_options(self, options: dict) -> None:
        self.finetuner.options = dict(options)


__all__ = ["Handlers"]
