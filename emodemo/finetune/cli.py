"""`python -m emodemo finetune ...`: the command line of fine-tuning, with progress that reads well
in a terminal (a tqdm bar) and in a log or pipe (one plain line per step, no escape codes)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from ..errors import EmodemoError
from .dataset import MIN_PER_CLASS, FinetuneError, format_summary, uncorrected_warning
from .options import CLI_KNOBS, FinetuneOptions
from .pipeline import FINETUNE_RECIPE
from .write import jsonable
from .replay import DEFAULT_REPLAY_N

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m emodemo finetune",
        description="Fine-tune a new bundle version from the stored corrections.")
    p.add_argument("--db", default=None, help="corrections database URL or SQLite file "
                   "(default: $EMODEMO_DB or sqlite:///data/corrections.db)")
    p.add_argument("--media-dir", default=None, help="the store's audio folder (default: <db folder>/media)")
    p.add_argument("--base", default=None, help="base bundle (default: models/default)")
    p.add_argument("--out", default=None, help="new bundle directory, e.g. models/default-ft1 (required "
                   "unless --dry-run)")
    p.add_argument("--replay", action="append", default=None, metavar="SPEC",
                   help="base training data to mix in (repeatable), e.g. ravdess:actors=1-16; default: the "
                   "base bundle's own training specs where present on this machine (the bundle's replay "
                   "pack is always used); 'none' for no data from disk")
    p.add_argument("--replay-n", type=int, default=DEFAULT_REPLAY_N, help="items sampled per replay spec")
    p.add_argument("--reference", action="append", default=None, metavar="SPEC",
                   help="data spec the new bundle must not be worse on (repeatable), e.g. ravdess:actors=17-20")
    p.add_argument("--tolerance", type=float, default=0.02, help="allowed UA drop on the reference (default 0.02)")
    p.add_argument("--force", action="store_true", help="write even when worse on the reference")
    p.add_argument("--dry-run", action="store_true", help="print the dataset summary, write nothing")
    p.add_argument("--min-per-class", type=int, default=MIN_PER_CLASS,
                   help=f"clips a class needs to be used (default {MIN_PER_CLASS})")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"text-branch epochs (default {FINETUNE_RECIPE['text']['epochs']}); the speech "
                   "adapter is fitted to convergence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--run-dir", default=None, help="keep the text-training log and checkpoints here (a "
                   "rerun with the same folder resumes); default: a temporary folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _fmt(m, branch: str) -> str:
    if not m or branch not in m:
        return "–"
    return f"{m[branch]['UA']:.3f}"


def print_report(rep: dict) -> None:
    ho = rep["metrics"]["heldout_corrections"]
    print(f"{'data':<40} {'branch':<7} {'base UA':>8} {'new UA':>8}")
    for name, r in [("held-out corrections", ho)] + list(rep["metrics"]["reference"].items()):
        for branch in ("audio", "text", "fused"):
            if branch in r.get("before", {}):
                print(f"{name[:40]:<40} {branch:<7} {_fmt(r['before'], branch):>8} {_fmt(r['after'], branch):>8}")
    sp = rep["speech"]
    if sp.get("val_UA_probe") is not None:
        print(f"{'(linear probe on the same corrections)':<40} {'audio':<7} {'':>8} {sp['val_UA_probe']:>8.3f}")
    print(f"speech: {'adapted' if sp['updated'] else 'kept (' + sp.get('reason', '') + ')'}; "
          f"text: {'fine-tuned' if rep['text']['updated'] else 'kept (' + rep['text'].get('reason', '') + ')'}; "
          f"fusion: {'re-fitted' if rep['fusion']['refit'] else 'kept'}")
    if rep.get("changes", {}).get("sentence"):
        print(rep["changes"]["sentence"])
    warning = uncorrected_warning(rep)
    if warning:
        print(warning)


class Progress:
    """A tqdm bar on a terminal (stderr); elsewhere one line per new step on stdout ("[ 42%] what"),
    no escape codes. Nothing until the checks passed, so a quick failure prints one clean line."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.bar = None
        self.last = ""

    def __call__(self, frac: float, msg: str) -> None:
        if frac < 0.03 and self.bar is None and not self.last:
            return
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm
                self.bar = tqdm(total=100, desc="finetune", file=sys.stderr,
                                bar_format="{l_bar}{bar}| {n:.0f}/100 [{elapsed}]")
            self.bar.n = min(100.0, round(frac * 100, 1))
            self.bar.set_description(msg[:60])
            self.bar.refresh()
            return
        step = msg.split(":")[0] if msg.startswith("features of") else msg
        if step != self.last or frac >= 1.0:
            if not (msg.startswith("features of") and step == self.last):
                print(f"[{frac * 100:3.0f}%] {msg}", file=self.stream, flush=True)
            self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main_finetune(argv: Optional[Sequence[str]] = None) -> int:
    """`emodemo finetune ...`; exit 0 written (or dry run), 3 not written (worse on the reference, or nothing changed),
    2 bad usage or too few corrections, 1 other error."""
    from . import pipeline
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, (int, type(None))) else 2
    if not args.dry_run and not args.out:
        print("error: --out is required (or use --dry-run)", file=sys.stderr)
        return 2
    from ..bundle import DEFAULT_BUNDLE
    from ..store import default_url
    bar = Progress()
    quiet = args.dry_run or args.json
    try:
        opts = FinetuneOptions(
            replay_spec=args.replay, reference_spec=args.reference, tolerance=args.tolerance, force=args.force,
            dry_run=args.dry_run, min_per_class=args.min_per_class, epochs=args.epochs, seed=args.seed,
            replay_n=args.replay_n, media_dir=args.media_dir, overwrite=args.overwrite, run_dir=args.run_dir,
            knobs=CLI_KNOBS)
        rep = pipeline.finetune(args.db or default_url(), args.base or DEFAULT_BUNDLE, args.out or "", opts,
                                progress=None if quiet else bar)
    except EmodemoError as exc:
        bar.close()
        msg = str(exc).strip().splitlines()
        print(f"error: {msg[0] if msg else type(exc).__name__}", file=sys.stderr)
        return 2 if isinstance(exc, FinetuneError) else 1
    except Exception as exc:  # noqa: BLE001 - a one-line message, exit 1
        bar.close()
        log.debug("finetune failed", exc_info=True)
        print(f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        return 1
    bar.close()
    if args.json:
        print(json.dumps(jsonable({k: v for k, v in rep.items() if k not in ("speech", "text")} |
                                  {"speech": {k: v for k, v in rep.get("speech", {}).items() if k != "history"},
                                   "text": {k: v for k, v in rep.get("text", {}).items() if k != "history"}}),
                         indent=2))
    if args.dry_run:
        if not args.json:
            print(format_summary(rep["dataset"]))
            print("dry run: nothing written")
        if rep.get("guard"):
            print(f"error: {rep['guard']}", file=sys.stderr)
            return 2
        return 0
    if not args.json:
        print_report(rep)
    if rep["written"]:
        if not args.json:
            print(f"wrote {args.out} (v{rep['version']})" + (" despite a worse reference (--force)"
                                                           if rep["gate"]["forced"] else ""))
        return 0
    if rep.get("unchanged"):
        print("not written: nothing changed: " + "; ".join(rep["unchanged"])
              + " (more corrections, from more speakers, give the adapter something to learn)", file=sys.stderr)
        return 3
    print("not written: worse on the reference set: " + "; ".join(rep["gate"]["failures"]), file=sys.stderr)
    return 3


def main_pack(argv: Optional[Sequence[str]] = None) -> int:
    """`emodemo finetune-pack --bundle DIR [--data SPEC ...]`: (re)write a bundle's replay pack from
    its training data (default: the speech training specs in its config; run where the data is)."""
    from ..bundle import read_config
    from .replay import original_specs, pack_replay
    p = argparse.ArgumentParser(prog="python -m emodemo finetune-pack",
                                description="Write a bundle's replay pack (replay.safetensors).")
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", action="append", default=None, metavar="SPEC",
                   help="speech data specs (default: the bundle's own speech training specs, "
                        "degraded copies left out)")
    p.add_argument("--per-class", type=int, default=64, help="clips per class and spec (default 64)")
    args = p.parse_args(argv)
    specs = args.data or original_specs(read_config(args.bundle))
    print(json.dumps(pack_replay(args.bundle, specs, args.per_class), indent=2))
    return 0


