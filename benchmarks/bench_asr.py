"""Latency of the multilingual ASR path, as ratios to a random-init wav2vec2-base forward on the
same 5-s clip in the same process (one torch thread, one CTranslate2 thread), and peak RSS.

    nice -n 5 python benchmarks/bench_asr.py [--reps 7] [--out benchmarks/asr_latency.json]

Rows (each timed round-robin with the wav2vec2 reference, median of --reps after a warm-up):
  wav2vec2-base         Wav2Vec2ForSequenceClassification(Wav2Vec2Config()) forward (reference)
  en (base)             predict() end to end on 5 s of English (language id + transcription).
                        v8 encodes the whole clip and pools its speech span, so ONE encoder pass
                        serves both branches (recognizer `_one_encoder_pass`: the ASR decodes the
                        speech backbone's encoder output); a bundle that trims before its encoder
                        (v7) runs the ASR in a worker thread beside its speech branch instead
  en (base, two passes) the audio branch, then the ASR encoding the clip again (v7's work, one core)
  en (tiny.en)          the same with `--asr tiny.en` (PRESETS["tiny.en"])
  es (base)             5 s of Spanish: language id + transcription + translation (2 decodings
                        of one encoder output)
  es (base, encode x2)  the audio branch, then the ASR encoding once per task (faster-whisper's
                        own path would): what "one encoder pass for everything" saves
  base encoder          one encoder pass of the clip window alone (CTranslate2, int8)
  audio branch          the shipped speech branch alone (torch encoder + head; target >= 5x faster
                        than wav2vec2-base, i.e. <= 0.20x)
Targets (issue #21): en <= 0.45x, non-English with translation <= 0.70x, audio branch <= 0.20x,
peak RSS <= 1.5 GB.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SR = 16000
TEXT = {"en": ("en-us", "I am so happy today, this is wonderful news for all of us, really."),
        "es": ("es", "Estoy muy enojado contigo, no quiero verte nunca más en mi vida.")}


def clip(lang: str, seconds: float = 5.0) -> np.ndarray:
    """`seconds` of espeak-ng speech in `lang` (tiled, cut), 16 kHz."""
    import soundfile as sf
    import torch
    import torchaudio
    voice, text = TEXT[lang]
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["espeak-ng", "-v", voice, "-w", f"{d}/x.wav", text], check=True)
        wav, sr = sf.read(f"{d}/x.wav", dtype="float32")
    wav = torchaudio.functional.resample(torch.from_numpy(wav), sr, SR).numpy()
    n = int(seconds * SR)
    return np.tile(wav, n // wav.size + 1)[:n].astype(np.float32)


SERVE = """
import sys
sys.path.insert(0, {root!r})
from benchmarks.bench_asr import clip, SR
from emodemo import load_recognizer
rec = load_recognizer(threads=1, asr_threads=1)
for lang in ("en", "es") * 5:
    rec.predict((clip(lang, 5.0), SR))
rec.predict((clip("es", 60.0), SR))
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024)
"""


def serving_peak_rss_mb() -> float:
    """Peak RSS (MB) of a fresh process that loads the shipped recognizer and serves ten 5-s
    clips (English, Spanish) and one 60-s Spanish clip with ASR and translation. VmHWM, not
    ru_maxrss: that is carried across fork + exec from this (larger) process (README)."""
    out = subprocess.run([sys.executable, "-c", SERVE.format(root=str(ROOT))], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def round_robin(fns: dict, reps: int) -> tuple[dict, dict]:
    """Median wall seconds and median CPU seconds (all threads of this process) of each function,
    called in turn (A B C, A B C, ...) after one warm-up."""
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(reps):
        for k, f in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return ({k: statistics.median(v) for k, v in wall.items()},
            {k: statistics.median(v) for k, v in cpu.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "asr_latency.json"))
    a = ap.parse_args()
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification
    from emodemo import load_recognizer
    from emodemo.asr import PRESETS, load_asr
    torch.set_num_threads(1)
    en, es = clip("en"), clip("es")
    rss = serving_peak_rss_mb()          # first, in a fresh process
    rec = load_recognizer(threads=1, asr_threads=1)              # the shipped bundle: Whisper base
    tiny = load_recognizer(threads=1, asr=load_asr(PRESETS["tiny.en"], threads=1))
    base = rec.asr
    torch.manual_seed(0)
    w2v = Wav2Vec2ForSequenceClassification(Wav2Vec2Config()).eval()
    x = torch.from_numpy(en)[None]

    def w2v_forward():
        with torch.inference_mode():
            w2v(x)

    def encode_twice():
        mel = base.model.feature_extractor(es)
        base.encode(mel)
        base.recognize_encoded(base.encode(mel), mel.shape[1])

    fns = {"wav2vec2-base": w2v_forward,
           "en (base)": lambda: rec.predict((en, SR)),
           "en (base, two passes)": lambda: (rec.audio_proba(en), rec.recognize(en)),
           "en (tiny.en)": lambda: tiny.predict((en, SR)),
           "es (base)": lambda: rec.predict((es, SR)),
           "es (base, encode x2)": lambda: (rec.audio_proba(es), encode_twice()),
           "base encoder": lambda: base.encode(base.model.feature_extractor(en)),
           "audio branch": lambda: rec.audio_proba(en)}
    med, cpu = round_robin(fns, a.reps)
    ref, cpu_ref = med["wav2vec2-base"], cpu["wav2vec2-base"]
    checks = {"en": rec.predict((en, SR)), "es": rec.predict((es, SR))}
    res = {"seconds": med, "ratio_to_wav2vec2": {k: v / ref for k, v in med.items()},
           "cpu_seconds": cpu, "cpu_ratio_to_wav2vec2": {k: v / cpu_ref for k, v in cpu.items()},
           "targets": {"en (base)": 0.45, "es (base)": 0.70, "audio branch": 0.20, "peak_rss_mb": 1536},
           "peak_rss_mb_serving": rss,
           "outputs": {k: {"transcript": p.transcript, "translation": p.translation,
                           "language": p.language, "asr_trust": p.asr_trust} for k, p in checks.items()},
           "threads": {"torch": 1, "ctranslate2": 1}, "reps": a.reps}
    Path(a.out).write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    for k, v in med.items():
        print(f"{k:<22} {v * 1000:7.0f} ms  {v / ref:5.2f}x   cpu {cpu[k] * 1000:7.0f} ms  "
              f"{cpu[k] / cpu_ref:5.2f}x")
    print(f"peak RSS serving (fresh process, shipped recognizer): {res['peak_rss_mb_serving']:.0f} MB")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
