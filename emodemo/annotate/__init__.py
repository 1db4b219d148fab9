"""The annotation queue: active learning for a team of annotators (issue #22).

    from emodemo.store import CorrectionStore
    from emodemo.annotate import AnnotationQueue, QueueOptions

    queue = AnnotationQueue(CorrectionStore(url), options=QueueOptions(votes_needed=2))
    queue.add(["recordings.zip", "long_meeting.wav"])   # pre-labelled by the model
    item = queue.next("ana")                             # leased to ana
    queue.vote(item.id, "ana", "happy")                  # a correction in the store
    queue.progress()

Modules: ``rank`` (uncertainty, disagreement), ``ingest`` (files, folders, zips, segments,
pre-labels), ``queue`` (`AnnotationQueue`), ``cli`` (``python -m emodemo queue ...``).
"""
from __future__ import annotations

from .queue import AddReport, AnnotationQueue, Progress, QueueItem, QueueOptions

__all__ = ["AnnotationQueue", "QueueOptions", "QueueItem", "AddReport", "Progress"]
