"""Writing a fine-tuned bundle: its lineage block (config.json) and the atomic write with the card."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .replay import REPLAY_PACK


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def parent_path(cfg: dict) -> str:
    """The bundle a fine-tuned or calibrated bundle was made from (its lineage or calibration
    record), for messages that send the user back to it."""
    for key in ("lineage", "calibration"):
        path = ((cfg.get(key) or {}).get("base") or {}).get("path")
        if path:
            return str(path)
    return "its base bundle"


def lineage(cfg, base_bundle, ds, clips, train_items, val_items, too_few, db_shown, snapshot, sources,
            reference, tolerance, decision, sp, tx, fu, recipe, seed, new_cfg, metrics) -> dict:
    return {
        "base": {"name": cfg.get("name"), "version": cfg.get("version"), "path": str(base_bundle),
                 "lineage": cfg.get("lineage")},
        "corrections": {"records": ds.n_records, "clips_used": len(train_items) + len(val_items),
                        "train": len(train_items), "val": len(val_items),
                        "per_class": ds.per_class(clips), "annotators": len(ds.per_annotator),
                        "ties_left_out": len(ds.ties),
                        "excluded": {k: len(v) for k, v in ds.excluded.items()},
                        "classes_too_few": too_few},
        "db": {"url": db_shown, "newest_correction": ds.newest.isoformat() if ds.newest else None,
               "snapshot_at": snapshot.isoformat(timespec="seconds")},
        "replay": sources, "reference": list(reference), "tolerance": tolerance,
        "forced": decision["forced"], "speech_updated": sp["updated"], "text_updated": tx["updated"],
        "fusion_refit": fu["refit"],
        "recipe": {"speech": {"method": "adapter", "beta": sp.get("beta"), "lambda": sp.get("lambda")},
                   "text": {k: recipe["text"].get(k) for k in ("epochs", "lr", "head_lr", "train_layers")},
                   "seed": seed, "speech_temperature": new_cfg["speech"].get("temperature")},
        "metrics": metrics,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_atomically(out_dir: Path, fill: Callable[[Path], None]) -> None:
    """Let `fill` write a bundle into a staging folder next to `out_dir`, then rename it into place
    (an existing `out_dir` is replaced only once the new one is complete)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(staging, 0o755)
        fill(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(str(staging), str(out_dir))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_bundle(out_dir: Path, base_bundle: Path, new_cfg: dict, speech, text, report: dict) -> None:
    """Write atomically (staging folder, then rename); the replay pack travels with the bundle."""
    from ..bundle import bundle_size, save_bundle
    from .card import finetune_card

    def fill(staging: Path) -> None:
        pack = base_bundle / (new_cfg.get("replay_pack") or {}).get("file", REPLAY_PACK)
        if pack.is_file():
            shutil.copy2(pack, staging / pack.name)
        else:
            new_cfg.pop("replay_pack", None)
        save_bundle(staging, new_cfg, speech, text, card="")
        (staging / "README.md").write_text(finetune_card(new_cfg, report, bundle_size(staging)))
        (staging / "finetune_report.json").write_text(json.dumps(jsonable(report), indent=2) + "\n")
    write_atomically(out_dir, fill)
