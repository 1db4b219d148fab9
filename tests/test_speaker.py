"""Who speaks in a clip (migration 0006): given when queueing (`queue add --speaker`,
`--speaker-from folder`, the app's Annotate tab) or importing (a `speaker` column), carried by
every vote, exported, and used by fine-tuning to keep each speaker's clips on one side of its
held-out check (the validation split and the adapter's cross-validation folds)."""
from __future__ import annotations

import csv
import json
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, text

from conftest import ROOT, wav
from emodemo.annotate import AnnotationQueue
from emodemo.annotate.cli import folder_speaker, main_queue
from emodemo.errors import StoreError
from emodemo.finetune import build_dataset, format_summary, main_finetune, split_clips
from emodemo.finetune.adapt import grouped_folds
from emodemo.finetune.dataset import NO_SPEAKERS
from emodemo.store import CorrectionStore, alembic_config
from test_annotate import ScriptedModel

LABELS = ["neutral", "happy", "sad"]


# ---- the schema -------------------------------------------------------------------------------
def test_migration_0006_adds_speaker_keeping_rows_and_drops_it_again(tmp_path, monkeypatch):
    """0006 adds a nullable speaker to corrections and queue_items that already have rows (they
    keep them, speaker NULL); its downgrade drops both columns without losing the rows."""
    monkeypatch.chdir(tmp_path)
    from alembic import command

    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = create_engine(url)
    ts = "2026-01-01 00:00:00"
    with engine.begin() as conn:
        command.upgrade(alembic_config(url, connection=conn), "0005")
        conn.execute(text("INSERT INTO media (sha256, path, duration, sample_rate, created_at) "
                          "VALUES (:sha, 'a.wav', 1.0, 16000, :ts)"), {"sha": "ef" * 32, "ts": ts})
        conn.execute(text("INSERT INTO queue_items (media_sha256, start_sec, end_sec, priority, "
                          "created_at) VALUES (:sha, 0, 1, 0.5, :ts)"), {"sha": "ef" * 32, "ts": ts})
        conn.execute(text("INSERT INTO corrections (media_sha256, label, annotator, created_at, "
                          "queue_item_id) VALUES (:sha, 'sad', 'ana', :ts, 1)"),
                     {"sha": "ef" * 32, "ts": ts})

    def columns(table: str) -> set:
        with engine.connect() as conn:
            return {c["name"] for c in inspect(conn).get_columns(table)}
    assert "speaker" not in columns("corrections") | columns("queue_items")
    with engine.begin() as conn:
        command.upgrade(alembic_config(url, connection=conn), "0006")
    assert "speaker" in columns("corrections") and "speaker" in columns("queue_items")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT label, annotator, speaker FROM corrections")).all() == [
            ("sad", "ana", None)]
        assert conn.execute(text("SELECT priority, speaker FROM queue_items")).all() == [(0.5, None)]
        conn.execute(text("UPDATE corrections SET speaker = 'bo'"))
        command.downgrade(alembic_config(url, connection=conn), "0005")
    assert "speaker" not in columns("corrections") | columns("queue_items")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT label FROM corrections")).all() == [("sad",)]
        assert conn.execute(text("SELECT priority FROM queue_items")).all() == [(0.5,)]
    engine.dispose()
    with CorrectionStore(url, media_dir=tmp_path / "media") as store:     # back to the head
        assert store.schema_revision() == "0006"
        [rec] = store.corrections(deleted=None)
        assert (rec.label, rec.speaker) == ("sad", None)


def test_add_cleans_the_speaker_and_counts_it_in_double_submits(store, tmp_path):
    a = wav(tmp_path / "a.wav", "happy", 0)
    first = store.add(a, "happy", annotator="ana", speaker="  Bo Li \n")
    assert store.get(first).speaker == "Bo Li"
    again = store.add(a, "happy", annotator="ana", speaker="Bo Li")
    assert again.duplicate and again == first
    other = store.add(a, "happy", annotator="ana", speaker="Cy")   # another speaker: a new row
    assert not other.duplicate and store.get(other).speaker == "Cy"
    blank = store.add(a, "happy", annotator="ana", speaker="   ")
    assert not blank.duplicate and store.get(blank).speaker is None
    assert store.get(store.add(a, "sad")).speaker is None           # not given
    with pytest.raises(StoreError, match="speaker"):
        store.add(a, "sad", speaker="x" * 201)


