import numpy as np
import pytest
import torch

from emodemo import audio as A
from emodemo.errors import EmodemoError
from emodemo.speech import GE2E, SpeechEmotionModel, build_backbone, load_checked


@pytest.fixture(scope="module")
def ge2e():
    return GE2E.from_source()


@pytest.mark.slow
def test_ge2e_port_matches_resemblyzer(ge2e, speech_wav):
    """Our GE2E (torchaudio mel + torch LSTM) embeds like resemblyzer's own VoiceEncoder."""
    from resemblyzer import VoiceEncoder, preprocess_wav
    wav = preprocess_wav(A.load_audio(speech_wav), A.SAMPLE_RATE)
    ref = VoiceEncoder("cpu", verbose=False).embed_utterance(wav)
    with torch.inference_mode():
        ours = ge2e.embed_wav(wav).numpy()
        via_feats = ge2e.embed(A.ge2e_mel(wav)[None])[0].numpy()
    cos = float(ref @ ours / np.linalg.norm(ref) / np.linalg.norm(ours))
    assert cos > 0.99
    assert float(ref @ via_feats / np.linalg.norm(ref) / np.linalg.norm(via_feats)) > 0.99
    other = VoiceEncoder("cpu", verbose=False).embed_utterance(
        preprocess_wav(np.random.default_rng(0).normal(0, 0.1, 48000).astype(np.float32), 16000))
    assert float(ref @ other) < cos          # the comparison can fail: noise is not the same voice


def test_ge2e_frames_are_all_lstm_layers(ge2e):
    x = torch.rand(2, 50, 40)
    with torch.inference_mode():
        frames, lengths = ge2e.frames(x)
        last, _ = ge2e.lstm(x)
    assert frames.shape == (2, 50, 768) and lengths.tolist() == [50, 50]
    assert torch.allclose(frames[..., 512:], last, atol=1e-6)


def test_load_checked_reports_missing_and_unexpected(caplog):
    m = GE2E()
    state = {k: v.clone() for k, v in GE2E.from_source().state_dict().items()}
    state.pop("linear.bias")
    state["surprise.weight"] = torch.zeros(3)
    rep = load_checked(m, state, "test")
    assert rep.missing == ["linear.bias"] and rep.unexpected == ["surprise.weight"]
    assert "missing" in caplog.text
    with pytest.raises(EmodemoError, match="shape mismatch"):
        load_checked(GE2E(), {"linear.weight": torch.zeros(3, 3)}, "test")
    with pytest.raises(EmodemoError, match="no parameter"):
        load_checked(GE2E(), {"foo": torch.zeros(1)}, "test")


def test_head_handles_variable_length_without_truncation(ge2e):
    torch.manual_seed(0)
    model = SpeechEmotionModel(ge2e, 7).eval()
    a, b = A.ge2e_mel(np.random.randn(16000).astype(np.float32) * 0.1), A.ge2e_mel(np.random.randn(40000).astype(np.float32) * 0.1)
    with torch.inference_mode():
        single = torch.cat([model(a[None]), model(b[None])])
        batch = torch.zeros(2, b.shape[0], 40)
        batch[0, : a.shape[0]], batch[1] = a, b
        padded = model(batch, torch.tensor([a.shape[0], b.shape[0]]))
        long = model(A.ge2e_mel(np.random.randn(16000 * 90).astype(np.float32) * 0.1)[None])
    assert torch.allclose(single, padded, atol=1e-4)   # padding does not leak into the result
    assert long.shape == (1, 7) and torch.isfinite(long).all()


def test_backbone_registry():
    assert isinstance(build_backbone("ge2e", pretrained=False), GE2E)
    assert build_backbone("resnet34", pretrained=False).feature == "fbank80"
    with pytest.raises(EmodemoError, match="WeSpeaker model directory"):
        build_backbone("resnet34")
    with pytest.raises(EmodemoError, match="unknown speech backbone"):
        build_backbone("wav2vec9")


def test_pooled_head_single_and_normalised_paths():
    from emodemo.errors import EmodemoError
    from emodemo.speech import PooledHead, masked_stats
    torch.manual_seed(0)
    head = PooledHead(6, 4).eval()
    frames, lengths = torch.randn(3, 10, 6), torch.tensor([10, 7, 4])
    with torch.inference_mode():
        assert torch.allclose(head(frames, lengths), head.pooled_logits(masked_stats(frames, lengths)))
    with pytest.raises(EmodemoError, match="no per-recording normalisation"):
        head.normalised_logits(masked_stats(frames, lengths))
    head.has_norm.fill_(True)
    stats = masked_stats(frames, lengths)
    with torch.inference_mode():
        assert torch.allclose(head.normalised_logits(stats), head.normalised_logits(stats + 3.0), atol=1e-5)
