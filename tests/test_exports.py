"""Exports that other tools read: a Hugging Face audiofolder (loaded back with `datasets`) and
Label Studio's JSON (exported, imported back, and read as Label Studio itself writes it)."""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

try:
    import emodemo  # noqa: F401
except ImportError:  # running `pytest` without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import SR, espeak, ffmpeg_convert, tone
from emodemo.store import CorrectionStore, StoreError, main_corrections
from emodemo.store.labelstudio import label_config

PRED = {"label": "sad", "audio": {"sad": 0.7, "happy": 0.3}, "text": None,
        "fused": {"sad": 0.6, "happy": 0.4}, "transcript": "what the model heard",
        "bundle": "default", "bundle_version": "4"}


def _strip(rec: dict) -> dict:
    """What must survive a round trip (ids, times and the media folder change)."""
    return {k: v for k, v in rec.items()
            if k not in ("id", "created_at", "updated_at", "media_path")}


@pytest.fixture
def filled(tmp_path, speech_wav):
    """A store with speech, tones (WAV, FLAC, from an array, m4a), a segment, overlapping
    annotators, a signed-in account and text that CSV readers mangle."""
    src = tmp_path / "src"
    src.mkdir()
    flac = src / "b.flac"
    sf.write(str(flac), tone(1.5, 330), SR, format="FLAC")
    m4a = ffmpeg_convert(speech_wav, src / "phone.m4a")
    s = CorrectionStore(f"sqlite:///{tmp_path / 'db' / 'c.sqlite'}", media_dir=tmp_path / "db" / "media")
    s.add(speech_wav, "happy", annotator="ana", transcript="I am so happy today", prediction=PRED)
    s.add(speech_wav, "HAPPY", annotator="007", account="bob-hf", note="line 1\nline 2, \"quoted\"")
    s.add(speech_wav, "neutral", annotator="ana", start=0.5, end=1.75, transcript="NA")
    s.add(flac, "sad", annotator="None", transcript="=1+2")
    s.add((tone(2.0, 440), SR), "none")                                   # anonymous
    s.add(m4a, "angry", annotator="cid", account="cid-hf", start=0.0, end=1.0)
    yield s
    s.close()


def _load(data_dir: Path, cache: Path):
    import datasets

    return datasets.load_dataset("audiofolder", data_dir=str(data_dir), split="train",
                                 cache_dir=str(cache))


def test_audiofolder_loads_with_datasets_and_decodes_audio(filled, tmp_path):
    out = tmp_path / "hf"
    assert filled.export(out, format="audiofolder") == 6
    ds = _load(out, tmp_path / "cache")
    assert len(ds) == 6
    assert {"audio", "label", "annotator", "annotator_account", "transcript", "prediction",
            "created_at", "media_sha256", "start", "end"} <= set(ds.column_names)
    recs = {r.id: r for r in filled.corrections()}
    rows = {row["correction_id"]: row for row in ds}
    assert set(rows) == set(recs)
    for cid, row in rows.items():
        rec = recs[cid]
        assert (row["label"], row["annotator"], row["annotator_account"], row["note"]) == (
            rec.label, rec.annotator, rec.annotator_account, rec.note)   # "007", "None" as text
        assert row["transcript"] == (rec.transcript_corrected if rec.transcript_corrected
                                     is not None else rec.transcript_shown)
        samples = row["audio"].get_all_samples()       # decoded by datasets (torchcodec)
        wav, sr = samples.data.numpy().mean(0), samples.sample_rate
        if rec.start is None and rec.end is None:      # the whole recording, as stored
            stored, stored_sr = sf.read(rec.media_path, dtype="float32")
            assert sr == stored_sr and wav.shape[0] == stored.shape[0]
            assert np.allclose(wav, stored, atol=1e-3)
        else:                                           # the segment, cut out
            span = (rec.end or rec.duration) - (rec.start or 0.0)
            assert abs(wav.shape[0] / sr - span) < 0.02, (cid, wav.shape[0] / sr, span)
    by_label = {row["label"]: row for row in rows.values()}
    assert by_label["neutral"]["transcript"] == "NA" and by_label["sad"]["transcript"] == "=1+2"
    assert by_label["sad"]["prediction"] is None and by_label["happy"]["prediction"] == "sad"
    # corrections of one clip share its audio file; a segment has its own
    meta = [json.loads(line) for line in (out / "metadata.jsonl").read_text("utf-8").splitlines()]
    names = {m["file_name"] for m in meta}
    assert len(names) == 5
    assert sorted(p.name for p in (out / "audio").iterdir()) == sorted(Path(n).name for n in names)
    assert not list(tmp_path.glob(".tmp-audiofolder-*"))


