"""The app's events as plain functions over plain values, without Gradio: `fn(ctx, *values)`
with `ctx` an emodemo.ui.context.UIContext (its explicit dependencies).

Each returns a dict of output values keyed by component name ("summary", "probs_plot", ...):
strings, numbers, figures, data frames, and for component properties plain dicts or booleans
("long_box": visible, "segment_dd"/"models_dd": {"choices", "value"}, "ft_timer": active).
emodemo.ui.wiring turns those into Gradio updates. Handlers never raise for bad input: the
problem becomes a readable message under "status" (or "correct_msg", "history_msg",
"models_msg", "ft_msg", "ann_msg") plus "_error" for a toast; unexpected errors are logged with
their traceback server-side and reported without it. The API handlers (`analyse.api_predict`,
`correct.api_correct`) raise EmodemoError instead.

    analyse   analyse a clip, re-run text, re-fuse, pick and play a segment, /predict
    correct   store a correction (once), /correct
    history   corrections table, agreement, export, play, undo / restore
    models    bundles, switch, dry run, fine-tuning and its job state
    annotate  the annotation queue (next clip, vote, skip, progress)
"""
