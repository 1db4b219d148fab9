"""Fine-tuning from the corrections store as a background job, for the app's Models tab.

`Finetuner` checks the form values, runs the dry run (what the store holds), and starts one
`FinetuneJob` at a time in a daemon thread. Every call into emodemo.finetune is in this module.

The job's state (`JobState`) is on disk, next to the models folder (`state_path`, written
atomically), so every visitor, every app process and a restarted app see the same run:
queued / running with progress / finished / refused with why / failed / interrupted. One run at
a time across processes: the running job holds an exclusive lock on `lock_path` (``flock``; the
kernel drops it when the process dies), so a second request is told a run is going, and a
state left "running" by a process that is gone reads "interrupted". A run's outcome stays until
the next run starts.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .errors import EmodemoError

log = logging.getLogger(__name__)

JOB_STATUSES = ("idle", "queued", "running", "finished", "refused", "failed", "interrupted")
ALREADY_RUNNING = "A fine-tuning run is already going; wait for it to finish."
INTERRUPTED = "The run was interrupted: the app stopped or restarted while it ran. Start it again."
PERSIST_EVERY_S = 1.0            # progress is written at most this often (and on every new step)


@dataclass
class JobState:
    """The fine-tuning job as every visitor sees it (`read_state`)."""
    status: str = "idle"
    progress: float = 0.0
    message: str = ""
    detail: str = ""
    started: Optional[float] = None
    finished: Optional[float] = None
    bundle: Optional[str] = None
    reason: Optional[str] = None

    @property
    def running(self) -> bool:
        return self.status in ("queued", "running")

    @classmethod
    def from_dict(cls, data: Mapping) -> "JobState":
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        if state.status not in JOB_STATUSES:
            state.status = "idle"
        return state


def state_path(models_dir: os.PathLike | str) -> Path:
    """The job's state file: ``.<models folder name>-finetune-job.json`` beside the folder."""
    d = Path(models_dir).expanduser().resolve()
    return d.parent / f".{d.name}-finetune-job.json"


def lock_path(models_dir: os.PathLike | str) -> Path:
    return state_path(models_dir).with_suffix(".lock")