def main_calibrate(argv: Optional[Sequence[str]] = None) -> int:
    """`emodemo calibrate --base DIR --out DIR CLIP ...`: a calibrated bundle from unlabelled clips
    of a new setting (emodemo.finetune.calibrate); exit 0 written, 2 refused (with the reason)."""
    from .calibrate import MIN_CLIPS, calibrate, largest_share
    p = argparse.ArgumentParser(
        prog="python -m emodemo calibrate",
        description="Calibrate a bundle to a new kind of recording (language, microphone, room) from "
                    f"unlabelled clips: at least {MIN_CLIPS}, varied speech, ideally several speakers.")
    p.add_argument("clips", nargs="+", help="audio files of the new setting (no labels needed)")
    p.add_argument("--base", default=None, help="bundle to calibrate (default: models/default)")
    p.add_argument("--out", required=True, help="new bundle directory, e.g. models/my-setting")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    from ..bundle import DEFAULT_BUNDLE
    try:
        rep = calibrate(args.base or DEFAULT_BUNDLE, args.clips, args.out)
    except EmodemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    for path, why in rep["skipped"]:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"calibrated on {rep['clips']} clips (shift {rep['shift_vs_training_spread']:.2f}x the training "
          f"clips' spread); largest predicted class on them: {largest_share(rep['histogram_before'])} before, "
          f"{largest_share(rep['histogram_after'])} after")
    print(f"wrote {args.out}")
    return 0

