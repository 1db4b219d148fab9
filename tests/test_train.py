"""Training pipeline: metrics, data adapters (IEMOCAP layout), the recipe end to end, DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, SR, tone
from emodemo.data import IEMOCAP_LABELS, iemocap, iemocap_folds, load_spec, manifest
from emodemo import audio as emodemo_audio
from emodemo.training import metrics


def test_metrics_wa_ua_f1():
    y = [0, 0, 0, 0, 1, 1, 2, 2]
    p = [0, 0, 0, 1, 1, 0, 2, 2]
    m = metrics(y, p, 3)
    assert m["WA"] == pytest.approx(6 / 8)
    assert m["UA"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    f1_0, f1_1 = 2 * 3 / (2 * 3 + 1 + 1), 2 * 1 / (2 + 1 + 1)
    assert m["macro_F1"] == pytest.approx((f1_0 + f1_1 + 1.0) / 3)
    assert m["confusion"][0] == [3, 1, 0]


def make_iemocap(root: Path) -> dict:
    """A tiny tree in IEMOCAP's release layout: 5 sessions, improvised + scripted dialogs."""
    labels = ["neu", "hap", "exc", "sad", "ang", "fru", "xxx"]
    expected = {}
    for s in range(1, 6):
        sess = root / f"Session{s}"
        for dialog in (f"Ses0{s}F_impro01", f"Ses0{s}M_script02_1"):
            emo = sess / "dialog" / "EmoEvaluation"
            trn = sess / "dialog" / "transcriptions"
            wavd = sess / "sentences" / "wav" / dialog
            for d in (emo, trn, wavd):
                d.mkdir(parents=True, exist_ok=True)
            ev = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            tr = []
            for k, lab in enumerate(labels):
                for g in "FM":
                    utt = f"{dialog}_{g}{k:03d}"
                    ev += [f"[{k * 2.0:.4f} - {k * 2.0 + 1.5:.4f}]\t{utt}\t{lab}\t[2.5000, 2.5000, 2.5000]",
                           f"C-E1:\tNeutral;\t()", f"A-E1:\tval 3; act 2; dom  2;\t()", ""]
                    tr.append(f"{utt} [{k * 2.0:08.4f}-{k * 2.0 + 1.5:08.4f}]: words {lab} {g}")
                    sf.write(str(wavd / f"{utt}.wav"), tone(0.5, 200 + 20 * k), SR)
                    if lab in ("neu", "hap", "exc", "sad", "ang"):
                        expected[utt] = (lab, f"words {lab} {g}", f"Ses0{s}_{g}")
            (emo / f"{dialog}.txt").write_text("\n".join(ev) + "\n")
            (trn / f"{dialog}.txt").write_text("\n".join(tr) + "\n")
    return expected


def test_prior_correction_undoes_balanced_over_prediction():
    from emodemo.training import fit_prior_tau, metrics, prior_corrected
    rng = np.random.default_rng(0)
    prior = np.array([0.7, 0.2, 0.1])
    y = rng.choice(3, size=3000, p=prior)
    # a "balanced" classifier: right class boosted, but rare classes boosted for everyone
    logits = rng.normal(size=(3000, 3)) + 1.5 * np.eye(3)[y] + np.log([0.2, 1.0, 1.5])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    log_prior = np.log(prior)
    tau = fit_prior_tau(p, y, log_prior, 3)
    assert tau > 0
    f_plain = metrics(y, p.argmax(1), 3)["macro_F1"]
    f_corr = metrics(y, prior_corrected(p, log_prior, tau), 3)["macro_F1"]
    assert f_corr > f_plain + 0.02
    assert (prior_corrected(p, log_prior, 0.0) == p.argmax(1)).all()


