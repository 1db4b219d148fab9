#!/usr/bin/env python
"""Adaptation benchmark: do a user's corrections make the shipped model better on *their* audio,
on a machine without our training data, without forgetting what it knew?

Cases (each a corpus the base bundle never trained on):
* `nemo` (Polish) and `emotiontts-ko` (Korean): leave-one-corpus-out. The corpus's speakers are
  split in two halves (seeded); corrections come from half A, evaluation is on half B (speakers
  never corrected).
* `sox`: RAVDESS actors 17–20 "re-recorded" through sox (pitch up 300 cents, telephone band at
  8 kHz, white noise at 15 dB SNR); corrections from actors 17–18, evaluation on 19–20.

For n in --n (a learning curve), n clips of half A (class-stratified) are imported into a fresh
store with `python -m emodemo corrections import`, and `python -m emodemo finetune --db ... --base
models/default --out ...` runs exactly as a user runs it: no extra flags, and with `EMODEMO_DATA`
pointing at an empty folder so no training data is on disk (`--with-data` adds a run with it).
Base and new bundle are then compared on half B, on the reference sets (RAVDESS actors 17–20 clean,
and the other corpora), and against a linear probe (logistic regression on the frozen backbone's
pooled features of the same n corrections). Audio branch only (the corrections carry no transcript).

Evaluation runs the bundles' speech model on cached frozen-backbone features (exactly what the
model computes; checked against `load_recognizer` on a few clips each run).

    python scripts/adaptation_experiment.py                       # nemo + emotiontts-ko, n = 50 100 200
    python scripts/adaptation_experiment.py --cases sox --n 100
    python scripts/adaptation_experiment.py --quick               # n = 50, nemo only

Results: <work>/results.json and a markdown table on stdout (docs/finetune.md has the last one).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("EMODEMO_DATA", ROOT.parent / "shared" / "data")).resolve()
SR = 16000


def shift(src: str, dst: Path, seed: int, pitch_cents: int = 300, snr_db: float = 15.0) -> None:
    """sox: pitch shift + telephone band (300–3400 Hz at 8 kHz) → 16 kHz; numpy: white noise."""
    tmp8, tmp16 = dst.with_suffix(".8k.wav"), dst.with_suffix(".16k.wav")
    subprocess.run(["sox", src, "-r", "8000", "-c", "1", str(tmp8), "pitch", str(pitch_cents),
                    "sinc", "300-3400", "gain", "-n", "-3"], check=True, capture_output=True)
    subprocess.run(["sox", str(tmp8), "-r", str(SR), str(tmp16)], check=True, capture_output=True)
    x, _ = sf.read(str(tmp16), dtype="float32")
    rng = np.random.default_rng(seed)
    power = float(np.mean(x.astype(np.float64) ** 2)) or 1e-8
    x = x + rng.standard_normal(x.size).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
    sf.write(str(dst), np.clip(x, -1, 1), SR, subtype="PCM_16")
    tmp8.unlink()
    tmp16.unlink()


def case_items(case: str, work: Path):
    """(items of half A, items of half B) for a case."""
    from emodemo.data import Item, load_spec
    if case == "sox":
        items = load_spec(f"ravdess:actors=17-20:root={DATA / 'ravdess'}")
        out, jobs = [], []
        for it in items:
            dst = work / "sox" / f"{it.id}.wav"
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                jobs.append((it.audio, dst, zlib.crc32(it.id.encode())))
            out.append(Item(str(dst), it.label, None, it.speaker, id=it.id))
        with ThreadPoolExecutor(max_workers=2) as ex:
            list(ex.map(lambda j: shift(*j), jobs))
        return ([i for i in out if i.speaker in ("ravdess-17", "ravdess-18")],
                [i for i in out if i.speaker in ("ravdess-19", "ravdess-20")])
    items = load_spec(f"folder:{DATA / case}")
    speakers = sorted({i.speaker for i in items})
    random.Random(f"adapt:{case}").shuffle(speakers)
    a = set(speakers[: len(speakers) // 2])
    return [i for i in items if i.speaker in a], [i for i in items if i.speaker not in a]


def reference_sets(case: str) -> dict:
    from emodemo.data import load_spec
    refs = {"ravdess 17-20 (clean)": load_spec(f"ravdess:actors=17-20:root={DATA / 'ravdess'}")}
    for other in ("nemo", "emotiontts-ko"):
        if other != case:
            refs[other] = load_spec(f"folder:{DATA / other}")
    return refs


def sample(items, n: int, seed: int):
    """n items, class-stratified (round-robin over classes in a seeded order)."""
    rng = random.Random(seed)
    by: dict = {}
    for it in sorted(items, key=lambda i: i.id):
        by.setdefault(it.label, []).append(it)
    for lst in by.values():
        rng.shuffle(lst)
    out, k = [], 0
    while len(out) < min(n, len(items)):
        for lab in sorted(by):
            if k < len(by[lab]) and len(out) < n:
                out.append(by[lab][k])
        k += 1
    return out


class FeatureCache:
    """Frozen-backbone pooled features + head logits of every clip, computed once with the base."""

    def __init__(self, bundle: Path, path: Path):
        from emodemo.bundle import load_bundle
        self.cfg, self.speech, _ = load_bundle(bundle)
        self.labels = list(self.cfg["labels"])
        self.path = path
        self.store = dict(np.load(path, allow_pickle=True)) if path.exists() else {}

    def get(self, items):
        from emodemo.finetune.features import extract
        todo = [i for i in items if i.audio not in self.store]
        if todo:
            f = extract(self.speech, todo, self.labels)
            for it, x, b in zip(todo, f.x, f.b):
                self.store[it.audio] = np.concatenate([x, b])
            np.savez(self.path, **self.store)
        d = self.speech.backbone.frame_dim * 2
        m = np.stack([self.store[i.audio] for i in items])
        return m[:, :d], m[:, d:], np.array([self.labels.index(i.label) for i in items])


def bundle_logits(bundle: Path, x: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """The bundle's audio logits from cached features (its adapter applied), and its temperature."""
    from safetensors.torch import load_file

    from emodemo.finetune.adapt import Adapter
    cfg = json.loads((bundle / "config.json").read_text())
    t = float(cfg["speech"].get("temperature", 1.0))
    if not cfg["speech"].get("adapter"):
        return b, t
    w = load_file(str(bundle / "speech.safetensors"))
    u = w["adapter.gate_weight"].float().numpy()
    a = Adapter(w["adapter.linear.weight"].float().numpy(), w["adapter.linear.bias"].float().numpy(),
                float(w["adapter.beta"]), w["adapter.mean"].float().numpy(), w["adapter.std"].float().numpy(),
                u if u.any() else None, float(w["adapter.gate_bias"]))
    return a.logits(x, b), t