def write_state(models_dir: os.PathLike | str, state: JobState) -> None:
    """Write the state atomically (temp file, fsync, rename): readers see the old or the new."""
    path = state_path(models_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(state), f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunLock:
    """The one-run-at-a-time lock (an exclusive ``flock`` on `lock_path`)."""

    def __init__(self, models_dir: os.PathLike | str):
        self.path = lock_path(models_dir)
        self.fd: Optional[int] = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another run (any process) holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def read_state(models_dir: os.PathLike | str) -> JobState:
    """The job's state as stored; a run recorded as queued/running whose process is gone (its
    lock is free) reads "interrupted". No file (or an unreadable one): "idle"."""
    try:
        state = JobState.from_dict(json.loads(state_path(models_dir).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return JobState()
    if state.running:
        probe = RunLock(models_dir)
        if probe.acquire():                      # nobody holds it: the run's process is gone
            probe.release()
            state.status, state.reason = "interrupted", INTERRUPTED
            state.message = state.message or INTERRUPTED
    return state


def form_defaults() -> dict:
    """Defaults of the fine-tuning form: text-branch epochs (the speech adapter is fitted to
    convergence) and minimum corrections per class."""
    from .finetune import FINETUNE_RECIPE, MIN_PER_CLASS
    return {"epochs": FINETUNE_RECIPE["text"]["epochs"], "min_per_class": MIN_PER_CLASS}


def summary_text(dataset_summary: Mapping) -> str:
    """The dry run's dataset summary as plain text (counts per class and annotator, agreement)."""
    from .finetune import format_summary
    return format_summary(dataset_summary)


def refusal(report: Mapping) -> Optional[str]:
    """Why fine-tuning wrote no bundle, from its report (None when it wrote one)."""
    if report.get("written"):
        return None
    gate = report.get("gate") or {}
    parts = [report.get("guard"), report.get("reason"),
             "; ".join(report.get("unchanged") or []) and
             "nothing changed: " + "; ".join(report.get("unchanged") or []),
             "; ".join(gate.get("failures") or []) and
             "worse on the reference set: " + "; ".join(gate.get("failures") or [])]
    return "; ".join(p for p in parts if p) or "the new model did not pass its checks"


@dataclass
class FinetuneJob:
    """One fine-tuning run in a background thread; its fields are read by the UI's poller, and
    with `models_dir` its `JobState` is written to disk as it goes (see `read_state`)."""
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
    models_dir: Optional[Path] = None
    lock: Optional[RunLock] = None
    persisted: float = 0.0

    @property
    def running(self) -> bool:
        return self.state in ("queued", "running")

    def job_state(self) -> JobState:
        """This run as the shared `JobState`."""
        status = {"queued": "queued", "running": "running", "written": "finished",
                  "not written": "refused", "failed": "failed"}[self.state]
        reason = self.error or None
        if self.state == "not written":
            reason = refusal(self.report or {})
        return JobState(status=status, progress=round(self.fraction, 4), message=self.message,
                        detail="\n".join(self.log[-20:]), started=self.started or None,
                        finished=self.finished or None, bundle=self.out.name, reason=reason)

    def persist(self, force: bool = True) -> None:
        """Write the state for every visitor (throttled to PERSIST_EVERY_S unless `force`)."""
        if self.models_dir is None or (not force and time.time() - self.persisted < PERSIST_EVERY_S):
            return
        try:
            write_state(self.models_dir, self.job_state())
            self.persisted = time.time()
        except OSError as exc:       # a full disk must not stop the run; the UI still polls it
            log.warning("could not write the fine-tuning state: %s", exc)

    def progress(self, frac: float, msg: str) -> None:
        """The progress callback handed to finetune(): fraction done and what it is doing."""
        self.fraction = max(self.fraction, min(1.0, float(frac)))
        new_step = bool(msg and msg != self.message)
        if new_step:
            self.message = msg
            self.log.append(f"{time.time() - self.started:6.0f} s  {msg}")
        self.persist(force=new_step)

    def run(self, corrections: Any) -> None:
        """Run finetune(corrections, base, out, **kwargs) here, recording the outcome.
        `corrections`: a CorrectionStore (or a database URL)."""
        from .finetune import finetune
        self.state = "running"
        self.persist()
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
            self.persist()                   # the outcome is on disk before the lock is free
            if self.lock is not None:
                self.lock.release()

    def start(self, corrections: Any) -> "FinetuneJob":
        """Run in a daemon thread (holding `lock`, when given, until it ends)."""
        self.started = time.time()
        self.persist()
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
            raise EmodemoError(ALREADY_RUNNING)
        out = self.registry.new_bundle_folder(name)
        kw = self.kwargs(epochs, min_per_class, reference, force)
        base = self.registry.active_path()
        if base is None:
            raise EmodemoError("The active model was not loaded from a folder; cannot fine-tune it.")
        lock = RunLock(self.models_dir)
        if not lock.acquire():                   # a run in another process (or visitor)
            raise EmodemoError(ALREADY_RUNNING)
        try:
            dry = self.dry_run(base, out, kw["min_per_class"])
        except BaseException:
            lock.release()
            raise
        if dry.get("guard"):
            now = time.time()
            write_state(self.models_dir, JobState(
                status="refused", progress=0.0, message="not started: too few corrections",
                detail=summary_text(dry["dataset"]), started=now, finished=now,
                bundle=out.name, reason=dry["guard"]))
            lock.release()
            raise EmodemoError(f"{dry['guard']}\n\n{summary_text(dry['dataset'])}")
        self.job = FinetuneJob(base=base, out=out, kwargs={**self.options, **kw},
                               models_dir=self.models_dir, lock=lock)
        self.job.start(self.store)
        return self.job, dry

    @property
    def models_dir(self) -> Path:
        """The folder new bundles go to; the job's state file is beside it."""
        return Path(self.registry.new_bundles_dir)

    def state(self) -> JobState:
        """The shared fine-tuning state (this process's run, another's, or the last outcome)."""
        return read_state(self.models_dir)
