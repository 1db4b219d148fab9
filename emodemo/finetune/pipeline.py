"""`finetune()`: stored corrections → a new, gated bundle version. Each step is a small function;
`finetune` only strings them together and reports progress.

1. read: the corrections (from a store, a database URL, or records) → clips (dataset.py rules);
2. guard and split: too few corrections fail clearly; a speaker/recording-grouped validation part;
3. features: every clip once through the frozen base speech model (features.py), and the replay:
   the bundle's pack plus whatever base training data this machine has (replay.py);
4. speech: a residual adapter chosen by grouped CV (adapt.py), then a temperature;
5. text: the encoder fine-tuned when corrected transcripts exist and differ from clip to clip;
6. fusion re-fitted on held-out corrections with transcripts;
7. evaluate and gate: held-out corrections, reference specs and the replay guard, before vs after;
8. write: the new bundle (deltas + adapter, the replay pack carried over) with a lineage card.
"""
from __future__ import annotations

import copy
import logging
import re
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..errors import EmodemoError
from . import adapt as AD
from .dataset import (MIN_CLASSES, MIN_PER_CLASS, VAL_FRACTION, FinetuneError, TooFewCorrections,
                      build_dataset, check_counts, read_corrections, split_clips)
from ..training.metrics import ece
from .evaluate import changes, evaluate_models, fit_temperature, gate, short_metrics, softmax
from .features import Feats, extract
from .replay import DEFAULT_REPLAY_N, as_list, clip_items, gather_replay

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
MIN_TEXT_ITEMS = 8           # training corrections with transcripts needed to touch the text branch
FINETUNE_RECIPE: dict = {
    "speech": {"method": "adapter", "betas": list(AD.BETAS), "lambdas": list(AD.LAMBDAS),
               "correction_share": AD.CORRECTION_SHARE},
    "text": {"epochs": 3, "lr": 2e-5, "head_lr": 5e-4, "train_layers": 2, "batch_size": 16,
             "prior_correction": "none"},   # the base head already carries its prior correction
}


def next_version(version: Any) -> str:
    """'2' -> '2.ft1', '2.ft1' -> '2.ft2'."""
    v = str(version or "0")
    m = re.fullmatch(r"(.*)\.ft(\d+)", v)
    return f"{m.group(1)}.ft{int(m.group(2)) + 1}" if m else f"{v}.ft1"


# ---- 4. speech ------------------------------------------------------------------------------
def adapt_speech(speech, cfg: dict, tr: Feats, va: Feats, replay: dict, tolerance: float,
                 seed: int) -> tuple[dict, Optional[AD.Adapter], Optional[AD.Adapter], float]:
    """Choose and fit the adapter on the training corrections; compare it with the base and the
    linear probe on the held-out corrections; fit a temperature on the out-of-fold and held-out
    logits (the user's own audio); refit the chosen settings on all corrections.

    Returns (report, adapter fitted on the training part (for the held-out numbers), adapter fitted
    on all corrections (what is written), temperature); both adapters None to keep the base."""
    n = len(cfg["labels"])
    base = AD.from_model(speech, n)
    ch = AD.choose(tr, replay["train"], replay["guard"], base, n, tolerance, seed)
    new = ch["adapter"]
    t_base = float(cfg["speech"].get("temperature", 1.0))
    classes = sorted(set(tr.y.tolist()))
    lb, ln = base.logits(va.x, va.b), new.logits(va.x, va.b)
    probe = AD.linear_probe(tr, ch["mean"], ch["std"])
    rep = {"method": "residual adapter on frozen-backbone features", "train_corrections": len(tr),
           "val_corrections": len(va), "replay_train": len(replay["train"]),
           "replay_guard": len(replay["guard"]), "chosen": ch["kind"], "gate": ch["gate"], "beta": ch["beta"],
           "lambda": ch["lambda"],
           "cv_UA": ch["cv_UA"], "cv_UA_base": ch["cv_UA_base"], "guard_UA_base": ch["guard_UA_base"],
           "guard_UA_new": ch["guard_UA"], "selection": ch["table"],
           "val_UA_base": round(AD.ua(va.y, lb.argmax(1), classes), 4) if len(va) else None,
           "val_UA_new": round(AD.ua(va.y, ln.argmax(1), classes), 4) if len(va) else None,
           "val_UA_probe": round(AD.ua(va.y, AD.probe_predict(probe, va.x, ch["mean"], ch["std"]),
                                       classes), 4) if len(va) else None}
    if ch["cv_UA"] <= ch["cv_UA_base"] + 1e-9:
        rep.update(updated=False, reason="the adapter did not beat the base in cross-validation "
                   "on the training corrections")
        return rep, None, None, t_base
    cal_l, cal_y = np.concatenate([ch["oof"], ln]), np.concatenate([ch["oof_y"], va.y])
    t_new = fit_temperature(softmax(cal_l), cal_y) if len(cal_y) else 1.0
    final = new
    if len(va) and va is not tr:
        both = Feats.concat([tr, va], tr.x.shape[1], n)
        final = AD.refit(ch, both, replay["train"], n)
    rep.update(updated=True, temperature=round(t_new, 4), final_fit_corrections=len(tr) + (len(va) if final is not new else 0),
               ECE_val_base=round(ece(softmax(lb, t_base), va.y), 4) if len(va) else None,
               ECE_val_new=round(ece(softmax(ln, t_new), va.y), 4) if len(va) else None)
    return rep, new, final, t_new


