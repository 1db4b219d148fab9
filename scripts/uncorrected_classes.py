"""How a fine-tune from corrections of SOME classes treats the classes nobody corrected, on the same
speaker's other clips (docs/finetune.md, "Classes nobody corrected"). Needs ../shared/data.

Per case: one held-out speaker's clips split by sentence (every 2nd clip id); the clips of the
corrected classes in one half are stored as corrections; `finetune` from the shipped default with
no replay data from disk (its replay pack only); recall of every class on the other half, base
and fine-tuned.

    python scripts/uncorrected_classes.py          # prints and writes runs/absent_classes.json
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emodemo import audio as A  # noqa: E402
from emodemo.data import load_spec  # noqa: E402
from emodemo.finetune.pipeline import finetune  # noqa: E402
from emodemo.recognizer import load_recognizer  # noqa: E402
from emodemo.store import CorrectionStore  # noqa: E402

BASE = "models/default"
CASES = {"emovo_f3": ("emovo:speakers=emovo_f3", ["angry", "sad", "happy", "fearful"]),
         "nemo_SM0": ("nemo:speakers=SM0", ["angry", "sad", "neutral"])}


def recalls(rec, items, labels) -> tuple[dict, dict]:
    """Audio-branch recall per true class, and the share of each predicted class."""
    pred = [labels[int(np.argmax(rec.audio_proba(A.load_audio(str(i.audio)))))] for i in items]
    out = {}
    for lab in sorted({i.label for i in items}):
        idx = [k for k, i in enumerate(items) if i.label == lab]
        out[lab] = sum(pred[k] == lab for k in idx) / len(idx)
    return out, {lab: pred.count(lab) / len(pred) for lab in set(pred)}


def case(base, spec: str, corrected: list[str], name: str) -> dict:
    items = [i for i in load_spec(spec) if i.label in base.labels]
    half = set(sorted({i.id for i in items})[::2])
    train = [i for i in items if i.id in half and i.label in corrected]
    test = [i for i in items if i.id not in half]
    tmp = Path(tempfile.mkdtemp())
    store = CorrectionStore(f"sqlite:///{tmp / 'c.db'}", media_dir=str(tmp / "media"))
    for i in train:
        store.add(str(i.audio), i.label, annotator="me", speaker=name)
    rep = finetune(store, BASE, tmp / "ft", replay_spec="none", epochs=0)
    out: dict = {"corrected": corrected, "n_corrections": len(train), "n_test": len(test),
                 "written": rep.get("written")}
    out["base_recall"], out["base_hist"] = recalls(base, test, base.labels)
    if rep.get("written"):
        out["ft_recall"], out["ft_hist"] = recalls(load_recognizer(tmp / "ft"), test, base.labels)
    return out


def main() -> None:
    torch.set_num_threads(2)
    base = load_recognizer(BASE)
    res = {name: case(base, spec, corrected, name) for name, (spec, corrected) in CASES.items()}
    for name, r in res.items():
        print(name, json.dumps(r))
    Path("runs").mkdir(exist_ok=True)
    Path("runs/absent_classes.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
