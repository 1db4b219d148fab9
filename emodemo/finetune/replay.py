"""Audio items for fine-tuning: clips cut from their recordings, and replay of the base model's
training data so that fine-tuning keeps the old skills.

Replay comes from two places, both optional:
* the bundle's own **replay pack** (`replay.safetensors`): pooled frozen-backbone features and head
  logits of a few hundred of the base's training clips, made by `pack_replay` when the bundle is
  built. It travels with the bundle, so fine-tuning needs nothing but the install;
* the base's training data specs, where that data is present on this machine (`default_replay`).
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import EmodemoError, FinetuneError
from ..settings import cache_dir as settings_cache_dir
from .dataset import Clip
from .features import Feats, extract, pooled_dim

log = logging.getLogger(__name__)

DEFAULT_REPLAY_N = 240       # replay items sampled per replay spec
REPLAY_PACK = "replay.safetensors"


#: The corpus name of a correction's item (its folder in the feature cache).
CORRECTIONS_CORPUS = "corrections"


def segment_cache_dir() -> Path:
    return settings_cache_dir("segments")


def clip_items(clips: Sequence[Clip], cache_dir: Optional[str | Path] = None) -> tuple[list, list[dict]]:
    """`emodemo.data.Item`s for clips. A clip with a start/end is cut out of its recording into a
    16 kHz WAV under `cache_dir` (named by hash and span, so it is written once). Returns the items
    and the clips that could not be used (audio unreadable or span too short)."""
    import soundfile as sf

    from .. import audio as A
    from ..data import Item
    cache = Path(cache_dir) if cache_dir else segment_cache_dir()
    items, bad = [], []
    for c in clips:
        path = c.media_path
        try:
            if c.start is not None or c.end is not None:
                name = f"{c.media_sha256}_{int(round((c.start or 0) * 1000))}_" \
                       f"{'end' if c.end is None else int(round(c.end * 1000))}.wav"
                seg = cache / c.media_sha256[:2] / name
                if not seg.exists():
                    wav = A.load_audio(c.media_path)
                    s = int(round((c.start or 0) * A.SAMPLE_RATE))
                    e = wav.size if c.end is None else int(round(c.end * A.SAMPLE_RATE))
                    cut = wav[s:e]
                    if cut.size < A.MIN_SAMPLES:
                        raise EmodemoError(f"segment {c.start}-{c.end} s is too short")
                    seg.parent.mkdir(parents=True, exist_ok=True)
                    fd, tmp = tempfile.mkstemp(suffix=".wav", dir=seg.parent)
                    os.close(fd)
                    sf.write(tmp, cut, A.SAMPLE_RATE, subtype="PCM_16")
                    os.replace(tmp, seg)
                path = str(seg)
            else:
                A.load_audio(path)  # unreadable audio fails here, not mid-training
        except (EmodemoError, OSError, RuntimeError) as exc:
            bad.append({"clip": c.id, "error": str(exc)})
            continue
        # the item's speaker is the clip's group (its speaker, else its recording): the CV folds
        # group by it, so the spans of one long recording never straddle a fold either
        items.append(Item(path, c.label, c.transcript, c.group, id=c.id, corpus=CORRECTIONS_CORPUS))
    return items, bad


def _stratified_sample(items: Sequence, n: int, rng: random.Random) -> list:
    """About n items with the class proportions of `items` (every class at least one)."""
    if n >= len(items):
        return list(items)
    by: dict[str, list] = defaultdict(list)
    for it in items:
        by[it.label].append(it)
    out = []
    for lab in sorted(by):
        lst = by[lab][:]
        rng.shuffle(lst)
        out += lst[:max(1, round(n * len(lst) / len(items)))]
    return out


def _split_items(items: Sequence, val_fraction: float, rng: random.Random) -> tuple[list, list]:
    by: dict[str, list] = defaultdict(list)
    for it in items:
        by[it.label].append(it)
    train, val = [], []
    for lab in sorted(by):
        lst = by[lab][:]
        rng.shuffle(lst)
        k = min(len(lst) - 1, max(1, round(val_fraction * len(lst)))) if len(lst) >= 2 else 0
        val += lst[:k]
        train += lst[k:]
    return train, val


def replay_items(specs: Sequence[str], n: int, labels: Sequence[str], seed: int = 0) -> dict:
    """Replay sample of the base training data: each spec sampled (stratified) to `n` items and
    split 80/20. Items with audio are speech replay; text-only items (no audio) are text replay.
    Returns {"speech": (train, val), "text": (train, val), "specs": {spec: n}}."""
    from ..data import load_spec
    rng = random.Random(seed)
    lab = {l.lower(): l for l in labels}
    out = {"speech": ([], []), "text": ([], []), "specs": {}}
    for spec in specs:
        items = []
        for it in load_spec(spec):
            if it.label.lower() in lab:
                it.label = lab[it.label.lower()]
                if it.labels:
                    it.labels = tuple(lab[l.lower()] for l in it.labels if l.lower() in lab) or (it.label,)
                items.append(it)
        sample = _stratified_sample(items, n, rng)
        tr, va = _split_items(sample, 0.2, rng)
        kind = "speech" if sample and sample[0].audio else "text"
        out[kind][0].extend(tr)
        out[kind][1].extend(va)
        out["specs"][spec] = {"kind": kind, "available": len(items), "train": len(tr), "val": len(va)}
    return out


def as_list(x) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else [s for s in x if s]


def training_specs(base_cfg, branch: str) -> list[str]:
    """The data specs a bundle's `branch` ("speech" or "text") was trained on (its run_config; the
    default recipe's when the config does not say)."""
    from ..bundle import as_config
    from ..training import DEFAULT_RECIPE
    rc = as_config(base_cfg).run_config
    return as_list((rc.get(branch) or {}).get("train") or DEFAULT_RECIPE[branch]["train"])


