"""`finetune()`: stored corrections → a new, gated bundle version. Each step is a small function
that reads and fills in one `FinetuneRun` (options.py); `finetune` only strings them together.

1. read: the corrections (from a store, a database URL, or records) → clips (dataset.py rules);
2. guard and split: too few corrections fail clearly; a speaker/recording-grouped validation part;
3. features: every clip once through the frozen base speech model (features.py; rows kept in an
   on-disk cache, so a later run of the same base computes only new clips), and the replay: the
   bundle's pack plus whatever base training data this machine has (replay.py); the held-out
   clips' audio results are read from these rows from here on (no second backbone pass);
4. speech: a residual adapter chosen by grouped CV (adapt.py), then a temperature (branches.py);
5. text: the encoder fine-tuned when corrected transcripts exist and differ from clip to clip;
6. fusion re-fitted on held-out corrections with transcripts;
7. evaluate and gate: held-out corrections, reference specs and the replay guard, before vs after,
   as named checks that say what to do when one fails (evaluate.py);
8. write: the new bundle (deltas + adapter, the replay pack carried over) with its lineage.
"""
from __future__ import annotations

import copy
import logging
import re
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from ..errors import EmodemoError
from ..settings import cache_dir
from . import adapt as AD
from .branches import adapt_speech, adapt_text, refit_fusion
from .dataset import (MIN_CLASSES, FinetuneError, TooFewCorrections, build_dataset, check_counts, read_corrections,
                      split_clips, uncorrected)
from .evaluate import GUARD_SET, audio_proba, changes, evaluate_models, gate, guard_metrics, summary_for, with_recall
from .features import extract, feature_cache
from .options import FinetuneOptions, FinetuneRun, Progress
from .replay import as_list, clip_items, gather_replay

log = logging.getLogger(__name__)

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


# ---- 1-2. the corrections ---------------------------------------------------------------------
def check_paths(run: FinetuneRun) -> None:
    """The base bundle reads; the output folder may be written (not the base, not a full folder)."""
    from ..bundle import read_config
    try:
        run.labels = list(read_config(run.base_bundle).labels)
    except EmodemoError as exc:
        raise FinetuneError(str(exc)) from None
    if run.opts.dry_run:
        return
    if run.out_dir.resolve() == run.base_bundle.resolve():
        raise FinetuneError("--out must differ from --base (the base bundle is never overwritten)")
    if run.out_dir.exists() and any(run.out_dir.iterdir()) and not run.opts.overwrite:
        raise FinetuneError(f"{run.out_dir} exists and is not empty; choose another --out")


def read_dataset(run: FinetuneRun, source: Any) -> bool:
    """Read, count and split the corrections into run.report["dataset"]; False when the run ends
    here (a dry run, which also reports too few corrections instead of raising)."""
    o = run.opts
    run.say(0.01, "reading corrections")
    records, run.db_shown = read_corrections(source, o.media_dir)
    run.snapshot = datetime.now(timezone.utc)
    run.ds = build_dataset(records, run.labels)
    summary = run.ds.summary()
    run.report.update({"base": str(run.base_bundle), "out": str(run.out_dir), "dry_run": o.dry_run,
                       "dataset": summary, "written": False})
    try:
        run.clips, run.too_few = check_counts(run.ds, o.min_per_class, knob=o.knob("min_per_class"))
    except TooFewCorrections as exc:
        if not o.dry_run:
            raise
        run.report["guard"] = str(exc)       # a dry run still shows what the store holds
        run.say(1.0, "dry run: too few corrections")
        return False
    summary["too_few"] = run.too_few
    summary["uncorrected"] = uncorrected(run.labels, run.clips)
    run.train_clips, run.val_clips = split_clips(run.clips, o.val_fraction, o.seed)
    summary["split"] = {"train": len(run.train_clips), "val": len(run.val_clips),
                        "train_per_class": run.ds.per_class(run.train_clips),
                        "val_per_class": run.ds.per_class(run.val_clips)}
    if o.dry_run:
        run.say(1.0, f"dry run: nothing written (would hold out {len(run.val_clips)} of {len(run.clips)} clips)")
    return not o.dry_run


