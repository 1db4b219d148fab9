"""Speech-like test audio: espeak-ng reads a passage of distinct sentences in several voices
(16 kHz, short pauses, a little noise floor), cut or tiled to the needed length."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bench_common import SR

# Distinct sentences, so that no 30-s Whisper window sees repeated text.
PASSAGE = [
    "The quarterly report arrived late on Friday afternoon.",
    "Nobody in the office was particularly surprised by the delay.",
    "I can't believe you forgot my birthday again this year!",
    "We walked along the river until the sun went down behind the hills.",
    "Please remember to lock the back door before you leave tonight.",
    "That was the best concert I have ever been to in my whole life.",
    "I really miss the old house and the garden where we grew up.",
    "Stop shouting at me, I heard you the first time.",
    "The train to Edinburgh leaves from platform nine at half past seven.",
    "Honestly, I am terrified of what the doctor is going to say tomorrow.",
    "She opened the letter slowly and read it twice without a word.",
    "Wow, you actually finished the whole marathon, that is amazing!",
    "The committee will meet again next Tuesday to review the budget.",
    "That smell in the fridge is absolutely disgusting, throw it out.",
    "My grandfather used to tell us stories about the war every winter.",
    "Could you send me the slides from this morning's presentation?",
    "I'm so proud of you, you worked incredibly hard for this.",
    "The storm knocked out the power for most of the northern district.",
    "Why does this always happen to me when I am already running late?",
    "We should probably book the tickets before the prices go up.",
    "The little dog waited by the window every evening for its owner.",
    "I never want to see that man in this restaurant again.",
    "Scientists measured the temperature of the lake every hour for a month.",
    "It's quiet here at night, you can hear the waves from the balcony.",
]
VOICES = [("en-us", 160), ("en-us+f3", 150), ("en-gb", 170), ("en-gb+m3", 155)]


def espeak(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """One sentence from espeak-ng as 16 kHz mono float32."""
    import soundfile as sf
    import torch
    import torchaudio
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is required (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True,
                       capture_output=True)
        wav, sr = sf.read(str(path), dtype="float32")
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    return torchaudio.functional.resample(torch.from_numpy(wav), sr, SR).numpy().astype(np.float32)


def speech_corpus(sentences: Sequence[str] = PASSAGE, voices=VOICES, seed: int = 0,
                  cache: Optional[Path] = None) -> np.ndarray:
    """The passage, sentence by sentence with 0.25-0.6 s pauses, once per voice (~5.5 min).
    With `cache` (a .npy path) the result is reused when the passage and voices are unchanged."""
    import hashlib
    key = hashlib.sha1(json.dumps([list(sentences), [list(v) for v in voices], seed]).encode()).hexdigest()[:12]
    if cache is not None:
        cache = Path(cache).with_name(f"{Path(cache).stem}-{key}.npy")
        if cache.exists():
            return np.load(cache)
    rng = np.random.default_rng(seed)
    parts = []
    for voice, speed in voices:
        for s in sentences:
            parts.append(espeak(s, voice, speed))
            parts.append(np.zeros(int(SR * rng.uniform(0.25, 0.6)), np.float32))
    wav = np.concatenate(parts)
    # a little noise floor, so pauses are not digital silence (as in real recordings)
    wav = (wav + rng.normal(0, 1e-3, wav.size).astype(np.float32)).clip(-1, 1)
    if cache is not None:
        np.save(cache, wav)
    return wav


def clip(corpus: np.ndarray, seconds: float, offset: float = 0.0) -> np.ndarray:
    """`seconds` of the corpus from `offset`, tiled when the corpus is shorter."""
    n, start = int(seconds * SR), int(offset * SR) % corpus.size
    reps = (start + n) // corpus.size + 1
    return np.ascontiguousarray(np.tile(corpus, reps)[start:start + n])


def write_wav(path: Path, wav: np.ndarray) -> Path:
    import soundfile as sf
    sf.write(str(path), wav, SR, subtype="PCM_16")
    return path

