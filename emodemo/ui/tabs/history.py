"""History tab: filter, play, undo/restore and export the stored corrections; agreement per
clip. Its layout and its wiring, side by side."""
from __future__ import annotations

from ...analysis import NONE_LABEL
from ..handlers import history as H

TITLE, ID = "History", "history"


def layout(ctx) -> dict:
    import gradio as gr
    c = {}
    with gr.Row():
        c["label_filter"] = gr.Dropdown(["all", *ctx.labels, NONE_LABEL], value="all",
                                        label="Label", elem_id="emodemo-filter-label")
        c["text_filter"] = gr.Textbox(label="Annotator / speaker / file / text contains",
                                      max_lines=1, placeholder="type, then press Enter",
                                      elem_id="emodemo-filter-text")
        c["show_deleted"] = gr.Checkbox(label="show deleted", elem_id="emodemo-show-deleted")
        c["refresh_btn"] = gr.Button("Refresh", elem_id="emodemo-refresh")
    c["history_msg"] = gr.Markdown("", elem_id="emodemo-history-msg")
    c["history"] = gr.Dataframe(headers=H.HISTORY_COLUMNS, datatype="str", interactive=False,
                                wrap=True, max_height=420, label="Corrections (newest first)",
                                elem_id="emodemo-history")
    with gr.Row():
        c["history_id"] = gr.Textbox(label="Selected correction", interactive=False, max_lines=1,
                                     placeholder="click a row", elem_id="emodemo-history-id", scale=1)
        c["history_audio"] = gr.Audio(label="Its audio (the segment for a segment)",
                                      interactive=False, elem_id="emodemo-history-audio", scale=3)
        with gr.Column(scale=1):
            c["undo_btn"] = gr.Button("Undo (delete) it", elem_id="emodemo-undo", size="sm")
            c["restore_btn"] = gr.Button("Restore it", elem_id="emodemo-restore", size="sm")
    c["agreement"] = gr.Dataframe(headers=H.AGREEMENT_COLUMNS, datatype="str", interactive=False,
                                  max_height=300, label="Agreement per clip (least agreement first)",
                                  elem_id="emodemo-agreement")
    with gr.Row():
        c["csv_btn"] = gr.Button("Export CSV", elem_id="emodemo-export-csv")
        c["jsonl_btn"] = gr.Button("Export JSONL", elem_id="emodemo-export-jsonl")
    c["export_file"] = gr.File(label="Download", interactive=False, elem_id="emodemo-export-file")
    return c


def wire(w) -> None:
    c = w.c
    keys = ["history", "agreement", "history_msg"]
    filters = ["label_filter", "text_filter", "show_deleted"]
    for trig in (c["refresh_btn"].click, c["history_tab"].select, c["label_filter"].change,
                 c["text_filter"].submit, c["show_deleted"].change):
        w.on(trig, H.history, filters, keys)

    w.on_select(c["history"].select, lambda ctx, row: H.pick(ctx, row[0] if row else None),
                ["history_audio", "history_id", "history_msg"], name="history_pick")
    who = ["history_id", "annotator_in", "admin_in"]
    w.on(c["undo_btn"].click, H.undo, who, keys, account=w.ctx.sign_in, name="undo")
    w.on(c["restore_btn"].click, lambda ctx, *a, **k: H.undo(ctx, *a, restore=True, **k), who,
         keys, account=w.ctx.sign_in, name="restore")
    for fmt in ("csv", "jsonl"):
        w.on(c[f"{fmt}_btn"].click, lambda ctx, fmt=fmt: H.export(ctx, fmt), [],
             ["export_file", "history_msg"], name=f"export_{fmt}")

