"""Shared fixtures: generated audio (numpy tones, espeak-ng speech) and the default recognizer."""
from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import pytest
import soundfile as sf

from benchmarks.load_test import stop_process

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(demo, **launch):
    """A built Gradio app launched in this process on a free local port: yields its base URL
    ("http://127.0.0.1:PORT"), closed afterwards. `launch`: more `demo.launch` arguments."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


class AppProcess:
    """`python app.py ARGS` in a subprocess (output in `log`), served on 127.0.0.1:`port`.

        with AppProcess(["--port", str(port), "--db", url], env, log, port=port) as app:
            app.wait_ready()            # until the page answers (pytest.fail if it exits / hangs)
            ... app.url ...
        app.output()                    # what it printed

    `port` is where the app is told to listen (by --port, or a Space's GRADIO_SERVER_PORT)."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log: Path, port: int,
                 cwd: Path = ROOT, start_timeout: float = 150.0):
        self.port, self.log, self.start_timeout = port, log, start_timeout
        self.url = f"http://127.0.0.1:{port}/"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *args], cwd=cwd,
                                         env=dict(env), stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, ready: Optional[Callable[[str], bool]] = None) -> "AppProcess":
        """Until the page answers 200 (and `ready(output)` holds, if given)."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"app.py exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200 and (ready is None or ready(self.output())):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer within {self.start_timeout:.0f} s:\n"
                            f"{self.output()[-3000:]}")
            time.sleep(1)

    def stop(self) -> str:
        """Terminate (kill after 20 s); the output."""
        stop_process(self.proc)
        return self.output()

    def __enter__(self) -> "AppProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def barrier_wait(barrier, timeout: float = 120) -> None:
    """Wait at a (threading or multiprocessing) barrier; a broken barrier just lets us go on."""
    try:
        barrier.wait(timeout=timeout)
    except threading.BrokenBarrierError:
        pass


def run_threads(worker, n: int, processes=(), timeout: float = 180) -> list:
    """Run worker(i) for i < n in n threads, wait for them and then for the already started
    `processes`; return the exceptions the threads raised."""
    errors: list = []

    def run(i: int) -> None:
        try:
            worker(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    for p in processes:
        p.join(timeout=timeout)
    return errors


class FixedASR:
    """An instant ASR backend that hears `text` in any clip and counts its calls."""
    def __init__(self, text: str = "kids are talking by the door"):
        self.text = text
        self.calls = 0

    def transcribe(self, wav):
        self.calls += 1
        return self.text


def with_asr(recognizer, asr):
    """The default bundle's loaded models with another ASR backend (no second model load)."""
    from emodemo.recognizer import EmotionRecognizer
    return EmotionRecognizer(recognizer.config, recognizer.speech, recognizer.text_model, asr=asr)


@pytest.fixture
def store(tmp_path):
    """A fresh SQLite corrections store in tmp_path/db, media in tmp_path/media."""
    from emodemo.store import CorrectionStore
    s = CorrectionStore(f"sqlite:///{tmp_path / 'db' / 'corrections.db'}", media_dir=tmp_path / "media")
    yield s
    s.close()


@pytest.fixture(scope="module")
def fast_rec(recognizer):
    """The default bundle's models with an instant fake ASR (a test module may define its own)."""
    return with_asr(recognizer, FixedASR())


@pytest.fixture
def h(fast_rec, store):
    """The app's handlers on `fast_rec` and a fresh store."""
    from emodemo.ui import Handlers
    return Handlers(fast_rec, store, work_dir=store.db_file.parent / "work")


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (training tests on a 2-core box), restoring the setting."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- fine-tuning fixtures: pitch-coded tones as corrections of a tiny 3-class bundle --------
LABELS3 = ["neutral", "happy", "sad"]
PITCH = {"neutral": 150.0, "happy": 420.0, "sad": 260.0}


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A small 3-class bundle: real GE2E + MiniLM base weights, untrained small heads."""
    import torch
    from emodemo.bundle import build_speech, build_text, default_config, save_bundle
    torch.manual_seed(0)
    cfg = default_config(LABELS3)
    cfg["name"], cfg["version"] = "tiny", "1"
    cfg["speech"]["hidden"] = 32
    speech, text = build_speech(cfg), build_text(cfg)
    return save_bundle(tmp_path_factory.mktemp("base") / "tiny", cfg, speech, text, card="tiny base\n")


def wav(path: Path, label: str, j: int, seconds: float = 1.0) -> Path:
    """A tone whose pitch encodes the label, varied a little per clip, with some noise."""
    rng = np.random.default_rng(LABELS3.index(label) * 1000 + j)
    x = tone(seconds + 0.05 * (j % 4), PITCH[label] * (1 + 0.03 * ((j % 5) - 2)))
    x = x + 0.01 * rng.standard_normal(x.size).astype(np.float32)
    sf.write(str(path), x, SR)
    return path


def make_store(tmp_path: Path, n_per_class: int = 6, transcripts: bool = True) -> str:
    from emodemo.store import CorrectionStore
    url = f"sqlite:///{tmp_path}/corrections.db"
    words = {"neutral": "the report is on the table", "happy": "I am so glad and happy",
             "sad": "I feel so sad and lonely"}
    audio = tmp_path / "audio"
    audio.mkdir(exist_ok=True)
    with CorrectionStore(url) as store:
        for lab in LABELS3:
            for j in range(n_per_class):
                p = wav(audio / f"{lab}_{j}.wav", lab, j)
                store.add(p, lab, annotator=f"ann{j % 2}",
                          transcript=f"{words[lab]} number {j}" if transcripts else None)
    return url


@pytest.fixture
def no_data(tmp_path, monkeypatch) -> Path:
    """Point the training-data folder at an empty one, in this process and in subprocesses."""
    import emodemo.data
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("EMODEMO_DATA", str(empty))
    monkeypatch.setattr(emodemo.data, "SHARED_DATA", empty)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return empty
