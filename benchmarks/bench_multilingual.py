"""Multilingual ASR on held-out non-English emotional speech: does the text branch, reading
Whisper base's English translation and weighted by the ASR's trust, help or hurt?

    nice -n 5 python benchmarks/bench_multilingual.py [--per-corpus 60] [--bundle models/default]

Per corpus (the default bundle's held-out speakers: nEMO MP0, SM0 (Polish), emotiontts-ko emf,
nee, nem (Korean); EMOVO (Italian, not in training at all)) up to `--per-corpus` clips, balanced
over the emotions, seed 0. Each clip runs once through `load_recognizer().predict()` (ASR =
the bundle's: Whisper base, language identification, translation; the translation's trust
not scaled, i.e. translation_trust 1); the per-clip Predictions are kept in `--cache` (JSON
lines; a rerun resumes). Reported per corpus, all from the same predictions: UA of the audio
branch; of the fused label with the ASR's trust (`fused_UA_asr_trust`), with trust ignored
(`fused_no_trust_UA`: the text weight the bundle was fitted with), with the trust of a
translation times each factor (`fused_UA_by_translation_trust_factor`) and times the shipped
asr.TRANSLATION_TRUST (`fused_UA_shipped`); of the text branch alone where it read something;
language identification accuracy, the share of clips whose translation was read, the mean
trust. Writes benchmarks/multilingual.json (`--split val`: multilingual_val.json).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CORPORA = {  # split -> name -> (data spec, language code)
    "test": {"nEMO (pl)": ("nemo:speakers=MP0,SM0", "pl"),
             "emotiontts-ko (ko)": ("emotiontts-ko:speakers=emf,nee,nem", "ko"),
             "EMOVO (it)": ("folder:{data}/emovo:name=emovo", "it")},
    # the bundle's validation speakers: where TRANSLATION_TRUST was chosen (--split val)
    "val": {"nEMO (pl)": ("nemo:speakers=EB0,KS0", "pl"),
            "emotiontts-ko (ko)": ("emotiontts-ko:speakers=emg,ned,nel", "ko")},
    # English: does Whisper base (vs --asr tiny.en) change what the text branch gets?
    "english": {"espeak-goemotions (en)": ("espeak-goemotions:dev:eval", "en")},
}
FACTORS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def balanced(items: list, n: int, seed: int = 0) -> list:
    """Up to n items, round-robin over the labels (each label's items shuffled with `seed`)."""
    rng = random.Random(seed)
    by: dict = {}
    for it in items:
        by.setdefault(it.label, []).append(it)
    for v in by.values():
        rng.shuffle(v)
    out, k = [], 0
    while len(out) < n and any(k < len(v) for v in by.values()):
        out += [v[k] for v in by.values() if k < len(v)][: n - len(out)]
        k += 1
    return out


def run(rec, items: list, cache: Path) -> list[dict]:
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            done[r["file"]] = r
    with cache.open("a") as f:
        for i, it in enumerate(items):
            if it.audio in done:
                continue
            t0 = time.perf_counter()
            p = rec.predict(it.audio).to_dict()
            r = {"file": it.audio, "gold": it.label, "seconds": time.perf_counter() - t0, **p}
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            done[it.audio] = r
            print(f"{i + 1}/{len(items)} {Path(it.audio).name} {it.label} -> {p['label']} "
                  f"[{(p['language'] or {}).get('code')}] trust {p['asr_trust']} {p['translation'][:60]!r}",
                  flush=True)
    return [done[it.audio] for it in items]


def summarise(rec, rows: list[dict], code: str) -> dict:
    from emodemo.fusion import unweighted_accuracy
    labels = rec.labels
    y = np.array([labels.index(r["gold"]) for r in rows])
    vec = lambda d: np.array([d[k] for k in labels])  # noqa: E731
    pa = np.stack([vec(r["audio"]) for r in rows])
    fused = np.stack([vec(r["fused"]) for r in rows])
    has = np.array([r["text"] is not None for r in rows])
    untrusted = fused.copy()
    for i, r in enumerate(rows):
        if r["text"] is not None:
            untrusted[i] = rec.fusion(pa[i], vec(r["text"]), 1.0)
    n = len(labels)
    ua = lambda pred, m=slice(None): unweighted_accuracy(y[m], pred[m].argmax(1), n)  # noqa: E731
    out = {"n": len(rows), "audio_UA": ua(pa), "fused_UA_asr_trust": ua(fused),
           "fused_no_trust_UA": ua(untrusted),
           "language_accuracy": float(np.mean([(r["language"] or {}).get("code") == code for r in rows])),
           "text_read_share": float(has.mean()),
           "mean_trust": float(np.mean([r["asr_trust"] or 0.0 for r in rows])),
           "seconds_per_clip": float(np.median([r["seconds"] for r in rows]))}
    if has.any():
        pt = np.stack([vec(r["text"]) for r in rows if r["text"] is not None])
        out.update(text_UA_where_read=unweighted_accuracy(y[has], pt.argmax(1), n),
                   audio_UA_where_read=ua(pa, has), fused_UA_where_read=ua(fused, has),
                   fused_no_trust_UA_where_read=ua(untrusted, has))
    # fused UA with a read translation's trust multiplied by each factor (the predictions were
    # made with factor 1; the shipped asr.TRANSLATION_TRUST is "fused_UA_shipped")
    from emodemo.asr import TRANSLATION_TRUST

    def at(k: float) -> float:
        f = fused.copy()
        for i, r in enumerate(rows):
            if r["text"] is not None and r["translation"]:
                f[i] = rec.fusion(pa[i], vec(r["text"]), r["asr_trust"] * k)
        return ua(f)
    out["fused_UA_by_translation_trust_factor"] = {str(k): at(k) for k in FACTORS}
    out["fused_UA_shipped"] = at(TRANSLATION_TRUST)
    out["translation_trust_shipped"] = TRANSLATION_TRUST
    out["examples"] = [{k: r[k] for k in ("gold", "label", "transcript", "translation", "asr_trust")}
                       for r in rows if r["translation"]][:3]
    return out


def main() -> None:
    from emodemo import load_recognizer
    from emodemo.data import SHARED_DATA, load_spec
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-corpus", type=int, default=60)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--split", choices=tuple(CORPORA), default="test")
    ap.add_argument("--asr", choices=("base", "tiny.en"), default=None, help="instead of the bundle's")
    ap.add_argument("--cache", default="/tmp/emodemo-bench-multilingual")
    ap.add_argument("--out", default=None, help="default benchmarks/multilingual[_val].json")
    a = ap.parse_args()
    if not Path(SHARED_DATA).is_dir():
        sys.exit(f"no data at {SHARED_DATA}")
    asr = None
    if a.asr:
        from emodemo.asr import PRESETS, load_asr
        asr = load_asr(PRESETS[a.asr])
    rec = load_recognizer(a.bundle, asr=asr)
    rec.translation_trust = 1.0          # the ASR's own trust; factors are applied in summarise
    Path(a.cache).mkdir(parents=True, exist_ok=True)
    res = {"bundle": rec.name, "bundle_version": rec.version, "asr": rec.config.get("asr"), "corpora": {}}
    for name, (spec, code) in CORPORA[a.split].items():
        items = balanced(load_spec(spec.format(data=SHARED_DATA)), a.per_corpus)
        rows = run(rec, items, Path(a.cache) / f"{a.split}-{code}{'-' + a.asr if a.asr else ''}.jsonl")
        res["corpora"][name] = summarise(rec, rows, code)
        print(json.dumps({name: {k: v for k, v in res["corpora"][name].items() if k != "examples"}}, indent=1))
    suffix = ("" if a.split == "test" else "_" + a.split) + ("_" + a.asr if a.asr else "")
    a.out = a.out or str(ROOT / "benchmarks" / f"multilingual{suffix}.json")
    Path(a.out).write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
