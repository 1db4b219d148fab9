"""Models tab: the bundles, switching the active one, fine-tuning a new one in the background."""
from __future__ import annotations

from ... import jobs
from ..handlers.models import MODEL_COLUMNS


def layout(reference_choices: list, allow_finetune: bool, admin_token: bool) -> dict:
    import gradio as gr
    c = {}
    c["models_msg"] = gr.Markdown("", elem_id="emodemo-models-msg")
    c["models_table"] = gr.Dataframe(headers=MODEL_COLUMNS, datatype="str", interactive=False,
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
    c["admin_in"] = gr.Textbox(label="Admin token (needed to switch models and fine-tune)",
                               type="password", max_lines=1, visible=bool(admin_token),
                               elem_id="emodemo-admin-token")
    defaults = jobs.form_defaults() if allow_finetune else {"epochs": 1, "min_per_class": 1}
    with gr.Group(visible=allow_finetune):
        gr.Markdown("### Fine-tune a new version from the stored corrections\n"
                    "Starts from the active model, holds out a quarter of the corrected clips to "
                    "measure before/after, mixes in a sample of the original training data so "
                    "old skills are kept, and writes a new bundle with its lineage card into "
                    "`models/<name>`.")
        with gr.Row():
            c["ft_name"] = gr.Textbox(label="Name of the new model", max_lines=1,
                                      placeholder="e.g. my-voices-v1", elem_id="emodemo-ft-name")
            c["ft_epochs"] = gr.Number(value=defaults["epochs"], precision=0, minimum=1,
                                       maximum=50, label="Text-branch epochs (at most)",
                                       elem_id="emodemo-ft-epochs")
            c["ft_min"] = gr.Number(value=defaults["min_per_class"], precision=0, minimum=1,
                                    maximum=1000, label="Min. corrections per class",
                                    elem_id="emodemo-ft-min")
        with gr.Row():
            c["ft_ref"] = gr.Dropdown(reference_choices, value="",
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
    c["ft_timer"] = gr.Timer(2.0, active=False)
    return c
