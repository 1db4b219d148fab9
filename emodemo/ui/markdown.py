"""Markdown the app shows: every value that came from a person, a file name or ASR goes
through `md_escape` (no HTML, no live Markdown), numbers are formatted here once."""
from __future__ import annotations

import html
import re
import time
from typing import Any, Mapping, Optional, Sequence

from .. import analysis
from ..analysis import NONE_DISPLAY, NONE_LABEL, format_bytes, format_duration

EMOJI = {"neutral": "😐", "happy": "😄", "sad": "😢", "angry": "😠", "fearful": "😨",
         "disgust": "🤢", "surprised": "😲", "calm": "😌", NONE_LABEL: "🤷"}
FUSION_MODES = {"confidence": "confidence-weighted",
                "evidence": "evidence-aware (neutral = no emotion heard or read)"}

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]#|~$])")
_MD_LINE_START = re.compile(r"^(\s*)(?:([-+=])|(\d+)\.)", re.M)


def md_escape(text: Any) -> str:
    """Text shown literally inside Markdown: HTML-escaped (no tags), Markdown punctuation
    backslash-escaped (no emphasis, links, code, headings, lists, LaTeX), newlines kept."""
    # quotes stay quotes: Gradio shows an entity such as &#x27; literally in a message
    s = html.escape("" if text is None else str(text), quote=False)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    s = _MD_LINE_START.sub(lambda m: m.group(1) + ("\\" + m.group(2) if m.group(2)
                                                   else m.group(3) + "\\."), s)
    return s.replace("\n", "  \n")


def code(text: Any) -> str:
    """Text shown as inline code (a folder, a file name): no escaping inside the backticks,
    where a backslash would show literally; backticks and newlines are taken out."""
    s = " ".join(str("" if text is None else text).replace("`", "'").split())
    return f"`{s}`"


#: command-line flags a shared message may name, as the app's form calls them
FORM_NAMES = {"--min-per-class": "“Min. corrections per class”",
              "--force": "“write even if worse”", "--epochs": "“Text-branch epochs”"}


def for_the_app(msg: str) -> str:
    """A message written for the CLI, with its flags named as the app's form fields."""
    for flag, name in FORM_NAMES.items():
        msg = msg.replace(f"lower {flag}", f"lower {name}").replace(flag, name)
    return msg


def error(msg: str) -> str:
    return f"⚠️ {md_escape(msg)}"


def ok(msg_md: str) -> str:
    return f"✅ {msg_md}"


def label_choice(label: str) -> str:
    """How a label is offered in the correction form."""
    if label == NONE_LABEL:
        return f"{EMOJI[NONE_LABEL]} {NONE_DISPLAY}"
    return f"{EMOJI.get(label, '')} {label}".strip()


# ---- Analyse tab ---------------------------------------------------------------------------
def summary(state: dict, preds: Sequence, fusion, overall: Optional[Mapping] = None) -> str:
    """The headline of the shown span: label, confidence, each branch, fusion, transcript; for
    long audio first the whole recording (`overall`, see analysis.overall)."""
    i = state["selected"]
    p = preds[i]
    lines = []
    if state["long"] and overall:
        share = sorted(overall["share"].items(), key=lambda kv: -kv[1])
        mix = ", ".join(f"{EMOJI.get(k, '')} {md_escape(k)} {v:.0%}" for k, v in share[:3])
        lines.append(f"**Whole recording** ({format_duration(state['duration'])}, "
                     f"{len(preds)} segments): overall **{md_escape(analysis.call(overall['fused']))}**"
                     f" ({overall['confidence']:.0%}); share of speech time: {mix}.")
        lines.append(f"**Segment #{i + 1}** ({p.start:.1f}–{p.end:.1f} s):")
    lines.append(headline(p.fused))
    a_top = max(p.audio, key=p.audio.get)
    branch = [f"audio branch: **{md_escape(a_top)}** {p.audio[a_top]:.0%}"]
    if p.text is not None:
        t_top = max(p.text, key=p.text.get)
        branch.append(f"text branch: **{md_escape(t_top)}** {p.text[t_top]:.0%}")
    else:
        branch.append("text branch: not used (no transcript)")
    mode = FUSION_MODES.get(fusion.mode, fusion.mode)
    branch.append(f"fusion: {md_escape(mode)}, audio weight {fusion.audio_weight:.2f}")
    lines.append(" · ".join(branch))
    tr = p.transcript
    lines.append(f"Transcript used: “{md_escape(tr)}”" if tr else
                 "Transcript used: *(none — nothing was recognised, or it was cleared)*")
    return "\n\n".join(lines)


