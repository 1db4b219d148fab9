"""Shared fixtures: generated audio (numpy tones, espeak-ng speech) and the default recognizer."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
SR = 16000


def tone(seconds: float = 1.0, freq: float = 220.0, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def espeak(text: str, path: Path, voice: str = "en-us", speed: int = 150) -> Path:
    """Synthesise `text` with espeak-ng and convert to 16 kHz mono WAV."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required for the speech fixtures (apt-get install espeak-ng)")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
    wav, sr = sf.read(str(raw), dtype="float32")
    import torch, torchaudio
    wav = torchaudio.functional.resample(torch.from_numpy(wav), sr, SR).numpy()
    sf.write(str(path), wav, SR)
    raw.unlink()
    return path


def ffmpeg_convert(src: Path, dst: Path) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is required (apt-get install ffmpeg)")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), str(dst)], check=True)
    return dst


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """About 3 s of synthetic English speech."""
    d = tmp_path_factory.mktemp("speech")
    return espeak("I am so happy today, this is wonderful news for all of us.", d / "happy.wav")


@pytest.fixture(scope="session")
def speech_mp3(speech_wav, tmp_path_factory) -> Path:
    return ffmpeg_convert(speech_wav, tmp_path_factory.mktemp("mp3") / "happy speech.mp3")


@pytest.fixture(scope="session")
def recognizer():
    import emodemo
    return emodemo.load_recognizer()
