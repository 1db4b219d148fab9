"""Degraded copies (emodemo.degrade): the room, the channel and the noise do what they say, a copy
is fixed by the clip's id, and `load_spec(...:degrade=K)` renders them once into their folder."""
import numpy as np
import pytest

from pathlib import Path

from conftest import ROOT, SR, espeak
from emodemo import degrade as D
from emodemo.audio import load_audio
from emodemo.data import load_spec
from test_data import make_corpus


class Fixed:
    """An rng whose `random()` always says `value` (to pick a branch); the rest is seeded."""

    def __init__(self, value: float, seed: int = 0):
        self.value, self.rng = value, np.random.default_rng(seed)

    def random(self):
        return self.value

    def __getattr__(self, name):
        return getattr(self.rng, name)


def band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum())


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return load_audio(str(espeak("The door was open when we came home.", tmp_path_factory.mktemp("deg") / "s.wav")))


def test_a_copy_is_fixed_by_the_clip_id(speech):
    a, b = D.degrade(speech, "clip-1"), D.degrade(speech, "clip-1")
    c = D.degrade(speech, "clip-2")
    assert np.array_equal(a, b) and a.shape == speech.shape and a.dtype == np.float32
    assert not np.allclose(a, c) and np.abs(a).max() <= 1.0 and np.isfinite(a).all()
    assert not np.allclose(a, speech, atol=1e-3)


def test_the_telephone_line_cuts_the_band_above_4_khz():
    noise = np.random.default_rng(1).standard_normal(SR).astype(np.float64) * 0.1
    out = D.channel(noise, Fixed(0.1))
    assert band_energy(out, 4200, 8000) < 0.01 * band_energy(noise, 4200, 8000)
    assert band_energy(out, 300, 3000) > 0.5 * band_energy(noise, 300, 3000)


def test_noise_is_added_at_an_snr_in_range(speech):
    x = speech.astype(np.float64)
    for seed in range(5):
        out = D.add_noise(x, [], np.random.default_rng(seed))
        snr = 10 * np.log10((x ** 2).mean() / ((out - x) ** 2).mean())
        assert D.SNR_DB[0] - 0.5 <= snr <= D.SNR_DB[1] + 0.5


def test_the_room_leaves_a_decaying_tail():
    click = np.zeros(SR)
    click[100] = 1.0
    out = D.room(click, np.random.default_rng(3))
    tail = out[100 + int(0.02 * SR):100 + int(0.15 * SR)]
    assert out[100] == pytest.approx(1.0, abs=1e-3)               # the direct sound
    assert (tail ** 2).sum() > 1e-4                                 # reverberation after it
    assert (out[100 + int(0.15 * SR):] ** 2).sum() < (tail ** 2).sum()   # ... decaying


def test_pink_and_brown_noise_tilt_towards_low_frequencies():
    rng = np.random.default_rng(0)
    ratio = {k: band_energy(D.coloured_noise(SR, k, rng), 50, 500) / band_energy(D.coloured_noise(SR, k, rng), 4000, 8000)
             for k in ("white", "pink", "brown")}
    assert ratio["white"] < ratio["pink"] < ratio["brown"]


def test_load_spec_degrade_renders_copies_of_every_kth_clip_once(tmp_path, monkeypatch):
    monkeypatch.setenv("EMODEMO_DEGRADED_DIR", str(tmp_path / "deg"))
    root = make_corpus(tmp_path / "c", ["A", "B"], ["neutral", "angry"], per=2)
    clean = load_spec(f"folder:{root}")
    copies = load_spec(f"folder:{root}:degrade=2")
    assert len(copies) == len(clean) // 2 == 4
    assert all(c.id.endswith(D.TAG) and c.speaker.endswith(D.TAG) for c in copies)
    by_id = {c.id: c for c in clean}
    for c in copies:
        orig = by_id[c.id[: -len(D.TAG)]]
        assert (c.label, c.corpus) == (orig.label, orig.corpus)
        assert str(tmp_path / "deg") in c.audio
        assert load_audio(c.audio).shape == load_audio(orig.audio).shape
    relabelled = load_spec(f"folder:{root}:as=sad:degrade=2")      # the copy option comes last
    assert [c.label for c in relabelled] == ["sad"] * 4 and [c.id for c in relabelled] == [c.id for c in copies]
    first = {c.audio: Path(c.audio).stat().st_mtime_ns for c in copies}
    again = load_spec(f"folder:{root}:degrade=2")
    assert {c.audio: Path(c.audio).stat().st_mtime_ns for c in again} == first   # not rendered again
    assert np.abs(load_audio(copies[0].audio) - load_audio(by_id[copies[0].id[: -len(D.TAG)]].audio)).max() > 1e-3


