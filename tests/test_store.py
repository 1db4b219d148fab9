"""Tests for the corrections store (emodemo.store), on SQLite and, when a server is reachable,
PostgreSQL (set EMODEMO_TEST_PG_URL, e.g. via `eval "$(bash .ci/postgres.sh)"`)."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import multiprocessing as mp
import os
import sqlite3
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

try:
    import emodemo  # noqa: F401
except ImportError:  # running `pytest` without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from conftest import barrier_wait, run_threads
from emodemo.errors import AudioError, EmodemoError
from emodemo.store import (DEFAULT_LABELS, EXPORT_FIELDS, CorrectionStore, StoreError,
                           alembic_config, default_url, main_corrections)

SR = 16000


def tone(freq: float = 220.0, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_tone(path: Path, freq: float = 220.0, seconds: float = 1.0, sr: int = SR,
               fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(freq, seconds, sr), sr, format=fmt)
    return path


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- backends ------------------------------------------------------------------------------
_PG_CANDIDATES = (
    "postgresql+psycopg://emodemo:emodemo@127.0.0.1:5432/emodemo_test",
    "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres",
    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
)
_pg_probe: dict = {}


def _find_pg() -> tuple[str | None, str]:
    """(working server URL or None, reason when None). Probed once per test session."""
    if "result" in _pg_probe:
        return _pg_probe["result"]
    given = os.environ.get("EMODEMO_TEST_PG_URL", "").strip()
    candidates = [given] if given else list(_PG_CANDIDATES)
    problems = []
    for url in candidates:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            _pg_probe["result"] = (url, "")
            return _pg_probe["result"]
        except Exception as exc:  # noqa: BLE001
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            problems.append(f"{make_url(url).render_as_string(hide_password=True)}: "
                            f"{first[0] if first else type(exc).__name__}")
        finally:
            engine.dispose()
    hint = os.environ.get("EMODEMO_TEST_PG_SKIP_REASON", "")
    why = (hint + "; " if hint else "") + ("EMODEMO_TEST_PG_URL unreachable: " if given else
                                           "EMODEMO_TEST_PG_URL unset and none found: ")
    _pg_probe["result"] = (None, why + " | ".join(problems))
    return _pg_probe["result"]


@contextlib.contextmanager
def private_pg_schema():
    """A fresh schema on the test PostgreSQL server, dropped afterwards: yields (server URL,
    schema name). Skips the test when there is no server."""
    base, reason = _find_pg()
    if base is None:
        pytest.skip(f"no PostgreSQL server: {reason}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield base, schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def schema_url(base: str, schema: str, *options: str) -> str:
    """The server URL with `schema` as the search path (and more libpq -c options)."""
    opts = " ".join([f"-csearch_path={schema}", *options])
    return make_url(base).update_query_dict({"options": opts}).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database URL: a SQLite file, or a private schema on a PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'corrections.sqlite'}"
        return
    with private_pg_schema() as (base, schema):
        yield schema_url(base, schema)


@pytest.fixture
def store(db_url, tmp_path):
    s = CorrectionStore(db_url, media_dir=tmp_path / "media")
    yield s
    s.close()


def media_files(media_dir: Path) -> list[Path]:
    return sorted(p for p in Path(media_dir).rglob("*") if p.is_file())


# ---- core behaviour (both backends) ----------------------------------------------------------
PRED = {"label": "sad", "audio": {"sad": 0.7, "happy": 0.3}, "text": None,
        "fused": {"sad": 0.6, "happy": 0.4}, "transcript": "i am fine", "bundle": "default",
        "bundle_version": "1"}


class FakePrediction:  # the recognizer's Prediction dataclass shape (attributes)
    def __init__(self):
        self.bundle = ""            # "" = unknown -> stored as NULL
        self.start = self.end = 0.0
        self.label = "angry"
        self.audio = {"angry": np.float32(0.9), "sad": np.float64(0.1)}
        self.text = {"angry": 0.5, "sad": float("nan")}
        self.fused = {"angry": 0.8, "sad": 0.2}
        self.transcript = "leave me alone"


def test_add_list_get_newest_first(store, tmp_path):
    wav = write_tone(tmp_path / "in" / "a.wav")
    a = store.add(wav, "happy", annotator="ana", transcript="I am fine.", prediction=PRED,
                  note="first", start=0.1, end=0.9)
    b = store.add((tone(330), SR), "none", prediction=FakePrediction())
    c = store.add(str(wav), "Sad ", annotator="  bob  ")
    assert isinstance(a, int) and a < b < c

    recs = store.corrections()
    assert [r.id for r in recs] == [c, b, a]
    assert [r["label"] for r in recs] == ["sad", "none", "happy"]   # canonical labels
    assert recs[0].annotator == "bob" and recs[1].annotator is None

    ra = store.get(a)
    assert ra == recs[2] and ra["id"] == ra.id == a
    assert ra.transcript_shown == "i am fine" and ra.transcript_corrected == "I am fine."
    assert ra.predicted_label == "sad" and ra.prob_audio == {"sad": 0.7, "happy": 0.3}
    assert ra.prob_text is None and ra.prob_fused == {"sad": 0.6, "happy": 0.4}
    assert (ra.bundle_name, ra.bundle_version) == ("default", "1")
    assert (ra.start, ra.end, ra.note) == (0.1, 0.9, "first")
    assert ra.duration == pytest.approx(1.0) and ra.sample_rate == SR
    assert ra.created_at.tzinfo is not None and ra.updated_at == ra.created_at
    assert Path(ra.media_path).read_bytes() == wav.read_bytes()

    rb = store.get(b)
    assert rb.predicted_label == "angry" and rb.transcript_shown == "leave me alone"
    assert rb.prob_audio == pytest.approx({"angry": 0.9, "sad": 0.1})
    assert rb.prob_text == {"angry": 0.5, "sad": None}     # NaN is not valid JSON -> null
    assert rb.bundle_name is None
    assert store.get(10_000) is None

    assert [r.id for r in store.corrections(limit=2)] == [c, b]
    assert [r.id for r in store.corrections(label="happy")] == [a]
    st = store.stats()
    assert st["corrections"] == 3 and st["media"] == 2
    assert st["by_label"] == {"happy": 1, "none": 1, "sad": 1}
    assert st["by_annotator"] == {None: 1, "ana": 1, "bob": 1}

    upd = store.update(a, label="angry", note=None)
    assert upd.label == "angry" and upd.note is None and upd.updated_at >= upd.created_at
    with pytest.raises(StoreError, match="no correction"):
        store.update(10_000, label="sad")


def test_same_media_twice_is_one_media_row(store, tmp_path):
    wav = write_tone(tmp_path / "a.wav")
    copy = tmp_path / "other-name.WAV"
    copy.write_bytes(wav.read_bytes())
    ids = [store.add(wav, "happy"), store.add(copy, "sad"),
           store.add((tone(440), SR), "happy"), store.add((tone(440), SR), "angry")]
    assert len(set(ids)) == 4
    recs = store.corrections()
    assert len(recs) == 4 and store.stats()["media"] == 2
    sha = sha256_file(wav)
    assert {r.media_sha256 for r in recs if r.id in ids[:2]} == {sha}
    files = media_files(store.media_dir)
    assert len(files) == 2
    assert store.media_path(sha) == store.media_dir / sha[:2] / f"{sha}.wav"
    # the (waveform, sr) pair is stored as a 16-bit WAV whose bytes give the hash
    pair_sha = store.get(ids[2]).media_sha256
    stored = store.media_path(pair_sha)
    assert sha256_file(stored) == pair_sha and stored.name == f"{pair_sha}.wav"
    data, sr = sf.read(str(stored), dtype="float32")
    info = sf.info(str(stored))
    assert sr == SR and info.subtype == "PCM_16"
    assert np.allclose(data, tone(440), atol=1e-3)


def test_invalid_label_and_text_limits(store, tmp_path):
    wav = write_tone(tmp_path / "a.wav")
    for bad in ("furious", "", None, 3, "happy,sad"):
        with pytest.raises(StoreError, match="unknown label"):
            store.add(wav, bad)
    assert issubclass(StoreError, EmodemoError)
    with pytest.raises(StoreError, match="note is too long"):
        store.add(wav, "happy", note="x" * 10_001)
    with pytest.raises(StoreError, match="annotator is too long"):
        store.add(wav, "happy", annotator="a" * 201)
    with pytest.raises(StoreError, match="transcript is too long"):
        store.add(wav, "happy", transcript="t" * 10_001)
    with pytest.raises(StoreError, match="end"):
        store.add(wav, "happy", start=0.5, end=0.2)
    with pytest.raises(StoreError, match="past the end"):
        store.add(wav, "happy", start=0.0, end=5.0)
    with pytest.raises(StoreError, match="start"):
        store.add(wav, "happy", start=float("nan"))
    assert store.corrections() == [] and media_files(store.media_dir) == []

    # text is stored verbatim (no escaping); bytes are decoded with replacement; NUL -> U+FFFD
    weird = "<script>alert('x')</script> \"quoted\" ; DROP TABLE corrections; --\nzweite Zeile ☃ 🎉"
    cid = store.add(wav, "happy", note=weird, transcript=b"caf\xe9 \xff ok",
                    annotator="ann\x00ie", prediction={"transcript": "x" * 10_000})
    rec = store.get(cid)
    assert rec.note == weird
    assert rec.transcript_corrected == "caf\ufffd \ufffd ok"
    assert rec.annotator == "ann\ufffdie"
    assert rec.transcript_shown == "x" * 10_000
    assert len(store.corrections()) == 1


def test_bad_audio_is_rejected_and_nothing_stored(store, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 10)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for bad in (junk, empty, tmp_path / "missing.wav", (np.zeros(10, np.float32), SR)):
        with pytest.raises(AudioError):
            store.add(bad, "happy")
    with pytest.raises(EmodemoError):
        store.add(12345, "happy")
    assert store.corrections() == [] and media_files(store.media_dir) == []


def test_export_csv_and_jsonl_roundtrip_with_formula_guard(store, tmp_path):
    wav = write_tone(tmp_path / "a.wav")
    evil = {"note": "=HYPERLINK(\"http://x\",\"click\")", "annotator": "+cmd|' /C calc'!A0",
            "transcript": "-2+3", "prediction": {"transcript": "@SUM(A1:A9)", "label": "happy",
                                                 "audio": {"happy": 1.0}}}
    a = store.add(wav, "sad", **evil)
    b = store.add(wav, "happy", note="\tTAB", transcript="\rCR", annotator="plain",
                  start=0.25, end=0.75)
    c = store.add((tone(500), SR), "none", note="line1\nline2, \"quoted\"")

    out_csv, out_jsonl = tmp_path / "exp" / "out.csv", tmp_path / "exp" / "out.JSONL"
    assert store.export(out_csv) == 3
    assert store.export(out_jsonl) == 3

    with open(out_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == list(EXPORT_FIELDS)
    assert [int(r["id"]) for r in rows] == [c, b, a]
    ra, rb, rc = rows[2], rows[1], rows[0]
    assert ra["note"] == "'" + evil["note"]
    assert ra["annotator"] == "'" + evil["annotator"]
    assert ra["transcript_corrected"] == "'-2+3"
    assert ra["transcript_shown"] == "'@SUM(A1:A9)"
    assert rb["note"] == "'\tTAB" and rb["transcript_corrected"] == "'\rCR"
    assert rc["note"] == "line1\nline2, \"quoted\""              # not a formula: unchanged
    assert ra["label"] == "sad" and ra["predicted_label"] == "happy"
    assert json.loads(ra["prob_audio"]) == {"happy": 1.0} and ra["prob_text"] == ""
    assert (float(rb["start"]), float(rb["end"])) == (0.25, 0.75)
    assert ra["media_sha256"] == sha256_file(wav)
    assert not Path(ra["media_path"]).is_absolute()          # relative to the media folder
    assert (store.media_dir / ra["media_path"]).read_bytes() == wav.read_bytes()
    for r in rows:  # no cell of the export starts a formula
        assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in r.values())

    lines = out_jsonl.read_text(encoding="utf-8").splitlines()
    objs = [json.loads(line) for line in lines]
    assert [o["id"] for o in objs] == [c, b, a] and list(objs[0]) == list(EXPORT_FIELDS)
    ja = objs[2]
    assert ja["note"] == evil["note"] and ja["annotator"] == evil["annotator"]   # verbatim
    assert ja["transcript_corrected"] == "-2+3" and ja["transcript_shown"] == "@SUM(A1:A9)"
    assert ja["prob_audio"] == {"happy": 1.0} and ja["prob_text"] is None
    assert objs[1]["note"] == "\tTAB" and objs[0]["note"] == "line1\nline2, \"quoted\""
    recs = {r.id: r for r in store.corrections()}
    for o in objs:
        assert o["created_at"] == recs[o["id"]].created_at.isoformat()
        assert store.media_dir / o["media_path"] == Path(recs[o["id"]].media_path)
        assert str(store.media_dir) not in lines[0]             # no server path leaks out

    with pytest.raises(StoreError, match=r"\.csv or \.jsonl"):
        store.export(tmp_path / "out.xlsx")
    assert not (tmp_path / "out.xlsx").exists()


def test_migration_from_revision_0001(db_url, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # alembic must not depend on the current directory
    from alembic import command

    if db_url.startswith("sqlite"):
        Path(make_url(db_url).database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(db_url, connection=conn), "0001")
    with engine.begin() as conn:
        cols = {c["name"] for c in inspect(conn).get_columns("corrections")}
        assert "updated_at" not in cols
        conn.execute(text("INSERT INTO media (sha256, path, duration, sample_rate, created_at) "
                          "VALUES (:sha, :path, 1.5, 22050, :ts)"),
                     {"sha": "ab" * 32, "path": f"ab/{'ab' * 32}.wav", "ts": "2024-01-02 03:04:05"})
        conn.execute(text("INSERT INTO corrections (media_sha256, label, annotator, note, "
                          "start_sec, end_sec, created_at) VALUES (:sha, 'sad', 'old', :note, "
                          "0.5, 1.0, :ts)"),
                     {"sha": "ab" * 32, "note": "from 0001", "ts": "2024-01-02 03:04:05"})
    engine.dispose()

    store = CorrectionStore(db_url, media_dir=tmp_path / "media")
    try:
        assert store.schema_revision() == "0006"   # the head: 0002 updated_at, 0003 account,
        # 0004 language / translation / file name / soft delete / queue tables, 0005 embedding,
        # 0006 speaker
        [rec] = store.corrections()
        assert (rec.label, rec.annotator, rec.note, rec.start, rec.end) == (
            "sad", "old", "from 0001", 0.5, 1.0)
        assert rec.annotator_account is None
        assert (rec.language, rec.translation, rec.deleted_at, rec.queue_item_id) == (
            None, None, None, None)
        assert rec.created_at.year == 2024 and rec.updated_at == rec.created_at  # backfilled
        assert rec.sample_rate == 22050
        assert rec.media_path == str(tmp_path / "media" / "ab" / f"{'ab' * 32}.wav")
        with store.engine.connect() as conn:
            idx = {i["name"] for i in inspect(conn).get_indexes("corrections")}
        assert {"ix_corrections_created_at", "ix_corrections_media_sha256",
                "ix_corrections_annotator_account", "ix_corrections_queue_item_id"} <= idx
        new = store.add(write_tone(tmp_path / "n.wav"), "happy")
        assert [r.id for r in store.corrections()] == [new, rec.id]
    finally:
        store.close()
    # opening again is a no-op
    CorrectionStore(db_url, media_dir=tmp_path / "media").close()


def test_migration_0005_queue_embedding_up_and_down(tmp_path, monkeypatch):
    """0005 adds queue_items.embedding to a queue that has clips (they keep theirs, embedding
    NULL) and its downgrade drops the column again without losing the rows (SQLite)."""
    monkeypatch.chdir(tmp_path)
    from alembic import command

    url = f"sqlite:///{tmp_path / 'q.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(url, connection=conn), "0004")
        conn.execute(text("INSERT INTO media (sha256, path, duration, sample_rate, created_at) "
                          "VALUES (:sha, 'a.wav', 1.0, 16000, '2026-01-01 00:00:00')"), {"sha": "cd" * 32})
        conn.execute(text("INSERT INTO queue_items (media_sha256, start_sec, end_sec, priority, "
                          "created_at) VALUES (:sha, 0, 1, 0.5, '2026-01-01 00:00:00')"),
                     {"sha": "cd" * 32})

    def columns() -> set:
        with engine.connect() as conn:
            return {c["name"] for c in inspect(conn).get_columns("queue_items")}
    assert "embedding" not in columns()
    with engine.begin() as conn:
        command.upgrade(alembic_config(url, connection=conn), "0005")
    assert "embedding" in columns()
    with engine.begin() as conn:
        assert conn.execute(text("SELECT priority, embedding FROM queue_items")).all() == [(0.5, None)]
        conn.execute(text("UPDATE queue_items SET embedding = '[0.5, -1.0]'"))
        command.downgrade(alembic_config(url, connection=conn), "0004")
    assert "embedding" not in columns()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT priority FROM queue_items")).all() == [(0.5,)]
    engine.dispose()


def test_orm_models_match_the_migrations(store):
    """The head revision builds exactly the schema the ORM models describe."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from emodemo.store import VERSION_TABLE, Base

    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                     "version_table": VERSION_TABLE})
        assert compare_metadata(ctx, Base.metadata) == []