def headline(fused: Mapping[str, float]) -> str:
    """The big line: the label and its probability, or both candidates when unsure
    (emodemo.analysis's one rule)."""
    ranked = sorted(fused, key=lambda k: -fused[k])
    top = ranked[0]
    if analysis.is_unsure(fused):
        second = ranked[1]
        return (f"## {EMOJI.get(top, '')} {md_escape(top)} or {EMOJI.get(second, '')} "
                f"{md_escape(second)} — unsure · {fused[top]:.0%} vs {fused[second]:.0%}")
    return f"## {EMOJI.get(top, '')} {md_escape(top)} · {fused[top]:.0%}"


def language(span: Mapping) -> str:
    """The language line of a span: "Polish (0.98)", the original words and the English text
    the model read; "" when there was no language identification (C1)."""
    lang = span.get("language")
    if not lang:
        return ""
    name = lang.get("name") or lang.get("code") or "?"
    prob = lang.get("probability")
    line = f"**Language:** {md_escape(name)}" + (f" ({float(prob):.2f})" if prob is not None else "")
    if span.get("original"):
        line += (f"  \n**Original words:** “{md_escape(span['original'])}”  \n"
                 f"**English text the model read** (editable below): “{md_escape(span['asr'])}”")
    return line


def active_model(rec) -> str:
    """The line naming the model that answers now (Analyse tab)."""
    return (f"<small>Model: **{md_escape(getattr(rec, 'name', '') or 'unnamed')} "
            f"v{md_escape(getattr(rec, 'version', '') or '?')}**</small>")


def analysed_status(state: dict, took: float) -> str:
    """What was analysed, how long it took, and any warnings."""
    warns = sorted({w for s in state["segments"] for w in s.get("warnings", [])})
    status = f"Analysed **{md_escape(state['name'])}** ({format_duration(state['duration'])}"
    status += f", {len(state['segments'])} segments" if state["long"] else ""
    status += f") in {took:.1f} s."
    if warns:
        status += " " + " ".join(f"⚠️ {md_escape(w)}." for w in warns)
    return status


def correction_stored(cid: int, label: str, predicted: str, sha: str,
                      span: tuple[Optional[float], Optional[float]], who: Optional[str],
                      speaker: Optional[str] = None) -> str:
    start, end = span
    where = f", segment {start:.1f}–{end:.1f} s" if start is not None else ""
    said = f", speaker *{md_escape(speaker)}*" if speaker else ""
    by = f" by **{md_escape(who)}**" if who else ""
    shown = NONE_DISPLAY if label == NONE_LABEL else label
    return ok(f"Stored correction **#{cid}**: **{md_escape(shown)}** (the model said "
              f"*{md_escape(predicted)}*) for clip `{sha[:12]}`{where}{said}{by}. Thank you!")


def correction_duplicate(cid: int) -> str:
    return ok(f"Already stored as correction **#{cid}** (the same label, transcript, note and "
              "speaker were submitted again; nothing new was stored).")


def correction_kept(cid: int) -> str:
    return ok(f"Stored as correction **#{cid}**. To add another label for this clip, pick an "
              "emotion first.")


def queued_speakers(done: Sequence[str], kept: Sequence[str], limit: int = 10) -> str:
    """What adding audio did to the speaker of clips already queued, after the add report:
    `done` and `kept` are the plain lines of `emodemo.annotate.AddReport.speaker_lines` (the CLI says
    the same); the clips that keep another speaker are listed, the first `limit` of them."""
    parts = [md_escape(line[:1].upper() + line[1:]) + "." for line in done]
    if kept:
        rows = [f"- {md_escape(line)}" for line in kept[:limit]]
        if len(kept) > limit:
            rows.append(f"- … and {len(kept) - limit} more")
        n = len(kept)
        parts.append(f"**Note:** {n} already queued clip{'s' * (n != 1)} "
                     f"keep{'s' * (n == 1)} the speaker {'it has' if n == 1 else 'they have'}:\n"
                     + "\n".join(rows))
    return "".join(f"\n\n{part}" for part in parts)


def signed_in(account: Optional[str]) -> str:
    """The line above the correction form when annotators sign in."""
    if account:
        return f"Signed in as **{md_escape(account)}**: your corrections are recorded under this account."
    return "Sign in with your Hugging Face account (button above) to submit corrections."


