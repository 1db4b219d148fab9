"""``python -m emodemo corrections {list,export,import,stats,agreement,backup,delete,restore}``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from sqlalchemy.exc import SQLAlchemyError

from ..errors import EmodemoError
from ..textnorm import one_line
from .corrections import CorrectionStore
from .db import DB_ENV, DEFAULT_URL, first_line, redact_url
from .media import MEDIA_ENV
from .labelstudio import is_labelstudio_json, label_config
from .transfer import EXPORT_FORMATS, record_json


def build_parser() -> argparse.ArgumentParser:
    def db_options(p: argparse.ArgumentParser, default: Any) -> argparse.ArgumentParser:
        p.add_argument("--db", default=default,
                       help=f"database URL or SQLite file (default: ${DB_ENV} or {DEFAULT_URL})")
        p.add_argument("--media-dir", default=default,
                       help=f"audio folder (default: ${MEDIA_ENV} or <db folder>/media)")
        return p

    # --db / --media-dir work before or after the command name
    common = db_options(argparse.ArgumentParser(add_help=False), argparse.SUPPRESS)
    parser = db_options(argparse.ArgumentParser(
        prog="emodemo corrections", description="Inspect and move the stored corrections."), None)
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    p = command("list", help="show corrections, newest first")
    p.add_argument("--limit", type=int, default=50, help="at most this many (0 = all; default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--deleted", action="store_true", help="the soft-deleted corrections instead")
    p = command("export", help="write all corrections to OUT (.csv, .jsonl, a Hugging Face "
                "audiofolder or Label Studio JSON)")
    p.add_argument("out")
    p.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                   help="default: from OUT's suffix (.csv / .jsonl); audiofolder: OUT is a new "
                   "folder; labelstudio: JSON tasks (+ OUT-config.xml, the labeling config)")
    p.add_argument("--audio-url", default=None,
                   help="labelstudio: prefix for the audio references (default: Label Studio's "
                   "local-files URL, relative to the media folder's parent)")
    p = command("import", help="add corrections from a CSV (path,label[,transcript][,annotator]) "
                "or a Label Studio JSON export")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--annotator", default=None, help="annotator for rows without one")
    p.add_argument("--audio-root", default=None,
                   help="Label Studio JSON: the folder its audio references point into "
                   "(default: the JSON file's folder)")
    p.add_argument("--media-root", default=None,
                   help="CSV: the exporting store's media folder, which the exported paths are "
                   "relative to (default: a 'media' folder next to the CSV)")
    p = command("stats", help="counts per label and annotator")
    p.add_argument("--json", action="store_true")
    command("agreement", help="inter-annotator agreement per clip")
    p = command("backup", help="copy the SQLite database to OUT")
    p.add_argument("out")
    for name, what in (("delete", "soft-delete"), ("restore", "restore soft-deleted")):
        p = command(name, help=f"{what} corrections (the rows stay; nothing is lost)")
        p.add_argument("ids", metavar="ID", type=int, nargs="+")
        p.add_argument("--by", required=True, help="who does it (annotator name or account)")
        p.add_argument("--admin", action="store_true", help="allowed for anyone's corrections")
    return parser


def _list(store: CorrectionStore, args: argparse.Namespace, out) -> int:
    recs = store.corrections(limit=args.limit or None, deleted=bool(args.deleted))
    speakers = any(r.speaker for r in recs)     # the column only when someone named one
    for r in recs:
        if args.json:
            out.write(record_json(r) + "\n")
        else:
            out.write("\t".join([
                str(r.id), r.created_at.isoformat(timespec="seconds"),
                one_line(r.label), "pred=" + one_line(r.predicted_label or "-"),
                one_line(r.annotator or "-", 30),
                *(["speaker=" + one_line(r.speaker or "-", 30)] if speakers else []),
                one_line(r.transcript_corrected or r.transcript_shown or "", 60),
            ]) + "\n")
    if not recs and not args.json:
        print("no corrections yet", file=sys.stderr)
    return 0


def _export(store: CorrectionStore, args: argparse.Namespace, out) -> int:
    n = store.export(args.out, format=args.format, audio_url=args.audio_url)
    if args.format == "labelstudio":
        config = Path(args.out).with_name(Path(args.out).stem + "-config.xml")
        config.write_text(label_config(store.labels), encoding="utf-8")
        print(f"exported {n} Label Studio tasks to {args.out} (labeling config: {config})",
              file=out)
    elif args.format == "audiofolder":
        print(f"exported {n} corrections to {args.out} "
              f"(datasets.load_dataset('audiofolder', data_dir=...))", file=out)
    else:
        print(f"exported {n} corrections to {args.out}", file=out)
    return 0


def _import(store: CorrectionStore, args: argparse.Namespace, out) -> int:
    if is_labelstudio_json(args.file):
        res = store.import_labelstudio(args.file, audio_root=args.audio_root,
                                       annotator=args.annotator)
    else:
        res = store.import_csv(args.file, annotator=args.annotator, media_root=args.media_root)
    for err in res.errors:
        print(one_line(err, 300), file=sys.stderr)
    print(f"imported {res.imported} corrections, {len(res.errors)} rows with errors", file=out)
    return 0 if not res.errors else 1


def _stats(store: CorrectionStore, args: argparse.Namespace, out) -> int:
    st = store.stats()
    if args.json:
        st = dict(st, by_annotator={("" if k is None else k): v
                                    for k, v in st["by_annotator"].items()})
        out.write(json.dumps(st, ensure_ascii=False) + "\n")
        return 0
    out.write(f"corrections\t{st['corrections']}\nmedia\t{st['media']}\n")
    for k, v in st["by_label"].items():
        out.write(f"label\t{one_line(k)}\t{v}\n")
    for k, v in st["by_annotator"].items():
        out.write(f"annotator\t{one_line('(anonymous)' if k is None else k, 60)}\t{v}\n")
    return 0


def _agreement(store: CorrectionStore, args: argparse.Namespace, out) -> int:
    for r in store.agreement():
        span = "" if r.start is None and r.end is None else f" [{r.start}-{r.end}]"
        out.write(f"{r.media_sha256[:12]}{span}\t{r.n_annotators} annotators\t"
                  f"{one_line(r.majority_label)}\t{r.agreement:.2f}"
                  f"{' (tie)' if r.tie else ''}\n")
    return 0


def _backup(store: CorrectionStore, args: argparse.Namespace, out) -> int:
    dest = store.backup(args.out)
    print(f"backed up {redact_url(store.url)} to {dest}", file=out)
    return 0


def _delete_or_restore(store: CorrectionStore, args: argparse.Namespace, out) -> int:
    act = store.delete if args.cmd == "delete" else store.restore
    for cid in args.ids:
        rec = act(cid, by=args.by, admin=args.admin)
        state = f"deleted by {one_line(rec.deleted_by, 60)}" if rec.deleted_at else "live"
        print(f"{rec.id}\t{state}", file=out)
    return 0


COMMANDS = {"list": _list, "export": _export, "import": _import, "stats": _stats,
            "agreement": _agreement, "backup": _backup, "delete": _delete_or_restore,
            "restore": _delete_or_restore}


def main_corrections(argv: Optional[Sequence[str]] = None) -> int:
    """``emodemo corrections {list,export,import,stats,agreement,backup}``; returns an exit code:
    0 done, 1 an error (one line on stderr) or rows that could not be imported, 2 bad usage."""
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, (int, type(None))) else 2
    try:
        store = CorrectionStore(args.db, media_dir=args.media_dir)
        try:
            return COMMANDS[args.cmd](store, args, sys.stdout)
        finally:
            store.close()
    except (EmodemoError, OSError, SQLAlchemyError) as exc:
        print(f"error: {one_line(first_line(exc), 300)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_corrections())
