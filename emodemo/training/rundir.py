"""A run folder (config, log, metrics JSON, plots, resumable checkpoints) and the DDP helpers."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch

#: The logger every training loop reports to; finetune listens on it for epoch progress.
TRAIN_LOG = "emodemo.train"


class Run:
    """A run directory: config, log, metrics JSON, plots, resumable checkpoints."""

    def __init__(self, path: str | Path, cfg: dict, rank: int = 0):
        self.path = Path(path)
        self.rank = rank
        if rank == 0:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            fh = logging.FileHandler(self.path / "train.log")
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logging.getLogger("emodemo").addHandler(fh)
            logging.getLogger("emodemo").setLevel(logging.INFO)

    def save_json(self, name: str, obj) -> None:
        if self.rank == 0:
            (self.path / name).write_text(json.dumps(obj, indent=2) + "\n")

    def checkpoint(self, name: str, state: dict) -> None:
        if self.rank == 0:
            tmp = self.path / f".{name}.tmp"
            torch.save(state, tmp)
            tmp.replace(self.path / name)

    def resume(self, name: str) -> Optional[dict]:
        p = self.path / name
        return torch.load(p, map_location="cpu", weights_only=False) if p.exists() else None


# ---- distributed helpers (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK) -------------------
def dist_setup() -> tuple[int, int]:
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def dist_teardown() -> None:
    """Every rank calls this at the same point: a barrier first, so no rank tears its gloo pairs
    down while another still talks on them (a rank leaving alone aborted about 1 run in 6)."""
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
