"""The three branches of a fine-tuning run, each fitted on the corrections and kept only when it
beats the base: the speech adapter (with its temperature), the text encoder, the fusion weights."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..training.metrics import ece, fit_temperature, ua
from . import adapt as AD
from .evaluate import softmax
from .features import Feats
from .options import Progress

log = logging.getLogger(__name__)
MIN_TEXT_ITEMS = 8           # training corrections with transcripts needed to touch the text branch


# ---- speech ---------------------------------------------------------------------------------
def adapt_speech(speech, cfg, tr: Feats, va: Feats, replay: dict, tolerance: float, seed: int,
                 progress: Optional[Callable[[int, int], None]] = None
                 ) -> tuple[dict, Optional[AD.Adapter], Optional[AD.Adapter], float]:
    """Choose and fit the adapter on the training corrections; compare it with the base and the
    linear probe on the held-out corrections; fit a temperature on the out-of-fold and held-out
    logits (the user's own audio); refit the chosen settings on all corrections.

    Returns (report, adapter fitted on the training part (for the held-out numbers), adapter fitted
    on all corrections (what is written), temperature); both adapters None to keep the base.
    `progress(k, n)`: steps of the search done so far (domain gates, candidate settings), of n."""
    n = cfg.n_classes
    base = AD.from_model(speech, n)
    ch = AD.choose(tr, replay["train"], replay["guard"], base, n, tolerance, seed, progress)
    new = ch["adapter"]
    t_base = cfg.speech.temperature
    classes = sorted(set(tr.y.tolist()))
    lb, ln = base.logits(va.x, va.b), new.logits(va.x, va.b)
    probe = AD.linear_probe(tr, ch["mean"], ch["std"])
    rep = {"method": "residual adapter on frozen-backbone features", "train_corrections": len(tr),
           "val_corrections": len(va), "replay_train": len(replay["train"]),
           "replay_guard": len(replay["guard"]), "chosen": ch["kind"], "gate": ch["gate"], "beta": ch["beta"],
           "lambda": ch["lambda"],
           "cv_UA": ch["cv_UA"], "cv_UA_base": ch["cv_UA_base"], "guard_UA_base": ch["guard_UA_base"],
           "guard_UA_new": ch["guard_UA"], "selection": ch["table"],
           "val_UA_base": round(ua(va.y, lb.argmax(1), classes), 4) if len(va) else None,
           "val_UA_new": round(ua(va.y, ln.argmax(1), classes), 4) if len(va) else None,
           "val_UA_probe": round(ua(va.y, AD.probe_predict(probe, va.x, ch["mean"], ch["std"]),
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


# ---- text --------------------------------------------------------------------------------
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


# ---- fusion ------------------------------------------------------------------------------
def refit_fusion(speech, text, new_cfg, base_fusion, val_items, audio=None) -> tuple[Any, dict]:
    """`audio`: the audio probabilities of `val_items` when already known (else the model runs)."""
    from ..fusion import fit_fusion
    from ..training import metrics
    from ..training.evaluate import branch_proba
    labels = list(new_cfg.labels)
    rep: dict = {"base": base_fusion.to_config(), "refit": False}
    keep = [k for k, i in enumerate(val_items) if i.transcript]
    held = [val_items[k] for k in keep]
    fusion = base_fusion
    if len(held) >= 6 and len({i.label for i in held}) >= 2:
        pa, pt, mask = branch_proba(speech, text, new_cfg, held, None if audio is None else audio[keep])
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