def test_audiofolder_refuses_a_used_folder_and_leaves_nothing_half_written(filled, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an empty folder"):
        filled.export(used, format="audiofolder")
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    victim = filled.corrections()[0]
    Path(victim.media_path).unlink()                    # a stored file went missing
    with pytest.raises(StoreError, match="missing"):
        filled.export(tmp_path / "new", format="audiofolder")
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".tmp-audiofolder-*"))


def test_labelstudio_export_format_and_round_trip(filled, tmp_path):
    tasks_path = tmp_path / "ls" / "tasks.json"
    assert filled.export(tasks_path, format="labelstudio") == 5            # five clips
    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    assert isinstance(tasks, list) and len(tasks) == 5
    config = ET.fromstring(label_config(filled.labels))
    audio_tag, choices_tag = config.find("Audio"), config.find("Choices")
    assert [c.get("value") for c in choices_tag] == [*filled.labels, "none"]
    root = filled.media_dir.parent
    stored = {Path(r.media_path) for r in filled.corrections()}
    n_annotations = 0
    for task in tasks:
        url = task["data"][audio_tag.get("name")]
        assert url.startswith("/data/local-files/?d=")
        assert (root / url.split("?d=", 1)[1]).resolve() in stored
        for ann in task["annotations"]:
            n_annotations += 1
            [choice, *text] = ann["result"]
            assert (choice["from_name"], choice["to_name"], choice["type"]) == (
                choices_tag.get("name"), audio_tag.get("name"), "choices")
            assert choice["value"]["choices"][0] in [*filled.labels, "none"]
            assert all(t["type"] == "textarea" and t["value"]["text"] for t in text)
            assert ann["was_cancelled"] is False and ann["task"] == task["id"]
    assert n_annotations == 6
    segment = next(t for t in tasks if t["data"]["end"] == 1.75)
    assert segment["data"]["start"] == 0.5 and segment["annotations"][0]["result"][0][
        "value"]["choices"] == ["neutral"]
    speech = next(t for t in tasks if len(t["annotations"]) == 2)
    assert speech["predictions"][0]["result"][0]["value"]["choices"] == ["sad"]
    emails = {a["completed_by"]["email"] for a in speech["annotations"]}
    assert emails == {"ana@name.emodemo.invalid", "bob-hf@account.emodemo.invalid"}

    with CorrectionStore(f"sqlite:///{tmp_path / 'copy.sqlite'}", media_dir=tmp_path / "m2") as copy:
        res = copy.import_labelstudio(tasks_path, audio_root=root)
        assert res == (6, [])
        assert sorted(map(json.dumps, map(_strip, copy.corrections()))) == \
            sorted(map(json.dumps, map(_strip, filled.corrections())))
        assert [_strip(r) for r in copy.agreement(min_annotators=1)] == \
            [_strip(r) for r in filled.agreement(min_annotators=1)]