# ---- 5. text --------------------------------------------------------------------------------
class EpochLines(logging.Handler):
    """While active, the training loops' "text epoch N: ..." log lines become progress steps."""

    def __init__(self, cb: Callable[[int, str], None]):
        super().__init__(logging.INFO)
        self.cb = cb

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("text epoch ") and not msg.startswith("text epoch 0"):
            try:
                self.cb(int(msg.split()[2].rstrip(":")), msg)
            except (ValueError, IndexError):   # progress must never break training
                pass

    def __enter__(self):
        from ..training import TRAIN_LOG
        self.logger = logging.getLogger(TRAIN_LOG)
        self.level = self.logger.level
        self.logger.addHandler(self)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)



def adapt_text(text, base_text, labels, recipe: dict, train_items, val_items, replay_text, run_dir: Path,
               say: Progress):
    """Fine-tune the text branch when the corrections carry label information in their transcripts."""
    from ..training import Run, metrics, train_text
    rep: dict = {"updated": False}
    t_tr = [i for i in train_items if i.transcript]
    t_va = [i for i in val_items if i.transcript]
    rt_tr, rt_va = replay_text
    distinct = len({i.transcript.lower() for i in t_tr})
    if len(t_tr) < MIN_TEXT_ITEMS or len({i.label for i in t_tr}) < 2:
        rep["reason"] = f"{len(t_tr)} training corrections with transcripts (need {MIN_TEXT_ITEMS}, 2+ classes)"
    elif distinct < 0.5 * len(t_tr):
        rep["reason"] = (f"transcripts repeat across clips ({distinct} distinct of {len(t_tr)}), "
                         "so they carry no label information")
    elif not (t_va or rt_va):
        rep["reason"] = "no held-out transcripts to validate on"
    else:
        tv = t_va + rt_va
        yv = [labels.index(i.label) for i in tv]
        base_f1 = metrics(yv, base_text.predict_proba([i.transcript for i in tv]).numpy().argmax(1),
                          len(labels))["macro_F1"]
        n_ep = int(recipe["text"]["epochs"])
        say(0.6, f"text: fine-tuning on {len(t_tr)} transcripts ({n_ep} epochs)")
        text.train()
        with EpochLines(lambda ep, msg: say(0.6 + 0.18 * ep / max(1, n_ep), msg)):
            text, m_text, hist = train_text(recipe, labels, t_tr + rt_tr, tv, Run(run_dir, recipe), model=text)
        text.eval()
        rep.update(train=len(t_tr), replay_train=len(rt_tr), val=len(tv), val_macro_F1_base=round(base_f1, 4),
                   val_macro_F1_new=round(m_text["macro_F1"], 4), history=hist)
        if m_text["macro_F1"] <= base_f1 + 1e-9:
            text = copy.deepcopy(base_text)
            rep["reason"] = "fine-tuning did not beat the base on validation"
        else:
            rep["updated"] = True
    return text, rep