def test_agreement(store, tmp_path):
    a = write_tone(tmp_path / "a.wav", 220)
    b = write_tone(tmp_path / "b.wav", 330)
    c = write_tone(tmp_path / "c.wav", 440)
    store.add(a, "happy", annotator="ann")
    first = store.add(a, "sad", annotator="bob")
    again = store.add(a, "sad", annotator="bob")   # a double submit: stored once
    assert (again, again.duplicate, first.duplicate) == (first, True, False)
    store.add(a, "sad", annotator="bob", note="sure")  # repeated: bob still counts once
    store.add(a, "angry", annotator="cid")
    store.add(a, "happy", annotator="cid")         # cid changed their mind: latest counts
    store.add(a, "happy", annotator="dee", start=0.0, end=0.5)  # another clip (a segment)
    store.add(b, "neutral", annotator="ann")       # one annotator only: not reported
    store.add(c, "sad")                            # anonymous corrections count separately
    store.add(c, "happy")

    rows = store.agreement()
    assert len(rows) == 2
    by_sha = {r.media_sha256: r for r in rows}
    ra = by_sha[sha256_file(a)]
    assert (ra.n_annotators, ra.n_corrections, ra.majority_label) == (3, 5, "happy")
    assert ra.agreement == pytest.approx(2 / 3) and not ra.tie
    assert ra.labels == {"happy": 2, "sad": 1} and ra.start is None
    rc = by_sha[sha256_file(c)]
    assert (rc.n_annotators, rc.agreement, rc.tie) == (2, 0.5, True)
    assert rows[0] is rc  # least agreement first
    assert len(store.agreement(min_annotators=1)) == 4


