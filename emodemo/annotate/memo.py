"""The queue's typicality kept on disk, so that a new process does not compute it again.

`rank.typicality` is quadratic in the clips (about 10 s for 20,000 on 2 cores) and depends only
on them; a process keeps it in memory (`rank._memoised`), but every `python -m emodemo queue next`
is a new process. `on_disk` keeps the result in `settings.cache_dir("queue")` by the clips'
content (the same clips in any order give the same file), written atomically, the newest
DISK_KEEP files kept; for queues of DISK_MIN_ROWS clips or more (smaller ones compute in well
under a second). A cache that cannot be read or written is skipped: the value is computed.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..settings import cache_dir
from ..store.media import atomic_open

log = logging.getLogger(__name__)

DISK_MIN_ROWS = 2000     # smaller queues: computed each time (< 0.2 s)
DISK_KEEP = 16           # files kept (a queue's clips change as clips are added)


def _path(kind: str, rows: np.ndarray, extra: tuple) -> Path:
    h = hashlib.blake2b(rows.tobytes(), digest_size=20)
    h.update(repr((rows.shape, str(rows.dtype), *extra)).encode())
    return cache_dir("queue") / f"{kind}-{h.hexdigest()}.npy"


def _save(path: Path, value: np.ndarray) -> None:
    with atomic_open(path) as f:
        np.save(f, value)
    old = sorted(path.parent.glob("*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)[DISK_KEEP:]
    for p in old:
        p.unlink(missing_ok=True)


def on_disk(kind: str, rows: np.ndarray, extra: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()` (an array with one value per row of `rows`), read from the cache when these
    rows and `extra` were computed before (by any process), else computed and written there."""
    if len(rows) < DISK_MIN_ROWS:
        return compute()
    path = _path(kind, rows, extra)
    try:
        value = np.load(path, allow_pickle=False)
        if value.shape[:1] == rows.shape[:1]:
            os.utime(path)                          # recently used: kept longer
            return value
    except (OSError, ValueError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.debug("queue cache %s unreadable (%s): computing", path, exc)
    value = compute()
    try:
        _save(path, value)
    except OSError as exc:
        log.debug("queue cache %s not written (%s)", path, exc)
    return value
