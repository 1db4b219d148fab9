"""``python -m emodemo queue {add,list,next,vote,skip,progress}``: the annotation queue.

    python -m emodemo queue add clips.zip long.wav --db sqlite:///data/corrections.db
    python -m emodemo queue add ana/ --speaker ana --db ...      # who speaks in these files
    python -m emodemo queue add campaign/ --speaker-from folder  # one folder per speaker
    python -m emodemo queue list --db ... --json          # one JSON object per clip, serving order
    python -m emodemo queue next --db ... --annotator ana --json
    python -m emodemo queue vote 12 happy --db ... --annotator ana
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Sequence

from ..textnorm import one_line
from .queue import AnnotationQueue, QueueItem, QueueOptions
from .rank import ORDERS

DEFAULTS = QueueOptions()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=None, help="database URL or SQLite file "
                        "(default: $EMODEMO_DB or sqlite:///data/corrections.db)")
    common.add_argument("--media-dir", default=None, help="audio folder (default: <db folder>/media)")
    common.add_argument("--votes-needed", type=int, default=DEFAULTS.votes_needed,
                        help=f"agreeing votes that finish a clip (default {DEFAULTS.votes_needed})")
    common.add_argument("--lease-seconds", type=float, default=DEFAULTS.lease_seconds,
                        help=f"how long a served clip is held (default {DEFAULTS.lease_seconds:g})")
    common.add_argument("--order", choices=ORDERS, default=DEFAULTS.order,
                        help="how clips nobody voted on are served: coverage (typical clips "
                        "spread over the recordings), uncertainty (the model's least sure "
                        "first), hybrid (coverage weighted by uncertainty, after a few clips of "
                        "each predicted label), balanced (coverage weighted by the need for each "
                        "true class, the model's labels read through the votes so far) or spread "
                        "(seeded random choice stratified over clusters of the clips) "
                        f"(default {DEFAULTS.order})")
    common.add_argument("--seed", type=int, default=DEFAULTS.seed,
                        help="the spread order's seed: the same seed gives the same order "
                        f"(default {DEFAULTS.seed})")
    parser = argparse.ArgumentParser(prog="emodemo queue",
                                     description="Active-learning annotation queue.")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("add", parents=[common], help="queue audio files, folders, zips")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--bundle", default=None, help="model bundle for the pre-labels "
                   "(default: models/default)")
    p.add_argument("--no-asr", action="store_true", help="pre-label from the audio only")
    p.add_argument("--ranking", choices=("margin", "entropy"), default=DEFAULTS.ranking)
    p.add_argument("--max-len", type=float, default=DEFAULTS.max_len,
                   help="recordings longer than this (s) are cut into segments")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--speaker", default=None, metavar="NAME",
                     help="who speaks in all the files of this call (or the session / recording "
                     "setup): fine-tuning keeps each speaker's clips on one side of its "
                     "held-out check, so it measures voices it did not train on. A clip already "
                     "queued without a speaker gets this one (also with --speaker-from); one "
                     "with another speaker keeps it, and the command says so")
    who.add_argument("--speaker-from", choices=("folder",), default=None,
                     help="folder: each file's speaker is the name of the folder it is in (inside "
                     "a zip: its folder there, else the zip's name), for a campaign laid out as "
                     "one folder per speaker or session")
    p = sub.add_parser("list", parents=[common], help="all clips in serving order")
    p.add_argument("--json", action="store_true", help="one JSON object per clip")
    p = sub.add_parser("next", parents=[common], help="lease the next clip to an annotator")
    p.add_argument("--annotator", required=True)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("vote", parents=[common], help="label a clip")
    p.add_argument("item", type=int)
    p.add_argument("label")
    p.add_argument("--annotator", required=True)
    p.add_argument("--transcript", default=None)
    p = sub.add_parser("skip", parents=[common], help="pass on a clip")
    p.add_argument("item", type=int)
    p.add_argument("--annotator", required=True)
    p = sub.add_parser("progress", parents=[common], help="done / total, votes per annotator")
    p.add_argument("--json", action="store_true")
    return parser


def item_json(it: QueueItem) -> str:
    """One clip as the JSON line of `list` / `next`."""
    return json.dumps({"id": it.id, "file": it.file_name, "start": it.start, "end": it.end,
                       "priority": round(it.priority, 4), "model_label": it.model_label,
                       "votes": it.votes, "done": it.done, "disagreement": it.disagreement,
                       "leased_by": it.leased_by, "media_path": it.media_path,
                       "speaker": it.speaker},
                      ensure_ascii=False)


def item_line(it: QueueItem) -> str:
    votes = ",".join(f"{k}:{v}" for k, v in it.votes.items()) or "-"
    return "\t".join([str(it.id), one_line(it.file_name, 50), f"{it.start:.2f}-{it.end:.2f}",
                      f"{it.priority:.3f}", one_line(it.model_label or "-"), votes,
                      "done" if it.done else ""])


def folder_speaker(given: Path, name: str) -> str:
    """--speaker-from folder: the name of the folder a file is in. `given` is the path named on
    the command line, `name` the clip's display name (`ingest.expand`: relative to a folder
    given, "<zip name>/<member>" for a zip's member); inside a zip its folder there, else the
    zip's name without ".zip"."""
    given = given.expanduser().resolve()
    if given.is_dir():
        return (given / name).parent.name
    if given.suffix.lower() == ".zip" and given.is_file():
        member = PurePosixPath(name[len(given.name) + 1:])
        return member.parent.name or given.stem
    return given.parent.name


