"""The Gradio app's handlers, called as plain functions on real audio (committed example clips,
numpy signals and espeak-ng speech), plus the figures and the named API endpoints."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import FixedASR, ROOT, SR, served, tone, with_asr

from emodemo import plots
from emodemo.settings import Settings
from emodemo.store import CorrectionStore
from emodemo.ui import Handlers, Limits, build_app, example_files, md_escape, parse_size

EXAMPLES = ROOT / "data" / "examples"
ANGRY = EXAMPLES / "angry_actor17.flac"
SYNTH = EXAMPLES / "synthetic_happy_espeak.wav"
ASR_TEXT = "kids are talking by the door"



@pytest.fixture(scope="module")
def fast_rec(recognizer):
    """The default bundle's models with a counting fake ASR (no model loading: shares modules)."""
    return with_asr(recognizer, FixedASR(ASR_TEXT))


@pytest.fixture
def h(fast_rec, store):
    return Handlers(fast_rec, store, Limits(), work_dir=store.db_file.parent / "work")


@pytest.fixture(scope="module")
def analysed(fast_rec, tmp_path_factory):
    """One analysis of the angry example (the state is copied by tests that change it)."""
    st = CorrectionStore(f"sqlite:///{tmp_path_factory.mktemp('db') / 'c.db'}")
    out = Handlers(fast_rec, st, work_dir=st.db_file.parent).analyse(str(ANGRY), 0.5)
    st.close()
    return out


def _copy_state(state):
    return json.loads(json.dumps(state))


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def _explode(*_a, **_k):
    raise AssertionError("a model ran that should not have")


# ---- analysis ------------------------------------------------------------------------------
def test_analyse_with_real_asr(recognizer, store):
    """The full path once with the real faster-whisper: transcript, figures, state."""
    h = Handlers(recognizer, store, work_dir=store.db_file.parent)
    out = h.analyse(str(SYNTH), 0.5)
    assert "_error" not in out, out.get("status")
    assert "happy" in out["transcript"].lower()
    labels = recognizer.labels
    fig = out["probs_plot"]
    assert [t.name for t in fig.data] == ["audio branch", "text branch", "fused"]
    for t in fig.data:
        assert list(t.x) == labels
        assert sum(t.y) == pytest.approx(1.0, abs=1e-6)
    label = max(labels, key=lambda k: _trace(fig, "fused").y[labels.index(k)])
    assert md_escape(label) in out["summary"]
    assert f"{max(_trace(fig, 'fused').y):.0%}" in out["summary"]
    assert "fusion: evidence-aware" in out["summary"]     # the shipped bundle's fusion mode, named
    wave_fig = out["wave_plot"]
    assert len(wave_fig.data) == 2 and len(wave_fig.data[0].x) <= plots.WAVE_POINTS
    assert len(wave_fig.layout.shapes) == 1        # the analysed span
    assert out["timeline_plot"] is None and out["long_box"] is False   # timeline hidden
    seg = out["state"]["segments"][0]
    assert seg["start"] == 0 and seg["end"] == pytest.approx(sf.info(str(SYNTH)).duration, abs=0.01)
    assert "synthetic\\_happy\\_espeak.wav" in out["status"]


def test_analyse_mp3_and_tuple_input(h, fast_rec, speech_mp3):
    out = h.analyse(str(speech_mp3), 0.5)
    assert "_error" not in out, out.get("status")
    assert out["transcript"] == ASR_TEXT
    wav, sr = sf.read(str(ANGRY), dtype="float32")
    out = h.analyse((sr, (wav * 32767).astype(np.int16)), 0.5)   # gr.Audio(type="numpy") shape
    assert "_error" not in out, out.get("status")
    assert out["state"]["duration"] == pytest.approx(wav.size / sr, abs=0.01)


