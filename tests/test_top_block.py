"""scripts/top_block.py (issue 21's top-block experiment): its cached entries, run through block 6's
frozen feed-forward layer, give exactly the pooled features the shipped layer-stats extractor
gives (trim "span", clip windows, a ragged batch), so "frozen" in its table is v9's probe."""
import importlib.util
import sys

import numpy as np
import torch

from conftest import ROOT, SR, espeak, tone

sys.path.insert(0, str(ROOT / "scripts"))
spec = importlib.util.spec_from_file_location("top_block", ROOT / "scripts" / "top_block.py")
T = importlib.util.module_from_spec(spec)
spec.loader.exec_module(T)


def test_entries_through_the_frozen_block_equal_the_layer_stats(tmp_path):
    from emodemo import audio as A
    from emodemo.speech import build_backbone
    from emodemo.training.features import layer_stats_extractor, stats_view
    torch.manual_seed(0)
    bb = build_backbone("whisper-base", pretrained=False).eval()    # exactness needs no real weights
    speech = A.load_audio(str(espeak("I did not expect that at all", tmp_path / "s.wav")))
    pad = np.zeros(SR // 2, np.float32)
    wavs = [speech, np.concatenate([pad, tone(1.2, 180), pad])]      # two lengths: a ragged batch
    ref = stats_view(torch.stack(layer_stats_extractor(bb, bb.feature, span=True)(wavs)), [1, 2, 3, 4, 5, 6])
    entries = T.top_extractor(bb)(wavs)
    assert [e.shape[1] for e in entries] == [512, 512] and all(e.shape[0] > T.STAT_ROWS for e in entries)
    frozen = T.FeedForward(bb.encoder.blocks[T.FIXED_BLOCKS]).eval()
    got = T.vectors(frozen, entries)
    assert got.shape == ref.shape == (2, 6144)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), float((got - ref).abs().max())
    # training moves only block 6's feed-forward half: a changed weight changes only block 6's stats
    with torch.no_grad():
        frozen.mlp[0].weight.mul_(1.5)
    moved = (T.vectors(frozen, entries) - ref).abs().amax(0).reshape(2, 6, 512).amax(-1)   # [mean|std, block]
    assert torch.all(moved[:, :5] == 0) and torch.all(moved[:, 5] > 1e-3)
