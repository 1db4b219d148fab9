"""Every `EMODEMO_*` environment variable, read once at an entry point into one `Settings` object.

    settings = Settings.from_env()          # app.py (and the CLI) do this once, at start
    settings = settings.replace(port=8080)  # command-line flags win over the environment

Nothing below the entry points reads the environment: they receive the values they need from
here. Hugging Face Space variables (`SPACE_ID`, `OAUTH_CLIENT_ID`) and Gradio's own
(`GRADIO_SERVER_NAME`, `GRADIO_SERVER_PORT`, `PORT`) are read here too.

| variable | field | meaning |
|---|---|---|
| EMODEMO_BUNDLE | bundle | model bundle folder the app starts with |
| EMODEMO_DB | db | corrections database URL or SQLite file |
| EMODEMO_MEDIA_DIR | media_dir | folder for the corrections' audio |
| EMODEMO_HOST (GRADIO_SERVER_NAME) | host | address the app binds |
| EMODEMO_PORT (GRADIO_SERVER_PORT, PORT) | port | port the app listens on |
| EMODEMO_MAX_FILE_SIZE, EMODEMO_MAX_DURATION | max_file_size, max_duration | upload limits |
| EMODEMO_LONG_AUDIO, EMODEMO_SEGMENT_LEN | long_audio, segment_len | long-audio segmentation |
| EMODEMO_NO_FINETUNE | no_finetune | hide fine-tuning in the Models tab |
| EMODEMO_MODELS_DIR | models_dir | where fine-tuned bundles are written |
| EMODEMO_ADMIN_TOKEN | admin_token | token for switching models and fine-tuning |
| EMODEMO_SIGN_IN | sign_in | 1/0: annotators sign in with Hugging Face (default: on a Space with OAuth) |
| EMODEMO_VERBOSE | verbose | show library logs at start-up |
| EMODEMO_TORCH_THREADS, EMODEMO_ASR_THREADS | torch_threads, asr_threads | inference threads |
| EMODEMO_DATA | data | folder with the training corpora |
| EMODEMO_DEGRADED_DIR | degraded_dir | where degraded copies of training clips are rendered (default runs/degraded) |
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from .errors import SettingsError

ROOT = Path(__file__).resolve().parent.parent
PERSISTENT = Path("/data")          # a Hugging Face Space's persistent storage, when it has one
FALSE = ("", "0", "false", "no", "off")


def cache_dir(kind: str) -> Path:
    """emodemo's cache folder of one kind ("whisper", "features", "segments", "queue") under
    $XDG_CACHE_HOME (default ~/.cache)/emodemo: what is computed once and reused, never user data."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "emodemo" / kind


def _get(env: Mapping[str, str], *names: str) -> Optional[str]:
    for n in names:
        v = str(env.get(n, "") or "").strip()
        if v:
            return v
    return None


def _flag(value: Optional[str]) -> Optional[bool]:
    return None if value is None else value.lower() not in FALSE


def _number(env: Mapping[str, str], names: str | tuple, kind, default):
    names = (names,) if isinstance(names, str) else names
    v = _get(env, *names)
    if v is None:
        return default
    try:
        return kind(v)
    except ValueError:
        used = next(n for n in names if _get(env, n) is not None)
        raise SettingsError(f"{used}={v!r} is not a number") from None


#: Settings field -> the environment variables it is read from (the first one set wins)
VARIABLES: dict[str, tuple[str, ...]] = {
    "bundle": ("EMODEMO_BUNDLE",), "db": ("EMODEMO_DB",), "media_dir": ("EMODEMO_MEDIA_DIR",),
    "host": ("EMODEMO_HOST", "GRADIO_SERVER_NAME"),
    "port": ("EMODEMO_PORT", "GRADIO_SERVER_PORT", "PORT"),
    "max_file_size": ("EMODEMO_MAX_FILE_SIZE",), "max_duration": ("EMODEMO_MAX_DURATION",),
    "long_audio": ("EMODEMO_LONG_AUDIO",), "segment_len": ("EMODEMO_SEGMENT_LEN",),
    "no_finetune": ("EMODEMO_NO_FINETUNE",), "models_dir": ("EMODEMO_MODELS_DIR",),
    "admin_token": ("EMODEMO_ADMIN_TOKEN",), "sign_in": ("EMODEMO_SIGN_IN",),
    "verbose": ("EMODEMO_VERBOSE",), "torch_threads": ("EMODEMO_TORCH_THREADS",),
    "asr_threads": ("EMODEMO_ASR_THREADS",), "data": ("EMODEMO_DATA",),
    "degraded_dir": ("EMODEMO_DEGRADED_DIR",),
}
KINDS = {"port": int, "max_duration": float, "long_audio": float, "segment_len": float,
         "torch_threads": int, "asr_threads": int, "no_finetune": bool, "sign_in": bool,
         "verbose": bool}


