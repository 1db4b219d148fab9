"""Who speaks (or the session) in the app beyond the Analyse tab: the History tab shows it as a
column after the annotator, its text filter matches it, a picked row and its exports name it;
the Annotate tab's "Add to the queue" says, in the words of `queue add`, how many clips already
queued got the speaker given and which keep another one. Through the handlers, and the tabs'
events as the built app wires them."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT, wav
from emodemo.annotate import AddReport, AnnotationQueue
from emodemo.ui import markdown as md
from test_annotate import ScriptedModel

ANGRY = ROOT / "data" / "examples" / "angry_actor17.flac"


@pytest.fixture
def spoken(h):
    """Three corrections: two speakers named (one with Markdown in it), one without."""
    a = h.api_correct(str(ANGRY), "angry", annotator="ana", speaker=" Room 2 / Bo ")["id"]
    b = h.api_correct(str(ANGRY), "sad", annotator="bob", speaker="desk_*mic*")["id"]
    c = h.api_correct(str(ANGRY), "happy", annotator="carla")["id"]
    return a, b, c


def _ids(out: dict) -> list:
    assert "_error" not in out, out["history_msg"]
    return list(out["history"]["id"])


# ---- History ----------------------------------------------------------------------------------
def test_history_shows_the_speaker_after_the_annotator(h, spoken):
    a, b, c = spoken
    table = h.history()["history"]
    cols = list(table.columns)
    assert cols.index("speaker") == cols.index("annotator") + 1
    assert list(table["id"]) == [c, b, a]                                  # newest first
    assert dict(zip(table["id"], table["speaker"])) == {a: "Room 2 / Bo", b: "desk_*mic*", c: ""}
    assert dict(zip(table["id"], table["annotator"])) == {a: "ana", b: "bob", c: "carla"}


def test_history_text_filter_matches_the_speaker(h, spoken):
    a, b, c = spoken
    assert _ids(h.history("all", "ROOM 2")) == [a]                  # the speaker only, any case
    assert _ids(h.history("all", "*mic")) == [b]
    assert _ids(h.history("all", "bo")) == [b, a]                   # annotator bob, speaker Bo
    assert _ids(h.history("angry", "room")) == [a]                  # with the label filter
    out = h.history("sad", "room")
    assert _ids(out) == [] and "Showing 0 of 0 matching corrections (1 with this label)" in out["history_msg"]
    assert "1 matching correction." in h.history("all", "desk")["history_msg"]
    assert "unknown label" in h.history("furious", "room")["history_msg"]       # said, not raised


def test_history_deleted_rows_keep_their_speaker_in_the_filter(h, spoken):
    a, _, _ = spoken
    assert "deleted" in h.undo(a, "ana")["history_msg"]
    assert _ids(h.history("all", "room")) == []                      # deleted: left out ...
    shown = h.history("all", "room", True)["history"]                # ... unless asked for
    assert list(shown["id"]) == [a] and shown.iloc[0]["speaker"] == "Room 2 / Bo"
    assert shown.iloc[0]["deleted"].endswith("by ana")


def test_history_pick_names_the_speaker_escaped(h, spoken):
    a, b, c = spoken
    assert "· speaker Room 2 / Bo" in h.pick(a)["history_msg"]
    assert "· speaker desk\\_\\*mic\\*" in h.pick(b)["history_msg"]   # shown literally
    assert "speaker" not in h.pick(c)["history_msg"]


def test_history_exports_carry_the_speaker(h, spoken):
    a, b, c = spoken
    with open(h.export("csv")["export_file"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {int(r["id"]): r["speaker"] for r in rows} == {a: "Room 2 / Bo", b: "desk_*mic*", c: ""}
    lines = Path(h.export("jsonl")["export_file"]).read_text(encoding="utf-8").splitlines()
    assert {r["id"]: r["speaker"] for r in map(json.loads, lines)} == {
        a: "Room 2 / Bo", b: "desk_*mic*", c: None}


# ---- Annotate: adding clips already queued ------------------------------------------------------
@pytest.fixture
def hq(h, store):
    """The handlers with the queue pre-labelling by the instant ScriptedModel."""
    h.queue = AnnotationQueue(store, ScriptedModel())
    return h


def _speakers(h) -> dict:
    return {it.file_name: it.speaker for it in h.queue.items()}


def test_add_says_which_queued_clips_got_the_speaker_and_which_kept_theirs(hq, tmp_path):
    a, b, c = (wav(tmp_path / n, "happy", j) for j, n in enumerate(("a.wav", "b.wav", "take_*1*.wav")))
    first = hq.add([str(a)], "ana")
    assert "1 clip added" in first["ann_msg"] and "peaker" not in first["ann_msg"]
    again = hq.add([str(a), str(b)], "")                             # no speaker given: quiet
    assert "1 clip added from 2 file(s), 1 already queued" in again["ann_msg"]
    assert "peaker" not in again["ann_msg"]
    assert _speakers(hq) == {"a.wav": "ana", "b.wav": None}
    out = hq.add([str(a), str(b), str(c)], " bo ")
    msg = out["ann_msg"]
    assert "1 clip added from 3 file(s), 2 already queued." in msg
    assert "\n\nSpeaker set on 1 already queued clip that had none.\n\n" in msg
    assert ("**Note:** 1 already queued clip keeps the speaker it has:\n"
            "- a.wav (0.00-1.00 s) is queued with speaker 'ana': kept, not changed to 'bo'") in msg
    assert _speakers(hq) == {"a.wav": "ana", "b.wav": "bo", "take_*1*.wav": "bo"}
    named = hq.add([str(c), str(a)], "cy")["ann_msg"]                # a file name shown literally
    assert "**Note:** 2 already queued clips keep the speaker they have:\n" in named
    assert "- take\\_\\*1\\*.wav (0.00-1.10 s) is queued with speaker 'bo': kept, not changed to 'cy'" in named
    assert "Speaker set on" not in named
    assert "peaker" not in hq.add([str(b)], "bo")["ann_msg"]       # its own speaker again: quiet


def test_add_lists_the_first_ten_kept_and_counts_the_rest(hq, tmp_path):
    clips = [str(wav(tmp_path / f"c{j:02d}.wav", "sad", j)) for j in range(12)]
    hq.add(clips, "ana")
    msg = hq.add(clips, "bo")["ann_msg"]
    assert "**Note:** 12 already queued clips keep the speaker they have:" in msg
    listed = [line for line in msg.splitlines() if line.startswith("- ")]
    assert len(listed) == 11 and listed[-1] == "- … and 2 more"
    assert all("kept, not changed to 'bo'" in line for line in listed[:10])
    assert set(_speakers(hq).values()) == {"ana"}


def test_add_with_a_bad_speaker_says_so_and_queues_nothing(hq, tmp_path):
    out = hq.add([str(wav(tmp_path / "a.wav", "happy", 0))], "x" * 201)
    assert "_error" in out and "speaker" in out["ann_msg"] and "Traceback" not in out["ann_msg"]
    assert hq.queue.items() == []
    assert "Choose audio files" in hq.add([], "ana")["ann_msg"]


def test_cli_and_tab_word_it_the_same(hq, tmp_path, capsys):
    """One wording for both front ends: the tab's lines are `speaker_lines`', which the CLI prints
    ("note: " before each kept clip, on stderr)."""
    from emodemo.annotate.cli import speaker_notes
    a, b = str(wav(tmp_path / "a.wav", "happy", 0)), str(wav(tmp_path / "b.wav", "happy", 1))
    hq.add([a], "ana")
    hq.add([b])
    rep = hq.queue.add([a, b], "bo")                   # what the handler gets, on the same clips
    done, kept = rep.speaker_lines()
    assert done == ["speaker set on 1 already queued clip that had none"]
    assert kept == ["a.wav (0.00-1.00 s) is queued with speaker 'ana': kept, not changed to 'bo'"]
    speaker_notes(rep, sys.stdout)
    got = capsys.readouterr()
    assert got.out == done[0] + "\n" and got.err == f"note: {kept[0]}\n"
    assert md.queued_speakers(done, kept) == (
        "\n\nSpeaker set on 1 already queued clip that had none.\n\n**Note:** 1 already queued "
        f"clip keeps the speaker it has:\n- {kept[0]}")
    assert md.queued_speakers([], []) == "" and AddReport().speaker_lines() == ([], [])


# ---- the tabs' events, as the built app wires them -------------------------------------------------
@pytest.mark.slow
def test_app_wires_the_speaker_into_history_and_annotate(h, fast_rec, store, spoken, tmp_path):
    from emodemo.settings import Settings
    from emodemo.ui import build_app
    demo = build_app(Settings(preload_asr=False), fast_rec, store)
    by_id = {c["id"]: c["props"] for c in demo.config["components"]}
    table = next(p for p in by_id.values() if p.get("elem_id") == "emodemo-history")
    heads = table["headers"]
    assert heads[heads.index("annotator") + 1] == "speaker"
    deps = {d.get("api_name"): d for d in demo.config["dependencies"]}
    fns = {f.api_name: f.fn for f in demo.fns.values()}
    text_box = by_id[deps["ui_history"]["inputs"][1]]
    assert "speaker" in text_box["label"].lower() and text_box["elem_id"] == "emodemo-filter-text"
    shown, _, msg = fns["ui_history"]("all", "room 2", False)      # label, text, show deleted
    assert list(shown["id"]) == [spoken[0]] and "1 matching correction" in msg
    assert by_id[deps["ui_add"]["inputs"][1]]["elem_id"] == "emodemo-ann-speaker"
