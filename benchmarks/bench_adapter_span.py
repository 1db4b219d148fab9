#!/usr/bin/env python
"""Fine-tuning's adapter search (`finetune.adapt.choose`: 18 settings x (CV folds + 1) L-BFGS fits,
the domain gates and the probe) on the rows' span (`adapt.Span`) against the same search on the
full feature dimension, same process, same features (ratios, never timing asserts;
tests/test_finetune_span.py checks the two give the same adapters).

    python benchmarks/bench_adapter_span.py                   # 128 espeak-ng corrections, ~5 min
    python benchmarks/bench_adapter_span.py --sentences 16 --reps 1 --out /tmp/span.json

The corrections are the espeak-ng store of bench_finetune_cache.py (prosody codes the label);
their features and the replay pack come from the shipped default (models/default) through the
fine-tune's own steps (load_base, prepare_audio, extract_features), no training data on disk.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_finetune_cache import VOICES, add_clips  # noqa: E402
from benchmarks.finetune_progress import SENTENCES  # noqa: E402


def features(work: Path, sentences: int):
    """The fine-tune's run object after its feature step, on a fresh espeak-ng store."""
    from emodemo.finetune import adapt as AD
    from emodemo.finetune import pipeline as P
    from emodemo.finetune.options import FinetuneOptions, FinetuneRun
    url = f"sqlite:///{work}/c.db"
    add_clips(url, work, SENTENCES[:sentences], VOICES, "a")
    run = FinetuneRun(FinetuneOptions.of(None, feature_cache=str(work / "feat")), ROOT / "models" / "default",
                      work / "out", lambda f, m: None)
    P.check_paths(run)
    P.read_dataset(run, url)
    for step in (P.load_base, P.prepare_audio, P.extract_features):
        step(run)
    return run, AD.from_model(run.speech, run.cfg.n_classes)


def timed_choose(run, base, share: float) -> tuple[float, dict]:
    from emodemo.finetune import adapt as AD
    keep, AD.SPAN_MAX_SHARE = AD.SPAN_MAX_SHARE, share
    try:
        t0 = time.perf_counter()
        ch = AD.choose(run.tr, run.replay["train"], run.replay["guard"], base, run.cfg.n_classes,
                       run.opts.tolerance, run.opts.seed)
        return time.perf_counter() - t0, ch
    finally:
        AD.SPAN_MAX_SHARE = keep


def main() -> dict:
    import numpy as np
    import torch
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2, help="alternating full / span runs (median)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "adapter_span_results.json"))
    args = ap.parse_args()
    os.environ.setdefault("EMODEMO_DATA", tempfile.mkdtemp(prefix="no-data-"))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-span-") as tmp:
        run, base = features(Path(tmp), args.sentences)
        full_s, span_s = [], []
        for _ in range(args.reps):
            t, full = timed_choose(run, base, 0.0)
            full_s.append(t)
            t, span = timed_choose(run, base, 1e9)
            span_s.append(t)
        va = run.va
        lf, ls = full["adapter"].logits(va.x, va.b), span["adapter"].logits(va.x, va.b)
        res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "corrections": len(run.tr), "replay": len(run.replay["train"]), "dims": int(run.tr.x.shape[1]),
               "full_s": round(float(np.median(full_s)), 2), "span_s": round(float(np.median(span_s)), 2),
               "same_choice": [full[k] for k in ("gate", "beta", "lambda")] == [span[k] for k in ("gate", "beta", "lambda")],
               "held_out_logit_max_diff": round(float(np.abs(lf - ls).max()), 5),
               "held_out_same_label": float((lf.argmax(1) == ls.argmax(1)).mean()),
               "cv_UA_max_diff": max(abs(a["cv_UA"] - b["cv_UA"]) for a, b in zip(full["table"], span["table"]))}
        res["speedup"] = round(res["full_s"] / res["span_s"], 2)
    print(json.dumps(res, indent=2))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
