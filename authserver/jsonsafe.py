"""JSON from strangers: size and nesting are bounded before the parser sees the bytes.

Python's `json` recurses once per level of nesting, so 30,000 `[` end in a RecursionError
(a 500, and a stack walk per request) instead of a clear refusal. Every JSON document that
arrives from outside (request bodies, JWT headers and claims) goes through `loads` here.
"""

from __future__ import annotations

import json
from typing import Any

#: Far deeper than any document this server accepts, far shallower than the recursion limit.
MAX_DEPTH = 32
MAX_BYTES = 64 * 1024
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


class UnsafeJson(ValueError):
    """The document is too large or too deeply nested to be parsed."""


def depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in `raw`, brackets inside strings ignored.

    One pass, no recursion; malformed input gets a number too (the parser refuses it later).
    """
    deepest = level = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            level += 1
            deepest = max(deepest, level)
        elif byte in _CLOSE:
            level -= 1
    return deepest


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES) -> Any:
    """`json.loads` for untrusted input: `UnsafeJson` when too big or too deep, `ValueError`
    (or `UnicodeDecodeError`, a subclass) when not JSON."""
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > max_bytes:
        raise UnsafeJson(f"The JSON document is larger than {max_bytes} bytes.")
    brackets = data.count(b"[") + data.count(b"{")
    if brackets > max_depth and depth(data) > max_depth:
        raise UnsafeJson(f"The JSON document is nested deeper than {max_depth} levels.")
    return json.loads(data)
