import json

import pytest
import torch
from safetensors.torch import load_file

from emodemo.bundle import (DEFAULT_BUNDLE, FORMAT_VERSION, LABELS, build_speech, build_text,
                            bundle_size, default_config, load_bundle, read_config, save_bundle)
from emodemo.errors import EmodemoError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(1)
    cfg = default_config()
    cfg["name"], cfg["version"] = "unit", "7"
    speech, text = build_speech(cfg), build_text(cfg)
    speech_base = {k: v.clone() for k, v in speech.state_dict().items()}
    with torch.no_grad():                      # "fine-tune" one backbone and one encoder tensor
        speech.backbone.linear.bias.add_(0.5)
        text.encoder.encoder.layer[5].output.dense.bias.add_(0.25)
        text.classifier.weight.normal_()
    out = save_bundle(tmp_path_factory.mktemp("b") / "unit", cfg, speech, text, card="# card\n",
                      speech_base=speech_base)
    return out, speech, text


def test_bundle_stores_only_heads_and_changed_tensors(saved):
    out, _, _ = saved
    sk = set(load_file(str(out / "speech.safetensors")))
    tk = set(load_file(str(out / "text.safetensors")))
    assert sk == {k for k in build_speech(default_config(), pretrained=False).state_dict()
                  if k.startswith("head.")} | {"backbone.linear.bias"}
    assert tk == {"classifier.weight", "classifier.bias", "encoder.encoder.layer.5.output.dense.bias"}
    assert all(v.dtype == torch.float16 for v in load_file(str(out / "speech.safetensors")).values())
    assert bundle_size(out) < 2_000_000


def test_bundle_round_trip(saved):
    out, speech, text = saved
    cfg, s2, t2 = load_bundle(out)
    assert cfg["name"] == "unit" and cfg["labels"] == LABELS and cfg["format_version"] == FORMAT_VERSION
    for k, v in speech.state_dict().items():
        assert torch.allclose(s2.state_dict()[k].float(), v.float(), atol=2e-3), k
    for k in ("classifier.weight", "encoder.encoder.layer.5.output.dense.bias"):
        assert torch.allclose(t2.state_dict()[k], text.state_dict()[k], atol=2e-3), k
    assert (out / "README.md").read_text() == "# card\n"


def test_bad_bundles_are_reported(tmp_path, saved):
    with pytest.raises(EmodemoError, match="not a model bundle"):
        read_config(tmp_path)
    cfg = json.loads((saved[0] / "config.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EmodemoError, match="upgrade emodemo"):
        read_config(tmp_path)
    cfg["format_version"] = FORMAT_VERSION
    cfg["labels"] = ["a", "b"]                  # head size no longer fits the weights
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for f in ("speech.safetensors", "text.safetensors"):
        (tmp_path / f).write_bytes((saved[0] / f).read_bytes())
    with pytest.raises(EmodemoError, match="do not fit"):
        load_bundle(tmp_path)


def test_default_bundle_is_complete_and_small():
    cfg = read_config(DEFAULT_BUNDLE)
    assert cfg["labels"] == LABELS
    # v7: Whisper base blocks 1-6, silence trimmed, five corpora, a pooled head with per-recording normalisation
    assert cfg["speech"]["backbone"] == "whisper-base" and cfg["speech"]["trim"] and cfg["speech"]["head"] == "pooled"
    assert cfg["asr"]["backend"] == "faster-whisper"
    card = (DEFAULT_BUNDLE / "README.md").read_text()
    # what issue 13 asks of the card: data and speaker splits, per-corpus held-out and
    # leave-one-corpus-out UA, prediction histograms, calibration, backbones, latency, license
    for needed in ("Training data", "held-out UA", "Leave one corpus out", "prediction histogram", "ECE",
                   "Backbones compared", "(this bundle, v", "end to end", "License", "non-commercial", "MB"):
        assert needed in card, needed
    assert "SHIPPED_ROW" not in card and "LATENCY_ROW" not in card
    assert bundle_size(DEFAULT_BUNDLE) < 30_000_000
