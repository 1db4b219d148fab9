"""History tab: filter and export the stored corrections, agreement per clip."""
from __future__ import annotations

from ...analysis import NONE_LABEL
from ..handlers.history import AGREEMENT_COLUMNS, HISTORY_COLUMNS


def layout(labels: list[str]) -> dict:
    import gradio as gr
    c = {}
    with gr.Row():
        c["label_filter"] = gr.Dropdown(["all", *labels, NONE_LABEL], value="all", label="Label",
                                        elem_id="emodemo-filter-label")
        c["text_filter"] = gr.Textbox(label="Annotator / text contains", max_lines=1,
                                      placeholder="type, then press Enter",
                                      elem_id="emodemo-filter-text")
        c["refresh_btn"] = gr.Button("Refresh", elem_id="emodemo-refresh")
    c["history_msg"] = gr.Markdown("", elem_id="emodemo-history-msg")
    c["history"] = gr.Dataframe(headers=HISTORY_COLUMNS, datatype="str", interactive=False,
                                wrap=True, max_height=420, label="Corrections (newest first)",
                                elem_id="emodemo-history")
    c["agreement"] = gr.Dataframe(headers=AGREEMENT_COLUMNS, datatype="str", interactive=False,
                                  max_height=300, label="Agreement per clip (least agreement first)",
                                  elem_id="emodemo-agreement")
    with gr.Row():
        c["csv_btn"] = gr.Button("Export CSV", elem_id="emodemo-export-csv")
        c["jsonl_btn"] = gr.Button("Export JSONL", elem_id="emodemo-export-jsonl")
    c["export_file"] = gr.File(label="Download", interactive=False, elem_id="emodemo-export-file")
    return c
