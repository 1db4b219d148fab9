"""`guard`: a handler's exception becomes a message for the person (never a traceback)."""
from __future__ import annotations

import functools
import logging
from ...errors import EmodemoError
from ..markdown import error, for_the_app

log = logging.getLogger("emodemo.ui")


def failure(msg_key: str, exc: Exception, what: str) -> dict:
    """The outputs for a failed handler: the message under `msg_key`, and "_error" (a toast).
    EmodemoError (AudioError, StoreError ...) is the person's to fix: its message is shown.
    Anything else is ours: logged with its traceback, reported without it."""
    if isinstance(exc, EmodemoError):
        log.info("%s: %s", what, exc)
        msg = for_the_app(str(exc))
        return {msg_key: error(msg), "_error": msg}
    log.error("handler %s failed", what, exc_info=exc)
    msg = (f"Something went wrong on our side ({type(exc).__name__}). "
           "The details are in the server log; please try again or try another clip.")
    return {msg_key: error(msg), "_error": msg}


def guard(msg_key: str):
    """Decorator: a handler `fn(ctx, ...)` never raises; see `failure`."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - never show a traceback to the person
                return failure(msg_key, exc, fn.__name__)
        return wrapper
    return deco
