"""Speech found by the VAD vs by loudness, on espeak-ng sentences with known speech positions.

    python benchmarks/bench_vad.py                    # ~2 min on the 2-core box; writes benchmarks/vad_results.json
    python benchmarks/bench_vad.py --quick            # fewer sentences and recordings (~30 s)
    python benchmarks/bench_vad.py --out /tmp/vad.json --no-speed

It prints the markdown tables of benchmarks/README.md ("Speech found by a VAD").

Ground truth: each sentence is synthesised alone, and its speech runs from its first to its last
10-ms frame within 40 dB of its loudest (the clean signal). Noise (white, or pink = 1/f power) is
added at an SNR measured against the speech's own power over that span: clean, 20, 10, 5, 0 dB.

* trimming: every sentence with 0.5-2 s of silence before and after (random), cut by
  `audio.trim_silence(pad=0, method=...)`; boundary error = |estimated - true| start and end (s),
  frame F1 = 10-ms frames kept vs frames of the true span.
* segmentation: recordings of 6 sentences (each sentence in 3 recordings, shuffled; one voice
  per sentence, 0.4-1.2 s pauses, 1 s of silence at
  both ends), `audio.segment(max_len=10, method=...)`; a recording is right when it gives one
  segment per sentence, each sentence whole (within 0.05 s, or loosely 0.3 s, at each end) inside
  its own segment and nothing of its neighbours; frame F1 = frames inside segments vs frames
  inside sentence spans.
* speed: `vad.speech_spans` and energy trimming on one 5-s clip (median of 20 after a warm-up),
  next to the default bundle's audio branch (`rec.audio_proba`, median of 10) on the same clip,
  and the VAD on 10 minutes of audio (real-time factor).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import HERE, ROOT, SR  # noqa: E402
from bench_corpus import PASSAGE, VOICES, espeak  # noqa: E402

from emodemo import audio as A, vad  # noqa: E402

SNRS = [None, 20, 10, 5, 0]           # None = clean
NOISES = ["white", "pink"]
METHODS = ["energy", "vad"]
TOLS = (0.05, 0.3)                    # s: a segment holds a sentence "whole" within this (strict, loose)


def true_span(wav: np.ndarray) -> tuple[float, float]:
    """First and last 10-ms frame of a clean sentence within 40 dB of its loudest (s)."""
    e = A.frame_energy_db(wav, SR // 100)
    on = np.flatnonzero(e > e.max() - 40)
    return on[0] / 100, (on[-1] + 1) / 100


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power white or pink (power falling as 1/f) noise."""
    x = rng.standard_normal(n)
    if kind == "pink":
        spec = np.fft.rfft(x)
        f = np.fft.rfftfreq(n, 1 / SR)
        spec[1:] /= np.sqrt(f[1:])
        spec[0] = 0
        x = np.fft.irfft(spec, n)
    return (x / x.std()).astype(np.float32)