def test_labelstudio_import_of_what_label_studio_writes(tmp_path, speech_wav):
    """Tasks as Label Studio exports them: user e-mails or ids, a segment ("labels" region),
    a transcript, a skipped annotation, an uploaded file, an unreachable URL."""
    root = tmp_path / "ls-media"
    (root / "upload" / "3").mkdir(parents=True)
    clip = espeak("Leave me alone, I said leave me alone.", root / "upload" / "3" / "f00d-angry.wav")
    sf.write(str(root / "calm.flac"), tone(1.0, 262), SR, format="FLAC")
    tasks = [
        {"id": 11, "data": {"audio": "/data/upload/3/f00d-angry.wav"},
         "annotations": [
             {"id": 1, "completed_by": {"id": 1, "email": "ana@lab.example", "first_name": "Ana",
                                        "last_name": "Lima"},
              "result": [{"id": "x", "from_name": "emotion", "to_name": "audio", "type": "choices",
                          "value": {"choices": ["Angry"]}},
                         {"id": "y", "from_name": "transcript", "to_name": "audio",
                          "type": "textarea", "value": {"text": ["leave me alone"]}}],
              "was_cancelled": False, "created_at": "2025-01-01T10:00:00Z",
              "updated_at": "2025-01-01T10:00:00Z"},
             {"id": 2, "completed_by": 7, "created_username": " bo@lab.example, 7",
              "result": [{"id": "z", "from_name": "seg", "to_name": "audio", "type": "labels",
                          "value": {"start": 0.25, "end": 1.5, "labels": ["sad"]}}],
              "was_cancelled": False, "created_at": "2025-01-01T11:00:00Z"},
             {"id": 3, "completed_by": 7, "result": [], "was_cancelled": True}]},
        {"id": 12, "data": {"audio": "/data/local-files/?d=calm.flac"},
         "annotations": [{"id": 4, "result": [{"from_name": "emotion", "to_name": "audio",
                                               "type": "choices", "value": {"choices": ["neutral"]}}]}]},
        {"id": 13, "data": {"audio": "https://example.com/a.wav"},
         "annotations": [{"id": 5, "result": [{"from_name": "emotion", "to_name": "audio",
                                               "type": "choices", "value": {"choices": ["happy"]}}]}]},
        {"id": 14, "data": {"audio": "/data/local-files/?d=calm.flac"},
         "annotations": [{"id": 6, "result": [{"from_name": "emotion", "to_name": "audio",
                                               "type": "choices", "value": {"choices": ["furious"]}}]}]},
        {"id": 15, "data": {"audio": "/data/local-files/?d=../src/secret.wav"},
         "annotations": [{"id": 7, "result": [{"from_name": "emotion", "to_name": "audio",
                                               "type": "choices", "value": {"choices": ["sad"]}}]}]},
    ]
    (tmp_path / "src").mkdir()
    sf.write(str(tmp_path / "src" / "secret.wav"), tone(1.0, 500), SR)
    path = tmp_path / "project-3-export.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    with CorrectionStore(f"sqlite:///{tmp_path / 'c.sqlite'}") as s:
        n, errors = s.import_labelstudio(path, audio_root=root, annotator="importer")
        assert n == 3 and len(errors) == 3
        assert errors[0].startswith("task 13:") and "download" in errors[0]
        assert errors[1].startswith("task 14:") and "unknown label" in errors[1]
        assert errors[2].startswith("task 15:") and "outside the audio root" in errors[2]
        recs = {r.label: r for r in s.corrections()}
        assert set(recs) == {"angry", "sad", "neutral"}
        a, b, c = recs["angry"], recs["sad"], recs["neutral"]
        assert (a.annotator, a.annotator_account, a.transcript_corrected) == (
            "Ana Lima", "ana@lab.example", "leave me alone")
        assert Path(a.media_path).read_bytes() == clip.read_bytes()
        assert (b.annotator_account, b.start, b.end) == ("bo@lab.example", 0.25, 1.5)
        assert (c.annotator, c.annotator_account, c.media_path.endswith(".flac")) == (
            "importer", None, True)


def test_cli_exports_and_detects_label_studio_json(filled, tmp_path, capsys):
    db = ["--db", filled.url, "--media-dir", str(filled.media_dir)]
    assert main_corrections([*db, "export", str(tmp_path / "hf"), "--format", "audiofolder"]) == 0
    assert (tmp_path / "hf" / "metadata.jsonl").is_file()
    assert main_corrections([*db, "export", str(tmp_path / "t.json"), "--format", "labelstudio"]) == 0
    out = capsys.readouterr().out
    assert "5 Label Studio tasks" in out and (tmp_path / "t-config.xml").is_file()
    ET.fromstring((tmp_path / "t-config.xml").read_text(encoding="utf-8"))
    dst = ["--db", f"sqlite:///{tmp_path / 'dst.sqlite'}", "--media-dir", str(tmp_path / "m3")]
    assert main_corrections([*dst, "import", str(tmp_path / "t.json"),
                             "--audio-root", str(filled.media_dir.parent)]) == 0
    assert "imported 6 corrections, 0 rows with errors" in capsys.readouterr().out
    assert main_corrections([*db, "export", str(tmp_path / "x.txt")]) == 1
    assert "audiofolder" in capsys.readouterr().err