# ---- 3. the base bundle, the audio and the features ---------------------------------------------
def load_base(run: FinetuneRun) -> None:
    from ..bundle import load_bundle
    from ..data import load_spec
    if run.opts.reference_metrics is None:
        try:
            run.ref_items = {spec: load_spec(spec) for spec in as_list(run.opts.reference_spec)}
        except (EmodemoError, OSError) as exc:      # DataError, or a file the spec names is missing
            raise FinetuneError(f"cannot read data spec: {exc}") from None
    run.say(0.04, "loading the base bundle")
    run.cfg, run.speech, run.text = load_bundle(run.base_bundle)
    if run.cfg.speech.calibrated:
        from .write import parent_path
        raise FinetuneError(f"{run.base_bundle} was calibrated without labels; fine-tune {parent_path(run.cfg)} "
                            "instead (the corrections adapt it to their setting by themselves)")
    run.base_speech, run.base_text = copy.deepcopy(run.speech).eval(), copy.deepcopy(run.text).eval()
    run.base_fusion = run.cfg.fusion


def prepare_audio(run: FinetuneRun) -> None:
    run.say(0.08, "preparing audio")
    run.train_items, bad_tr = clip_items(run.train_clips, run.opts.segment_cache)
    run.val_items, bad_va = clip_items(run.val_clips, run.opts.segment_cache)
    if bad_tr or bad_va:
        run.report["dataset"]["unreadable"] = bad_tr + bad_va
    if len({i.label for i in run.train_items}) < MIN_CLASSES:
        raise TooFewCorrections("too few readable corrections to fine-tune "
                                f"({len(run.train_items)} training clips)")
    if not run.val_items:  # e.g. one clip per class: measure on the training clips
        log.warning("no held-out corrections; validating on the training corrections")
        run.val_items = list(run.train_items)


def extract_features(run: FinetuneRun) -> None:
    cache = corrections_cache(run)
    run.tr = features_of(run, run.train_items, cache, (0.1, 0.22), "features of training corrections")
    run.va = features_of(run, run.val_items, cache, (0.22, 0.28), "features of held-out corrections")
    run.say(0.28, "replay of the base model's training data")
    run.replay = gather_replay(run.base_bundle, run.cfg, run.speech, run.opts.replay_spec,
                               run.opts.replay_n, run.opts.seed, run.say)


def features_of(run: FinetuneRun, items, cache, span: tuple[float, float], what: str):
    """`extract` with progress between the fractions `span`, first saying how many rows the cache
    already holds (a run whose clips are all cached extracts nothing)."""
    cached = len(items) - len(cache.missing(items)) if cache is not None else 0
    run.say(span[0], what + (f": {cached} of {len(items)} from the cache" if cached else ""))
    return extract(run.speech, items, run.labels, run.progress(*span, what), cache)


