"""Models tab: the bundles and their lineage, switching the active one, fine-tuning a new one in
the background with its job state shown to every visitor. Its layout and its wiring."""
from __future__ import annotations

from ... import jobs
from ..handlers import models as H

TITLE, ID = "Models", "models"
POLL_SECONDS = 2.0


def layout(ctx) -> dict:
    import gradio as gr
    c = {}
    c["models_msg"] = gr.Markdown("", elem_id="emodemo-models-msg")
    c["models_table"] = gr.Dataframe(headers=H.MODEL_COLUMNS, datatype="str", interactive=False,
                                     wrap=True, max_height=320, label="Model bundles",
                                     elem_id="emodemo-models")
    with gr.Row():
        c["models_dd"] = gr.Dropdown(choices=[], value=None, label="Model",
                                     elem_id="emodemo-models-dd", scale=3)
        c["switch_btn"] = gr.Button("Use this model", variant="primary",
                                    elem_id="emodemo-switch", scale=1)
        c["models_refresh"] = gr.Button("Refresh", elem_id="emodemo-models-refresh", scale=1)
    gr.Markdown("<small>Switching changes the model for everyone using this app; every "
                "prediction and correction records the model version that made it.</small>")
    c["admin_in"] = gr.Textbox(label="Admin token (needed to switch models, fine-tune and "
                               "undo others' corrections)", type="password", max_lines=1,
                               visible=bool(ctx.registry.admin_token), elem_id="emodemo-admin-token")
    c.update(finetune_form(ctx))
    c["ft_timer"] = gr.Timer(POLL_SECONDS, active=False)
    return c


def finetune_form(ctx) -> dict:
    import gradio as gr
    c = {}
    defaults = jobs.form_defaults() if ctx.allow_finetune else {"epochs": 1, "min_per_class": 1}
    with gr.Group(visible=ctx.allow_finetune):
        gr.Markdown("### Fine-tune a new version from the stored corrections\n"
                    "Starts from the active model, holds out a quarter of the corrected clips to "
                    "measure before/after, mixes in a sample of the original training data so "
                    "old skills are kept, and writes a new bundle with its lineage card into "
                    "the models folder.")
        with gr.Row():
            c["ft_name"] = gr.Textbox(label="Name of the new model", max_lines=1,
                                      placeholder="e.g. my-voices-v1", elem_id="emodemo-ft-name")
            c["ft_epochs"] = gr.Number(value=defaults["epochs"], precision=0, minimum=1,
                                       maximum=50, label="Text-branch epochs",
                                       elem_id="emodemo-ft-epochs")
            c["ft_min"] = gr.Number(value=defaults["min_per_class"], precision=0, minimum=1,
                                    maximum=1000, label="Min. corrections per class",
                                    elem_id="emodemo-ft-min")
        with gr.Row():
            c["ft_ref"] = gr.Dropdown(H.reference_choices(ctx), value="",
                                      label="Reference set (must not get worse)",
                                      elem_id="emodemo-ft-ref", scale=3)
            c["ft_force"] = gr.Checkbox(label="write even if worse on the reference",
                                        elem_id="emodemo-ft-force", scale=2)
        with gr.Row():
            c["ft_dry"] = gr.Button("Check the data (dry run)", elem_id="emodemo-ft-dry")
            c["ft_start"] = gr.Button("Start fine-tuning", variant="primary",
                                      elem_id="emodemo-ft-start")
        c["ft_msg"] = gr.Markdown("", elem_id="emodemo-ft-msg")
        c["ft_progress"] = gr.Markdown("", elem_id="emodemo-ft-progress")
    return c


def wire(w) -> None:
    c = w.c
    keys = list(H.MODELS_KEYS)
    for trig in (c["models_tab"].select, c["models_refresh"].click):
        w.on(trig, H.models, [], keys)
    w.on(c["switch_btn"].click, H.switch_model, ["models_dd", "admin_in"],
         [*keys, "weight", "active_md", "about"], **w.model_queue)
    w.on(c["ft_dry"].click, H.finetune_dry_run, ["ft_min"], ["ft_msg"])
    w.on(c["ft_start"].click, H.start_finetune,
         ["ft_name", "ft_epochs", "ft_min", "ft_ref", "ft_force", "admin_in"],
         ["ft_msg", "ft_timer", "ft_progress"])
    status = ["ft_progress", "ft_timer", "models_table", "models_dd"]
    w.on(c["ft_timer"].tick, H.finetune_status, [], status, show_progress="hidden")
    # every visitor, on opening the page or the tab, sees the job's state (and the poller
    # starts when one is running: started by someone else, or before a reload)
    for trig in (w.demo.load, c["models_tab"].select):
        w.on(trig, H.finetune_status, [], status, show_progress="hidden", name="finetune_state")
