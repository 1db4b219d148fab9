"""Writing a fine-tuned bundle: its lineage block (config.json) and the atomic write with the card."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from .replay import REPLAY_PACK

if TYPE_CHECKING:
    from .options import FinetuneRun


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


def parent_path(cfg) -> str:
    """The bundle a fine-tuned or calibrated bundle was made from (its lineage or calibration
    record), for messages that send the user back to it."""
    lin = cfg.get("lineage") or {}
    if lin.get("parent"):
        return str(lin["parent"])
    for key in ("lineage", "calibration"):
        path = ((cfg.get(key) or {}).get("base") or {}).get("path")
        if path:
            return str(path)
    return "its base bundle"


def per_class(run: "FinetuneRun") -> dict:
    """{label: {"before", "after", "corrected", "heldout_before", "heldout_after"}}: audio recall
    on the data the base knew (the first reference set: the replay guard or a reference spec; the
    held-out corrections when there is none), whether anyone corrected that class, and recall on
    the held-out corrections."""
    corrected = {c.label for c in run.clips}
    out = {}
    for row in run.report["changes"]["per_class"]:
        has_ref = row["reference_before"] is not None
        out[row["label"]] = {"before": row["reference_before"] if has_ref else row["heldout_before"],
                             "after": row["reference_after"] if has_ref else row["heldout_after"],
                             "corrected": row["label"] in corrected,
                             "heldout_before": row["heldout_before"], "heldout_after": row["heldout_after"]}
    return out


def heldout_ua(run: "FinetuneRun", when: str) -> Optional[float]:
    """Fused UA (the app's answer) on the held-out corrections, before or after."""
    m = run.report["metrics"]["heldout_corrections"].get(when) or {}
    return (m.get("fused") or m.get("audio") or {}).get("UA")


def lineage(run: "FinetuneRun") -> dict:
    """The `lineage` block of a fine-tuned bundle's config (contract C7, plus the details the card
    shows): parent, corrections used, held-out UA before/after, forced, the named checks, per class."""
    cfg, ds, sp = run.cfg, run.ds, run.report_speech
    first_ref = next(iter(run.reference), None)
    return jsonable({
        "parent": str(run.base_bundle), "corrections_used": len(run.train_items) + len(run.val_items),
        "heldout_before": heldout_ua(run, "before"), "heldout_after": heldout_ua(run, "after"),
        "heldout_metric": "fused UA on the held-out corrections",
        "forced": run.decision["forced"], "checks": run.decision["checks"],
        "per_class": per_class(run), "per_class_on": first_ref or "held-out corrections",
        "base": {"name": cfg.name, "version": cfg.version, "path": str(run.base_bundle),
                 "lineage": cfg.lineage},
        "corrections": {"records": ds.n_records, "clips_used": len(run.train_items) + len(run.val_items),
                        "train": len(run.train_items), "val": len(run.val_items),
                        "per_class": ds.per_class(run.clips), "annotators": len(ds.per_annotator),
                        "ties_left_out": len(ds.ties),
                        "excluded": {k: len(v) for k, v in ds.excluded.items()},
                        "classes_too_few": run.too_few},
        "db": {"url": run.db_shown, "newest_correction": ds.newest.isoformat() if ds.newest else None,
               "snapshot_at": run.snapshot.isoformat(timespec="seconds")},
        "replay": run.replay["sources"], "reference": list(run.reference), "tolerance": run.opts.tolerance,
        "speech_updated": sp["updated"], "text_updated": run.report_text["updated"],
        "fusion_refit": run.report_fusion["refit"],
        "recipe": {"speech": {"method": "adapter", "beta": sp.get("beta"), "lambda": sp.get("lambda")},
                   "text": {k: run.recipe["text"].get(k) for k in ("epochs", "lr", "head_lr", "train_layers")},
                   "seed": run.opts.seed, "speech_temperature": run.new_cfg.speech.temperature},
        "metrics": run.report["metrics"],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


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


def write_bundle(out_dir: Path, base_bundle: Path, new_cfg, speech, text, report: dict) -> None:
    """Write atomically (staging folder, then rename); the replay pack travels with the bundle."""
    from ..bundle import bundle_size, save_bundle
    from .card import finetune_card

    def fill(staging: Path) -> None:
        cfg = new_cfg
        pack = base_bundle / (cfg.replay_pack or {}).get("file", REPLAY_PACK)
        if pack.is_file():
            shutil.copy2(pack, staging / pack.name)
        else:
            cfg = cfg.with_(replay_pack=None)
        save_bundle(staging, cfg, speech, text, card="")
        (staging / "README.md").write_text(finetune_card(cfg, report, bundle_size(staging)))
        (staging / "finetune_report.json").write_text(json.dumps(jsonable(report), indent=2) + "\n")
    write_atomically(out_dir, fill)
