"""Fine-tuning's adapter search on the rows' span (`adapt.Span`): the same fits as on the full
feature dimension (the speed-up is in benchmarks/bench_adapter_span.py)."""
import numpy as np
import pytest

from emodemo.finetune import adapt as AD
from emodemo.finetune.features import Feats
from emodemo.training.metrics import ua

DIM = 600          # pooled features are wide (whisper-base: 6,144); rows here are ~150


def _blobs(n_per_class, classes, seed, shift=0.0):
    """Per-class Gaussian clusters in DIM dimensions (the class in the first 8), head logits
    that know the class a little."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(42).normal(size=(7, 8)) * 1.5
    y = np.repeat(classes, n_per_class).astype(np.int64)
    x = rng.normal(size=(len(y), DIM)) + shift
    x[:, :8] += centers[y]
    b = rng.normal(scale=0.5, size=(len(y), 7))
    b[np.arange(len(y)), y] += 0.5
    return Feats(x.astype(np.float32), b.astype(np.float32), y, [f"spk{i % 6}" for i in range(len(y))])


def _objective(a, parts, lam, n=7):
    """The adapter's training loss (module docstring of adapt) in float64."""
    tot = 0.5 * lam * float((a.W.astype(np.float64) ** 2).sum())
    for f, share in parts:
        logits = a.logits(f.x, f.b).astype(np.float64)
        logits -= logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        tot -= float((share * AD._balanced_weights(f.y, n) * logp[np.arange(len(f.y)), f.y]).sum())
    return tot


@pytest.mark.slow
def test_span_fit_is_the_full_fit():
    corr, replay = _blobs(10, [0, 1, 2, 3], 0, shift=0.2), _blobs(8, list(range(7)), 1)
    span = AD.Span.of(corr, replay)
    assert span.q is not None and span.q.shape == (DIM, len(corr) + len(replay))
    assert np.allclose(span.q.T @ span.q, np.eye(span.q.shape[1]), atol=1e-4)
    pc, pr, (m, s) = span.project(corr), span.project(replay), span.standardisation()
    test = _blobs(10, [0, 1, 2, 3], 2, shift=0.2)          # rows off the span: projected, same logits
    for gated, beta, lam in ((False, 0.5, 1.0), (True, 0.0, 0.1), (True, 1.0, 0.01)):
        full = AD.fit(corr, replay, 7, beta, lam, span.mean, span.std, gated)
        lifted = span.lift(AD.fit(pc, pr, 7, beta, lam, m, s, gated))
        assert lifted.W.shape == (7, DIM) and np.all(lifted.W[4:] == 0)
        parts = ((corr, AD.CORRECTION_SHARE), (replay, 1 - AD.CORRECTION_SHARE))
        f_full, f_span = _objective(full, parts, lam), _objective(lifted, parts, lam)
        assert abs(f_full - f_span) <= 2e-3 * abs(f_full), (gated, beta, lam, f_full, f_span)
        lf, ls = full.logits(test.x, test.b), lifted.logits(test.x, test.b)
        assert (lf.argmax(1) == ls.argmax(1)).mean() >= 0.95
        assert np.abs(lf - ls).max() <= 0.05 * max(1.0, np.abs(lf).max()), (gated, beta, lam)


def test_lift_is_exact_off_the_span():
    """An adapter fitted on projected rows computes, on any row, what it computed projected."""
    corr, replay = _blobs(6, [0, 1, 2], 3), _blobs(4, list(range(7)), 4)
    span = AD.Span.of(corr, replay)
    rng = np.random.default_rng(5)
    r = span.q.shape[1]
    small = AD.Adapter(rng.normal(size=(7, r)).astype(np.float32), rng.normal(size=7).astype(np.float32),
                       0.5, *span.standardisation(), rng.normal(size=r).astype(np.float32), 0.3)
    other = _blobs(5, list(range(7)), 6, shift=1.0)
    want = small.logits(span.project(other).x, other.b)
    assert np.allclose(span.lift(small).logits(other.x, other.b), want, atol=1e-3)


@pytest.mark.slow
def test_choose_on_the_span_and_without():
    """The search picks the same setting with and without the span (rows > half the dims: no
    span, the fits as before) and returns an adapter on the features."""
    corr, replay = _blobs(12, [0, 1, 2, 3], 7, shift=0.3), _blobs(10, list(range(7)), 8)
    guard = _blobs(5, list(range(7)), 9)
    base = AD.Adapter.identity(DIM, 7)
    on = AD.choose(corr, replay, guard, base, 7)
    keep = AD.SPAN_MAX_SHARE
    try:
        AD.SPAN_MAX_SHARE = 0.0
        assert AD.Span.of(corr, replay).q is None
        off = AD.choose(corr, replay, guard, base, 7)
    finally:
        AD.SPAN_MAX_SHARE = keep
    assert (on["gate"], on["beta"], on["lambda"]) == (off["gate"], off["beta"], off["lambda"])
    # the same CV UA per setting, to a clip or so (L-BFGS and the probe's solver stop early)
    assert max(abs(a["cv_UA"] - b["cv_UA"]) for a, b in zip(on["table"], off["table"])) <= 0.05
    assert on["adapter"].W.shape == (7, DIM) and np.array_equal(on["mean"], off["mean"])
    test = _blobs(20, [0, 1, 2, 3], 10, shift=0.3)
    ua_on, ua_off = (ua(test.y, ch["adapter"].logits(test.x, test.b).argmax(1)) for ch in (on, off))
    assert ua_on >= ua(test.y, test.b.argmax(1)) + 0.1 and abs(ua_on - ua_off) <= 0.05
    agree = on["adapter"].logits(test.x, test.b).argmax(1) == off["adapter"].logits(test.x, test.b).argmax(1)
    assert agree.mean() >= 0.95
    refit = AD.refit(on, corr, replay, 7)            # the refit on the span too: the same adapter
    assert np.abs(refit.logits(test.x, test.b) - on["adapter"].logits(test.x, test.b)).max() < 0.05