def test_rerun_text_does_not_rerun_asr_or_audio(h, fast_rec, analysed, monkeypatch):
    state = _copy_state(analysed["state"])
    audio_before = list(state["segments"][0]["audio"])
    text_before = list(state["segments"][0]["text"])
    monkeypatch.setattr(fast_rec, "audio_proba", _explode)
    monkeypatch.setattr(fast_rec, "transcribe", _explode)
    monkeypatch.setattr(fast_rec.asr, "transcribe", _explode)
    out = h.rerun_text(state, "I am absolutely furious, I hate you, get out!", 0.5)
    assert "_error" not in out, out.get("status")
    seg = out["state"]["segments"][0]
    assert seg["audio"] == audio_before                       # audio branch untouched
    assert seg["text"] != text_before                         # text branch re-ran
    assert seg["asr"] == ASR_TEXT                             # what ASR heard is kept
    assert seg["transcript"] == "I am absolutely furious, I hate you, get out!"
    fig = out["probs_plot"]
    assert list(_trace(fig, "text branch").y) == pytest.approx(seg["text"])
    assert list(_trace(fig, "audio branch").y) == pytest.approx(audio_before)
    expected = fast_rec.combine(np.array(audio_before), np.array(seg["text"]), "",
                                fusion=h.fusion(0.5))
    assert list(_trace(fig, "fused").y) == pytest.approx([expected.fused[k] for k in fast_rec.labels])
    assert "furious" in out["summary"] and "Re-ran the text branch" in out["status"]

    out = h.rerun_text(out["state"], "   ", 0.5)              # cleared: audio only
    assert out["state"]["segments"][0]["text"] is None
    assert [t.name for t in out["probs_plot"].data] == ["audio branch", "fused"]
    assert list(_trace(out["probs_plot"], "fused").y) == pytest.approx(audio_before)
    assert "audio branch only" in out["status"]


def test_slider_refuses_without_running_models(h, fast_rec, analysed, monkeypatch):
    state = _copy_state(analysed["state"])
    for name in ("audio_proba", "transcribe", "text_proba"):
        monkeypatch.setattr(fast_rec, name, _explode)
    seg = state["segments"][0]
    audio_only = h.refuse(state, 1.0)["probs_plot"]
    text_only = h.refuse(state, 0.0)["probs_plot"]
    half = h.refuse(state, 0.5)
    assert list(_trace(audio_only, "fused").y) == pytest.approx(seg["audio"], abs=1e-6)
    assert list(_trace(text_only, "fused").y) == pytest.approx(seg["text"], abs=1e-6)
    assert list(_trace(half["probs_plot"], "fused").y) != pytest.approx(seg["audio"], abs=1e-6)
    assert "audio weight 0.50" in half["summary"]
    assert "transcript" not in half          # the slider never overwrites an edit in progress


def test_correction_lands_in_store(h, store, analysed, fast_rec):
    state = _copy_state(analysed["state"])
    out = h.rerun_text(state, "the kids are talking by the door", 0.3)
    out = h.correct(out["state"], "sad", "  ana  ", "sounds tired", "the kids are talking by the door", 0.3)
    assert "_error" not in out, out.get("correct_msg")
    rows = store.corrections()
    assert len(rows) == 1
    r = rows[0]
    assert out["stored_id"] == r.id
    assert r.label == "sad" and r.annotator == "ana" and r.note == "sounds tired"
    assert r.transcript_corrected == "the kids are talking by the door"
    assert r.transcript_shown == ASR_TEXT
    assert r.bundle_name == fast_rec.name and r.bundle_version == fast_rec.version
    assert set(r.prob_fused) == set(fast_rec.labels) and r.prob_text is not None
    assert r.predicted_label == max(r.prob_fused, key=r.prob_fused.get)
    assert r.start is None and r.end is None                 # the whole clip
    assert f"#{r.id}" in out["correct_msg"] and r.media_sha256[:12] in out["correct_msg"]
    assert "sad" in out["correct_msg"]

    out = h.correct(state, "none", None, "", "", 0.3)        # "none of these", blanks -> NULL
    r = store.get(out["stored_id"])
    assert r.label == "none" and r.annotator is None and r.note is None
    assert r.transcript_corrected is None
    assert r.media_sha256 == rows[0].media_sha256            # same clip, same media row


def test_html_is_escaped_on_screen_and_stored_verbatim(h, store, analysed):
    evil = "<script>alert('x')</script> <b>bold</b> [link](javascript:alert(1))"
    who = '<img src=x onerror="alert(1)">'
    state = _copy_state(analysed["state"])
    out = h.rerun_text(state, evil, 0.5)
    summary = out["summary"]
    assert "<script>" not in summary and "<b>" not in summary
    assert "&lt;script&gt;" in summary and "&lt;b&gt;bold&lt;/b&gt;" in summary
    assert "[link](javascript" not in summary and "\\[link\\]" in summary   # no live link
    out = h.correct(state, "angry", who, evil, evil, 0.5)
    assert "<img" not in out["correct_msg"] and "&lt;img" in out["correct_msg"]
    r = store.corrections()[0]
    assert r.transcript_corrected == evil and r.note == evil and r.annotator == who
    table = h.history()["history"]
    assert table.iloc[0]["annotator"] == who                  # plain-text cells, verbatim


