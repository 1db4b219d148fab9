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


def test_evidence_mode_treats_neutral_as_absence_of_evidence():
    labels = ["neutral", "happy", "angry"]
    angry_voice = np.array([0.05, 0.15, 0.80])
    neutral_words = np.array([0.90, 0.05, 0.05])
    flat_voice = np.array([0.85, 0.10, 0.05])
    angry_words = np.array([0.10, 0.05, 0.85])
    fus = LateFusion(0.5, "evidence", 1.0, neutral_index=0)
    assert labels[fus(angry_voice, neutral_words).argmax()] == "angry"      # sentence says nothing
    assert labels[fus(flat_voice, angry_words).argmax()] == "angry"         # voice says nothing
    assert labels[fus(flat_voice, neutral_words).argmax()] == "neutral"     # neither does
    assert np.allclose(fus(angry_voice, None), angry_voice)
    out = fus(np.array([[0.2, 0.5, 0.3]] * 3), np.array([[0.6, 0.2, 0.2]] * 3))
    assert out.shape == (3, 3) and np.allclose(out.sum(1), 1.0)
    # the linear mix of the same pair is pulled to neutral: the failure mode evidence avoids
    assert labels[LateFusion(0.4, "linear")(angry_voice, neutral_words).argmax()] == "neutral"


def test_fit_fusion_with_groups_protects_the_worst_set():
    rng = np.random.default_rng(1)
    n = 200
    y = rng.integers(1, 4, n)                                  # emotional classes only
    onehot = np.eye(4)[y] * 0.7 + 0.075
    neutralish = np.tile([0.85, 0.05, 0.05, 0.05], (n, 1))
    # set A: audio knows, text says neutral; set B: text knows, audio says neutral
    pa = np.concatenate([onehot, neutralish])
    pt = np.concatenate([neutralish, onehot])
    yy = np.concatenate([y, y])
    groups = np.array([0] * n + [1] * n)
    fus, worst = fit_fusion(pa, pt, yy, groups=groups)
    assert fus.mode == "evidence" and worst == pytest.approx(1.0)
    for g in (0, 1):
        assert (fus(pa[groups == g], pt[groups == g]).argmax(1) == yy[groups == g]).all()


@pytest.mark.parametrize("mode", ["linear", "confidence", "evidence"])
def test_slider_extremes_select_one_branch(mode):
    pa, pt = np.array([0.3, 0.5, 0.2]), np.array([0.6, 0.1, 0.3])
    for sharp in (0.5, 1.0, 2.0):
        for power in (1.0, 4.0):
            assert np.allclose(LateFusion(1.0, mode, sharp, 0, power)(pa, pt), pa, atol=1e-6)
            assert np.allclose(LateFusion(0.0, mode, sharp, 0, power)(pa, pt), pt, atol=1e-6)


def test_evidence_power_lets_the_branch_that_hears_an_emotion_pick_it():
    labels = ["neutral", "happy", "sad", "angry"]
    sad_voice = np.array([0.15, 0.05, 0.42, 0.38])          # sad, but not sure against angry
    mild_words = np.array([0.60, 0.37, 0.01, 0.02])         # a neutral sentence with a happy tint
    plain = LateFusion(0.45, "evidence", 4.0, 0, 1.0)
    strong = LateFusion(0.45, "evidence", 4.0, 0, 4.0)
    # power 1 = the plain mix of emotion masses: the sentence's tint decides
    assert labels[plain(sad_voice, mild_words).argmax()] == "happy"
    assert labels[strong(sad_voice, mild_words).argmax()] == "sad"
    # power 1 is exactly the plain mix of the emotion masses a·p_audio + t·p_text
    out = plain(sad_voice, mild_words)
    emo = 0.45 * sad_voice + 0.55 * mild_words
    assert np.allclose(out[1:] / out[1:].sum(), emo[1:] / emo[1:].sum())
    assert LateFusion.from_config(strong.to_config()) == strong


def test_regret_objective_keeps_fusion_at_least_as_good_as_the_informative_branch():
    rng = np.random.default_rng(2)
    n = 300
    y = rng.integers(1, 4, n)
    # set A (voice carries it): audio right 80 %, text neutral with a fixed happy tint
    pa_a = np.where(rng.random((n, 1)) < 0.8, np.eye(4)[y], np.eye(4)[rng.integers(1, 4, n)]) * 0.5 + 0.125
    pt_a = np.tile([0.7, 0.25, 0.02, 0.03], (n, 1))
    # set B (words carry it): text right 75 %, audio flat
    pt_b = np.where(rng.random((n, 1)) < 0.75, np.eye(4)[y], np.eye(4)[rng.integers(1, 4, n)]) * 0.6 + 0.1
    pa_b = np.tile([0.8, 0.07, 0.07, 0.06], (n, 1))
    pa, pt = np.concatenate([pa_a, pa_b]), np.concatenate([pt_a, pt_b])
    yy, groups = np.concatenate([y, y]), np.array([0] * n + [1] * n)
    fus, regret = fit_fusion(pa, pt, yy, groups=groups, objective="regret")
    assert regret >= -1e-9
    from emodemo.fusion import unweighted_accuracy as ua
    for g, p_best in ((0, pa_a), (1, pt_b)):
        m = groups == g
        assert ua(yy[m], fus(pa[m], pt[m]).argmax(1), 4) >= ua(yy[m], p_best.argmax(1), 4) - 1e-9
    with pytest.raises(ValueError):
        fit_fusion(pa, pt, yy, groups=groups, objective="best")


def test_trust_scales_the_text_weight_in_every_mode():
    """trust 1: the configured fusion; trust 0: the audio result; in between the audio weight is
    w / (w + (1 - w) * trust) and the fused label moves monotonically towards the audio's."""
    from emodemo.fusion import LateFusion
    pa = np.array([0.1, 0.7, 0.1, 0.1])                 # audio: happy
    pt = np.array([0.05, 0.05, 0.05, 0.85])             # text: angry (say, a bad translation)
    for f in (LateFusion(0.4, "linear"), LateFusion(0.4, "confidence", 2.0),
              LateFusion(0.5, "evidence", 8.0, 0, 8.0)):
        assert np.allclose(f(pa, pt, 1.0), f(pa, pt))
        assert np.allclose(f(pa, pt, 0.0), pa)
        angry = [f(pa, pt, t)[3] for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
        assert all(a <= b + 1e-12 for a, b in zip(angry, angry[1:])), (f.mode, angry)
        # one trust per row of a batch
        both = f(np.stack([pa, pa]), np.stack([pt, pt]), np.array([0.0, 1.0]))
        assert np.allclose(both[0], pa) and np.allclose(both[1], f(pa, pt))
    assert LateFusion(0.4).trusted_audio_weight(0.5) == pytest.approx(0.4 / (0.4 + 0.6 * 0.5))
    assert LateFusion.from_config(LateFusion(0.3, "evidence").to_config()) == LateFusion(0.3, "evidence")
