"""Calibration to a new setting without labels, through the README's command, on the shipped default
as a user has it (no training data on disk): the bundle it writes, what it refuses, and that the
shift is the training audio's mean frame minus the clips' (emodemo.finetune.calibrate)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "models" / "default"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SENTENCES = ["the meeting starts at nine", "please close the window", "we drove home after lunch",
             "the package arrived today", "my phone is on the table", "the train was late again",
             "she bought a new coat"]
VOICES = [("en-us", "30"), ("en+m3", "60"), ("en+f2", "85")]


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> list[str]:
    """21 clips of 'a new setting': espeak-ng voices through a telephone band (sox), quiet."""
    d = tmp_path_factory.mktemp("setting")
    paths = []
    for j, text in enumerate(SENTENCES):
        for voice, pitch in VOICES:
            raw, out = d / f"raw_{j}_{voice}.wav", d / f"clip_{j}_{voice.replace('+', '_')}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-p", pitch, "-w", str(raw), text], check=True,
                           capture_output=True)
            subprocess.run(["sox", str(raw), "-r", "16000", str(out), "sinc", "300-3400", "gain", "-12"],
                           check=True, capture_output=True)
            paths.append(str(out))
    return paths


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "emodemo", "calibrate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_calibrate_command_writes_a_bundle_with_the_mean_frame_shift(setting, no_data, tmp_path):
    import emodemo
    from emodemo import audio as A
    from emodemo.finetune.calibrate import clip_frames
    from emodemo.finetune.replay import load_pack
    out = tmp_path / "models" / "phone"
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio")
    r = _run("--base", str(DEFAULT), "--out", str(out), *setting, str(bad))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"skipped {bad}" in r.stderr and f"wrote {out}" in r.stdout
    assert f"calibrated on {len(setting)} clips" in r.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["speech"]["calibrated"] and cfg["calibration"]["clips"] == len(setting)
    assert cfg["version"].endswith(".cal") and "replay_pack" not in cfg
    card = (out / "README.md").read_text()
    assert "calibrated without labels" in card and "CC BY-NC-SA 4.0" in card

    base, cal = emodemo.load_recognizer(DEFAULT), emodemo.load_recognizer(out)
    # the stored shift is the pack's mean frame minus the clips' mean frame (float16 on disk)
    ref, _ = load_pack(DEFAULT, json.loads((DEFAULT / "config.json").read_text()), base.speech)
    dim = base.speech.backbone.frame_dim
    means, before, _ = clip_frames(base.speech, setting)
    expected = torch.tensor(ref.x[:, :dim].mean(0)) - torch.stack(means).mean(0)
    shift = cal.speech.calibration.shift
    assert float(expected.norm()) > 1.0
    assert float((shift - expected).norm() / expected.norm()) < 1e-2
    # the calibrated bundle is the base with every frame moved by the shift, nothing else
    wav = A.load_audio(setting[0])
    f = A.features(base.speech.feature, wav)[None]
    n = torch.tensor([f.shape[1]])
    with torch.inference_mode():
        frames, lengths = base.speech.backbone_frames(f, n)      # what the head pools (v8: the speech span)
        by_hand = torch.softmax(base.speech.head(frames + shift, lengths), -1)[0].numpy()
    assert np.allclose(cal.audio_proba(wav), by_hand, atol=1e-4)
    assert np.abs(cal.audio_proba(wav) - base.audio_proba(wav)).max() > 1e-3
    assert np.allclose(before[0], base.audio_proba(wav), atol=1e-4)
    p = cal.predict(setting[1], transcript="")
    assert abs(sum(p.fused.values()) - 1) < 1e-4

    # calibrating it again, or fine-tuning it, is refused with what to do instead
    r = _run("--base", str(out), "--out", str(tmp_path / "again"), *setting)
    assert r.returncode == 2 and "already calibrated; calibrate" in r.stderr and "models/default" in r.stderr
    from emodemo.finetune import FinetuneError, finetune
    from emodemo.store import CorrectionStore
    with CorrectionStore(f"sqlite:///{tmp_path}/c.db") as store:
        for k, path in enumerate(setting):
            store.add(path, ["happy", "sad"][k % 2], annotator="me")
        with pytest.raises(FinetuneError, match="calibrated without labels; fine-tune .*models/default"):
            finetune(store, out, tmp_path / "ft", min_per_class=1)


def test_calibrate_refuses_too_few_clips_and_fine_tuned_bundles(setting, no_data, tmp_path):
    r = _run("--base", str(DEFAULT), "--out", str(tmp_path / "x"), *setting[:5])
    assert r.returncode == 2 and "5 usable clips (need 20" in r.stderr and not (tmp_path / "x").exists()
    tuned = tmp_path / "tuned"
    shutil.copytree(DEFAULT, tuned)
    cfg = json.loads((tuned / "config.json").read_text())
    cfg["speech"]["adapter"] = True
    cfg["lineage"] = {"base": {"path": "models/default"}}
    (tuned / "config.json").write_text(json.dumps(cfg))
    r = _run("--base", str(tuned), "--out", str(tmp_path / "y"), *setting)
    assert r.returncode == 2 and "calibrate models/default instead" in r.stderr
