"""What the corrections store hands out and raises: `Record`, `ImportResult`, `StoreError`."""
from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import StoreError  # one hierarchy: EmodemoError -> StoreError

__all__ = ["NOT_STORED", "StoreError", "Record", "ImportResult"]

#: Appended to every "could not save" message: nothing half-stored, what to do next.
NOT_STORED = "Nothing was stored; please try again later or tell whoever runs this service."


class Record(dict):
    """A plain dict whose keys can also be read as attributes: ``rec.label == rec["label"]``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {k for k in self if isinstance(k, str)})


class ImportResult(NamedTuple):
    """What an import did: rows imported, and one message per bad row ("line 3: ...")."""
    imported: int
    errors: list
