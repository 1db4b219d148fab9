"""Model bundles on disk, as a service for the app's Models tab: find and describe them, and
keep the active recognizer (`ModelRegistry`: list across folders, switch, admin token).
Fine-tuning jobs are in emodemo.jobs.

A bundle is any folder with a `config.json` (see bundle.py) directly under a models folder.
The app only ever switches to, or fine-tunes from, a bundle this module found there: a path typed
by a visitor is never loaded.
"""
from __future__ import annotations

import hmac
import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

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
    heldout_before: Optional[float] = None   # UA on the held-out corrections, parent / this one
    heldout_after: Optional[float] = None
    forced: bool = False                     # written although a check of the gate failed

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


def _ua(value: Any) -> Optional[float]:
    """A held-out number from lineage: a float, or {"fused": {"UA": x}} / {"UA": x}."""
    if isinstance(value, dict):
        value = (value.get("fused") or {}).get("UA", value.get("UA"))
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _parent(lin: dict) -> str:
    """Which bundle a fine-tuned one came from, as "name vVERSION": the "base" block (name,
    version, path), else C7's "parent" (a path or {name, version})."""
    p = lin.get("base") or lin.get("parent") or ""
    if isinstance(p, dict):
        return f"{p.get('name', '')} v{p.get('version', '')}".strip()
    return str(p)


def _lineage(lin: dict) -> dict:
    """The Models table's lineage fields of a config's "lineage" block (C7, and the older
    layout: base, corrections.clips_used, metrics.heldout_corrections)."""
    ho = (lin.get("metrics") or {}).get("heldout_corrections") or {}
    used = lin.get("corrections_used", (lin.get("corrections") or {}).get("clips_used"))
    return {"base": _parent(lin), "corrections": None if used is None else int(used),
            "heldout_before": _ua(lin.get("heldout_before", ho.get("before"))),
            "heldout_after": _ua(lin.get("heldout_after", ho.get("after"))),
            "forced": bool(lin.get("forced") or (lin.get("gate") or {}).get("forced"))}


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
    return BundleInfo(path=path.resolve(), name=str(cfg.get("name", path.name)),
                      version=str(cfg.get("version", "")), labels=list(cfg.get("labels", [])),
                      size=bundle_size(path), created=created, audio_ua=audio, text_f1=text,
                      **_lineage(lin))


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


class ModelRegistry:
    """The bundles in one or more folders and the active recognizer, shared by everyone using
    the app. The first folder is where new (fine-tuned) bundles go; a folder name found in an
    earlier folder shadows the same name in a later one."""

    def __init__(self, recognizer, folders: Sequence[str | Path], admin_token: Optional[str] = None):
        self.recognizer = recognizer
        self.folders: list[Path] = []
        for d in folders:
            if Path(d).resolve() not in {f.resolve() for f in self.folders}:
                self.folders.append(Path(d))
        self.admin_token = admin_token or None   # when set, switching and fine-tuning need it
        self._lock = threading.Lock()

    @property
    def new_bundles_dir(self) -> Path:
        return self.folders[0]

    def bundles(self) -> list[BundleInfo]:
        out, seen = [], set()
        for d in self.folders:
            for b in find_bundles(d):
                if b.key not in seen:
                    seen.add(b.key)
                    out.append(b)
        return out

    def active_path(self) -> Optional[Path]:
        p = getattr(self.recognizer, "bundle_path", None)
        return Path(p).resolve() if p else None

    def check_admin(self, token: Any) -> None:
        """Raise unless `token` is the admin token (nothing to check when none is set)."""
        if self.admin_token and not hmac.compare_digest(str(token or "").encode(),
                                                        self.admin_token.encode()):
            raise EmodemoError("This needs the admin token (the app's owner sets it with "
                               "--admin-token or EMODEMO_ADMIN_TOKEN).")

    def new_bundle_folder(self, name: str) -> Path:
        """The folder for a new bundle `name`: refused when taken in any listed folder."""
        return [check_new_name(d, name) for d in self.folders][0]

    def switch(self, key: Optional[str], token: Any = None) -> bool:
        """Make the listed bundle `key` the active recognizer; False when it already is.
        The ASR model is reused when the new bundle names the same one."""
        from .bundle import read_config
        from .recognizer import load_recognizer
        self.check_admin(token)
        found = {b.key: b for b in self.bundles()}
        if not key or key not in found:
            raise EmodemoError("Choose one of the listed models first.")
        b = found[key]
        labels = list(self.recognizer.labels)
        if b.labels != labels:
            raise EmodemoError(f"'{key}' predicts {', '.join(b.labels)}, but this app was started with "
                               f"{', '.join(labels)}. Restart it with --bundle models/{key}.")
        with self._lock:
            if b.path == self.active_path():
                return False
            old = self.recognizer
            same_asr = read_config(b.path).get("asr") == old.config.get("asr")
            # one reference swap: requests in flight finish on the old recognizer
            self.recognizer = load_recognizer(b.path, asr=old.loaded_asr if same_asr else None,
                                              threads=old.threads)
        return True
