"""Latency of the audio branch per backbone on a 5-s clip with one torch thread, and of a whole
bundle end to end (ASR + both branches + fusion), measured interleaved so that a busy machine
slows every variant alike (medians of `--reps`).

    python scripts/speech_latency.py --backbones ge2e whisper-tiny ge2e+whisper-tiny --bundles models/default
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_timing import interleaved  # noqa: E402

from emodemo import audio as A  # noqa: E402
from emodemo.bundle import LABELS, build_speech  # noqa: E402


def clip(seconds: float = 5.0) -> np.ndarray:
    """Five seconds of English speech (espeak-ng), padded or cut to exactly `seconds`."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "clip.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path),
                        "I can't believe you did that. This is wonderful news for all of us, thank you."],
                       check=True, capture_output=True)
        wav = A.load_audio(path)
    n = int(seconds * A.SAMPLE_RATE)
    return np.pad(wav, (0, max(0, n - wav.size)))[:n].astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbones", nargs="*", default=["ge2e", "whisper-tiny", "ge2e+whisper-tiny"])
    ap.add_argument("--bundles", nargs="*", default=[])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--wav2vec2", action="store_true", help="also time a random-init wav2vec2-base")
    ap.add_argument("--out", default="runs/latency.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    wav = clip()
    fns = {}
    for name in args.backbones:
        model = build_speech({"labels": LABELS, "speech": {"backbone": name, "source": None}}).eval()

        def run(model=model):
            with torch.inference_mode():
                feats = A.features(model.feature, wav)[None]
                return torch.softmax(model(feats, torch.tensor([feats.shape[1]])), -1)
        fns[f"audio branch: {name}"] = run
    if args.wav2vec2:
        from transformers import Wav2Vec2Config, Wav2Vec2Model
        w2v = Wav2Vec2Model(Wav2Vec2Config()).eval()          # wav2vec2-base architecture, random init
        x = torch.from_numpy(wav)[None]

        def run_w2v():
            with torch.inference_mode():
                return w2v(x).last_hidden_state.mean(1)
        fns["wav2vec2-base (random init)"] = run_w2v
    for path in args.bundles:
        from emodemo import load_recognizer
        rec = load_recognizer(path, threads=1)
        _ = rec.asr
        fns[f"end to end: {path}"] = lambda rec=rec: rec.predict((wav, A.SAMPLE_RATE))
        fns[f"ASR only: {path}"] = lambda rec=rec: rec.transcribe(wav)
    res = interleaved(fns, reps=args.reps, warmup=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    ref = res.get("wav2vec2-base (random init)", {}).get("median")
    for k, v in res.items():
        speedup = f"  {ref / v['median']:5.1f}x faster than wav2vec2-base" if ref and k.startswith("audio") else ""
        print(f"{k:45s} median {v['median'] * 1000:7.1f} ms  min {v['min'] * 1000:7.1f} ms{speedup}")


if __name__ == "__main__":
    main()
