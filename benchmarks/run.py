#!/usr/bin/env python
"""emodemo benchmarks: latency, peer architectures, fixes before/after, long audio, app start/memory,
batch CLI.

    python benchmarks/run.py            # full run (~10 min on 2 cores), updates benchmarks/README.md
    python benchmarks/run.py --quick    # smoke-sized run (< 2 min on an idle machine)
    python benchmarks/run.py --out /tmp/bench   # write results elsewhere (README left alone)
    python benchmarks/run.py --only before_after,cli   # some sections (`whatif` = before_after)

Every figure is the median of several timed runs after one warm-up. Comparison runs (our audio
branch vs the peer architectures; each fix before vs after) are interleaved round by round in the
same process, so their ratios hold even when the machine is noisy. Memory and start-up figures come
from fresh subprocesses (this script re-invoked with the hidden `child` command), one per
measurement.

Everything is measured on the package as it is ("after": `load_recognizer()` defaults — 1 torch
thread, clip-window ASR, blockwise frame energy, batched audio branch in the CLI). The `before`
variants reproduce the code before the fixes, only where needed to measure it:
  * torch threads: `torch.set_num_threads(2)` around the call (torch's default on the 2-core box
    the fixes were made on); in a child process `load_recognizer(threads=2)`, in the CLI `--threads 2`;
  * ASR: `BeforeASR`, faster-whisper's own `transcribe` on the same WhisperModel (every chunk
    zero-padded to the 30-s window, default temperature fallback), as `FasterWhisperASR` did;
  * `segment()` frame energy: `frame_energy_before` (a float64 copy of the whole file and its
    square), for the memory breakdown only;
  * batch CLI: `--batch-size 1 --threads 2` (one clip at a time, 2 torch threads).

Test audio is speech-like: espeak-ng reads a fixed passage of distinct sentences (several voices,
short pauses between sentences), resampled to 16 kHz and tiled/trimmed to the needed length.
The passage does not repeat inside any 60-s window, so Whisper's repetition guard
(compression-ratio fallback) is not triggered artificially.

Results: `<out>/results.json` (everything, raw timings included) and `<out>/results.md` (tables);
a full run of all sections into the default folder also replaces the results block of
benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

SR = 16000
N_CLASSES = 7
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
DEV_BUNDLE = Path(tempfile.gettempdir()) / "emodemo-bench-bundle"

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

QUICK = dict(lengths=[1, 5], reps={1: 2, 5: 2, 15: 1, 60: 1}, peer_lengths=[5], peer_reps=2,
             ba_lengths=[5], ba_reps=1, batch_clips=8, wer_check=False,
             long_minutes=[1, 2], long_asr_minutes=[], long_before_minutes=[], cold_reps=1, serve_n=3,
             cli_clips=32, cli_before_clips=8, cli_asr_clips=0)
FULL = dict(lengths=[1, 5, 15, 60], reps={1: 9, 5: 7, 15: 5, 60: 3}, peer_lengths=[1, 5, 15],
            peer_reps=3, ba_lengths=[1, 5], ba_reps=5, batch_clips=32, wer_check=True,
            long_minutes=[1, 5, 10], long_asr_minutes=[1, 10], long_before_minutes=[10], cold_reps=3,
            serve_n=30, cli_clips=120, cli_before_clips=60, cli_asr_clips=20)

# "before" reproductions (see the module docstring)
BEFORE_TORCH_THREADS = 2       # torch's default thread count on the 2-core box, before fix 1
CLI_BATCH_SIZE = 16            # `python -m emodemo predict --batch-size` default
CLI_BEFORE_ARGS = ("--batch-size", "1", "--threads", str(BEFORE_TORCH_THREADS))
VARIANTS = {"after": "after (defaults)",
            "before": f"before ({BEFORE_TORCH_THREADS} torch threads, 30-s ASR window + fallback)"}

TARGETS = {
    # key: (description, comparison, threshold)
    "e2e_5s": ("end to end, 5-s clip (s)", "<=", 0.4),
    "audio_vs_wav2vec2": ("audio branch speed-up over wav2vec2-base, 5-s clip (x)", ">=", 10.0),
    "long_rtf": ("10-min file, audio-only timeline RTF", "<=", 0.1),
    "long_rtf_asr": ("10-min file, timeline with ASR RTF", "<=", 0.1),
    "long_flat_mb": ("10-min file, peak memory growth beyond the decoded audio (MB)", "<=", 64.0),
    "cold_start": ("cold start to first prediction (s)", "<=", 10.0),
    "serve_rss": ("peak RSS while serving (MB)", "<=", 1536.0),
    "cli_audio": ("batch CLI audio-only (clips/s, steady state)", ">=", 50.0),
}


# ---- environment ---------------------------------------------------------------------------
def machine_info() -> dict:
    """CPU model, cores, library versions, thread settings and what else is using the CPU."""
    cpu = ""
    try:
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = m.group(1).strip() if m else ""
    except OSError:
        pass
    info = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu or platform.processor(), "cores": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["mem_total_gb"] = round(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
                                         .group(1)) / 2 ** 20, 1)
    except (OSError, AttributeError):
        pass
    import torch
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()          # torch's own default (the "before")
    from emodemo.recognizer import DEFAULT_THREADS
    try:
        info["emodemo_torch_threads"] = int(os.environ.get("EMODEMO_TORCH_THREADS", "") or DEFAULT_THREADS)
    except ValueError:
        info["emodemo_torch_threads"] = DEFAULT_THREADS
    info["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "EMODEMO_TORCH_THREADS", "EMODEMO_ASR_THREADS")
                   if k in os.environ}
    for mod in ("transformers", "ctranslate2", "faster_whisper", "torchaudio"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            info[mod] = None
    from emodemo.asr import _ctranslate2_threads
    info["asr_threads"] = _ctranslate2_threads()
    info["load_avg_start"] = list(os.getloadavg())
    return info


def _cpu_ticks() -> dict[int, tuple[int, int, str]]:
    """pid -> (utime + stime ticks, parent pid, command line) for every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            out[int(d.name)] = (int(fields[11]) + int(fields[12]), int(fields[1]), cmd or stat.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def contention(window: float = 0.5, min_cpu: float = 20.0) -> list[str]:
    """Other processes using more than `min_cpu` % of a core over `window` seconds (training runs,
    test suites) — they make the numbers noisy. This process and its children are left out."""
    try:
        a = _cpu_ticks()
        time.sleep(window)
        b = _cpu_ticks()
    except OSError:
        return []
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    mine = {os.getpid()}
    changed = True
    while changed:                      # our process tree
        changed = False
        for pid, (_, ppid, _) in b.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    out = []
    for pid, (t, _, cmd) in b.items():
        if pid in mine or pid not in a:
            continue
        cpu = 100.0 * (t - a[pid][0]) / hz / window
        if cpu >= min_cpu:
            out.append(f"{cmd[:120]} ({cpu:.0f}% CPU)")
    return out


class ContentionLog:
    """Samples `contention()` between benchmark sections; `seen` keeps every busy process once."""

    def __init__(self):
        self.samples: list[dict] = []

    def sample(self, where: str) -> list[str]:
        busy = contention()
        self.samples.append({"where": where, "load1": os.getloadavg()[0], "busy": busy})
        return busy

    @property
    def seen(self) -> list[str]:
        names: dict[str, None] = {}
        for s in self.samples:
            for b in s["busy"]:
                names.setdefault(re.sub(r" \(\d+% CPU\)$", "", b), None)
        return list(names)


# ---- memory --------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    m = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else 0


def rss_mb() -> float:
    """Current resident set size of this process (MB)."""
    try:
        return _status_kb("VmRSS") / 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def maxrss_mb() -> float:
    """Peak RSS of this process (MB): VmHWM from /proc/self/status.

    Not `resource.getrusage().ru_maxrss`: Linux carries ru_maxrss across fork+exec, so a child
    started from a big parent reports the parent's size (here the benchmark process with the peer
    models loaded: ~1.9 GB instead of ~1 GB). VmHWM belongs to the exec'd address space.
    """
    try:
        return _status_kb("VmHWM") / 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """Peak RSS over a block: resets the kernel's high-water mark (/proc/self/clear_refs = 5) and
    reads VmHWM at the end; where that is not allowed, a 5-ms sampling thread is used instead."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0.0
        self.method = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "PeakRSS":
        self.start = rss_mb()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampling"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = _status_kb("VmHWM") / 1024
        self.peak = max(self.peak, rss_mb())


# ---- audio ---------------------------------------------------------------------------------
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


# ---- timing --------------------------------------------------------------------------------
def timeit(fn: Callable[[], object], reps: int = 5, warmup: int = 1) -> dict:
    """Median/min/max wall time of `fn()` over `reps` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return summary(times)


def summary(times: Sequence[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times),
            "runs": [round(t, 5) for t in times]}


def interleaved(fns: dict[str, Callable[[], object]], reps: int = 5, warmup: int = 1) -> dict[str, dict]:
    """Time several functions round-robin (A B C, A B C, ...) so drift hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, reps)):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: summary(v) for k, v in times.items()}


# ---- bundle --------------------------------------------------------------------------------
def resolve_bundle(arg: Optional[str] = None) -> tuple[str, str]:
    """(bundle path, note). models/default, else /tmp/bundle_v1, else a same-architecture bundle
    with untrained heads built once under the temp dir (speed does not depend on the weights)."""
    if arg:
        return str(arg), "given"
    from emodemo.bundle import DEFAULT_BUNDLE
    for cand in (DEFAULT_BUNDLE, Path("/tmp/bundle_v1")):
        if (Path(cand) / "config.json").exists():
            return str(cand), "trained"
    if not (DEV_BUNDLE / "config.json").exists():
        from emodemo.bundle import build_speech, build_text, default_config, save_bundle
        cfg = default_config()
        save_bundle(DEV_BUNDLE, cfg, build_speech(cfg), build_text(cfg),
                    "benchmark stand-in: default architecture, untrained heads\n")
    return str(DEV_BUNDLE), "untrained heads (default architecture; same speed)"


def load(bundle: str, threads: Optional[int] = None, preload_asr: bool = False):
    """`load_recognizer(bundle)` with the package defaults unless `threads` is given."""
    from emodemo.cli import _quiet
    _quiet()
    import emodemo
    return emodemo.load_recognizer(bundle, threads=threads, preload_asr=preload_asr)


# ---- 1. latency per clip -------------------------------------------------------------------
def latency(rec, wav: np.ndarray, reps: int = 5) -> dict:
    """Per-stage latency of one clip: audio branch, ASR, text branch, fusion, end to end."""
    dur = wav.size / SR
    transcript = rec.transcribe(wav)               # also loads the ASR on first use
    p_a = rec.audio_proba(wav)
    p_t = rec.text_proba([transcript or "hello"])[0]
    row = {"seconds": dur, "transcript_words": len(transcript.split()),
           "audio": timeit(lambda: rec.audio_proba(wav), reps),
           "asr": timeit(lambda: rec.transcribe(wav), reps),
           "text": timeit(lambda: rec.text_proba([transcript or "hello"]), reps),
           "fusion": timeit(lambda: rec.fusion(p_a, p_t), max(reps, 50)),
           "e2e": timeit(lambda: rec.predict((wav, SR)), reps),
           "e2e_audio_only": timeit(lambda: rec.predict((wav, SR), transcript=""), reps)}
    row["rtf"] = row["e2e"]["median"] / dur
    row["rtf_audio_only"] = row["e2e_audio_only"]["median"] / dur
    return row


# ---- 2. peer architectures -----------------------------------------------------------------
def build_peers(small: bool = False) -> dict:
    """Randomly initialised peer models (no download): wav2vec2-base, HuBERT-base, WeSpeaker
    ResNet34 + our emotion head. `small` builds 1-layer versions (for tests)."""
    import torch
    from transformers import (HubertConfig, HubertForSequenceClassification, Wav2Vec2Config,
                              Wav2Vec2ForSequenceClassification)
    from emodemo.speech import SpeechEmotionModel, build_backbone
    from emodemo.resnet import build_resnet
    kw = dict(num_labels=N_CLASSES)
    if small:
        kw.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(32,) * 7, num_conv_pos_embeddings=16, classifier_proj_size=16)
    torch.manual_seed(0)
    peers = {"wav2vec2-base": Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**kw)).eval(),
             "hubert-base": HubertForSequenceClassification(HubertConfig(**kw)).eval()}
    backbone = build_resnet("ResNet18", m_channels=8) if small else build_backbone("resnet34", pretrained=False)
    peers["wespeaker-resnet34"] = SpeechEmotionModel(backbone, N_CLASSES).eval()
    return peers


def peer_fn(name: str, model, wav: np.ndarray) -> Callable[[], object]:
    """One forward pass of a peer model on a 16 kHz clip (features included)."""
    import torch
    from emodemo import audio as A
    if name.startswith("wespeaker"):
        def run():
            with torch.inference_mode():
                feats = A.fbank(wav)[None]
                return torch.softmax(model(feats, torch.tensor([feats.shape[1]])), -1)
        return run
    x = torch.from_numpy(wav)[None]

    def run():
        with torch.inference_mode():
            x_n = (x - x.mean()) / (x.std() + 1e-7)   # the Wav2Vec2FeatureExtractor normalisation
            return torch.softmax(model(x_n).logits, -1)
    return run


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def compare_peers(ours: Callable[[np.ndarray], object], peers: dict, wav: np.ndarray, reps: int = 5) -> dict:
    """Interleaved timing of our audio branch and each peer on the same clip; ratio = their/our."""
    fns = {"ours": lambda: ours(wav)}
    fns.update({k: peer_fn(k, m, wav) for k, m in peers.items()})
    t = interleaved(fns, reps)
    base = t["ours"]["median"]
    return {"seconds": wav.size / SR, "timings": t,
            "ratio": {k: t[k]["median"] / base for k in peers}}


# ---- 2b. before/after: each applied fix vs a reproduction of the code before it -------------
class BeforeASR:
    """The ASR call before fix 2 (measurement only): faster-whisper's own `transcribe` on the
    WhisperModel the recognizer already holds — every chunk zero-padded to the 30-s window, greedy
    with faster-whisper's default temperature fallback (0.0, 0.2, ... 1.0), as `FasterWhisperASR`
    did before it got `window="clip"` (and `temperature=0.0` in its "30s" mode)."""

    def __init__(self, fw_model, language: Optional[str] = "en", beam_size: int = 1):
        self.model, self.language, self.beam_size = fw_model, language, beam_size
        self.window = "30s (before)"

    @classmethod
    def of(cls, asr) -> "BeforeASR":
        """The before-version of a loaded `FasterWhisperASR` (same model, same settings)."""
        return cls(asr.model, asr.language, asr.beam_size)

    def transcribe(self, wav: np.ndarray) -> str:
        segments, _ = self.model.transcribe(
            np.asarray(wav, dtype=np.float32), language=self.language, beam_size=self.beam_size,
            condition_on_previous_text=False, vad_filter=False, without_timestamps=True)
        return " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.8).strip()


@contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` inside the block, restored after."""
    import torch
    n0 = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(n0)


@contextmanager
def asr_window(rec, window: str):
    """`rec.asr.window` switched to `window` ("clip" or "30s") inside the block."""
    asr = rec.asr
    w0 = asr.window
    asr.window = window
    try:
        yield
    finally:
        asr.window = w0


@contextmanager
def before_fixes(rec):
    """The recognizer as it ran before the fixes: `BEFORE_TORCH_THREADS` torch threads and the
    old ASR call (`BeforeASR` on the same model)."""
    asr = rec.asr                        # loads the ASR first, so its load cannot reset the threads
    with torch_threads(BEFORE_TORCH_THREADS):
        rec._asr = BeforeASR.of(asr)
        try:
            yield
        finally:
            rec._asr = asr


def _in(ctx: Callable[[], object], fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` wrapped so each call runs inside a fresh `ctx()` context."""
    def run():
        with ctx():
            return fn()
    return run


def before_after(rec, wav: np.ndarray, reps: int = 5) -> dict:
    """Interleaved timings on one clip, each fix before vs after (median over `reps`):
    audio branch with `BEFORE_TORCH_THREADS` torch threads vs `rec.threads` (fix 1); ASR before
    (`BeforeASR`: 30-s window + temperature fallback), the package's `window="30s"` (temperature 0)
    and `window="clip"` (fix 2); end to end before (both) vs after (`rec` as loaded: defaults)."""
    asr = rec.asr                                       # loaded before anything is timed
    bt, at = BEFORE_TORCH_THREADS, rec.threads
    after = lambda: torch_threads(at)                   # noqa: E731 - rec's own setting (no-op normally)
    fns = {f"audio_t{bt}_before": _in(lambda: torch_threads(bt), lambda: rec.audio_proba(wav)),
           f"audio_t{at}_after": _in(after, lambda: rec.audio_proba(wav)),
           "asr_before": _in(lambda: before_fixes(rec), lambda: rec.transcribe(wav)),
           "asr_30s_t0": _in(lambda: asr_window(rec, "30s"), lambda: rec.transcribe(wav)),
           "asr_after": _in(lambda: asr_window(rec, "clip"), lambda: rec.transcribe(wav)),
           "e2e_before": _in(lambda: before_fixes(rec), lambda: rec.predict((wav, SR))),
           "e2e_after": _in(after, lambda: rec.predict((wav, SR)))}
    t = interleaved(fns, reps)
    med = {k: v["median"] for k, v in t.items()}
    with before_fixes(rec):
        before_text = rec.transcribe(wav)
    with asr_window(rec, "clip"):
        after_text = rec.transcribe(wav)
    return {"seconds": wav.size / SR, "torch_threads": {"before": bt, "after": at},
            "asr_window_after": asr.window, "timings": t,
            "speedup": {"audio": med[f"audio_t{bt}_before"] / med[f"audio_t{at}_after"],
                        "asr": med["asr_before"] / med["asr_after"],
                        "e2e": med["e2e_before"] / med["e2e_after"]},
            "transcripts": {"before": before_text, "after": after_text}}


def batch_before_after(rec, clips: Sequence[np.ndarray], reps: int = 3, batch: int = CLI_BATCH_SIZE) -> dict:
    """Audio-branch throughput (clips/s) for a folder's worth of clips, in process: before = one
    clip at a time with `BEFORE_TORCH_THREADS` threads (the old CLI loop); after =
    `rec.audio_proba_batch` in batches of `batch` with `rec.threads` (what `predict_many` runs)."""
    from emodemo import audio as A
    bt, at = BEFORE_TORCH_THREADS, rec.threads

    def seq():
        return [rec.audio_proba(A.load_audio((w, SR))) for w in clips]

    def batched():
        return [rec.audio_proba_batch([A.load_audio((w, SR)) for w in clips[i:i + batch]])
                for i in range(0, len(clips), batch)]

    kb, ka = f"one_by_one_t{bt}_before", f"batch{batch}_t{at}_after"
    fns = {kb: _in(lambda: torch_threads(bt), seq), ka: _in(lambda: torch_threads(at), batched)}
    t = interleaved(fns, reps)
    with torch_threads(at):
        diff = float(np.abs(np.concatenate(batched()) - np.stack(seq())).max())
    return {"clips": len(clips), "clip_seconds": clips[0].size / SR, "batch": batch, "timings": t,
            "clips_per_s": {k: len(clips) / v["median"] for k, v in t.items()},
            "speedup": t[kb]["median"] / t[ka]["median"], "max_abs_diff": diff}


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def wer(ref: str, hyp: str) -> tuple[int, int]:
    """(word edits, reference words) by Levenshtein distance on normalised words."""
    r, h = _words(ref), _words(hyp)
    d = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
    return d[len(h)], len(r)


def asr_accuracy(rec, sentences: Sequence[str] = PASSAGE, voices=VOICES[:1]) -> dict:
    """WER before (`BeforeASR`: 30-s window + temperature fallback) vs after (`rec.asr` with
    window "clip") on single espeak sentences, so the speed-up is not bought with accuracy (espeak
    is clean speech: a sanity check, not a benchmark)."""
    from emodemo.text import clean_text
    old = BeforeASR.of(rec.asr)
    tot = {"before": [0, 0], "after": [0, 0]}
    with asr_window(rec, "clip"):
        for voice, speed in voices:
            for text in sentences:
                wav = espeak(text, voice, speed)
                for k, hyp in (("before", clean_text(old.transcribe(wav))), ("after", rec.transcribe(wav))):
                    e, n = wer(text, hyp)
                    tot[k][0] += e
                    tot[k][1] += n
    return {k: e / max(n, 1) for k, (e, n) in tot.items()} | {"sentences": len(sentences) * len(voices)}


# ---- 3-5. subprocess measurements ----------------------------------------------------------
def frame_energy_before(wav: np.ndarray, hop: int) -> np.ndarray:
    """The frame-energy lines of `emodemo.audio.segment()` before fix 3 (for the memory
    breakdown): a float64 copy of the whole file and its square (2 × 8 bytes per sample). Same
    values as `emodemo.audio.frame_energy_db`."""
    nfr = wav.size // hop
    frames = wav[: nfr * hop].reshape(nfr, hop).astype(np.float64)
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)


def memory_breakdown(path: str) -> dict:
    """Peak RSS growth of the whole-file steps of predict_segments: `load_audio`, and the frame
    energy of `segment()` before (`frame_energy_before`) and after (`frame_energy_db`) fix 3."""
    from emodemo import audio as A
    out = {}
    with PeakRSS() as m:
        wav = A.load_audio(path)
    out["load_audio_mb"] = m.peak - m.start
    hop = SR * 30 // 1000
    res = {}
    for name, fn in (("segment_energy_before_mb", frame_energy_before),
                     ("segment_energy_after_mb", A.frame_energy_db)):
        gc.collect()
        with PeakRSS() as m:
            res[name] = fn(wav, hop)
        out[name] = m.peak - m.start
    assert np.allclose(res["segment_energy_before_mb"], res["segment_energy_after_mb"])
    return out


def child_long(bundle: str, audio: str, asr: bool, warm: str, before: bool = False) -> dict:
    """In a fresh process: load, warm up on a short file, then the whole file through the timeline.
    After: `load_recognizer()` defaults. `before`: `BEFORE_TORCH_THREADS` torch threads (kept
    after the ASR load, as `load_recognizer(threads=...)` does) and, with ASR, `BeforeASR`."""
    import soundfile as sf
    import torch
    rec = load(bundle, threads=BEFORE_TORCH_THREADS if before else None)
    if before and asr:
        rec._asr = BeforeASR.of(rec.asr)
    rss_model = rss_mb()
    rec.predict_segments(warm, transcribe=asr)
    gc.collect()
    info = sf.info(audio)
    with PeakRSS() as mem:
        t = time.perf_counter()
        preds = rec.predict_segments(audio, transcribe=asr)
        secs = time.perf_counter() - t
    n_segments, n_text = len(preds), sum(bool(p.transcript) for p in preds)
    dur = info.frames / info.samplerate
    del preds
    gc.collect()
    breakdown = memory_breakdown(audio)
    return {"breakdown": breakdown, "minutes": dur / 60, "asr": asr, "segments": n_segments, "seconds": secs, "rtf": secs / dur,
            "rss_model_mb": rss_model, "rss_before_mb": mem.start, "rss_peak_mb": mem.peak,
            "growth_mb": mem.peak - mem.start, "audio_mb": info.frames * 4 / 2 ** 20,
            "mem_method": mem.method, "transcribed_segments": n_text,
            "variant": "before" if before else "after", "torch_threads": torch.get_num_threads(),
            "asr_window": getattr(rec._asr, "window", None) if asr else None}


def child_cold(bundle: str, audio: str, serve_n: int = 0, serve_audios: Sequence[str] = (),
               preload: bool = True) -> dict:
    """Cold start along the app's path (app.py): imports, `load_recognizer(bundle)` with the
    defaults, `rec.preload()` (ASR load + warm-up in a background thread), then the first
    prediction with ASR at once (a first request that arrives while the ASR may still be loading
    waits for it); then, with `serve_n`, go on serving (see child_serve) in the same process."""
    t0 = time.perf_counter()
    import emodemo  # noqa: F401
    from emodemo import recognizer  # noqa: F401  (torch, torchaudio, transformers)
    t1 = time.perf_counter()
    rec = load(bundle)
    th = rec.preload() if preload else None
    t2 = time.perf_counter()
    p = rec.predict(audio)
    t3 = time.perf_counter()
    out = {"import": t1 - t0, "load": t2 - t1, "first_predict": t3 - t2, "done_wall": time.time(),
           "label": p.label, "rss_mb": rss_mb(), "maxrss_mb": maxrss_mb(), "preload": preload,
           "torch_threads": rec.threads}
    if th is not None:
        th.join()
        out["preload_done_after_load"] = time.perf_counter() - t2
    if serve_n:
        out["serving"] = serve(rec, serve_audios, serve_n)
    return out


def child_serve(bundle: str, audios: Sequence[str], n: int) -> dict:
    """Serving: load, then `n` predictions with ASR over clips of mixed length; peak RSS."""
    return serve(load(bundle), audios, n)


def serve(rec, audios: Sequence[str], n: int) -> dict:
    rss_load = rss_mb()
    times = []
    for i in range(n):
        t = time.perf_counter()
        rec.predict(audios[i % len(audios)])
        times.append(time.perf_counter() - t)
    return {"n": n, "rss_after_load_mb": rss_load, "rss_end_mb": rss_mb(), "maxrss_mb": maxrss_mb(),
            "predict": summary(times)}


def run_child(args: list[str], timeout: float = 600) -> dict:
    """Run `run.py child ...` in a fresh interpreter and parse its last stdout line as JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", *args]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    wall = time.time() - t0
    if r.returncode != 0:
        raise RuntimeError(f"benchmark child {args[:1]} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["process_wall"] = wall
    out["launched_wall"] = t0
    return out


def long_audio(bundle: str, corpus: np.ndarray, minutes: Sequence[float], asr: bool, work: Path,
               before: bool = False) -> list[dict]:
    """One fresh process per file (see child_long); `before`: the before-fixes variant."""
    warm = write_wav(work / "warm12s.wav", clip(corpus, 12.0, 7.0))
    rows = []
    for m in minutes:
        path = work / f"long_{m:g}min.wav"
        if not path.exists():
            write_wav(path, clip(corpus, m * 60))
        rows.append(run_child(["long", bundle, str(path), str(int(asr)), str(warm), str(int(before))]))
    return rows


def cold_start(bundle: str, audio: Path, reps: int, serve_n: int = 0, serve_audios: Sequence[Path] = ()) -> dict:
    """Cold start `reps` times; the first run then goes on serving `serve_n` predictions."""
    runs = []
    for i in range(reps):
        n = serve_n if i == 0 else 0
        r = run_child(["cold", bundle, str(audio), str(n), *map(str, serve_audios if n else [])])
        r["to_first_prediction"] = r["done_wall"] - r["launched_wall"]
        runs.append(r)
    tot = [r["to_first_prediction"] for r in runs]
    med = sorted(runs, key=lambda r: r["to_first_prediction"])[len(runs) // 2]
    return {"to_first_prediction": summary(tot), "breakdown": {k: med[k] for k in ("import", "load", "first_predict")},
            "rss_mb": med["rss_mb"], "preload": med.get("preload"),
            "preload_done_after_load": med.get("preload_done_after_load"),
            "note": "app path: load_recognizer() defaults + rec.preload(); warm page cache (files read before)",
            "serving": runs[0].get("serving")}


# ---- 6. batch CLI --------------------------------------------------------------------------
def steady_rate(stamps: Sequence[float], first_burst: int = 1) -> Optional[float]:
    """Steady-state outputs/s from the times output lines appeared. Batched output comes in bursts:
    the first `first_burst` lines (the first batch) appear together once it is done, so the rate
    counts the lines after that burst over the time from its last line to the last line."""
    k = max(1, min(first_burst, len(stamps)))
    if len(stamps) <= k or stamps[-1] <= stamps[k - 1]:
        return None
    return (len(stamps) - k) / (stamps[-1] - stamps[k - 1])


def cli_throughput(bundle: str, files: Sequence[Path], asr: bool, variant: str = "after") -> dict:
    """`python -m emodemo predict --json [--no-asr] FILES`: total and steady-state clips/s.
    variant "after": the CLI's defaults (batches of `CLI_BATCH_SIZE` audio-only, default torch
    threads); "before": `CLI_BEFORE_ARGS` (one clip at a time, `BEFORE_TORCH_THREADS` threads)."""
    cmd = [sys.executable, "-m", "emodemo", "predict", "--json", "--bundle", bundle]
    if not asr:
        cmd.append("--no-asr")
    batch = CLI_BATCH_SIZE
    if variant == "before":
        cmd += list(CLI_BEFORE_ARGS)
        batch = int(CLI_BEFORE_ARGS[CLI_BEFORE_ARGS.index("--batch-size") + 1])
    cmd += [str(f) for f in files]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    stamps = []
    for line in proc.stdout:
        if line.startswith("{"):
            stamps.append(time.perf_counter() - t0)
    err = proc.stderr.read()
    proc.wait()
    total = time.perf_counter() - t0
    if proc.returncode != 0 or len(stamps) != len(files):
        raise RuntimeError(f"CLI failed ({proc.returncode}, {len(stamps)}/{len(files)} outputs): {err[-2000:]}")
    # with ASR every clip is transcribed (and printed) on its own; audio-only prints per batch
    first_burst = 1 if asr else batch
    return {"clips": len(files), "asr": asr, "variant": variant,
            "args": " ".join(CLI_BEFORE_ARGS) if variant == "before" else "(defaults)",
            "total_s": total, "startup_s": stamps[0], "first_burst": min(first_burst, len(stamps)),
            "clips_per_s_total": len(files) / total, "clips_per_s_steady": steady_rate(stamps, first_burst)}


# ---- report --------------------------------------------------------------------------------
def _ms(x: Optional[float]) -> str:
    return "–" if x is None else (f"{x * 1000:.1f}" if x < 0.1 else f"{x * 1000:.0f}")


def _num(x: Optional[float]) -> str:
    if x is None:
        return "–"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def _f(x: Optional[float], fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def evaluate_targets(res: dict) -> dict:
    """Target → {value, threshold, met}; missing measurements give value None. Every target is
    judged on the package as it is (the "after" rows: defaults), never on a "before" row."""
    val: dict[str, Optional[float]] = {k: None for k in TARGETS}
    ba = {r["seconds"]: r for r in res.get("before_after", [])}
    lat = {r["seconds"]: r for r in res.get("latency", [])}
    if 5.0 in ba and "e2e_after" in ba[5.0]["timings"]:
        val["e2e_5s"] = ba[5.0]["timings"]["e2e_after"]["median"]
    elif 5.0 in lat:                     # the latency section also runs the defaults
        val["e2e_5s"] = lat[5.0]["e2e"]["median"]
    for p in res.get("peers", []):
        if p["seconds"] == 5.0:
            val["audio_vs_wav2vec2"] = p["ratio"].get("wav2vec2-base")
    after = [r for r in res.get("long_audio", []) if r.get("variant", "after") == "after"]
    longs = [r for r in after if not r["asr"]]
    if longs:
        big = max(longs, key=lambda r: r["minutes"])
        val["long_rtf"] = big["rtf"]
        val["long_flat_mb"] = big["growth_mb"] - big["audio_mb"]
    with_asr = [r for r in after if r["asr"]]
    if with_asr:
        val["long_rtf_asr"] = max(with_asr, key=lambda r: r["minutes"])["rtf"]
    if res.get("cold_start"):
        val["cold_start"] = res["cold_start"]["to_first_prediction"]["median"]
    if res.get("serving"):
        val["serve_rss"] = res["serving"]["maxrss_mb"]
    for c in res.get("cli", []):
        if not c["asr"] and c.get("variant", "after") == "after":
            val["cli_audio"] = c["clips_per_s_steady"]
    out = {}
    for k, (desc, op, thr) in TARGETS.items():
        v = val[k]
        met = None if v is None else (v <= thr if op == "<=" else v >= thr)
        out[k] = {"target": desc, "op": op, "threshold": thr, "value": v, "met": met}
    return out


def _head(*columns: str) -> list[str]:
    """A markdown table's header row and its separator."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def render_markdown(res: dict) -> str:
    """All result tables as markdown (also what README.md's results block holds)."""
    m = res.get("machine", {})
    env = m.get("env") or {}
    L = [f"**{res.get('mode', '?')} run, {m.get('date', '?')}** — {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
         f"torch {m.get('torch', '?')} (emodemo runs {m.get('emodemo_torch_threads', '?')} thread(s); torch's default "
         f"{m.get('torch_threads', '?')}), ASR threads {m.get('asr_threads', '?')}, "
         f"ctranslate2 {m.get('ctranslate2', '?')}; bundle `{res.get('bundle', '?')}` ({res.get('bundle_note', '')})"
         + ("; env " + ", ".join(f"`{k}={v}`" for k, v in env.items()) if env else "") + ".",
         ""]
    busy = m.get("contention") or []
    load0 = (m.get("load_avg_start") or [0.0])[0]
    samples = m.get("contention_samples") or []
    n_busy = sum(bool(s["busy"]) for s in samples)
    if busy:
        L += [f"⚠ Other CPU-heavy processes ran during {n_busy} of {len(samples)} checks between sections: "
              + "; ".join(f"`{c}`" for c in busy) + ". Absolute numbers are pessimistic where they overlapped; "
              "interleaved ratios are still valid.", ""]
    else:
        L += [f"No other CPU-heavy process seen in {len(samples)} checks between sections "
              f"(1-min load average at start {load0:.1f}).", ""]
    tg = res.get("targets") or evaluate_targets(res)
    L += _head("target", "goal", "measured", "met")
    for t in tg.values():
        v = t["value"]
        L.append(f"| {t['target']} | {t['op']} {t['threshold']:g} | {_num(v)} | "
                 f"{'–' if t['met'] is None else ('yes' if t['met'] else '**no**')} |")
    if res.get("latency"):
        L += ["", "Latency per clip (median ms; RTF = end to end / clip length)", "",
              *_head("clip", "audio branch", "ASR", "text branch", "fusion", "end to end", "RTF",
                     "audio-only e2e", "RTF audio-only")]
        for r in res["latency"]:
            L.append(f"| {r['seconds']:g} s | {_ms(r['audio']['median'])} | {_ms(r['asr']['median'])} | "
                     f"{_ms(r['text']['median'])} | {_ms(r['fusion']['median'])} | {_ms(r['e2e']['median'])} | "
                     f"{r['rtf']:.3f} | {_ms(r['e2e_audio_only']['median'])} | {r['rtf_audio_only']:.4f} |")
    if res.get("peers"):
        names = [k for k in res["peers"][0]["ratio"]]
        params = res.get("peer_params", {})
        L += ["", "Audio branch vs peer architectures (random weights, same clip, interleaved; median ms, "
              "ratio = peer / ours)", "",
              *_head("clip", "ours", *(f"{n} ({params.get(n, 0) / 1e6:.0f} M)" for n in names))]
        for p in res["peers"]:
            cells = [f"{_ms(p['timings'][n]['median'])} ({p['ratio'][n]:.1f}×)" for n in names]
            L.append(f"| {p['seconds']:g} s | {_ms(p['timings']['ours']['median'])} | " + " | ".join(cells) + " |")
    if res.get("before_after"):
        ba = res["before_after"]
        tt = ba[0].get("torch_threads", {})
        L += ["", f"Before/after the fixes, same clip, same process, interleaved (median ms). before = "
              f"{tt.get('before', BEFORE_TORCH_THREADS)} torch threads and the old ASR call (30-s window + temperature "
              f"fallback); `asr_30s_t0` = `window=\"30s\"` (temperature 0); after = `load_recognizer()` defaults "
              f"({tt.get('after', '?')} torch thread(s), ASR window `{ba[0].get('asr_window_after', '?')}`)", "",
              *_head("clip", *ba[0]["timings"], "speed-up audio / ASR / e2e")]
        for w in ba:
            sp = w.get("speedup", {})
            L.append(f"| {w['seconds']:g} s | " + " | ".join(_ms(v["median"]) for v in w["timings"].values()) + " | "
                     + " / ".join(f"{sp[k]:.1f}×" if k in sp else "–" for k in ("audio", "asr", "e2e")) + " |")
    if res.get("asr_wer"):
        w = res["asr_wer"]
        L += ["", f"ASR word error rate on {w['sentences']} single espeak sentences: before (30-s window, temperature "
              f"fallback) {w['before']:.1%}, after (clip window) {w['after']:.1%}."]
    if res.get("batch_before_after"):
        b = res["batch_before_after"]
        L += ["", f"Batched audio branch before/after, {b['clips']} × {b['clip_seconds']:g}-s clips, in process, "
              f"interleaved (clips/s; speed-up {b['speedup']:.1f}×; batched vs one-by-one max |Δp| = "
              f"{b['max_abs_diff']:.1e})", "",
              *_head(*b["clips_per_s"]),
              "| " + " | ".join(f"{v:.1f}" for v in b["clips_per_s"].values()) + " |"]
    if res.get("long_audio"):
        L += ["", "Long audio through `predict_segments` (fresh process per file; growth = peak RSS during the "
              "call − RSS before it)", "",
              *_head("audio", "ASR", "variant", "torch threads", "segments", "time (s)", "RTF",
                     "RSS before (MB)", "peak (MB)", "growth (MB)", "decoded audio (MB)",
                     "growth − audio (MB)")]
        for r in res["long_audio"]:
            v = r.get("variant", "after")
            L.append(f"| {r['minutes']:g} min | {'yes' if r['asr'] else 'no'} | {VARIANTS.get(v, v)} | "
                     f"{r.get('torch_threads', '?')} | {r['segments']} | {r['seconds']:.1f} | "
                     f"{r['rtf']:.4f} | {r['rss_before_mb']:.0f} | {r['rss_peak_mb']:.0f} | {r['growth_mb']:.0f} | "
                     f"{r['audio_mb']:.0f} | {r['growth_mb'] - r['audio_mb']:.0f} |")
        bd = [r for r in res["long_audio"] if r.get("breakdown")]
        if bd:
            L += ["", "Where the long-audio memory goes (peak growth of each whole-file step, MB)", "",
                  *_head("audio", "decoded audio", "`load_audio`", "`segment()` energy before",
                         "`frame_energy_db` (after)")]
            seen = set()
            for r in bd:
                if r["minutes"] in seen:
                    continue
                seen.add(r["minutes"])
                b = r["breakdown"]
                L.append(f"| {r['minutes']:g} min | {r['audio_mb']:.0f} | {b['load_audio_mb']:.0f} | "
                         f"{b['segment_energy_before_mb']:.0f} | {b['segment_energy_after_mb']:.0f} |")
    if res.get("cold_start") or res.get("serving"):
        L += ["", "App", "", *_head("measurement", "value")]
        c = res.get("cold_start")
        if c:
            b = c["breakdown"]
            path = {True: "; app path: `load_recognizer()` + `rec.preload()`", False: "; no preload"}.get(c.get("preload"), "")
            L.append(f"| cold start to first prediction (with ASR{path}; median of {c['to_first_prediction']['n']}) | "
                     f"{c['to_first_prediction']['median']:.2f} s (import {b['import']:.2f} s, load {b['load']:.2f} s, "
                     f"first predict {b['first_predict']:.2f} s) |")
        s = res.get("serving")
        if s:
            L.append(f"| serving: RSS after start-up / peak (VmHWM) over {s['n']} more predictions with ASR | "
                     f"{s['rss_after_load_mb']:.0f} MB / {s['maxrss_mb']:.0f} MB |")
            L.append(f"| serving: prediction latency (mixed 1–15 s clips, median) | {_ms(s['predict']['median'])} ms |")
    if res.get("cli"):
        L += ["", "Batch CLI (`python -m emodemo predict --json ...`, 3-s clips; start-up = time to the first "
              "output line, which audio-only comes after the first batch)", "",
              *_head("mode", "variant", "options", "clips", "total (s)", "start-up (s)",
                     "clips/s incl. start-up", "clips/s steady")]
        for c in res["cli"]:
            v = c.get("variant", "after")
            L.append(f"| {'with ASR' if c['asr'] else '--no-asr'} | {v} | {c.get('args', '')} | {c['clips']} | "
                     f"{c['total_s']:.1f} | {c['startup_s']:.1f} | {c['clips_per_s_total']:.1f} | "
                     f"{_f(c['clips_per_s_steady'], '.1f')} |")
    if res.get("profile"):
        pr = res["profile"]
        L += ["", "<details><summary>Profiles (5-s clip): torch.profiler, 3 calls each; ASR time split (s)</summary>", "",
              "```", "audio branch", pr["audio_branch"], "text branch", pr["text_branch"], "```", "",
              "```json", json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                     for k, v in pr["asr_split"].items()}, indent=1), "```", "", "</details>"]
    if res.get("skipped"):
        L += ["", "Skipped: " + "; ".join(res["skipped"])]
    return "\n".join(L) + "\n"