def add_noise(wav: np.ndarray, spans, snr_db, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`wav` plus `kind` noise at `snr_db` below the mean power of the speech inside `spans`."""
    if snr_db is None:
        return wav
    speech = np.concatenate([wav[int(a * SR):int(b * SR)] for a, b in spans])
    power = float(np.mean(speech.astype(np.float64) ** 2))
    return (wav + noise(kind, wav.size, rng) * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32)


def frames(spans, total: float) -> np.ndarray:
    """Boolean 10-ms frame mask of the given spans."""
    m = np.zeros(int(round(total * 100)), bool)
    for a, b in spans:
        m[int(round(a * 100)):int(round(b * 100))] = True
    return m


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.sum(pred & truth))
    return 2 * tp / max(1.0, float(pred.sum() + truth.sum()))


def sentences(n: int) -> list[tuple[np.ndarray, tuple[float, float]]]:
    out = []
    for k, text in enumerate(PASSAGE[:n]):
        voice, speed = VOICES[k % len(VOICES)]
        w = espeak(text, voice, speed)
        out.append((w, true_span(w)))
    return out


def trim_case(w, span, snr, kind, rng) -> dict:
    lead, tail = rng.uniform(0.5, 2.0, 2)
    x = np.concatenate([np.zeros(int(lead * SR), np.float32), w, np.zeros(int(tail * SR), np.float32)])
    truth = (lead + span[0], lead + span[1])
    y = add_noise(x, [truth], snr, kind, rng)
    total, out = y.size / SR, {}
    for m in METHODS:
        cut = A.trim_silence(y, pad=0.0, method=m)
        a = _offset(y, cut) / SR
        b = a + cut.size / SR
        out[m] = {"start_err": abs(a - truth[0]), "end_err": abs(b - truth[1]),
                  "f1": f1(frames([(a, b)], total), frames([truth], total))}
    return out


def _offset(whole: np.ndarray, view: np.ndarray) -> int:
    """Where a slice (a view, as trim_silence returns) starts inside `whole`, in samples."""
    return (view.__array_interface__["data"][0] - whole.__array_interface__["data"][0]) // whole.itemsize


def recording(parts, rng) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Sentences joined with 0.4-1.2 s pauses and 1 s of silence at both ends, and their spans."""
    chunks, spans, t = [np.zeros(SR, np.float32)], [], 1.0
    for k, (w, (a, b)) in enumerate(parts):
        spans.append((t + a, t + b))
        pause = rng.uniform(0.4, 1.2) if k + 1 < len(parts) else 1.0
        chunks += [w, np.zeros(int(pause * SR), np.float32)]
        t += (w.size + int(pause * SR)) / SR
    return np.concatenate(chunks), spans


def aligned(segs, spans, tol: float) -> bool:
    """One segment per sentence, each holding its sentence whole (within `tol` s at each end) and
    nothing of its neighbours."""
    if len(segs) != len(spans):
        return False
    for k, (s, (a, b)) in enumerate(zip(segs, spans)):
        if s.start > a + tol or s.end < b - tol:
            return False
        if (k + 1 < len(spans) and s.end > spans[k + 1][0]) or (k and s.start < spans[k - 1][1]):
            return False
    return True


def segment_case(wav, spans, snr, kind, rng) -> dict:
    y = add_noise(wav, spans, snr, kind, rng)
    total, out = y.size / SR, {}
    for m in METHODS:
        segs = A.segment(y, max_len=10.0, method=m)
        out[m] = {"n": len(segs), "count_right": len(segs) == len(spans),
                  "right": aligned(segs, spans, TOLS[0]), "right_0.3s": aligned(segs, spans, TOLS[1]),
                  "f1": f1(frames([(s.start, s.end) for s in segs], total), frames(spans, total))}
    return out


def summarise(rows: list[dict], keys) -> dict:
    """Per method: the median / 90th percentile / mean of each key over the rows."""
    out = {}
    for m in METHODS:
        d = {}
        for k, how in keys:
            v = np.array([float(r[m][k]) for r in rows])
            d[k] = float(np.percentile(v, 90)) if how == "p90" else float(v.mean() if how == "mean" else np.median(v))
        if "start_err" in rows[0][m]:
            d["within_0.3s"] = float(np.mean([max(r[m]["start_err"], r[m]["end_err"]) <= 0.3 for r in rows]))
        out[m] = d
    return out


def accuracy(clips, recs, seed: int = 0) -> list[dict]:
    """One row per (noise, SNR): trimming and segmentation summaries for both methods."""
    table = []
    for kind in NOISES:
        for snr in SNRS:
            if snr is None and kind != NOISES[0]:
                continue
            rng = np.random.default_rng(seed)
            trims = [trim_case(w, span, snr, kind, rng) for w, span in clips]
            segs = [segment_case(wav, spans, snr, kind, rng) for wav, spans in recs]
            trim = summarise(trims, [("start_err", "median"), ("end_err", "median"), ("f1", "mean")])
            for m in METHODS:
                trim[m]["end_err_p90"] = float(np.percentile([max(r[m]["start_err"], r[m]["end_err"]) for r in trims], 90))
            row = {"noise": "clean" if snr is None else kind, "snr_db": snr, "trim": trim,
                   "segment": summarise(segs, [("count_right", "mean"), ("right", "mean"), ("right_0.3s", "mean"),
                                               ("f1", "mean"), ("n", "mean")])}
            table.append(row)
            print(f"{row['noise']:>5} {str(snr):>4} dB  trim F1 " +
                  " ".join(f"{m} {trim[m]['f1']:.3f}" for m in METHODS) + "  segments right " +
                  " ".join(f"{m} {row['segment'][m]['right']:.2f}" for m in METHODS), flush=True)
    return table


def median_time(fn, n: int) -> float:
    fn()
    runs = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def speed(clip5: np.ndarray, long_wav: np.ndarray) -> dict:
    from emodemo.recognizer import load_recognizer
    rec = load_recognizer()
    out = {"vad_5s": median_time(lambda: vad.speech_spans(clip5), 20),
           "energy_trim_5s": median_time(lambda: A.trim_silence(clip5), 20),
           "audio_branch_5s": median_time(lambda: rec.audio_proba(clip5), 10),
           "vad_segment_10min": median_time(lambda: A.segment(long_wav, method="vad"), 2),
           "energy_segment_10min": median_time(lambda: A.segment(long_wav, method="energy"), 2)}
    out["vad_over_audio_branch"] = out["vad_5s"] / out["audio_branch_5s"]
    out["vad_rtf_10min"] = out["vad_segment_10min"] / (long_wav.size / SR)
    print(" ".join(f"{k} {v:.4f}" for k, v in out.items()), flush=True)
    return out


def markdown(result: dict) -> str:
    """The README tables: trimming and segmentation per noise condition, energy | VAD; speed."""
    lines = ["| noise | trim start / end error, median (s) | trim worse end, 90th pct (s) | trim within 0.3 s "
             "| trim frame F1 | segments: count right | right (0.05 s) | right (0.3 s) | segment frame F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["accuracy"]:
        t, g = row["trim"], row["segment"]
        pair = lambda d, k, f: " \u2192 ".join(format(d[m][k], f) for m in METHODS)  # noqa: E731
        errs = " \u2192 ".join(f"{t[m]['start_err']:.2f} / {t[m]['end_err']:.2f}" for m in METHODS)
        name = "clean" if row["snr_db"] is None else f"{row['noise']} {row['snr_db']} dB"
        lines.append(f"| {name} | {errs} | {pair(t, 'end_err_p90', '.2f')} | {pair(t, 'within_0.3s', '.0%')} | "
                     f"{pair(t, 'f1', '.3f')} | {pair(g, 'count_right', '.0%')} | {pair(g, 'right', '.0%')} | "
                     f"{pair(g, 'right_0.3s', '.0%')} | {pair(g, 'f1', '.3f')} |")
    sp = result.get("speed")
    if sp:
        lines += ["", "| step | time |", "|---|---|",
                  f"| `vad.speech_spans`, 5-s clip | {sp['vad_5s'] * 1000:.1f} ms |",
                  f"| energy trimming, 5-s clip | {sp['energy_trim_5s'] * 1000:.2f} ms |",
                  f"| audio branch (`rec.audio_proba`, default bundle), same clip | {sp['audio_branch_5s'] * 1000:.0f} ms |",
                  f"| VAD / audio branch | {sp['vad_over_audio_branch']:.1%} |",
                  f"| `audio.segment`, 10 min: VAD / energy | {sp['vad_segment_10min']:.2f} s / "
                  f"{sp['energy_segment_10min']:.3f} s (VAD RTF {sp['vad_rtf_10min']:.4f}) |"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "vad_results.json")
    args = ap.parse_args(argv)
    n = 12 if args.quick else 24
    clips = sentences(n)
    rng = np.random.default_rng(1)
    recs = []
    for _ in range(3):                   # every sentence in three recordings, in shuffled orders
        order = rng.permutation(n)
        recs += [recording([clips[j] for j in order[i:i + 6]], rng) for i in range(0, n - 5, 6)]
    result = {"sentences": n, "recordings": len(recs), "accuracy": accuracy(clips, recs)}
    if not args.no_speed:
        five = recs[0][0][: 5 * SR]
        tiled = np.tile(np.concatenate([r[0] for r in recs]), 20)[: 600 * SR]
        result["speed"] = speed(five, add_noise(tiled, [(0, 600)], 20, "white", rng))
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return result


if __name__ == "__main__":
    main()
