"""Compatibility shim: the training code lives in the `emodemo.training` package."""
from .training import *  # noqa: F401,F403
from .training import __all__  # noqa: F401
