"""The one rule for text that comes from outside (browser, API, argv, files, the database).

`clean_text` turns anything a caller may pass as text into a `str` that every later step can
handle: bytes are decoded as UTF-8 leniently, undecodable bytes smuggled into a str as lone
surrogates (``surrogateescape``, JSON ``"\\ud800"``) become U+FFFD (tokenizers and databases
reject surrogates), and NUL becomes U+FFFD (PostgreSQL text cannot hold it). By default the
result is one line, whitespace runs collapsed (what the text model and the transcript box use);
``keep_whitespace=True`` keeps the text as typed (notes and transcripts as stored).

`MAX_TEXT_CHARS` is the one length limit for a transcript or a note.
"""
from __future__ import annotations

from typing import Any, Optional

MAX_TEXT_CHARS = 10_000                  # transcript, note (characters, after cleaning)


def clean_text(value: Any, *, keep_whitespace: bool = False) -> str:
    """`value` as safe text: None -> "", bytes decoded with replacement, lone surrogates and NUL
    -> U+FFFD; whitespace collapsed to single spaces (and stripped) unless `keep_whitespace`."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("utf-8", errors="replace")
    else:
        text = str(value)
        try:  # undecodable bytes smuggled in as U+DC80..U+DCFF (surrogateescape): one U+FFFD each
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # other lone surrogates
            text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    text = text.replace("\x00", "\ufffd")
    return text if keep_whitespace else " ".join(text.split())


def text_too_long(field: str, n: int, limit: int) -> Optional[str]:
    """The message for a text field of `n` characters over its `limit` ("transcript is too long
    (12000 characters; the limit is 10000)"), None when it fits: the app and the store say the same."""
    return f"{field} is too long ({n} characters; the limit is {limit})" if n > limit else None


def one_line(value: Any, width: int = 0) -> str:
    """`value` as one printable line (no terminal control sequences), cut to `width`."""
    s = "" if value is None else str(value)
    s = "".join(ch if ch.isprintable() else " " for ch in s)
    return s if not width or len(s) <= width else s[: width - 1] + "…"
