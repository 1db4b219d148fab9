"""Annotate tab on the annotation queue service (emodemo.annotate, contract C5): add audio
(files, a zip, long recordings), the next clip for an annotator, vote, skip, progress.
Plain functions `fn(ctx, ...)`; the queue is `ctx.queue`."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from ... import analysis
from ...analysis import NONE_DISPLAY, NONE_LABEL
from ...errors import EmodemoError
from .. import markdown as md
from .base import guard
from .history import clip_audio

ITEM_KEYS = ("ann_item", "ann_audio", "ann_clip_md", "ann_label", "ann_transcript")
PROGRESS_KEYS = ("ann_progress", "ann_add_box")


def _queue(ctx):
    if ctx.queue is None:
        raise EmodemoError("The annotation queue is not available in this installation.")
    return ctx.queue


def annotator(ctx, typed: Any, account: Optional[str]) -> str:
    """Who votes: the signed-in account where sign-in is on, else the typed name (needed: the
    queue gives each annotator clips they have not labelled yet)."""
    if ctx.sign_in:
        if not account:
            raise EmodemoError("Sign in with your Hugging Face account to annotate.")
        return account
    name = analysis.blank_none(typed)
    if not name:
        raise EmodemoError("Type your name first: the queue gives each annotator their own next clip.")
    analysis.check_texts(ctx.limits, annotator=name)
    return name.strip()


def _paths(files: Any) -> list[str]:
    if not files:
        return []
    items = files if isinstance(files, (list, tuple)) else [files]
    return [str(getattr(f, "name", None) or (f.get("path") if isinstance(f, dict) else f))
            for f in items]


def _report_text(rep: Any) -> str:
    """An AddReport as one line: clips added and skipped (already queued), files read, and
    each file that could not be used."""
    added = getattr(rep, "added", []) or []
    errors = getattr(rep, "errors", []) or []
    text = (f"{len(added)} clip{'' if len(added) == 1 else 's'} added from "
            f"{getattr(rep, 'files', '?')} file(s), {getattr(rep, 'skipped', 0)} already queued")
    if errors:
        text += "; not used: " + "; ".join(md.md_escape(e) for e in errors[:5])
        text += " …" if len(errors) > 5 else ""
    return text


@guard("ann_msg")
def add(ctx, files: Any, speaker: Optional[str] = None) -> dict:
    """Add uploaded files (audio, a zip of audio, long recordings: the service splits them),
    with who speaks in them (optional; the queue copies it into each vote, and fine-tuning keeps
    each speaker's clips on one side of its held-out check). Clips already queued without a
    speaker get it; one with another keeps that, and the message says so."""
    paths = _paths(files)
    if not paths:
        raise EmodemoError("Choose audio files (or a zip of them) to add to the queue first.")
    rep = _queue(ctx).add(paths, speaker=analysis.blank_none(speaker))
    return {"ann_msg": md.ok(f"Added to the queue: {_report_text(rep)}.")
            + md.queued_speakers(*rep.speaker_lines()) + _prelabel_note(ctx),
            **progress(ctx), "ann_files": None}


def _prelabel_note(ctx) -> str:
    """A note when the model pre-labelled most of the queue one label (`analysis.one_sided`):
    annotators should vote on what they hear, and a lead should not trust the pre-labels."""
    note = analysis.prelabel_note(_queue(ctx).model_labels())
    return f"\n\n{note}" if note else ""


EMPTY = ("The queue is empty: add audio under **Add audio to the queue** below (audio files, a zip "
         "of them, or long recordings, which are split into segments); the model pre-labels each clip "
         "and serves the ones it is least sure of first.")
OPEN = {"__update__": True, "open": True}       # the "Add audio to the queue" accordion, opened


def progress(ctx) -> dict:
    """Done / total and votes per annotator; an empty queue says how to fill it and opens the
    "Add audio to the queue" box (`ann_add_box`, given only then: a closed box stays as it is)."""
    if ctx.queue is None:
        return {"ann_progress": ""}
    p = ctx.queue.progress()
    if not p.total:
        return {"ann_progress": EMPTY, "ann_add_box": OPEN}
    per = getattr(p, "per_annotator", {}) or {}
    who = ", ".join(f"{md.md_escape(k)} {v}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
    pct = int(round(100 * p.done / p.total)) if p.total else 0
    return {"ann_progress": (f"**{p.done} / {p.total}** clips done ({pct}%)"
                             + (f" · votes per annotator: {who}" if who else "")
                             + f'\n\n<progress value="{pct}" max="100" style="width:100%"></progress>')}


def n_votes(item) -> int:
    """Votes an item has ({label: voters} or {label: count} in `votes`)."""
    if getattr(item, "n_votes", None) is not None:
        return int(item.n_votes)
    return sum(len(v) if isinstance(v, (list, set, tuple)) else int(v)
               for v in (item.votes or {}).values())


def item_view(item, empty: bool = False) -> dict:
    """A queue item shown: its audio (the span for a span), where it is from; form reset.
    No item: nothing left for this annotator, or (`empty`) nothing queued at all."""
    if item is None:
        return {"ann_item": None, "ann_audio": None, "ann_label": None, "ann_transcript": "",
                "ann_clip_md": ("Nothing to label yet: the queue is empty. Add audio below." if empty else
                                "🎉 Nothing left for you: every clip has its votes (or you "
                                "labelled it already). Add more audio, or come back later.")}
    row = {"id": item.id, "media_path": item.media_path, "start": item.start, "end": item.end}
    span = (f", {item.start:.1f}–{item.end:.1f} s" if item.start is not None and item.end is not None
            else "")
    votes = n_votes(item)
    words = f" · heard: “{md.md_escape(item.transcript)}”" if getattr(item, "transcript", "") else ""
    return {"ann_item": item.id, "ann_audio": clip_audio(row), "ann_label": None,
            "ann_transcript": "",
            "ann_clip_md": (f"Clip **{md.md_escape(item.file_name)}**{span} · votes so far: "
                            f"{votes}{words} · keys: 1–7 label, 0 none of these, space play, "
                            "enter submit, s skip")}


@guard("ann_msg")
def next_clip(ctx, typed: Any = None, account: Optional[str] = None) -> dict:
    """Lease the next clip for this annotator and show it (it plays by itself)."""
    who = annotator(ctx, typed, account)
    item = _queue(ctx).next(who)
    shown = progress(ctx)
    return {**item_view(item, empty="ann_add_box" in shown), **shown, "ann_msg": ""}


@guard("ann_msg")
def vote(ctx, item_id: Any, label: Any, transcript: Any = None, typed: Any = None,
         account: Optional[str] = None) -> dict:
    """Store this annotator's label for the clip, then show the next one."""
    if item_id in (None, ""):
        raise EmodemoError("Press “Next clip” first.")
    who = annotator(ctx, typed, account)
    lab = analysis.check_label(label, ctx.labels)
    analysis.check_texts(ctx.limits, transcript=transcript)
    cid = _queue(ctx).vote(int(item_id), who, lab, transcript=analysis.blank_none(transcript))
    shown = NONE_DISPLAY if lab == NONE_LABEL else lab
    out = next_clip(ctx, typed, account)
    out["ann_msg"] = out.get("ann_msg") or md.ok(f"Stored **{md.md_escape(shown)}** as correction #{int(cid)}.")
    return out


@guard("ann_msg")
def skip(ctx, item_id: Any, typed: Any = None, account: Optional[str] = None) -> dict:
    """Leave this clip to others and show the next one."""
    who = annotator(ctx, typed, account)
    if item_id not in (None, ""):
        _queue(ctx).skip(int(item_id), who)
    out = next_clip(ctx, typed, account)
    out["ann_msg"] = out.get("ann_msg") or "Skipped."
    return out


def label_keys(labels: Sequence[str]) -> dict[str, str]:
    """Keyboard key -> label: 1..7 in the model's order, 0 for none of these."""
    keys = {str(i + 1): lab for i, lab in enumerate(list(labels)[:9])}
    keys["0"] = NONE_LABEL
    return keys
