"""The app's Models tab without a browser: list bundles, switch the active one, and run a
fine-tuning job from the store in the background with progress, ending in a new listed bundle."""
import json
import shutil
from pathlib import Path

import pytest

from conftest import LABELS3, make_store, wav
from emodemo.errors import EmodemoError
from emodemo.registry import check_new_name, describe, find_bundles
from emodemo.store import CorrectionStore
from emodemo.ui import Handlers


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def models_dir(tiny_bundle, tmp_path) -> Path:
    """models/ with two copies of the tiny bundle (the second as version 2) and a broken folder."""
    d = tmp_path / "models"
    d.mkdir()
    shutil.copytree(tiny_bundle, d / "tiny")
    shutil.copytree(tiny_bundle, d / "tiny-b")
    cfg = json.loads((d / "tiny-b" / "config.json").read_text())
    cfg["version"] = "2"
    cfg["fusion"] = {**cfg.get("fusion", {}), "audio_weight": 0.8}
    (d / "tiny-b" / "config.json").write_text(json.dumps(cfg))
    (d / "broken").mkdir()
    (d / "broken" / "config.json").write_text("{not json")
    (d / "notes").mkdir()
    shutil.copytree(tiny_bundle, d / ".new.tmp-abc")         # a fine-tuning run's staging folder
    return d


def handlers(models_dir: Path, url: str, tmp_path: Path) -> Handlers:
    import emodemo
    rec = emodemo.load_recognizer(models_dir / "tiny")
    h = Handlers(rec, CorrectionStore(url, labels=LABELS3), work_dir=tmp_path / "work",
                 models_dir=models_dir)
    # a fast recipe for generated tones, no replay data
    h.finetune_options = {"replay_spec": [], "overrides": {
        "speech": {"lr": 3e-3, "backbone_lr": 1e-4, "batch_size": 4, "patience": 10, "perturb": {},
                   "specaugment": None},
        "text": {"epochs": 1, "batch_size": 8, "train_layers": 1}}}
    return h


def test_registry_lists_bundles_and_checks_names(models_dir):
    found = find_bundles(models_dir)
    assert [b.key for b in found] == ["tiny", "tiny-b"]          # broken and plain folders skipped
    assert found[1].version == "2" and found[1].labels == LABELS3 and found[1].size > 1000
    assert describe(models_dir / "tiny").name == "tiny"
    with pytest.raises(EmodemoError):
        describe(models_dir / "notes")
    for bad in ("", "../escape", "a/b", ".hidden", "x" * 65):
        with pytest.raises(EmodemoError, match="short name"):
            check_new_name(models_dir, bad)
    with pytest.raises(EmodemoError, match="already exists"):
        check_new_name(models_dir, "tiny")
    assert check_new_name(models_dir, "new-v1.2") == models_dir / "new-v1.2"


def test_switch_model_changes_the_active_bundle(models_dir, tmp_path):
    h = handlers(models_dir, f"sqlite:///{tmp_path}/c.db", tmp_path)
    out = h.models()
    rows = out["models_table"]
    assert [r[1] for r in rows] == ["tiny", "tiny-b"] and rows[0][0] == "● active" and rows[1][0] == ""
    assert out["models_dd"]["value"] == "tiny" and "2 model bundles" in out["models_msg"]
    clip = wav(tmp_path / "happy.wav", "happy", 0)
    assert h.api_predict(str(clip), "hello there")["bundle_version"] == "1"

    out = h.switch_model("tiny-b")
    assert "Now using" in out["models_msg"] and out["weight"] == pytest.approx(0.8)
    assert h.rec.version == "2" and [r[0] for r in out["models_table"]] == ["", "● active"]
    # the Analyse and About tabs name the model now in use (About used to keep the old one)
    assert "tiny v2" in out["active_md"] and "`tiny 2`" in out["about"]
    assert h.active_model() == {"active_md": out["active_md"], "about": out["about"]}
    assert h.api_predict(str(clip), "hello there")["bundle_version"] == "2"
    cid = h.correct(h.analyse(str(clip))["state"], "sad")["stored_id"]
    assert h.store.get(cid)["bundle_version"] == "2"             # corrections record the version

    assert "already the active" in h.switch_model("tiny-b")["models_msg"]
    for bad in (None, "broken", "../tiny", "nope"):
        msg = h.switch_model(bad)["models_msg"]
        assert "Choose one of the listed models" in msg and h.rec.version == "2"