def test_signed_in_account_is_the_voter(store, tmp_path):
    """`add(..., account=...)` stores the signed-in account next to the typed name; agreement
    counts one vote per account where there is one (a typed name is not an identity)."""
    a = write_tone(tmp_path / "a.wav", 220)
    first = store.add(a, "happy", annotator="ana", account="ana-hf")
    store.add(a, "sad", annotator="Ana (laptop)", account="ana-hf")   # same person: replaces
    store.add(a, "happy", annotator="ana", account="bob-hf")          # typed "ana", another account
    store.add(a, "happy", annotator="ana")                            # no account: the typed name
    rec = store.get(first)
    assert (rec.annotator, rec.annotator_account) == ("ana", "ana-hf")
    assert [r.annotator for r in store.corrections(account="ana-hf")] == ["Ana (laptop)", "ana"]
    [row] = store.agreement()
    assert (row.n_annotators, row.n_corrections, row.labels) == (3, 4, {"happy": 2, "sad": 1})
    with pytest.raises(StoreError, match="account is too long"):
        store.add(a, "happy", account="x" * 201)

    out = tmp_path / "e.csv"
    store.export(out)
    with CorrectionStore(f"sqlite:///{tmp_path / 'copy.db'}", media_dir=tmp_path / "m2") as copy:
        assert copy.import_csv(out) == (4, [])
        def who(s):
            return sorted((r.annotator, r.annotator_account or "") for r in s.corrections())
        assert who(copy) == who(store)
        assert [r.n_annotators for r in copy.agreement()] == [3]


