"""The app as a team uses it, through its handlers: a correction stored once however often it
is submitted, confirmed by its id, the form cleared; undo (own, or anyone's with the admin
token) and restore; a History row plays its audio (its segment for a segment); the Annotate
tab on the queue service (two annotators, votes, skip, progress); the fine-tuning job's state
for every visitor, also after a restart (C6); the gate's checks by name (C7)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, SR, tone

from emodemo import jobs
from emodemo.ui import Handlers
from emodemo.ui import markdown as md

EXAMPLES = ROOT / "data" / "examples"
ANGRY = EXAMPLES / "angry_actor17.flac"



@pytest.fixture
def state(h):
    out = h.analyse(str(ANGRY), 0.5)
    assert "_error" not in out, out["status"]
    return out["state"]


# ---- corrections: once, confirmed, cleared -------------------------------------------------
def test_a_double_submit_stores_one_correction(h, store, state):
    first = h.correct(state, "angry", "ana", "loud", None, 0.5)
    cid = first["stored_id"]
    assert f"Stored correction **#{cid}**" in first["correct_msg"]
    assert first["label_in"] is None and first["note_in"] == ""         # the form is cleared
    again = h.correct(first["state"], "angry", "ana", "loud", None, 0.5)
    assert again["stored_id"] == cid and "Already stored as correction **#1**" in again["correct_msg"]
    # a second browser tab (a fresh state) submitting the same: the store's duplicate check
    fresh = json.loads(json.dumps(state))
    fresh.pop("stored", None)
    other = h.correct(fresh, "angry", "ana", "loud", None, 0.5)
    assert other["stored_id"] == cid and "Already stored" in other["correct_msg"]
    assert len(store.corrections()) == 1
    # a click on the cleared form (the second click of a double click) names the stored one
    cleared = h.correct(first["state"], None, "ana", "", None, 0.5)
    assert "_error" not in cleared and f"Stored as correction **#{cid}**" in cleared["correct_msg"]
    assert "Pick the emotion" in h.correct(state | {"stored": {}}, None)["correct_msg"]
    # a different label is a different correction
    assert h.correct(first["state"], "sad", "ana", None, None, 0.5)["stored_id"] != cid
    assert len(store.corrections()) == 2


# ---- History: play, undo, restore ------------------------------------------------------------
def test_undo_own_correction_admin_any_and_restore(h, store, state):
    ana = h.correct(state, "angry", "ana", None, None, 0.5)["stored_id"]
    bob = h.correct(json.loads(json.dumps(state)), "sad", "bob", None, None, 0.5)["stored_id"]
    refused = h.undo(bob, "ana")
    assert "someone else" in refused["history_msg"] and len(store.corrections()) == 2
    assert "Type the name" in h.undo(ana, "")["history_msg"]
    for nothing in (None, "", 0, "0"):                 # no row picked yet (the box is empty)
        assert "Click a correction in the table first" in h.undo(nothing, "ana")["history_msg"]
    assert "someone else" in h.undo(str(bob), "ana")["history_msg"]     # the box holds text: parsed
    done = h.undo(ana, "ana")
    assert f"Correction #{ana} deleted" in done["history_msg"]
    assert [r.id for r in store.corrections()] == [bob]                   # left out of votes ...
    assert store.get(ana) is not None                                      # ... but kept
    shown = h.history("all", "", True)["history"]
    assert set(shown["id"]) == {ana, bob}
    assert shown.set_index("id").loc[ana, "deleted"].endswith("by ana")
    assert list(h.history()["history"]["id"]) == [bob]
    h.registry.admin_token = "s3cret"
    assert "admin token" in h.undo(bob, "ana", "wrong")["history_msg"]
    assert f"Correction #{bob} deleted (by ana)" in h.undo(bob, "ana", "s3cret")["history_msg"]
    assert "restored" in h.undo(ana, "ana", restore=True)["history_msg"]
    assert [r.id for r in store.corrections()] == [ana]


def test_history_row_plays_its_audio_and_names_the_file(h, store, tmp_path):
    long = tmp_path / "meeting notes.wav"
    sf.write(str(long), np.concatenate([tone(3.0, 200), tone(3.0, 400)]), SR)
    whole = h.api_correct(str(ANGRY), "angry", annotator="ana")["id"]
    part = h.api_correct(str(long), "sad", annotator="ana", start=3.0, end=5.0)["id"]
    table = h.history()["history"]
    assert list(table.columns[:3]) == ["id", "file", "label"]             # useful columns first
    assert set(table["file"]) == {"angry_actor17.flac", "meeting notes.wav"}
    out = h.pick(whole)
    assert Path(out["history_audio"]).read_bytes() == ANGRY.read_bytes() and out["history_id"] == whole
    sr, samples = h.pick(part)["history_audio"]
    assert sr == SR and samples.size == 2 * SR                             # the 3-5 s segment
    assert "3.0–5.0" in h.pick(part)["history_msg"]
    assert "Click a correction" in h.pick(None)["history_msg"]


# ---- Annotate tab on the queue service ------------------------------------------------------
def test_an_empty_queue_says_how_to_fill_it_and_opens_the_add_box(h, tmp_path):
    """A first visitor finds no clips: the tab says the queue is empty and opens "Add audio to
    the queue" (not "every clip has its votes"); once clips are in, the box is left as it is."""
    shown = h.progress()
    assert "The queue is empty" in shown["ann_progress"] and shown["ann_add_box"]["open"] is True
    first = h.next_clip("ana")
    assert first["ann_item"] is None and "the queue is empty" in first["ann_clip_md"]
    assert "Nothing left for you" not in first["ann_clip_md"] and first["ann_add_box"]["open"]
    sf.write(str(tmp_path / "one.wav"), tone(1.0, 300), SR)
    added = h.add([str(tmp_path / "one.wav")])
    assert "**0 / 1** clips done" in added["ann_progress"] and "ann_add_box" not in added
    got = h.next_clip("ana")
    assert got["ann_item"] is not None and "ann_add_box" not in got
    h.vote(got["ann_item"], "sad", "", "ana")
    done = h.next_clip("ana")
    assert done["ann_item"] is None and "Nothing left for you" in done["ann_clip_md"]


