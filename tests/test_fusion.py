import numpy as np
import pytest

from emodemo.fusion import LateFusion, fit_fusion, normalized_entropy


def test_no_text_means_audio_result():
    p = np.array([0.1, 0.7, 0.2])
    for mode in ("linear", "confidence"):
        assert np.allclose(LateFusion(0.3, mode)(p, None), p)


def test_linear_weight():
    pa, pt = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert np.allclose(LateFusion(0.8, "linear")(pa, pt), [0.8, 0.2])


def test_confidence_mode_ignores_uninformative_branch():
    pa = np.array([0.1, 0.6, 0.1, 0.2])
    uniform = np.full(4, 0.25)
    fused = LateFusion(0.2, "confidence")(pa, uniform)           # text weighted 0.8 but says nothing
    assert np.allclose(fused, pa, atol=1e-6)
    assert np.allclose(LateFusion(0.2, "linear")(pa, uniform).sum(), 1.0)
    assert normalized_entropy(uniform) == pytest.approx(1.0)


def test_fit_fusion_prefers_the_informative_branch():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    good = np.eye(4)[y] * 0.6 + 0.1                 # always right
    noise = rng.dirichlet(np.ones(4), 400)           # random
    fus, ua = fit_fusion(good, noise, y)
    assert ua == pytest.approx(1.0)
    fus2, ua2 = fit_fusion(noise, good, y)
    assert ua2 == pytest.approx(1.0)
    assert LateFusion.from_config(fus.to_config()) == fus


def test_bad_mode_rejected():
    with pytest.raises(ValueError):
        LateFusion.from_config({"mode": "magic"})
