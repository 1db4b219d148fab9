"""What the app shows, through its handlers on real audio: the one "unsure" rule in the
headline, the timeline and the JSON; each example's performed label (English, Polish, Korean);
the language, original words and English text of non-English speech (C1); a long recording's
segment on its own player; the Models table's lineage and the active model after a switch;
and the small things (no HTML entities, no stray backslashes, no CLI flags in the app)."""
from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, SR, tone

from emodemo import analysis, plots
from emodemo.ui import Handlers, Limits, example_files
from emodemo.ui import markdown as md

EXAMPLES = ROOT / "data" / "examples"
LABELS = ["neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"]



# ---- the one uncertainty rule ----------------------------------------------------------------
def test_unsure_rule_headline_timeline_and_json(h, fast_rec):
    tie = {"angry": 0.41, "fearful": 0.39, "sad": 0.2}
    clear = {"angry": 0.7, "fearful": 0.2, "sad": 0.1}
    assert analysis.margin(tie) == pytest.approx(0.02) and analysis.is_unsure(tie)
    assert analysis.call(tie) == "angry or fearful — unsure" and analysis.call(clear) == "angry"
    edge = {"a": 0.5, "b": 0.5 - analysis.UNSURE_MARGIN}          # exactly at the threshold
    assert not analysis.is_unsure(edge)
    assert "angry or 😨 fearful — unsure · 41% vs 39%" in md.headline(tie)
    assert "unsure" not in md.headline(clear) and "angry · 70%" in md.headline(clear)
    # the timeline hatches the unsure segment and names both candidates in its hover
    segs = [{"start": 0, "end": 2, "label": "angry", "fused": tie, "transcript": "",
             "call": analysis.call(tie)},
            {"start": 2, "end": 4, "label": "angry", "fused": clear, "transcript": "",
             "call": analysis.call(clear)}]
    fig = plots.timeline_figure(segs, ["angry", "fearful", "sad"])
    (bar,) = fig.data
    assert list(bar.marker.pattern.shape) == [plots.UNSURE_PATTERN, ""]
    assert "angry or fearful — unsure" in bar.hovertext[0]
    # the JSON of /predict carries margin, unsure and call, consistent with the probabilities
    out = h.api_predict(str(EXAMPLES / "angry_actor17.flac"))
    assert out["margin"] == pytest.approx(analysis.margin(out["fused"]), abs=1e-6)
    assert out["unsure"] == analysis.is_unsure(out["fused"])
    assert out["call"] == analysis.call(out["fused"])
    json.dumps(out)