# ---- bad input -----------------------------------------------------------------------------
def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("case, expect", [
    ("none", "upload a clip"),
    ("missing", "no longer available"),
    ("empty", "empty"),
    ("text", "not a readable audio file"),
    ("corrupt", "not a readable audio file"),
    ("silent", "silent"),
    ("short", "too short"),
])
def test_bad_audio_gives_a_message(h, tmp_path, case, expect):
    if case == "none":
        audio = None
    elif case == "missing":
        audio = str(tmp_path / "gone.wav")
    elif case == "empty":
        audio = _write(tmp_path / "empty.wav", b"")
    elif case == "text":
        audio = _write(tmp_path / "notes.mp3", b"this is not audio at all\n" * 50)
    elif case == "corrupt":
        data = ANGRY.read_bytes()
        audio = _write(tmp_path / "broken.flac", data[:64] + bytes(reversed(data[64:4000])))
    elif case == "silent":
        audio = str(tmp_path / "silence.wav")
        sf.write(audio, np.zeros(SR * 2, dtype=np.float32), SR)
    else:
        audio = str(tmp_path / "click.wav")
        sf.write(audio, tone(0.01), SR)
    out = h.analyse(audio, 0.5)
    assert expect in out["status"].lower(), out["status"]
    assert out["state"] is None and out["probs_plot"] is None
    assert "Traceback" not in out["status"]


def test_too_big_and_too_long(fast_rec, store, tmp_path):
    small = Handlers(fast_rec, store, Limits(max_file_bytes=10 * 1024))
    out = small.analyse(str(ANGRY), 0.5)
    assert "too big" in out["status"] and "10.0 kB" in out["status"] and out["state"] is None
    short = Handlers(fast_rec, store, Limits(max_duration=2.0))
    out = short.analyse(str(ANGRY), 0.5)
    assert "too long" in out["status"] and out["state"] is None
    # mp3: the duration comes from ffprobe, before decoding
    raw = tmp_path / "long.raw.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(ANGRY), str(raw)], check=True)
    out = short.analyse(str(raw), 0.5)
    assert "too long" in out["status"]


def test_bad_correction_input_gives_a_message(h, store, analysed):
    state = _copy_state(analysed["state"])
    assert "Analyse a clip first" in h.correct(None, "sad")["correct_msg"]
    assert "Pick the emotion" in h.correct(state, None)["correct_msg"]
    msg = h.correct(state, "<b>bored</b>")["correct_msg"]
    assert "unknown label" in msg and "<b>" not in msg
    assert "too long" in h.correct(state, "sad", None, "x" * 10_001)["correct_msg"]
    assert "too long" in h.correct(state, "sad", "y" * 300)["correct_msg"]
    assert "too long" in h.rerun_text(state, "z" * 10_001)["status"]
    assert "Analyse a clip first" in h.rerun_text(None, "hello")["status"]
    assert store.corrections() == []
    # the clip vanished from the server (e.g. the upload cache was cleaned)
    gone = dict(state, path=str(Path(state["path"]).with_name("deleted.flac")))
    assert "file not found" in h.correct(gone, "sad")["correct_msg"]


def test_unexpected_errors_are_logged_not_shown(h, fast_rec, analysed, monkeypatch, caplog):
    def boom(*_a, **_k):
        raise RuntimeError("secret internal detail")
    monkeypatch.setattr(fast_rec, "text_proba", boom)
    out = h.rerun_text(_copy_state(analysed["state"]), "hello there", 0.5)
    assert "Something went wrong" in out["status"] and "secret" not in out["status"]
    assert "secret internal detail" in caplog.text and "Traceback" in caplog.text


# ---- long audio ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    parts = []
    for name in ("angry_actor17.flac", "happy_actor18.flac", "sad_actor19.flac"):
        wav, sr = sf.read(str(EXAMPLES / name), dtype="float32")
        parts += [wav, np.zeros(SR, dtype=np.float32)]
    path = tmp_path_factory.mktemp("long") / "three clips.wav"
    sf.write(str(path), np.concatenate(parts), SR)
    return path


