"""Whole training runs: `run_recipe` (both branches, fusion, run folder, bundle) and the paper's
IEMOCAP protocol (5-fold leave-one-session-out)."""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import audio as A
from ..bundle import FORMAT_VERSION, LABELS
from ..errors import TrainError
from ..fusion import fit_fusion
from .cards import plot_confusion, plot_curves, recipe_card
from .evaluate import paired_proba
from .metrics import metrics
from .recipe import DEFAULT_RECIPE, Recipe, merge
from .rundir import TRAIN_LOG, Run, dist_setup, dist_teardown
from .speech import train_speech
from .text import train_text

log = logging.getLogger(TRAIN_LOG)


def _init_models(init, labels: Sequence[str]) -> tuple:
    """Warm-start models from earlier bundles: one path, or {"speech": path, "text": path}."""
    from ..bundle import load_bundle
    sources = {b: str(p) for b, p in (init if isinstance(init, dict) else
                                      {"speech": init, "text": init}).items() if p}
    loaded = {path: load_bundle(path) for path in set(sources.values())}
    for path, (init_cfg, _, _) in loaded.items():
        if init_cfg["labels"] != list(labels):
            raise TrainError(f"init bundle {path} labels {init_cfg['labels']} differ from {labels}")
    speech = loaded[sources["speech"]][1] if "speech" in sources else None
    text = loaded[sources["text"]][2] if "text" in sources else None
    return speech, text


@contextlib.contextmanager
def _held_apart(speech):
    """The speech model with the head its validation speakers never trained (a pooled head
    refitted on train + validation keeps its earlier self as `held_apart_head`), so the fusion is
    fitted on audio probabilities of unseen speakers."""
    final, earlier = getattr(speech, "head", None), getattr(speech, "held_apart_head", None)
    if earlier is None or earlier is final:
        yield speech
        return
    speech.head = earlier
    try:
        yield speech
    finally:
        speech.head = final


def _fusion_on_paired_sets(recipe: Recipe, speech, text, labels: Sequence[str]) -> tuple:
    """Fit fusion on the paired validation sets (audio + transcript, the audio from a head that
    never trained on them); UA per set, eval sets too (the shipped head)."""
    from ..data import load_spec
    with _held_apart(speech):
        probs = {s: paired_proba(speech, text, load_spec(s), labels) for s in recipe.fusion.val}
    pa = np.concatenate([p[0] for p in probs.values()])
    pt = np.concatenate([p[1] for p in probs.values()])
    yy = np.concatenate([p[2] for p in probs.values()])
    groups = np.concatenate([np.full(len(p[2]), k) for k, p in enumerate(probs.values())])
    neutral = labels.index("neutral") if "neutral" in labels else -1
    fusion, _ = fit_fusion(pa, pt, yy, neutral_index=neutral, groups=groups, objective="regret")
    for s in recipe.fusion.eval:
        probs[s] = paired_proba(speech, text, load_spec(s), labels)
    per_set = {s: {"audio_UA": metrics(y, a.argmax(1), len(labels))["UA"],
                   "text_UA": metrics(y, t.argmax(1), len(labels))["UA"],
                   "fused_UA": metrics(y, fusion(a, t).argmax(1), len(labels))["UA"]}
               for s, (a, t, y) in probs.items()}
    return fusion, {"params": fusion.to_config(), "per_set": per_set}


def _bundle_config(cfg: dict, recipe: Recipe, labels, speech, fusion, m_speech: dict, m_text: dict) -> dict:
    sc, tc = cfg["speech"], recipe.text
    return {"format_version": FORMAT_VERSION, "name": recipe.name, "version": recipe.version, "labels": labels,
            "front_end": {"sample_rate": A.SAMPLE_RATE, "feature": speech.feature},
            "speech": {k: sc[k] for k in ("backbone", "source", "hidden", "dropout", "trim", "heads", "head",
                                          "layers", "normalize") if sc.get(k) is not None}
            | {"temperature": m_speech.get("temperature", 1.0)},
            "text": {"base": tc.base, "max_length": tc.max_length, "temperature": 1.0},
            "fusion": fusion.to_config(), "asr": recipe.asr,
            "weights": {"dtype": "float16"},
            "training": {"recipe": "transfer-learning", "seed": recipe.seed, "run_config": cfg,
                         "metrics": {"speech_val_UA": m_speech["UA"], "speech_val_WA": m_speech["WA"],
                                     "text_dev_macro_F1": m_text["macro_F1"]}}}


def _write_outputs(run: Run, cfg: dict, bcfg: dict, report: dict, speech, text) -> None:
    """metrics.json, curves and confusion plots in the run folder; the bundle and its card."""
    from ..bundle import bundle_size, save_bundle
    labels = bcfg["labels"]
    run.save_json("metrics.json", report)
    plot_curves(report["speech_history"], run.path / "speech_curves.png", "speech branch")
    plot_curves(report["text_history"], run.path / "text_curves.png", "text branch")
    plot_confusion(report["speech_val"]["confusion"], labels, run.path / "speech_confusion.png", "speech (val)")
    plot_confusion(report["text_dev"]["confusion"], labels, run.path / "text_confusion.png", "text (dev)")
    out = save_bundle(cfg["out"], bcfg, speech, text, card="")
    card = recipe_card
    if cfg["speech"].get("multicorpus") is not None:
        from .multicorpus_card import multicorpus_card as card
    (Path(out) / "README.md").write_text(card(bcfg, report, bundle_size(out), cfg))
    (Path(out) / "metrics.json").write_text(json.dumps(
        {k: v for k, v in report.items() if not k.endswith("history")}, indent=2) + "\n")