def check_exact(bundle: Path, items, x, b) -> float:
    """Largest |probability difference| between cached-feature evaluation and load_recognizer."""
    import emodemo
    from emodemo.finetune.evaluate import softmax
    rec = emodemo.load_recognizer(bundle)
    lg, t = bundle_logits(bundle, x, b)
    p = softmax(lg, t)
    q = np.stack([rec.audio_proba(emodemo.audio.load_audio(i.audio)) for i in items])
    return float(np.abs(p - q).max())


def run_cli(args: list[str], env: dict) -> tuple[int, float, str]:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "emodemo", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    return r.returncode, time.time() - t0, (r.stdout + r.stderr)


def evaluate(labels, y, logits, t, classes) -> dict:
    from emodemo.training.metrics import ua
    from emodemo.finetune import ece
    from emodemo.finetune.evaluate import softmax
    p = softmax(logits, t)
    pred = p.argmax(1)
    hist = np.bincount(pred, minlength=len(labels)) / max(1, len(pred))
    return {"UA": round(ua(y, pred, classes), 4), "ECE": round(ece(p, y), 4),
            "top_class_share": round(float(hist.max()), 3),
            "histogram": {lab: round(float(h), 3) for lab, h in zip(labels, hist) if h > 0}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(ROOT / "models" / "default"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "adaptation"))
    ap.add_argument("--cases", nargs="+", default=["nemo", "emotiontts-ko"])
    ap.add_argument("--n", nargs="+", type=int, default=[50, 100, 200])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-data", action="store_true", help="also run with the training data present")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="evaluate bundles an earlier run wrote in --work")
    args = ap.parse_args()
    if args.quick:
        args.cases, args.n = ["nemo"], [50]
    from emodemo.finetune.adapt import linear_probe, probe_predict
    work, base = Path(args.work).resolve(), Path(args.base).resolve()   # manifests hold absolute paths
    work.mkdir(parents=True, exist_ok=True)
    empty = work / "no-data"
    empty.mkdir(exist_ok=True)
    cache = FeatureCache(base, work / "features.npz")
    labels = cache.labels
    results = []
    for case in args.cases:
        half_a, half_b = case_items(case, work)
        classes = sorted({labels.index(i.label) for i in half_a + half_b})
        xb, bb, yb = cache.get(half_b)
        refs = {k: cache.get(v) for k, v in reference_sets(case).items()}
        for n in args.n:
            chosen = sample(half_a, n, args.seed)
            xa, ba, ya = cache.get(chosen)
            for with_data in ([False, True] if args.with_data else [False]):
                tag = f"{case}-n{n}{'-data' if with_data else ''}"
                d = work / tag
                db, out = d / "c.db", d / "bundle"
                reuse = args.reuse and (out / "finetune_report.json").is_file()
                if d.exists() and not reuse:
                    import shutil
                    shutil.rmtree(d)
                d.mkdir(parents=True, exist_ok=True)
                with open(d / "manifest.csv", "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["path", "label", "transcript", "annotator"])
                    for it in chosen:
                        w.writerow([it.audio, it.label, "", "benchmark"])
                env = dict(os.environ, EMODEMO_DATA=str(DATA if with_data else empty),
                           EMODEMO_TORCH_THREADS="2", TOKENIZERS_PARALLELISM="false")
                if reuse:       # --reuse: evaluate the bundle a previous run wrote
                    rc, secs = 0, json.loads((out / "finetune_report.json").read_text())["seconds"]
                else:
                    rc, _, log = run_cli(["corrections", "import", str(d / "manifest.csv"), "--db",
                                          f"sqlite:///{db}"], env)
                    assert rc == 0, log
                    rc, secs, log = run_cli(["finetune", "--db", f"sqlite:///{db}", "--base", str(base),
                                             "--out", str(out)], env)
                    (d / "finetune.log").write_text(log)
                print(f"[{tag}] finetune exit {rc} in {secs / 60:.1f} min", flush=True)
                row = {"case": case, "n": len(chosen), "with_data": with_data, "exit": rc,
                       "minutes": round(secs / 60, 2), "speakers_a": len({i.speaker for i in half_a}),
                       "speakers_b": len({i.speaker for i in half_b}), "eval_clips": len(yb)}
                new = out if rc == 0 else base
                lg0, t0 = bundle_logits(base, xb, bb)
                lg1, t1 = bundle_logits(new, xb, bb)
                row["unseen_before"] = evaluate(labels, yb, lg0, t0, classes)
                row["unseen_after"] = evaluate(labels, yb, lg1, t1, classes)
                mean, std = xa.mean(0), xa.std(0) + 1e-4
                probe = linear_probe(__import__("emodemo.finetune.features", fromlist=["Feats"]).Feats(
                    xa, ba, ya, [i.speaker for i in chosen]), mean, std)
                from emodemo.training.metrics import ua
                row["probe_unseen_UA"] = round(ua(yb, probe_predict(probe, xb, mean, std), classes), 4)
                row["reference"] = {}
                for name, (xr, br, yr) in refs.items():
                    rcls = sorted(set(yr.tolist()))
                    r0 = evaluate(labels, yr, *bundle_logits(base, xr, br), rcls)
                    r1 = evaluate(labels, yr, *bundle_logits(new, xr, br), rcls)
                    row["reference"][name] = {"before": r0["UA"], "after": r1["UA"]}
                if rc == 0:     # the cached-feature numbers are the bundle's own: clips of both domains
                    ref_items = next(iter(reference_sets(case).values()))[:2]
                    xr, br, _ = cache.get(ref_items)
                    row["max_abs_diff_vs_recognizer"] = round(check_exact(
                        out, half_b[:2] + ref_items, np.r_[xb[:2], xr], np.r_[bb[:2], br]), 5)
                results.append(row)
                print(json.dumps(row), flush=True)
                (work / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| case | n | data on disk | unseen-speaker UA before → after | probe | reference UA before → after | ECE before → after | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        refs = "; ".join(f"{k} {v['before']:.3f} → {v['after']:.3f}" for k, v in r["reference"].items())
        print(f"| {r['case']} | {r['n']} | {'yes' if r['with_data'] else 'no'} | "
              f"{r['unseen_before']['UA']:.3f} → {r['unseen_after']['UA']:.3f} | {r['probe_unseen_UA']:.3f} | "
              f"{refs} | {r['unseen_before']['ECE']:.3f} → {r['unseen_after']['ECE']:.3f} | {r['minutes']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
