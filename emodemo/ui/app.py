"""`build_app`: the tabs' layouts wired to the Gradio-free handlers. The only module that turns
handler outputs into Gradio updates (`gr.update`, `gr.Timer`), toasts and API errors.

Named API endpoints (for `gradio_client`): ``/predict`` (audio file, optional transcript ->
JSON with audio/text/fused probabilities, label, transcript) and ``/correct`` (audio file, label,
transcript, annotator, note, start, end, prediction JSON -> the stored correction's id and clip
hash). The UI's own events are private.
"""
from __future__ import annotations

import functools
import html
import inspect
import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..analysis import Limits
from ..errors import EmodemoError
from . import markdown as md
from .handlers import Handlers
from .handlers.analyse import REFUSE_KEYS, VIEW_KEYS
from .tabs import about as about_tab
from .tabs import analyse as analyse_tab
from .tabs import history as history_tab
from .tabs import models as models_tab

log = logging.getLogger("emodemo.ui")

CSS = """
#emodemo-summary h2 { margin: 0.2em 0 0.3em 0; font-size: 1.9em; }
#emodemo-status { min-height: 1.5em; }
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
    ex = Path(examples_dir or analyse_tab.EXAMPLES_DIR)
    return {"theme": theme(), "css": CSS, "max_file_size": limits.max_file_bytes,
            "allowed_paths": [str(ex)] if ex.is_dir() else []}


def to_gradio(key: str, value: Any) -> Any:
    """A handler's plain output value as what Gradio expects for that component."""
    import gradio as gr
    if key == "long_box":
        return gr.update(visible=bool(value))
    if key in ("segment_dd", "models_dd"):
        return gr.update(choices=value["choices"], value=value["value"])
    if key == "ft_timer":
        return gr.Timer(active=bool(value))
    return value


def bind(fn: Callable, keys: Sequence[str], with_progress: bool = False) -> Callable:
    """Adapt a handler returning {key: value} to Gradio's positional outputs (missing keys are
    left unchanged) and show its error, if any, as a toast."""
    import gradio as gr

    def emit(out: dict):
        err = out.get("_error")
        if err:
            gr.Warning(html.escape(err))
        vals = [to_gradio(k, out[k]) if k in out else gr.skip() for k in keys]
        return vals[0] if len(vals) == 1 else tuple(vals)

    # no functools.wraps: Gradio reads the signature (and would follow __wrapped__)
    if with_progress:
        def run(*args, progress=gr.Progress()):
            return emit(fn(*args, progress=progress))
    else:
        def run(*args):
            return emit(fn(*args))
        if hasattr(fn, "__signature__"):    # with_account: Gradio injects the signed-in profile
            run.__signature__ = fn.__signature__
            run.__annotations__ = dict(fn.__annotations__)
    run.__name__ = getattr(fn, "__name__", "handler")
    run.__doc__ = getattr(fn, "__doc__", None)
    return run


def with_account(fn: Callable, names: Sequence[str]) -> Callable:
    """`fn(*values, account=...)` as a Gradio function of `names` plus a last parameter that
    Gradio fills with the signed-in `gr.OAuthProfile` (None when nobody is signed in)."""
    import gradio as gr
    hint = Optional[gr.OAuthProfile]

    def run(*args):
        *values, profile = args
        return fn(*values, account=getattr(profile, "username", None) or None)

    P = inspect.Parameter
    run.__signature__ = inspect.Signature(
        [P(n, P.POSITIONAL_OR_KEYWORD) for n in names]
        + [P("profile", P.POSITIONAL_OR_KEYWORD, annotation=hint)])
    run.__annotations__ = {"profile": hint}
    run.__name__ = getattr(fn, "__name__", "handler")
    run.__doc__ = getattr(fn, "__doc__", None)
    return run


