"""Late fusion of the audio and text branches' class probabilities."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .errors import BundleError, TrainError

FUSION_MODES = ("linear", "confidence", "evidence")


def normalized_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy of each row of `p` divided by log(C): 0 = certain, 1 = uniform."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(-1) / np.log(p.shape[-1])


@dataclass
class LateFusion:
    """p_fused = normalise(a·p_audio + t·p_text).

    mode 'linear': a = audio_weight, t = 1 − audio_weight.
    mode 'confidence': each weight is also scaled by that branch's confidence on this input,
    (1 − normalised entropy)^sharpness, so a branch with nothing to say (near-uniform
    probabilities) does not drag the result.
    mode 'evidence': 'neutral' is treated as the absence of emotional evidence, not as evidence
    of its own. The fused neutral probability is the weighted geometric mean of the branches'
    neutral probabilities (both must find nothing; `sharpness` > 1 lowers it further where they
    disagree, 0 gives their weighted mean); the rest is split over the emotions by mixing each
    branch's emotion distribution (its probabilities without neutral, renormalised) with weights
    a·e_audio^γ and t·e_text^γ, where e = 1 − p(neutral) is how much emotional evidence that
    branch sees in this input and γ = `evidence_power`. γ = 1 is the plain mix a·p_audio + t·p_text;
    larger γ lets the branch that actually hears or reads an emotion decide which one. A neutral
    sentence ("Kids are talking by the door") therefore cannot pull an angry voice to neutral, or
    towards the mild emotions its words suggest, and a flat voice cannot pull angry words to
    neutral.
    Without text the result is always the audio result.

    Trust (at prediction time, every mode): `trust` in [0, 1] (asr.transcript_trust: how far the
    ASR's transcript can be believed; 1 for a typed one) multiplies the text weight before the
    weights are normalised, i.e. the audio weight becomes w / (w + (1 − w)·trust). trust 1 is the
    configured fusion, trust 0 is the audio result, so a hallucinated or doubtful transcript never
    drives the label. It is not a config field: configs of existing bundles load unchanged.
    """
    audio_weight: float = 0.5
    mode: str = "confidence"
    sharpness: float = 1.0
    neutral_index: int = 0
    evidence_power: float = 1.0

    def trusted_audio_weight(self, trust=1.0, shape: tuple = ()) -> np.ndarray:
        """The audio weight after the text weight is multiplied by `trust` (see the class doc)."""
        w = np.broadcast_to(np.asarray(self.audio_weight, dtype=np.float64), shape)
        t = (1.0 - w) * np.clip(np.broadcast_to(np.asarray(trust, dtype=np.float64), shape), 0.0, 1.0)
        return np.where(w + t > 0, w / np.clip(w + t, 1e-12, None), 1.0)

    def weights(self, p_audio: np.ndarray, p_text: np.ndarray, trust=1.0) -> tuple[np.ndarray, np.ndarray]:
        a = self.trusted_audio_weight(trust, p_audio.shape[:-1])
        t = 1.0 - a
        if self.mode == "confidence":
            a = a * (1.0 - normalized_entropy(p_audio)) ** self.sharpness + 1e-9
            t = t * (1.0 - normalized_entropy(p_text)) ** self.sharpness + 1e-9
        s = a + t
        return a / s, t / s

    def __call__(self, p_audio: np.ndarray, p_text: Optional[np.ndarray], trust=1.0) -> np.ndarray:
        """Fused probabilities; `trust` (a number, or one per row) scales the text weight."""
        p_audio = np.asarray(p_audio, dtype=np.float64)
        if p_text is None:
            return p_audio
        p_text = np.asarray(p_text, dtype=np.float64)
        if self.mode == "evidence":
            return self._evidence(p_audio, p_text, self.trusted_audio_weight(trust, p_audio.shape[:-1]))
        a, t = self.weights(p_audio, p_text, trust)
        fused = a[..., None] * p_audio + t[..., None] * p_text
        return fused / fused.sum(-1, keepdims=True)

    def _evidence(self, p_audio: np.ndarray, p_text: np.ndarray, w: np.ndarray) -> np.ndarray:
        k = self.neutral_index
        na = np.clip(p_audio[..., k], 1e-9, 1.0)
        nt = np.clip(p_text[..., k], 1e-9, 1.0)
        lin = w * na + (1.0 - w) * nt
        # geometric mean of the neutral probabilities, pushed further down by `sharpness` when the
        # branches disagree; equals the chosen branch's neutral probability at w = 0 or 1
        neutral = lin * ((na ** w * nt ** (1.0 - w)) / lin) ** self.sharpness
        # each branch's emotion distribution, weighted by how much emotion it sees (e^γ)
        g = self.evidence_power
        a = w * np.clip(1.0 - na, 1e-9, 1.0) ** g
        t = (1.0 - w) * np.clip(1.0 - nt, 1e-9, 1.0) ** g
        s = np.clip(a + t, 1e-300, None)
        ca, ct = p_audio.copy(), p_text.copy()
        ca[..., k] = 0.0
        ct[..., k] = 0.0
        ca = ca / np.clip(ca.sum(-1, keepdims=True), 1e-12, None)
        ct = ct / np.clip(ct.sum(-1, keepdims=True), 1e-12, None)
        emo = (a / s)[..., None] * ca + (t / s)[..., None] * ct
        fused = emo * (1.0 - neutral)[..., None]
        fused[..., k] = neutral
        return fused / fused.sum(-1, keepdims=True)

    def to_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, cfg: Optional[dict]) -> "LateFusion":
        cfg = dict(cfg or {})
        known = {k: cfg[k] for k in ("audio_weight", "mode", "sharpness", "neutral_index", "evidence_power")
                 if k in cfg}
        if known.get("mode", "confidence") not in FUSION_MODES:
            raise BundleError(f"unknown fusion mode {known['mode']!r}; known: {FUSION_MODES}")
        return cls(**known)


def unweighted_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean of per-class recalls over the classes present in `y_true` (UA)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [np.mean(y_pred[y_true == c] == c) for c in range(n_classes) if np.any(y_true == c)]
    return float(np.mean(recalls)) if recalls else 0.0


def fit_fusion(p_audio: np.ndarray, p_text: np.ndarray, y: np.ndarray,
               modes: tuple[str, ...] = FUSION_MODES, neutral_index: int = 0,
               groups: Optional[np.ndarray] = None, objective: str = "ua") -> tuple[LateFusion, float]:
    """Grid-search mode, audio weight, sharpness (and evidence power) on paired validation data.

    objective "ua": the UA; with `groups` (one id per row, e.g. the data set it came from) the
    *worst* group's UA, so one kind of data cannot buy accuracy at another's expense.
    objective "regret" (needs groups): the worst group's fused UA minus the better single branch's
    UA on that group, i.e. fusion must not lose to the branch that carries the information, on
    any kind of input. Scores are averaged over the neighbouring grid points (audio weight,
    sharpness, evidence power) before choosing, so a narrow spike that fits the validation data by
    luck loses to a broad optimum.
    Returns (fusion, its unsmoothed score).
    """
    n_classes = p_audio.shape[1]
    gids = [None] if groups is None else sorted(set(groups))
    if objective not in ("ua", "regret"):
        raise TrainError(f"unknown fusion objective {objective!r}")

    def sel(a, g):
        return a if g is None else a[groups == g]

    ref = {g: 0.0 for g in gids}
    if objective == "regret":
        ref = {g: max(unweighted_accuracy(sel(y, g), sel(p, g).argmax(1), n_classes)
                      for p in (p_audio, p_text)) for g in gids}
    weights = np.round(np.linspace(0.0, 1.0, 21), 3)
    best, best_key = LateFusion(), (-np.inf, -np.inf)
    for mode in modes:
        if mode == "evidence" and not 0 <= neutral_index < n_classes:
            continue
        sharps = (1.0,) if mode == "linear" else (0.5, 1.0, 2.0, 4.0, 8.0)
        powers = (1.0, 2.0, 4.0, 8.0) if mode == "evidence" else (1.0,)
        # score[i, j, k]: sharpness i, evidence power j, audio weight k
        score = np.empty((len(sharps), len(powers), len(weights)))
        for i, sharp in enumerate(sharps):
            for j, power in enumerate(powers):
                for k, w in enumerate(weights):
                    pred = LateFusion(float(w), mode, sharp, neutral_index, power)(p_audio, p_text).argmax(1)
                    score[i, j, k] = min(unweighted_accuracy(sel(y, g), sel(pred, g), n_classes) - ref[g]
                                         for g in gids)
        for i, j, k in np.ndindex(*score.shape):
            # averaged over the neighbouring grid points in every parameter: a broad optimum
            # beats a narrow spike that fits the validation data by luck
            near = score[max(0, i - 1): i + 2, max(0, j - 1): j + 2, max(0, k - 1): k + 2]
            key = (float(near.mean()), float(score[i, j, k]))
            if key > best_key:
                best = LateFusion(float(weights[k]), mode, sharps[i], neutral_index, powers[j])
                best_key = key
    return best, best_key[1]
