"""About tab: the model, the limits, who annotations are recorded under, the examples, the API."""
from __future__ import annotations

from ...analysis import Limits
from ..markdown import about


def layout(recognizer, limits: Limits, sign_in: bool) -> dict:
    import gradio as gr
    return {"about": gr.Markdown(about(recognizer, limits, sign_in), elem_id="emodemo-about")}
