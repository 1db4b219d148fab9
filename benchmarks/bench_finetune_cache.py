#!/usr/bin/env python
"""A team fine-tunes again and again as corrections come in: what a run costs with fine-tuning's
feature cache and held-out results read from the extracted rows, against an earlier commit, in the
same run (ratios, never timing asserts; tests/test_finetune_cache.py checks the results are the
model's own).

    python benchmarks/bench_finetune_cache.py                 # 128 + 16 clips, vs b06fa47
    python benchmarks/bench_finetune_cache.py --before HEAD~2 --out /tmp/ft.json

A store of espeak-ng clips whose prosody codes the label (benchmarks/finetune_progress.PROSODY;
--sentences x --voices x 4 classes), fine-tuned with the README's command
(`python -m emodemo finetune --db ... --base models/default --out ...`, no training data on disk):

* before: the --before commit (a git worktree, a child process), which extracts every clip and
  runs the backbone again on the held-out clips to evaluate;
* first: this tree with an empty cache (every clip extracted once);
* again: this tree, the same corrections (a re-run, e.g. another seed or after a refusal);
* more: this tree after --more new corrections (a day's work): only those are extracted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.finetune_progress import PROSODY, SENTENCES  # noqa: E402

#: the new corrections of "more" (sentences the first store has none of)
MORE_SENTENCES = ["the dog slept by the door", "we will call you tomorrow", "the soup is on the stove",
                  "he forgot his keys again"]
BEFORE = "b06fa47"      # the commit before the cache (its store schema is this one's)
VOICES = ("en-us", "en+m3", "en+f2", "en-gb")


def espeak_clip(path: Path, label: str, text: str, voice: str) -> Path:
    pitch, speed, amp = PROSODY[label]
    subprocess.run(["espeak-ng", "-v", voice, "-p", pitch, "-s", speed, "-a", amp, "-w", str(path), text],
                   check=True, capture_output=True)
    return path


def add_clips(url: str, folder: Path, sentences, voices, tag: str) -> int:
    from emodemo.store import CorrectionStore
    n = 0
    with CorrectionStore(url) as store:
        for label in PROSODY:
            for j, text in enumerate(sentences):
                for voice in voices:
                    path = espeak_clip(folder / f"{tag}_{label}_{j}_{voice.replace('+', '_')}.wav", label, text, voice)
                    store.add(path, label, annotator="bench", speaker=voice)
                    n += 1
    return n


def finetune_seconds(tree: Path, url: str, out: Path, env: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "emodemo", "finetune", "--db", url, "--base",
                        str(tree / "models" / "default"), "--out", str(out)],
                       cwd=tree, env=env, capture_output=True, text=True)
    if r.returncode not in (0, 3):
        raise SystemExit(f"finetune failed in {tree}:\n{r.stderr[-2000:]}")
    return round(time.perf_counter() - t0, 1), r.returncode


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default=BEFORE)
    ap.add_argument("--sentences", type=int, default=8)
    ap.add_argument("--more", type=int, default=1, help="new sentences (x voices x classes) for 'more'")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "finetune_cache_results.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ft-cache-"))
    (work / "no-data").mkdir()
    env = dict(os.environ, EMODEMO_DATA=str(work / "no-data"), XDG_CACHE_HOME=str(work / "cache"),
               TOKENIZERS_PARALLELISM="false", PYTHONPATH="")
    url = f"sqlite:///{work}/c.db"
    n = add_clips(url, work, SENTENCES[:args.sentences], VOICES, "a")
    before_tree = work / "before"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(before_tree), args.before], cwd=ROOT, check=True)
    try:
        before_env = dict(env, XDG_CACHE_HOME=str(work / "cache-before"))
        res = {"clips": n, "before_rev": args.before, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        res["before_s"], _ = finetune_seconds(before_tree, url, work / "out-before", before_env)
        res["first_s"], _ = finetune_seconds(ROOT, url, work / "out-first", env)
        res["again_s"], _ = finetune_seconds(ROOT, url, work / "out-again", env)
        res["more_clips"] = add_clips(url, work, MORE_SENTENCES[:args.more], VOICES, "b")
        res["more_before_s"], _ = finetune_seconds(before_tree, url, work / "out-more-before", before_env)
        res["more_s"], _ = finetune_seconds(ROOT, url, work / "out-more", env)
        res["speedup_first"] = round(res["before_s"] / res["first_s"], 2)
        res["speedup_again"] = round(res["before_s"] / res["again_s"], 2)
        res["speedup_more"] = round(res["more_before_s"] / res["more_s"], 2)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=2))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
