"""In-process measurements of a loaded recognizer: the bundle to use, per-stage latency, our audio
branch against peer architectures, and profiles (`--profile`)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from bench_common import N_CLASSES, SR
from bench_timing import interleaved, timeit

DEV_BUNDLE = Path(tempfile.gettempdir()) / "emodemo-bench-bundle"


def resolve_bundle(arg: Optional[str] = None) -> tuple[str, str]:
    """(bundle path, note). models/default, else /tmp/bundle_v1, else a same-architecture bundle
    with untrained heads built once under the temp dir (speed does not depend on the weights)."""
    if arg:
        return str(arg), "given"
    from emodemo.bundle import DEFAULT_BUNDLE
    for cand in (DEFAULT_BUNDLE, Path("/tmp/bundle_v1")):
        if (Path(cand) / "config.json").exists():
            return str(cand), "trained"
    if not (DEV_BUNDLE / "config.json").exists():
        from emodemo.bundle import build_speech, build_text, default_config, save_bundle
        cfg = default_config()
        save_bundle(DEV_BUNDLE, cfg, build_speech(cfg), build_text(cfg),
                    "benchmark stand-in: default architecture, untrained heads\n")
    return str(DEV_BUNDLE), "untrained heads (default architecture; same speed)"


def load(bundle: str, threads: Optional[int] = None, preload_asr: bool = False):
    """`load_recognizer(bundle)` with the package defaults unless `threads` is given."""
    from emodemo.cli import quiet_logging
    quiet_logging()
    import emodemo
    return emodemo.load_recognizer(bundle, threads=threads, preload_asr=preload_asr)

# ---- 1. latency per clip -------------------------------------------------------------------
def latency(rec, wav: np.ndarray, reps: int = 5) -> dict:
    """Per-stage latency of one clip: audio branch, ASR, text branch, fusion, end to end."""
    dur = wav.size / SR
    transcript = rec.transcribe(wav)               # also loads the ASR on first use
    p_a = rec.audio_proba(wav)
    p_t = rec.text_proba([transcript or "hello"])[0]
    row = {"seconds": dur, "transcript_words": len(transcript.split()),
           "audio": timeit(lambda: rec.audio_proba(wav), reps),
           "asr": timeit(lambda: rec.transcribe(wav), reps),
           "text": timeit(lambda: rec.text_proba([transcript or "hello"]), reps),
           "fusion": timeit(lambda: rec.fusion(p_a, p_t), max(reps, 50)),
           "e2e": timeit(lambda: rec.predict((wav, SR)), reps),
           "e2e_audio_only": timeit(lambda: rec.predict((wav, SR), transcript=""), reps)}
    row["rtf"] = row["e2e"]["median"] / dur
    row["rtf_audio_only"] = row["e2e_audio_only"]["median"] / dur
    return row

# ---- 2. peer architectures -----------------------------------------------------------------
def build_peers(small: bool = False) -> dict:
    """Randomly initialised peer models (no download): wav2vec2-base, HuBERT-base, WeSpeaker
    ResNet34 + our emotion head. `small` builds 1-layer versions (for tests)."""
    import torch
    from transformers import (HubertConfig, HubertForSequenceClassification, Wav2Vec2Config,
                              Wav2Vec2ForSequenceClassification)
    from emodemo.speech import SpeechEmotionModel, build_backbone
    from emodemo.resnet import build_resnet
    kw = dict(num_labels=N_CLASSES)
    if small:
        kw.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(32,) * 7, num_conv_pos_embeddings=16, classifier_proj_size=16)
    torch.manual_seed(0)
    peers = {"wav2vec2-base": Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**kw)).eval(),
             "hubert-base": HubertForSequenceClassification(HubertConfig(**kw)).eval()}
    backbone = build_resnet("ResNet18", m_channels=8) if small else build_backbone("resnet34", pretrained=False)
    peers["wespeaker-resnet34"] = SpeechEmotionModel(backbone, N_CLASSES).eval()
    return peers


def peer_fn(name: str, model, wav: np.ndarray) -> Callable[[], object]:
    """One forward pass of a peer model on a 16 kHz clip (features included)."""
    import torch
    from emodemo import audio as A
    if name.startswith("wespeaker"):
        def run():
            with torch.inference_mode():
                feats = A.fbank(wav)[None]
                return torch.softmax(model(feats, torch.tensor([feats.shape[1]])), -1)
        return run
    x = torch.from_numpy(wav)[None]

    def run():
        with torch.inference_mode():
            x_n = (x - x.mean()) / (x.std() + 1e-7)   # the Wav2Vec2FeatureExtractor normalisation
            return torch.softmax(model(x_n).logits, -1)
    return run


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def compare_peers(ours: Callable[[np.ndarray], object], peers: dict, wav: np.ndarray, reps: int = 5) -> dict:
    """Interleaved timing of our audio branch and each peer on the same clip; ratio = their/our."""
    fns = {"ours": lambda: ours(wav)}
    fns.update({k: peer_fn(k, m, wav) for k, m in peers.items()})
    t = interleaved(fns, reps)
    base = t["ours"]["median"]
    return {"seconds": wav.size / SR, "timings": t,
            "ratio": {k: t[k]["median"] / base for k in peers}}

# ---- profiles (--profile) ------------------------------------------------------------------
def profile(rec, wav: np.ndarray) -> dict:
    """torch.profiler tables for the audio branch and text branch, and a stage split of ASR."""
    import torch
    from torch.profiler import ProfilerActivity, profile as tprof
    out = {}
    transcript = rec.transcribe(wav)
    for name, fn in (("audio_branch", lambda: rec.audio_proba(wav)),
                     ("text_branch", lambda: rec.text_proba([transcript]))):
        fn()
        with tprof(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fn()
        out[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    out["asr_split"] = asr_split(rec, wav)
    out["threads"] = torch.get_num_threads()
    return out


def asr_split(rec, wav: np.ndarray) -> dict:
    """Where ASR time goes: mel features, encoder on the padded 30-s window vs the clip alone,
    decoder (generate) with the default temperature fallback vs temperature 0."""
    import ctranslate2
    from faster_whisper.audio import pad_or_trim
    m = rec.asr.model
    feats = m.feature_extractor(np.asarray(wav, np.float32))
    res = {"frames": int(feats.shape[-1])}
    res["features"] = timeit(lambda: m.feature_extractor(np.asarray(wav, np.float32)), 3)["median"]
    padded = np.ascontiguousarray(pad_or_trim(feats[:, :3000])[None].astype(np.float32))
    short = np.ascontiguousarray(feats[None, :, :3000].astype(np.float32))
    enc = lambda x: m.model.encode(ctranslate2.StorageView.from_array(x), to_cpu=True)  # noqa: E731
    res["encoder_30s_window"] = timeit(lambda: enc(padded), 3)["median"]
    res["encoder_clip_only"] = timeit(lambda: enc(short), 3)["median"]
    kw = dict(language="en", beam_size=1, condition_on_previous_text=False, vad_filter=False,
              without_timestamps=True)
    for name, extra in (("transcribe_default_fallback", {}), ("transcribe_temperature0", {"temperature": 0.0})):
        res[name] = timeit(lambda: list(m.transcribe(np.asarray(wav, np.float32), **kw, **extra)[0]), 3)["median"]
    return res