@pytest.mark.slow
def test_concurrent_threads_and_processes(db_url, tmp_path):
    """20 threads + 3 spawned processes add at once (the processes also race the first open,
    i.e. the migration); every row must be stored exactly once."""
    media = tmp_path / "media"
    clips = [write_tone(tmp_path / f"clip{i}.wav", 200 + 50 * i) for i in range(3)]
    # every spawned process pays for importing torch (via emodemo): keep the count small
    n_threads, n_procs, per = 20, (3 if db_url.startswith("sqlite") else 2), 4
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_procs + 1)
    procs = [ctx.Process(target=_proc_worker, args=(db_url, str(media), [str(c) for c in clips],
                                                     p, per, barrier))
             for p in range(n_procs)]
    for p in procs:
        p.start()
    barrier_wait(barrier)  # all processes open the fresh database together with us
    store = CorrectionStore(db_url, media_dir=media)

    def thread_worker(t: int) -> None:
        for j in range(per):
            store.add(clips[(t + j) % len(clips)], DEFAULT_LABELS[j % 7], annotator=f"t{t}",
                      note=f"thread-{t}-{j}")

    errors = run_threads(thread_worker, n_threads, procs, timeout=180)
    try:
        assert not errors, errors
        assert [p.exitcode for p in procs] == [0] * n_procs
        recs = store.corrections()
        notes = sorted(r.note for r in recs)
        expected = sorted([f"thread-{t}-{j}" for t in range(n_threads) for j in range(per)] +
                          [f"proc-{p}-{j}" for p in range(n_procs) for j in range(per)])
        assert notes == expected                     # each exactly once
        assert len({r.id for r in recs}) == len(expected)
        for r in recs:
            kind, who, j = r.note.split("-")
            assert r.annotator == (f"t{who}" if kind == "thread" else f"p{who}")
            assert r.label == DEFAULT_LABELS[int(j) % 7]
        assert store.stats()["media"] == len(clips)
        assert len(media_files(media)) == len(clips)
        assert not list(media.rglob(".tmp-*"))
        assert {r.media_sha256 for r in recs} == {sha256_file(c) for c in clips}
    finally:
        store.close()