def api_errors(fn: Callable) -> Callable:
    """API endpoints: person-fixable problems become gr.Error(message), never a traceback."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmodemoError as exc:
            raise gr.Error(html.escape(str(exc))) from None
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("API call %s failed", fn.__name__)
            raise gr.Error(f"internal error ({type(exc).__name__}); see the server log") from None
    return wrapper


def build_app(recognizer, store, *, examples_dir: Optional[str | Path] = None,
              title: str = "emodemo — speech + text emotion recognition",
              preload_asr: bool = False, concurrency_limit: int = 1,
              work_dir: Optional[str | Path] = None, models_dir: Optional[str | Path] = None,
              allow_finetune: bool = True, extra_model_dirs: Sequence[str | Path] = (),
              admin_token: Optional[str] = None, sign_in: bool = False, **limits: Any):
    """The Gradio Blocks app around an already-loaded recognizer and an open CorrectionStore.

    limits: fields of `Limits` (max_file_bytes or max_file_size like "50mb", max_duration,
    long_audio, segment_len, max_text_chars, max_annotator_chars). preload_asr: load (and warm
    up) the ASR model in a background thread now rather than on the first request.
    concurrency_limit: model runs at once (they share one queue). work_dir: folder for exports
    (default: a private temp folder). models_dir: where the Models tab looks for bundles and
    writes fine-tuned ones (default models/); extra_model_dirs: more folders it lists bundles
    from. allow_finetune: offer fine-tuning runs. admin_token: switching and fine-tuning ask for
    it. sign_in: annotators sign in with Hugging Face (`gr.LoginButton`; Gradio mocks it off a
    Space) and corrections are recorded under the account. Launch with
    `**launch_kwargs(demo.emodemo_limits)`.
    """
    import gradio as gr

    lim = Limits.from_kwargs(**limits)
    h = Handlers(recognizer, store, lim, work_dir=work_dir, models_dir=models_dir,
                 allow_finetune=allow_finetune, extra_model_dirs=extra_model_dirs,
                 admin_token=admin_token, sign_in=sign_in)
    if preload_asr:      # in the background: the page is served while the ASR loads and warms up
        recognizer.preload()
    examples = analyse_tab.example_files(Path(examples_dir) if examples_dir else None)
    model_q = dict(concurrency_id="model", concurrency_limit=concurrency_limit)

    # uploads and recordings land in Gradio's cache: drop those older than a day, hourly
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(f"# {html.escape(title)}\n{INTRO}")
        c = {"state": gr.State(None)}
        with gr.Tabs():
            with gr.Tab("Analyse", id="analyse"):
                c.update(analyse_tab.layout(recognizer, lim, examples, sign_in))
            with gr.Tab("History", id="history") as c["history_tab"]:
                c.update(history_tab.layout(list(recognizer.labels)))
            with gr.Tab("Models", id="models") as c["models_tab"]:
                c.update(models_tab.layout(h.reference_choices(), allow_finetune, bool(admin_token)))
            with gr.Tab("About", id="about"):
                c.update(about_tab.layout(recognizer, lim, sign_in))
        with gr.Column(visible=False):       # hidden inputs of the named API endpoints
            api = {"transcript": gr.Textbox(label="transcript", value=""),
                   "label": gr.Textbox(label="label"), "annotator": gr.Textbox(label="annotator"),
                   "note": gr.Textbox(label="note"), "start": gr.Number(label="start", value=None),
                   "end": gr.Number(label="end", value=None),
                   "prediction": gr.JSON(label="prediction", value=None),
                   "out": gr.JSON(label="result"), "predict_btn": gr.Button("predict"),
                   "correct_btn": gr.Button("correct")}

        def wire(trigger, fn, inputs, keys, progress=False, name=None, **kw):
            # the UI's own events are private, and named so they never take /predict or /correct
            trigger(bind(fn, keys, with_progress=progress), inputs=[c[k] for k in inputs],
                    outputs=[c[k] for k in keys], api_visibility="private",
                    api_name="ui_" + (name or fn.__name__), **kw)

        analyse_keys = [*VIEW_KEYS, "status", "correct_msg"]
        refuse_keys = [*REFUSE_KEYS, "status"]
        wire(c["audio_in"].change, h.analyse, ["audio_in", "weight"], analyse_keys, progress=True,
             trigger_mode="always_last", **model_q)
        wire(c["analyse_btn"].click, h.analyse, ["audio_in", "weight"], analyse_keys,
             progress=True, **model_q)
        for trig in (c["rerun_btn"].click, c["transcript"].submit):
            wire(trig, h.rerun_text, ["state", "transcript", "weight"], refuse_keys, **model_q)
        wire(c["weight"].change, h.refuse, ["state", "weight"], refuse_keys,
             show_progress="hidden", trigger_mode="always_last")
        wire(c["segment_dd"].input, h.select_segment, ["state", "segment_dd", "weight"],
             ["state", "summary", "probs_plot", "wave_plot", "timeline_plot", "transcript",
              "correct_msg", "status"])
        if sign_in:   # the account comes from the session, never from a typed name
            names = ["state", "label_in", "note_in", "transcript", "weight"]
            wire(c["correct_btn"].click,
                 with_account(lambda s, lab, note, tr, w, account: h.correct(
                     s, lab, None, note, tr, w, account=account), names), names,
                 ["correct_msg"], name="correct")
            demo.load(bind(with_account(lambda account: {"signin_msg": md.signed_in(account)}, []),
                           ["signin_msg"]), outputs=c["signin_msg"], api_visibility="private",
                      api_name="ui_signed_in")
        else:
            wire(c["correct_btn"].click, h.correct,
                 ["state", "label_in", "annotator_in", "note_in", "transcript", "weight"],
                 ["correct_msg"])
        hist_keys = ["history", "agreement", "history_msg"]
        for trig in (c["refresh_btn"].click, c["history_tab"].select, c["label_filter"].change,
                     c["text_filter"].submit):
            wire(trig, h.history, ["label_filter", "text_filter"], hist_keys)
        for fmt in ("csv", "jsonl"):
            wire(c[f"{fmt}_btn"].click, functools.partial(h.export, fmt), [],
                 ["export_file", "history_msg"], name=f"export_{fmt}")

        models_keys = ["models_table", "models_dd", "models_msg"]
        for trig in (c["models_tab"].select, c["models_refresh"].click):
            wire(trig, h.models, [], models_keys)
        wire(c["switch_btn"].click, h.switch_model, ["models_dd", "admin_in"],
             [*models_keys, "weight"], **model_q)
        wire(c["ft_dry"].click, h.finetune_dry_run, ["ft_min"], ["ft_msg"])
        wire(c["ft_start"].click, h.start_finetune,
             ["ft_name", "ft_epochs", "ft_min", "ft_ref", "ft_force", "admin_in"],
             ["ft_msg", "ft_timer", "ft_progress"])
        wire(c["ft_timer"].tick, h.finetune_status, [], ["ft_progress", "ft_timer", *models_keys[:2]],
             show_progress="hidden")

        def predict(audio, transcript="", progress=gr.Progress()):
            """Predict the emotion of a speech clip. `transcript` (optional): leave it out or
            empty to transcribe with ASR. Returns label, confidence, and the audio / text /
            fused probabilities."""
            return h.api_predict(audio, transcript, progress=progress)

        def correct(audio, label, transcript, annotator, note, start, end, prediction, account=None):
            """Store a correction: the emotion label a person hears in the clip (one of the
            model's labels, or "none"), optional corrected transcript, annotator, note, the
            start/end (seconds) of the span it is about, and the /predict result. Where the app
            asks annotators to sign in, the signed-in account is recorded instead of `annotator`."""
            return h.api_correct(audio, label, transcript, annotator, note, start, end,
                                 prediction, account=account)

        correct_names = ["audio", "label", "transcript", "annotator", "note", "start", "end",
                         "prediction"]
        correct_fn = with_account(correct, correct_names) if sign_in else correct
        api["predict_btn"].click(api_errors(predict), inputs=[c["audio_in"], api["transcript"]],
                                 outputs=api["out"], api_name="predict", **model_q)
        api["correct_btn"].click(api_errors(correct_fn),
                                 inputs=[c["audio_in"], *(api[k] for k in correct_names[1:])],
                                 outputs=api["out"], api_name="correct")
    demo.emodemo_handlers = h   # for tests and embedding
    demo.emodemo_limits = lim
    return demo
