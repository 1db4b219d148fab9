"""Launch the emodemo web app (also the Hugging Face Space entry point: `app_file: app.py`).

    python app.py                                   # http://127.0.0.1:7860
    python app.py --port 8080 --db sqlite:///tmp/c.db --bundle models/other
    python app.py --host 0.0.0.0 --max-file-size 100mb --max-duration 600

Every option can also be set through the environment (the CLI wins): EMODEMO_BUNDLE, EMODEMO_DB,
EMODEMO_HOST, EMODEMO_PORT (or GRADIO_SERVER_PORT), EMODEMO_MAX_FILE_SIZE,
EMODEMO_MAX_DURATION, EMODEMO_LONG_AUDIO, EMODEMO_SEGMENT_LEN, EMODEMO_NO_FINETUNE, EMODEMO_MODELS_DIR, EMODEMO_ADMIN_TOKEN. On a Hugging Face Space
(SPACE_ID is set) the server binds 0.0.0.0, and corrections go to the persistent /data volume
when the Space has one.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("emodemo.app")


def _env(*names: str, default=None):
    for n in names:
        v = os.environ.get(n, "").strip()
        if v:
            return v
    return default


def default_host() -> str:
    """0.0.0.0 on a Hugging Face Space (SPACE_ID set), else 127.0.0.1 (this machine only)."""
    return _env("EMODEMO_HOST", "GRADIO_SERVER_NAME",
                default="0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")


def default_db() -> str:
    """$EMODEMO_DB; on a Space with persistent storage (/data), a database there; else the
    store's default (sqlite:///data/corrections.db relative to the working directory)."""
    from emodemo.store import default_url
    if not os.environ.get("EMODEMO_DB", "").strip() and os.environ.get("SPACE_ID"):
        persistent = Path("/data")
        if persistent.is_dir() and os.access(persistent, os.W_OK):
            return f"sqlite:///{persistent / 'emodemo' / 'corrections.db'}"
    return default_url()


def default_models_dir() -> Path:
    """$EMODEMO_MODELS_DIR; on a Space with persistent storage (/data), a folder there (so
    fine-tuned bundles survive restarts); else models/ next to app.py."""
    env = _env("EMODEMO_MODELS_DIR")
    if env:
        return Path(env)
    if os.environ.get("SPACE_ID"):
        persistent = Path("/data")
        if persistent.is_dir() and os.access(persistent, os.W_OK):
            return persistent / "emodemo" / "models"
    return ROOT / "models"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run the emodemo web app.")
    p.add_argument("--bundle", default=_env("EMODEMO_BUNDLE", default=str(ROOT / "models" / "default")),
                   help="model bundle folder (default: $EMODEMO_BUNDLE or models/default)")
    p.add_argument("--db", default=None,
                   help="corrections database URL or SQLite file (default: $EMODEMO_DB or "
                        "sqlite:///data/corrections.db)")
    p.add_argument("--host", default=None,
                   help="address to bind (default 127.0.0.1; 0.0.0.0 on a Hugging Face Space)")
    p.add_argument("--port", type=int,
                   default=int(_env("EMODEMO_PORT", "GRADIO_SERVER_PORT", "PORT", default="7860")))
    p.add_argument("--max-file-size", default=_env("EMODEMO_MAX_FILE_SIZE", default="50mb"),
                   help="largest upload, e.g. 50mb (default 50mb)")
    p.add_argument("--max-duration", type=float,
                   default=float(_env("EMODEMO_MAX_DURATION", default="1800")),
                   help="longest audio accepted, seconds (default 1800 = 30 min)")
    p.add_argument("--long-audio", type=float, default=float(_env("EMODEMO_LONG_AUDIO", default="30")),
                   help="audio longer than this (s) is split into segments (default 30)")
    p.add_argument("--segment-len", type=float, default=float(_env("EMODEMO_SEGMENT_LEN", default="10")),
                   help="longest segment when splitting, seconds (default 10)")
    p.add_argument("--models-dir", default=None,
                   help="where the Models tab writes fine-tuned bundles (default: $EMODEMO_MODELS_DIR; "
                        "/data/emodemo/models on a Space with persistent storage; else models/); "
                        "the shipped models/ is always listed too")
    p.add_argument("--admin-token", default=_env("EMODEMO_ADMIN_TOKEN"),
                   help="if set, switching the active model and fine-tuning in the Models tab ask "
                        "for this token (default: $EMODEMO_ADMIN_TOKEN; set it on a public Space)")
    p.add_argument("--no-finetune", action="store_true",
                   default=_env("EMODEMO_NO_FINETUNE", default="") not in ("", "0", "false"),
                   help="hide fine-tuning in the Models tab (e.g. on a busy public Space); "
                        "switching bundles stays available")
    p.add_argument("--no-preload-asr", action="store_true",
                   help="load the ASR model on the first request instead of at start")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import emodemo
    from emodemo.errors import EmodemoError
    from emodemo.store import CorrectionStore
    from emodemo.ui import build_app, launch_kwargs, parse_size

    try:
        max_bytes = parse_size(args.max_file_size)
    except ValueError as exc:
        print(f"error: --max-file-size: {exc}", file=sys.stderr)
        return 2
    try:
        rec = emodemo.load_recognizer(args.bundle)
        store = CorrectionStore(args.db or default_db(), labels=rec.labels)
        demo = build_app(rec, store, max_file_bytes=max_bytes, max_duration=args.max_duration,
                         long_audio=args.long_audio, segment_len=args.segment_len,
                         preload_asr=not args.no_preload_asr,
                         models_dir=Path(args.models_dir) if args.models_dir else default_models_dir(),
                         extra_model_dirs=[ROOT / "models"], allow_finetune=not args.no_finetune,
                         admin_token=args.admin_token)
    except (EmodemoError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("model %s %s; corrections in %r", rec.name, rec.version, store)
    demo.launch(server_name=args.host or default_host(), server_port=args.port,
                **launch_kwargs(demo.emodemo_limits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