def test_long_audio_timeline_segments_and_segment_correction(fast_rec, store, long_clip):
    h = Handlers(fast_rec, store, Limits(long_audio=8.0, segment_len=5.0),
                 work_dir=store.db_file.parent)
    out = h.analyse(str(long_clip), 0.5)
    assert "_error" not in out, out.get("status")
    state = out["state"]
    segs = state["segments"]
    assert state["long"] and len(segs) >= 2
    assert all(0 <= s["start"] < s["end"] <= state["duration"] + 0.05 for s in segs)
    assert all(s["end"] - s["start"] <= 5.0 + 0.05 for s in segs)
    assert out["long_box"] is True
    timeline = out["timeline_plot"]
    bands = sum(len(t.base) for t in timeline.data)
    assert bands == len(segs)
    assert all(t.name in fast_rec.labels for t in timeline.data)
    hover = " ".join(" ".join(t.hovertext) for t in timeline.data)
    assert ASR_TEXT in hover and "%" in hover
    assert len(out["wave_plot"].layout.shapes) == len(segs)
    assert [v for _, v in out["segment_dd"]["choices"]] == list(range(len(segs)))
    assert f"{len(segs)} segments" in out["status"] and "Whole recording" in out["summary"]

    out = h.select_segment(state, 1, 0.5)
    assert out["state"]["selected"] == 1 and "Segment #2" in out["summary"]
    assert out["transcript"] == segs[1]["transcript"]
    out = h.rerun_text(out["state"], "this part is very sad, I miss her so much", 0.5)
    assert out["state"]["segments"][1]["transcript"].startswith("this part")
    assert out["state"]["segments"][0]["transcript"] == ASR_TEXT     # only the selected one
    out = h.correct(out["state"], "sad", "ana", None, "this part is very sad", 0.5)
    r = store.get(out["stored_id"])
    assert (r.start, r.end) == pytest.approx((segs[1]["start"], segs[1]["end"]))
    assert f"{segs[1]['start']:.1f}" in out["correct_msg"]
    assert "no segment" in h.select_segment(state, 99, 0.5)["status"]


# ---- history, export, API ------------------------------------------------------------------
def test_history_filter_agreement_and_export(h, store, analysed):
    state = _copy_state(analysed["state"])
    h.correct(state, "sad", "ana", None, None, 0.5)
    h.correct(state, "angry", "bob", "clearly shouting", None, 0.5)
    h.correct(state, "angry", "carla", None, None, 0.5)
    full = h.history()
    assert len(full["history"]) == 3 and "3 matching" in full["history_msg"]
    assert list(full["history"]["annotator"]) == ["carla", "bob", "ana"]   # newest first
    only_angry = h.history("angry", "")["history"]
    assert sorted(only_angry["annotator"]) == ["bob", "carla"]
    assert list(h.history("all", "BO")["history"]["annotator"]) == ["bob"]
    assert list(h.history(None, "shouting")["history"]["annotator"]) == ["bob"]
    ag = full["agreement"]
    assert len(ag) == 1 and ag.iloc[0]["majority"] == "angry" and ag.iloc[0]["agreement"] == "67%"
    assert ag.iloc[0]["annotators"] == 3

    csv_out = h.export("csv")
    text = Path(csv_out["export_file"]).read_text()
    assert text.splitlines()[0].startswith("id,") and len(text.splitlines()) == 4
    jsonl = Path(h.export("jsonl")["export_file"]).read_text().splitlines()
    assert [json.loads(l)["annotator"] for l in jsonl] == ["carla", "bob", "ana"]
    assert "cannot export" in h.export("xlsx")["history_msg"]


def test_api_predict_and_correct(h, store, fast_rec):
    res = h.api_predict(str(ANGRY), "I am so angry with you")
    json.dumps(res)                                        # JSON-serialisable
    assert res["transcript"] == "I am so angry with you"
    assert set(res["audio"]) == set(res["fused"]) == set(res["text"]) == set(fast_rec.labels)
    assert res["label"] == max(res["fused"], key=res["fused"].get)
    assert res["bundle"] == fast_rec.name
    res2 = h.api_predict(str(ANGRY), "")                  # empty transcript -> ASR
    assert res2["transcript"] == ASR_TEXT
    out = h.api_correct(str(ANGRY), "angry", "kids are talking", "api", None, 0.5, 2.0, res)
    r = store.get(out["id"])
    assert r.label == "angry" and r.predicted_label == res["label"] and (r.start, r.end) == (0.5, 2.0)
    assert out["media_sha256"] == r.media_sha256
    from emodemo.errors import EmodemoError
    with pytest.raises(EmodemoError, match="unknown label"):
        h.api_correct(str(ANGRY), "bored")


