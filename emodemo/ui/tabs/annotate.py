"""Annotate tab: a team labels a queue of clips (emodemo.annotate, C5), keyboard first —
1–7 a label, 0 none of these, space play, enter submit, s skip; the next clip plays by itself.
Its layout, its wiring and its keyboard script, side by side."""
from __future__ import annotations

from ...analysis import NONE_LABEL
from ...store.media import AUDIO_SUFFIXES
from ...store.writes import MAX_SPEAKER_CHARS
from ..handlers import annotate as H
from ..markdown import label_choice

TITLE, ID = "Annotate", "annotate"


def available(ctx) -> bool:
    """Shown when the queue service is installed."""
    return ctx.queue is not None


def layout(ctx) -> dict:
    import gradio as gr
    c = {"ann_item": gr.State(None)}
    with gr.Column(elem_id="emodemo-annotate"):
        if ctx.sign_in:
            gr.Markdown("Your votes are recorded under your Hugging Face account: sign in with "
                        "the button on the Analyse tab first.")
        with gr.Row():
            c["ann_name"] = gr.Textbox(label="Your name (the queue keeps your place)",
                                       max_lines=1, visible=not ctx.sign_in, scale=2,
                                       max_length=ctx.limits.max_annotator_chars,
                                       elem_id="emodemo-ann-name")
            c["ann_next"] = gr.Button("Next clip", variant="primary", scale=1,
                                      elem_id="emodemo-ann-next")
        c["ann_progress"] = gr.Markdown("", elem_id="emodemo-ann-progress")
        c["ann_clip_md"] = gr.Markdown("Type your name and press *Next clip*.",
                                       elem_id="emodemo-ann-clip")
        c["ann_audio"] = gr.Audio(label="Clip", interactive=False, autoplay=True,
                                  elem_id="emodemo-ann-audio")
        choices = [(f"{i}  {label_choice(l)}", l) for i, l in
                   [*((str(k + 1), l) for k, l in enumerate(ctx.labels)), ("0", NONE_LABEL)]]
        c["ann_label"] = gr.Radio(choices, value=None, label="Emotion you hear",
                                  elem_id="emodemo-ann-label")
        c["ann_transcript"] = gr.Textbox(label="Words (optional, if you want to correct them)",
                                         max_lines=2, elem_id="emodemo-ann-transcript",
                                         max_length=ctx.limits.max_text_chars)
        with gr.Row():
            c["ann_submit"] = gr.Button("Submit (enter)", variant="primary",
                                        elem_id="emodemo-ann-submit")
            c["ann_skip"] = gr.Button("Skip (s)", elem_id="emodemo-ann-skip")
        c["ann_msg"] = gr.Markdown("", elem_id="emodemo-ann-msg")
        with gr.Accordion("Add audio to the queue", open=False) as c["ann_add_box"]:
            c["ann_files"] = gr.File(file_count="multiple", file_types=[*sorted(AUDIO_SUFFIXES), ".zip"],
                                     label="Audio files, a zip of them, or long recordings "
                                           "(split into segments)", elem_id="emodemo-ann-files")
            c["ann_speaker"] = gr.Textbox(label="Speaker / session (optional)", max_lines=1,
                                          info="Who speaks in these files: fine-tuning keeps "
                                               "each speaker's clips on one side of its "
                                               "held-out check",
                                          max_length=MAX_SPEAKER_CHARS, elem_id="emodemo-ann-speaker")
            c["ann_add"] = gr.Button("Add to the queue", elem_id="emodemo-ann-add")
    return c


def wire(w) -> None:
    c, signed = w.c, bool(w.ctx.sign_in)
    shown = [*H.ITEM_KEYS, *H.PROGRESS_KEYS, "ann_msg"]
    w.on(c["ann_next"].click, H.next_clip, ["ann_name"], shown, account=signed)
    w.on(c["ann_submit"].click, H.vote, ["ann_item", "ann_label", "ann_transcript", "ann_name"],
         shown, account=signed)
    w.on(c["ann_skip"].click, H.skip, ["ann_item", "ann_name"], shown, account=signed)
    w.on(c["ann_add"].click, H.add, ["ann_files", "ann_speaker"],
         ["ann_msg", *H.PROGRESS_KEYS, "ann_files"])
    w.on(c["annotate_tab"].select, lambda ctx: H.progress(ctx), [], list(H.PROGRESS_KEYS),
         name="annotate_progress")


def keyboard_js() -> str:
    """The Annotate tab's keys, as a <script> for `launch(head=...)`: active only while the tab
    is shown and the focus is not in a text box."""
    return """<script>
document.addEventListener("keydown", (e) => {
  const root = document.getElementById("emodemo-annotate");
  if (!root || root.offsetParent === null || e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target, tag = (t && t.tagName || "").toLowerCase();
  if (tag === "textarea" || (tag === "input" && t.type !== "radio")) return;
  const click = (sel) => { const el = root.querySelector(sel); if (el) { el.click(); } return !!el; };
  const radios = root.querySelectorAll("#emodemo-ann-label input[type=radio]");
  const n = radios.length - 1;            // the last one is "none of these"
  let done = false;
  if (/^[0-9]$/.test(e.key)) {
    const i = e.key === "0" ? n : parseInt(e.key, 10) - 1;
    if (i < radios.length && (e.key === "0" || i < n)) { radios[i].click(); done = true; }
  } else if (e.key === "Enter") { done = click("#emodemo-ann-submit");
  } else if (e.key === "s" || e.key === "S") { done = click("#emodemo-ann-skip");
  } else if (e.key === " ") {
    const a = root.querySelector("#emodemo-ann-audio audio");
    const b = root.querySelector("#emodemo-ann-audio button[aria-label='Play'], #emodemo-ann-audio button[aria-label='Pause'], #emodemo-ann-audio .play-pause-button");
    if (b) { b.click(); done = true; } else if (a) { a.paused ? a.play() : a.pause(); done = true; }
  }
  if (done) e.preventDefault();
});
</script>"""