def test_models_table_shows_lineage_and_forced(models_dir, tmp_path):
    """Parent, corrections used, held-out before/after and a forced flag, from the bundle's
    lineage (C7 keys, and the layout fine-tuning writes today)."""
    from emodemo.ui.handlers.models import MODEL_COLUMNS
    cfg = json.loads((models_dir / "tiny-b" / "config.json").read_text())
    cfg["lineage"] = {"parent": "tiny v1", "corrections_used": 42, "heldout_before": 0.41,
                      "heldout_after": 0.63, "forced": True, "checks": []}
    (models_dir / "tiny-b" / "config.json").write_text(json.dumps(cfg))
    cfg["lineage"] = {"base": {"name": "tiny", "version": "1"}, "corrections": {"clips_used": 7},
                      "forced": False, "metrics": {"heldout_corrections": {
                          "before": {"fused": {"UA": 0.5}}, "after": {"fused": {"UA": 0.6}}}}}
    shutil.copytree(models_dir / "tiny-b", models_dir / "tiny-c")
    (models_dir / "tiny-c" / "config.json").write_text(json.dumps(cfg))
    h = handlers(models_dir, f"sqlite:///{tmp_path}/c.db", tmp_path)
    rows = {r[1]: dict(zip(MODEL_COLUMNS, r)) for r in h.models()["models_table"]}
    b, c = rows["tiny-b"], rows["tiny-c"]
    assert (b["parent"], b["corrections used"], b["held-out before"], b["held-out after"],
            b["forced"]) == ("tiny v1", "42", "0.410", "0.630", "⚠️ forced")
    assert (c["parent"], c["corrections used"], c["held-out before"], c["held-out after"],
            c["forced"]) == ("tiny v1", "7", "0.500", "0.600", "")
    assert rows["tiny"]["parent"] == "–" and rows["tiny"]["forced"] == ""


def test_switch_refuses_other_labels(models_dir, tmp_path):
    cfg = json.loads((models_dir / "tiny-b" / "config.json").read_text())
    cfg["labels"] = ["neutral", "angry", "sad"]
    (models_dir / "tiny-b" / "config.json").write_text(json.dumps(cfg))
    h = handlers(models_dir, f"sqlite:///{tmp_path}/c.db", tmp_path)
    out = h.switch_model("tiny-b")
    assert "Restart it with --bundle models/tiny-b" in out["models_msg"] and h.rec.version == "1"


