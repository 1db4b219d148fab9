#!/usr/bin/env python
"""Leave-one-corpus-out base bundles for `queue_benchmark.py` / `adaptation_experiment.py`: the v7
recipe (`configs/default-v7.json`) with every spec of one corpus removed, so the base has never
heard a speaker of that corpus.

    python scripts/loco_base.py nemo                  # writes runs/loco-nemo.json and trains it
    python scripts/loco_base.py emotiontts-ko --config-only

The generated recipe drops every `<corpus>:` spec from speech.train, speech.val,
speech.multicorpus.test and the fusion val/eval sets (only RAVDESS appears there, beside the
espeak-goemotions text sets), turns `loco` off (the per-corpus leave-outs are not needed here) and drops
`card_include`. It writes the bundle to runs/loco-<corpus>/bundle (run dir runs/loco-<corpus>/run).
Then, from the repository root (so the recipe's frozen-feature cache `runs/features` is reused):

    python -m emodemo train --config runs/loco-<corpus>.json          # about 4 min with a warm cache
    python -m emodemo finetune-pack --bundle runs/loco-<corpus>/bundle --per-class 16   # replay pack

the same two steps as the shipped default (its replay pack has 16 clips per class and spec), so
`emodemo finetune --base runs/loco-<corpus>/bundle` replays the base's own training clips.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def loco_recipe(base: dict, corpus: str) -> dict:
    """The recipe `base` without any spec of `corpus`."""
    cfg = copy.deepcopy(base)

    def keep(specs):
        return [s for s in specs if s.split(":", 1)[0] != corpus]

    sp = cfg["speech"]
    sp["train"], sp["val"] = keep(sp["train"]), keep(sp["val"])
    mc = sp.get("multicorpus") or {}
    if "test" in mc:
        mc["test"] = keep(mc["test"])
    mc["loco"] = False
    mc.pop("card_include", None)
    fu = cfg.get("fusion") or {}
    for part in ("val", "eval"):
        if part in fu:
            fu[part] = keep(fu[part])
    if not sp["train"] or not sp["val"]:
        raise SystemExit(f"nothing left to train on without {corpus}")
    cfg["name"] = f"loco-{corpus}"
    cfg["version"] = f"{base.get('version', '')}-loco-{corpus}"
    cfg["run_dir"] = f"runs/loco-{corpus}/run"
    cfg["out"] = f"runs/loco-{corpus}/bundle"
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", help="the corpus left out (a folder of the data root: nemo, emotiontts-ko, ...)")
    ap.add_argument("--recipe", default="configs/default-v7.json")
    ap.add_argument("--per-class", type=int, default=16,
                    help="replay pack: clips per class and spec (as the shipped default's)")
    ap.add_argument("--config-only", action="store_true", help="write runs/loco-<corpus>.json, do not train")
    args = ap.parse_args()
    base = json.loads((ROOT / args.recipe).read_text())
    cfg = loco_recipe(base, args.corpus)
    path = ROOT / "runs" / f"loco-{args.corpus}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)} -> {cfg['out']}", flush=True)
    if args.config_only:
        return 0
    for cmd in (["train", "--config", str(path.relative_to(ROOT))],
                ["finetune-pack", "--bundle", cfg["out"], "--per-class", str(args.per_class)]):
        print("python -m emodemo " + " ".join(cmd), flush=True)
        rc = subprocess.run([sys.executable, "-m", "emodemo", *cmd], cwd=ROOT).returncode
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
