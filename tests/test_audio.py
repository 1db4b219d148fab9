import numpy as np
import pytest
import soundfile as sf
import torch

from emodemo import audio as A
from emodemo.errors import AudioError
from conftest import SR, ffmpeg_convert, tone


def test_decode_formats_round_trip(tmp_path):
    x = tone(1.0)
    for suffix, kw in ((".wav", {}), (".flac", {}), (".ogg", {"format": "OGG", "subtype": "VORBIS"})):
        p = tmp_path / f"t{suffix}"
        sf.write(str(p), x, SR, **kw)
        y = A.load_audio(p)
        assert abs(y.size - x.size) < 200, suffix
        assert np.corrcoef(x[: y.size][1000:-1000], y[: x.size][1000:-1000])[0, 1] > 0.95, suffix


@pytest.mark.parametrize("suffix", [".mp3", ".m4a", ".webm"])
def test_browser_formats_through_ffmpeg(tmp_path, suffix):
    src = tmp_path / "t.wav"
    sf.write(str(src), tone(2.0, 440.0), SR)
    y = A.load_audio(ffmpeg_convert(src, tmp_path / f"t{suffix}"))
    assert y.dtype == np.float32 and abs(y.size / SR - 2.0) < 0.1
    spec = np.abs(np.fft.rfft(y[SR // 2: SR // 2 + SR]))
    assert abs(np.argmax(spec) - 440) <= 2          # 1 s window → 1 Hz bins


def test_stereo_downmix_and_resample():
    sr = 44100
    left = tone(1.0, 300.0, sr)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)      # [n, 2], one dead channel
    y = A.load_audio((stereo, sr))
    assert y.size == SR
    assert np.max(np.abs(y)) == pytest.approx(0.15, abs=0.02)   # mean of the two channels


def test_int16_pairs_and_gradio_order():
    pcm = (tone(0.5) * 32767).astype(np.int16)
    a = A.load_audio((pcm, SR))
    b = A.load_audio((SR, pcm))             # gradio's numpy audio is (sample_rate, data)
    assert np.allclose(a, b) and np.max(np.abs(a)) == pytest.approx(0.3, abs=0.01)


def test_non_finite_samples_are_cleaned():
    x = tone(0.5)
    x[100:200] = np.nan
    x[300] = np.inf
    assert np.isfinite(A.load_audio((x, SR))).all()


@pytest.mark.parametrize("make, msg", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("hello, I am not audio at all\n" * 20), "not a readable audio"),
    (lambda p: sf.write(str(p), np.zeros(10, np.float32), SR), "too short"),
])
def test_bad_files_raise_readable_errors(tmp_path, make, msg):
    p = tmp_path / "bad.wav"
    make(p)
    with pytest.raises(AudioError, match=msg):
        A.load_audio(p)


def test_missing_file_and_bad_types(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        A.load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError):
        A.load_audio(12345)


def test_fbank_is_kaldi_80_bins_mean_normalised():
    x = tone(1.0)
    f = A.fbank(x)
    assert f.shape == (98, 80)              # (16000 - 400) // 160 + 1 frames, snip_edges
    assert torch.allclose(f.mean(0), torch.zeros(80), atol=1e-4)
    raw = A.fbank(x, cmn=False)
    assert raw[:, :].argmax(1).float().mean() < 20   # a 220 Hz tone lives in the low bins


def test_ge2e_mel_shape_and_volume_normalisation():
    quiet, loud = tone(1.0, amp=0.001), tone(1.0, amp=0.1)
    mq, ml = A.ge2e_mel(quiet), A.ge2e_mel(loud)
    assert mq.shape == (101, 40)
    # quiet input is raised to -30 dBFS; loud input is left alone (increase only)
    assert float(mq.sum()) == pytest.approx(float(A.ge2e_mel(tone(1.0, amp=10 ** (-30 / 20) * np.sqrt(2))).sum()), rel=1e-3)
    assert float(ml.sum()) > float(mq.sum())


def test_specaugment_masks_but_keeps_shape():
    torch.manual_seed(0)
    f = torch.randn(300, 80)
    aug = A.SpecAugment(freq_mask=10, time_mask=30, n_freq_masks=2, n_time_masks=2)(f)
    assert aug.shape == f.shape
    changed = (aug != f)
    assert changed.any()
    assert changed.all(dim=0).any() or changed.all(dim=1).any()   # whole bands / frames masked
    assert torch.equal(A.SpecAugment(p=0.0)(f), f)


def test_segment_cuts_long_audio_at_pauses():
    chunks = []
    for i in range(6):                       # 6 x (8 s tone + 1.5 s silence) = 57 s
        chunks += [tone(8.0, 200 + 50 * i), np.zeros(int(1.5 * SR), np.float32)]
    wav = np.concatenate(chunks)
    segs = A.segment(wav, max_len=10.0)
    assert len(segs) == 6
    for i, s in enumerate(segs):
        assert s.end - s.start <= 10.0
        assert s.start == pytest.approx(i * 9.5, abs=0.1)
        assert s.end == pytest.approx(i * 9.5 + 8.0, abs=0.1)
    assert A.segment(tone(3.0)) == [A.Segment(0.0, 3.0)]


def test_silence_detection():
    assert A.is_silent(np.zeros(SR, np.float32))
    assert A.is_silent(np.full(SR, 0.5, np.float32))            # pure DC offset
    assert not A.is_silent(tone(1.0))


def test_frame_energy_is_blockwise_but_identical():
    rng = np.random.default_rng(1)
    x = (0.1 * rng.standard_normal(SR * 7 + 123)).astype(np.float32)
    hop = 480
    nfr = x.size // hop
    ref = 10 * np.log10(np.mean(x[: nfr * hop].reshape(nfr, hop).astype(np.float64) ** 2, axis=1) + 1e-12)
    assert np.allclose(A.frame_energy_db(x, hop, block=100), ref)