def _proc_worker(url, media, clips, p, per, barrier):
    from emodemo.store import DEFAULT_LABELS as labels
    from emodemo.store import CorrectionStore as Store
    barrier_wait(barrier)
    s = Store(url, media_dir=media)
    for j in range(per):
        s.add(clips[(p + j) % len(clips)], labels[j % 7], annotator=f"p{p}", note=f"proc-{p}-{j}")
    s.close()


# ---- SQLite specifics ----------------------------------------------------------------------
@pytest.fixture
def sqlite_store(tmp_path):
    s = CorrectionStore(f"sqlite:///{tmp_path / 'db' / 'c.sqlite'}")
    yield s
    s.close()


def test_sqlite_pragmas_and_default_media_dir(sqlite_store, tmp_path):
    assert sqlite_store.media_dir == (tmp_path / "db" / "media").resolve()
    with sqlite_store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30_000
    # the foreign key is enforced
    raw = sqlite3.connect(str(tmp_path / "db" / "c.sqlite"))
    raw.execute("PRAGMA foreign_keys = ON")
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute("INSERT INTO corrections (media_sha256, label, created_at) "
                    "VALUES ('nope', 'sad', '2024-01-01')")
    raw.close()


def test_add_waits_and_retries_while_the_database_is_locked(tmp_path, monkeypatch):
    import time

    import emodemo.store.db as mod

    monkeypatch.setattr(mod, "SQLITE_BUSY_TIMEOUT_MS", 20)  # so "database is locked" surfaces
    db = tmp_path / "locked.sqlite"
    store = CorrectionStore(f"sqlite:///{db}")
    store.add((tone(), SR), "happy")
    blocker = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock for a while
    timer = threading.Timer(0.8, lambda: blocker.execute("ROLLBACK"))
    timer.start()
    try:
        t0 = time.monotonic()
        cid = store.add((tone(330), SR), "sad", note="after the lock")
        waited = time.monotonic() - t0
    finally:
        timer.join()
        blocker.close()
    assert waited >= 0.5
    assert store.get(cid).note == "after the lock" and len(store.corrections()) == 2
    store.close()


def test_stored_name_is_the_hash_not_the_user_name(sqlite_store, tmp_path):
    (tmp_path / "up" / "x" / "y").mkdir(parents=True)
    evil = write_tone(tmp_path / "evil.wav")
    traversal = tmp_path / "up" / "x" / "y" / ".." / ".." / ".." / "evil.wav"
    tricky = write_tone(tmp_path / "clip.wav;.sh", 330, fmt="WAV")
    flac_as_wav = write_tone(tmp_path / "really-flac.wav", 440, fmt="FLAC")
    unknown_suffix = write_tone(tmp_path / "noext", 550, fmt="WAV")
    for p in (traversal, tricky, flac_as_wav, unknown_suffix):
        sqlite_store.add(str(p), "happy")
    media = sqlite_store.media_dir
    expect = {sha256_file(evil): ".wav", sha256_file(tricky): ".wav",
              sha256_file(flac_as_wav): ".flac", sha256_file(unknown_suffix): ".wav"}
    got = {f.relative_to(media).as_posix() for f in media_files(media)}
    assert got == {f"{sha[:2]}/{sha}{suf}" for sha, suf in expect.items()}
    assert not any("evil" in p.name or ".sh" in p.name for p in media.rglob("*"))
    outside = {p for p in tmp_path.rglob("*") if p.is_file() and media not in p.parents}
    assert {p.name for p in outside} <= {"evil.wav", "clip.wav;.sh", "really-flac.wav", "noext",
                                         "c.sqlite", "c.sqlite-wal", "c.sqlite-shm"}
    for sha in expect:
        assert sqlite_store.media_path(sha).read_bytes() == (
            {sha256_file(p): p for p in (evil, tricky, flac_as_wav, unknown_suffix)}[sha].read_bytes())
    with pytest.raises(StoreError, match="no stored audio"):
        sqlite_store.media_path("../../etc/passwd")


