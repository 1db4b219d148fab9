"""Loading foreign weights into a module with explicit checks (`load_checked`): every backbone
(GE2E, WeSpeaker ResNet, Whisper) loads its checkpoint through it and gets a `LoadReport`."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .errors import EmodemoError

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What happened when foreign weights were loaded into a module."""
    source: str = ""
    missing: list[str] = field(default_factory=list)         # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)      # in the checkpoint, not in the model
    shape_mismatch: list[str] = field(default_factory=list)  # "key: checkpoint (..) vs model (..)"
    ignored: list[str] = field(default_factory=list)         # deliberately skipped (training heads)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], what: str,
                 ignore_prefixes: tuple[str, ...] = (), strict: bool = False) -> LoadReport:
    """Load `state` into `module` after explicit key and shape checks; log and return a report.

    `module.` prefixes (DDP) are stripped and keys under `ignore_prefixes` skipped. Raises
    EmodemoError on shape mismatches, when no key matches (wrong file), or, with `strict`, on
    missing/unexpected keys. BatchNorm step counters are not reported as missing.
    """
    own = module.state_dict()
    rep = LoadReport(source=what)
    clean: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if any(k.startswith(p) for p in ignore_prefixes):
            rep.ignored.append(k)
        elif k not in own:
            rep.unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            rep.shape_mismatch.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        else:
            clean[k] = v
    rep.missing = [k for k in own if k not in clean and not k.endswith("num_batches_tracked")]
    if rep.shape_mismatch:
        raise EmodemoError(f"{what}: shape mismatch: " + "; ".join(rep.shape_mismatch))
    if not clean:
        raise EmodemoError(f"{what}: no parameter in the checkpoint matches the model; is it the right file?")
    for kind in ("missing", "unexpected"):
        keys = getattr(rep, kind)
        if keys:
            log.warning("%s: %d %s keys: %s", what, len(keys), kind, ", ".join(keys[:8]))
    if strict and not rep.ok:
        raise EmodemoError(f"{what}: strict load failed: missing {rep.missing[:8]}, "
                           f"unexpected {rep.unexpected[:8]}")
    if rep.ignored:
        log.info("%s: ignored %d keys (%s)", what, len(rep.ignored), ", ".join(rep.ignored[:8]))
    # copy_ casts, so e.g. float num_batches_tracked from averaged checkpoints load fine
    module.load_state_dict(clean, strict=False)
    rep.loaded = len(clean)
    return rep

