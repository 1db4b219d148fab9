#!/usr/bin/env python
"""The annotation queue at a campaign's scale: what one submitted clip costs in the Annotate tab
(vote -> next clip -> progress) with 1,000 to 20,000 clips queued, this tree against an earlier
commit in the same run.

    python benchmarks/bench_queue.py                       # 1k, 5k, 20k clips; coverage + spread; vs 342c301
    python benchmarks/bench_queue.py --sizes 1000 5000 --orders coverage --before HEAD~3 --out /tmp/q.json

A queue of n clips (0.05-s spans of one stored recording of n x 0.05 s, as `queue add` makes of
long files) is written straight into a fresh SQLite store: random fused probabilities (Dirichlet
around 12 clumps, 7 labels) and 32-number embeddings, so nothing is pre-labelled. For each size and
serving order:

* `cold next`: the first `next()` of a fresh process (the clips' typicality or the spread order's
  tree of clusters is computed then);
* `per clip`: one annotator's loop as the tab runs it (`vote` the served clip, `next`, `progress`),
  median of --cycles clips after the first.

`--before REV` measures the same loop on a `git worktree` of REV in a child process (default: the
commit before the queue's memos); the speed-up is before / after. Ratios, never timing asserts:
tests/test_annotate_scale.py checks the memos' results.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

TREE = Path(os.environ.get("BENCH_QUEUE_TREE") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(TREE))

from emodemo.annotate import AnnotationQueue, QueueOptions  # noqa: E402
from emodemo.annotate import rank  # noqa: E402
from emodemo.store import CorrectionStore  # noqa: E402
from emodemo.store.schema import Media, QueueItem as QueueRow  # noqa: E402

LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
SIZES = (1000, 5000, 20000)
ORDERS = ("coverage", "spread")
CYCLES = 5
CLUSTERS = 12            # the synthetic clips come in this many clumps (speakers, sessions)
SPAN_S = 0.05            # each clip's span of the recording (short, so that the file stays small)
BEFORE = "342c301"       # the commit before the queue's memos (bench_queue.py was added after it)


def build_store(n: int, folder: Path, seed: int = 0) -> CorrectionStore:
    """A fresh SQLite store with one recording and `n` queued SPAN_S-second spans of it."""
    store = CorrectionStore(f"sqlite:///{folder / 'queue.db'}", media_dir=folder / "media")
    rel = "recording.wav"
    store.media_dir.mkdir(parents=True, exist_ok=True)
    sf.write(str(store.media_dir / rel), np.zeros(int(n * SPAN_S * 16000) + 16000, np.int16), 16000)
    sha = hashlib.sha256((store.media_dir / rel).read_bytes()).hexdigest()
    now = datetime.now(timezone.utc)
    rng = np.random.default_rng(seed)
    centres = rng.dirichlet(np.full(len(LABELS), 0.7), CLUSTERS) * 8 + 0.2
    emb_centres = rng.standard_normal((CLUSTERS, 32))
    rows = []
    for i in range(n):
        c = rng.integers(CLUSTERS)
        p = rng.dirichlet(centres[c])
        top2 = np.sort(p)[-2:]
        rows.append(QueueRow(
            media_sha256=sha, file_name=f"clip{i:05d}.wav", start=round(i * SPAN_S, 3),
            end=round((i + 1) * SPAN_S, 3), priority=float(1.0 - (top2[1] - top2[0])),
            model_label=LABELS[int(p.argmax())], created_at=now,
            prob_fused=json.dumps(dict(zip(LABELS, np.round(p, 4).tolist()))),
            embedding=json.dumps(np.round(emb_centres[c] + 0.5 * rng.standard_normal(32), 4).tolist())))
    with store.database.write() as s, s.begin():
        s.add(Media(sha256=sha, path=rel, duration=n * SPAN_S + 1.0, sample_rate=16000, created_at=now))
    with store.database.write() as s, s.begin():
        s.add_all(rows)
    return store


def one_clip(queue: AnnotationQueue, item) -> object:
    """What the Annotate tab does when a clip is submitted: the vote, the next clip, progress."""
    queue.vote(item.id, "ana", item.model_label or LABELS[0])
    nxt = queue.next("ana")
    queue.progress()
    return nxt


def measure(n: int, order: str, cycles: int) -> dict:
    """This process's tree: the cold next() and the median per-clip loop for n clips."""
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(n, Path(tmp))
        for memo in ("_TYPICAL_MEMO", "_SPREAD_MEMO"):   # absent before the memos
            getattr(rank, memo, {}).clear()
        queue = AnnotationQueue(store, options=QueueOptions(order=order, votes_needed=1))
        t = time.perf_counter()
        item = queue.next("ana")
        cold = time.perf_counter() - t
        times = []
        for _ in range(cycles):
            t = time.perf_counter()
            item = one_clip(queue, item)
            times.append(time.perf_counter() - t)
        store.close()
    return {"n": n, "order": order, "cold_next_s": round(cold, 3),
            "per_clip_s": round(statistics.median(times), 3)}


def measure_before(rev: str, n: int, order: str, cycles: int, tree: Path) -> dict:
    """The same measurement on the worktree `tree` (commit `rev`), in a child process."""
    env = {**os.environ, "BENCH_QUEUE_TREE": str(tree)}
    out = subprocess.run([sys.executable, __file__, "--child", str(n), order, str(cycles)],
                         env=env, capture_output=True, text=True, check=True)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "tree": rev}


def table(rows: list[dict]) -> str:
    out = ["| order | clips | cold next (s), before / after | per clip (s), before / after | speed-up per clip | per clip vs 1,000 clips (after) |",
           "|---|---|---|---|---|---|"]
    base = {r["order"]: r["after"]["per_clip_s"] for r in rows if r["n"] == min(x["n"] for x in rows)}
    for r in rows:
        b, a = r["before"], r["after"]
        out.append(f"| {r['order']} | {r['n']:,} | {b['cold_next_s']:.2f} / {a['cold_next_s']:.2f} | "
                   f"{b['per_clip_s']:.2f} / {a['per_clip_s']:.2f} | "
                   f"{b['per_clip_s'] / max(a['per_clip_s'], 1e-9):.1f}x | "
                   f"{a['per_clip_s'] / max(base[r['order']], 1e-9):.1f}x |")
    return "\n".join(out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(measure(int(argv[1]), argv[2], int(argv[3]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    ap.add_argument("--orders", nargs="+", default=list(ORDERS), choices=rank.ORDERS)
    ap.add_argument("--cycles", type=int, default=CYCLES)
    ap.add_argument("--before", default=BEFORE, help="the commit to compare with (default %(default)s)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "queue_results.json")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(TREE), "worktree", "add", "--detach", str(tree), args.before],
                       check=True, capture_output=True)
        try:
            for n in sorted(args.sizes):
                for order in args.orders:
                    rows.append({"n": n, "order": order,
                                 "before": measure_before(args.before, n, order, args.cycles, tree),
                                 "after": measure(n, order, args.cycles)})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            subprocess.run(["git", "-C", str(TREE), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)
    args.out.write_text(json.dumps({"when": datetime.now(timezone.utc).isoformat(timespec="minutes"),
                                    "before": args.before, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
