"""About tab: the active model, the limits, who annotations are recorded under, the examples,
the API. Its layout and its wiring."""
from __future__ import annotations

from ..handlers.analyse import active_model
from ..markdown import about

TITLE, ID = "About", "about"


def layout(ctx) -> dict:
    import gradio as gr
    return {"about": gr.Markdown(about(ctx.rec, ctx.limits, ctx.sign_in), elem_id="emodemo-about")}


def wire(w) -> None:
    # the model may have been switched since the page was built: name the one in use now
    for trig in (w.demo.load, w.c["about_tab"].select, w.c["analyse_tab"].select):
        w.on(trig, active_model, [], ["active_md", "about"], show_progress="hidden")
