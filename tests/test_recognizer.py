import numpy as np
import pytest

from emodemo.errors import SettingsError

import emodemo
from conftest import SR, tone


def _is_dist(d, labels):
    return list(d) == labels and abs(sum(d.values()) - 1.0) < 1e-4 and min(d.values()) >= 0


@pytest.mark.slow
def test_predict_with_asr(recognizer, speech_wav):
    p = recognizer.predict(str(speech_wav))
    labels = recognizer.labels
    assert labels == ["neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    assert "happy" in p.transcript.lower()
    assert p.language["code"] == "en" and p.translation == "" and 0.8 < p.asr_trust <= 1.0
    assert 0.0 <= p.margin <= p.confidence
    for d in (p.audio, p.text, p.fused):
        assert _is_dist(d, labels)
    assert p.label == max(p.fused, key=p.fused.get) and p.confidence == p.fused[p.label]
    assert p.text["happy"] == max(p.text.values())     # "so happy ... wonderful news"
    assert p.duration == pytest.approx(p.end, abs=1e-6) and 2.0 < p.duration < 6.0


def test_given_transcript_skips_asr_and_empty_means_audio_only(recognizer, speech_wav, monkeypatch):
    monkeypatch.setattr(recognizer, "recognize", lambda wav: pytest.fail("ASR must not run"))
    angry = recognizer.predict(speech_wav, transcript="I hate you, get out of my house, you disgust me")
    assert angry.transcript.startswith("I hate you") and angry.text is not None
    assert max(angry.text, key=angry.text.get) in ("angry", "disgust")
    audio_only = recognizer.predict(speech_wav, transcript="")
    assert audio_only.text is None and audio_only.transcript == ""
    assert audio_only.fused == pytest.approx(audio_only.audio)
    assert angry.audio == pytest.approx(audio_only.audio)       # text never changes the audio branch


def test_waveform_pairs_and_mp3(recognizer, speech_wav, speech_mp3):
    import soundfile as sf
    wav, sr = sf.read(str(speech_wav), dtype="float32")
    a = recognizer.predict((wav, sr), transcript="")
    b = recognizer.predict(str(speech_mp3), transcript="")
    assert a.audio == pytest.approx(recognizer.predict(speech_wav, transcript="").audio)
    assert max(abs(a.audio[k] - b.audio[k]) for k in a.audio) < 0.15   # lossy codec, same clip


def test_predict_text(recognizer):
    out = recognizer.predict_text(["I am so happy for you, congratulations!",
                                   "I miss her so much, I cried all night",
                                   "This makes me furious, I hate it"])
    assert [max(d, key=d.get) for d in out] == ["happy", "sad", "angry"]


def test_silence_warns_and_skips_asr(recognizer, monkeypatch):
    monkeypatch.setattr(recognizer, "recognize", lambda wav: pytest.fail("no ASR on silence"))
    p = recognizer.predict((np.zeros(SR * 2, np.float32), SR))
    assert p.text is None and p.warnings and "silent" in p.warnings[0]


@pytest.mark.parametrize("bad", [(np.zeros(0, np.float32), SR), (np.zeros(5, np.float32), SR), "missing.wav"])
def test_bad_input_raises_audio_error(recognizer, bad):
    with pytest.raises(emodemo.AudioError):
        recognizer.predict(bad, transcript="")


def test_long_audio_segments(recognizer):
    wav = np.concatenate([tone(6.0, 200), np.zeros(SR, np.float32), tone(6.0, 300)])
    preds = recognizer.predict_segments(wav, transcribe=False, max_len=5.0)
    assert len(preds) >= 2 and all(p.end - p.start <= 5.0 + 1e-6 for p in preds)
    assert [p.start for p in preds] == sorted(p.start for p in preds)


@pytest.mark.slow
def test_batched_audio_branch_matches_one_by_one(recognizer, speech_wav, tmp_path):
    import soundfile as sf
    rng = np.random.default_rng(0)
    speech = emodemo.audio.load_audio(speech_wav)
    clips = [speech, speech[: SR], tone(2.3, 180), tone(0.7, 400) + 0.01 * rng.standard_normal(int(0.7 * SR)),
             speech[SR // 2:]]
    one = np.stack([recognizer.audio_proba(c) for c in clips])
    batch = recognizer.audio_proba_batch(clips)
    assert batch.shape == one.shape and np.abs(batch - one).max() < 1e-4
    # predict_many: input order, bad files reported in place, audio branch batched
    paths = []
    for k, c in enumerate(clips):
        paths.append(str(tmp_path / f"c{k}.wav"))
        sf.write(paths[-1], c.astype(np.float32), SR)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    paths.insert(2, str(tmp_path / "bad.wav"))
    out = list(recognizer.predict_many(paths, transcript="", batch_size=2))
    assert [i for i, _ in out] == list(range(len(paths)))
    assert isinstance(out[2][1], emodemo.AudioError)
    preds = [p for _, p in out if not isinstance(p, Exception)]
    # the clips went through 16-bit WAV files: equal up to quantisation (~1e-4 in probability on
    # speech; the 180-Hz tone's empty mel bins show the quantisation noise: 1.4e-3 with v8)
    assert np.abs(np.array([[p.audio[l] for l in recognizer.labels] for p in preds]) - one).max() < 3e-3
    assert all(p.text is None and p.end == pytest.approx(p.duration) for p in preds)


def test_threads_given_or_from_the_environment(recognizer, monkeypatch):
    """torch threads: `threads`, else $EMODEMO_TORCH_THREADS (a bad value is an error naming it,
    as for $EMODEMO_ASR_THREADS), else 1;
    the ASR threads the entry point passes reach the ASR when it loads."""
    import torch
    from emodemo import recognizer as R
    n = torch.get_num_threads()
    parts = (recognizer.config, recognizer.speech, recognizer.text_model)
    try:
        monkeypatch.delenv("EMODEMO_TORCH_THREADS", raising=False)
        assert R.EmotionRecognizer(*parts).threads == 1
        monkeypatch.setenv("EMODEMO_TORCH_THREADS", "2")
        torch.set_num_threads(1)
        assert R.EmotionRecognizer(*parts).threads == 2 and torch.get_num_threads() == 1  # entry points set it
        assert R.EmotionRecognizer(*parts, threads=1).threads == 1
        monkeypatch.setenv("EMODEMO_TORCH_THREADS", "two")
        with pytest.raises(SettingsError, match="EMODEMO_TORCH_THREADS='two' is not a number"):
            R.EmotionRecognizer(*parts)
        assert R.EmotionRecognizer(*parts, threads=1).threads == 1      # given: the variable is not read
        monkeypatch.delenv("EMODEMO_TORCH_THREADS")
        seen = []
        monkeypatch.setattr(R, "load_asr", lambda cfg, threads=None: seen.append(threads) or "asr")
        assert R.EmotionRecognizer(*parts, asr_threads=3).asr == "asr" and seen == [3]
    finally:
        torch.set_num_threads(n)


def test_a_backend_with_only_transcribe_still_works(speech_wav):
    """An ASR backend written before Transcript (only `transcribe(wav) -> str`) is used as is:
    its text, the language unknown, full trust (the fusion the bundle was fitted with)."""
    class OldASR:
        def transcribe(self, wav):
            return "I hate you, get out of my house"
    rec = emodemo.load_recognizer(asr=OldASR())
    p = rec.predict(speech_wav)
    assert p.transcript == "I hate you, get out of my house" and p.asr_trust == 1.0
    assert p.language is None and p.translation == "" and p.text is not None
    vec = lambda d: np.array([d[k] for k in rec.labels])  # noqa: E731
    assert np.allclose(vec(p.fused), rec.fusion(vec(p.audio), vec(p.text)))


from conftest import ROOT  # noqa: E402

EXAMPLES = sorted(str(p) for p in (ROOT / "data" / "examples").glob("*_actor*.flac"))


def test_normalize_batch_reads_clips_relative_to_their_setting(recognizer):
    from emodemo.errors import EmodemoError
    assert recognizer.can_normalize and len(EXAMPLES) == 4
    single = [p for _, p in recognizer.predict_many(EXAMPLES, transcript="")]
    batch = [p for _, p in recognizer.predict_many(EXAMPLES, transcript="", normalize="batch")]
    labels = recognizer.labels
    for p in batch:
        assert _is_dist(p.audio, labels) and _is_dist(p.fused, labels)
    assert max(abs(a.audio[l] - b.audio[l]) for a, b in zip(single, batch) for l in labels) > 0.02
    # the setting is the set of clips, not their order
    again = [p for _, p in recognizer.predict_many(EXAMPLES[::-1], transcript="", normalize="batch")][::-1]
    for a, b in zip(batch, again):
        assert a.audio == pytest.approx(b.audio, abs=1e-5)
    # a single clip keeps the single-clip path
    (_, one), = recognizer.predict_many(EXAMPLES[:1], transcript="", normalize="batch")
    assert one.audio == pytest.approx(single[0].audio, abs=1e-6)
    with pytest.raises(EmodemoError, match="normalize"):
        list(recognizer.predict_many(EXAMPLES, transcript="", normalize="speaker"))


@pytest.mark.slow
def test_normalize_batch_serves_the_bundles_blend_of_both_heads(recognizer, monkeypatch):
    """speech.normalize.blend (v9: 0.5) mixes the single-clip head's probabilities into the
    normalised path: blend 1 is the single-clip answer, blend 0 the normalised head alone, and
    the shipped value lies between them."""
    rule = recognizer.config.speech.normalize
    assert rule["blend"] == 0.5
    load_audio = emodemo.audio.load_audio
    single = np.array([recognizer.audio_proba(load_audio(p)) for p in EXAMPLES])
    waves = [load_audio(p) for p in EXAMPLES]
    mixed = recognizer.audio_proba_normalised(waves)
    monkeypatch.setitem(rule, "blend", 1.0)
    assert np.allclose(recognizer.audio_proba_normalised(waves), single, atol=1e-5)
    monkeypatch.setitem(rule, "blend", 0.0)
    alone = recognizer.audio_proba_normalised(waves)
    assert np.allclose(mixed, 0.5 * alone + 0.5 * single, atol=1e-5)
    assert np.abs(alone - single).max() > 0.02