# ---- 6. fusion ------------------------------------------------------------------------------
def refit_fusion(speech, text, new_cfg: dict, base_fusion, val_items) -> tuple[Any, dict]:
    from ..fusion import fit_fusion
    from ..training import metrics
    from ..training.evaluate import branch_proba
    labels = list(new_cfg["labels"])
    rep: dict = {"base": base_fusion.to_config(), "refit": False}
    held = [i for i in val_items if i.transcript]
    fusion = base_fusion
    if len(held) >= 6 and len({i.label for i in held}) >= 2:
        pa, pt, mask = branch_proba(speech, text, new_cfg, held)
        y = np.array([labels.index(i.label) for i in held])
        cand, cand_ua = fit_fusion(pa[mask], pt, y[mask])
        base_ua = metrics(y[mask], base_fusion(pa[mask], pt).argmax(1), len(labels))["UA"]
        rep.update(items=int(mask.sum()), UA_base_fusion=round(base_ua, 4), UA_refit=round(cand_ua, 4))
        if cand_ua > base_ua + 1e-9:
            fusion, rep["refit"] = cand, True
    else:
        rep["reason"] = f"{len(held)} held-out corrections with transcripts (need 6)"
    rep["new"] = fusion.to_config()
    return fusion, rep


# ---- 7. evaluate ------------------------------------------------------------------------------
def with_recall(m: Mapping, labels: Sequence[str]) -> dict:
    """Short metrics plus per-class recall of the audio branch (from its confusion matrix)."""
    out = short_metrics(m)
    if "audio" in m and "confusion" in m["audio"]:
        cm = np.array(m["audio"]["confusion"])
        out["audio"]["recall"] = {lab: (round(float(cm[k, k] / cm[k].sum()), 4) if cm[k].sum() else None)
                                  for k, lab in enumerate(labels)}
    return out


def guard_metrics(guard: Feats, base: AD.Adapter, new: Optional[AD.Adapter], labels) -> dict:
    from ..training import metrics
    n = len(labels)
    return {"before": {"audio": metrics(guard.y, base.logits(guard.x, guard.b).argmax(1), n)},
            "after": {"audio": metrics(guard.y, (new or base).logits(guard.x, guard.b).argmax(1), n)}}


def _summary_for(m: Mapping) -> dict:
    a = m.get("audio") or {}
    return {"UA": a.get("UA"), "recall": a.get("recall")}


