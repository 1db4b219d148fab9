"""Analyse tab: upload or record, see each branch and the fusion, edit the transcript, play a
segment of a long recording, correct. Its layout and its wiring, side by side."""
from __future__ import annotations

from ...analysis import NONE_LABEL
from ...store.writes import MAX_SPEAKER_CHARS
from ..examples import caption, example_files, truths
from ..handlers import analyse as H
from ..handlers import correct as C
from ..markdown import active_model, label_choice, signed_in

TITLE, ID = "Analyse", "analyse"
START = H.START


def layout(ctx) -> dict:
    import gradio as gr
    c = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            c["audio_in"] = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                     label="Speech clip (wav, flac, mp3, m4a, ogg, webm)",
                                     elem_id="emodemo-audio")
            c["analyse_btn"] = gr.Button("Analyse", variant="primary", elem_id="emodemo-analyse")
            examples = example_files(ctx.examples_dir)
            if examples:
                table = truths(ctx.examples_dir)
                gr.Examples(examples=[[p] for p in examples], inputs=[c["audio_in"]],
                            label="Examples (click one; the label is what the speaker performed)",
                            example_labels=[caption(p, table) for p in examples])
            c["weight"] = gr.Slider(0.0, 1.0, value=float(ctx.rec.fusion.audio_weight),
                                    step=0.05, label="Audio weight in the fusion",
                                    info="0 = text only, 1 = audio only; updates live",
                                    elem_id="emodemo-weight")
            with gr.Group():
                c["language_md"] = gr.Markdown("", elem_id="emodemo-language")
                c["transcript"] = gr.Textbox(
                    label="Transcript the text branch reads (edit it, then re-run the text branch)",
                    lines=2, max_lines=6, elem_id="emodemo-transcript",
                    max_length=ctx.limits.max_text_chars,
                    placeholder="The recognised words appear here.")
                c["rerun_btn"] = gr.Button("Re-run text", size="sm", elem_id="emodemo-rerun")
        with gr.Column(scale=3, min_width=360):
            c["active_md"] = gr.Markdown(active_model(ctx.rec), elem_id="emodemo-active-model")
            c["status"] = gr.Markdown(START, elem_id="emodemo-status")
            c["summary"] = gr.Markdown("", elem_id="emodemo-summary")
            with gr.Column(visible=False) as c["long_box"]:
                c["timeline_plot"] = gr.Plot(label="Emotion timeline", show_label=False,
                                             elem_id="emodemo-timeline")
                with gr.Row():
                    c["segment_dd"] = gr.Dropdown(choices=[], value=None, type="value",
                                                  label="Segment to view, play and correct",
                                                  elem_id="emodemo-segment", scale=3)
                    c["segment_audio"] = gr.Audio(label="This segment", interactive=False,
                                                  elem_id="emodemo-segment-audio", scale=2)
            c["probs_plot"] = gr.Plot(label="Probabilities", show_label=False,
                                      elem_id="emodemo-probs")
            c["wave_plot"] = gr.Plot(label="Waveform", show_label=False, elem_id="emodemo-wave")
    c.update(correction_form(ctx))
    return c


def correction_form(ctx) -> dict:
    import gradio as gr
    c = {}
    with gr.Accordion("Is this right? Tell us what you hear", open=True):
        if ctx.sign_in:
            with gr.Row():
                c["login"] = gr.LoginButton(elem_id="emodemo-login", scale=1)
                c["signin_msg"] = gr.Markdown(signed_in(None), elem_id="emodemo-signin-msg")
        with gr.Row():
            choices = [(label_choice(l), l) for l in [*ctx.labels, NONE_LABEL]]
            c["label_in"] = gr.Radio(choices, value=None, label="Emotion you hear",
                                     elem_id="emodemo-label", scale=3)
            with gr.Column(scale=2):
                # where annotators sign in, a typed name is never their identity: no name box
                c["annotator_in"] = gr.Textbox(label="Your name or id (optional)", max_lines=1,
                                               elem_id="emodemo-annotator", visible=not ctx.sign_in,
                                               max_length=ctx.limits.max_annotator_chars)
                c["note_in"] = gr.Textbox(label="Note (optional)", lines=1, max_lines=4,
                                          elem_id="emodemo-note", max_length=ctx.limits.max_text_chars)
                c["speaker_in"] = gr.Textbox(label="Speaker / session (optional)", max_lines=1,
                                             info="Who speaks in this clip (kept for the next "
                                                  "one): fine-tuning keeps each speaker's clips "
                                                  "on one side of its held-out check",
                                             max_length=MAX_SPEAKER_CHARS, elem_id="emodemo-speaker")
        c["correct_btn"] = gr.Button("Submit correction", variant="primary",
                                     elem_id="emodemo-submit")
        c["correct_msg"] = gr.Markdown("", elem_id="emodemo-correct-msg")
        who = "your Hugging Face account name" if ctx.sign_in else "your optional name"
        gr.Markdown("<small>Submitting stores the audio, your label, the transcript as shown in "
                    f"the box, the model's prediction, the speaker if given, and {who} and note.</small>")
    return c


def wire(w) -> None:
    import gradio as gr
    c, q = w.c, w.model_queue
    keys = [*H.VIEW_KEYS, "status", "correct_msg"]
    # the message of a failed analysis is shown in the status line, right there: no toast too
    for trig in (c["audio_in"].change, c["analyse_btn"].click):
        w.on(trig, H.analyse, ["audio_in", "weight"], keys, progress=True, toast=False,
             trigger_mode="always_last", **q)
    for trig in (c["rerun_btn"].click, c["transcript"].submit):
        w.on(trig, H.rerun_text, ["state", "transcript", "weight"], [*H.REFUSE_KEYS, "status"],
             toast=False, **q)
    w.on(c["weight"].change, H.refuse, ["state", "weight"], [*H.REFUSE_KEYS, "status"],
         show_progress="hidden", trigger_mode="always_last")
    w.on(c["segment_dd"].input, H.select_segment, ["state", "segment_dd", "weight"],
         [*H.SELECT_KEYS, "correct_msg", "status"])
    # one correction per click: the button is off while it is stored (and the store and the
    # handler both recognise the same submission again)
    btn = c["correct_btn"]
    off = btn.click(lambda: gr.update(interactive=False), None, btn, queue=False,
                    api_visibility="private", api_name="ui_correct_lock")
    names = ["state", "label_in", "annotator_in", "note_in", "transcript", "weight", "speaker_in"]
    outs = ["correct_msg", "state", "label_in", "note_in"]
    stored = w.on(off.then, C.correct, names, outs, account=w.ctx.sign_in, toast=False)
    stored.then(lambda: gr.update(interactive=True), None, btn, queue=False,
                api_visibility="private", api_name="ui_correct_unlock")
    if w.ctx.sign_in:
        w.on(w.demo.load, lambda ctx, account: {"signin_msg": signed_in(account)}, [],
             ["signin_msg"], account=True, name="signed_in")