# ---- examples: what was performed, in three languages ------------------------------------------
def test_examples_show_the_performed_label_next_to_the_answer(h):
    rows = {r["file"]: r for r in csv.DictReader(open(EXAMPLES / "labels.csv", encoding="utf-8"))}
    files = {p.split("/")[-1] for p in example_files()}
    assert files == set(rows)                              # every example has its truth
    assert {r["language"] for r in rows.values()} == {"en", "pl", "ko"}
    for name in ("fearful_polish_nemo_SM0.flac", "angry_korean_emotiontts_nee.flac"):
        info = sf.info(str(EXAMPLES / name))
        assert (info.samplerate, info.channels, info.format) == (SR, 1, "FLAC")
        assert info.duration < 6 and (EXAMPLES / name).stat().st_size < 100_000
    credits = (EXAMPLES / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "nEMO" in credits and "emotiontts" in credits and credits.count("CC BY-NC-SA") >= 3
    out = h.analyse(str(EXAMPLES / "fearful_polish_nemo_SM0.flac"), 0.5)
    assert "_error" not in out, out["status"]
    assert "True label (what was performed): fearful" in out["summary"]
    # the answer is shown as it is, right or wrong: the headline is the model's own call
    fused = analysis.fuse(h.rec, out["state"]["segments"][0], 0.5).fused
    assert md.headline(fused) in out["summary"]
    other = h.analyse(str(EXAMPLES / "angry_korean_emotiontts_nee.flac"), 0.5)
    assert "True label (what was performed): angry" in other["summary"]


def test_a_clip_that_is_not_an_example_has_no_true_label(h, tmp_path):
    path = tmp_path / "angry_actor17.wav"               # the name of no example file
    sf.write(str(path), tone(1.5, 300), SR)
    assert "True label" not in h.analyse(str(path), 0.5)["summary"]


# ---- language (C1) -------------------------------------------------------------------------
def test_language_original_words_and_the_english_the_model_read(fast_rec):
    p = SimpleNamespace(start=0.0, end=2.0, audio={k: 1 / 7 for k in LABELS}, text=None,
                        transcript="Nie zachowuj się jak żigolak.", warnings=[],
                        language={"code": "pl", "name": "Polish", "probability": 0.98},
                        translation="Don't act like a gigolo.")
    span = analysis.span_record(LABELS, p)
    assert span["transcript"] == span["asr"] == "Don't act like a gigolo."   # what the model read
    assert span["original"] == "Nie zachowuj się jak żigolak."
    shown = md.language(span)
    assert "Polish (0.98)" in shown and "żigolak" in shown and "gigolo" in shown
    english = analysis.span_record(LABELS, SimpleNamespace(**{**vars(p), "translation": "",
                                                              "language": None}))
    assert english["original"] is None and md.language(english) == ""


def test_refusion_keeps_the_asr_trust_until_a_person_edits(fast_rec):
    """The slider re-fuses a span as the recognizer fused it: the ASR's trust (C1), language and
    translation go back into `combine`; a transcript a person typed is read with full weight."""
    seen = []

    class Rec:
        fusion = fast_rec.fusion
        labels = LABELS

        def combine(self, p_audio, p_text, transcript, fusion=None, **extra):
            seen.append(extra)
            return SimpleNamespace(fused={k: 1 / 7 for k in LABELS})

        def text_proba(self, texts):
            return np.full((len(texts), len(LABELS)), 1 / 7)

    p = SimpleNamespace(start=0.0, end=2.0, audio={k: 1 / 7 for k in LABELS},
                        text={k: 1 / 7 for k in LABELS}, transcript="Nie wiem.", warnings=[],
                        language={"code": "pl", "name": "Polish", "probability": 0.9},
                        translation="I don't know.", asr_trust=0.38)
    span = analysis.span_record(LABELS, p)
    analysis.fuse(Rec(), span, 0.3)
    assert seen[-1]["asr_trust"] == 0.38 and seen[-1]["translation"] == "I don't know."
    assert seen[-1]["language"]["code"] == "pl"
    analysis.set_transcript(Rec(), span, "I don't know.")          # unchanged: still the ASR's
    analysis.fuse(Rec(), span, 0.3)
    assert seen[-1]["asr_trust"] == 0.38
    analysis.set_transcript(Rec(), span, "I really do not know!")  # typed by a person
    analysis.fuse(Rec(), span, 0.3)
    assert "asr_trust" not in seen[-1]
    plain = analysis.span_record(LABELS, SimpleNamespace(start=0.0, end=1.0, audio=p.audio,
                                                         text=None, transcript="", warnings=[]))
    analysis.fuse(Rec(), plain, 0.3)
    assert seen[-1] == {"duration": 1.0, "start": 0.0, "end": 1.0, "warnings": []}


# ---- long audio: a segment on its own player -------------------------------------------------
def test_a_segment_of_a_long_recording_plays_on_its_own(fast_rec, store, tmp_path):
    parts = [tone(4.0, 200), np.zeros(SR // 2, np.float32), tone(4.0, 400),
             np.zeros(SR // 2, np.float32), tone(4.0, 300)]
    path = tmp_path / "long.wav"
    sf.write(str(path), np.concatenate(parts), SR)
    h = Handlers(fast_rec, store, Limits(long_audio=8.0, segment_len=5.0), work_dir=tmp_path / "w")
    out = h.analyse(str(path), 0.5)
    seg = out["state"]["segments"][0]
    sr, samples = out["segment_audio"]
    assert sr == SR and samples.size == pytest.approx((seg["end"] - seg["start"]) * SR, abs=2)
    out = h.select_segment(out["state"], 1, 0.5)
    seg = out["state"]["segments"][1]
    sr, samples = out["segment_audio"]
    assert samples.size == pytest.approx((seg["end"] - seg["start"]) * SR, abs=2)
    # the dropdown names the call of each segment (unsure ones say so)
    assert all("s · " in label for label, _ in h.render(out["state"], 0.5, ["segment_dd"])
               ["segment_dd"]["choices"])


# ---- small things --------------------------------------------------------------------------
def test_messages_without_entities_backslashes_or_cli_flags():
    assert md.md_escape("can't") == "can't"                      # no &#x27;
    assert md.code("audit_ui/models") == "`audit_ui/models`"     # no audit\_ui
    assert md.for_the_app("too few; add corrections or lower --min-per-class") == (
        "too few; add corrections or lower “Min. corrections per class”")
    shown = md.dry_run({"guard": "angry: 1 < 3; lower --min-per-class"}, "summary")
    assert "--min-per-class" not in shown and "Min. corrections per class" in shown


@pytest.mark.slow
def test_a_bad_upload_is_said_once(h, tmp_path, monkeypatch):
    """The analysis error is in the status line; the Analyse events do not toast it too."""
    import inspect

    import gradio as gr

    from emodemo.ui.tabs import analyse as tab
    from emodemo.ui.wiring import bind
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    toasts = []
    monkeypatch.setattr(gr, "Warning", lambda msg, *a, **k: toasts.append(msg))
    status = bind(lambda p: h.analyse(p, 0.5), ["status"], toast=False)(str(bad))
    assert status.startswith("⚠️") and "not a readable audio file" in status and toasts == []
    assert bind(lambda p: h.analyse(p, 0.5), ["status"])(str(bad)) == status and len(toasts) == 1
    src = inspect.getsource(tab.wire)
    assert src.count("H.analyse,") == 1 and "toast=False" in src.split("H.rerun_text")[0]
