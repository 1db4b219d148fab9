"""The Gradio app: try a clip, see what each branch thinks, correct it, annotate a queue,
browse corrections, manage models.

    context.py  UIContext: the handlers' explicit dependencies (registry, store, limits, ...)
    handlers/   the events as plain functions fn(ctx, *values) -> {name: value} (Gradio-free)
    tabs/       one module per tab: its layout and its wiring, side by side
    wiring.py   handler outputs -> Gradio updates, the signed-in account, API errors
    app.py      build_app(settings, recognizer, store): the tabs in TABS, and the API
    state.py    the per-clip state kept between events
    markdown.py everything shown as Markdown (escaped)
    examples.py the example clips and what was performed in each

Services it uses: emodemo.analysis (upload checks, re-fusion, the "unsure" rule),
emodemo.registry (bundles, the active model), emodemo.jobs (background fine-tuning),
emodemo.annotate (the annotation queue, when installed).
"""
from __future__ import annotations

import functools

from ..analysis import Limits, parse_size
from .app import build_app, context_of, launch_kwargs
from .context import UIContext
from .examples import example_files
from .handlers import analyse, annotate, correct, history, models
from .markdown import md_escape
from .wiring import api_errors, bind

HANDLER_MODULES = (analyse, correct, history, models, annotate)


class Handlers(UIContext):
    """A UIContext whose handlers are also callable as methods, for scripts and tests:
    `h.analyse(audio, weight)` is `handlers.analyse.analyse(h, audio, weight)`. Built like
    `UIContext.create(recognizer, store, limits, **options)`."""

    def __init__(self, recognizer, store, limits=None, **options):   # noqa: D107
        self.__dict__.update(UIContext.create(recognizer, store, limits, **options).__dict__)

    def __getattr__(self, name: str):
        if not name.startswith("_"):
            for mod in HANDLER_MODULES:
                fn = getattr(mod, name, None)
                if callable(fn) and getattr(fn, "__module__", "") == mod.__name__:
                    return functools.partial(fn, self)
        raise AttributeError(name)


__all__ = ["Handlers", "Limits", "UIContext", "api_errors", "bind", "build_app", "context_of",
           "example_files", "launch_kwargs", "md_escape", "parse_size"]