# ---- Models tab ----------------------------------------------------------------------------
def models_listed(n: int, folders: Sequence, rec, active_key: Optional[str]) -> str:
    where = " and ".join(code(d) for d in folders)
    now = (f"Active: **{md_escape(rec.name)} v{md_escape(rec.version)}**"
           + (f" ({code(active_key)})" if active_key else ""))
    if not n:
        return ok(f"No model bundles in {where}. {now}.")
    return ok(f"{n} model bundle{'s' if n != 1 else ''} in {where}. {now}.")


JOB_HEADS = {"queued": "⏳ starting", "running": "⏳ running", "finished": "✅ done: written",
             "refused": "⚠️ done: not written", "failed": "❌ failed",
             "interrupted": "⚠️ interrupted (the app restarted while it ran): start it again"}


def job_as_view(j) -> Optional[dict]:
    """A fine-tuning job (emodemo.jobs.FinetuneJob or a dict already in this shape) as the
    plain dict `job` shows: status (C6 names), progress, message, detail, started, finished,
    bundle, reason, log, report."""
    if j is None or isinstance(j, Mapping):
        return j
    status = {"written": "finished", "not written": "refused"}.get(j.state, j.state)
    return {"status": status, "progress": j.fraction, "message": getattr(j, "message", ""),
            "detail": getattr(j, "detail", ""), "started": j.started,
            "finished": j.finished or None, "bundle": j.out.name, "reason": j.error or "",
            "log": list(j.log or []), "report": j.report or {}}


def _num(x: Optional[float]) -> str:
    return "–" if x is None else f"{float(x):.3f}"


def changes(report: Optional[Mapping]) -> str:
    """Per-class recall before/after on the held-out corrections and on the reference, and the
    sentence of what changed, from `report["changes"]`; "" when the report has none."""
    ch = (report or {}).get("changes") or {}
    keys = ("heldout_before", "heldout_after", "reference_before", "reference_after")
    rows = [r for r in ch.get("per_class") or []          # classes with no number are left out
            if isinstance(r, Mapping) and any(r.get(k) is not None for k in keys)]
    sentence = str(ch.get("sentence") or "").strip()
    if not rows and not sentence:
        return ""
    parts = []
    if sentence:
        parts.append(f"**What changed:** {md_escape(sentence)}")
    if rows:
        table = ["| class (recall) | held-out before | held-out after | reference before | reference after |",
                 "|---|---|---|---|---|"]
        for r in rows:
            table.append(f"| {md_escape(r.get('label', ''))} | {_num(r.get('heldout_before'))} | "
                         f"{_num(r.get('heldout_after'))} | {_num(r.get('reference_before'))} | "
                         f"{_num(r.get('reference_after'))} |")
        parts.append("\n".join(table))
    return "\n\n".join(parts)


def checks(items: Sequence[Mapping]) -> str:
    """The fine-tuning gate's checks (C7 lineage "checks"), each by its name, with its value,
    threshold and what to do when it failed."""
    rows = ["| check | passed | value | threshold | what to do |", "|---|---|---|---|---|"]
    for c in items:
        rows.append(f"| {md_escape(c.get('name', ''))} | {'✅' if c.get('passed') else '❌'} | "
                    f"{_num(c.get('value'))} | {_num(c.get('threshold'))} | "
                    f"{'' if c.get('passed') else md_escape(c.get('what_to_do') or '')} |")
    return "**The gate**\n\n" + "\n".join(rows)


def per_class(table: Mapping) -> str:
    """C7 lineage "per_class": {label: {before, after, corrected}} as a table; the classes
    without corrections are marked, so a change there is read as a side effect."""
    rows = ["| class | corrected | before | after |", "|---|---|---|---|"]
    for label, r in table.items():
        rows.append(f"| {md_escape(label)} | {'yes' if r.get('corrected') else 'no (side effect)'} | "
                    f"{_num(r.get('before'))} | {_num(r.get('after'))} |")
    return "\n".join(rows)


