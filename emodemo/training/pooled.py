"""The pooled head of the multi-corpus recipe (`speech.head: "pooled"`): a linear probe on the
mean+std of the frozen backbone's frames, and its per-recording normalised twin (contract C3).

Features come from the one frozen-feature cache (`features.cached_layer_stats`: per-layer
statistics of every clip, computed once), so fitting a head, a leave-one-corpus-out fold or a
backbone comparison row takes seconds. Both heads are fitted by `multicorpus.fit_probe` (the
balanced, class-masked loss; the L2 strength chosen on the validation speakers' mean UA over
corpora):

- **single**: standardised pooled features of each clip as it is;
- **normalised**: each clip's features minus the mean of its *setting's* clips. In training a
  setting is one speaker of one corpus (all their clips share voice, microphone and room); in
  serving it is the clips of one `predict_many(normalize="batch")` call or the segments of one long
  recording. The mean clip of a setting is its voice and room, not an emotion, so this head reads
  how each clip departs from its setting. It assumes the setting's clips are not all one emotion:
  a batch of ten angry clips normalised together looks like ten neutral ones.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data import Item, is_copy_spec, load_spec
from ..degrade import TAG as DEGRADED
from ..degrade import is_copy
from ..speech import PooledHead
from . import multicorpus as MC
from .features import cached_layer_stats, memoised, stats_view
from .metrics import HEAD_TEMPERATURE_GRID, fit_temperature

Feats = Callable[[Sequence[Item]], list[torch.Tensor]]


def layer_rows(backbone) -> list[int]:
    """Rows of a layer-stats entry (layers 0..n, then 'final') holding the backbone's layers."""
    from ..whisper_encoder import FINAL
    n = len(backbone.encoder.blocks)
    return [n + 1 if l == FINAL else int(l) for l in backbone.layers]


def pooled_feats(speech_cfg: dict, rows: Sequence[int], cache: str, backbone=None, normed: bool = False) -> Feats:
    """feats(items) -> pooled mean+std vectors of the configured layers (memoised per item);
    `normed`: of each frame layer-normalised first (`features.stats_view`)."""
    return memoised(lambda items: stats_view(cached_layer_stats(items, speech_cfg, cache, backbone=backbone), rows, normed))


def centred(split: MC.Split, groups: Sequence[str]) -> MC.Split:
    """Each vector minus the mean of its group's vectors (a group = one speaker / setting)."""
    if not split.xs:
        return split
    x = torch.stack(split.xs).float()
    g = np.asarray(groups)
    out = x.clone()
    for name in dict.fromkeys(groups):
        m = torch.from_numpy(g == name)
        out[m] = x[m] - x[m].mean(0, keepdim=True)
    return MC.Split(list(out), split.y, split.corpus)


def _tempered_probe(probe: MC.LinearProbe, va: MC.Split, corpora, labels) -> float:
    """The softmax temperature of a probe, fitted on every validation corpus (NLL, mean over corpora)."""
    per = MC.evaluate_corpora(probe, va, MC.make_collate("pooled"), labels)
    real = [c for c in per if not corpora[c].aux]
    corp = np.array(va.corpus)
    return round(fit_temperature([per[c]["_p"] for c in real], [va.y[corp == c] for c in real],
                                 grid=HEAD_TEMPERATURE_GRID), 3)


