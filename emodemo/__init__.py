"""emodemo: speech + text emotion recognition with late fusion (Padi et al., Odyssey 2022)."""
from .errors import AudioError, EmodemoError
from .bundle import LABELS
from .recognizer import EmotionRecognizer, Prediction, load_recognizer

__version__ = "0.1.0"
__all__ = ["load_recognizer", "EmotionRecognizer", "Prediction", "AudioError", "EmodemoError",
           "LABELS", "__version__"]