def test_iemocap_adapter_reads_release_layout(tmp_path):
    expected = make_iemocap(tmp_path)
    items = iemocap(tmp_path)
    assert {i.id for i in items} == set(expected)
    m = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}
    for it in items:
        lab, text, spk = expected[it.id]
        assert it.label == m[lab] and it.transcript == text and it.speaker == spk
        assert Path(it.audio).exists()
    assert {i.label for i in items} == set(IEMOCAP_LABELS)
    folds = iemocap_folds(items)
    assert [f[0] for f in folds] == [1, 2, 3, 4, 5]
    for sess, train, test in folds:
        assert {i.speaker[:5] for i in test} == {f"Ses0{sess}"}
        assert not {i.id for i in train} & {i.id for i in test}
        assert len(train) + len(test) == len(items)
    assert len(iemocap(tmp_path, sessions=[2, 3])) == len(items) * 2 // 5
    assert len(load_spec(f"iemocap:{tmp_path}:sessions=1")) == len(items) // 5


def make_manifest(tmp_path: Path, n_per_class: int = 4) -> Path:
    """Tones whose pitch depends on the label, with label-bearing transcripts."""
    rows = ["path,label,transcript,speaker"]
    words = {"neutral": "it is a table", "happy": "I am so happy and glad", "sad": "I feel sad and alone"}
    for k, (lab, text) in enumerate(words.items()):
        for j in range(n_per_class):
            p = tmp_path / f"{lab}_{j}.wav"
            sf.write(str(p), tone(1.0 + 0.1 * j, 150 + 150 * k), SR)
            rows.append(f"{p.name},{lab},{text},spk{j % 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def tiny_recipe(tmp_path: Path, csv: Path) -> dict:
    return {"labels": ["neutral", "happy", "sad"], "run_dir": str(tmp_path / "run"),
            "out": str(tmp_path / "bundle"), "name": "tiny", "version": "t",
            "speech": {"train": f"csv:{csv}", "val": f"csv:{csv}", "epochs": 2, "head_epochs": 1,
                       "batch_size": 4, "hidden": 32},
            "text": {"train": f"csv:{csv}", "val": f"csv:{csv}", "epochs": 1, "batch_size": 8,
                     "train_layers": 1},
            "fusion": {"val": [f"csv:{csv}"], "eval": []}}


def test_manifest_adapter(tmp_path):
    csv = make_manifest(tmp_path)
    items = manifest(csv)
    assert len(items) == 12 and items[0].audio == str(tmp_path / "neutral_0.wav")
    assert items[0].transcript == "it is a table" and items[0].speaker == "spk0"


@pytest.mark.slow
def test_recipe_end_to_end_and_resume(tmp_path):
    from emodemo.recognizer import load_recognizer
    from emodemo.training import run_recipe
    csv = make_manifest(tmp_path)
    cfg = tiny_recipe(tmp_path, csv)
    report = run_recipe(cfg)
    run = tmp_path / "run"
    for f in ("config.json", "train.log", "metrics.json", "speech_curves.png", "speech_confusion.png",
              "text_confusion.png", "speech.ckpt", "text.ckpt"):
        assert (run / f).exists(), f
    assert len(report["speech_history"]) == 2 and len(report["text_history"]) == 1
    rec = load_recognizer(tmp_path / "bundle")
    assert rec.labels == ["neutral", "happy", "sad"]
    p = rec.predict(str(tmp_path / "happy_0.wav"), transcript="I am so happy and glad")
    assert set(p.fused) == {"neutral", "happy", "sad"}
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert "Training data" in card and "csv:" in card
    # resuming a finished run trains no further epoch
    log_before = (run / "train.log").read_text().count("speech epoch")
    run_recipe(cfg)
    assert "resumed at epoch 2" in (run / "train.log").read_text()
    assert (run / "train.log").read_text().count("speech epoch") == log_before
    # warm start each branch from a bundle ({"speech": ..., "text": ...}); no further epochs
    sub = tmp_path / "warm"
    sub.mkdir()
    cfg2 = tiny_recipe(sub, csv)
    cfg2["init"] = {"speech": str(tmp_path / "bundle"), "text": str(tmp_path / "bundle")}
    cfg2["speech"]["epochs"], cfg2["text"]["epochs"] = 0, 0
    cfg2["text"]["prior_correction"] = "none"
    run_recipe(cfg2)
    rec2 = load_recognizer(sub / "bundle")
    wav = emodemo_audio.load_audio(str(tmp_path / "happy_0.wav"))
    assert np.allclose(rec2.audio_proba(wav), rec.audio_proba(wav), atol=1e-5)
    assert np.allclose(rec2.text_proba(["so glad"]), rec.text_proba(["so glad"]), atol=1e-4)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """The same entry point under torchrun: 2 processes, gloo backend."""
    csv = make_manifest(tmp_path)
    cfg = tiny_recipe(tmp_path, csv)
    cfg["speech"]["epochs"] = 1
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        "--master_port=29517", "-m", "emodemo", "train", "--config", str(tmp_path / "cfg.json")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "world size 2" in log and "speech epoch 1" in log
    assert (tmp_path / "bundle" / "config.json").exists()


def test_class_weights_absent_classes_get_no_weight_and_no_probability():
    """4 of 7 classes in the labels: the absent 3 get weight 0, so label smoothing does not push
    probability onto them (it did with the old clamp-to-1 weights, which were the largest)."""
    import torch
    import torch.nn as nn
    from emodemo.training import class_weights
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    y = rng.choice(4, size=200, p=[0.4, 0.3, 0.2, 0.1])
    w = class_weights(y, 7).numpy()
    counts = np.bincount(y, minlength=7)
    assert (w[4:] == 0).all() and (w[:4] > 0).all()
    assert w[:4].mean() == pytest.approx(1.0)
    assert w[0] * counts[0] == pytest.approx(w[3] * counts[3])        # inverse frequency
    # a few steps of training a linear layer with smoothed, weighted cross-entropy
    x = torch.tensor(rng.normal(size=(7, 16))[y] * 2 + rng.normal(size=(200, 16)), dtype=torch.float32)
    torch.manual_seed(0)
    lin = nn.Linear(16, 7)
    absent_mass = lambda: float(torch.softmax(lin(x), -1)[:, 4:].sum(1).mean())  # noqa: E731
    with torch.no_grad():
        before = absent_mass()
    crit = nn.CrossEntropyLoss(weight=torch.tensor(w), label_smoothing=0.1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    for _ in range(30):
        loss = crit(lin(x), torch.tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = absent_mass()
    assert after < before / 4, (before, after)


def test_recipe_is_typed_and_validated_once():
    from emodemo.errors import TrainError
    from emodemo.training import DEFAULT_RECIPE, Recipe, merge
    r = Recipe.coerce({"speech": {"epochs": 3}, "text": {"prior_correction": 0.5}})
    assert r.speech.epochs == 3 and r.speech.batch_size == DEFAULT_RECIPE["speech"]["batch_size"]
    assert r.text.correction == 0.5 and Recipe.coerce({}).text.correction == "fit"
    assert Recipe.coerce(r) is r                                   # a Recipe is not checked again
    assert Recipe.from_dict(DEFAULT_RECIPE).to_dict() == DEFAULT_RECIPE
    for cfg in sorted((ROOT / "configs").glob("*.json")):       # the shipped configs are valid
        Recipe.from_dict(merge(DEFAULT_RECIPE, json.loads(cfg.read_text())))
    bad = [({"speech": {"epoch": 3}}, "speech.epoch"), ({"speech": {"lr": "1e-3"}}, "speech.lr"),
           ({"speech": {"unfreeze": "half"}}, "speech.unfreeze"), ({"text": {"batch_size": 0}}, "text.batch_size"),
           ({"text": {"prior_correction": "maybe"}}, "text.prior_correction"), ({"seed": True}, "seed"),
           ({"fusion": {"val": "ravdess"}}, "fusion.val"), ({"speech": 3}, "speech")]
    for over, key in bad:
        with pytest.raises(TrainError, match=key.replace(".", r"\.")):
            Recipe.coerce(over)


def test_best_epoch_keeps_the_best_weights_and_counts_patience():
    import torch
    from emodemo.training import BestEpoch
    lin = torch.nn.Linear(2, 2)
    best = BestEpoch()
    weights = {}
    for ep, score in enumerate([0.3, 0.5, 0.4, 0.45]):
        with torch.no_grad():
            lin.weight.fill_(ep)
        weights[ep] = lin.weight.clone()
        best.update(score, lin, tau=ep / 10)
    assert best.score == 0.5 and best.info == {"tau": 0.1} and best.bad == 2
    assert best.stop(2) and not best.stop(3) and not best.stop(None)
    best.restore(lin)
    assert torch.equal(lin.weight, weights[1])
    again = BestEpoch.from_state(best.to_state(), tau=0.1)        # through a checkpoint
    assert (again.score, again.bad, again.info) == (0.5, 2, {"tau": 0.1})
    assert torch.equal(again.state["weight"], weights[1])


def test_branch_proba_is_the_recognizers_rule(recognizer, speech_wav, tmp_path):
    """Probabilities over items as the recognizer computes them; temperature divides the logits."""
    from emodemo.data import Item
    from emodemo.training import branch_proba
    rec = recognizer
    sf.write(str(tmp_path / "tone.wav"), tone(1.5, 300.0), SR)
    items = [Item(str(speech_wav), "happy", "  I am so   happy today ", "s1"),
             Item(str(tmp_path / "tone.wav"), "neutral", None, "s2")]
    pa, pt, mask = branch_proba(rec.speech, rec.text_model, rec.config, items)
    assert mask.tolist() == [True, False] and pt.shape == (1, len(rec.labels))
    for i, it in enumerate(items):
        assert np.allclose(pa[i], rec.audio_proba(emodemo_audio.load_audio(it.audio)), atol=1e-5)
    assert np.allclose(pt, rec.text_proba(["I am so happy today"]), atol=1e-5)
    t0 = float(rec.config["speech"].get("temperature", 1.0))
    hot = {**rec.config, "speech": {**rec.config["speech"], "temperature": 2.0}}
    pa2, _, _ = branch_proba(rec.speech, None, hot, items)
    z = np.log(pa) * t0 / 2.0                                     # logits / 2, up to a constant
    assert np.allclose(pa2, np.exp(z) / np.exp(z).sum(1, keepdims=True), atol=1e-5)


def one_error_line_from_train(cfg: dict, tmp_path: Path) -> str:
    """Run `python -m emodemo train --config` on `cfg`; assert exit code 2 and a single `error:`
    line on stderr (no traceback); return that line."""
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(cfg))
    r = subprocess.run([sys.executable, "-m", "emodemo", "train", "--config", str(path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, lines
    return lines[0]


@pytest.mark.slow
def test_misspelt_multicorpus_key_ends_the_train_command_with_one_error_line(tmp_path):
    cfg = json.loads((ROOT / "configs" / "default-v7.json").read_text())
    cfg["speech"]["multicorpus"]["epohcs"] = 3
    line = one_error_line_from_train(cfg, tmp_path)
    assert "speech.multicorpus.epohcs" in line


@pytest.mark.slow
def test_labels_outside_the_recipe_end_the_train_command_with_one_error_line(tmp_path):
    """A recipe whose class list does not fit its data (the manifest has 'sad', the recipe only
    neutral and happy) stops before any training: one `error:` line naming the recipe key, exit 2."""
    cfg = tiny_recipe(tmp_path, make_manifest(tmp_path, n_per_class=1))
    cfg["labels"] = ["neutral", "happy"]
    line = one_error_line_from_train(cfg, tmp_path)
    assert line.startswith("error: speech.train") and "'sad'" in line, line
    assert not (tmp_path / "bundle").exists()


def test_multicorpus_recipe_is_typed():
    from emodemo.errors import TrainError
    from emodemo.training import Recipe
    r = Recipe.coerce({"speech": {"head": "pooled", "normalize": {}, "multicorpus": {"loco": True}}})
    assert r.speech.multicorpus.loco is True and r.speech.multicorpus.l2_grid[0] == 1e-3
    assert r.speech.normalize.min_segments >= 2
    for over, key in (({"speech": {"multicorpus": {"lr": "x"}}}, "speech.multicorpus.lr"),
                      ({"speech": {"head": "pooled", "normalize": {"min_segs": 3}}}, "speech.normalize.min_segs"),
                      ({"speech": {"head": "pooled", "normalize": {"blend": 1.5}}}, "speech.normalize.blend"),
                      ({"speech": {"normalize": {}}}, "speech.normalize")):
        with pytest.raises(TrainError, match=key.replace(".", r"\.")):
            Recipe.coerce(over)
