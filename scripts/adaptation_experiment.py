#!/usr/bin/env python
"""Adaptation experiment: does fine-tuning on stored corrections fix a shifted corpus without
forgetting RAVDESS?

1. A *shifted corpus* is made from RAVDESS actors the default bundle never trained on (17–20) by
   "re-recording" every clip through sox: pitch shifted up (a new speaker population), telephone
   band-pass 300–3400 Hz at 8 kHz, back to 16 kHz, plus white noise at 15 dB SNR.
2. It is split by actor: the clips of the *correction* actors (17, 18) are imported into a fresh
   corrections store with `python -m emodemo corrections import <manifest.csv>` (path, label,
   annotator; two simulated annotators); the clips of the *other* actors (19, 20) are never shown
   to fine-tuning.
3. `python -m emodemo finetune --replay ravdess:actors=1-16 --reference ravdess:actors=17-20` writes
   the new bundle (the gate: not worse than the base by more than the tolerance on clean RAVDESS).
4. Base and new bundle are evaluated (`emodemo.training.evaluate`) on the other shifted clips, on clean
   RAVDESS actors 17–20 (the reference) and on clean actors 19–20 alone (speakers whose voices were
   never corrected, in any form).

    python scripts/adaptation_experiment.py --base models/default --work runs/adaptation
    python scripts/adaptation_experiment.py --quick   # a few minutes: 20 clips per actor, 1 epoch

Results: <work>/results.json and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
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

from emodemo.data import SHARED_DATA, ravdess  # noqa: E402

SR = 16000


def shift(src: str, dst: Path, seed: int, pitch_cents: int, snr_db: float) -> None:
    """sox: pitch shift + telephone band (300–3400 Hz at 8 kHz) → 16 kHz; numpy: white noise at snr_db."""
    tmp8 = dst.with_suffix(".8k.wav")
    subprocess.run(["sox", src, "-r", "8000", "-c", "1", str(tmp8), "pitch", str(pitch_cents),
                    "sinc", "300-3400", "gain", "-n", "-3"], check=True, capture_output=True)
    tmp16 = dst.with_suffix(".16k.wav")
    subprocess.run(["sox", str(tmp8), "-r", str(SR), str(tmp16)], check=True, capture_output=True)
    x, sr = sf.read(str(tmp16), dtype="float32")
    rng = np.random.default_rng(seed)
    power = float(np.mean(x.astype(np.float64) ** 2)) or 1e-8
    x = x + rng.standard_normal(x.size).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
    sf.write(str(dst), np.clip(x, -1, 1), SR, subtype="PCM_16")
    tmp8.unlink()
    tmp16.unlink()


def make_corpus(work: Path, actors: list[int], per_actor: int, pitch: int, snr: float) -> dict[int, list]:
    """Shifted copies of RAVDESS clips of `actors`: {actor: [(path, label, transcript)]}."""
    out: dict[int, list] = {}
    jobs = []
    for a in actors:
        items = ravdess(actors=[a])
        if per_actor:
            # a label-stratified subset for quick runs
            by: dict[str, list] = {}
            for it in items:
                by.setdefault(it.label, []).append(it)
            pick, k = [], 0
            while len(pick) < min(per_actor, len(items)):
                for lab in sorted(by):
                    if k < len(by[lab]) and len(pick) < per_actor:
                        pick.append(by[lab][k])
                k += 1
            items = pick
        d = work / "shifted" / f"Actor_{a:02d}"
        d.mkdir(parents=True, exist_ok=True)
        out[a] = []
        for it in items:
            dst = d / (Path(it.audio).stem + ".wav")
            out[a].append((dst, it.label, it.transcript))
            if not dst.exists():
                jobs.append((it.audio, dst, zlib.crc32(Path(it.audio).stem.encode())))
    if jobs:
        with ThreadPoolExecutor(max_workers=2) as ex:
            list(ex.map(lambda j: shift(j[0], j[1], j[2], pitch, snr), jobs))
    return out


def emodemo(*args: str, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "emodemo", *args]
    print("$", " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env)


def finetune_cmd(env: dict) -> list[str]:
    """`emodemo finetune` when the CLI has it, else the module's own entry point."""
    r = subprocess.run([sys.executable, "-m", "emodemo", "finetune", "--help"], cwd=ROOT, env=env,
                       capture_output=True)
    return ["finetune"] if r.returncode == 0 else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="models/default")
    ap.add_argument("--work", default="runs/adaptation")
    ap.add_argument("--corr-actors", default="17,18", help="actors whose shifted clips become corrections")
    ap.add_argument("--other-actors", default="19,20", help="actors whose shifted clips are only tested")
    ap.add_argument("--pitch", type=int, default=300, help="pitch shift in cents (default +300)")
    ap.add_argument("--snr", type=float, default=15.0, help="white-noise SNR in dB (default 15)")
    ap.add_argument("--replay", default="ravdess:actors=1-16")
    ap.add_argument("--replay-n", type=int, default=None)
    ap.add_argument("--reference", default="ravdess:actors=17-20")
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--transcripts", action="store_true",
                    help="import the RAVDESS sentence as the corrected transcript too")
    ap.add_argument("--quick", action="store_true", help="20 clips per actor, 1 epoch, small replay")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the subprocesses")
    args = ap.parse_args()

    if not (SHARED_DATA / "ravdess").exists():
        print(f"RAVDESS not found under {SHARED_DATA}", file=sys.stderr)
        return 2
    base = (ROOT / args.base).resolve() if not Path(args.base).is_absolute() else Path(args.base)
    if not (base / "config.json").exists():
        print(f"no base bundle at {base}", file=sys.stderr)
        return 2
    work = (ROOT / args.work).resolve() if not Path(args.work).is_absolute() else Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        import torch
        torch.set_num_threads(args.threads)
    corr_actors = [int(a) for a in args.corr_actors.split(",")]
    other_actors = [int(a) for a in args.other_actors.split(",")]
    per_actor = 20 if args.quick else 0
    t0 = time.time()
    corpus = make_corpus(work, corr_actors + other_actors, per_actor, args.pitch, args.snr)
    print(f"shifted corpus: {sum(len(v) for v in corpus.values())} clips in {time.time() - t0:.0f} s", flush=True)

    # corrections manifest (the import format: path,label,transcript,annotator) and the test manifest
    with open(work / "corrections.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "transcript", "annotator"])
        for a in corr_actors:
            for k, (p, lab, text) in enumerate(corpus[a]):
                w.writerow([p, lab, text if args.transcripts else "", f"annotator-{'ab'[k % 2]}"])
    with open(work / "other.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "transcript", "speaker"])
        for a in other_actors:
            w.writerows([p, lab, text, f"shifted-{a:02d}"] for p, lab, text in corpus[a])

    db = work / "corrections.db"
    for p in (db, work / "corrections.db-wal", work / "corrections.db-shm"):
        p.unlink(missing_ok=True)
    shutil.rmtree(work / "media", ignore_errors=True)
    url = f"sqlite:///{db}"
    if emodemo("corrections", "import", str(work / "corrections.csv"), "--db", url, env=env).returncode:
        return 1
    emodemo("corrections", "stats", "--db", url, env=env)

    out = work / "models" / "adapted"
    ft = finetune_cmd(env)
    base_args = ["--db", url, "--base", str(base)]
    if not ft:
        print("(the CLI has no finetune command yet: using python -m emodemo.finetune)")
    run = (lambda *a: emodemo(*ft, *a, env=env)) if ft else \
        (lambda *a: subprocess.run([sys.executable, "-m", "emodemo.finetune", *a], cwd=ROOT, env=env))
    run(*base_args, "--dry-run")
    ft_args = [*base_args, "--out", str(out), "--overwrite", "--replay", args.replay,
               "--reference", args.reference, "--tolerance", str(args.tolerance)]
    if args.replay_n or args.quick:
        ft_args += ["--replay-n", str(args.replay_n or 60)]
    if args.epochs or args.quick:
        ft_args += ["--epochs", str(args.epochs or 1)]
    shutil.rmtree(work / "run", ignore_errors=True)
    ft_args += ["--run-dir", str(work / "run")]
    t1 = time.time()
    for _ in range(3):  # killed from outside (e.g. a busy shared machine): rerun, resuming the checkpoint
        rc = run(*ft_args).returncode
        if rc >= 0:
            break
    ft_seconds = time.time() - t1
    print(f"finetune exit code {rc} after {ft_seconds:.0f} s", flush=True)
    if rc not in (0, 3):
        return 1

    from emodemo.training import evaluate
    sets = {"shifted other actors " + args.other_actors: f"csv:{work / 'other.csv'}",
            "clean RAVDESS " + args.reference.split('=')[-1]: args.reference,
            "clean RAVDESS " + args.other_actors.replace(",", "+"): "ravdess:actors=" + args.other_actors}
    results: dict = {"finetune_exit_code": rc, "finetune_seconds": round(ft_seconds, 1),
                     "corrections": sum(len(corpus[a]) for a in corr_actors), "sets": {},
                     "settings": vars(args)}
    bundles = {"base": base} | ({"new": out} if rc == 0 else {})
    for name, spec in sets.items():
        results["sets"][name] = {}
        for b, path in bundles.items():
            rep = evaluate(path, spec, work / "eval" / b / name.replace(" ", "_"))
            results["sets"][name][b] = {br: {k: rep[br][k] for k in ("UA", "WA", "macro_F1", "n")}
                                        for br in ("audio", "fused") if br in rep}
    if rc == 0:
        results["finetune_report"] = json.loads((out / "finetune_report.json").read_text())
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    print("\n| data | branch | base UA | new UA | Δ |\n|---|---|---|---|---|")
    for name, r in results["sets"].items():
        for br in ("audio", "fused"):
            b = r["base"][br]["UA"]
            if "new" in r:
                n = r["new"][br]["UA"]
                print(f"| {name} (n={r['base'][br]['n']}) | {br} | {b:.3f} | {n:.3f} | {n - b:+.3f} |")
            else:
                print(f"| {name} (n={r['base'][br]['n']}) | {br} | {b:.3f} | (not written) | |")
    print(f"\nfinetune: {results['corrections']} corrections, {ft_seconds:.0f} s, exit code {rc}; "
          f"results in {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