# ---- the queue and its CLI ---------------------------------------------------------------------
@pytest.fixture
def scripted(monkeypatch):
    """The queue's default model is the instant ScriptedModel (no model load)."""
    import emodemo.recognizer
    monkeypatch.setattr(emodemo.recognizer, "load_recognizer", lambda *a, **k: ScriptedModel())


def _queue_cli(capsys, db: str, *args: str) -> tuple[int, str]:
    rc = main_queue([*args, "--db", db])
    return rc, capsys.readouterr().out


def test_queue_add_speaker_shows_in_list_and_goes_into_the_vote(scripted, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'q.db'}"
    folder = tmp_path / "in"
    folder.mkdir()
    for j in range(2):
        wav(folder / f"c{j}.wav", "happy", j)
    rc, out = _queue_cli(capsys, db, "add", str(folder), "--speaker", " ana ", "--no-asr")
    assert rc == 0 and "queued 2 clips" in out
    assert _queue_cli(capsys, db, "add", str(wav(tmp_path / "x.wav", "sad", 0)), "--no-asr")[0] == 0
    rows = {r["file"]: r for r in map(json.loads, _queue_cli(capsys, db, "list", "--json")[1].splitlines())}
    assert {f: r["speaker"] for f, r in rows.items()} == {"c0.wav": "ana", "c1.wav": "ana", "x.wav": None}
    nxt = json.loads(_queue_cli(capsys, db, "next", "--annotator", "bob", "--json")[1])
    assert nxt["speaker"] == rows[nxt["file"]]["speaker"]
    assert _queue_cli(capsys, db, "vote", str(rows["c1.wav"]["id"]), "happy", "--annotator", "bob")[0] == 0
    assert _queue_cli(capsys, db, "vote", str(rows["x.wav"]["id"]), "sad", "--annotator", "bob")[0] == 0
    with CorrectionStore(db) as s:
        assert {r.file_name: r.speaker for r in s.corrections()} == {"c1.wav": "ana", "x.wav": None}
    # --speaker and --speaker-from are one choice
    assert main_queue(["add", str(folder), "--db", db, "--speaker", "a", "--speaker-from", "folder"]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_speaker_from_folder(scripted, tmp_path, capsys):
    """Two speaker folders give two speakers; a file named directly: its folder; a zip: the
    folder inside it, else the zip's own name."""
    campaign = tmp_path / "campaign"
    for j, who in enumerate(("ana", "bob", "ana", "bob")):
        (campaign / who).mkdir(parents=True, exist_ok=True)
        wav(campaign / who / f"take{j}.wav", "neutral", j)
    single = tmp_path / "cy" / "one.wav"
    single.parent.mkdir()
    wav(single, "sad", 1)
    flat, nested = tmp_path / "dee.zip", tmp_path / "mixed.zip"
    with zipfile.ZipFile(flat, "w") as z:
        z.write(wav(tmp_path / "d.wav", "sad", 2), "d.wav")
    with zipfile.ZipFile(nested, "w") as z:
        z.write(wav(tmp_path / "e.wav", "sad", 3), "eve/e.wav")
        z.write(wav(tmp_path / "f.wav", "sad", 4), "top.wav")
    db = f"sqlite:///{tmp_path / 'q.db'}"
    rc, out = _queue_cli(capsys, db, "add", str(campaign), str(single), str(flat), str(nested),
                         "--speaker-from", "folder", "--no-asr")
    assert rc == 0 and "queued 8 clips from 8 files" in out
    rows = [json.loads(line) for line in _queue_cli(capsys, db, "list", "--json")[1].splitlines()]
    assert {r["file"]: r["speaker"] for r in rows} == {
        "ana/take0.wav": "ana", "ana/take2.wav": "ana", "bob/take1.wav": "bob",
        "bob/take3.wav": "bob", "one.wav": "cy", "dee.zip/d.wav": "dee",
        "mixed.zip/eve/e.wav": "eve", "mixed.zip/top.wav": "mixed"}
    # a folder given that is itself the speaker's folder
    assert folder_speaker(campaign / "ana", "take0.wav") == "ana"


def test_queue_api_speaker_for_every_item_of_the_call(store, tmp_path):
    q = AnnotationQueue(store, ScriptedModel())
    rep = q.add([wav(tmp_path / "a.wav", "happy", 5), wav(tmp_path / "b.wav", "happy", 6)], speaker="s1")
    assert len(rep.added) == 2 and {it.speaker for it in q.items()} == {"s1"}
    with pytest.raises(StoreError, match="speaker"):        # refused before any file is read
        q.add([wav(tmp_path / "c.wav", "sad", 5)], speaker="x" * 201)
    assert len(q.items()) == 2
    it = q.next("ana")
    assert store.get(q.vote(it.id, "ana", "happy")).speaker == "s1"


# ---- export / import ----------------------------------------------------------------------------
def test_export_and_import_keep_the_speaker(store, tmp_path):
    store.add(wav(tmp_path / "a.wav", "happy", 0), "happy", annotator="ana", speaker="=spk1")
    store.add(wav(tmp_path / "b.wav", "sad", 0), "sad", annotator="ana")
    assert store.export(tmp_path / "out.csv") == 2 and store.export(tmp_path / "out.jsonl") == 2
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as f:
        assert sorted(r["speaker"] for r in csv.DictReader(f)) == ["", "'=spk1"]   # formula guard
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted(str(json.loads(line)["speaker"]) for line in lines) == ["=spk1", "None"]
    with CorrectionStore(f"sqlite:///{tmp_path / 'other.db'}", media_dir=tmp_path / "m2") as other:
        res = other.import_csv(tmp_path / "out.csv", media_root=store.media_dir)
        assert (res.imported, res.errors) == (2, [])
        assert sorted(str(r.speaker) for r in other.corrections()) == ["=spk1", "None"]
    # a hand-written manifest with an optional speaker column
    (tmp_path / "manifest.csv").write_text("path,label,speaker\na.wav,happy,  ana \nb.wav,sad,\n",
                                           encoding="utf-8")
    with CorrectionStore(f"sqlite:///{tmp_path / 'third.db'}", media_dir=tmp_path / "m3") as third:
        assert third.import_csv(tmp_path / "manifest.csv").imported == 2
        assert {r.file_name: r.speaker for r in third.corrections()} == {"a.wav": "ana", "b.wav": None}


# ---- fine-tuning ----------------------------------------------------------------------------------
def _rec(i: int, label: str, speaker, t: int = 0, annotator: str = "ann", path: str = "/none.wav") -> dict:
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return {"id": i * 10 + t, "media_sha256": f"{i:064x}", "media_path": path, "label": label,
            "annotator": annotator, "created_at": base + timedelta(seconds=i * 10 + t),
            "updated_at": None, "start": None, "end": None, "duration": 1.0, "speaker": speaker}


def _campaign(named: bool) -> tuple[list[dict], dict[str, str]]:
    """Single clips of 6 voices, 2 clips of each class per voice: the records, and each clip's
    true speaker (named in the records or not)."""
    recs, truth = [], {}
    for i in range(36):
        who = f"voice{i % 6}"
        recs.append(_rec(i, LABELS[(i // 6) % 3], who if named else None))
        truth[f"{i:064x}"] = who
    return recs, truth


def test_split_and_cv_folds_keep_each_speaker_on_one_side():
    recs, truth = _campaign(named=True)
    ds = build_dataset(recs, LABELS, check_files=False)
    assert ds.summary()["speakers"] == {"clips": 36, "distinct": 6}
    train, val = split_clips(ds.clips, 0.25, seed=0)
    assert val and train
    assert not {c.speaker for c in train} & {c.speaker for c in val}
    groups = [c.group for c in ds.clips]
    y = np.array([LABELS.index(c.label) for c in ds.clips])
    folds = grouped_folds(groups, y, 4, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(36))
    for te in folds:
        held = {ds.clips[i].speaker for i in te}
        assert held and not held & {c.speaker for j, c in enumerate(ds.clips) if j not in set(te)}
    text = format_summary(ds.summary())
    assert "speakers:       6 (named on 36 of 36 clips)" in text and NO_SPEAKERS not in text
    # the same campaign without speakers: one voice on both sides, and the summary says so
    recs, truth = _campaign(named=False)
    ds = build_dataset(recs, LABELS, check_files=False)
    train, val = split_clips(ds.clips, 0.25, seed=0)
    assert {truth[c.media_sha256] for c in train} & {truth[c.media_sha256] for c in val}
    assert ds.summary()["speakers"] == {"clips": 0, "distinct": 0, "warning": NO_SPEAKERS}
    assert f"speakers:       {NO_SPEAKERS}" in format_summary(ds.summary())


def test_clip_speaker_is_the_newest_named_among_its_live_votes(store, tmp_path):
    a, b, c = (wav(tmp_path / f"{n}.wav", "happy", j) for j, n in enumerate("abc"))
    store.add(a, "happy", annotator="x", speaker="old")
    store.add(a, "happy", annotator="y", speaker="new")          # votes disagree: newest wins
    store.add(a, "happy", annotator="z")                         # names none: does not erase it
    store.add(b, "sad", annotator="x", speaker="kept")
    gone = store.add(b, "sad", annotator="y", speaker="deleted")
    store.delete(gone, by="y")                                   # a deleted vote does not count
    store.add(c, "sad", annotator="x")
    ds = build_dataset(store.corrections(), LABELS)
    assert sorted(str(cl.speaker) for cl in ds.clips) == ["None", "kept", "new"]
    assert ds.summary()["speakers"] == {"clips": 2, "distinct": 2}
    assert "the other 1 are grouped by recording" in format_summary(ds.summary())
    # the items fine-tuning extracts features for carry it (their groups in the CV folds)
    from emodemo.finetune.replay import clip_items
    items, bad = clip_items(ds.clips, tmp_path / "cache")
    # (the clip's group: its speaker, else its recording, so a long recording's spans stay in one fold)
    groups = sorted(i.speaker for i in items)
    assert not bad and groups[:1] == [f"media:{next(cl for cl in ds.clips if not cl.speaker).media_sha256}"]
    assert groups[1:] == ["speaker:kept", "speaker:new"]


def test_finetune_dry_run_reports_speakers(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with CorrectionStore(url) as store:
        for j in range(12):
            lab = LABELS[j % 3]
            store.add(wav(tmp_path / f"{j}.wav", lab, j), lab, annotator="ann", speaker=f"s{j % 4}")
    rc = main_finetune(["--db", url, "--base", str(ROOT / "models" / "default"), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "speakers:       4 (named on 12 of 12 clips)" in out
    assert "grouped by speaker, else recording" in out


# ---- the app ------------------------------------------------------------------------------------
def test_annotate_tab_adds_audio_with_its_speaker(store, tmp_path):
    """The Annotate tab's *Speaker / session* box goes to every clip the upload adds; left
    empty, the clips have none."""
    from types import SimpleNamespace

    from emodemo.ui.handlers import annotate as H
    ctx = SimpleNamespace(queue=AnnotationQueue(store, ScriptedModel()))
    out = H.add(ctx, [str(wav(tmp_path / "a.wav", "sad", 7)), str(wav(tmp_path / "b.wav", "sad", 8))],
                "  room 2 / ana ")
    assert "2 clips added" in out["ann_msg"], out["ann_msg"]
    assert H.add(ctx, [str(wav(tmp_path / "c.wav", "sad", 9))], "  ")["ann_files"] is None
    assert {it.file_name: it.speaker for it in ctx.queue.items()} == {
        "a.wav": "room 2 / ana", "b.wav": "room 2 / ana", "c.wav": None}
