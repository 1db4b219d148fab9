"""Calibration to a new kind of recording without labels.

    python -m emodemo calibrate --base models/default --out models/my-setting clips/*.wav

A head trained on some corpora meets a new language, microphone or room as a constant offset of
the backbone's frames, and calls most of it one class (the leave-one-corpus-out histograms in the
model card). Given unlabelled clips of the new setting, with varied speech and emotions (the clips
you are about to analyse will do), calibration stores one vector in the new bundle,

    shift = mean frame of the training audio (from the bundle's replay pack) − mean frame of the clips,

that `speech.FrameShift` adds to every frame, so the new setting arrives where the head learned.
Measured (docs/generalisation.md): a bundle that never heard Polish, calibrated on 200 unlabelled
clips of other Polish speakers, went from UA 0.194 to 0.270 on two unseen Polish speakers, and its
largest predicted class from 43 % to 24 %. Clips that are all
one emotion would move that emotion to the average, so calibrate on a varied set.

Calibration and fine-tuning are alternatives: a fine-tuned bundle's adapter learned from unshifted
frames, so it is refused here (calibrate its base), and fine-tuning refuses a calibrated base (its
corrections adapt the base to their setting by themselves).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..training import features as FT
from .dataset import FinetuneError
from .replay import load_pack
from .write import parent_path, write_atomically

log = logging.getLogger(__name__)

MIN_CLIPS = 20             # fewer clips give a mean frame that says more about them than the setting


def _hist(p: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    counts = np.bincount(p.argmax(1), minlength=len(labels)) / max(1, len(p))
    return {lab: round(float(c), 4) for lab, c in zip(labels, counts)}


def clip_frames(speech, paths: Sequence[str | Path], progress: Optional[Callable[[int, int], None]] = None):
    """Mean backbone frame (uncalibrated) and the head's probabilities on it (the audio branch of a
    bundle without adapter or calibration) of each readable clip, and the clips that could not be
    used (path, reason). Extracted by training.features, the one extractor."""
    speech.eval()
    dim, skipped = int(speech.backbone.frame_dim), []
    rows = FT.extract_all(paths, FT.pooled_extractor(speech.backbone_frames, speech.feature, speech.head),
                          progress=progress, failed=skipped)
    means = [r[:dim].float() for r in rows]
    return means, np.array([torch.softmax(r[2 * dim:], -1).double().numpy() for r in rows]), skipped


def audio_branch_proba(speech, paths: Sequence[str | Path]) -> np.ndarray:
    """The audio branch's probabilities (calibration, adapter and all) of each clip."""
    @torch.inference_mode()
    def proba(wav: np.ndarray) -> torch.Tensor:
        return torch.softmax(speech(*FT.clip_input(speech.feature, wav)), -1)[0]
    return np.array([p.double().numpy() for p in FT.extract_all(paths, proba)])


def calibrate(base: str | Path, paths: Sequence[str | Path], out: str | Path,
              progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Write `out`: the base bundle with a frame shift fitted on `paths` (unlabelled). Returns a
    report: clips used and skipped, the size of the shift and the prediction histogram of the
    audio branch on the clips before and after."""
    from ..bundle import load_bundle
    base, out = Path(base), Path(out)
    if out.resolve() == base.resolve():
        raise FinetuneError("--out must differ from --base (the base bundle is never overwritten)")
    cfg, speech, text = load_bundle(base)
    labels = cfg.labels
    if cfg.speech.adapter:
        raise FinetuneError(f"{base} was fine-tuned on corrections (its adapter learned from uncalibrated "
                            f"frames); calibrate {parent_path(cfg)} instead, or keep fine-tuning")
    if cfg.speech.calibrated:
        raise FinetuneError(f"{base} is already calibrated; calibrate {parent_path(cfg)} instead (a "
                            "calibration replaces the last one, it does not add to it)")
    ref, _ = load_pack(base, cfg, speech)
    if ref is None:
        raise FinetuneError(f"{base} has no replay pack that fits it, and the pack is where the training "
                            f"audio's mean frame comes from; rebuild it where the training data is: "
                            f"python -m emodemo finetune-pack --bundle {base}")
    dim = int(speech.backbone.frame_dim)
    reference = torch.tensor(ref.x[:, :dim].mean(0), dtype=torch.float32)
    means, before, skipped = clip_frames(speech, paths, progress)
    if len(means) < MIN_CLIPS:
        raise FinetuneError(f"{len(means)} usable clips (need {MIN_CLIPS}, of varied speech from the new "
                            f"setting)" + (f"; {len(skipped)} could not be read" if skipped else ""))
    domain = torch.stack(means).mean(0)
    shift = reference - domain
    from ..speech import FrameShift
    speech.calibration = FrameShift(dim)
    speech.calibration.shift.copy_(shift)
    unread = {s for s, _ in skipped}
    after = audio_branch_proba(speech, [p for p in paths if str(p) not in unread])
    spread = float(torch.from_numpy(ref.x[:, :dim]).float().std(0).norm())
    report = {"base": str(base), "out": str(out), "clips": len(means), "skipped": skipped,
              "shift_norm": round(float(shift.norm()), 3),
              "shift_vs_training_spread": round(float(shift.norm()) / max(spread, 1e-6), 3),
              "histogram_before": _hist(before, labels), "histogram_after": _hist(after, labels)}
    new_cfg = cfg.with_(
        speech=replace(cfg.speech, calibrated=True), name=out.name, version=f"{cfg.version}.cal",
        replay_pack=None,                            # fine-tuning refuses a calibrated bundle
        calibration={"base": {"name": cfg.name, "version": cfg.version, "path": str(base)},
                     "clips": len(means), "shift_norm": report["shift_norm"],
                     "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    from ..bundle import save_bundle
    write_atomically(out, lambda staging: save_bundle(staging, new_cfg, speech, text,
                                                      card=card(new_cfg, report, base)))
    return report


def largest_share(h: dict) -> str:
    """'label NN %' of the most predicted class in a histogram."""
    lab = max(h, key=h.get)
    return f"{lab} {100 * h[lab]:.0f} %"


def card(cfg, report: dict, base: Path) -> str:
    base_card = (base / "README.md").read_text() if (base / "README.md").exists() else ""
    lic = "cc-by-nc-sa-4.0" if "cc-by-nc-sa-4.0" in base_card else "other"
    rows = "\n".join(f"| {lab} | {100 * report['histogram_before'][lab]:.0f} % | {100 * report['histogram_after'][lab]:.0f} % |"
                     for lab in cfg.labels)
    return f"""---
license: {lic}
tags: [speech-emotion-recognition, calibration]
---
# emodemo bundle `{cfg.name}` v{cfg.version} (calibrated)

The bundle `{report['base']}` (v{cfg.calibration['base']['version']}) calibrated without labels on
{report['clips']} clips of a new setting (`python -m emodemo calibrate`): the audio branch adds one
vector to every backbone frame (the training audio's mean frame minus these clips'; norm
{report['shift_norm']}, {report['shift_vs_training_spread']:.2f}× the spread of the training clips'
mean frames). Nothing else changed: text branch, fusion and all weights are the base's.

Audio-branch predictions on the calibration clips (largest class before: {largest_share(report['histogram_before'])},
after: {largest_share(report['histogram_after'])}):

| class | before | after |
|---|---|---|
{rows}

Training data, metrics and limitations: the base bundle's card, below. The license is the base's:
its training corpora are non-commercial (CC BY-NC-SA 4.0), so this bundle is too.

---

{base_card.split('---', 2)[-1].strip() if base_card.startswith('---') else base_card}
"""