def _load_data(recipe: Recipe, labels: Sequence[str]) -> dict[str, list]:
    """The items of each branch's data specs, loaded before any training, so a spec that cannot be
    read or a label outside the recipe's labels ends the run at once (DataError). The text
    branch's training rows may carry other labels too (multi-label sets): only theirs count."""
    from ..data import check_labels, load_spec
    specs = {"speech.train": recipe.speech.train, "speech.val": recipe.speech.val,
             "text.train": recipe.text.train, "text.val": recipe.text.val}
    out = {key: load_spec(spec) for key, spec in specs.items()}
    for key in ("speech.train", "speech.val", "text.val"):
        check_labels(out[key], labels, f"{key} {specs[key]!r}")
    return out


def run_recipe(config: dict | str | Path) -> dict:
    """Train speech and text branches, fit fusion, write run dir and bundle (see DEFAULT_RECIPE)."""
    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    cfg = merge(DEFAULT_RECIPE, config)
    recipe = Recipe.from_dict(cfg)          # the one validation of the recipe
    labels = cfg.get("labels", LABELS)
    rank, world = dist_setup()
    run = Run(recipe.run_dir, cfg, rank)
    t0 = time.time()
    speech, text = _init_models(recipe.init, labels) if recipe.init else (None, None)
    data = _load_data(recipe, labels)
    train = train_speech
    if recipe.speech.multicorpus is not None:
        from .speech_multicorpus import train_speech_multicorpus as train
    speech, m_speech, h_speech = train(recipe, labels, data["speech.train"], data["speech.val"], run,
                                       model=speech)
    dist_teardown()                         # all ranks together; only rank 0 goes on
    if rank != 0:
        return {}
    report: dict = {"speech_val": m_speech, "speech_history": h_speech}
    text, m_text, h_text = train_text(recipe, labels, data["text.train"], data["text.val"], run, model=text)
    report.update(text_dev=m_text, text_history=h_text)
    fusion, report["fusion"] = _fusion_on_paired_sets(recipe, speech, text, labels)
    bcfg = _bundle_config(cfg, recipe, labels, speech, fusion, m_speech, m_text)
    report["train_seconds"] = round(time.time() - t0, 1)
    _write_outputs(run, cfg, bcfg, report, speech, text)
    return report


def iemocap_protocol(root: str | Path, config: dict | None = None, out_dir: str | Path = "runs/iemocap") -> dict:
    """The paper's protocol: 4 classes, 5-fold leave-one-session-out, WA/UA per fold, mean ± std.

    In each fold the last remaining training session is the validation set for early stopping.
    """
    from ..data import IEMOCAP_LABELS, iemocap, iemocap_folds
    base = merge(DEFAULT_RECIPE, config or {})
    Recipe.from_dict(base)                  # a bad recipe fails before the corpus is read
    items = iemocap(root)
    folds = {}
    for sess, train, test in iemocap_folds(items):
        val_sess = max(int(i.speaker[3:5]) for i in train)
        tr = [i for i in train if int(i.speaker[3:5]) != val_sess]
        va = [i for i in train if int(i.speaker[3:5]) == val_sess]
        cfg = merge(base, {"labels": IEMOCAP_LABELS, "run_dir": f"{out_dir}/fold{sess}"})
        recipe = Recipe.from_dict(cfg)
        run = Run(recipe.run_dir, cfg)
        speech, _, _ = train_speech(recipe, IEMOCAP_LABELS, tr, va, run)
        text, _, _ = train_text(recipe, IEMOCAP_LABELS, tr, va, run)
        pa_v, pt_v, y_v = paired_proba(speech, text, va, IEMOCAP_LABELS)
        fusion, _ = fit_fusion(pa_v, pt_v, y_v)
        pa, pt, y = paired_proba(speech, text, test, IEMOCAP_LABELS)
        folds[sess] = {b: {k: v for k, v in metrics(y, p.argmax(1), 4).items()}
                       for b, p in (("audio", pa), ("text", pt), ("fused", fusion(pa, pt)))}
        log.info("fold %d: %s", sess, {b: (round(m["WA"], 3), round(m["UA"], 3)) for b, m in folds[sess].items()})
    summary = {b: {f"{k}_mean": float(np.mean([f[b][k] for f in folds.values()])) for k in ("WA", "UA")}
               | {f"{k}_std": float(np.std([f[b][k] for f in folds.values()])) for k in ("WA", "UA")}
               for b in ("audio", "text", "fused")}
    report = {"folds": folds, "summary": summary, "n": len(items)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "iemocap_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
