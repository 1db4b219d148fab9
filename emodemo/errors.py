"""The exceptions emodemo raises for problems a person can act on, in one hierarchy.

    EmodemoError (a ValueError)
    ├── AudioError      the audio cannot be used (empty, unreadable, too short or too long)
    ├── BundleError     a model bundle cannot be used (missing files, unknown or mistyped config keys)
    ├── DataError       a corpus or data spec cannot be read (missing files, bad labels, bad spec)
    ├── StoreError      a correction cannot be stored or read
    ├── FinetuneError   fine-tuning cannot start (bad arguments, missing database or bundle)
    ├── SettingsError   a setting cannot be used (an EMODEMO_* variable or app option: not a number, a bad size)
    └── TrainError      a training recipe or run cannot be used (bad recipe, mismatched init)

Everything derives from ValueError, so callers that caught ValueError before still do. The CLI
maps these classes to exit codes in one table (`emodemo.cli.EXIT_CODES`).
"""


class EmodemoError(ValueError):
    """Base class for problems a person can act on (bad input, missing model files)."""


class AudioError(EmodemoError):
    """The audio could not be used: empty, unreadable, not audio, too short or too long."""


class BundleError(EmodemoError):
    """A model bundle cannot be used: no config.json, unknown or mistyped config keys, weights
    that do not fit the configured model, a format newer than this emodemo reads."""


class DataError(EmodemoError):
    """A corpus or data spec could not be read: missing files or tools, bad columns or labels."""


class StoreError(EmodemoError):
    """A correction could not be stored or read: bad label, text too long, unusable database."""


class FinetuneError(EmodemoError):
    """Fine-tuning cannot start: bad arguments, missing database or bundle."""


class SettingsError(EmodemoError):
    """A setting cannot be used: an `EMODEMO_*` variable or an app option that is not a number,
    not a size, or a limit that is not positive."""


class TrainError(EmodemoError):
    """A training recipe or run cannot be used: unknown or mistyped recipe keys, mismatched init."""
