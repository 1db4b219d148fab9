"""`build_app(settings, recognizer, store)`: the tabs, each a module with its layout and its
wiring side by side (emodemo/ui/tabs/), around one `UIContext`. Adding a tab is one module in
tabs/ plus one line in `TABS`.

Named API endpoints (for `gradio_client`): ``/predict`` (audio file, optional transcript ->
JSON with audio/text/fused probabilities, label, margin and the "unsure" call, transcript) and
``/correct`` (audio file, label, transcript, annotator, note, start, end, prediction JSON and,
optional and last, the speaker -> the stored correction's id and clip hash). The UI's own events
are private.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Optional

from ..analysis import Limits
from ..settings import ROOT, Settings
from .context import UIContext
from .examples import EXAMPLES_DIR
from .handlers import analyse as analyse_handlers
from .handlers import correct as correct_handlers
from .tabs import about, analyse, annotate, history, models
from .wiring import Wiring, api_errors, with_account

log = logging.getLogger("emodemo.ui")

TABS = (analyse, annotate, history, models, about)      # a new tab: its module, added here
TITLE = "emodemo — speech + text emotion recognition"
CSS = """
#emodemo-summary h2 { margin: 0.2em 0 0.3em 0; font-size: 1.9em; }
#emodemo-status { min-height: 1.5em; }
/* Gradio's "elapsed/estimate" timer on the analysis outputs: the estimate is the mean of all
   earlier clips, so a long clip read "4.0/1.8s"; the progress bar's text names the clip's
   length instead */
#emodemo-tab-analyse .progress-text { display: none; }
footer { visibility: visible; }
"""
INTRO = ("Upload or record a short clip of speech. The **audio branch** listens to *how* it is "
         "said, the **text branch** reads *what* is said (from automatic speech recognition), "
         "and the two are fused. Then tell us what you hear: corrections are stored (with the "
         "audio) to improve the model.")


def theme():
    import gradio as gr
    return gr.themes.Soft(primary_hue="orange", secondary_hue="blue")


def launch_kwargs(limits: Optional[Limits] = None, examples_dir: Optional[Path] = None) -> dict:
    """Keyword arguments for `Blocks.launch()` that belong with this UI (Gradio 6 takes theme
    and css there): theme, css, max_file_size and the examples folder as an allowed path."""
    limits = limits or Limits()
    ex = Path(examples_dir or EXAMPLES_DIR)
    return {"theme": theme(), "css": CSS, "max_file_size": limits.max_file_bytes,
            "allowed_paths": [str(ex)] if ex.is_dir() else [], "head": annotate.keyboard_js()}


def limits_of(settings: Settings) -> Limits:
    """The upload limits configured in `settings`."""
    return Limits.from_kwargs(max_file_size=settings.max_file_size,
                              max_duration=settings.max_duration,
                              long_audio=settings.long_audio, segment_len=settings.segment_len)


def context_of(settings: Settings, recognizer, store, work_dir=None, examples_dir=None) -> UIContext:
    """The handlers' context for an app configured by `settings` (the shipped models/ is always
    listed next to the settings' models folder)."""
    ctx = UIContext.create(recognizer, store, limits_of(settings), work_dir=work_dir,
                           models_dir=settings.models_folder(), extra_model_dirs=[ROOT / "models"],
                           allow_finetune=not settings.no_finetune,
                           admin_token=settings.admin_token, sign_in=settings.sign_in_enabled)
    ctx.examples_dir = Path(examples_dir) if examples_dir else None
    return ctx


def build_app(settings: Settings, recognizer, store, *, ctx: Optional[UIContext] = None,
              work_dir=None, examples_dir=None, concurrency_limit: int = 1):
    """The Gradio Blocks app around an already-loaded recognizer and an open CorrectionStore,
    configured by `settings` (limits, models folder, fine-tuning, admin token, sign-in, ASR
    preload). ctx: a ready UIContext instead (tests, embedding). work_dir: folder for exports
    (default: a private temp folder). concurrency_limit: model runs at once (one queue).
    Launch with `**launch_kwargs(demo.emodemo_limits)`."""
    import gradio as gr
    ctx = ctx or context_of(settings, recognizer, store, work_dir, examples_dir)
    if settings.preload_asr:   # in the background: the page is served while the ASR loads
        recognizer.preload()
    # uploads and recordings land in Gradio's cache: drop those older than a day, hourly
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(f"# {html.escape(TITLE)}\n{INTRO}")
        c = {"state": gr.State(None)}
        with gr.Tabs():
            for tab in TABS:
                if getattr(tab, "available", lambda ctx: True)(ctx):
                    with gr.Tab(tab.TITLE, id=tab.ID, elem_id=f"emodemo-tab-{tab.ID}") as t:
                        c.update(tab.layout(ctx))
                    c[f"{tab.ID}_tab"] = t
        w = Wiring(ctx, c, dict(concurrency_id="model", concurrency_limit=concurrency_limit))
        w.demo = demo
        for tab in TABS:
            if f"{tab.ID}_tab" in c:
                tab.wire(w)
        api_endpoints(w)
    demo.emodemo_context = ctx   # for tests and embedding
    demo.emodemo_limits = ctx.limits
    return demo


def api_endpoints(w: Wiring) -> None:
    """/predict and /correct, on hidden inputs (the audio is the Analyse tab's)."""
    import gradio as gr
    ctx, c = w.ctx, w.c
    with gr.Column(visible=False):
        api = {"transcript": gr.Textbox(label="transcript", value=""),
               "label": gr.Textbox(label="label"), "annotator": gr.Textbox(label="annotator"),
               "note": gr.Textbox(label="note"), "start": gr.Number(label="start", value=None),
               "end": gr.Number(label="end", value=None),
               "prediction": gr.JSON(label="prediction", value=None),
               "speaker": gr.Textbox(label="speaker", value=""),      # last: positional calls keep working
               "out": gr.JSON(label="result"), "predict_btn": gr.Button("predict"),
               "correct_btn": gr.Button("correct")}

    def predict(audio, transcript="", progress=gr.Progress()):
        """Predict the emotion of a speech clip. `transcript` (optional): leave it out or
        empty to transcribe with ASR. Returns label, confidence, margin (top-1 minus top-2),
        unsure and call ("angry or fearful — unsure"), and the audio / text / fused
        probabilities."""
        return analyse_handlers.api_predict(ctx, audio, transcript, progress=progress)

    def correct(audio, label, transcript, annotator, note, start, end, prediction, speaker="",
                account=None):
        """Store a correction: the emotion label a person hears in the clip (one of the
        model's labels, or "none"), optional corrected transcript, annotator, note, the
        start/end (seconds) of the span it is about, the /predict result, and who speaks in the
        clip or the session (optional). Where the app asks annotators to sign in, the
        signed-in account is recorded instead of `annotator`."""
        return correct_handlers.api_correct(ctx, audio, label, transcript, annotator, note,
                                            start, end, prediction, account=account,
                                            speaker=speaker)

    names = ["audio", "label", "transcript", "annotator", "note", "start", "end", "prediction",
             "speaker"]
    correct_fn = with_account(correct, names) if ctx.sign_in else correct
    api["predict_btn"].click(api_errors(predict), inputs=[c["audio_in"], api["transcript"]],
                             outputs=api["out"], api_name="predict", **w.model_queue)
    api["correct_btn"].click(api_errors(correct_fn),
                             inputs=[c["audio_in"], *(api[k] for k in names[1:])],
                             outputs=api["out"], api_name="correct")