def test_media_file_is_written_before_the_row(sqlite_store, tmp_path, monkeypatch):
    """If the database insert fails, no row exists; if it succeeds, the file is complete."""
    import emodemo.store as mod

    wav = write_tone(tmp_path / "a.wav")
    seen = {}
    real_insert = mod.CorrectionStore._insert_media

    def spy(self, s, clip, rel, now):
        path = self.abs_media(rel)
        seen["bytes_at_insert"] = path.read_bytes() if path.exists() else None
        return real_insert(self, s, clip, rel, now)

    monkeypatch.setattr(mod.CorrectionStore, "_insert_media", spy)
    sqlite_store.add(wav, "happy")
    assert seen["bytes_at_insert"] == wav.read_bytes()

    def boom(self, s, clip, rel, now):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod.CorrectionStore, "_insert_media", boom)
    with pytest.raises(RuntimeError):
        sqlite_store.add(write_tone(tmp_path / "b.wav", 330), "sad")
    assert len(sqlite_store.corrections()) == 1
    assert not list(sqlite_store.media_dir.rglob(".tmp-*"))


def test_import_csv(sqlite_store, tmp_path):
    root = tmp_path / "dataset"
    write_tone(root / "audio" / "one.wav", 220)
    write_tone(root / "audio" / "two.flac", 330, fmt="FLAC")
    absolute = write_tone(tmp_path / "abs.wav", 440)
    (root / "junk.wav").write_bytes(b"nope" * 100)
    manifest = root / "manifest.csv"
    manifest.write_text(
        "path,label,transcript,annotator\n"
        "audio/one.wav,happy,hello there,ann\n"
        "audio/two.flac,SAD,,\n"
        f"{absolute},none,\"with, comma\",bob\n"
        "audio/missing.wav,happy,,\n"
        "audio/one.wav,furious,,\n"
        "junk.wav,happy,,\n"
        ",happy,,\n"
        "\n", encoding="utf-8")
    n, errors = sqlite_store.import_csv(manifest, annotator="importer")
    assert n == 3
    assert len(errors) == 4
    assert errors[0].startswith("line 5:") and "missing.wav" in errors[0]
    assert errors[1].startswith("line 6:") and "unknown label" in errors[1]
    assert errors[2].startswith("line 7:") and "junk.wav" in errors[2]
    assert errors[3].startswith("line 8:")
    recs = {r.label: r for r in sqlite_store.corrections()}
    assert recs["happy"].transcript_corrected == "hello there" and recs["happy"].annotator == "ann"
    assert recs["sad"].annotator == "importer" and recs["sad"].transcript_corrected is None
    assert recs["sad"].media_path.endswith(".flac")
    assert recs["none"].transcript_corrected == "with, comma"

    # headerless, positional columns; relative to the CSV's own folder, not the cwd
    other = tmp_path / "other" / "m.csv"
    write_tone(other.parent / "x.wav", 600)
    other.write_text("x.wav,angry\nx.wav,neutral,text,cat\n", encoding="utf-8")
    res = sqlite_store.import_csv(other)
    assert res.imported == 2 and res.errors == []
    assert sqlite_store.corrections()[0].annotator == "cat"
    with pytest.raises(StoreError, match="cannot read"):
        sqlite_store.import_csv(tmp_path / "nope.csv")


def test_backup(sqlite_store, tmp_path):
    for i in range(3):
        sqlite_store.add((tone(200 + 100 * i), SR), "happy")
    dest = sqlite_store.backup(tmp_path / "backups" / "copy.db")
    con = sqlite3.connect(str(dest))
    try:
        assert con.execute("SELECT count(*) FROM corrections").fetchone()[0] == 3
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    with pytest.raises(StoreError):
        sqlite_store.backup(sqlite_store.db_file)


def test_default_url_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("EMODEMO_DB", raising=False)
    assert default_url() == "sqlite:///data/corrections.db"
    monkeypatch.setenv("EMODEMO_DB", "sqlite:///elsewhere.db")
    assert default_url() == "sqlite:///elsewhere.db"
    plain = tmp_path / "plain.sqlite"
    monkeypatch.setenv("EMODEMO_DB", str(plain))
    monkeypatch.setenv("EMODEMO_MEDIA_DIR", str(tmp_path / "m"))
    with CorrectionStore() as s:
        s.add((tone(), SR), "happy")
        assert s.media_dir == (tmp_path / "m").resolve()
    assert plain.exists() and len(media_files(tmp_path / "m")) == 1
    with pytest.raises(StoreError, match="labels"):
        CorrectionStore(f"sqlite:///{tmp_path / 'x.db'}", labels=[])
    custom = CorrectionStore(f"sqlite:///{tmp_path / 'y.db'}", labels=["calm", "excited"])
    custom.add((tone(), SR), "Calm")
    with pytest.raises(StoreError, match="calm, excited"):
        custom.add((tone(), SR), "happy")
    custom.close()


