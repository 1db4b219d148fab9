"""The one exception type that emodemo raises for bad input."""


class EmodemoError(ValueError):
    """Base class for problems a person can act on (bad input, missing model files)."""


class AudioError(EmodemoError):
    """The audio could not be used: empty, unreadable, not audio, too short or too long."""