@pytest.mark.slow
def test_app_named_endpoints_via_gradio_client(fast_rec, store):
    """build_app + launch on localhost; /predict and /correct through gradio_client."""
    from gradio_client import Client, handle_file
    demo = build_app(Settings(max_file_size="5mb", preload_asr=False), fast_rec, store)
    with served(demo) as base:
        client = Client(base + "/", verbose=False)
        named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert {"/predict", "/correct"} <= set(named)
        assert not any(k.startswith("/analyse") or k.startswith("/refuse") for k in named)
        res = client.predict(handle_file(str(ANGRY)), "what a lovely surprise", api_name="/predict")
        assert res["transcript"] == "what a lovely surprise" and res["label"] in fast_rec.labels
        out = client.predict(handle_file(str(ANGRY)), "happy", "", "client", "", None, None, res,
                             api_name="/correct")
        assert store.get(out["id"]).annotator == "client"
        with pytest.raises(Exception, match="unknown label"):
            client.predict(handle_file(str(ANGRY)), "bored", "", "", "", None, None, None,
                           api_name="/correct")


# ---- pieces --------------------------------------------------------------------------------
def test_plots_and_helpers():
    wav = tone(65.0)                                   # 65 s -> envelope of WAVE_POINTS columns
    env = plots.envelope(wav)
    assert len(env["t"]) == plots.WAVE_POINTS and max(env["hi"]) == pytest.approx(0.3, abs=1e-3)
    assert env["t"][-1] <= 65.0
    assert plots.envelope(np.zeros(10, dtype=np.float32))["t"] and plots.envelope(np.array([]))["t"] == []
    labels = ["neutral", "happy"]
    fig = plots.probabilities_figure(labels, {"neutral": 0.2, "happy": 0.8}, None,
                                     {"neutral": 0.2, "happy": 0.8})
    assert [t.name for t in fig.data] == ["audio branch", "fused"]
    segs = [{"start": 0, "end": 2, "label": "happy", "fused": {"happy": 0.9, "neutral": 0.1},
             "transcript": "<i>yay</i>"},
            {"start": 2, "end": 3, "label": "neutral", "fused": {"happy": 0.1, "neutral": 0.9},
             "transcript": ""}]
    tl = plots.timeline_figure(segs, labels, selected=1)
    assert [t.name for t in tl.data] == ["neutral", "happy"]
    assert "&lt;i&gt;yay" in tl.data[1].hovertext[0] and "<i>" not in tl.data[1].hovertext[0]
    assert parse_size("50mb") == 50 * 2**20 and parse_size("1 GiB") == 2**30 and parse_size(123) == 123
    with pytest.raises(ValueError):
        parse_size("fifty")
    assert md_escape("a_b *c* <d>") == "a\\_b \\*c\\* &lt;d&gt;"
    assert {Path(p).name for p in example_files()} >= {"angry_actor17.flac",
                                                        "synthetic_happy_espeak.wav"}
    total = sum(p.stat().st_size for p in EXAMPLES.iterdir())
    assert total < 1_000_000 and (EXAMPLES / "ATTRIBUTION.md").exists()


def test_app_launcher_settings(monkeypatch, tmp_path):
    """app.py: 127.0.0.1 by default, 0.0.0.0 on a Hugging Face Space; env and CLI options."""
    import app
    for var in ("SPACE_ID", "EMODEMO_HOST", "GRADIO_SERVER_NAME", "EMODEMO_DB", "EMODEMO_PORT",
                "GRADIO_SERVER_PORT", "PORT", "EMODEMO_MAX_FILE_SIZE", "EMODEMO_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    assert app.default_host() == "127.0.0.1"
    args = app.parse_args([])
    assert (args.port, args.max_file_size, args.max_duration) == (7860, "50mb", 1800.0)
    assert Path(args.bundle) == ROOT / "models" / "default"
    monkeypatch.setenv("SPACE_ID", "someone/emodemo")
    assert app.default_host() == "0.0.0.0"
    monkeypatch.setenv("EMODEMO_MAX_FILE_SIZE", "10mb")
    monkeypatch.setenv("EMODEMO_PORT", "8123")
    args = app.parse_args(["--max-duration", "60", "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    assert (args.port, args.max_file_size, args.max_duration) == (8123, "10mb", 60.0)
    monkeypatch.setenv("EMODEMO_DB", "sqlite:///elsewhere.db")
    assert app.default_db().endswith("elsewhere.db")
    assert app.main(["--bundle", str(tmp_path / "missing")]) == 2     # clear error, no traceback
    monkeypatch.setenv("EMODEMO_PORT", "eighty")
    assert app.main([]) == 2                                          # a bad variable: same


def test_front_end_and_services_never_read_the_environment():
    """EMODEMO_* settings are read once, in app.py (emodemo.settings), and passed down: the UI
    and its services do not look at os.environ."""
    files = [*(ROOT / "emodemo" / "ui").rglob("*.py"),
             *(ROOT / "emodemo" / f for f in ("analysis.py", "jobs.py", "registry.py"))]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert "os.environ" not in text and "getenv" not in text, path
