"""Fine-tuning reads each clip's pooled row once: from an on-disk cache keyed by the base speech
model and the clip (a later run of the same base extracts only clips no earlier run saw), and the
held-out clips' audio results come from those rows instead of a second backbone pass. Both must
give exactly what the model's own forward gives."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from emodemo.bundle import load_bundle
from emodemo.data import Item
from emodemo.finetune import adapt as AD
from emodemo.finetune.evaluate import audio_proba, evaluate_models
from emodemo.finetune.features import cache_key, extract, feature_cache
from emodemo.training import features as FT
from emodemo.training.evaluate import branch_proba

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "data" / "examples"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def base():
    cfg, speech, text = load_bundle(ROOT / "models" / "default")
    return cfg, speech.eval(), text


@pytest.fixture(scope="module")
def items(speech_wav):
    clips = sorted(EXAMPLES.glob("*.flac"))[:4] + [speech_wav]
    labels = ["angry", "angry", "fearful", "happy", "happy"]
    return [Item(str(p), lab, id=f"clip{k}", corpus="corrections") for k, (p, lab) in enumerate(zip(clips, labels))]


def _random_adapter(dim: int, n: int, seed: int = 0) -> AD.Adapter:
    """A gated adapter with weights large enough to change the answers."""
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    return AD.Adapter(f32(n, dim) * 0.05, f32(n), 0.5, f32(dim), np.abs(f32(dim)) + 0.5, f32(dim) * 0.01, 0.3)


def test_audio_results_from_rows_equal_the_models_forward(base, items):
    cfg, speech, _ = base
    labels = list(cfg.labels)
    rows = extract(speech, items, labels)
    t = cfg.speech.temperature
    direct, _, _ = branch_proba(speech, None, cfg, items)
    assert np.allclose(audio_proba(speech, t, rows), direct, atol=1e-5)
    before = direct.argmax(1)
    AD.install(speech, _random_adapter(rows.x.shape[1], len(labels)))
    try:
        adapted, _, _ = branch_proba(speech, None, cfg, items)
        assert not np.array_equal(adapted.argmax(1), before) or not np.allclose(adapted, direct, atol=1e-3)
        hot = cfg.with_(speech=dataclasses.replace(cfg.speech, temperature=1.7))
        assert np.allclose(audio_proba(speech, 1.7, rows), branch_proba(speech, None, hot, items)[0], atol=1e-5)
        assert np.allclose(audio_proba(speech, t, rows), adapted, atol=1e-5)
        # and the metrics evaluate_models reports are the same either way
        fusion = cfg.fusion
        assert evaluate_models(speech, None, fusion, cfg, items, audio_proba(speech, t, rows)) == \
            evaluate_models(speech, None, fusion, cfg, items)
        with pytest.raises(ValueError):
            evaluate_models(speech, None, fusion, cfg, items, audio_proba(speech, t, rows)[:2])
    finally:
        speech.adapter = None


def test_cache_extracts_each_clip_once_and_keys_by_model(base, items, tmp_path, monkeypatch):
    cfg, speech, _ = base
    labels = list(cfg.labels)
    seen: list[str] = []
    real = FT.extracted

    def counting(sources, *a, **k):
        seen.extend(s.id for s in sources)
        return real(sources, *a, **k)

    monkeypatch.setattr(FT, "extracted", counting)
    fresh = extract(speech, items, labels)
    assert len(seen) == len(items)
    cache = feature_cache(speech, tmp_path)
    first = extract(speech, items[:3], labels, cache=cache)
    again = extract(speech, items, labels, cache=cache)          # two new clips, three cached
    assert seen[len(items):] == [i.id for i in items[:3]] + [i.id for i in items[3:]]
    assert np.array_equal(again.x[:3], first.x) and np.allclose(again.x, fresh.x, atol=1e-6)
    assert np.array_equal(again.b, fresh.b) or np.allclose(again.b, fresh.b, atol=1e-6)
    n = len(seen)
    extract(speech, items, labels, cache=feature_cache(speech, tmp_path))
    assert len(seen) == n                                          # all cached: nothing extracted
    # an adapter acts after the row: the same key; another head or backbone: another key
    key = cache_key(speech)
    AD.install(speech, _random_adapter(fresh.x.shape[1], len(labels)))
    try:
        assert cache_key(speech) == key
    finally:
        speech.adapter = None
    head = next(p for n_, p in speech.named_parameters() if n_.startswith("head."))
    kept = head.detach().clone()
    with torch.no_grad():
        head.add_(1e-3)
        try:
            assert cache_key(speech) != key
        finally:
            head.copy_(kept)
    assert cache_key(speech) == key
