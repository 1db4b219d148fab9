"""The one frozen-backbone feature extractor: frames, pooled statistics (with the head's logits)
or per-layer statistics of audio clips, computed in batches with a progress bar or callback
(`extract_all`), optionally cached on disk (`FrameCache`), so heads, probes and adapters on them
train in seconds. Training (multi-corpus heads, the first-stage bundle), fine-tuning
(finetune/features.py) and calibration (finetune/calibrate.py) all extract here.

Extractors (waveform -> tensor): `backbone_extractor` (frames [T', D]), `pooled_extractor`
(mean+std of the frames [2D], then the head's logits [C]) and, batched, `layer_stats_extractor`.

A cache is a folder per backbone key (`runs/features/ge2e-resemblyzer/`), one float16 tensor per
item in `<corpus>/<item id>.pt`: frames [T', D] (`backbone_extractor`) or, for a Whisper backbone,
per-layer statistics [L, 4·n_state] (`layer_stats_extractor`: for every layer 0..n and 'final', the
mean and std over the clip's frames of the raw outputs, then of the layer-normalised outputs).
The statistics are all a pooled head needs: mean+std of concatenated layers is the concatenation
of each layer's mean+std. Entries are written atomically, so an interrupted extraction resumes
where it stopped. The key must change whenever the features would (another backbone, other
weights, another window, trimming): `backbone_key()` builds it from the speech config.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .. import audio as A
from ..data import Item, corpus_of
from ..errors import AudioError, DataError
from ..speech import masked_stats, span_frames, speech_spans
from .loops import pad_frames

log = logging.getLogger(__name__)

Extractor = Callable[[np.ndarray], torch.Tensor]   # waveform (16 kHz mono) -> frames [T', D]
BatchExtractor = Callable[[Sequence[np.ndarray]], list]   # waveforms -> one tensor each
Progress = Callable[[int, int], None]                      # (clips done, clips in all)
Source = Union[Item, str, Path]                            # an item, or an audio file
FramesOf = Callable[[torch.Tensor, torch.Tensor], tuple]   # (feats, lengths) -> (frames, lengths)
DEFAULT_ROOT = Path("runs") / "features"
STATS_PARTS = ("mean", "std", "ln_mean", "ln_std")   # the 4 blocks of n_state in a layer-stats row


def backbone_key(speech_cfg: dict) -> str:
    """Cache key of a frozen backbone: name, weight source and (if any) its frame options."""
    name = str(speech_cfg.get("backbone", "ge2e"))
    source = Path(str(speech_cfg.get("source") or "default")).name or "default"
    extra = {k: speech_cfg[k] for k in sorted(speech_cfg)
             if k in ("layers", "window", "min_seconds", "level", "trim") and speech_cfg[k] is not None}
    tail = "-" + hashlib.sha1(repr(extra).encode()).hexdigest()[:8] if extra else ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}-{source}{tail}")


def backbone_extractor(backbone: nn.Module, feature: Optional[str] = None) -> Extractor:
    """Frames of a frozen backbone for one waveform: its front end (`feature`, default the
    backbone's own; a SpeechEmotionModel's `feature` adds its trimming), then `frames()`."""
    backbone.eval()
    feature = feature or backbone.feature

    @torch.inference_mode()
    def extract(wav: np.ndarray) -> torch.Tensor:
        frames, lengths = backbone.frames(A.features(feature, wav)[None])
        return frames[0, : int(lengths[0])]
    return extract


def clip_input(feature: str, wav: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Front-end features [1, T, F] of one waveform and their length [1]."""
    f = A.features(feature, wav)[None]
    return f, torch.tensor([f.shape[1]])


def pooled_extractor(frames_of: FramesOf, feature: str, head: Optional[nn.Module] = None) -> Extractor:
    """One row per waveform: mean+std over time of the frames of `frames_of` (e.g. a backbone's
    `frames`, or a SpeechEmotionModel's, which adds its calibration shift) [2D], followed (with
    `head`) by the head's logits on those frames [C]."""
    @torch.inference_mode()
    def extract(wav: np.ndarray) -> torch.Tensor:
        frames, lengths = frames_of(*clip_input(feature, wav))
        parts = [masked_stats(frames, lengths)[0]]
        if head is not None:
            parts.append(head(frames, lengths)[0])
        return torch.cat(parts)
    return extract


def stats_layers(backbone: nn.Module) -> list:
    """Every layer a Whisper backbone exposes, in the order of a layer-stats row: 0..n, 'final'."""
    from ..whisper_encoder import FINAL
    return list(range(len(backbone.encoder.blocks) + 1)) + [FINAL]