def fit_pooled(corpora: dict, feats: Feats, labels: Sequence[str], options: MC.ProbeOptions,
               normalize: bool, names: Optional[list[str]] = None) -> tuple[PooledHead, dict]:
    """A PooledHead fitted on the training speakers of the named corpora (selection on their
    validation speakers); temperatures fitted on the validation speakers and folded into the
    output layers. `options.refit`: then fitted again on training + validation speakers with the
    chosen L2 strength and the temperature found before (more voices; the validation numbers of
    the result are in-sample; info["selected_head"] is the head before the refit, for what
    must still be fitted on unseen speakers: the fusion). Returns (head, {"single": {...},
    "normalised": {...}})."""
    tr, tr_items = MC.gather(corpora, "train", feats, labels, names)
    va, va_items = MC.gather(corpora, "val", feats, labels, names)
    head = PooledHead(tr.xs[0].shape[0] // 2, len(labels))
    selected = PooledHead(tr.xs[0].shape[0] // 2, len(labels)) if options.refit else head
    info = {}
    paths = [("single", tr, va)]
    if normalize:
        paths.append(("normalised", centred(tr, MC.setting_groups(tr_items)), centred(va, MC.setting_groups(va_items))))
    for path, t, v in paths:         # a centred vector has no speaker offset to shift or project out
        o = options if path == "single" else dataclasses.replace(options, speaker_shift=0.0, nuisance=0)
        probe, hist, best = MC.fit_probe(t, tr_items, v, corpora, labels, o)
        temp = _tempered_probe(probe, v, corpora, labels)
        if options.refit:
            _set_path(selected, path, probe, temp)
            probe = _refit(probe, hist, (t, tr_items), (v, va_items), corpora, labels, o)
        _set_path(head, path, probe, temp)
        info[path] = {"val_mean_UA": best, "temperature": temp, "history": hist}
    for h in (head, selected):           # the same head twice without a refit
        h.has_norm.fill_(bool(normalize))
        h.eval()
    if options.refit:
        info["selected_head"] = selected   # before the refit: validation speakers never seen
    return head, info


def _set_path(head: PooledHead, path: str, probe: MC.LinearProbe, temperature: float) -> None:
    """Copy a fitted probe (standardisation + output layer / temperature) into one path of a head."""
    with torch.no_grad():
        mean, std, out = ((head.mean, head.std, head.out) if path == "single"
                          else (head.norm_mean, head.norm_std, head.norm_out))
        mean.copy_(probe.mean)
        std.copy_(probe.std)
        out.weight.copy_(probe.out.weight / temperature)
        out.bias.copy_(probe.out.bias / temperature)


def _refit(probe: MC.LinearProbe, hist: list[dict], train: tuple, val: tuple, corpora: dict,
           labels: Sequence[str], options: MC.ProbeOptions) -> MC.LinearProbe:
    """The probe fitted again on train + validation vectors with the L2 strength `hist` chose."""
    l2 = max(hist, key=lambda h: h["val_mean_UA"])["l2"]
    (t, t_items), (v, v_items) = train, val
    both = MC.Split(t.xs + v.xs, np.concatenate([t.y, v.y]), t.corpus + v.corpus)
    refit, _, _ = MC.fit_probe(both, list(t_items) + list(v_items), v, corpora, labels,
                               dataclasses.replace(options, l2_grid=(l2,)))
    return refit


@torch.inference_mode()
def head_proba(head: PooledHead, split: MC.Split, groups: Optional[Sequence[str]] = None,
               blend: float = 0.0) -> np.ndarray:
    """Class probabilities of pooled vectors: single clips, or (groups given) each group
    normalised by its own mean (the serving rule of predict_many(normalize="batch"), with the
    bundle's `blend` of the single-clip head)."""
    x = torch.stack(split.xs).float()
    if groups is None:
        return torch.softmax(head.pooled_logits(x), -1).double().numpy()
    out = torch.zeros(len(x), head.out.out_features)
    g = np.asarray(groups)
    for name in dict.fromkeys(groups):
        m = torch.from_numpy(g == name)
        out[m] = torch.softmax(head.normalised_logits(x[m], blend), -1)
    return out.double().numpy()


def evaluate_pooled(head: PooledHead, split: MC.Split, items: Sequence[Item], labels: Sequence[str],
                    normalize: bool = False, blend: float = 0.0) -> dict[str, dict]:
    """`multicorpus.report()` per corpus, single clips or normalised per speaker (`blend`: of the
    single-clip head, as the bundle serves it)."""
    if not split.xs:
        return {}
    p = head_proba(head, split, MC.setting_groups(items) if normalize else None, blend)
    corp = np.array(split.corpus)
    return {c: MC.report(p[corp == c], split.y[corp == c], labels) | {"_p": p[corp == c]}
            for c in dict.fromkeys(split.corpus)}


def _strip(per: dict) -> dict:
    return {c: {k: v for k, v in m.items() if not k.startswith("_")} for c, m in per.items()}


def corpus_split(feats: Feats, items: Sequence[Item], labels: Sequence[str], name: str) -> MC.Split:
    return MC.Split(feats(items), np.array([labels.index(i.label) for i in items], dtype=int), [name] * len(items))


def is_degraded(item: Item) -> bool:
    return item.id.endswith(DEGRADED)


def clean(items: Sequence[Item]) -> list[Item]:
    """The original clips (training copies of any kind, `emodemo.degrade`, left out)."""
    return [i for i in items if not is_copy(i)]


def loco(corpora: dict, feats: Feats, labels: Sequence[str], options: MC.ProbeOptions,
         normalize: bool, copies: Optional[dict] = None, blend: float = 0.0) -> dict[str, dict]:
    """Leave each (non-auxiliary) corpus out once: fit on the others (selection on their validation
    speakers), measure on the left-out corpus's held-out speakers (`test`), on the rest of its
    speakers (`rest`: the number that may decide between settings) and on all of them (`all`),
    single clips and (with `normalize`) each speaker's clips normalised together (`*_normalised`);
    original clips only, and the degraded copies of the rest apart (`rest_degraded`: `copies`
    {corpus: items} when given, else those the recipe trains on)."""
    out = {}
    for left in [c for c in corpora if not corpora[c].aux]:
        head, info = fit_pooled(corpora, feats, labels, options, normalize,
                                [c for c in corpora if c != left])
        c = corpora[left]
        res: dict = {"selection_val_mean_UA": info["single"]["val_mean_UA"]}
        rest = c.train + c.val
        for part, items in (("test", clean(c.test)), ("rest", clean(rest)), ("all", clean(rest + c.test)),
                            ("rest_degraded", (copies or {}).get(left) or [i for i in rest if is_degraded(i)])):
            if not items:
                continue
            split = corpus_split(feats, items, labels, left)
            res[part] = _strip(evaluate_pooled(head, split, items, labels))[left]
            if normalize:
                res[f"{part}_normalised"] = _strip(evaluate_pooled(head, split, items, labels, True, blend))[left]
        out[left] = res
    return out


def pooled_report(head: PooledHead, corpora: dict, feats: Feats, labels: Sequence[str], normalize: bool,
                  blend: float = 0.0, parts: Sequence[str] = ("val", "test")) -> dict:
    """Per-corpus reports on the validation and held-out speakers (`parts`), and normalised per
    speaker, with the bundle's `blend`."""
    report = {}
    for part in parts:
        split, items = MC.gather(corpora, part, feats, labels)
        report[part] = _strip(evaluate_pooled(head, split, items, labels))
        if normalize:
            report[f"{part}_normalised"] = _strip(evaluate_pooled(head, split, items, labels, True, blend))
    return report


COPIES = {"degraded": ":degrade=2", "codec": ":codec=4"}   # emodemo.degrade copies measured on


def copy_items(parts: dict[str, Sequence[str]], corpora: dict, labels: Sequence[str],
               kinds: Sequence[str] = tuple(COPIES)) -> dict:
    """{"<part> degraded" | "<part> codec": {corpus: items}} for `parts` = {part: data specs}:
    `degrade` copies of every 2nd clip, real-codec copies of every 4th (`kinds`: which of the
    two; auxiliary corpora and classes outside `labels` left out)."""
    out: dict = {}
    for part, specs in parts.items():
        for kind in kinds:
            suffix = COPIES[kind]
            for spec in (s for s in specs if not is_copy_spec(s)):
                items = [i for i in load_spec(spec + suffix) if i.corpus in corpora and i.label in labels]
                if items and not corpora[items[0].corpus].aux:
                    out.setdefault(f"{part} {kind}", {}).setdefault(items[0].corpus, []).extend(items)
    return out


def loco_copies(specs: Sequence[str], corpora: dict, labels: Sequence[str]) -> Optional[dict]:
    """{corpus: degraded copies of its clips in `specs`} (a recipe's training + validation
    specs): what `loco` measures a left-out corpus's `rest_degraded` on."""
    return copy_items({"rest": specs}, corpora, labels, ("degraded",)).get("rest degraded")


def copies_report(heads: tuple[PooledHead, PooledHead], feats: Feats, copies: dict,
                  labels: Sequence[str]) -> dict:
    """`multicorpus.report()` per corpus of each part of `copy_items` (single clips); `heads`:
    (the head before a refit, for validation speakers; the head, for the others)."""
    out: dict = {}
    for part, per in copies.items():
        head = heads[0] if part.startswith("val") else heads[1]
        for c, items in per.items():
            split = corpus_split(feats, items, labels, c)
            out.setdefault(part, {})[c] = _strip(evaluate_pooled(head, split, items, labels))[c]
    return out