def test_annotate_two_annotators_votes_skip_progress(h, store, tmp_path):
    assert h.queue is not None
    clips = []
    for i, f in enumerate((200, 300, 400)):
        clips.append(tmp_path / f"clip{i}.wav")
        sf.write(str(clips[-1]), tone(1.5, f), SR)
    added = h.add([str(p) for p in clips])
    assert "3 clips added from 3 file(s), 0 already queued" in added["ann_msg"]
    assert "**0 / 3** clips done" in added["ann_progress"]
    assert "0 already queued" not in h.add([str(clips[0])])["ann_msg"]  # already in: skipped
    a = h.next_clip("ana")
    b = h.next_clip("bob")
    assert a["ann_item"] is not None and b["ann_item"] is not None
    assert a["ann_item"] != b["ann_item"]                          # leased: never the same clip
    sr, samples = a["ann_audio"]
    assert sr == SR and samples.size == pytest.approx(1.5 * SR, abs=2)
    assert "Type your name" in h.next_clip("  ")["ann_msg"]
    assert "Press “Next clip” first" in h.vote(None, "sad", "", "ana")["ann_msg"]
    assert "Pick the emotion" in h.vote(a["ann_item"], None, "", "ana")["ann_msg"]
    voted = h.vote(a["ann_item"], "sad", "", "ana")
    assert "Stored **sad** as correction #" in voted["ann_msg"]
    assert voted["ann_item"] not in (None, a["ann_item"])          # the next clip, at once
    assert "ana 1" in voted["ann_progress"]
    cid = int(voted["ann_msg"].split("#")[1].split(".")[0])
    assert store.get(cid)["label"] == "sad" and store.get(cid)["annotator"] == "ana"
    skipped = h.skip(voted["ann_item"], "ana")
    assert skipped["ann_item"] != voted["ann_item"]
    # a zip of clips is added clip by clip; a file that is not audio is named, not fatal
    import zipfile
    bundle = tmp_path / "batch.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        for i, f in enumerate((250, 350)):
            sf.write(str(tmp_path / f"z{i}.wav"), tone(1.2, f), SR)
            z.write(tmp_path / f"z{i}.wav", f"z{i}.wav")
    (tmp_path / "notes.wav").write_text("not audio")
    out = h.add([str(bundle), str(tmp_path / "notes.wav")])
    assert "2 clips added" in out["ann_msg"] and "not used:" in out["ann_msg"]
    assert "notes.wav" in out["ann_msg"] and "/ 5** clips done" in out["ann_progress"]
    assert "Choose audio files" in h.add(None)["ann_msg"]


