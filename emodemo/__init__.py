"""emodemo: speech + text emotion recognition with late fusion (Padi et al., Odyssey 2022).

Heavy modules (torch, transformers) load on first use, so `import emodemo.store` stays cheap.
"""
from importlib import import_module

from .errors import AudioError, EmodemoError

__version__ = "0.1.0"
__all__ = ["load_recognizer", "EmotionRecognizer", "Prediction", "AudioError", "EmodemoError",
           "LABELS", "__version__"]
_LAZY = {"load_recognizer": "recognizer", "EmotionRecognizer": "recognizer",
         "Prediction": "recognizer", "LABELS": "bundle"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'emodemo' has no attribute {name!r}")
