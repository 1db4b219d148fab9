"""Fine-tuning from the corrections store as a background job, for the app's Models tab.

`Finetuner` checks the form values, runs the dry run (what the store holds), and starts one
`FinetuneJob` at a time in a daemon thread; the job's fields are what the tab's poller shows.
Every call into emodemo.finetune is in this module.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .errors import EmodemoError

log = logging.getLogger(__name__)


def form_defaults() -> dict:
    """Defaults of the fine-tuning form: text-branch epochs (the speech adapter is fitted to
    convergence) and minimum corrections per class."""
    from .finetune import FINETUNE_RECIPE, MIN_PER_CLASS
    return {"epochs": FINETUNE_RECIPE["text"]["epochs"], "min_per_class": MIN_PER_CLASS}


def summary_text(dataset_summary: Mapping) -> str:
    """The dry run's dataset summary as plain text (counts per class and annotator, agreement)."""
    from .finetune import format_summary
    return format_summary(dataset_summary)


@dataclass
class FinetuneJob:
    """One fine-tuning run in a background thread; its fields are read by the UI's poller."""
    base: Path
    out: Path
    kwargs: dict = field(default_factory=dict)
    state: str = "queued"            # queued, running, written, not written, failed
    fraction: float = 0.0
    message: str = ""
    log: list[str] = field(default_factory=list)
    report: Optional[dict] = None
    error: str = ""
    started: float = 0.0
    finished: float = 0.0
    thread: Optional[threading.Thread] = None

    @property
    def running(self) -> bool:
        return self.state in ("queued", "running")

    def progress(self, frac: float, msg: str) -> None:
        """The progress callback handed to finetune(): fraction done and what it is doing."""
        self.fraction = max(self.fraction, min(1.0, float(frac)))
        if msg and msg != self.message:
            self.message = msg
            self.log.append(f"{time.time() - self.started:6.0f} s  {msg}")

    def run(self, corrections: Any) -> None:
        """Run finetune(corrections, base, out, **kwargs) here, recording the outcome.
        `corrections`: a CorrectionStore (or a database URL)."""
        from .finetune import finetune
        self.state = "running"
        try:
            rep = finetune(corrections, self.base, self.out, progress=self.progress, **self.kwargs)
            self.report = rep
            self.state = "written" if rep.get("written") else "not written"
            self.fraction = 1.0
        except EmodemoError as exc:          # too few corrections, bad data spec, ...
            self.state, self.error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - reported in the UI, traceback in the log
            log.error("fine-tuning failed:\n%s", traceback.format_exc())
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc} (details in the server log)"
        finally:
            self.finished = time.time()
            self.log.append(f"{self.finished - self.started:6.0f} s  {self.state}")

    def start(self, corrections: Any) -> "FinetuneJob":
        """Run in a daemon thread."""
        self.started = time.time()
        self.thread = threading.Thread(target=self.run, args=(corrections,), daemon=True,
                                       name=f"finetune-{self.out.name}")
        self.thread.start()
        return self

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the run ends (tests, scripts); True when it has ended."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running


class Finetuner:
    """Fine-tuning runs from `store` for the bundles of `registry` (emodemo.registry)."""

    def __init__(self, registry, store, allowed: bool = True,
                 reference_choices: Callable[[], list] = lambda: []):
        self.registry = registry
        self.store = store
        self.allowed = allowed
        self.reference_choices = reference_choices
        self.job: Optional[FinetuneJob] = None
        self.options: dict = {}       # extra finetune() arguments (replay_spec, overrides ...)

    def kwargs(self, epochs: Any, min_per_class: Any, reference: Any, force: Any) -> dict:
        """finetune() arguments from the form, checked; the reference must be one offered."""
        defaults = form_defaults()
        try:
            mpc = int(min_per_class) if min_per_class not in (None, "") else defaults["min_per_class"]
            ep = int(epochs) if epochs not in (None, "") else None
        except (TypeError, ValueError):
            raise EmodemoError("Epochs and the minimum per class must be whole numbers.") from None
        if not 1 <= mpc <= 1000:
            raise EmodemoError("The minimum number of corrections per class must be 1–1000.")
        if ep is not None and not 1 <= ep <= 50:
            raise EmodemoError("Epochs must be 1–50.")
        offered = {v for _, v in self.reference_choices() if v}
        ref = str(reference or "")
        return {"epochs": ep, "min_per_class": mpc, "reference_spec": ref if ref in offered else None,
                "force": bool(force)}

    def dry_run(self, base: Path, out: Path, min_per_class: int) -> dict:
        """What the store holds for fine-tuning (finetune's dry-run report)."""
        from .finetune import finetune
        return finetune(self.store, base, out, dry_run=True, min_per_class=min_per_class)

    def start(self, name: str, epochs: Any = None, min_per_class: Any = None,
              reference: Any = None, force: Any = False, token: Any = None) -> tuple[FinetuneJob, dict]:
        """Start fine-tuning a new bundle `name` from the active one; (job, dry-run report)."""
        if not self.allowed:
            raise EmodemoError("Fine-tuning is switched off in this app (started with --no-finetune).")
        self.registry.check_admin(token)
        if self.job is not None and self.job.running:
            raise EmodemoError("A fine-tuning run is already going; wait for it to finish.")
        out = self.registry.new_bundle_folder(name)
        kw = self.kwargs(epochs, min_per_class, reference, force)
        base = self.registry.active_path()
        if base is None:
            raise EmodemoError("The active model was not loaded from a folder; cannot fine-tune it.")
        dry = self.dry_run(base, out, kw["min_per_class"])
        if dry.get("guard"):
            raise EmodemoError(f"{dry['guard']}\n\n{summary_text(dry['dataset'])}")
        self.job = FinetuneJob(base=base, out=out, kwargs={**self.options, **kw})
        self.job.start(self.store)
        return self.job, dry
