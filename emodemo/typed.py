"""Typed JSON sections: dataclasses read from and written to JSON with every key and type checked once.

The one rule for "does this JSON value fit this field" and "which keys are allowed", shared by the
training recipe (`training/recipe.py`, errors are `TrainError`) and the bundle config
(`bundle.BundleConfig`, errors are `BundleError`). A subclass names its error class and what it
is ("recipe", "bundle config") for the messages; fields that default to None are optional keys.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints



def fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type annotation (int is not bool; float accepts int)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(fits(value, h) for h in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(fits(v, get_args(hint)[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin is not None:                       # other generics: the container type only
        return isinstance(value, origin)
    return isinstance(value, hint)


def type_name(hint: Any) -> str:
    """A type annotation in the words of JSON: 'str or null', 'list of int'."""
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(type_name(h) for h in get_args(hint))
    if hint is type(None):
        return "null"
    if get_origin(hint) is list:
        return f"a list ({type_name(get_args(hint)[0])} each)"
    names = {bool: "true or false", str: "a string", int: "an integer", float: "a number", dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _dataclass_type(hint: Any) -> Any:
    """The dataclass of a field typed `D` or `Optional[D]`, else None."""
    for h in (hint, *get_args(hint)):
        if isinstance(h, type) and dataclasses.is_dataclass(h):
            return h
    return None


def parse(cls: type, d: Any, where: str, error: type, noun: str) -> Any:
    """A dataclass `cls` from a JSON mapping: unknown keys and wrong types raise `error`; nested
    dataclass fields are parsed the same way (a Section with its own `check`)."""
    if not isinstance(d, dict):
        raise error(f"{noun} section {where.rstrip('.') or cls.__name__!r} must be a mapping, got {d!r}")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise error(f"unknown {noun} key(s) {', '.join(where + k for k in unknown)}; "
                    f"known: {', '.join(sorted(fields))}")
    kw = {}
    for name, value in d.items():
        sub = _dataclass_type(hints[name])
        if sub is not None and value is not None:
            kw[name] = (sub.from_dict(value, f"{where}{name}.") if issubclass(sub, Section)
                        else parse(sub, value, f"{where}{name}.", error, noun))
        elif not fits(value, hints[name]):
            raise error(f"{noun} key {where}{name} = {value!r} should be {type_name(hints[name])}")
        else:
            kw[name] = value
    return cls(**kw)


class Section:
    """from_dict / to_dict for a dataclass section of a JSON document."""
    error: ClassVar[type] = ValueError       # raised for unknown keys, wrong types, bad values
    noun: ClassVar[str] = "config"           # "unknown <noun> key(s) ..."
    keep_none: ClassVar[tuple[str, ...]] = ()   # fields written even when None (null means something)

    @classmethod
    def from_dict(cls, d: Any, where: str = ""):
        out = parse(cls, d, where, cls.error, cls.noun)
        out.check(where)
        return out

    def check(self, where: str) -> None:
        """Value checks beyond types (ranges, choices); raise `self.error`."""

    def require(self, ok: bool, where: str, name: str, what: str) -> None:
        if not ok:
            raise self.error(f"{self.noun} key {where}{name} = {getattr(self, name)!r}: {what}")

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.default is None and f.name not in self.keep_none:
                continue
            if isinstance(v, Section):
                v = v.to_dict()
            elif dataclasses.is_dataclass(v):
                v = dataclasses.asdict(v)
            out[f.name] = v
        return out