def corrections_cache(run: FinetuneRun):
    """The corrections' feature cache (`features.feature_cache`), or None when it is switched off
    or its folder cannot be written (then every clip is extracted, as without it)."""
    if run.opts.feature_cache is False:
        return None
    root = Path(run.opts.feature_cache or cache_dir("features"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".probe-")
        probe.close()
    except OSError as exc:
        log.warning("feature cache %s not writable (%s): extracting every clip", root, exc)
        return None
    return feature_cache(run.speech, root)


def text_recipe(run: FinetuneRun) -> None:
    """The base's own recipe, with fine-tuning's text settings and the caller's overrides."""
    from ..training import DEFAULT_RECIPE, merge
    o = run.opts
    rc = run.cfg.run_config
    recipe = merge(DEFAULT_RECIPE, {k: v for k, v in rc.items() if k in ("speech", "text")})
    recipe = merge(recipe, {"text": FINETUNE_RECIPE["text"]})   # the speech adapter has its own settings
    recipe["text"].update(base=run.cfg.text.base, max_length=run.cfg.text.max_length)
    if o.epochs is not None:
        recipe["text"]["epochs"] = int(o.epochs)
    recipe = merge(recipe, o.overrides or {})
    recipe["seed"] = o.seed
    run.recipe = recipe


# ---- 4-6. the branches -----------------------------------------------------------------------
def fit_speech(run: FinetuneRun) -> None:
    run.say(0.4, f"speech: fitting the adapter on {len(run.tr)} corrections + "
                 f"{len(run.replay['train'])} replay clips")
    rep, run.eval_adapter, run.new_adapter, t_new = adapt_speech(
        run.speech, run.cfg, run.tr, run.va, run.replay, run.opts.tolerance, run.opts.seed,
        run.progress(0.4, 0.55, "speech: choosing the adapter, step"))
    run.report_speech, run.new_cfg = rep, run.cfg
    if run.new_adapter is not None:
        AD.install(run.speech, run.eval_adapter)   # held-out numbers: the adapter that did not see them
        run.new_cfg = run.cfg.with_(speech=replace(run.cfg.speech, adapter=True,
                                                   temperature=round(float(t_new), 4)))
    run.say(0.55, "speech: " + (f"held-out UA {rep['val_UA_base']} → {rep['val_UA_new']}"
                                if rep["updated"] else "kept the base"))


def fit_text(run: FinetuneRun) -> None:
    run_dir, tmp_run = run.opts.run_dir, None
    try:
        if run_dir is None:
            run_dir = tmp_run = tempfile.mkdtemp(prefix="emodemo-finetune-")
        run.text, run.report_text = adapt_text(run.text, run.base_text, run.labels, run.recipe,
                                               run.train_items, run.val_items, run.replay["text"],
                                               Path(run_dir), run.say)
    finally:
        _close_run_logs(run_dir)
        if tmp_run:
            shutil.rmtree(tmp_run, ignore_errors=True)


def fit_fusion(run: FinetuneRun) -> None:
    run.say(0.8, "re-fitting fusion")
    run.fusion, run.report_fusion = refit_fusion(run.speech, run.text, run.new_cfg, run.base_fusion,
                                                 run.val_items, heldout_audio(run)["after"])
    run.new_cfg = run.new_cfg.with_(fusion=run.fusion)


# ---- 7. evaluate and gate ----------------------------------------------------------------------
def heldout_audio(run: FinetuneRun) -> dict:
    """The base's and the new model's audio probabilities on the held-out corrections, read from
    their extracted rows (`run.va`): the backbone does not run on them again."""
    return {"before": audio_proba(run.base_speech, run.cfg.speech.temperature, run.va),
            "after": audio_proba(run.speech, run.new_cfg.speech.temperature, run.va)}


def measure(run: FinetuneRun, items, audio: Optional[dict] = None) -> dict:
    """Base and new models' metrics on `items` (`audio`: their audio probabilities, "before" and
    "after", when already known)."""
    audio = audio or {}
    return {"before": evaluate_models(run.base_speech, run.base_text, run.base_fusion, run.cfg, items,
                                      audio.get("before")),
            "after": evaluate_models(run.speech, run.text, run.fusion, run.new_cfg, items, audio.get("after"))}


def evaluate(run: FinetuneRun) -> None:
    run.say(0.85, "evaluating base and new on the held-out corrections")
    heldout = measure(run, run.val_items, heldout_audio(run))
    if run.new_adapter is not None:
        AD.install(run.speech, run.new_adapter)      # what is written: refit on all corrections
    if run.opts.reference_metrics is not None:
        run.reference = {k: dict(v) for k, v in run.opts.reference_metrics.items()}
    else:
        for k, (spec, items) in enumerate(run.ref_items.items()):
            run.say(0.87 + 0.06 * k / max(1, len(run.ref_items)), f"evaluating on the reference set {spec}")
            run.reference[spec] = measure(run, items)
        if len(run.replay["guard"]):
            run.reference[GUARD_SET] = guard_metrics(run.replay["guard"], AD.from_model(run.base_speech, len(run.labels)),
                                                     run.new_adapter, run.labels)
    corrected = {c.label for c in run.clips}
    run.decision = gate(run.reference, run.opts.tolerance, run.opts.force, run.labels, corrected, run.opts.knobs)
    ho = {k: with_recall(v, run.labels) for k, v in heldout.items()}
    refs = {s: {k: with_recall(v, run.labels) for k, v in r.items()} for s, r in run.reference.items()}
    first_ref = next(iter(refs.values()), {})
    run.report.update(
        speech=run.report_speech, text=run.report_text, fusion=run.report_fusion, gate=run.decision,
        finetune={"speech": FINETUNE_RECIPE["speech"], "text": run.recipe["text"],
                  "val_fraction": run.opts.val_fraction, "seed": run.opts.seed},
        replay=run.replay["sources"], metrics={"heldout_corrections": ho, "reference": refs},
        changes=changes(run.labels, {k: summary_for(v) for k, v in ho.items()},
                        {k: summary_for(v) for k, v in first_ref.items()}))


# ---- 8. write ----------------------------------------------------------------------------------
def write(run: FinetuneRun) -> None:
    from .write import lineage, write_bundle
    run.say(0.95, "writing the bundle")
    run.new_cfg = run.new_cfg.with_(name=run.out_dir.name, version=next_version(run.cfg.version))
    run.new_cfg = run.new_cfg.with_(lineage=lineage(run))
    run.report.update(written=True, version=run.new_cfg.version)    # as the report file inside says
    try:
        write_bundle(run.out_dir, run.base_bundle, run.new_cfg, run.speech, run.text, run.report)
    except BaseException:
        run.report["written"] = False
        raise
    run.say(1.0, f"wrote {run.out_dir} (v{run.new_cfg.version})")


# ---- the run -----------------------------------------------------------------------------------
STEPS = (load_base, prepare_audio, extract_features, text_recipe, fit_speech, fit_text, fit_fusion, evaluate)


def finetune(db_url: Any, base_bundle: str | Path, out_dir: str | Path,
             options: Optional[FinetuneOptions] = None, progress: Optional[Progress] = None,
             **option_values: Any) -> dict:
    """Fine-tune a new bundle from the corrections in `db_url` (a CorrectionStore, a database URL,
    or records), starting from `base_bundle`. `options` (or its fields as keyword arguments, e.g.
    `reference_spec=`, `force=`, `dry_run=`): see FinetuneOptions. `progress(fraction, message)`.

    Returns a report dict; report["written"] says whether `out_dir` was written, report["gate"] why
    (its "checks": each named check, passed or not, with what to do).
    Raises TooFewCorrections / FinetuneError for unusable input."""
    run = FinetuneRun(FinetuneOptions.of(options, **option_values), Path(base_bundle), Path(out_dir),
                      progress or (lambda f, m: None))
    check_paths(run)
    if not read_dataset(run, db_url):
        return run.report
    for step in STEPS:
        step(run)
    run.report["seconds"] = round(time.time() - run.started, 1)
    if not run.decision["write"]:
        failed = [c["name"] for c in run.decision["checks"] if not c["passed"]]
        run.say(1.0, "not written: failed " + "; ".join(failed))
        return run.report
    unchanged = nothing_changed(run.report_speech, run.report_text, run.report_fusion)
    if unchanged:                   # a copy of the base under a new name would only mislead
        run.report["unchanged"] = unchanged
        run.say(1.0, "not written: nothing changed (" + "; ".join(unchanged) + ")")
        return run.report
    write(run)
    return run.report


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
