"""Long recordings behave like the clips inside them: sentences joined with short pauses come back
as one segment each, quiet ones included, and each segment gets its transcript."""
import numpy as np
import pytest

from conftest import espeak
from emodemo import audio as A
from emodemo.asr import collapse_repeats, trustworthy

SR = A.SAMPLE_RATE
SENTENCES = ["I could not believe what she told me.", "Please close the door when you leave.",
             "We will meet again at the station tomorrow.", "Nobody answered the phone all day.",
             "The children were playing in the garden.", "My brother bought a new car last week."]
KEYWORDS = ["believe", "door", "station", "phone", "garden", "car"]


def speech_span(wav: np.ndarray) -> tuple[float, float]:
    """First and last 10-ms frame within 40 dB of the loudest, in seconds."""
    e = A.frame_energy_db(wav, SR // 100)
    on = np.flatnonzero(e > e.max() - 40)
    return on[0] / 100, (on[-1] + 1) / 100


def joined(tmp_path, gains_db=None, pause=0.5, sentences=SENTENCES):
    """espeak-ng sentences joined with `pause` s of silence; returns the audio and where each
    sentence's speech starts and ends."""
    parts, spans, t = [], [], 0.0
    for k, text in enumerate(sentences):
        w = A.load_audio(espeak(text, tmp_path / f"s{k}.wav"))
        w = w * 10 ** ((gains_db[k] if gains_db else 0.0) / 20)
        a, b = speech_span(w)
        spans.append((t + a, t + b))
        parts += [w.astype(np.float32), np.zeros(int(pause * SR), np.float32)]
        t += (w.size + int(pause * SR)) / SR
    return np.concatenate(parts), spans


def assert_aligned(segs, spans):
    assert len(segs) == len(spans)
    for k, (s, (a, b)) in enumerate(zip(segs, spans)):
        assert s.start <= a + 0.02 and s.end >= b - 0.02, (k, s, a, b)         # the whole sentence ...
        if k + 1 < len(spans):
            assert s.end < spans[k + 1][0], (k, s, spans[k + 1])              # ... and nothing of the next
        if k:
            assert s.start > spans[k - 1][1], (k, s, spans[k - 1])


def test_joined_sentences_come_back_one_segment_each(tmp_path):
    wav, spans = joined(tmp_path)
    assert wav.size / SR > 15
    assert_aligned(A.segment(wav, max_len=10.0), spans)


def test_a_quiet_sentence_next_to_loud_ones_is_still_speech(tmp_path):
    """Neutral speech 18 dB quieter than its neighbours keeps its own segment (the old rule,
    40 dB below the loudest frame of the file, merged or dropped it)."""
    wav, spans = joined(tmp_path, gains_db=[0, -18, 0, -18, 0, 0])
    assert_aligned(A.segment(wav, max_len=10.0), spans)


def test_short_sentence_joins_a_neighbour_and_long_speech_is_cut(tmp_path):
    wav, spans = joined(tmp_path, sentences=["Yes.", SENTENCES[0], SENTENCES[1], SENTENCES[2], SENTENCES[3]])
    segs = A.segment(wav, max_len=10.0, min_len=1.0)
    assert len(segs) == 4 and segs[0].start <= spans[0][0] + 0.02 and segs[0].end >= spans[1][1] - 0.02
    # 25 s of speech without a pause is cut into pieces of at most max_len
    long, _ = joined(tmp_path, pause=0.0, sentences=SENTENCES * 2)
    segs = A.segment(long, max_len=8.0)
    assert len(segs) >= 3 and all(s.end - s.start <= 8.0 + 1e-6 for s in segs)
    assert segs[0].start < 0.2 and segs[-1].end > long.size / SR - 1.0


def test_repeated_phrase_is_kept_once():
    """Whisper looping on a short zero-padded window repeats the sentence until the token limit;
    the trust filter keeps the sentence once instead of dropping it for its compression ratio."""
    looped = "Dogs are sitting by the door. " * 3 + "Dogs are sitting"
    assert not trustworthy(looped.strip(), -0.2, 0.02)
    assert collapse_repeats(looped.strip()) == "Dogs are sitting by the door."
    assert trustworthy(collapse_repeats(looped.strip()), -0.2, 0.02)
    assert collapse_repeats("I was so happy to see you today") == "I was so happy to see you today"
    assert collapse_repeats("1, 1, " * 40) == ("1, 1, " * 40)         # too short a unit: unchanged
    assert not trustworthy(collapse_repeats("1, 1, " * 40), -0.2, 0.1)


@pytest.mark.slow
def test_each_segment_of_a_joined_recording_gets_its_transcript(tmp_path, recognizer):
    wav, spans = joined(tmp_path, gains_db=[0, -18, 0, -12, 0, 0])
    preds = recognizer.predict_segments((wav, SR), max_len=10.0)
    assert len(preds) == len(SENTENCES)
    for p, word, (a, b) in zip(preds, KEYWORDS, spans):
        assert p.start <= a + 0.02 and p.end >= b - 0.02
        assert word in p.transcript.lower(), (word, p.transcript)


def test_trim_silence_and_the_trimmed_front_end(tmp_path):
    """A model with `trim` pools over the voice only: the same sentence with 1.5 s of silence
    around it gives (almost) the same features and the same audio-branch probabilities."""
    import torch
    from emodemo.bundle import LABELS, build_speech
    wav = A.load_audio(espeak(SENTENCES[0], tmp_path / "s.wav"))
    a, b = speech_span(wav)
    quiet = np.zeros(int(1.5 * SR), np.float32)
    padded = np.concatenate([quiet, wav, quiet])
    cut = A.trim_silence(padded)
    assert abs(cut.size / SR - (b - a + 0.2)) < 0.05                 # speech + 0.1 s each side
    assert np.array_equal(A.trim_silence(np.zeros(SR, np.float32)), np.zeros(SR, np.float32))
    assert torch.equal(A.features("trimmed:ge2e_mel", padded), A.features("ge2e_mel", cut))
    torch.manual_seed(0)
    model = build_speech({"labels": LABELS, "speech": {"backbone": "ge2e", "trim": True}}).eval()
    assert model.feature == "trimmed:ge2e_mel"
    with torch.inference_mode():
        p = [torch.softmax(model(A.features(model.feature, w)[None]), -1)[0] for w in (padded, wav)]
        model.trim = False
        untrimmed = torch.softmax(model(A.features(model.feature, padded)[None]), -1)[0]
    assert torch.allclose(p[0], p[1], atol=0.02)
    assert (untrimmed - p[1]).abs().max() > (p[0] - p[1]).abs().max()


@pytest.mark.slow
def test_a_long_recording_is_normalised_by_itself_when_it_has_enough_speech(tmp_path, recognizer, monkeypatch):
    wav, spans = joined(tmp_path)
    speech = recognizer.config.speech
    monkeypatch.setattr(speech, "normalize", {"min_segments": len(SENTENCES) + 1, "min_seconds": 0})
    plain = recognizer.predict_segments((wav, SR), transcribe=False)
    monkeypatch.setattr(speech, "normalize", {"min_segments": len(SENTENCES), "min_seconds": 0})
    normed = recognizer.predict_segments((wav, SR), transcribe=False)
    assert [(p.start, p.end) for p in plain] == [(p.start, p.end) for p in normed] and len(normed) == len(SENTENCES)
    labels = recognizer.labels
    assert max(abs(a.audio[l] - b.audio[l]) for a, b in zip(plain, normed) for l in labels) > 0.02
    assert all(abs(sum(p.audio.values()) - 1) < 1e-4 for p in normed)
    # too little speech for the rule: the single-clip path, segment by segment
    monkeypatch.setattr(speech, "normalize", {"min_segments": 2, "min_seconds": 1000})
    short = recognizer.predict_segments((wav, SR), transcribe=False)
    for a, b in zip(short, plain):
        assert a.audio == pytest.approx(b.audio, abs=1e-6)
