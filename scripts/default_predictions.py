#!/usr/bin/env python
"""Regenerate tests/fixtures/default_predictions.json: the shipped default bundle's branch and fused
probabilities on committed example clips (with a typed transcript, so no ASR runs), which
tests/test_bundle.py::test_default_bundle_predicts_as_before holds every later change to (1e-5).
Run it only when a new default ships (a retrain is deliberate; every bundle stays in git history).

    python scripts/default_predictions.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from emodemo import load_recognizer  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "default_predictions.json"
CASES = (("angry_actor17.flac", "I can't believe you did that to me"), ("sad_actor19.flac", ""))


def main() -> None:
    rec = load_recognizer(ROOT / "models" / "default", threads=1)
    cases = []
    for clip, transcript in CASES:
        p = rec.predict(ROOT / "data" / "examples" / clip, transcript=transcript)
        cases.append({"clip": clip, "transcript": transcript, "audio": p.audio, "text": p.text, "fused": p.fused})
    FIXTURE.write_text(json.dumps({"bundle": "models/default", "version": rec.version, "cases": cases},
                                  indent=1) + "\n")
    print(f"wrote {FIXTURE.relative_to(ROOT)} for default v{rec.version}")


if __name__ == "__main__":
    main()
