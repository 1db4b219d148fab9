"""Who speaks (the `speaker` of migration 0006) on every surface that shows, edits or moves a
correction or a queue item: `corrections list` (text and JSON), `store.update`, the Label Studio
and audiofolder exports (and the Label Studio import), re-adding queued clips with a speaker, and
the Analyse tab's correction form with the `/correct` API (the speaker its last, optional input)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from conftest import ROOT, run_threads, wav
from emodemo.annotate import AnnotationQueue
from emodemo.annotate.cli import main_queue
from emodemo.errors import StoreError
from emodemo.store import CorrectionStore, main_corrections
from test_annotate import ScriptedModel
from test_store import db_url  # noqa: F401  (the sqlite + PostgreSQL fixture)

ANGRY = ROOT / "data" / "examples" / "angry_actor17.flac"


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main_corrections(list(args))
    got = capsys.readouterr()
    return rc, got.out, got.err


# ---- corrections list ---------------------------------------------------------------------------
def test_corrections_list_shows_a_speaker_column_once_anyone_names_one(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with CorrectionStore(url) as store:
        first = store.add(wav(tmp_path / "a.wav", "happy", 0), "happy", annotator="ana")
    rc, out, _ = _cli(capsys, "list", "--db", url)
    assert rc == 0 and "speaker=" not in out and len(out.splitlines()[0].split("\t")) == 6
    with CorrectionStore(url) as store:
        named = store.add(wav(tmp_path / "b.wav", "sad", 1), "sad", annotator="bo",
                          transcript="it rained", speaker="room 2\tbo")
    rc, out, _ = _cli(capsys, "list", "--db", url)
    rows = {int(line.split("\t")[0]): line.split("\t") for line in out.splitlines()}
    assert rc == 0 and set(rows) == {first, named}
    assert all(len(r) == 7 for r in rows.values())                # one column more on every row
    assert rows[named][5] == "speaker=room 2 bo" and rows[named][6] == "it rained"  # one line
    assert rows[first][5] == "speaker=-"
    rc, out, _ = _cli(capsys, "list", "--db", url, "--json")
    assert rc == 0
    assert {r["id"]: r["speaker"] for r in map(json.loads, out.splitlines())} == {
        first: None, named: "room 2\tbo"}


@pytest.mark.slow
def test_corrections_list_through_python_m_emodemo(tmp_path):
    """The real entry point (`python -m emodemo corrections list`), as a person runs it."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with CorrectionStore(url) as store:
        store.add(wav(tmp_path / "a.wav", "happy", 0), "happy", annotator="ana", speaker="ana")
    run = subprocess.run([sys.executable, "-m", "emodemo", "corrections", "list", "--db", url],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "\tspeaker=ana\t" in run.stdout


# ---- store.update -------------------------------------------------------------------------------
def test_update_sets_cleans_and_clears_the_speaker(db_url, tmp_path):  # noqa: F811
    with CorrectionStore(db_url, media_dir=tmp_path / "media") as store:
        cid = store.add(wav(tmp_path / "a.wav", "happy", 0), "happy", annotator="ana")
        before = store.get(cid)
        assert store.update(cid, speaker="  Bo Li \n").speaker == "Bo Li"
        assert store.get(cid).updated_at >= before.updated_at
        assert store.update(cid, label="sad").speaker == "Bo Li"       # not given: unchanged
        with pytest.raises(StoreError, match="speaker"):
            store.update(cid, speaker="x" * 201)
        with pytest.raises(StoreError, match="speaker must be text"):
            store.update(cid, speaker=12)
        assert store.get(cid).speaker == "Bo Li" and store.get(cid).label == "sad"
        assert store.update(cid, speaker="   ").speaker is None          # blank clears it
        store.update(cid, speaker="cy")
        assert store.update(cid, speaker=None).speaker is None
        with pytest.raises(StoreError, match="no correction with id 999"):
            store.update(999, speaker="x")


# ---- Label Studio and audiofolder ------------------------------------------------------------------
@pytest.fixture
def named_store(tmp_path):
    """Two votes on one clip (two speakers: the newest is the clip's), one clip without one."""
    url = f"sqlite:///{tmp_path / 'db' / 'c.db'}"
    with CorrectionStore(url, media_dir=tmp_path / "db" / "media") as store:
        a, b = wav(tmp_path / "a.wav", "happy", 0), wav(tmp_path / "b.wav", "sad", 1)
        store.add(a, "happy", annotator="ana", speaker="old name")
        store.add(a, "happy", annotator="bo", speaker="spk-7")
        store.add(a, "sad", annotator="cy")
        store.add(b, "sad", annotator="ana")
    return url


def test_labelstudio_export_and_import_keep_the_speaker(named_store, tmp_path, capsys):
    tasks = tmp_path / "ls" / "tasks.json"
    rc, out, err = _cli(capsys, "export", str(tasks), "--format", "labelstudio", "--db", named_store)
    assert rc == 0, err
    exported = json.loads(tasks.read_text(encoding="utf-8"))
    by_n = {len(t["annotations"]): t for t in exported}
    assert by_n[3]["data"]["speaker"] == "spk-7" and by_n[1]["data"]["speaker"] is None
    assert [a["emodemo"]["speaker"] for a in by_n[3]["annotations"]] == ["old name", "spk-7", None]
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    rc, out, err = _cli(capsys, "import", str(tasks), "--audio-root", str(tmp_path / "db"),
                        "--db", copy, "--media-dir", str(tmp_path / "m2"))
    assert (rc, err) == (0, "") and "imported 4 corrections" in out
    with CorrectionStore(named_store) as a, CorrectionStore(copy, media_dir=tmp_path / "m2") as b:
        def votes(store):
            return sorted((r.annotator, r.label, str(r.speaker)) for r in store.corrections())
        assert votes(b) == votes(a) == [("ana", "happy", "old name"), ("ana", "sad", "None"),
                                        ("bo", "happy", "spk-7"), ("cy", "sad", "None")]


def test_labelstudio_import_reads_the_task_speaker(tmp_path, capsys):
    """Tasks as Label Studio writes them (no emodemo fields): data.speaker names who speaks, as
    text or a number; one too long is that task's error, said in one line."""
    wav(tmp_path / "a.wav", "happy", 0)
    wav(tmp_path / "b.wav", "sad", 1)

    def task(i, audio, speaker):
        return {"id": i, "data": {"audio": audio, "speaker": speaker},
                "annotations": [{"id": i, "completed_by": 1, "created_username": "ana@x.org, 1",
                                 "result": [{"type": "choices", "from_name": "emotion",
                                             "to_name": "audio", "value": {"choices": ["sad"]}}]}]}
    path = tmp_path / "export.json"
    path.write_text(json.dumps([task(1, "a.wav", " Ana "), task(2, "b.wav", 42),
                                task(3, "a.wav", "x" * 201)]), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'c.db'}"
    rc, out, err = _cli(capsys, "import", str(path), "--db", url)
    assert rc == 1 and "imported 2 corrections, 1 rows with errors" in out
    assert err.startswith("task 3:") and "speaker" in err and len(err.splitlines()) == 1
    with CorrectionStore(url) as store:
        assert sorted(r.speaker for r in store.corrections()) == ["42", "Ana"]


def test_audiofolder_metadata_has_the_speaker(named_store, tmp_path, capsys):
    out_dir = tmp_path / "hf"
    rc, out, err = _cli(capsys, "export", str(out_dir), "--format", "audiofolder", "--db", named_store)
    assert rc == 0, err
    rows = [json.loads(line) for line in (out_dir / "metadata.jsonl").read_text("utf-8").splitlines()]
    with CorrectionStore(named_store) as store:
        assert {r["correction_id"]: r["speaker"] for r in rows} == {
            r.id: r.speaker for r in store.corrections()}
    assert sorted(str(r["speaker"]) for r in rows) == ["None", "None", "old name", "spk-7"]
    import datasets                           # what a person loads it with: the column is there

    ds = datasets.load_dataset("audiofolder", data_dir=str(out_dir), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert sorted(str(s) for s in ds["speaker"]) == ["None", "None", "old name", "spk-7"]


# ---- the queue: re-adding clips with a speaker ---------------------------------------------------
@pytest.fixture
def scripted(monkeypatch):
    """The queue's default model is the instant ScriptedModel (no model load)."""
    import emodemo.recognizer
    monkeypatch.setattr(emodemo.recognizer, "load_recognizer", lambda *a, **k: ScriptedModel())


def _queue(capsys, db: str, *args: str) -> tuple[int, str, str]:
    rc = main_queue([*args, "--db", db])
    got = capsys.readouterr()
    return rc, got.out, got.err


def _speakers(capsys, db: str) -> dict:
    rc, out, _ = _queue(capsys, db, "list", "--json")
    assert rc == 0
    return {r["file"]: r["speaker"] for r in map(json.loads, out.splitlines())}


def test_queue_add_again_names_clips_without_a_speaker_and_keeps_others(scripted, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'q.db'}"
    folder = tmp_path / "in"
    folder.mkdir()
    a, b = wav(folder / "a.wav", "happy", 0), wav(folder / "b.wav", "happy", 1)
    assert _queue(capsys, db, "add", str(folder), "--no-asr")[0] == 0
    rc, out, err = _queue(capsys, db, "add", str(a), "--speaker", " ana ", "--no-asr")
    assert rc == 0 and "queued 0 clips from 1 files (1 already queued, 0 problems)" in out
    assert "speaker set on 1 already queued clip that had none" in out and err == ""
    assert _speakers(capsys, db) == {"a.wav": "ana", "b.wav": None}
    rc, out, err = _queue(capsys, db, "add", str(folder), "--speaker", "bo", "--no-asr")
    assert rc == 0 and "speaker set on 1 already queued clip that had none" in out
    assert "note: a.wav (0.00-1.00 s) is queued with speaker 'ana': kept, not changed to 'bo'" in err
    assert _speakers(capsys, db) == {"a.wav": "ana", "b.wav": "bo"}
    rc, out, err = _queue(capsys, db, "add", str(a), "--speaker", "ana", "--no-asr")  # the same: quiet
    assert rc == 0 and "speaker" not in out and err == ""
    # a vote after that carries the speaker the item got
    with CorrectionStore(db) as store:
        q = AnnotationQueue(store, ScriptedModel())
        item = next(it for it in q.items() if it.file_name == "b.wav")
        assert store.get(q.vote(item.id, "cy", "happy")).speaker == "bo"


def test_queue_add_again_with_speaker_from_folder(scripted, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'q.db'}"
    campaign = tmp_path / "campaign"
    for j, who in enumerate(("ana", "bo")):
        (campaign / who).mkdir(parents=True)
        wav(campaign / who / f"take{j}.wav", "sad", j)
    assert _queue(capsys, db, "add", str(campaign), "--no-asr")[0] == 0
    assert set(_speakers(capsys, db).values()) == {None}
    rc, out, _ = _queue(capsys, db, "add", str(campaign), "--speaker-from", "folder", "--no-asr")
    assert rc == 0 and "speaker set on 2 already queued clips that had none" in out
    assert _speakers(capsys, db) == {"ana/take0.wav": "ana", "bo/take1.wav": "bo"}


def test_queue_api_reports_each_speaker_it_kept(db_url, tmp_path):  # noqa: F811
    with CorrectionStore(db_url, media_dir=tmp_path / "media") as store:
        q = AnnotationQueue(store, ScriptedModel())
        clips = [wav(tmp_path / f"{n}.wav", "happy", j) for j, n in enumerate("abc")]
        q.add(clips[:1], speaker="ana")
        q.add(clips[1:])
        rep = q.add(clips, speaker="bo")
        assert (rep.added, rep.skipped) == ([], 3)
        assert sorted((r[0], r[3], r[4]) for r in rep.speakers) == [
            ("a.wav", "ana", "bo"), ("b.wav", None, "bo"), ("c.wav", None, "bo")]
        assert {it.file_name: it.speaker for it in q.items()} == {"a.wav": "ana", "b.wav": "bo",
                                                                  "c.wav": "bo"}
        assert q.add(clips).speakers == []                  # no speaker given: nothing changes
        with pytest.raises(StoreError, match="speaker"):
            q.add(clips, speaker="x" * 201)
        assert {it.speaker for it in q.items()} == {"ana", "bo"}


def test_two_adds_at_once_never_overwrite_each_others_speaker(db_url, tmp_path):  # noqa: F811
    """Two people (two stores, as two processes) add the same queued clips with different
    speakers at the same moment: each clip gets exactly one of them, and the other add reports
    that clip as keeping it."""
    clips = [wav(tmp_path / f"c{j}.wav", "happy", j) for j in range(8)]
    with CorrectionStore(db_url, media_dir=tmp_path / "media") as store:
        AnnotationQueue(store, ScriptedModel()).add(clips)
    barrier, reports = threading.Barrier(2), {}

    def worker(i: int) -> None:
        with CorrectionStore(db_url, media_dir=tmp_path / "media") as store:
            q = AnnotationQueue(store, ScriptedModel())
            barrier.wait(timeout=60)
            reports[i] = q.add(clips, speaker=f"s{i}")
    assert run_threads(worker, 2) == []
    with CorrectionStore(db_url, media_dir=tmp_path / "media") as store:
        final = {it.file_name: it.speaker for it in AnnotationQueue(store, ScriptedModel()).items()}
    assert set(final.values()) <= {"s0", "s1"} and len(final) == 8
    for i in (0, 1):
        for name, _, _, had, given in reports[i].speakers:
            assert given == f"s{i}"
            assert had == (None if final[name] == given else final[name])
    named_now = [r[0] for i in (0, 1) for r in reports[i].speakers if r[3] is None]
    assert sorted(named_now) == sorted(final)               # each clip named once, by one add


# ---- the Analyse tab and /correct --------------------------------------------------------------
@pytest.fixture(scope="module")
def analysed(fast_rec, tmp_path_factory):
    """One analysis of the angry example (copied by each test)."""
    from emodemo.ui import Handlers
    st = CorrectionStore(f"sqlite:///{tmp_path_factory.mktemp('db') / 'c.db'}")
    out = Handlers(fast_rec, st, work_dir=st.db_file.parent).analyse(str(ANGRY), 0.5)
    st.close()
    assert "_error" not in out, out.get("status")
    return out["state"]


def test_correction_form_stores_the_speaker(h, store, analysed):
    state = json.loads(json.dumps(analysed))
    out = h.correct(state, "angry", "ana", None, None, 0.5, "  Room 2 / Bo ")
    assert "_error" not in out, out["correct_msg"]
    assert store.get(out["stored_id"]).speaker == "Room 2 / Bo"
    assert "speaker *Room 2 / Bo*" in out["correct_msg"]
    assert "speaker_in" not in out                          # the box keeps it for the next clip
    again = h.correct(out["state"], "angry", "ana", None, None, 0.5, "Room 2 / Bo")
    assert again["stored_id"] == out["stored_id"] and "Already stored" in again["correct_msg"]
    other = h.correct(out["state"], "angry", "ana", None, None, 0.5, "Cy")   # another speaker
    assert other["stored_id"] != out["stored_id"] and store.get(other["stored_id"]).speaker == "Cy"
    blank = h.correct(out["state"], "sad", "ana", None, None, 0.5, "   ")
    assert store.get(blank["stored_id"]).speaker is None
    assert store.get(h.correct(out["state"], "happy", "ana", None, None, 0.5)["stored_id"]).speaker is None
    n = len(store.corrections())
    bad = h.correct(out["state"], "neutral", "ana", None, None, 0.5, "x" * 201)
    assert "_error" in bad and "speaker" in bad["correct_msg"] and "Traceback" not in bad["correct_msg"]
    assert len(store.corrections()) == n


def test_api_correct_takes_the_speaker_last_and_optional(h, store):
    old = h.api_correct(str(ANGRY), "angry", "", "api", None, 0.5, 2.0, None)   # as callers do today
    assert store.get(old["id"]).speaker is None and old["speaker"] is None
    new = h.api_correct(str(ANGRY), "sad", "", "api", None, 0.5, 2.0, None, speaker=" s-9 ")
    assert store.get(new["id"]).speaker == "s-9" and new["speaker"] == "s-9"
    from emodemo.errors import EmodemoError
    with pytest.raises(EmodemoError, match="speaker"):
        h.api_correct(str(ANGRY), "sad", speaker="x" * 201)
    with pytest.raises(TypeError, match="speakr"):
        h.api_correct(str(ANGRY), "sad", speakr="typo")


@pytest.mark.slow
def test_app_wires_the_speaker_box_and_the_api_input(fast_rec, store):
    """The form's event reads the Speaker / session box; /correct's speaker is its last input,
    optional with an empty default, so positional calls with the eight inputs before it work."""
    from emodemo.settings import Settings
    from emodemo.ui import build_app
    demo = build_app(Settings(preload_asr=False), fast_rec, store)
    by_id = {c["id"]: c["props"] for c in demo.config["components"]}
    form = next(d for d in demo.config["dependencies"] if d.get("api_name") == "ui_correct")
    assert by_id[form["inputs"][-1]].get("elem_id") == "emodemo-speaker"
    assert by_id[form["inputs"][-1]]["label"] == "Speaker / session (optional)"
    api = demo.get_api_info()["named_endpoints"]["/correct"]["parameters"]
    assert [p["parameter_name"] for p in api][-2:] == ["prediction", "speaker"]
    assert (api[-1]["parameter_has_default"], api[-1]["parameter_default"]) == (True, "")


@pytest.mark.slow
def test_correct_endpoint_via_gradio_client(fast_rec, store):
    """/correct through gradio_client: the eight positional inputs as before, and the speaker."""
    from gradio_client import Client, handle_file

    from conftest import served
    from emodemo.settings import Settings
    from emodemo.ui import build_app
    demo = build_app(Settings(max_file_size="5mb", preload_asr=False), fast_rec, store)
    with served(demo) as base:
        client = Client(base + "/", verbose=False)
        old = client.predict(handle_file(str(ANGRY)), "happy", "", "client", "", None, None, None,
                             api_name="/correct")
        new = client.predict(handle_file(str(ANGRY)), "sad", "", "client", "", None, None, None,
                             "  desk mic ", api_name="/correct")
        assert (store.get(old["id"]).speaker, store.get(new["id"]).speaker) == (None, "desk mic")
        kw = client.predict(handle_file(str(ANGRY)), "angry", "", "client", "", None, None, None,
                            speaker="kw", api_name="/correct")          # by its name
        assert store.get(kw["id"]).speaker == "kw"
