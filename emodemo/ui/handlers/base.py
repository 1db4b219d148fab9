"""What every handler shares: the active recognizer, the store, the limits, a work folder, and
`guard`, which turns a handler's exception into a message for the person."""
from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path
from typing import Optional

from ...analysis import Limits
from ...errors import EmodemoError
from ..markdown import error

log = logging.getLogger("emodemo.ui")


def failure(msg_key: str, exc: Exception, what: str) -> dict:
    """The outputs for a failed handler: the message under `msg_key`, and "_error" (a toast).
    EmodemoError (AudioError, StoreError ...) is the person's to fix: its message is shown.
    Anything else is ours: logged with its traceback, reported without it."""
    if isinstance(exc, EmodemoError):
        log.info("%s: %s", what, exc)
        return {msg_key: error(str(exc)), "_error": str(exc)}
    log.error("handler %s failed", what, exc_info=exc)
    msg = (f"Something went wrong on our side ({type(exc).__name__}). "
           "The details are in the server log; please try again or try another clip.")
    return {msg_key: error(msg), "_error": msg}


def guard(msg_key: str):
    """Decorator: a handler never raises; see `failure`."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - never show a traceback to the person
                return failure(msg_key, exc, fn.__name__)
        return wrapper
    return deco


class HandlerBase:
    """State shared by the handler groups (see emodemo.ui.handlers.Handlers)."""

    def __init__(self, registry, store, limits: Optional[Limits] = None,
                 work_dir: Optional[str | Path] = None):
        self.registry = registry          # emodemo.registry.ModelRegistry: the active recognizer
        self.store = store
        self.limits = limits or Limits()
        self.labels: list[str] = list(registry.recognizer.labels)
        self._work_dir = Path(work_dir) if work_dir is not None else None

    @property
    def rec(self):
        """The active recognizer (switching models replaces it for everyone)."""
        return self.registry.recognizer

    @property
    def work_dir(self) -> Path:
        """Where exports and microphone arrays written as WAV go (a private temp folder)."""
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="emodemo-ui-"))
        self._work_dir.mkdir(parents=True, exist_ok=True)
        return self._work_dir
