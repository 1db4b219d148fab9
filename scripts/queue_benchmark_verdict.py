#!/usr/bin/env python
"""The verdict of the queue benchmark's re-run (README, "Re-run on the stratified-fold fine-tune":
the rule was fixed before any run) from the finished runs' row.json files.

    python scripts/queue_benchmark_verdict.py runs/qb7-nemo runs/qb7-ko runs/qb7-emovo
    python scripts/queue_benchmark_verdict.py benchmarks/queue_rerun_rows.jsonl   # the committed rows

Per setting (corpus, n): each order's mean unseen-speaker UA ± sd over its seeds and how many of
its runs the fine-tune refused (exit 3: the base is kept and scored); then each order's mean over
the settings. Coverage (`how` "queue": the default, one deterministic run), spread and random
(seeds 0-9). Only the complete set (6 settings x 21 runs) gives a verdict: coverage wins if its
mean is higher than random's; if not and spread's is, spread becomes the default; else neither.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ORDERS = {"queue": "coverage", "queue-spread": "spread", "random": "random"}
RUNS_PER_SETTING = {"queue": 1, "queue-spread": 10, "random": 10}
SETTINGS = 6


def rows(paths) -> list[dict]:
    """The rows of work folders (their */row.json) and of JSON-lines files (one row a line)."""
    out = []
    for f in map(Path, paths):
        if f.is_file():
            out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        else:
            out += [json.loads(p.read_text()) for p in sorted(f.glob("*/row.json"))]
    return out


def table(found: list[dict]) -> tuple[list[str], dict, bool]:
    """Markdown lines, each order's mean over the settings, and whether the set is complete."""
    by = defaultdict(list)
    for r in found:
        by[(r["corpus"], r["n"], r["how"])].append(r)
    settings = sorted({(c, n) for c, n, _ in by})
    lines = ["| corpus | n | base | " + " | ".join(ORDERS.values()) + " |", "|---|---|---|---|---|---|"]
    means: dict = defaultdict(list)
    complete = len(settings) == SETTINGS
    for c, n in settings:
        cells = []
        base = next(r["unseen_UA_before"] for (c2, n2, _), rs in by.items() if (c2, n2) == (c, n) for r in rs)
        for how in ORDERS:
            rs = by.get((c, n, how), [])
            complete &= len(rs) == RUNS_PER_SETTING[how]
            if not rs:
                cells.append("–")
                continue
            ua = [r["unseen_UA"] for r in rs]
            refused = sum(r["exit"] == 3 for r in rs)
            sd = f" ± {statistics.stdev(ua):.3f}" if len(ua) > 1 else ""
            cells.append(f"{statistics.mean(ua):.3f}{sd} ({len(ua)} runs, {refused} r)")
            means[how].append(statistics.mean(ua))
        lines.append(f"| {c} | {n} | {base:.3f} | " + " | ".join(cells) + " |")
    overall = {how: statistics.mean(v) for how, v in means.items() if len(v) == len(settings)}
    lines.append("| mean of the settings | | | " + " | ".join(
        f"{overall[h]:.3f}" if h in overall else "–" for h in ORDERS) + " |")
    return lines, overall, complete


def verdict(overall: dict, complete: bool) -> str:
    if not complete:
        return "incomplete: no verdict (the rule needs all 126 runs)"
    if overall["queue"] > overall["random"]:
        return "coverage (the default) beats random: the benchmark is met"
    if overall["queue-spread"] > overall["random"]:
        return "coverage does not beat random, spread does: spread becomes the default"
    return "neither coverage nor spread beats random: nothing changes"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="the re-run's work folders (runs/qb7-*) or .jsonl files of rows")
    args = ap.parse_args(argv)
    found = rows(args.folders)
    if not found:
        print("no finished runs (row.json) in " + " ".join(args.folders), file=sys.stderr)
        return 2
    lines, overall, complete = table(found)
    print("\n".join(lines))
    print(f"\n{len(found)} runs. Verdict: {verdict(overall, complete)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
