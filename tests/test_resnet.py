"""WeSpeaker ResNet34 re-implementation: key layout, parameter count, shapes and checkpoint loading."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import yaml

from emodemo.errors import EmodemoError
from emodemo.resnet import ResNet, build_resnet, load_wespeaker

torch.set_num_threads(2)

CONFIG = {  # what a WeSpeaker voxceleb ResNet34 model directory's config.yaml holds (abridged)
    "model": "ResNet34",
    "model_args": {"feat_dim": 80, "embed_dim": 256, "pooling_func": "TSTP", "two_emb_layer": False},
    "projection_args": {"project_type": "arc_margin", "scale": 32.0},
}
N_SPEAKERS = 17  # the real projection is [5994 or 17982, 256]; size is irrelevant, it is ignored


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and BatchNorm statistic a distinctive value so equality checks bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(1234)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    return model.eval()


def _write_model_dir(path, state: dict, config: dict = CONFIG):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save(state, path / "avg_model.pt")
    return path


@pytest.fixture(scope="module")
def source() -> ResNet:
    return _randomise(build_resnet("ResNet34", **CONFIG["model_args"]))


@pytest.fixture(scope="module")
def wespeaker_state(source) -> dict:
    """The state dict as WeSpeaker's save_checkpoint writes it: backbone + projection head."""
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    sd["projection.weight"] = torch.randn(N_SPEAKERS, 256)
    return sd