def _read(field: str, env: Mapping[str, str]):
    """One field's value from `env`, parsed; None when none of its variables is set (a flag set
    to 0/false/no/off is False: sign_in=False turns sign-in off even on a Space)."""
    names = VARIABLES[field]
    kind = KINDS.get(field, str)
    if kind is bool:
        return _flag(_get(env, *names))
    if kind is str:
        return _get(env, *names)
    return _number(env, names, kind, None)


def read_env(field: str, env: Optional[Mapping[str, str]] = None):
    """One setting straight from the environment (None if unset), for a library call that was
    given no value: `CorrectionStore()` (db, media_dir), `load_recognizer()` (torch_threads), the
    ASR (asr_threads). Only this module reads `EMODEMO_*` variables. Raises SettingsError (naming
    the variable) for a bad number."""
    return _read(field, os.environ if env is None else env)


@dataclass(frozen=True)
class Settings:
    """What the app (and the CLI) are configured with; see the module docstring."""
    bundle: str = str(ROOT / "models" / "default")
    db: Optional[str] = None
    media_dir: Optional[str] = None
    host: Optional[str] = None
    port: int = 7860
    max_file_size: str = "50mb"
    max_duration: float = 1800.0
    long_audio: float = 30.0
    segment_len: float = 10.0
    no_finetune: bool = False
    models_dir: Optional[str] = None
    admin_token: Optional[str] = None
    sign_in: Optional[bool] = None          # None: automatic (a Space with OAuth enabled)
    verbose: bool = False
    preload_asr: bool = True
    torch_threads: Optional[int] = None
    asr_threads: Optional[int] = None
    data: Optional[str] = None
    degraded_dir: Optional[str] = None
    space_id: Optional[str] = None
    space_oauth: bool = False               # the Space has `hf_oauth: true` (OAUTH_CLIENT_ID set)
    persistent_dir: Optional[str] = None    # /data on a Space with persistent storage

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        """Read every variable once (from `env`, default os.environ)."""
        env = os.environ if env is None else env
        space = _get(env, "SPACE_ID")
        persistent = None
        if space and PERSISTENT.is_dir() and os.access(PERSISTENT, os.W_OK):
            persistent = str(PERSISTENT)
        values = {f: _read(f, env) for f in VARIABLES}
        return cls(**{f: v for f, v in values.items() if v is not None}, space_id=space,
                   space_oauth=bool(space and _get(env, "OAUTH_CLIENT_ID")), persistent_dir=persistent)

    def replace(self, **changes) -> "Settings":
        """A copy with `changes` (None values are ignored: an unset flag keeps the env value)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    # ---- derived values -------------------------------------------------------------------
    @property
    def server_name(self) -> str:
        """0.0.0.0 on a Hugging Face Space, else 127.0.0.1 (this machine only), unless set."""
        return self.host or ("0.0.0.0" if self.space_id else "127.0.0.1")

    def database_url(self) -> Optional[str]:
        """`db`; on a Space with persistent storage, a database there; None: the store's default."""
        if self.db:
            return self.db
        if self.persistent_dir:
            return f"sqlite:///{Path(self.persistent_dir) / 'emodemo' / 'corrections.db'}"
        return None

    def models_folder(self) -> Path:
        """Where fine-tuned bundles go: `models_dir`; on a Space with persistent storage a folder
        there (so they survive restarts); else models/ of the checkout."""
        if self.models_dir:
            return Path(self.models_dir)
        if self.persistent_dir:
            return Path(self.persistent_dir) / "emodemo" / "models"
        return ROOT / "models"

    @property
    def sign_in_enabled(self) -> bool:
        """Annotators sign in with Hugging Face: as set, else on a Space that has OAuth."""
        return self.space_oauth if self.sign_in is None else bool(self.sign_in)