# ---- fine-tuning job state for every visitor (C6) -------------------------------------------
def test_job_state_is_read_from_disk_for_every_visitor(fast_rec, recognizer, store, tmp_path):
    """A fresh app (no run of its own: another process's, or one from before a restart) shows
    the persisted job (C6): running with what it does now and its log, the poller on; once its
    process is gone it reads "interrupted" and the poller stops."""
    models = tmp_path / "models"
    h = Handlers(fast_rec, store, work_dir=tmp_path / "w", models_dir=models)
    assert "No fine-tuning run yet" in h.finetune_status()["ft_progress"]
    lock = jobs.RunLock(models)
    assert lock.acquire()                                  # "another process" runs it
    jobs.write_state(models, jobs.JobState(
        status="running", progress=0.4, message="fitting the speech adapter",
        detail="     2 s  reading corrections\n    40 s  fitting the speech adapter",
        started=1000.0, bundle="mine-v2"))
    out = h.finetune_status()
    assert out["ft_timer"] is True
    shown = out["ft_progress"]
    assert "mine-v2" in shown and "40%" in shown and "Now: fitting the speech adapter" in shown
    assert "2 s  reading corrections" in shown                         # the log tail
    fresh = Handlers(recognizer, store, work_dir=tmp_path / "w2", models_dir=models)
    assert fresh.finetune_status()["ft_progress"] == shown            # every visitor, every app
    assert "already going" in fresh.start_finetune("other", 1, 3, "", False)["ft_msg"]
    lock.release()                                         # its process is gone
    out = h.finetune_status()
    assert out["ft_timer"] is False and "interrupted" in out["ft_progress"]
    assert "models_table" in out                           # the table is refreshed


def test_gate_checks_by_name_with_per_class_before_after():
    checks = [{"name": "held-out corrections not worse", "passed": True, "value": 0.71,
               "threshold": 0.6, "what_to_do": ""},
              {"name": "reference UA within tolerance", "passed": False, "value": 0.62,
               "threshold": 0.68, "what_to_do": "add corrections from more speakers"}]
    per_class = {"angry": {"before": 0.4, "after": 0.7, "corrected": True},
                 "sad": {"before": 0.8, "after": 0.75, "corrected": False}}
    view = {"status": "refused", "progress": 1.0, "started": 0.0, "finished": 60.0,
            "bundle": "mine", "report": {"lineage": {"checks": checks, "per_class": per_class}}}
    shown = md.job(view)
    assert "| held-out corrections not worse | ✅ | 0.710 | 0.600 |  |" in shown
    assert "| reference UA within tolerance | ❌ | 0.620 | 0.680 | add corrections from more speakers |" in shown
    assert "| angry | yes | 0.400 | 0.700 |" in shown and "| sad | no (side effect) | 0.800 | 0.750 |" in shown
    assert "done: not written" in shown
    forced = md.job({**view, "status": "finished", "report": {"forced": True, "checks": checks}})
    assert "Forced" in forced and "done: written" in forced
    # a finished run's report (finetune()'s "gate" block) shows the same table
    report = {"written": False, "gate": {"write": False, "forced": False, "checks": checks,
                                         "failures": ["reference UA within tolerance ..."]}}
    shown = md.job({**view, "report": report})
    assert "| reference UA within tolerance | ❌ |" in shown and "Forced" not in shown
    # a written run that adapted the speech branch without any sad corrections says what that does
    done = {"written": True, "speech": {"updated": True}, "dataset": {"uncorrected": ["sad"]}}
    shown = md.job({**view, "status": "finished", "report": done})
    assert "⚠️ not corrected:  sad — on audio like these corrections the new model will seldom say" in shown
    kept = md.job({**view, "status": "finished", "report": {**done, "speech": {"updated": False}}})
    assert "not corrected" not in kept


@pytest.mark.slow
def test_annotate_says_when_the_model_prelabelled_most_clips_one_label(h, store, tmp_path):
    """Nine flat espeak-ng sentences (the shipped default calls flat synthetic speech neutral):
    adding them says that 9 of 9 were pre-labelled neutral and to vote on what one hears."""
    from conftest import espeak
    clips = [str(espeak(f"Sentence number {i} is read in a flat voice.", tmp_path / f"e{i}.wav")) for i in range(9)]
    out = h.add(clips[:4])
    assert "4 clips added" in out["ann_msg"] and "Pre-labels" not in out["ann_msg"]      # too few to say
    out = h.add(clips[4:])
    assert "Pre-labels: 9 of 9 clips were called neutral" in out["ann_msg"]
    assert "Vote on what you hear" in out["ann_msg"]