def layer_stats_extractor(backbone: nn.Module, feature: str, span: bool = False) -> BatchExtractor:
    """Per-layer pooled statistics [L, 4·n_state] of a frozen Whisper backbone for a batch of
    waveforms (front end `feature`, e.g. 'trimmed:whisper_mel'); each clip encoded in its own
    window, so batching does not change the numbers. `span`: only the frames of each clip's
    speech span are pooled (a bundle's trim "span", as `SpeechEmotionModel.backbone_frames`)."""
    backbone.eval()
    layers = stats_layers(backbone)

    @torch.inference_mode()
    def extract(wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        feats = [A.features(feature, w) for w in wavs]
        x, lengths = pad_frames(feats)
        outs, n = backbone.layer_outputs(x, lengths, layers=layers)
        spans = speech_spans(x, lengths) if span else None
        rows = []
        for l in layers:
            h, n_l = (outs[l], n) if spans is None else span_frames(outs[l], n, spans)
            ln = F.layer_norm(h, (h.shape[-1],))
            rows.append(torch.cat([masked_stats(h, n_l), masked_stats(ln, n_l)], -1))   # [B, 4·n_state]
        return list(torch.stack(rows, 1))                                         # B x [L, 4·n_state]
    return extract


def stats_view(stats: torch.Tensor, layer_index: Sequence[int], normed: bool = False) -> torch.Tensor:
    """Mean+std features of some layers from layer-stats rows [N, L, 4·d] → [N, 2·d·len(layers)],
    ordered like masked_stats of the concatenated frames (all means, then all stds)."""
    d = stats.shape[-1] // 4
    off = 2 * d if normed else 0
    sel = stats[:, list(layer_index)].float()
    return torch.cat([sel[..., off:off + d].flatten(1), sel[..., off + d:off + 2 * d].flatten(1)], 1)


class FrameCache:
    """Backbone frames per item on disk under `root/key`, stored as `dtype` (float16 by default:
    half the disk; float32 where the rows must equal a fresh extraction, e.g. fine-tuning's)."""

    def __init__(self, key: str, root: str | Path = DEFAULT_ROOT, dtype: torch.dtype = torch.float16):
        self.key = key
        self.path = Path(root) / key
        self.dtype = dtype

    def entry(self, item: Item) -> Path:
        ident = item.id or hashlib.sha1(str(item.audio).encode()).hexdigest()[:16]
        corpus = corpus_of(item) or "misc"
        if ident.startswith(corpus + "/"):
            ident = ident[len(corpus) + 1:]
        safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", ident.replace("/", "__"))
        return self.path / re.sub(r"[^A-Za-z0-9_.-]+", "_", corpus) / f"{safe}.pt"

    def missing(self, items: Sequence[Item]) -> list[Item]:
        return [it for it in items if not self.entry(it).exists()]

    def fill(self, items: Sequence[Item], extract: Extractor | BatchExtractor, desc: str = "frames",
             batch_size: int = 0, progress: Optional[Progress] = None) -> int:
        """Compute and store the features of every item not cached yet; returns how many.
        `batch_size` > 0: `extract` takes a list of waveforms (items sorted by length first);
        `progress(done, total)` counts the items computed."""
        todo = self.missing(items)
        for it, t in extracted(todo, extract, batch_size, progress, desc=f"{desc} ({self.key})"):
            self._store(it, t)
        if todo:
            log.info("feature cache %s: %d new entries", self.key, len(todo))
        return len(todo)

    def _store(self, item: Item, t: torch.Tensor) -> None:
        out = self.entry(item)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")      # two extractors never share a temporary file
        torch.save(t.detach().to(self.dtype).contiguous().clone(), tmp)
        tmp.replace(out)

    def load(self, items: Sequence[Item], extract: Optional[Extractor] = None,
             desc: str = "frames", batch_size: int = 0,
             progress: Optional[Progress] = None) -> list[torch.Tensor]:
        """Features (`dtype`) of each item, computing missing ones with `extract`."""
        if extract is not None:
            self.fill(items, extract, desc, batch_size, progress)
        elif self.missing(items):
            raise FileNotFoundError(f"{len(self.missing(items))} items not in feature cache {self.path}; "
                                    "pass an extractor to compute them")
        return [torch.load(self.entry(it), weights_only=True) for it in items]


def audio_path(source: Source) -> str:
    return str(source.audio if isinstance(source, Item) else source)


def extracted(sources: Sequence[Source], extract: Extractor | BatchExtractor, batch_size: int = 0,
              progress: Optional[Progress] = None, desc: str = "features",
              failed: Optional[list] = None) -> Iterator[tuple[Source, torch.Tensor]]:
    """(source, features) of each clip, read and extracted one at a time, or `batch_size` at a time
    (`extract` then takes a list of waveforms; sources sorted by file size first). Progress goes to
    `progress(done, total)` when given, else to a progress bar. With a `failed` list, a clip that
    cannot be read (AudioError) is appended there as (path, reason) and skipped; without, it raises."""
    todo = sorted(sources, key=lambda s: os.path.getsize(audio_path(s))) if batch_size > 0 else list(sources)
    bar = tqdm(total=len(todo), desc=desc, leave=False, disable=not todo or progress is not None,
               mininterval=10)
    step = max(1, batch_size)
    for b in range(0, len(todo), step):
        chunk = todo[b:b + step]
        if batch_size > 0:
            yield from zip(chunk, extract([A.load_audio(audio_path(s)) for s in chunk]))
        else:
            try:
                out = extract(A.load_audio(audio_path(chunk[0])))
            except AudioError as exc:
                if failed is None:
                    raise
                failed.append((audio_path(chunk[0]), str(exc)))
            else:
                yield chunk[0], out
        bar.update(len(chunk))
        if progress:
            progress(b + len(chunk), len(todo))
    bar.close()


def extract_all(sources: Sequence[Source], extract: Extractor | BatchExtractor, batch_size: int = 0,
                progress: Optional[Progress] = None, cache: Optional[FrameCache] = None,
                failed: Optional[list] = None) -> list[torch.Tensor]:
    """Features of every clip, in the order given (see `extracted`); with `cache` (items only),
    read from and written to the disk cache (in the cache's dtype) instead. Skipped clips (`failed`) have no row."""
    if cache is not None:
        return cache.load(sources, extract, batch_size=batch_size, progress=progress)
    out = dict((id(s), t) for s, t in extracted(sources, extract, batch_size, progress, failed=failed))
    return [out[id(s)] for s in sources if id(s) in out]


def item_key(item: Item) -> str:
    return f"{item.corpus}/{item.id}/{item.audio}"


def memoised(compute: Callable[[list[Item]], Sequence[torch.Tensor]]) -> Callable[[Sequence[Item]], list[torch.Tensor]]:
    """feats(items) computing each item's features once per process (`compute` gets the items not
    seen yet, each once), for heads fitted many times on the same clips (ensembles, LOCO folds)."""
    memo: dict[str, torch.Tensor] = {}

    def feats(items: Sequence[Item]) -> list[torch.Tensor]:
        todo = list({item_key(i): i for i in items if item_key(i) not in memo}.values())
        if todo:
            memo.update(zip(map(item_key, todo), compute(todo)))
        return [memo[item_key(i)] for i in items]
    return feats


def pooled(frames: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean+std over time of each item's frames: [N, 2D] float32 (what a linear probe sees)."""
    out = []
    for f in frames:
        f = f.float()[None]
        out.append(masked_stats(f, torch.tensor([f.shape[1]]))[0])
    return torch.stack(out)


def select_dims(frames: Sequence[torch.Tensor], dims: Optional[slice | Sequence[int]]) -> list[torch.Tensor]:
    """A subset of the frame dimensions (e.g. some layers of an all-layer backbone)."""
    if dims is None:
        return list(frames)
    return [f[:, dims] for f in frames]


def align_concat(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Frame-level concatenation of two backbones' frames at different rates: the faster one is
    average-pooled down to the slower one's length (e.g. GE2E 100 fps onto Whisper 50 fps)."""
    out = []
    for x, y in zip(a, b):
        if x.shape[0] < y.shape[0]:
            x, y, swap = y, x, True
        else:
            swap = False
        if y.shape[0] == 0:
            raise DataError("an item has no frames (a clip shorter than one backbone frame)")
        pooled_x = torch.nn.functional.adaptive_avg_pool1d(x.float().T[None], y.shape[0])[0].T.to(x.dtype)
        out.append(torch.cat([y, pooled_x] if swap else [pooled_x, y], dim=-1))
    return out


def cached_layer_stats(items: Sequence[Item], speech_cfg: dict, root: str | Path = DEFAULT_ROOT,
                       batch_size: int = 4, backbone: Optional[nn.Module] = None) -> torch.Tensor:
    """Per-layer statistics [N, L, 4·n_state] (float16) of every item for the Whisper backbone of
    `speech_cfg` ('backbone', 'source', 'trim'), from the disk cache, computing missing entries
    (the backbone is built only when something is missing)."""
    cfg = {k: speech_cfg.get(k) for k in ("backbone", "source", "trim")}
    cache = FrameCache(backbone_key(cfg) + "-layerstats", root)
    extract = None
    if cache.missing(items):
        if backbone is None:
            from ..speech import build_backbone
            backbone = build_backbone(str(cfg["backbone"]), cfg.get("source"))
        trim = cfg.get("trim")
        feature = A.trim_prefix(trim) + backbone.feature
        extract = layer_stats_extractor(backbone, feature, span=trim == A.SPAN)
    return torch.stack(cache.load(items, extract, desc="layer stats", batch_size=batch_size))