# ---- the run --------------------------------------------------------------------------------
def finetune(db_url: Any, base_bundle: str | Path, out_dir: str | Path,
             replay_spec: str | Sequence[str] | None = None, reference_spec: str | Sequence[str] | None = None,
             tolerance: float = 0.02, force: bool = False, dry_run: bool = False,
             min_per_class: int = MIN_PER_CLASS, epochs: Optional[int] = None, seed: int = 0,
             progress: Optional[Progress] = None, *, replay_n: int = DEFAULT_REPLAY_N,
             media_dir: Optional[str] = None, val_fraction: float = VAL_FRACTION,
             overrides: Optional[dict] = None, overwrite: bool = False,
             run_dir: Optional[str | Path] = None, segment_cache: Optional[str | Path] = None,
             reference_metrics: Optional[Mapping] = None) -> dict:
    """Fine-tune a new bundle from the corrections in `db_url` (a CorrectionStore, a database URL,
    or records), starting from `base_bundle`.

    replay_spec: data spec(s) of base training data (None: the base bundle's own training specs,
        silently skipping those not on this machine; "none" or []: none). The bundle's replay pack
        is always used when it has one.
    reference_spec: data spec(s) the new bundle must not be worse on by more than `tolerance` UA;
        the replay pack's guard part is always checked too.
    epochs: text-branch epochs (the speech adapter is fitted to convergence).
    reference_metrics: {spec: {"before": ..., "after": ...}} to use instead of measuring (tests).
    Returns a report dict; report["written"] says whether `out_dir` was written, report["gate"] why.
    Raises TooFewCorrections / FinetuneError for unusable input.
    """
    t0 = time.time()
    say = progress or (lambda f, m: None)
    from ..bundle import read_config
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
    records, db_shown = read_corrections(db_url, media_dir)
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

    from ..bundle import load_bundle
    from ..data import load_spec
    from ..fusion import LateFusion
    from ..training import DEFAULT_RECIPE, merge
    try:
        ref_items = {} if reference_metrics is not None else \
            {spec: load_spec(spec) for spec in as_list(reference_spec)}
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise FinetuneError(f"cannot read data spec: {exc}") from None
    say(0.04, "loading the base bundle")
    cfg, speech, text = load_bundle(base_bundle)
    if cfg["speech"].get("calibrated"):
        from .write import parent_path
        raise FinetuneError(f"{base_bundle} was calibrated without labels; fine-tune {parent_path(cfg)} instead "
                            "(the corrections adapt it to their setting by themselves)")
    base_speech, base_text = copy.deepcopy(speech).eval(), copy.deepcopy(text).eval()
    base_fusion = LateFusion.from_config(cfg.get("fusion"))

    say(0.08, "preparing audio")
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

    def feats_progress(what: str, lo: float, hi: float):
        def cb(k: int, n: int) -> None:
            if k == n or k % 25 == 0:
                say(lo + (hi - lo) * k / max(1, n), f"features of {what}: {k}/{n} clips")
        return cb

    tr = extract(speech, train_items, labels, feats_progress("training corrections", 0.1, 0.22))
    va = extract(speech, val_items, labels, feats_progress("held-out corrections", 0.22, 0.28))
    say(0.28, "replay of the base model's training data")
    replay = gather_replay(base_bundle, cfg, speech, replay_spec, replay_n, seed, say)

    rc = (cfg.get("training") or {}).get("run_config") or {}
    recipe = merge(DEFAULT_RECIPE, {k: v for k, v in rc.items() if k in ("speech", "text")})
    recipe = merge(recipe, {"text": FINETUNE_RECIPE["text"]})   # the speech adapter has its own settings
    recipe["text"]["base"] = cfg["text"]["base"]
    recipe["text"]["max_length"] = cfg["text"].get("max_length", recipe["text"].get("max_length", 128))
    if epochs is not None:
        recipe["text"]["epochs"] = int(epochs)
    recipe = merge(recipe, overrides or {})
    recipe["seed"] = seed

    say(0.4, f"speech: fitting the adapter on {len(tr)} corrections + {len(replay['train'])} replay clips")
    report_speech, eval_adapter, new_adapter, t_new = adapt_speech(speech, cfg, tr, va, replay, tolerance, seed)
    new_cfg = copy.deepcopy(cfg)
    if new_adapter is not None:
        AD.install(speech, eval_adapter)     # held-out numbers: the adapter that did not see them
        new_cfg["speech"]["adapter"] = True
        new_cfg["speech"]["temperature"] = round(float(t_new), 4)
    say(0.55, "speech: " + (f"held-out UA {report_speech['val_UA_base']} → {report_speech['val_UA_new']}"
                            if report_speech["updated"] else "kept the base"))

    tmp_run = None
    try:
        if run_dir is None:
            tmp_run = tempfile.mkdtemp(prefix="emodemo-finetune-")
            run_dir = tmp_run
        text, report_text = adapt_text(text, base_text, labels, recipe, train_items, val_items,
                                       replay["text"], Path(run_dir), say)
    finally:
        _close_run_logs(run_dir)
        if tmp_run:
            shutil.rmtree(tmp_run, ignore_errors=True)

    say(0.8, "re-fitting fusion")
    fusion, report_fusion = refit_fusion(speech, text, new_cfg, base_fusion, val_items)
    new_cfg["fusion"] = fusion.to_config()

    say(0.85, "evaluating base and new")
    heldout = {"before": evaluate_models(base_speech, base_text, base_fusion, cfg, val_items),
               "after": evaluate_models(speech, text, fusion, new_cfg, val_items)}
    if new_adapter is not None:
        AD.install(speech, new_adapter)      # what is written: refit on all corrections
    reference: dict = {}
    if reference_metrics is not None:
        reference = {k: dict(v) for k, v in reference_metrics.items()}
    else:
        for spec, items in ref_items.items():
            reference[spec] = {"before": evaluate_models(base_speech, base_text, base_fusion, cfg, items),
                               "after": evaluate_models(speech, text, fusion, new_cfg, items)}
        if len(replay["guard"]):
            reference["replay guard (base training clips)"] = guard_metrics(
                replay["guard"], AD.from_model(base_speech, len(labels)), new_adapter, labels)
    decision = gate(reference, tolerance, force)
    ho = {k: with_recall(v, labels) for k, v in heldout.items()}
    refs = {s: {k: with_recall(v, labels) for k, v in r.items()} for s, r in reference.items()}
    first_ref = next(iter(refs.values()), {})
    report.update(speech=report_speech, text=report_text, fusion=report_fusion, gate=decision,
                  finetune={"speech": FINETUNE_RECIPE["speech"], "text": recipe["text"],
                            "val_fraction": val_fraction, "seed": seed},
                  replay=replay["sources"],
                  metrics={"heldout_corrections": ho, "reference": refs},
                  changes=changes(labels, {k: _summary_for(v) for k, v in ho.items()},
                                  {k: _summary_for(v) for k, v in first_ref.items()}))
    report["seconds"] = round(time.time() - t0, 1)
    if not decision["write"]:
        say(1.0, "not written: worse on the reference set")
        return report
    unchanged = nothing_changed(report_speech, report_text, report_fusion)
    if unchanged:                   # a copy of the base under a new name would only mislead
        report["unchanged"] = unchanged
        say(1.0, "not written: nothing changed (" + "; ".join(unchanged) + ")")
        return report

    say(0.95, "writing the bundle")
    new_cfg["name"] = out_dir.name
    new_cfg["version"] = next_version(cfg.get("version"))
    from .write import lineage, write_bundle
    new_cfg["lineage"] = lineage(cfg, base_bundle, ds, clips, train_items, val_items, too_few, db_shown,
                                 snapshot, replay["sources"], reference, tolerance, decision, report_speech,
                                 report_text, report_fusion, recipe, seed, new_cfg, report["metrics"])
    report.update(written=True, version=new_cfg["version"])    # as the report file inside says
    try:
        write_bundle(out_dir, base_bundle, new_cfg, speech, text, report)
    except BaseException:
        report["written"] = False
        raise
    say(1.0, f"wrote {out_dir} (v{new_cfg['version']})")
    return report


def nothing_changed(speech: dict, text: dict, fusion: dict) -> list[str]:
    """Why each part kept the base, when no part changed; [] when something did."""
    if speech.get("updated") or text.get("updated") or fusion.get("refit"):
        return []
    return [f"{part}: {r.get('reason') or 'kept the base'}"
            for part, r in (("audio", speech), ("text", text), ("fusion", fusion))]


def _close_run_logs(run_dir) -> None:
    """Detach the Run's log-file handler (train.Run adds one to the 'emodemo' logger)."""
    if not run_dir:
        return
    for h in list(logging.getLogger("emodemo").handlers):
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == Path(run_dir).resolve():
            logging.getLogger("emodemo").removeHandler(h)
            h.close()
