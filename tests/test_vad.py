"""Speech found by the VAD (emodemo/vad.py), not by loudness: espeak-ng sentences at known
positions, alone and joined, clean and in white / pink noise, through audio.trim_silence,
audio.segment, the `trimmed-vad:` front end, a bundle with speech.trim "vad" and predict_segments."""
import json
import shutil
import threading

import numpy as np
import pytest

from conftest import ROOT, espeak
from emodemo import audio as A, vad
from emodemo.errors import EmodemoError

SR = A.SAMPLE_RATE
SENTENCES = ["I could not believe what she told me.", "Please close the door when you leave.",
             "We will meet again at the station tomorrow.", "Nobody answered the phone all day.",
             "The children were playing in the garden.", "My brother bought a new car last week."]


def true_span(wav: np.ndarray) -> tuple[float, float]:
    """First and last 10-ms frame of a clean sentence within 40 dB of its loudest, in seconds."""
    e = A.frame_energy_db(wav, SR // 100)
    on = np.flatnonzero(e > e.max() - 40)
    return on[0] / 100, (on[-1] + 1) / 100


def noisy(wav: np.ndarray, span, snr_db: float, pink: bool = False, seed: int = 0) -> np.ndarray:
    """`wav` + white (or 1/f pink) noise `snr_db` below the speech power inside `span`."""
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(wav.size)
    if pink:
        spec = np.fft.rfft(n)
        spec[1:] /= np.sqrt(np.arange(1, spec.size))
        spec[0] = 0
        n = np.fft.irfft(spec, wav.size)
    power = np.mean(wav[int(span[0] * SR):int(span[1] * SR)].astype(np.float64) ** 2)
    return (wav + n / n.std() * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32)


@pytest.fixture(scope="module")
def sentence(tmp_path_factory):
    """One sentence with 1.5 s of silence before and 1.0 s after, and where its speech is."""
    w = A.load_audio(espeak(SENTENCES[0], tmp_path_factory.mktemp("vad") / "s.wav"))
    a, b = true_span(w)
    return np.concatenate([np.zeros(int(1.5 * SR), np.float32), w, np.zeros(SR, np.float32)]), (1.5 + a, 1.5 + b)


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """Six sentences joined with 0.6-s pauses after 1 s of silence, and each one's speech span."""
    d = tmp_path_factory.mktemp("joined")
    parts, spans, t = [np.zeros(SR, np.float32)], [], 1.0
    for k, text in enumerate(SENTENCES):
        w = A.load_audio(espeak(text, d / f"s{k}.wav"))
        a, b = true_span(w)
        spans.append((t + a, t + b))
        parts += [w, np.zeros(int(0.6 * SR), np.float32)]
        t += w.size / SR + 0.6
    return np.concatenate(parts), spans


def test_vad_finds_a_sentence_and_nothing_in_silence_tones_or_noise(sentence):
    wav, (a, b) = sentence
    spans = vad.speech_spans(wav, vad.VadOptions(pad=0.0))
    assert len(spans) == 1
    assert abs(spans[0][0] - a) < 0.15 and abs(spans[0][1] - b) < 0.15, (spans, a, b)
    assert vad.speech_spans(wav) == vad.speech_spans(wav.copy())          # deterministic
    padded = vad.speech_spans(wav)                                        # default pad 0.1 s
    assert padded[0][0] == pytest.approx(spans[0][0] - 0.1, abs=1e-3)
    t = np.arange(3 * SR) / SR
    assert vad.speech_spans(np.zeros(3 * SR, np.float32)) == []
    assert vad.speech_spans((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)) == []
    assert vad.speech_spans(np.random.default_rng(0).normal(0, 0.05, 3 * SR).astype(np.float32)) == []
    assert vad.speech_spans(np.zeros(0, np.float32)) == []
    probs = vad.speech_probabilities(wav)
    assert probs.size == -(-wav.size // vad.VAD_FRAME)
    assert probs[: int(1.4 * SR) // vad.VAD_FRAME].max() < 0.2 and np.median(probs[int(a * SR) // 512:int(b * SR) // 512]) > 0.8


def test_long_audio_is_scored_a_chunk_at_a_time_with_the_same_spans(joined, monkeypatch):
    """Spans across chunk boundaries are joined again: 3.2-s chunks cut every sentence of the
    joined recording, and the spans stay those of one pass (as the 60-s chunks of real use)."""
    wav, spans = joined
    before = wav.copy()
    whole = vad.speech_spans(wav, vad.VadOptions(pad=0.0))
    assert np.array_equal(wav, before)                                       # the caller's samples untouched
    assert len(whole) == len(spans) and all(abs(a - t) < 0.15 for (a, _), (t, _) in zip(whole, spans))
    monkeypatch.setattr(vad, "CHUNK_FRAMES", 100)
    chunked = vad.speech_spans(wav, vad.VadOptions(pad=0.0))
    assert len(chunked) == len(whole)
    assert np.abs(np.array(chunked) - np.array(whole)).max() < 0.1, (chunked, whole)


def test_vad_refuses_what_it_cannot_read():
    with pytest.raises(EmodemoError, match="mono"):
        vad.speech_spans(np.zeros((2, SR), np.float32))
    with pytest.raises(EmodemoError, match="threshold"):
        vad.VadOptions(threshold=1.5)


def test_one_model_shared_by_threads_gives_the_same_spans(sentence):
    wav, _ = sentence
    expected = vad.speech_spans(wav)
    results, models = [None] * 4, [None] * 4

    def work(i):
        models[i] = vad.vad_model()
        results[i] = vad.speech_spans(noisy(wav, sentence[1], 20, seed=i) if i % 2 else wav)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(m is models[0] for m in models)
    assert results[0] == results[2] == expected
    assert results[1] == vad.speech_spans(noisy(wav, sentence[1], 20, seed=1))


@pytest.mark.parametrize("snr,pink", [(20, False), (5, False), (0, False), (5, True)])
def test_vad_trimming_finds_the_sentence_in_noise_where_energy_keeps_the_noise(sentence, snr, pink):
    wav, (a, b) = sentence
    y = noisy(wav, (a, b), snr, pink)
    cut = A.trim_silence(y, pad=0.0, method="vad")
    start = (cut.__array_interface__["data"][0] - y.__array_interface__["data"][0]) // 4 / SR
    assert abs(start - a) < 0.3 and abs(start + cut.size / SR - b) < 0.3, (start, cut.size / SR, a, b)
    assert A.trim_silence(y, pad=0.0, method="energy").size > 0.95 * y.size     # the noise is "speech"
    assert A.trim_silence(wav, pad=0.0, method="energy").size < 0.6 * wav.size   # ... silence is not


def test_trim_methods_and_the_vad_front_end(sentence):
    import torch
    from emodemo.bundle import LABELS, build_speech
    wav, span = sentence
    y = noisy(wav, span, 10)
    assert torch.equal(A.features("trimmed-vad:ge2e_mel", y), A.features("ge2e_mel", A.trim_silence(y, method="vad")))
    assert A.features("trimmed-vad:ge2e_mel", y).shape[0] < 0.7 * A.features("trimmed:ge2e_mel", y).shape[0]
    silence = np.zeros(SR, np.float32)
    assert A.trim_silence(silence, method="vad") is silence                # nothing heard: the clip stays whole
    for trim, feature in ((True, "trimmed:"), ("energy", "trimmed:"), ("vad", "trimmed-vad:"), (False, "")):
        model = build_speech({"labels": LABELS, "speech": {"backbone": "ge2e", "trim": trim}}, pretrained=False)
        assert model.feature == feature + "ge2e_mel"
    from emodemo.training.recipe import Recipe
    assert Recipe.coerce({"speech": {"trim": "vad"}}).speech.trim == "vad"     # a recipe may train with it
    with pytest.raises(EmodemoError, match="speech.trim"):
        build_speech({"labels": LABELS, "speech": {"backbone": "ge2e", "trim": "loudness"}}, pretrained=False)
    with pytest.raises(EmodemoError, match="trimming method"):
        A.trim_silence(wav, method="loudness")


def aligned(segs, spans, tol=0.05):
    assert len(segs) == len(spans), [(s.start, s.end) for s in segs]
    for k, (s, (a, b)) in enumerate(zip(segs, spans)):
        assert s.start <= a + tol and s.end >= b - tol, (k, s, a, b)
        assert k + 1 == len(spans) or s.end < spans[k + 1][0], (k, s, spans[k + 1])
        assert k == 0 or s.start > spans[k - 1][1], (k, s, spans[k - 1])


@pytest.mark.parametrize("snr,pink", [(None, False), (10, True), (5, True), (5, False), (0, False)])
def test_six_sentences_in_noise_come_back_as_six_segments(joined, snr, pink):
    wav, spans = joined
    y = wav if snr is None else noisy(wav, (spans[0][0], spans[-1][1]), snr, pink)
    aligned(A.segment(y, max_len=10.0), spans)
    if snr is None:
        aligned(A.segment(y, max_len=10.0, method="energy"), spans)
    else:        # the loudness rule, in the same noise, merges sentences or runs into the noise
        with pytest.raises(AssertionError):
            aligned(A.segment(y, max_len=10.0, method="energy"), spans, tol=0.3)


def test_long_speech_is_split_at_its_longest_pause_and_continuous_speech_is_cut(joined):
    wav, spans = joined
    segs = A.segment(wav, max_len=10.0, min_pause=1.0)         # no pause is a sentence break now
    assert len(segs) >= 3 and all(s.end - s.start <= 10.0 + 1e-6 for s in segs)
    cuts = [s.end for s in segs[:-1]]
    pauses = [(spans[k][1], spans[k + 1][0]) for k in range(len(spans) - 1)]
    assert all(any(a - 0.15 <= c <= b + 0.15 for a, b in pauses) for c in cuts), (cuts, pauses)
    nonstop = np.concatenate([wav[int(a * SR):int(b * SR)] for a, b in spans] * 2)
    segs = A.segment(nonstop, max_len=8.0)
    assert len(segs) >= 4 and all(s.end - s.start <= 8.0 + 1e-6 for s in segs)
    assert segs[0].start < 0.2 and segs[-1].end > nonstop.size / SR - 0.5


def test_grouping_rules_on_spans():
    spans = [(0.0, 2.0), (2.1, 4.0), (5.0, 5.3), (5.5, 9.0), (12.0, 15.0)]
    assert vad.group(spans, 0.3) == [[(0.0, 2.0), (2.1, 4.0)], [(5.0, 5.3), (5.5, 9.0)], [(12.0, 15.0)]]
    # a 0.3-s piece joins the neighbour across the shorter gap (0.2 s to 5.5, not 1.0 s back to 4.0) ...
    assert vad.join_short([(0.0, 4.0), (5.0, 5.3), (5.5, 9.0)], 1.0, 10.0) == [(0.0, 4.0), (5.0, 9.0)]
    # ... unless the joined segment would be too long
    assert vad.join_short([(0.0, 4.0), (4.5, 4.8)], 1.0, 4.5) == [(0.0, 4.0), (4.5, 4.8)]
    run = [(0.0, 3.0), (3.1, 6.0), (6.8, 9.0), (9.2, 14.0)]    # longest pause: 6.0 -> 6.8
    assert vad.split_long([run], 10.0, 1.0, cut=lambda lo, hi: lo) == [(0.0, 6.0), (6.8, 14.0)]
    assert vad.split_long([[(0.0, 25.0)]], 10.0, 1.0, cut=lambda lo, hi: (lo + hi) / 2) == \
        [(0.0, 5.5), (5.5, 11.0), (11.0, 16.5), (16.5, 25.0)]


def test_tones_fall_back_to_the_loudness_rule_and_bad_methods_are_refused():
    t = np.arange(8 * SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    wav = np.concatenate([tone, np.zeros(2 * SR, np.float32)] * 3)
    assert A.segment(wav) == A.segment(wav, method="energy") and len(A.segment(wav)) == 3
    with pytest.raises(EmodemoError, match="segmentation method"):
        A.segment(wav, method="loudness")


@pytest.mark.slow
def test_a_noisy_recording_through_predict_segments(joined, recognizer):
    """The recognizer's long-audio path: six sentences in pink noise, one prediction each."""
    wav, spans = joined
    preds = recognizer.predict_segments((noisy(wav, (spans[0][0], spans[-1][1]), 10, pink=True), SR),
                                        transcribe=False, max_len=10.0)
    assert len(preds) == len(spans)
    for p, (a, b) in zip(preds, spans):
        assert p.start <= a + 0.05 and p.end >= b - 0.05


@pytest.mark.slow
def test_a_bundle_with_vad_trimming_hears_the_voice_not_the_room(tmp_path, sentence):
    """The shipped bundle with speech.trim "vad": the sentence with 2.5 s of a noisy room around
    it gives (almost) the audio-branch probabilities of the same noisy sentence cut tight; with
    energy trimming the noise around it is pooled too and moves them further."""
    from emodemo import load_recognizer
    wav, (a, b) = sentence
    room = noisy(wav, (a, b), 10, pink=True)
    tight = room[int((a - 0.1) * SR):int((b + 0.1) * SR)]
    out = {}
    for trim in ("vad", True):
        bundle = tmp_path / str(trim)
        shutil.copytree(ROOT / "models" / "default", bundle)
        cfg = json.loads((bundle / "config.json").read_text())
        cfg["speech"]["trim"] = trim
        (bundle / "config.json").write_text(json.dumps(cfg))
        rec = load_recognizer(bundle)
        out[trim] = np.abs(rec.audio_proba(room) - rec.audio_proba(tight)).sum()
    assert out["vad"] < 0.6 * out[True], out           # measured 0.19 vs 0.39 (L1 distance)


def test_benchmark_noise_has_the_asked_snr_and_colour():
    """benchmarks/bench_vad.py's noisy clips are what its README says they are."""
    import sys
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_vad
    rng = np.random.default_rng(0)
    t = np.arange(2 * SR) / SR
    wav = (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    for kind in ("white", "pink"):
        y = bench_vad.add_noise(wav, [(0.0, 2.0)], 10, kind, rng)
        snr = 10 * np.log10(np.mean(wav.astype(np.float64) ** 2) / np.mean((y - wav).astype(np.float64) ** 2))
        assert snr == pytest.approx(10, abs=0.1)
    spec = np.abs(np.fft.rfft(bench_vad.noise("pink", 4 * SR, rng))) ** 2
    f = np.fft.rfftfreq(4 * SR, 1 / SR)
    low, high = spec[(f > 100) & (f < 200)].mean(), spec[(f > 4000) & (f < 8000)].mean()
    assert 10 * np.log10(low / high) == pytest.approx(10 * np.log10(6000 / 150), abs=2)   # 1/f
    segs = [A.Segment(0.9, 3.2), A.Segment(3.5, 6.0)]
    assert bench_vad.aligned(segs, [(1.0, 3.0), (3.6, 5.9)], 0.05)
    assert not bench_vad.aligned(segs, [(1.0, 3.0), (3.1, 5.9)], 0.05)      # the first holds some of the second
    assert bench_vad.f1(bench_vad.frames([(0, 1)], 2), bench_vad.frames([(0.5, 1.5)], 2)) == pytest.approx(0.5)
