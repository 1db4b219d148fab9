"""The Gradio app: try a clip, see what each branch thinks, correct it, browse corrections,
manage models.

    handlers/   the events as plain methods over plain values (Gradio-free; unit-tested directly)
    state.py    the per-clip state kept between events
    markdown.py everything shown as Markdown (escaped)
    tabs/       one layout function per tab
    app.py      build_app: layout + wiring, the only place that builds Gradio updates

Services it uses: emodemo.analysis (upload checks, re-fusion), emodemo.registry (bundles, the
active model), emodemo.jobs (background fine-tuning).
"""
from ..analysis import Limits, parse_size
from .app import api_errors, bind, build_app, launch_kwargs
from .handlers import Handlers
from .markdown import md_escape
from .tabs.analyse import example_files

__all__ = ["Handlers", "Limits", "api_errors", "bind", "build_app", "example_files",
           "launch_kwargs", "md_escape", "parse_size"]
