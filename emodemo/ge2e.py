"""The GE2E speaker encoder of resemblyzer (3-layer LSTM on a 40-band mel), as a speech backbone
(`frames`, `embed`; see speech.py for the interface)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_checked
from .errors import EmodemoError

GE2E_HIDDEN = 256
GE2E_LAYERS = 3
GE2E_EMBED = 256
GE2E_PARTIAL_FRAMES = 160     # resemblyzer embeds 1.6 s partial windows ...
GE2E_PARTIAL_RATE = 1.3       # ... at 1.3 partials per second


def resemblyzer_weights() -> Path:
    """Path of the GE2E checkpoint that the `resemblyzer` package ships."""
    import importlib.util
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise EmodemoError("the ge2e backbone needs the 'resemblyzer' package (pip install resemblyzer)")
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"


class GE2E(nn.Module):
    """The GE2E speaker encoder of resemblyzer: LSTM(40→256, 3 layers) → Linear(256) → ReLU → L2.

    Parameter names match resemblyzer's `VoiceEncoder` (`lstm.*`, `linear.*`), so its
    `pretrained.pt` (`model_state`) loads directly.
    """
    # padding after a clip changes none of its frames (a unidirectional LSTM), so clips of any
    # length share a batch (recognizer.audio_proba_batch)
    exact_batching = True
    feature = "ge2e_mel"
    frame_dim = GE2E_HIDDEN * GE2E_LAYERS

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, GE2E_HIDDEN, GE2E_LAYERS, batch_first=True)
        self.linear = nn.Linear(GE2E_HIDDEN, GE2E_EMBED)

    def _layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        l = self.lstm
        w = [getattr(l, f"{n}_l{i}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h0 = x.new_zeros(1, x.shape[0], GE2E_HIDDEN)
        # the same kernel nn.LSTM calls, one layer at a time so every layer's output is kept
        return torch._VF.lstm(x, (h0, h0), w, True, 1, 0.0, self.training, False, True)[0]

    def frames(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        """Per-frame outputs of all three LSTM layers, concatenated: [B, T, 768].

        Padded frames (beyond `lengths`) come after the valid ones, so the unidirectional LSTM's
        valid outputs are unaffected by padding.
        """
        outs, x = [], feats
        for i in range(GE2E_LAYERS):
            x = self._layer(i, x)
            outs.append(x)
        if lengths is None:
            lengths = torch.full((feats.shape[0],), feats.shape[1], dtype=torch.long)
        return torch.cat(outs, dim=-1), lengths

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """resemblyzer's forward: L2-normalised embedding of each [B, T, 40] window."""
        _, (hidden, _) = self.lstm(mels)
        e = F.relu(self.linear(hidden[-1]))
        return e / (e.norm(dim=1, keepdim=True) + 1e-12)

    def embed_wav(self, wav) -> torch.Tensor:
        """Utterance embedding exactly as resemblyzer's `embed_utterance`: mean of 1.6 s partials."""
        from .audio import ge2e_mel
        wav = torch.as_tensor(wav, dtype=torch.float32)
        slices = partial_slices(wav.numel())
        need = slices[-1][1] * 160
        if need >= wav.numel():
            wav = F.pad(wav, (0, need - wav.numel()))
        mel = ge2e_mel(wav)
        parts = self(torch.stack([mel[a:b] for a, b in slices]))
        e = parts.mean(0)
        return e / e.norm()

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """Speaker embedding of each [T, 40] mel in a batch (partials averaged, L2-normalised)."""
        out = []
        for m in feats:
            slices = partial_slices((m.shape[0] - 1) * 160)
            if slices[-1][1] > m.shape[0]:
                m = F.pad(m, (0, 0, 0, slices[-1][1] - m.shape[0]))
            e = self(torch.stack([m[a:b] for a, b in slices])).mean(0)
            out.append(e / e.norm())
        return torch.stack(out)

    @classmethod
    def from_source(cls, source: str = "resemblyzer") -> "GE2E":
        path = resemblyzer_weights() if source in ("", "resemblyzer", None) else Path(source)
        if not path.exists():
            raise EmodemoError(f"GE2E weights not found at {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt.get("model_state", ckpt)
        model = cls()
        load_checked(model, state, f"ge2e ({path.name})", ignore_prefixes=("similarity_",))
        return model.eval()


def partial_slices(n_samples: int, rate: float = GE2E_PARTIAL_RATE, min_coverage: float = 0.75):
    """Frame ranges of resemblyzer's partial utterances (its `compute_partial_slices`)."""
    hop = 160  # samples per 10 ms frame at 16 kHz
    n_frames = int(math.ceil((n_samples + 1) / hop))
    frame_step = int(round((16000 / rate) / hop))
    steps = max(1, n_frames - GE2E_PARTIAL_FRAMES + frame_step + 1)
    slices = [(i, i + GE2E_PARTIAL_FRAMES) for i in range(0, steps, frame_step)]
    start, stop = slices[-1][0] * hop, slices[-1][1] * hop
    if (n_samples - start) / (stop - start) < min_coverage and len(slices) > 1:
        slices = slices[:-1]
    return slices

