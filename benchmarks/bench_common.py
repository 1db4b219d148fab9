"""Paths and settings shared by the benchmark modules (see run.py for the whole benchmark)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SR = 16000
N_CLASSES = 7

# "before" reproductions (see run.py's docstring)
BEFORE_TORCH_THREADS = 2       # torch's default thread count on the 2-core box, before fix 1
CLI_BATCH_SIZE = 16            # `python -m emodemo predict --batch-size` default
CLI_BEFORE_ARGS = ("--batch-size", "1", "--threads", str(BEFORE_TORCH_THREADS))
VARIANTS = {"after": "after (defaults)",
            "before": f"before ({BEFORE_TORCH_THREADS} torch threads, 30-s ASR window + fallback)"}
