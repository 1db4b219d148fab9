"""Launch the emodemo web app (also the Hugging Face Space entry point: `app_file: app.py`).

    python app.py                                   # http://127.0.0.1:7860
    python app.py --port 8080 --db sqlite:///tmp/c.db --bundle models/other
    python app.py --host 0.0.0.0 --max-file-size 100mb --max-duration 600
    python app.py --verbose                         # library logs too (model loading, HTTP ...)

Every option can also be set through the environment (the CLI wins); the variables are read
once, here, into `emodemo.settings.Settings` (see that module for the list). On a Hugging Face
Space (SPACE_ID is set) the server binds 0.0.0.0, corrections and fine-tuned models go to the
persistent /data volume when the Space has one, and annotators sign in with their Hugging Face
account when the Space has OAuth (`hf_oauth: true` in README.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from emodemo.settings import Settings  # noqa: E402  (light: standard library only)

log = logging.getLogger("emodemo.app")
QUIET_LOGGERS = ("httpx", "httpcore", "alembic", "urllib3", "gradio", "uvicorn", "asyncio")


def default_host(settings: Optional[Settings] = None) -> str:
    """0.0.0.0 on a Hugging Face Space (SPACE_ID set), else 127.0.0.1 (this machine only)."""
    return (settings or Settings.from_env()).server_name


def default_db(settings: Optional[Settings] = None) -> str:
    """$EMODEMO_DB; on a Space with persistent storage (/data), a database there; else the
    store's default (sqlite:///data/corrections.db relative to the working directory)."""
    from emodemo.store import DEFAULT_URL
    return (settings or Settings.from_env()).database_url() or DEFAULT_URL


def default_models_dir(settings: Optional[Settings] = None) -> Path:
    """$EMODEMO_MODELS_DIR; on a Space with persistent storage (/data), a folder there (so
    fine-tuned bundles survive restarts); else models/ next to app.py."""
    return (settings or Settings.from_env()).models_folder()


def parse_args(argv: Optional[Sequence[str]] = None,
               settings: Optional[Settings] = None) -> argparse.Namespace:
    """Command-line options; their defaults come from `settings` (default: the environment)."""
    s = settings or Settings.from_env()
    p = argparse.ArgumentParser(description="Run the emodemo web app.")
    p.add_argument("--bundle", default=s.bundle,
                   help="model bundle folder (default: $EMODEMO_BUNDLE or models/default)")
    p.add_argument("--db", default=None,
                   help="corrections database URL or SQLite file (default: $EMODEMO_DB or "
                        "sqlite:///data/corrections.db)")
    p.add_argument("--host", default=None,
                   help="address to bind (default 127.0.0.1; 0.0.0.0 on a Hugging Face Space)")
    p.add_argument("--port", type=int, default=s.port)
    p.add_argument("--max-file-size", default=s.max_file_size,
                   help="largest upload, e.g. 50mb (default 50mb)")
    p.add_argument("--max-duration", type=float, default=s.max_duration,
                   help="longest audio accepted, seconds (default 1800 = 30 min)")
    p.add_argument("--long-audio", type=float, default=s.long_audio,
                   help="audio longer than this (s) is split into segments (default 30)")
    p.add_argument("--segment-len", type=float, default=s.segment_len,
                   help="longest segment when splitting, seconds (default 10)")
    p.add_argument("--models-dir", default=None,
                   help="where the Models tab writes fine-tuned bundles (default: $EMODEMO_MODELS_DIR; "
                        "/data/emodemo/models on a Space with persistent storage; else models/); "
                        "the shipped models/ is always listed too")
    p.add_argument("--admin-token", default=s.admin_token,
                   help="if set, switching the active model and fine-tuning in the Models tab ask "
                        "for this token (default: $EMODEMO_ADMIN_TOKEN; set it on a public Space)")
    p.add_argument("--no-finetune", action="store_true", default=s.no_finetune,
                   help="hide fine-tuning in the Models tab (e.g. on a busy public Space); "
                        "switching bundles stays available")
    signin = p.add_mutually_exclusive_group()
    signin.add_argument("--sign-in", dest="sign_in", action="store_const", const=True, default=None,
                        help="annotators sign in with their Hugging Face account and corrections "
                             "record the account (default: on a Space with hf_oauth; "
                             "$EMODEMO_SIGN_IN=1/0)")
    signin.add_argument("--no-sign-in", dest="sign_in", action="store_const", const=False,
                        help="no sign-in: corrections record the optional typed name")
    p.add_argument("--no-preload-asr", action="store_true",
                   help="load the ASR model on the first request instead of at start")
    p.add_argument("--verbose", action="store_true", default=s.verbose,
                   help="also show library logs (model loading reports, migrations, HTTP requests)")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace, settings: Settings) -> Settings:
    """The environment's settings with the command line's options on top."""
    return settings.replace(
        bundle=args.bundle, db=args.db, host=args.host, port=args.port,
        max_file_size=args.max_file_size, max_duration=args.max_duration,
        long_audio=args.long_audio, segment_len=args.segment_len, models_dir=args.models_dir,
        admin_token=args.admin_token, no_finetune=args.no_finetune, sign_in=args.sign_in,
        preload_asr=not args.no_preload_asr, verbose=args.verbose)


def configure_logging(verbose: bool) -> None:
    """Default: this app's own events (model loaded, store, URL) and warnings from the rest.
    verbose: every library's INFO logs, the transformers load report and progress bars."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(asctime)s %(message)s"
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=fmt, force=True)
    log.setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        from transformers.utils import logging as tlog
        tlog.set_verbosity_error()          # the "LOAD REPORT" table of unused pooler weights
        tlog.disable_progress_bar()


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        env = Settings.from_env()                 # the environment, read once
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = parse_args(argv, env)
    settings = settings_from(args, env)
    configure_logging(settings.verbose)
    import emodemo
    from emodemo.errors import EmodemoError
    from emodemo.store import CorrectionStore
    from emodemo.ui import build_app, launch_kwargs, parse_size

    try:
        parse_size(settings.max_file_size)          # a clear message before any model loads
    except ValueError as exc:
        print(f"error: --max-file-size: {exc}", file=sys.stderr)
        return 2
    sign_in = settings.sign_in_enabled
    try:
        rec = emodemo.load_recognizer(settings.bundle, threads=settings.torch_threads,
                                      asr_threads=settings.asr_threads)
        log.info("model %s v%s loaded from %s", rec.name, rec.version, settings.bundle)
        store = CorrectionStore(default_db(settings), media_dir=settings.media_dir,
                                labels=rec.labels)
        log.info("corrections in %r", store)
        demo = build_app(settings, rec, store)
    except (EmodemoError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if sign_in:
        log.info("annotators sign in with their Hugging Face account")
    host = settings.server_name
    try:
        demo.launch(server_name=host, server_port=settings.port, quiet=not settings.verbose,
                    prevent_thread_lock=True, **launch_kwargs(demo.emodemo_limits))
    except (ValueError, OSError) as exc:   # port taken; sign-in off a Space without a HF login
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("running on %s", getattr(demo, "local_url", None) or f"http://{host}:{settings.port}/")
    if getattr(demo, "is_running", False):        # serve until interrupted
        demo.block_thread()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
