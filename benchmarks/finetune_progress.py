"""How long fine-tuning goes without a progress report (the app's bar sat at 40 % for 76 s).

    python benchmarks/finetune_progress.py [--bundle models/default] [--json out.json]

Fine-tunes the bundle on 32 espeak-ng corrections (4 classes, 3 voices; no training data on disk,
so only the bundle's replay pack is replayed: what a user of the app has) and records the time of
every progress callback. Prints the run time, the number of reports and the longest gap between
two reports with the step it happened in. Compare two trees in one session (timings are noisy):

    PYTHONPATH=/path/to/other/tree python benchmarks/finetune_progress.py
    PYTHONPATH=. python benchmarks/finetune_progress.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

PROSODY = {"angry": ("80", "210", "190"), "sad": ("15", "105", "60"),
           "happy": ("95", "175", "130"), "neutral": ("45", "150", "100")}
SENTENCES = ["the meeting starts at nine", "please close the window", "we drove home after lunch",
             "the package arrived today", "my phone is on the table", "the train was late again",
             "she bought a new coat", "they painted the fence blue"]
VOICES = ["en-us", "en+m3", "en+f2"]


def make_store(folder: Path) -> str:
    from emodemo.store import CorrectionStore
    url = f"sqlite:///{folder}/c.db"
    with CorrectionStore(url) as store:
        for lab, (pitch, speed, amp) in PROSODY.items():
            for j, text in enumerate(SENTENCES):
                path = folder / f"{lab}_{j}.wav"
                subprocess.run(["espeak-ng", "-v", VOICES[j % 3], "-p", pitch, "-s", speed, "-a", amp,
                                "-w", str(path), text], check=True, capture_output=True)
                store.add(path, lab, annotator=f"user{j % 2}")
    return url


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=str(Path(__file__).resolve().parents[1] / "models" / "default"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ft-progress-"))
    empty = work / "no-data"
    empty.mkdir()
    os.environ["EMODEMO_DATA"] = str(empty)          # no training data on disk, as in the app
    import emodemo.data
    emodemo.data.SHARED_DATA = empty
    import torch
    torch.set_num_threads(1)
    from emodemo.finetune import finetune
    url = make_store(work)
    marks: list[tuple[float, float, str]] = []
    t0 = time.perf_counter()
    finetune(url, args.bundle, work / "out", replay_spec=[], epochs=1,
             progress=lambda f, m: marks.append((time.perf_counter() - t0, f, m)))
    total = time.perf_counter() - t0
    times = [0.0] + [t for t, _, _ in marks]
    gaps = [(b - a, i) for i, (a, b) in enumerate(zip(times, times[1:]))]
    gap, i = max(gaps)
    before = marks[i - 1] if i else (0.0, 0.0, "start")
    out = {"seconds": round(total, 1), "reports": len(marks), "longest_gap_s": round(gap, 1),
           "gap_share": round(gap / total, 3), "gap_after": f"{before[1]:.0%} {before[2]}"}
    print(json.dumps(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
