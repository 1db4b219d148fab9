"""Measurements that need a fresh process each: long audio through the timeline, cold start and
serving along the app's path, and the batch CLI. `run.py child ...` runs the child side."""
from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bench_before import BeforeASR
from bench_common import BEFORE_TORCH_THREADS, CLI_BATCH_SIZE, CLI_BEFORE_ARGS, HERE, ROOT, SR
from bench_corpus import clip, write_wav
from bench_inprocess import load
from bench_system import PeakRSS, maxrss_mb, rss_mb
from bench_timing import summary


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
        rec.asr = BeforeASR.of(rec.asr)
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
            "asr_window": getattr(rec.loaded_asr, "window", None) if asr else None}


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
    cmd = [sys.executable, str(HERE / "run.py"), "child", *args]
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

