#!/usr/bin/env python
"""Could a trimming bundle (v7) share the ASR's encoder pass? Compare, on validation speakers only,
the shipped speech branch (the clip trimmed, then encoded) with frames of ONE encoder pass over the
whole clip pooled over the trimmed span only (what a shared pass would give the speech branch).

    nice python scripts/share_encoder_check.py [--per 40] [--config configs/default-v7.json]

Prints per corpus: argmax agreement, mean total-variation distance of the probabilities, and UA
both ways. 2026-12-06, v7, 40 clips per validation spec (seed 0): agreement 0.94 overall, RAVDESS
0.80 (UA 0.625 -> 0.548), CREMA-D and nEMO 1.00: the silence in the attention context changes the
frames, so v7 encoded twice; v8 retrained its head on whole-clip frames (speech.trim "span",
benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from emodemo import audio as A, load_recognizer  # noqa: E402
from emodemo.data import corpus_of, load_spec  # noqa: E402
from emodemo.speech import masked_stats  # noqa: E402
from emodemo.training.metrics import ua  # noqa: E402

ENCODER_HOP = 320          # samples per Whisper encoder frame (10-ms mel hop, stride 2)


@torch.inference_mode()
def both_ways(rec, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shipped audio probabilities, probabilities from the whole clip's pass pooled over the trimmed span)."""
    sp, T = rec.speech, rec.config.speech.temperature
    start, end = A.trim_bounds(wav, method="vad" if sp.trim == "vad" else "energy")
    frames, n, _ = sp.backbone.clip_outputs(A.features(sp.backbone.feature, wav)[None])
    a, b = start // ENCODER_HOP, min(int(n[0]), -(-end // ENCODER_HOP))
    span = frames[:, a:b] if sp.calibration is None else sp.calibration(frames[:, a:b])
    lengths = torch.tensor([b - a])
    logits = sp.head(span, lengths)
    if sp.adapter is not None:
        logits = sp.adapter(masked_stats(span, lengths), logits)
    return rec.audio_proba(wav), torch.softmax(logits / T, -1).double().numpy()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default-v7.json"))
    ap.add_argument("--per", type=int, default=40, help="clips per validation spec")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rec = load_recognizer(threads=1)
    rows, rng = [], random.Random(0)
    for spec in json.loads(Path(a.config).read_text())["speech"]["val"]:
        items = load_spec(spec)
        rng.shuffle(items)
        for it in items[:a.per]:
            wav = A.load_audio(str(it.audio), max_duration=30.0)
            rows.append((corpus_of(it), rec.labels.index(it.label), *both_ways(rec, wav)))
    for c in sorted({r[0] for r in rows}) + ["all"]:
        R = [r for r in rows if c in ("all", r[0])]
        y = np.array([r[1] for r in R])
        shipped, shared = (np.array([int(np.argmax(r[k])) for r in R]) for k in (2, 3))
        tv = np.mean([np.abs(r[2] - r[3]).sum() / 2 for r in R])
        print(f"{c:<14} n={len(R):<4} agreement {np.mean(shipped == shared):.2f}  TV {tv:.3f}  "
              f"UA shipped {ua(y, shipped):.3f}  shared pass {ua(y, shared):.3f}")


if __name__ == "__main__":
    main()
