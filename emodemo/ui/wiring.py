"""Gradio glue shared by the tabs: a handler's plain output dict becomes Gradio outputs
(`bind`), the signed-in account is handed to handlers that record it (`with_account`), API
endpoints raise `gr.Error` with a message (`api_errors`), and `Wiring.on` connects an event of
a tab to a handler `fn(ctx, *inputs)` by component names. The only place (with app.py and the
tabs' layouts) that builds Gradio objects."""
from __future__ import annotations

import functools
import html
import inspect
import logging
from typing import Any, Callable, Optional, Sequence

from ..errors import EmodemoError

log = logging.getLogger("emodemo.ui")

#: component names whose handler value is a dict of properties, or a visibility flag
CHOICES = ("segment_dd", "models_dd")
VISIBLE = ("long_box",)
TIMERS = ("ft_timer",)


def to_gradio(key: str, value: Any) -> Any:
    """A handler's plain output value as what Gradio expects for that component."""
    import gradio as gr
    if key in VISIBLE:
        return gr.update(visible=bool(value))
    if key in CHOICES:
        return gr.update(choices=value["choices"], value=value["value"])
    if key in TIMERS:
        return gr.Timer(active=bool(value))
    if isinstance(value, dict) and value.get("__update__"):
        return gr.update(**{k: v for k, v in value.items() if k != "__update__"})
    return value


def bind(fn: Callable, keys: Sequence[str], with_progress: bool = False,
         toast: bool = True) -> Callable:
    """Adapt a handler returning {key: value} to Gradio's positional outputs (missing keys are
    left unchanged); with `toast`, its error, if any, is also shown as a toast (events whose
    message is shown right where the person looks pass toast=False: said once, not twice)."""
    import gradio as gr

    def emit(out: dict):
        err = out.get("_error")
        if err and toast:
            gr.Warning(html.escape(err, quote=False))
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
            raise gr.Error(html.escape(str(exc), quote=False)) from None
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("API call %s failed", fn.__name__)
            raise gr.Error(f"internal error ({type(exc).__name__}); see the server log") from None
    return wrapper


class Wiring:
    """Connects the tabs' events to their handlers. `c`: every component of the app by name
    (a tab may read or update another tab's component, e.g. a model switch updates the
    Analyse tab's weight); `model_queue`: the keyword arguments of events that run a model
    (they share one concurrency queue)."""

    def __init__(self, ctx, components: dict, model_queue: Optional[dict] = None):
        self.ctx = ctx
        self.c = components
        self.model_queue = dict(model_queue or {})

    def on(self, trigger: Callable, fn: Callable, inputs: Sequence[str], outputs: Sequence[str], *,
           progress: bool = False, account: bool = False, toast: bool = True,
           name: Optional[str] = None, **kw):
        """`trigger` (e.g. `c["btn"].click`) runs `fn(ctx, *inputs)` and shows its outputs.
        account: `fn` also gets `account=` (the signed-in Hugging Face name, or None). The UI's
        events are private and named so that they never take /predict or /correct."""
        def call(*args, **kwargs):
            return fn(self.ctx, *args, **kwargs)
        call.__name__, call.__doc__ = fn.__name__, fn.__doc__
        handler = with_account(call, list(inputs)) if account else call
        return trigger(bind(handler, outputs, with_progress=progress, toast=toast),
                       inputs=[self.c[k] for k in inputs], outputs=[self.c[k] for k in outputs],
                       api_visibility="private", api_name="ui_" + (name or fn.__name__), **kw)

    def on_select(self, trigger: Callable, fn: Callable, outputs: Sequence[str], name: str):
        """`trigger` (a `.select` event) runs `fn(ctx, row)`: `row` is the clicked table row's
        values (a list; [] when Gradio sends none)."""
        import gradio as gr
        emit = bind(lambda row: fn(self.ctx, row), outputs)

        def selected(evt):
            return emit(list(getattr(evt, "row_value", None) or []))
        selected.__annotations__ = {"evt": gr.SelectData}    # Gradio fills it in by its type
        return trigger(selected, inputs=None, outputs=[self.c[k] for k in outputs],
                       api_visibility="private", api_name="ui_" + name)