@pytest.mark.slow
def test_finetune_from_the_tab(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    h = handlers(models_dir, f"sqlite:///{tmp_path}/empty.db", tmp_path)
    # an empty store: a clear message, no job, nothing written
    out = h.start_finetune("tones-v1", 1, 3, "", False)
    assert "too few corrections" in out["ft_msg"] and h.job is None
    assert not (models_dir / "tones-v1").exists()
    # the refusal is the job's state for every visitor (C6), with why
    refused = h.finetune_status()
    assert "done: not written" in refused["ft_progress"] and "too few corrections" in refused["ft_progress"]
    assert refused["ft_timer"] is False

    h = handlers(models_dir, make_store(tmp_path, 6), tmp_path)
    dry = h.finetune_dry_run(3)["ft_msg"]
    assert "Enough corrections" in dry and "neutral 6" in dry
    assert "short name" in h.start_finetune("../x", 1, 3, "", False)["ft_msg"]
    assert "whole numbers" in h.start_finetune("ok", "many", 3, "", False)["ft_msg"]

    out = h.start_finetune("tones-v1", 1, 3, "", False)
    assert "Fine-tuning **tones-v1** from **tiny**" in out["ft_msg"]
    assert out["ft_timer"] is True and h.job is not None
    assert h.job.wait(600)
    assert h.job.state == "written", h.job.error
    status = h.finetune_status()
    assert status["ft_timer"] is False and "done: written" in status["ft_progress"]
    assert "100%" in status["ft_progress"] and "held-out corrections" in status["ft_progress"]
    assert [r[1] for r in status["models_table"]] == ["tiny", "tiny-b", "tones-v1"]
    new = describe(models_dir / "tones-v1")
    assert new.version == "1.ft1" and new.base == "tiny v1" and new.corrections == 18
    assert (models_dir / "tones-v1" / "README.md").read_text().count("## Lineage") == 1
    job, h.job.state = h.job, "running"                 # one run at a time
    assert "already going" in h.start_finetune("tones-v2", 1, 3, "", False)["ft_msg"]
    job.state = "written"
    assert not (models_dir / "tones-v2").exists()
    # the new bundle can be made the active one
    assert "Now using" in h.switch_model("tones-v1")["models_msg"] and h.rec.version == "1.ft1"


def test_persistent_models_folder_lists_the_shipped_ones_too(models_dir, tmp_path, monkeypatch):
    import emodemo
    persist = tmp_path / "persist"
    rec = emodemo.load_recognizer(models_dir / "tiny")
    h = Handlers(rec, CorrectionStore(f"sqlite:///{tmp_path}/c.db", labels=LABELS3),
                 work_dir=tmp_path / "work", models_dir=persist, extra_model_dirs=[models_dir])
    out = h.models()
    assert [r[1] for r in out["models_table"]] == ["tiny", "tiny-b"] and out["models_table"][0][0] == "● active"
    assert "Now using" in h.switch_model("tiny-b")["models_msg"]
    # a name taken in any listed folder is refused; new bundles would go to the persistent folder
    assert "already exists" in h.start_finetune("tiny", 1, 3, "", False)["ft_msg"]
    # app.py: where fine-tuned bundles go
    import app
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("EMODEMO_MODELS_DIR", raising=False)
    assert app.default_models_dir() == app.ROOT / "models"
    monkeypatch.setenv("EMODEMO_MODELS_DIR", str(persist))
    assert app.default_models_dir() == persist


def test_admin_token_guards_switching_and_finetuning(models_dir, tmp_path):
    h = handlers(models_dir, f"sqlite:///{tmp_path}/c.db", tmp_path)
    h.registry.admin_token = "s3cret"
    for token in (None, "", "wrong"):
        assert "admin token" in h.switch_model("tiny-b", token)["models_msg"]
        assert "admin token" in h.start_finetune("new-v1", 1, 3, "", False, token)["ft_msg"]
    assert h.rec.version == "1" and h.job is None and not (models_dir / "new-v1").exists()
    assert "Now using" in h.switch_model("tiny-b", "s3cret")["models_msg"] and h.rec.version == "2"
    assert "models_table" in h.models()                 # listing stays open to everyone


def test_finished_run_shows_what_changed_per_class(models_dir, tmp_path):
    """After a run, the tab shows per-class recall before/after on the held-out corrections and
    on the reference, and the one sentence of what changed (report["changes"], computed by
    emodemo.finetune from the metrics); nothing of it when the report has no changes."""
    from emodemo.finetune.evaluate import changes
    from emodemo.jobs import FinetuneJob
    h = handlers(models_dir, f"sqlite:///{tmp_path}/c.db", tmp_path)
    heldout = {"before": {"UA": 0.40, "recall": {"neutral": 0.9, "happy": 0.1, "sad": 0.2}},
               "after": {"UA": 0.75, "recall": {"neutral": 0.8, "happy": 0.7, "sad": 0.75}}}
    reference = {"before": {"UA": 0.70, "recall": {"neutral": 0.7, "happy": 0.7, "sad": 0.7}},
                 "after": {"UA": 0.68, "recall": {"neutral": 0.66, "happy": 0.7, "sad": 0.68}}}
    report = {"written": True, "changes": changes(LABELS3, heldout, reference)}
    job = FinetuneJob(base=models_dir / "tiny", out=models_dir / "tones-v9", state="written",
                      fraction=1.0, report=report, started=1.0, finished=61.0)
    h.finetuner.job = job
    status = h.finetune_status()["ft_progress"]
    assert "What changed:" in status and "happy recall on your clips 0.10 → 0.70" in status
    assert "reference UA -0.02" in status
    rows = [l for l in status.splitlines() if l.startswith("| ")]
    assert rows[0].startswith("| class (recall) | held-out before | held-out after | reference before")
    assert "| happy | 0.100 | 0.700 | 0.700 | 0.700 |" in rows
    assert "| sad | 0.200 | 0.750 | 0.700 | 0.680 |" in rows and len(rows) == 1 + len(LABELS3)
    job.report = {"written": True}                       # an older report: no section at all
    status = h.finetune_status()["ft_progress"]
    assert "What changed" not in status and "class (recall)" not in status
    assert "done: written" in status