def original_specs(base_cfg) -> list[str]:
    """The base's speech training specs without its degraded copies (`...:degrade=K`): replay keeps
    the old skills on the original clips (copies would only cost rendering time and pack size)."""
    from ..data import is_copy_spec
    return [s for s in training_specs(base_cfg, "speech") if not is_copy_spec(s)]


def default_replay(base_cfg) -> list[str]:
    """The base bundle's own training data specs (speech originals and text; each a string or a list)."""
    return original_specs(base_cfg) + training_specs(base_cfg, "text")


def available_specs(specs: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The specs whose data can be read on this machine, and {spec: why not} for the others.

    A user's machine (a README install, a Space) has none of our training data: missing data is
    skipped with a reason, never an error."""
    from ..data import load_spec
    ok, missing = [], {}
    for s in specs:
        try:
            if not load_spec(s):
                missing[s] = "no items"
                continue
        except (OSError, RuntimeError, ValueError, KeyError, IndexError) as exc:
            missing[s] = f"{type(exc).__name__}: {exc}"
            continue
        ok.append(s)
    return ok, missing


# ---- the bundle's replay pack ------------------------------------------------------------
def pack_replay(bundle: str | Path, specs: Sequence[str], per_class: int = 64,
                guard_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write `replay.safetensors` into `bundle`: pooled frozen-backbone features and head logits of
    at most `per_class` clips per class and spec of the base's training data, float16, with a
    speaker-grouped guard part (`guard_fraction` of the speakers) that fine-tuning checks old skills
    on. Records what it holds in config.json (`replay_pack`). Needs the data: run it where the bundle
    is trained."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from ..bundle import load_bundle, read_config, write_config
    from ..data import load_spec
    bundle = Path(bundle)
    cfg, speech, _ = load_bundle(bundle)
    labels = list(cfg["labels"])
    rng = random.Random(seed)
    parts, guards, info = [], [], {}
    for spec in specs:
        items = [i for i in load_spec(spec) if i.audio and i.label in labels]
        by: dict = defaultdict(list)
        for it in items:
            by[it.label].append(it)
        chosen = []
        for lab in sorted(by):
            lst = sorted(by[lab], key=lambda i: i.id or i.audio)
            rng.shuffle(lst)
            chosen += lst[:per_class]
        log.info("replay pack: %s: %d of %d clips", spec, len(chosen), len(items))
        f = extract(speech, chosen, labels)
        parts.append(f)
        guards.append(guard_part(f.groups, guard_fraction, rng))
        info[spec] = {"available": len(items), "packed": len(chosen), "guard": int(guards[-1].sum())}
    feats = Feats.concat(parts, 2 * speech.backbone.frame_dim, len(labels))
    guard = np.concatenate(guards) if guards else np.zeros(0, bool)
    save_file({"stats": torch.from_numpy(feats.x).half(), "logits": torch.from_numpy(feats.b).half(),
               "labels": torch.from_numpy(feats.y), "guard": torch.from_numpy(guard)},
              str(bundle / REPLAY_PACK), metadata={"head_sha256": head_fingerprint(speech)})
    os.chmod(bundle / REPLAY_PACK, 0o644)     # readable like the bundle's other files
    meta = {"file": REPLAY_PACK, "items": int(len(feats)), "guard_items": int(guard.sum()),
            "per_class": per_class, "specs": info,
            "what": "mean+std pooled frozen-backbone frames and head logits (float16)"}
    write_config(bundle, read_config(bundle).with_(replay_pack=meta))
    return meta


def guard_part(groups: Sequence[str], fraction: float, rng: random.Random):
    """Which clips of one spec form the guard: `fraction` of its speakers, whole; a spec with a
    single speaker (e.g. the synthetic voice) is split by clip, so every spec is in both parts."""
    import numpy as np
    speakers = sorted(set(groups))
    if len(speakers) > 1:
        rng.shuffle(speakers)
        held = set(speakers[:max(1, round(fraction * len(speakers)))])
        return np.array([g in held for g in groups])
    order = list(range(len(groups)))
    rng.shuffle(order)
    held = set(order[:round(fraction * len(groups))])
    return np.array([i in held for i in range(len(groups))])


def head_fingerprint(speech) -> str:
    """SHA-256 of the speech model's front end name, backbone name and head weights (float16): the
    pack's logits are only valid for the head (and features) they were computed with."""
    import hashlib
    h = hashlib.sha256(f"{speech.feature}|{type(speech.backbone).__name__}".encode())
    for k, v in sorted(speech.head.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to(torch.float16).cpu().numpy().tobytes())
    return h.hexdigest()


def load_pack(bundle: str | Path, cfg: dict, speech):
    """(replay Feats, guard Feats) from the bundle's pack, or (None, None) when it has none or
    when it does not fit the bundle's speech model (another backbone, front end, head or label
    set: a retrained bundle needs a new pack)."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(bundle) / (cfg.get("replay_pack") or {}).get("file", REPLAY_PACK)
    if not path.is_file():
        return None, None
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("head_sha256") != head_fingerprint(speech):
        log.warning("%s was made for another speech head; not used (rebuild it with "
                    "`python -m emodemo finetune-pack --bundle %s`)", path, bundle)
        return None, None
    t = load_file(str(path))
    x, b = t["stats"].float().numpy(), t["logits"].float().numpy()
    if x.shape[1] != pooled_dim(speech) or b.shape[1] != len(cfg["labels"]):
        log.warning("%s does not fit this bundle; not used", path)
        return None, None
    y, guard = t["labels"].numpy().astype(np.int64), t["guard"].numpy().astype(bool)
    groups = [f"pack-{'guard' if g else 'train'}" for g in guard]
    f = Feats(x, b, y, groups)
    return f.take(np.flatnonzero(~guard)), f.take(np.flatnonzero(guard))


def gather_replay(base_bundle: Path, cfg: dict, speech, replay_spec, replay_n: int, seed: int,
                  say) -> dict:
    """Speech replay (Feats: pack + data on disk), its guard part, and text replay items."""
    labels = list(cfg["labels"])
    dim = pooled_dim(speech)
    pack_tr, pack_guard = load_pack(base_bundle, cfg, speech)
    asked = default_replay(cfg) if replay_spec is None else \
        [s for s in as_list(replay_spec) if s.lower() != "none"]
    specs, missing = available_specs(asked)
    if replay_spec is not None and missing:      # asked for explicitly: a typo must fail fast
        spec, why = next(iter(missing.items()))
        raise FinetuneError(f"cannot read data spec {spec}: {why}")
    for spec, why in missing.items():
        log.info("replay: skipping %s (%s)", spec, why)
    try:
        rep = replay_items(specs, replay_n, labels, seed)
    except (EmodemoError, OSError) as exc:       # DataError, or a file the spec names is missing
        raise FinetuneError(f"cannot read data spec: {exc}") from None
    disk_tr, disk_va = rep["speech"]
    parts_tr, parts_guard = [pack_tr], [pack_guard]
    if disk_tr or disk_va:
        total = len(disk_tr) + len(disk_va)
        say(0.3, f"features of {total} replay clips from the training data")

        def tick(offset: int):
            return lambda k, n: say(0.3 + 0.1 * (offset + k) / total,
                                    f"features of replay clips: {offset + k}/{total}")
        parts_tr.append(extract(speech, disk_tr, labels, tick(0)))
        parts_guard.append(extract(speech, disk_va, labels, tick(len(disk_tr))))
    sources = {s: v for s, v in rep["specs"].items()}
    if pack_tr is not None:
        sources[f"bundle:{REPLAY_PACK}"] = {"kind": "speech", "available": len(pack_tr) + len(pack_guard),
                                            "train": len(pack_tr), "val": len(pack_guard)}
    for s, why in missing.items():
        sources[s] = {"kind": "skipped", "reason": why, "available": 0, "train": 0, "val": 0}
    n = len(labels)
    return {"train": Feats.concat(parts_tr, dim, n), "guard": Feats.concat(parts_guard, dim, n),
            "text": rep["text"], "sources": sources}