def _outcome(rep: Mapping) -> list[str]:
    lines = []
    lin = rep.get("lineage") or {}
    gate = rep.get("gate") or {}
    named = rep.get("checks") or lin.get("checks") or gate.get("checks")
    if named:
        lines.append(checks(named))
    elif rep.get("gate") and not rep["gate"].get("write", True):
        lines.append("Worse on the reference set: " + md_escape("; ".join(rep["gate"].get("failures", [])))
                     + ". Tick *write even if worse* to keep it anyway.")
    if rep.get("per_class") or lin.get("per_class"):
        lines.append(per_class(rep.get("per_class") or lin.get("per_class")))
    if rep.get("forced") or lin.get("forced") or gate.get("forced"):
        lines.append("⚠️ **Forced**: written although a check failed; the Models table marks it.")
    if rep.get("unchanged"):
        lines.append("Nothing changed, so nothing was written: " + md_escape("; ".join(rep["unchanged"]))
                     + ". More corrections, from more speakers, give it something to learn.")
    ho = (rep.get("metrics") or {}).get("heldout_corrections") or {}
    if ho.get("before") and ho.get("after"):
        rows = ["| held-out corrections | before | after |", "|---|---|---|"]
        for br in ("audio", "text", "fused"):
            if br in ho["before"] and br in ho["after"]:
                rows.append(f"| {br} UA | {ho['before'][br]['UA']:.3f} | {ho['after'][br]['UA']:.3f} |")
        lines.append("\n".join(rows))
    what = changes(rep)
    if what:
        lines.append(what)
    from ..finetune.dataset import uncorrected_warning        # the CLI's words, written once
    warning = uncorrected_warning(rep)
    if warning:
        lines.append("⚠️ " + md_escape(warning))
    return lines


def job(j) -> str:
    """Progress, what it is doing now, outcome and log tail of the fine-tuning job (a view from
    emodemo.ui.handlers.models.job_view, or a FinetuneJob)."""
    v = job_as_view(j)
    if v is None:
        return "No fine-tuning run yet."
    pct = int(round(100 * float(v.get("progress") or 0)))
    took = ((v.get("finished") or time.time()) - v["started"]) if v.get("started") else 0.0
    head = JOB_HEADS.get(v["status"], md_escape(v["status"]))
    lines = [f"**{md_escape(v.get('bundle') or '')}** — {head} · {pct}% · {format_duration(took)}",
             f'<progress value="{pct}" max="100" style="width:100%"></progress>']
    detail = str(v.get("detail") or "")
    log_lines = list(v.get("log") or []) or (detail.splitlines() if "\n" in detail else [])
    now = " — ".join(md_escape(x) for x in (v.get("message"), "" if log_lines else detail) if x)
    if now and v["status"] in ("queued", "running"):
        lines.append(f"Now: {now}")
    if v.get("reason"):
        lines.append(f"**{md_escape(v['reason'])}**")
    lines += _outcome(v.get("report") or {})
    if log_lines:        # the run's log: this process's, or the shared state's detail
        lines.append("```text\n" + "\n".join(x.replace("`", "'") for x in log_lines[-8:]) + "\n```")
    return "\n\n".join(lines)


def dry_run(report: Mapping, summary_text: str) -> str:
    verdict = (f"⚠️ {md_escape(for_the_app(report['guard']))}" if report.get("guard")
               else "✅ Enough corrections to fine-tune.")
    return f"{verdict}\n\n```text\n{summary_text}\n```"


# ---- About tab -----------------------------------------------------------------------------
def about(rec, limits, sign_in: bool) -> str:
    bundle = " ".join(x for x in (getattr(rec, "name", ""), getattr(rec, "version", "")) if x)
    who = ("Annotators sign in with their Hugging Face account; corrections record the account "
           "name." if sign_in else "Corrections record the optional name typed in the form.")
    return (f"**Active model:** `{html.escape(bundle or 'unnamed')}` · labels: "
            f"{', '.join(html.escape(l) for l in rec.labels)} · fusion: "
            f"{html.escape(rec.fusion.mode)}, default audio weight "
            f"{float(rec.fusion.audio_weight):.2f}\n\n"
            f"**Limits:** files up to {format_bytes(limits.max_file_bytes)}, audio up to "
            f"{format_duration(limits.max_duration)}; recordings longer than "
            f"{format_duration(limits.long_audio)} are split into segments of at most "
            f"{format_duration(limits.segment_len)}.\n\n"
            f"**Annotators:** {who}\n\n"
            "**Examples:** four RAVDESS clips (Livingstone & Russo 2018, PLoS ONE "
            "13(5): e0196391), a Polish nEMO clip (Christop 2024) and a Korean emotiontts clip, "
            "all CC BY-NC-SA 4.0, and one synthetic espeak-ng clip; each is shown with the "
            "emotion that was performed (see `data/examples/ATTRIBUTION.md`).\n\n"
            "**API:** `/predict` (audio, optional transcript) and `/correct` — see “Use via API”.")
