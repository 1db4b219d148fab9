"""Model bundles on disk, for the app's Models tab: find them, describe them, and run a
fine-tuning job from the corrections store in the background.

A bundle is any folder with a `config.json` (see bundle.py) directly under the models folder.
The app only ever switches to, or fine-tunes from, a bundle this module found there: a path typed
by a visitor is never loaded.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .errors import EmodemoError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class BundleInfo:
    """What the Models tab shows about one bundle."""
    path: Path
    name: str
    version: str
    labels: list[str]
    size: int
    created: str = ""
    base: str = ""
    audio_ua: Optional[float] = None
    text_f1: Optional[float] = None
    corrections: Optional[int] = None

    @property
    def key(self) -> str:
        """The folder name: what the app's dropdown shows and sends back."""
        return self.path.name


def _metric(cfg: dict) -> tuple[Optional[float], Optional[float]]:
    """Audio validation UA and text dev macro-F1 from a trained or fine-tuned bundle's config."""
    tr = (cfg.get("training") or {}).get("metrics") or {}
    audio, text = tr.get("speech_val_UA"), tr.get("text_dev_macro_F1")
    lin = cfg.get("lineage") or {}
    after = ((lin.get("metrics") or {}).get("heldout_corrections") or {}).get("after") or {}
    if audio is None and "audio" in after:
        audio = after["audio"].get("UA")
    return audio, text


def describe(path: str | Path) -> BundleInfo:
    """Read a bundle folder's config.json (raises EmodemoError when it is not a bundle)."""
    from .bundle import bundle_size, read_config
    path = Path(path)
    cfg = read_config(path)
    lin = cfg.get("lineage") or {}
    audio, text = _metric(cfg)
    created = lin.get("created_at") or ""
    if not created:
        try:
            created = datetime.fromtimestamp((path / "config.json").stat().st_mtime,
                                             timezone.utc).isoformat(timespec="seconds")
        except OSError:
            created = ""
    base = lin.get("base") or {}
    return BundleInfo(path=path.resolve(), name=str(cfg.get("name", path.name)),
                      version=str(cfg.get("version", "")), labels=list(cfg.get("labels", [])),
                      size=bundle_size(path), created=created,
                      base=f"{base.get('name', '')} v{base.get('version', '')}" if base else "",
                      audio_ua=audio, text_f1=text,
                      corrections=(lin.get("corrections") or {}).get("clips_used"))


def find_bundles(root: str | Path) -> list[BundleInfo]:
    """Every bundle directly under `root`, sorted by folder name; unreadable ones are skipped."""
    root = Path(root)
    out = []
    if not root.is_dir():
        return out
    for p in sorted(root.iterdir()):
        # hidden folders are skipped: a fine-tuning run stages its bundle in ".<name>.tmp-*"
        if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file():
            try:
                out.append(describe(p))
            except (EmodemoError, OSError, ValueError) as exc:
                log.warning("skipping %s: %s", p, exc)
    return out


def check_new_name(root: str | Path, name: str) -> Path:
    """The folder for a new bundle called `name` under `root`; a clear error if the name is not a
    plain folder name or is taken."""
    name = (name or "").strip()
    if not NAME_RE.match(name) or name in (".", ".."):
        raise EmodemoError("Give the new model a short name: letters, digits, '.', '-' or '_' "
                           "(up to 64 characters), e.g. 'telephone-v1'.")
    out = Path(root) / name
    if out.exists():
        raise EmodemoError(f"A model called '{name}' already exists; choose another name.")
    return out


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
    _thread: Optional[threading.Thread] = None

    @property
    def running(self) -> bool:
        return self.state in ("queued", "running")

    def _progress(self, frac: float, msg: str) -> None:
        self.fraction = max(self.fraction, min(1.0, float(frac)))
        if msg and msg != self.message:
            self.message = msg
            self.log.append(f"{time.time() - self.started:6.0f} s  {msg}")

    def _run(self, db_url: str) -> None:
        from .finetune import finetune
        self.state = "running"
        try:
            rep = finetune(db_url, self.base, self.out, progress=self._progress, **self.kwargs)
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

    def start(self, db_url: str) -> "FinetuneJob":
        """Run `finetune(db_url, base, out, **kwargs)` in a daemon thread."""
        self.started = time.time()
        self._thread = threading.Thread(target=self._run, args=(db_url,), daemon=True,
                                        name=f"finetune-{self.out.name}")
        self._thread.start()
        return self

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the run ends (tests, scripts); True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running
