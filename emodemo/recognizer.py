"""The public front door: `load_recognizer()` → `EmotionRecognizer.predict()` → `Prediction`."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from . import audio as A
from .asr import ASR, WINDOW_FRAMES, Transcript, load_asr, recognize_with, translation_trust
from .bundle import DEFAULT_BUNDLE, BundleConfig, as_config, load_bundle
from .errors import AudioError, EmodemoError
from .fusion import LateFusion
from .settings import read_env
from .speech import NORMALIZE, NORMALIZE_MIN_SECONDS, NORMALIZE_MIN_SEGMENTS, masked_stats
from .text import clean_text, looks_english

log = logging.getLogger(__name__)
DEFAULT_THREADS = 1          # torch threads for inference (EMODEMO_TORCH_THREADS overrides)
TYPED_NOT_ENGLISH = ("the transcript does not look English; the text model reads English, so its "
                     "part of the prediction may be meaningless (translate it, or leave it empty "
                     "to let the speech recogniser transcribe and translate)")
NOT_TRANSLATED = ("the speech is in {name}; the text model reads English and the ASR does not "
                  "translate, so the prediction uses the audio only")


def env_threads() -> Optional[int]:
    """$EMODEMO_TORCH_THREADS (read through emodemo.settings) for a recognizer built without
    `threads`; None when unset (then DEFAULT_THREADS). A value that is not a number raises
    SettingsError naming the variable, as $EMODEMO_ASR_THREADS does (it was ignored silently)."""
    return read_env("torch_threads")


@dataclass
class Prediction:
    """One prediction. `audio`, `text` and `fused` map label → probability; `text` is None when
    there was no transcript (empty, or ASR found no speech).

    `transcript`: the words in the speaker's language. `language`: {"code", "name",
    "probability"} of the speech as the ASR identified it, None without ASR (typed transcript or
    audio only). `translation`: the English text the text branch read when the speech was not
    English ("" otherwise). `margin`: fused top-1 minus top-2 probability (small = unsure between
    two labels). `asr_trust`: in [0, 1], the factor the ASR's confidence put on the text branch's
    weight (asr.transcript_trust); None without ASR."""
    label: str
    fused: dict[str, float]
    audio: dict[str, float]
    text: Optional[dict[str, float]]
    transcript: str
    confidence: float = 0.0
    duration: float = 0.0
    start: float = 0.0
    end: float = 0.0
    bundle: str = ""
    bundle_version: str = ""
    warnings: list[str] = field(default_factory=list)
    language: Optional[dict] = None
    translation: str = ""
    margin: float = 0.0
    asr_trust: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)


class EmotionRecognizer:
    """Speech + text emotion recognizer with late fusion, loaded from a model bundle."""

    def __init__(self, config: BundleConfig | dict, speech, text, asr: Optional[ASR] = None,
                 threads: Optional[int] = None, asr_threads: Optional[int] = None):
        # One torch thread by default: the GE2E LSTM runs ~100 dependent steps per second of
        # audio, each ending in an OpenMP barrier, so a second thread loses more to waiting than it
        # gains, and collapses when another process holds a core (benchmarks/README.md).
        # load_recognizer (the entry point) applies it to the process (torch.set_num_threads).
        self.threads = max(1, int(threads or env_threads() or DEFAULT_THREADS))
        self.asr_threads = asr_threads      # CTranslate2 threads (None: asr.ctranslate2_threads)
        self.config = as_config(config)
        self.labels: list[str] = list(self.config.labels)
        self.speech = speech.eval()
        self.text_model = text.eval()
        self.fusion = self.config.fusion
        self._asr = asr
        self._asr_lock = threading.Lock()
        # the ASR of a clip runs here while the audio branch runs in the caller (_both_branches)
        self._asr_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emodemo-asr")
        self.translation_trust = translation_trust(self.config.get("asr"))
        self.name = str(self.config.name)
        self.version = str(self.config.version)
        self.bundle_path: Optional[Path] = None   # the folder it was loaded from, if any

    # ---- branches ----------------------------------------------------------------------
    @property
    def asr(self) -> ASR:
        """The ASR backend, loaded on first use (audio-only predictions never load it)."""
        with self._asr_lock:
            if self._asr is None:
                self._asr = load_asr(self.config.get("asr"), threads=self.asr_threads)
                # CTranslate2 sets the shared OpenMP runtime's thread count when it loads
                torch.set_num_threads(self.threads)
            return self._asr

    @asr.setter
    def asr(self, backend: Optional[ASR]) -> None:
        """Use another ASR backend (None: load the bundle's on next use)."""
        with self._asr_lock:
            self._asr = backend

    @property
    def loaded_asr(self) -> Optional[ASR]:
        """The ASR backend if it is loaded already, else None (never loads it)."""
        return self._asr

    def preload(self, warm_up: bool = True) -> threading.Thread:
        """Load the ASR model (and run each model once) in a background thread; a request that
        needs the ASR meanwhile waits for it. Returns the thread."""
        def run() -> None:
            try:
                asr = self.asr
                if warm_up:
                    rng = np.random.default_rng(0)
                    x = (0.01 * rng.standard_normal(A.SAMPLE_RATE)).astype(np.float32)
                    asr.transcribe(x)
                    self.audio_proba(x)
                    self.text_proba(["hello"])
            except Exception:  # noqa: BLE001 - the first real request reports the problem
                log.exception("background ASR load failed")
        t = threading.Thread(target=run, daemon=True, name="emodemo-preload")
        t.start()
        return t

    def recognize(self, wav: np.ndarray) -> Transcript:
        """The ASR's Transcript of a 16 kHz waveform (speaker's language, translation, trust)."""
        return recognize_with(self.asr, wav)

    def transcribe(self, wav: np.ndarray) -> str:
        return clean_text(self.recognize(wav).text)

    def audio_proba(self, wav: np.ndarray) -> np.ndarray:
        """Audio-branch class probabilities for one 16 kHz waveform (whole utterance)."""
        return self.audio_proba_batch([wav])[0]

    @torch.inference_mode()
    def audio_proba_batch(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Audio-branch probabilities for several 16 kHz waveforms at once, [n, classes].

        Clips are padded into one batch with their true lengths, sorted by length to limit the
        padding. Exact for backbones that say so (`exact_batching`: GE2E, a unidirectional LSTM with
        statistics pooled over the true frames only); other backbones see the padding, so clips are batched only with clips of the
        same length there."""
        if not len(wavs):
            return np.zeros((0, len(self.labels)))
        t = self.config.speech.temperature
        feats = [A.features(self.speech.feature, w) for w in wavs]
        exact = bool(getattr(self.speech.backbone, "exact_batching", False))
        out = np.zeros((len(wavs), len(self.labels)))
        groups: dict = {}
        for i, f in enumerate(feats):
            groups.setdefault(0 if exact else f.shape[0], []).append(i)
        for idx in groups.values():
            idx = sorted(idx, key=lambda i: feats[i].shape[0])
            lengths = torch.tensor([feats[i].shape[0] for i in idx])
            x = torch.nn.utils.rnn.pad_sequence([feats[i] for i in idx], batch_first=True)
            p = torch.softmax(self.speech(x, lengths) / t, dim=-1).double().numpy()
            out[idx] = p
        return out

    @torch.inference_mode()
    def audio_embedding(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(audio-branch probabilities as `audio_proba` gives them, the clip's pooled backbone
        statistics [2·frame_dim] standardised as the head reads them) from one pass; the
        annotation queue spreads what it serves over these features."""
        f = A.features(self.speech.feature, wav)
        frames, n = self.speech.frames(f[None], torch.tensor([f.shape[0]]))
        stats = masked_stats(frames, n)
        logits = self.speech.head(frames, n)
        if self.speech.adapter is not None:
            logits = self.speech.adapter(stats, logits)
        p = torch.softmax(logits / self.config.speech.temperature, dim=-1)[0].double().numpy()
        head = self.speech.head
        if hasattr(head, "mean") and hasattr(head, "std"):     # a PooledHead's standardisation
            stats = (stats - head.mean) / head.std
        return p, stats[0].double().numpy()

    @torch.inference_mode()
    def audio_proba_normalised(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Audio-branch probabilities of clips that share one setting (speaker, microphone, room:
        clips of one recording, or a batch the caller vouches for), each read relative to the
        setting's mean clip (the bundle's per-recording normalised head, `speech.normalize`).
        The clips must not all be one emotion: their mean would then pass for neutral."""
        if not self.can_normalize:
            raise EmodemoError(f"the bundle {self.name} v{self.version} has no per-recording "
                               "normalisation; predict without --normalize")
        stats = []
        for w in wavs:
            frames, n = self.speech.frames(A.features(self.speech.feature, w)[None])
            stats.append(masked_stats(frames, n)[0])
        blend = float((self.config.speech.normalize or {}).get("blend", 0.0))
        logits = self.speech.head.normalised_logits(torch.stack(stats), blend)
        return torch.softmax(logits, dim=-1).double().numpy()

    @property
    def can_normalize(self) -> bool:
        """Whether the bundle's speech head has the per-recording normalised path."""
        return bool(getattr(self.speech, "can_normalize", False))

    def _normalise_segments(self, chunks: Sequence[np.ndarray]) -> bool:
        """The rule for predict_segments: normalise by the recording itself when the bundle can
        and there is enough speech (config speech.normalize: min_segments, min_seconds)."""
        rule = self.config.speech.normalize or {}
        seconds = sum(c.size for c in chunks) / A.SAMPLE_RATE
        return (self.can_normalize and len(chunks) >= int(rule.get("min_segments", NORMALIZE_MIN_SEGMENTS))
                and seconds >= float(rule.get("min_seconds", NORMALIZE_MIN_SECONDS)))

    def text_proba(self, texts: Sequence[str]) -> np.ndarray:
        t = self.config.text.temperature
        return self.text_model.predict_proba([clean_text(x) for x in texts], temperature=t).double().numpy()

    def _dict(self, p: np.ndarray) -> dict[str, float]:
        return {lab: float(v) for lab, v in zip(self.labels, p)}

    # ---- public API --------------------------------------------------------------------
    def predict_text(self, texts: Sequence[str] | str) -> list[dict[str, float]]:
        """Text-branch probabilities for each text."""
        if isinstance(texts, str):
            texts = [texts]
        return [self._dict(p) for p in self.text_proba(list(texts))]

    def predict_wave(self, wav: np.ndarray, transcript: Optional[str] = None,
                     p_audio: Optional[np.ndarray] = None) -> Prediction:
        """Predict on an already-loaded 16 kHz mono waveform (see `predict`); the Prediction
        spans the whole waveform (start 0, end = its duration)."""
        warnings = []
        silent = A.is_silent(wav)
        if silent:
            warnings.append("the recording is silent or nearly silent; the prediction is unreliable")
        heard = None
        if p_audio is None and transcript is None and not silent:
            p_audio, heard = self._both_branches(wav)
        if p_audio is None:
            p_audio = self.audio_proba(wav)
        if transcript is None:
            if heard is None:
                heard = Transcript() if silent else self.recognize(wav)
            read, extra = self._heard(heard, warnings)
            transcript = clean_text(heard.text)
        else:
            transcript = read = clean_text(transcript)
            extra = {}
            if read and not looks_english(read):
                warnings.append(TYPED_NOT_ENGLISH)
        p_text = self.text_proba([read])[0] if read else None
        duration = wav.size / A.SAMPLE_RATE
        return self.combine(p_audio, p_text, transcript, duration=duration, end=duration,
                            warnings=warnings, **extra)

    def _both_branches(self, wav: np.ndarray) -> tuple[np.ndarray, Transcript]:
        """(audio probabilities, Transcript) of one clip: from one encoder pass where the speech
        backbone is the ASR's encoder (`_one_encoder_pass`), else with the ASR in a worker thread
        while the audio branch runs here (CTranslate2 and torch release the GIL: with two cores
        a clip takes the longer branch's time rather than the sum of both)."""
        p_audio, heard = self._one_encoder_pass(wav)
        if p_audio is not None:
            return p_audio, heard
        asr_job = self._asr_worker.submit(self.recognize, wav)
        try:
            p_audio = self.audio_proba(wav)
        except BaseException:
            asr_job.cancel()
            raise
        return p_audio, asr_job.result()

    @torch.inference_mode()
    def _one_encoder_pass(self, wav: np.ndarray) -> tuple[Optional[np.ndarray], Optional[Transcript]]:
        """(audio probabilities, Transcript) from ONE Whisper encoder pass where the speech
        backbone is the ASR model's own encoder, frozen, on the whole clip (a bundle that does not
        trim, or trims "span" as v8: `SpeechEmotionModel.shares_encoder_with`) and the clip fits
        one 30-s window; (None, None) otherwise (a bundle that trims before its encoder, as v7,
        encodes twice)."""
        asr = self.asr
        decode = getattr(asr, "recognize_encoder_output", None)
        if decode is None or not self.speech.shares_encoder_with(getattr(asr, "source", None)):
            return None, None
        feats = A.features(self.speech.feature, wav)
        if feats.shape[0] > WINDOW_FRAMES:
            return None, None
        logits, encoded = self.speech.logits_and_encoding(feats[None])
        p = torch.softmax(logits / self.config.speech.temperature, dim=-1).double().numpy()[0]
        return p, decode(encoded.numpy(), feats.shape[0])

    def _heard(self, heard: Transcript, warnings: list) -> tuple[str, dict]:
        """(the English text the text branch reads, the Prediction's ASR fields) of a Transcript.
        A translation's trust is scaled by the bundle's translation_trust (asr.TRANSLATION_TRUST)."""
        read = clean_text(heard.english)
        if heard.text and not read and heard.language:
            warnings.append(NOT_TRANSLATED.format(name=heard.language_info()["name"]))
        trust = heard.trust * (self.translation_trust if heard.translation else 1.0) if read else 0.0
        return read, {"language": heard.language_info(), "translation": clean_text(heard.translation),
                      "asr_trust": round(float(trust), 4)}

    def combine(self, p_audio: np.ndarray, p_text: Optional[np.ndarray], transcript: str,
                fusion: Optional[LateFusion] = None, **extra) -> Prediction:
        """Fuse branch probabilities into a Prediction (used to re-fuse without re-running models).
        `extra`: Prediction fields; its `asr_trust` (None: a typed transcript, full weight)
        multiplies the text branch's weight (LateFusion's trust)."""
        trust = extra.get("asr_trust")
        fused = (fusion or self.fusion)(p_audio, p_text, 1.0 if trust is None else trust)
        i = int(np.argmax(fused))
        top = np.sort(fused)[::-1]
        margin = float(top[0] - top[1]) if top.size > 1 else float(top[0])
        return Prediction(label=self.labels[i], fused=self._dict(fused), audio=self._dict(p_audio),
                          text=None if p_text is None else self._dict(p_text), transcript=transcript,
                          confidence=float(fused[i]), bundle=self.name, bundle_version=self.version,
                          margin=margin, **extra)

    def predict(self, audio: A.AudioInput, transcript: Optional[str] = None) -> Prediction:
        """Predict the emotion of a clip.

        `audio`: a file path (wav/flac/ogg/mp3/m4a/webm ...) or a (waveform, sample_rate) pair.
        `transcript`: None → transcribe with ASR; "" → audio only; text → used as given.
        Raises `emodemo.AudioError` for audio that cannot be used.
        """
        return self.predict_wave(A.load_audio(audio), transcript)

    def predict_many(self, audios: Sequence[A.AudioInput], transcript: Optional[str] = None,
                     batch_size: int = 16, normalize: str = "none") -> Iterator[tuple[int, Prediction | Exception]]:
        """Predict many clips, yielding (index, Prediction or the AudioError it raised) in input
        order. With `transcript` given ("" = audio only) the audio branch runs in batches of
        `batch_size`; with None each clip is transcribed on its own.

        `normalize="batch"`: the clips are one setting (one speaker / microphone / room, several
        emotions): the audio branch reads each relative to their mean (`audio_proba_normalised`).
        Fewer than two usable clips keep the single-clip path. Do not use it for a batch that is
        all one emotion, or for clips of different speakers and rooms."""
        if normalize not in NORMALIZE:
            raise EmodemoError(f"normalize must be one of {', '.join(NORMALIZE)}, not {normalize!r}")
        if normalize == "batch":
            yield from self._predict_setting(audios, transcript)
            return
        for start in range(0, len(audios), max(1, batch_size)):
            chunk = list(enumerate(audios[start:start + batch_size], start))
            waves: dict[int, np.ndarray] = {}
            errors: dict[int, Exception] = {}
            for i, a in chunk:
                try:
                    waves[i] = A.load_audio(a)
                except AudioError as exc:
                    errors[i] = exc
            probs = {}
            if transcript is not None and waves:
                keys = list(waves)
                probs = dict(zip(keys, self.audio_proba_batch([waves[k] for k in keys])))
            for i, _ in chunk:
                if i in errors:
                    yield i, errors[i]
                    continue
                yield i, self.predict_wave(waves[i], transcript, p_audio=probs.get(i))

    def _predict_setting(self, audios: Sequence[A.AudioInput], transcript: Optional[str]):
        """predict_many(normalize="batch"): load every clip, then normalise them together."""
        waves: dict[int, np.ndarray] = {}
        errors: dict[int, Exception] = {}
        for i, a in enumerate(audios):
            try:
                waves[i] = A.load_audio(a)
            except AudioError as exc:
                errors[i] = exc
        keys = list(waves)
        probs = (dict(zip(keys, self.audio_proba_normalised([waves[k] for k in keys])))
                 if len(keys) >= 2 else {})
        for i in range(len(audios)):
            yield (i, errors[i]) if i in errors else (i, self.predict_wave(waves[i], transcript,
                                                                            p_audio=probs.get(i)))

    def predict_segments(self, audio: A.AudioInput, transcribe: bool = True,
                         max_len: float = 10.0) -> list[Prediction]:
        """Split long audio into speech segments and predict each (start/end set in seconds).
        With enough speech (`_normalise_segments`) the audio branch reads each segment relative
        to the recording's mean segment (per-recording normalisation, as predict_many's "batch")."""
        wav = audio if isinstance(audio, np.ndarray) else A.load_audio(audio)
        segs = [(seg, chunk) for seg, chunk in A.iter_segments(wav, max_len=max_len)
                if chunk.size >= A.MIN_SAMPLES]
        chunks = [c for _, c in segs]
        probs = self.audio_proba_normalised(chunks) if self._normalise_segments(chunks) else [None] * len(segs)
        preds = []
        for (seg, chunk), p_audio in zip(segs, probs):
            p = self.predict_wave(chunk, None if transcribe else "", p_audio=p_audio)
            p.start, p.end = seg.start, seg.end
            preds.append(p)
        if not preds:
            raise AudioError("no usable speech segment found in the audio")
        return preds


def load_recognizer(bundle: Optional[str | Path] = None, asr: Optional[ASR] = None,
                    threads: Optional[int] = None, preload_asr: bool = False,
                    asr_threads: Optional[int] = None) -> EmotionRecognizer:
    """Load a recognizer from a bundle directory (default: models/default).

    threads: torch threads (default $EMODEMO_TORCH_THREADS or 1; see EmotionRecognizer).
    preload_asr: load the ASR model in a background thread now instead of on first use.
    asr_threads: the ASR's CPU threads (default $EMODEMO_ASR_THREADS or up to 4)."""
    rec = EmotionRecognizer(*load_bundle(bundle or DEFAULT_BUNDLE), asr=asr, threads=threads,
                            asr_threads=asr_threads)
    rec.bundle_path = Path(bundle or DEFAULT_BUNDLE).resolve()
    torch.set_num_threads(rec.threads)      # the process's torch threads, set by the entry point
    if preload_asr:
        rec.preload()
    return rec