def _assert_same(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---- layout --------------------------------------------------------------------------------
EXPECTED_KEYS = [
    "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
    "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.2.conv2.weight", "layer1.2.bn2.running_var",
    "layer2.0.conv1.weight", "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.weight",
    "layer2.0.shortcut.1.running_var", "layer2.3.bn2.bias",
    "layer3.0.shortcut.0.weight", "layer3.5.conv2.weight",
    "layer4.0.shortcut.1.running_mean", "layer4.2.conv2.weight", "layer4.2.bn2.weight",
    "seg_1.weight", "seg_1.bias",
]


def test_state_dict_uses_wespeaker_names():
    sd = build_resnet("ResNet34").state_dict()
    for k in EXPECTED_KEYS:
        assert k in sd, k
    # no shortcut where stride 1 and channels unchanged; no second embedding layer; no pooling params
    assert not any(k.startswith("layer1.0.shortcut") or k.startswith("layer2.1.shortcut") for k in sd)
    assert not any(k.startswith(("seg_2", "seg_bn_1", "pool", "projection")) for k in sd)
    assert {k.split(".")[0] for k in sd} == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "seg_1"}
    assert [len(getattr(build_resnet(), f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    # shapes of the stem, one shortcut and the embedding layer (80 fbank bins -> 10 after /8)
    assert tuple(sd["conv1.weight"].shape) == (32, 1, 3, 3)
    assert tuple(sd["layer2.0.shortcut.0.weight"].shape) == (64, 32, 1, 1)
    assert tuple(sd["layer4.2.conv2.weight"].shape) == (256, 256, 3, 3)
    assert tuple(sd["seg_1.weight"].shape) == (256, 256 * 10 * 2)


def test_parameter_count_matches_wespeaker():
    # Derived from the architecture: 3x3 convs without bias, BN = 2 params/channel, 1x1 shortcuts.
    def block(cin, cout):
        n = 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout
        return n + (cin * cout + 2 * cout if cin != cout else 0)

    stem = 9 * 32 + 2 * 32
    layers = 0
    for cin, cout, n in [(32, 32, 3), (32, 64, 4), (64, 128, 6), (128, 256, 3)]:
        layers += block(cin, cout) + (n - 1) * block(cout, cout)
    seg_1 = 5120 * 256 + 256
    assert stem + layers + seg_1 == 6_634_336          # WeSpeaker lists ResNet34 as 6.63M
    model = build_resnet("ResNet34")
    assert sum(p.numel() for p in model.parameters()) == 6_634_336
    assert sum(p.numel() for p in model.pool.parameters()) == 0
    assert sum(p.numel() for p in build_resnet("ResNet18").parameters()) == 4_105_440


def test_two_emb_layer_adds_wespeaker_keys():
    m = build_resnet("ResNet34", two_emb_layer=True).eval()
    sd = m.state_dict()
    assert {"seg_bn_1.running_mean", "seg_bn_1.running_var", "seg_2.weight", "seg_2.bias"} <= sd.keys()
    assert "seg_bn_1.weight" not in sd  # BatchNorm1d(affine=False)
    assert m.embed(torch.randn(1, 40, 80)).shape == (1, 256)


def test_build_rejects_unknown():
    with pytest.raises(EmodemoError):
        build_resnet("ResNet35")
    with pytest.raises(EmodemoError):
        build_resnet("ResNet34", embed_size=192)
    with pytest.raises(EmodemoError):
        build_resnet("ResNet34", pooling_func="ASTP")


# ---- loading -------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["bare", "ddp", "wrapped"])
def test_load_wespeaker_roundtrip(tmp_path, source, wespeaker_state, layout):
    state = dict(wespeaker_state)
    if layout == "ddp":
        state = {"module." + k: v for k, v in state.items()}
    elif layout == "wrapped":
        state = {"model": state, "epoch": torch.tensor(150)}
    d = _write_model_dir(tmp_path / "wespeaker-voxceleb-resnet34", state)
    model, report = load_wespeaker(d)
    _assert_same(model, source)
    assert not model.training
    assert report.ignored == ["projection.weight"]
    assert report.missing == [] and report.unexpected == [] and report.shape_mismatch == []
    assert report.ok and report.loaded == len(source.state_dict())


def test_load_direct_pt_path_and_averaged_counters(tmp_path, source, wespeaker_state):
    # average_model.py true-divides every entry, so num_batches_tracked arrives as float
    state = {k: (v / 10 if k.endswith("num_batches_tracked") else v) for k, v in wespeaker_state.items()}
    d = _write_model_dir(tmp_path / "m", state)
    model, report = load_wespeaker(d / "avg_model.pt", strict=True)
    assert report.ok
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert v.dtype == torch.long
        else:
            assert torch.equal(v, source.state_dict()[k]), k


def test_missing_and_unexpected_keys_are_reported(tmp_path, wespeaker_state, caplog):
    state = {k: v for k, v in wespeaker_state.items() if k != "layer3.1.conv1.weight"}
    state["extra.weight"] = torch.zeros(3)
    d = _write_model_dir(tmp_path / "m", state)
    with caplog.at_level(logging.WARNING, logger="emodemo.resnet"):
        _, report = load_wespeaker(d)
    assert report.missing == ["layer3.1.conv1.weight"]
    assert report.unexpected == ["extra.weight"]
    assert "layer3.1.conv1.weight" in caplog.text
    with pytest.raises(EmodemoError, match="strict"):
        load_wespeaker(d, strict=True)


def test_shape_mismatch_raises(tmp_path, wespeaker_state):
    config = {**CONFIG, "model_args": {**CONFIG["model_args"], "embed_dim": 192}}
    d = _write_model_dir(tmp_path / "m", wespeaker_state, config)
    with pytest.raises(EmodemoError, match="seg_1.weight"):
        load_wespeaker(d)


def test_wrong_file_raises(tmp_path):
    d = _write_model_dir(tmp_path / "m", {"encoder.weight": torch.zeros(4), "projection.weight": torch.zeros(2)})
    with pytest.raises(EmodemoError, match="no parameter in the checkpoint matches"):
        load_wespeaker(d)
    with pytest.raises(EmodemoError):
        load_wespeaker(tmp_path / "does-not-exist")


# ---- forward -------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [100, 237])
def test_frames_and_embed_shapes(source, T):
    feats = torch.randn(2, T, 80)
    with torch.no_grad():
        frames, lengths = source.frames(feats, torch.tensor([T, 50]))
        emb = source.embed(feats)
    assert source.frame_dim == 2560
    assert frames.shape == (2, math.ceil(T / 8), 2560)
    assert lengths.tolist() == [math.ceil(T / 8), math.ceil(50 / 8)]
    assert emb.shape == (2, 256)
    assert torch.isfinite(emb).all() and torch.isfinite(frames).all()


def test_frames_match_tstp_pooling_order(source):
    """frames() are layer4 flattened C-major, so their time mean/std is exactly TSTP's statistics."""
    feats = torch.randn(1, 64, 80)
    with torch.no_grad():
        frames, _ = source.frames(feats)
        stats = source.pool(source.feature_map(feats))
    mean = frames.mean(1)
    std = torch.sqrt(frames.var(1, unbiased=True) + 1e-7)
    torch.testing.assert_close(stats, torch.cat([mean, std], dim=1))
    torch.testing.assert_close(source.embed(feats), source.seg_1(stats))


def test_eval_is_deterministic_and_forward_is_embed(source):
    feats = torch.randn(1, 120, 80)
    with torch.no_grad():
        a, b, c = source.embed(feats), source.embed(feats.clone()), source(feats)
    assert torch.equal(a, b) and torch.equal(a, c)
    # batching does not change an item's embedding (eval-mode BN, per-item pooling)
    with torch.no_grad():
        batched = source.embed(torch.cat([feats, torch.randn(1, 120, 80)]))[:1]
    torch.testing.assert_close(batched, a, rtol=1e-4, atol=1e-5)


def test_bad_input_raises(source):
    with pytest.raises(EmodemoError):
        source.embed(torch.randn(100, 80))
    with pytest.raises(EmodemoError):
        source.embed(torch.randn(1, 100, 40))
    with pytest.raises(EmodemoError, match="too few"):
        source.embed(torch.randn(1, 8, 80))


def test_end_to_end_from_waveform(source):
    from emodemo.audio import fbank
    t = np.arange(16000, dtype=np.float32) / 16000
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(0).standard_normal(16000)
    feats = fbank(wav.astype(np.float32))
    assert feats.shape == (98, 80)
    with torch.no_grad():
        frames, lengths = source.frames(feats[None])
        emb = source(feats[None])
    assert frames.shape == (1, 13, source.frame_dim) and lengths.tolist() == [13]
    assert emb.shape == (1, 256) and torch.isfinite(emb).all()