def test_a_voice_copy_moves_pitch_and_tempo_together(tmp_path, monkeypatch):
    """`voice`: speed perturbation, fixed by the clip id: a 200-Hz tone comes out at 200 x f Hz
    and 1 / f as long, with f 4-12 % from 1; `:voice=K` copies are settings of their own and
    never count as original clips."""
    t = np.arange(SR) / SR
    tone = (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    factors = []
    for i in range(6):
        out = D.voice(tone, f"clip-{i}")
        assert np.array_equal(out, D.voice(tone, f"clip-{i}"))
        f = len(tone) / len(out)
        peak = np.fft.rfftfreq(len(out), 1 / SR)[np.argmax(np.abs(np.fft.rfft(out)))]
        assert peak == pytest.approx(200 * f, abs=2.0) and 0.035 < abs(f - 1) < 0.125
        factors.append(round(f, 3))
    assert min(factors) < 1 < max(factors)                         # lower and higher voices
    monkeypatch.setenv("EMODEMO_DEGRADED_DIR", str(tmp_path / "deg"))
    root = make_corpus(tmp_path / "c", ["A", "B"], ["neutral", "angry"], per=2)
    copies = load_spec(f"folder:{root}:voice=2")
    assert len(copies) == 4 and all(c.speaker.endswith(D.VOICE_TAG) and D.is_copy(c) for c in copies)
    from emodemo.training.pooled import clean
    assert clean(copies + load_spec(f"folder:{root}")) == load_spec(f"folder:{root}")


@pytest.mark.slow
def test_codec_copies_go_through_a_real_codec(speech, tmp_path, monkeypatch):
    names = {D.CODECS[int(D._rng(f"c{i}").integers(len(D.CODECS)))]: f"c{i}" for i in range(30)}
    assert set(names) == set(D.CODECS)
    gsm = D.codec(speech, names["gsm"])
    assert gsm.shape == speech.shape and np.abs(gsm - speech).max() > 1e-2
    assert band_energy(gsm, 4200, 8000) < 0.05 * band_energy(speech, 4200, 8000)   # 8 kHz line
    corr = np.corrcoef(gsm, speech)[0, 1]
    assert corr > 0.5                                  # still the same speech, aligned
    monkeypatch.setenv("EMODEMO_DEGRADED_DIR", str(tmp_path / "deg"))
    root = make_corpus(tmp_path / "c", ["A", "B"], ["neutral"], per=2)
    copies = load_spec(f"folder:{root}:codec=2")
    assert len(copies) == 2 and all(c.id.endswith(D.CODEC_TAG) and Path(c.audio).exists() for c in copies)


def test_replay_uses_the_original_clips_not_the_copies():
    """Fine-tuning replays (and finetune-pack packs) the base's original training clips: its
    degraded copies (`:degrade=K` specs) are left out."""
    from emodemo.bundle import read_config
    from emodemo.finetune.replay import default_replay, original_specs
    cfg = read_config(ROOT / "models" / "default")
    train = cfg["training"]["run_config"]["speech"]["train"]
    assert any(":degrade=" in s for s in train)                   # the shipped v9 trains on copies
    assert original_specs(cfg) == [s for s in train if ":degrade=" not in s]
    assert not any(":degrade=" in s for s in default_replay(cfg))


@pytest.mark.slow
def test_evaluate_cli_on_degraded_and_codec_copies_of_your_own_clips(tmp_path):
    """`python -m emodemo evaluate --data csv:clips.csv:degrade=1` (README): the shipped default
    scored on copies of a user's clips, rendered into $EMODEMO_DEGRADED_DIR, one report each."""
    import csv
    import json
    import os
    import subprocess
    import sys
    clips = ["angry_actor17.flac", "sad_actor19.flac", "happy_actor18.flac", "neutral_actor20.flac"]
    manifest = tmp_path / "clips.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for c in clips:
            w.writerow([ROOT / "data" / "examples" / c, c.split("_")[0]])
    env = {**os.environ, "EMODEMO_DEGRADED_DIR": str(tmp_path / "deg")}
    for kind in ("degrade", "codec"):
        r = subprocess.run([sys.executable, "-m", "emodemo", "evaluate", "--data", f"csv:{manifest}:{kind}=1",
                            "--out", str(tmp_path / kind)], capture_output=True, text=True, cwd=ROOT, env=env,
                           timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        report = json.loads((tmp_path / kind / "report.json").read_text())
        assert "Traceback" not in r.stderr and "audio" in r.stdout
        assert report["n"] == report["audio"]["n"] == 4 and report["data"].endswith(f":{kind}=1")
        assert 0.0 <= report["audio"]["UA"] <= 1.0
    tags = sorted(p.name.rsplit("~", 1)[1] for p in (tmp_path / "deg").rglob("*.wav"))
    assert tags == ["codec.wav"] * 4 + ["deg.wav"] * 4