def speaker_notes(report: Any, out: Any) -> None:
    """`AddReport.speaker_lines` for `queue add`: how many got the speaker given on `out`, each
    clip that keeps another one as a note on stderr."""
    done, kept = report.speaker_lines()
    for line in done:
        print(line, file=out)
    for line in kept:
        print(f"note: {line}", file=sys.stderr)


def _run(queue: AnnotationQueue, args: argparse.Namespace, out: Any) -> int:
    if args.cmd == "add":
        from ..analysis import prelabel_note     # the model's side (torch): only `add` needs it
        rep = queue.add(args.paths, folder_speaker if args.speaker_from == "folder" else args.speaker)
        for err in rep.errors:
            print(one_line(err, 300), file=sys.stderr)
        print(f"queued {len(rep.added)} clips from {rep.files} files "
              f"({rep.skipped} already queued, {len(rep.errors)} problems)", file=out)
        speaker_notes(rep, out)
        note = prelabel_note(queue.model_labels())
        if note:
            print(f"note: {note}", file=sys.stderr)
        return 0 if not rep.errors else 1
    if args.cmd == "list":
        for it in queue.items():
            print(item_json(it) if args.json else item_line(it), file=out)
        return 0
    if args.cmd == "next":
        it = queue.next(args.annotator)
        if it is None:
            print("null" if args.json else "nothing left for you", file=out)
        else:
            print(item_json(it) if args.json else item_line(it), file=out)
        return 0
    if args.cmd == "vote":
        cid = queue.vote(args.item, args.annotator, args.label, transcript=args.transcript)
        print(f"stored correction {int(cid)}{' (duplicate)' if cid.duplicate else ''}", file=out)
        return 0
    if args.cmd == "skip":
        queue.skip(args.item, args.annotator)
        print(f"skipped {args.item}", file=out)
        return 0
    prog = queue.progress()
    if args.json:
        print(json.dumps({"done": prog.done, "total": prog.total,
                          "per_annotator": prog.per_annotator}, ensure_ascii=False), file=out)
    else:
        print(f"{prog.done}/{prog.total} clips done", file=out)
        for name, n in prog.per_annotator.items():
            print(f"{one_line(name, 60)}\t{n}", file=out)
    return 0


def main_queue(argv: Optional[Sequence[str]] = None) -> int:
    """Run one queue command; errors (EmodemoError) are raised for `emodemo.cli` to print."""
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, (int, type(None))) else 2
    from ..store import CorrectionStore

    options = QueueOptions(
        votes_needed=args.votes_needed, lease_seconds=args.lease_seconds, order=args.order,
        seed=args.seed,
        ranking=getattr(args, "ranking", DEFAULTS.ranking),
        transcribe=not getattr(args, "no_asr", False),
        max_len=getattr(args, "max_len", DEFAULTS.max_len))
    recognizer = None
    if args.cmd == "add" and args.bundle:
        from ..recognizer import load_recognizer
        recognizer = load_recognizer(args.bundle)
    with CorrectionStore(args.db, media_dir=args.media_dir) as store:
        return _run(AnnotationQueue(store, recognizer, options), args, sys.stdout)