def test_cli(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    with CorrectionStore(db) as s:
        s.add(write_tone(tmp_path / "a.wav"), "happy", annotator="ann",
              transcript="hello\x1b[31m red")
        s.add((tone(330), SR), "sad")
    capsys.readouterr()
    assert main_corrections(["--db", db, "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].split("\t")[2] == "sad" and "\x1b" not in "".join(out)
    assert main_corrections(["--db", db, "stats", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["corrections"] == 2 and st["by_annotator"] == {"ann": 1, "": 1}
    assert main_corrections(["--db", db, "export", str(tmp_path / "e.jsonl")]) == 0
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 2
    assert main_corrections(["--db", db, "backup", str(tmp_path / "b.sqlite")]) == 0
    assert (tmp_path / "b.sqlite").exists()
    manifest = tmp_path / "m.csv"
    manifest.write_text("a.wav,neutral\nmissing.wav,happy\n")
    capsys.readouterr()
    assert main_corrections(["--db", db, "import", str(manifest)]) == 1
    res = capsys.readouterr()
    assert "imported 1" in res.out and "line 2:" in res.err
    assert main_corrections(["--db", db, "agreement"]) == 0
    assert main_corrections(["--db", db, "export", str(tmp_path / "e.txt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert main_corrections(["--db", db, "bogus"]) == 2
    capsys.readouterr()
    assert main_corrections(["--db", "notaurl://x", "list"]) == 1
    assert capsys.readouterr().err.startswith("error:")


def test_postgres_bad_password_is_a_clear_error(tmp_path):
    base, reason = _find_pg()
    if base is None:
        pytest.skip(f"no PostgreSQL server: {reason}")
    if make_url(base).password is None:
        pytest.skip("the PostgreSQL test server does not use passwords")
    url = make_url(base).set(password="definitely-wrong-pw")
    with pytest.raises(StoreError) as info:
        CorrectionStore(url.render_as_string(hide_password=False), media_dir=tmp_path)
    assert "definitely-wrong-pw" not in str(info.value)
    assert "cannot open corrections database" in str(info.value)


# ---- soft delete, double submits, language (contracts C4, C5) ---------------------------------
def test_soft_delete_and_restore_keep_the_row_and_leave_it_out_everywhere(store, tmp_path):
    a = write_tone(tmp_path / "a.wav", 220)
    ana = store.add(a, "happy", annotator="ana")
    bob = store.add(a, "sad", annotator="bob", account="bob-hf")
    cid_ = store.add(a, "sad", annotator="cid")
    assert store.agreement()[0].labels == {"sad": 2, "happy": 1}
    with pytest.raises(StoreError, match="someone else"):
        store.delete(ana, by="bob")                              # not bob's
    with pytest.raises(StoreError, match="say who"):
        store.delete(ana, by=None)
    rec = store.delete(bob, by="bob-hf")                         # own (by account)
    assert rec.deleted_by == "bob-hf" and rec.deleted_at is not None
    assert store.delete(bob, by="bob-hf").deleted_at == rec.deleted_at  # twice: no change
    admin = store.delete(cid_, by="root", admin=True)            # an admin: anyone's
    assert admin.deleted_by == "root"
    assert [r.id for r in store.corrections()] == [ana]          # left out of reads ...
    assert {r.id for r in store.corrections(deleted=True)} == {bob, cid_}
    assert len(store.corrections(deleted=None)) == 3             # ... the rows stay
    assert store.get(bob).deleted_at is not None
    assert store.stats()["corrections"] == 1 and store.stats()["deleted"] == 2
    assert store.agreement(min_annotators=1)[0].labels == {"happy": 1}
    assert store.export(tmp_path / "out.csv") == 1               # exports
    from emodemo.finetune.dataset import read_corrections         # fine-tuning reads
    assert [r.id for r in read_corrections(store)[0]] == [ana]
    store.restore(bob, by="bob-hf")
    store.restore(cid_, by="root", admin=True)
    assert store.agreement()[0].labels == {"sad": 2, "happy": 1}  # nothing was lost
    assert store.get(bob).deleted_at is None and store.stats()["deleted"] == 0
    with pytest.raises(StoreError, match="no correction"):
        store.delete(10 ** 6, by="ana")


def test_delete_and_restore_through_the_cli(tmp_path, capsys):
    db = ["--db", f"sqlite:///{tmp_path / 'c.db'}", "--media-dir", str(tmp_path / "media")]
    with CorrectionStore(f"sqlite:///{tmp_path / 'c.db'}", media_dir=tmp_path / "media") as s:
        cid = s.add(write_tone(tmp_path / "a.wav"), "happy", annotator="ana")
    assert main_corrections([*db, "delete", str(cid), "--by", "bob"]) == 1
    assert "someone else" in capsys.readouterr().err
    assert main_corrections([*db, "delete", str(cid), "--by", "ana"]) == 0
    assert capsys.readouterr().out.strip() == f"{cid}\tdeleted by ana"
    assert main_corrections([*db, "list", "--json"]) == 0 and capsys.readouterr().out == ""
    assert main_corrections([*db, "list", "--json", "--deleted"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == cid
    assert main_corrections([*db, "restore", str(cid), "--by", "ana"]) == 0
    assert capsys.readouterr().out.strip() == f"{cid}\tlive"


def test_double_submit_is_stored_once(store, tmp_path, monkeypatch):
    a = write_tone(tmp_path / "a.wav", 220)
    first = store.add(a, "happy", annotator="ana", transcript="hi", start=0.1, end=0.6)
    again = store.add(a, "happy", annotator="ana", transcript="hi", start=0.1, end=0.6)
    assert (int(again), again.duplicate, first.duplicate) == (first, True, False)
    assert store.add(a, "happy", annotator="ana", transcript="hi!", start=0.1, end=0.6) != first
    assert store.add(a, "happy", annotator="ana", transcript="hi") != first   # whole file
    assert store.add(a, "happy", annotator="bob", transcript="hi", start=0.1, end=0.6) != first
    store.delete(first, by="ana")                                 # deleted: a new submit counts
    assert not store.add(a, "happy", annotator="ana", transcript="hi", start=0.1,
                         end=0.6).duplicate
    import emodemo.store.writes as W
    monkeypatch.setattr(W, "DUPLICATE_WINDOW_S", 0.0)             # outside the window: kept
    assert not store.add(a, "sad", annotator="ana").duplicate
    assert not store.add(a, "sad", annotator="ana").duplicate


def test_double_submits_at_the_same_moment_store_one_row(store, tmp_path):
    """Ten clicks of one person's Save at once (threads, as the app's workers): one row."""
    a = write_tone(tmp_path / "a.wav", 330)
    ids = []
    errors = run_threads(lambda i: ids.append(store.add(a, "angry", annotator="ana", note="x")),
                         10, [], timeout=120)
    assert not errors, errors
    assert len(set(ids)) == 1 and sum(not i.duplicate for i in ids) == 1
    assert len(store.corrections()) == 1


def test_language_translation_and_file_name(store, tmp_path):
    a = write_tone(tmp_path / "mowa po polsku.wav", 220)
    pred = {"label": "sad", "fused": {"sad": 0.6, "happy": 0.4}, "transcript": "jestem smutny",
            "language": {"code": "PL", "name": "Polish", "probability": 0.98},
            "translation": "I am sad"}
    cid = store.add(a, "sad", annotator="ana", prediction=pred)
    rec = store.get(cid)
    assert (rec.language, rec.language_probability, rec.translation, rec.file_name) == (
        "pl", 0.98, "I am sad", "mowa po polsku.wav")
    assert rec.transcript_shown == "jestem smutny"
    cid2 = store.add((tone(220, 1.0), SR), "happy", language="de", translation="hallo -> hello",
                     file_name="upload.webm")
    rec2 = store.get(cid2)
    assert (rec2.language, rec2.language_probability, rec2.file_name) == ("de", None, "upload.webm")
    with pytest.raises(StoreError, match="language probability"):
        store.add(a, "sad", language={"code": "pl", "probability": 3})
    assert list(store.history()[0])[:6] == ["id", "file_name", "start", "end", "label",
                                            "predicted_label"]
    store.export(tmp_path / "out.jsonl")
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert (rows[cid]["language"], rows[cid]["translation"], rows[cid]["file_name"]) == (
        "pl", "I am sad", "mowa po polsku.wav")


def test_opening_a_current_store_takes_no_write_lock(tmp_path):
    """A store at the head revision opens while another connection holds the write lock (it
    only reads the revision), so many processes open at once without queueing behind writers."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    CorrectionStore(url, media_dir=tmp_path / "media").close()
    holder = sqlite3.connect(tmp_path / "c.db", timeout=0)
    holder.execute("BEGIN IMMEDIATE")                            # a writer holds the lock
    try:
        import time
        t0 = time.perf_counter()
        with CorrectionStore(url, media_dir=tmp_path / "media") as s:
            assert s.schema_revision() == "0006" and s.corrections() == []
        assert time.perf_counter() - t0 < 20                      # not the 30 s busy timeout
    finally:
        holder.rollback()
        holder.close()


def test_a_write_that_cannot_get_the_lock_says_so_and_stores_nothing(tmp_path, monkeypatch):
    """Retried with backoff for RETRY_SECONDS (180 s in use; 1 s here), then a StoreError the
    app shows while keeping the form: nothing half-stored, the next try works."""
    import emodemo.store.db as D
    monkeypatch.setattr(D, "SQLITE_BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(D, "RETRY_SECONDS", 1.0)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = CorrectionStore(url, media_dir=tmp_path / "media")
    wav = write_tone(tmp_path / "a.wav")
    holder = sqlite3.connect(tmp_path / "c.db", timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match=r"Could not save the correction: .* stayed busy "
                                             r"for 1 s .* Nothing was stored"):
            store.add(wav, "happy", annotator="ana")
    finally:
        holder.rollback()
        holder.close()
    assert store.corrections() == []
    assert store.add(wav, "happy", annotator="ana") and len(store.corrections()) == 1
    store.close()
