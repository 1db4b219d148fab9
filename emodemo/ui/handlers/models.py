"""Models tab: list the bundles (with their lineage), switch the active one, check the data and
fine-tune in the background, and the fine-tuning job's state for every visitor (services:
emodemo.registry.ModelRegistry, emodemo.jobs). Plain functions `fn(ctx, ...)`."""
from __future__ import annotations

from typing import Any, Optional

from ... import jobs
from ...analysis import clean_input_text, format_bytes
from .. import markdown as md
from .base import guard

MODEL_COLUMNS = ["", "folder", "name", "version", "created (UTC)", "size", "audio UA (val)",
                 "text macro-F1 (dev)", "parent", "corrections used", "held-out before",
                 "held-out after", "forced"]
MODELS_KEYS = ("models_table", "models_dd", "models_msg")


def _metric(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3f}"


def reference_choices(ctx) -> list[tuple[str, str]]:
    """Reference sets offered for the fine-tuning gate: none, or the active bundle's own
    validation data when it is present on this machine (never a path typed by a visitor)."""
    from ...data import SHARED_DATA
    out = [("none (no reference check)", "")]
    rc = ctx.rec.config.run_config
    val = (rc.get("speech") or {}).get("val") or []
    for spec in ([val] if isinstance(val, str) else val):
        kind = spec.split(":", 1)[0]
        if kind == "ravdess" and ":root=" not in spec and (SHARED_DATA / kind).exists():
            out.append((spec, spec))
    return out


def model_row(b, active) -> list:
    """One row of the Models table (emodemo.registry.BundleInfo)."""
    return ["● active" if b.path == active else "", b.key, b.name, b.version,
            b.created[:16].replace("T", " "), format_bytes(b.size), _metric(b.audio_ua),
            _metric(b.text_f1), b.base or "–",
            "–" if b.corrections is None else str(b.corrections),
            _metric(getattr(b, "heldout_before", None)), _metric(getattr(b, "heldout_after", None)),
            "⚠️ forced" if getattr(b, "forced", False) else ""]


@guard("models_msg")
def models(ctx) -> dict:
    """The bundles in the models folders, the active one marked. models_dd: {"choices", "value"}."""
    bundles = ctx.registry.bundles()
    active = ctx.registry.active_path()
    value = next((b.key for b in bundles if b.path == active), None)
    return {"models_table": [model_row(b, active) for b in bundles],
            "models_dd": {"choices": [b.key for b in bundles], "value": value},
            "models_msg": md.models_listed(len(bundles), ctx.registry.folders, ctx.rec,
                                           active.name if active else None)}


@guard("models_msg")
def switch_model(ctx, key: Optional[str], token: Any = None) -> dict:
    """Make the bundle `key` (a folder name listed by `models`) the active model; the Analyse
    and About tabs name the new one."""
    changed = ctx.registry.switch(key, token)
    out = models(ctx)
    if not changed:
        out["models_msg"] = md.ok(f"**{md.md_escape(key)}** is already the active model.")
        return out
    new = ctx.rec
    ctx.follow_switch()           # the annotation queue pre-labels with the new model
    out.update(weight=float(new.fusion.audio_weight), active_md=md.active_model(new),
               about=md.about(new, ctx.limits, ctx.sign_in))
    out["models_msg"] = md.ok(f"Now using **{md.md_escape(new.name)} v{md.md_escape(new.version)}** "
                              f"({md.code(key)}) for everyone using this app. New "
                              "predictions and corrections record this version.")
    return out


@guard("ft_msg")
def finetune_dry_run(ctx, min_per_class: Any = None) -> dict:
    """What the store holds for fine-tuning: counts per class and annotator, agreement."""
    kw = ctx.finetuner.kwargs(None, min_per_class, "", False)
    base = ctx.registry.active_path() or ctx.registry.new_bundles_dir / "default"
    rep = ctx.finetuner.dry_run(base, ctx.work_dir / "dry-run", kw["min_per_class"])
    return {"ft_msg": md.dry_run(rep, jobs.summary_text(rep["dataset"]))}


@guard("ft_msg")
def start_finetune(ctx, name: Any, epochs: Any = None, min_per_class: Any = None,
                   reference: Any = None, force: Any = False, token: Any = None) -> dict:
    """Start fine-tuning a new bundle `<models folder>/<name>` from the active one in the
    background. ft_timer: whether the progress poller runs."""
    job, dry = ctx.finetuner.start(clean_input_text(name), epochs, min_per_class,
                                   reference, force, token)
    msg = (f"Fine-tuning **{md.md_escape(job.out.name)}** from **{md.md_escape(job.base.name)}** "
           f"on {dry['dataset']['clips']} corrected clips. You can keep using the app (and close "
           "this page): every visitor sees this run's progress here, and the new model appears "
           "in the table when it is done.")
    return {"ft_msg": md.ok(msg), "ft_timer": True, "ft_progress": md.job(job_view(ctx))}


def job_view(ctx) -> Optional[dict]:
    """The fine-tuning job as every visitor sees it: the persisted job state (C6,
    `jobs.read_state`) when the jobs service keeps one, merged with this process's run (its
    report and log); None when there has been no run."""
    view = md.job_as_view(ctx.job)
    read_state = getattr(jobs, "read_state", None)
    if read_state is not None:
        st = read_state(ctx.models_dir)
        if st is not None and st.status != "idle" and (view is None or view["status"] in ("queued",)
                                                        or (st.started or 0) > (view["started"] or 0)):
            view = {"status": st.status, "progress": st.progress, "message": st.message,
                    "detail": st.detail, "started": st.started, "finished": st.finished,
                    "bundle": st.bundle, "reason": st.reason, "log": [], "report": {}}
        elif st is not None and view is not None and st.detail:
            view["detail"] = st.detail
    return view


def finetune_status(ctx) -> dict:
    """Progress of the current or last fine-tuning run, for every visitor (on page load and
    polled by a timer while it runs); when it has ended, the refreshed table too."""
    view = job_view(ctx)
    running = bool(view and view["status"] in ("queued", "running"))
    out = {"ft_progress": md.job(view), "ft_timer": running}
    if view is not None and not running:
        out.update({k: v for k, v in models(ctx).items() if k != "models_msg"})
    return out
