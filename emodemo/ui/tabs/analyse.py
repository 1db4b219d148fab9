"""Analyse tab: upload or record, see each branch and the fusion, edit the transcript, correct."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ...analysis import NONE_LABEL, Limits
from ...settings import ROOT
from ...store.media import AUDIO_SUFFIXES       # the one list of audio file suffixes
from ..markdown import label_choice, signed_in

EXAMPLES_DIR = ROOT / "data" / "examples"


def example_files(examples_dir: Optional[Path] = None) -> list[str]:
    """The example clips offered under the upload box."""
    ex = Path(examples_dir or EXAMPLES_DIR)
    if not ex.is_dir():
        return []
    return [str(p) for p in sorted(ex.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES]


def layout(recognizer, limits: Limits, examples: list[str], sign_in: bool) -> dict:
    import gradio as gr
    c = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            c["audio_in"] = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                     label="Speech clip (wav, flac, mp3, m4a, ogg, webm)",
                                     elem_id="emodemo-audio")
            c["analyse_btn"] = gr.Button("Analyse", variant="primary", elem_id="emodemo-analyse")
            if examples:
                gr.Examples(examples=[[p] for p in examples], inputs=[c["audio_in"]],
                            label="Examples (click one)",
                            example_labels=[Path(p).stem.replace("_", " ") for p in examples])
            c["weight"] = gr.Slider(0.0, 1.0, value=float(recognizer.fusion.audio_weight),
                                    step=0.05, label="Audio weight in the fusion",
                                    info="0 = text only, 1 = audio only; updates live",
                                    elem_id="emodemo-weight")
            with gr.Group():
                c["transcript"] = gr.Textbox(
                    label="Transcript (edit it, then re-run the text branch)", lines=2,
                    max_lines=6, elem_id="emodemo-transcript", max_length=limits.max_text_chars,
                    placeholder="The recognised words appear here.")
                c["rerun_btn"] = gr.Button("Re-run text", size="sm", elem_id="emodemo-rerun")
        with gr.Column(scale=3, min_width=360):
            c["status"] = gr.Markdown("Upload a clip, record one, or click an example to start.",
                                      elem_id="emodemo-status")
            c["summary"] = gr.Markdown("", elem_id="emodemo-summary")
            with gr.Column(visible=False) as c["long_box"]:
                c["timeline_plot"] = gr.Plot(label="Emotion timeline", show_label=False,
                                             elem_id="emodemo-timeline")
                c["segment_dd"] = gr.Dropdown(choices=[], value=None, type="value",
                                              label="Segment to view and correct",
                                              elem_id="emodemo-segment")
            c["probs_plot"] = gr.Plot(label="Probabilities", show_label=False,
                                      elem_id="emodemo-probs")
            c["wave_plot"] = gr.Plot(label="Waveform", show_label=False, elem_id="emodemo-wave")
    with gr.Accordion("Is this right? Tell us what you hear", open=True):
        if sign_in:
            with gr.Row():
                c["login"] = gr.LoginButton(elem_id="emodemo-login", scale=1)
                c["signin_msg"] = gr.Markdown(signed_in(None), elem_id="emodemo-signin-msg")
        with gr.Row():
            choices = [(label_choice(l), l) for l in [*recognizer.labels, NONE_LABEL]]
            c["label_in"] = gr.Radio(choices, value=None, label="Emotion you hear",
                                     elem_id="emodemo-label", scale=3)
            with gr.Column(scale=2):
                # where annotators sign in, a typed name is never their identity: no name box
                c["annotator_in"] = gr.Textbox(label="Your name or id (optional)", max_lines=1,
                                               elem_id="emodemo-annotator", visible=not sign_in,
                                               max_length=limits.max_annotator_chars)
                c["note_in"] = gr.Textbox(label="Note (optional)", lines=1, max_lines=4,
                                          elem_id="emodemo-note", max_length=limits.max_text_chars)
        c["correct_btn"] = gr.Button("Submit correction", variant="primary",
                                     elem_id="emodemo-submit")
        c["correct_msg"] = gr.Markdown("", elem_id="emodemo-correct-msg")
        who = ("your Hugging Face account name" if sign_in else "your optional name")
        gr.Markdown("<small>Submitting stores the audio, your label, the transcript as shown in "
                    f"the box, the model's prediction and {who} and note.</small>")
    return c