def update_readme(md: str, readme: Path = HERE / "README.md") -> None:
    """Replace the block between the results markers of README.md with `md`."""
    text = readme.read_text() if readme.exists() else f"# emodemo benchmarks\n\n{README_START}\n{README_END}\n"
    if README_START not in text:
        text += f"\n{README_START}\n{README_END}\n"
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1] if README_END in rest else ""
    readme.write_text(f"{head}{README_START}\n{md}{README_END}{tail}")


# ---- profiles (--profile) ------------------------------------------------------------------
def profile(rec, wav: np.ndarray) -> dict:
    """torch.profiler tables for the audio branch and text branch, and a stage split of ASR."""
    import torch
    from torch.profiler import ProfilerActivity, profile as tprof
    out = {}
    transcript = rec.transcribe(wav)
    for name, fn in (("audio_branch", lambda: rec.audio_proba(wav)),
                     ("text_branch", lambda: rec.text_proba([transcript]))):
        fn()
        with tprof(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fn()
        out[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    out["asr_split"] = asr_split(rec, wav)
    out["threads"] = torch.get_num_threads()
    return out


def asr_split(rec, wav: np.ndarray) -> dict:
    """Where ASR time goes: mel features, encoder on the padded 30-s window vs the clip alone,
    decoder (generate) with the default temperature fallback vs temperature 0."""
    import ctranslate2
    from faster_whisper.audio import pad_or_trim
    m = rec.asr.model
    feats = m.feature_extractor(np.asarray(wav, np.float32))
    res = {"frames": int(feats.shape[-1])}
    res["features"] = timeit(lambda: m.feature_extractor(np.asarray(wav, np.float32)), 3)["median"]
    padded = np.ascontiguousarray(pad_or_trim(feats[:, :3000])[None].astype(np.float32))
    short = np.ascontiguousarray(feats[None, :, :3000].astype(np.float32))
    enc = lambda x: m.model.encode(ctranslate2.StorageView.from_array(x), to_cpu=True)  # noqa: E731
    res["encoder_30s_window"] = timeit(lambda: enc(padded), 3)["median"]
    res["encoder_clip_only"] = timeit(lambda: enc(short), 3)["median"]
    kw = dict(language="en", beam_size=1, condition_on_previous_text=False, vad_filter=False,
              without_timestamps=True)
    for name, extra in (("transcribe_default_fallback", {}), ("transcribe_temperature0", {"temperature": 0.0})):
        res[name] = timeit(lambda: list(m.transcribe(np.asarray(wav, np.float32), **kw, **extra)[0]), 3)["median"]
    return res


# ---- main ----------------------------------------------------------------------------------
def run(quick: bool, out_dir: Path, bundle_arg: Optional[str], sections: Sequence[str], do_profile: bool) -> dict:
    P = QUICK if quick else FULL
    t_start = time.perf_counter()
    bundle, note = resolve_bundle(bundle_arg)
    busy = ContentionLog()
    busy.sample("start")
    res: dict = {"mode": "quick" if quick else "full", "machine": machine_info(), "bundle": bundle,
                 "bundle_note": note, "params": P, "skipped": []}
    work = Path(tempfile.mkdtemp(prefix="emodemo-bench-"))
    def log(*a):
        print(f"[{time.perf_counter() - t_start:6.1f}s]", *a, flush=True)
        others = busy.sample(str(a[0])[:40] if a else "")
        if others:
            print("          busy meanwhile:", "; ".join(others), flush=True)
    try:
        log("generating espeak-ng speech ...")
        corpus = speech_corpus(cache=Path(tempfile.gettempdir()) / "emodemo-bench-speech.npy")
        log(f"corpus: {corpus.size / SR:.0f} s of speech")
        rec = None
        if {"latency", "peers", "before_after"} & set(sections) or do_profile:
            rec = load(bundle)
            res["bundle_config"] = {k: rec.config.get(k) for k in ("speech", "text", "asr")}
        if "latency" in sections:
            res["latency"] = []
            for sec in P["lengths"]:
                res["latency"].append(latency(rec, clip(corpus, sec, 3.0), P["reps"][sec]))
                r = res["latency"][-1]
                log(f"latency {sec:>3} s: audio {_ms(r['audio']['median'])} ms, asr {_ms(r['asr']['median'])} ms, "
                    f"e2e {_ms(r['e2e']['median'])} ms, rtf {r['rtf']:.3f}")
        if "peers" in sections:
            peers = build_peers()
            res["peer_params"] = {"ours": n_params(rec.speech), **{k: n_params(m) for k, m in peers.items()}}
            res["peers"] = []
            for sec in P["peer_lengths"]:
                res["peers"].append(compare_peers(rec.audio_proba, peers, clip(corpus, sec, 3.0), P["peer_reps"]))
                log(f"peers {sec} s: " + ", ".join(f"{k} {v:.1f}x" for k, v in res["peers"][-1]["ratio"].items()))
            del peers
            gc.collect()
        if "before_after" in sections:
            res["before_after"] = []
            for sec in P["ba_lengths"]:
                w = before_after(rec, clip(corpus, sec, 3.0), P["ba_reps"])
                res["before_after"].append(w)
                log(f"before/after {sec} s: " + ", ".join(f"{k} {_ms(v['median'])}" for k, v in w["timings"].items()))
            if P["wer_check"]:
                res["asr_wer"] = asr_accuracy(rec)
                log(f"ASR WER on espeak sentences: {res['asr_wer']}")
            res["batch_before_after"] = batch_before_after(
                rec, [clip(corpus, 3.0, 3.1 * i) for i in range(P["batch_clips"])], min(3, P["ba_reps"]))
            log("batch before/after (clips/s): " + ", ".join(
                f"{k} {v:.1f}" for k, v in res["batch_before_after"]["clips_per_s"].items()))
        if do_profile:
            log("profiling ...")
            res["profile"] = profile(rec, clip(corpus, 5.0, 3.0))
            for k in ("audio_branch", "text_branch"):
                print(res["profile"][k])
            print(json.dumps(res["profile"]["asr_split"], indent=1))
        del rec
        gc.collect()
        if "long" in sections:
            res["long_audio"] = long_audio(bundle, corpus, P["long_minutes"], False, work)
            log("long audio-only: " + ", ".join(f"{r['minutes']:g} min rtf {r['rtf']:.4f} growth {r['growth_mb']:.0f} MB"
                                                 for r in res["long_audio"]))
            if P["long_asr_minutes"]:
                asr_rows = long_audio(bundle, corpus, P["long_asr_minutes"], True, work)
                res["long_audio"] += asr_rows
                log("long with ASR: " + ", ".join(f"{r['minutes']:g} min rtf {r['rtf']:.4f} growth {r['growth_mb']:.0f} MB"
                                                   for r in asr_rows))
            if P["long_before_minutes"]:
                rows = long_audio(bundle, corpus, P["long_before_minutes"], True, work, before=True)
                res["long_audio"] += rows
                log("long with ASR, before the fixes: " + ", ".join(f"{r['minutes']:g} min rtf {r['rtf']:.4f}" for r in rows))
        if "app" in sections:
            five = write_wav(work / "clip5s.wav", clip(corpus, 5.0, 3.0))
            mixed = [write_wav(work / f"serve_{i}.wav", clip(corpus, s, 11.0 * i))
                     for i, s in enumerate([1, 5, 15, 3, 8, 2])]
            res["cold_start"] = cold_start(bundle, five, P["cold_reps"], P["serve_n"], mixed)
            res["serving"] = res["cold_start"].pop("serving")
            log(f"cold start: {res['cold_start']['to_first_prediction']['median']:.2f} s; "
                f"serving: max RSS {res['serving']['maxrss_mb']:.0f} MB")
        if "cli" in sections:
            d = work / "clips"
            d.mkdir()
            files = [write_wav(d / f"clip_{i:03d}.wav", clip(corpus, 3.0, 3.1 * i)) for i in range(P["cli_clips"])]
            res["cli"] = [cli_throughput(bundle, files, asr=False)]
            log(f"cli --no-asr, after (defaults): {res['cli'][-1]['clips_per_s_steady'] or 0:.1f} clips/s steady")
            if P["cli_before_clips"]:
                res["cli"].append(cli_throughput(bundle, files[:P["cli_before_clips"]], asr=False, variant="before"))
                log(f"cli --no-asr, before ({' '.join(CLI_BEFORE_ARGS)}): "
                    f"{res['cli'][-1]['clips_per_s_steady'] or 0:.1f} clips/s steady")
            if P["cli_asr_clips"]:
                res["cli"].append(cli_throughput(bundle, files[:P["cli_asr_clips"]], asr=True))
                log(f"cli with ASR, after (defaults): {res['cli'][-1]['clips_per_s_steady'] or 0:.1f} clips/s steady")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["machine"]["load_avg_end"] = list(os.getloadavg())
    res["machine"]["contention"] = busy.seen
    res["machine"]["contention_samples"] = busy.samples
    res["total_s"] = time.perf_counter() - t_start
    res["targets"] = evaluate_targets(res)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    md = render_markdown(res)
    (out_dir / "results.md").write_text(md)
    if not quick and out_dir.resolve() == HERE and set(sections) == set(ALL_SECTIONS):
        update_readme(md)
    print("\n" + md)
    log(f"done; wrote {out_dir / 'results.json'}")
    return res


ALL_SECTIONS = ("latency", "peers", "before_after", "long", "app", "cli")
SECTION_ALIASES = {"whatif": "before_after"}      # the section's name before the fixes were applied


def parse_sections(only: str) -> list[str]:
    """`--only` value → section names (aliases resolved, duplicates dropped); ValueError for
    unknown names."""
    out: list[str] = []
    for name in only.split(","):
        name = SECTION_ALIASES.get(name.strip(), name.strip())
        if name and name not in out:
            out.append(name)
    bad = set(out) - set(ALL_SECTIONS)
    if bad:
        raise ValueError(f"unknown sections {sorted(bad)}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "child":
        kind, rest = argv[1], argv[2:]
        if kind == "long":
            out = child_long(rest[0], rest[1], rest[2] == "1", rest[3], before=len(rest) > 4 and rest[4] == "1")
        elif kind == "cold":
            out = child_cold(rest[0], rest[1], int(rest[2]) if len(rest) > 2 else 0, rest[3:])
        elif kind == "serve":
            out = child_serve(rest[0], rest[2:], int(rest[1]))
        else:
            raise SystemExit(f"unknown child {kind}")
        print(json.dumps(out, default=float))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (< 2 min)")
    p.add_argument("--out", default=str(HERE), help="folder for results.json / results.md (default: benchmarks/)")
    p.add_argument("--bundle", default=None, help="model bundle (default: models/default, else /tmp/bundle_v1)")
    p.add_argument("--only", default=",".join(ALL_SECTIONS),
                   help=f"comma-separated sections to run: {','.join(ALL_SECTIONS)} "
                        f"({', '.join(f'{k} = {v}' for k, v in SECTION_ALIASES.items())})")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables and an ASR time split")
    a = p.parse_args(argv)
    try:
        sections = parse_sections(a.only)
    except ValueError as exc:
        p.error(str(exc))
    run(a.quick, Path(a.out), a.bundle, sections, a.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
