"""Strict, bounded JSON: the one reader of every JSON document that comes from outside.

Envelopes, ``POST /v1/screen`` bodies, KMS answers and IMDS credentials are all read with
:func:`loads`, so they share one set of limits and one failure type. Compared with
:func:`json.loads` it:

* takes UTF-8 only (``json.loads`` of ``bytes`` also guesses UTF-16 and UTF-32) and refuses a
  byte-order mark;
* bounds the document's size (``max_bytes``, a required argument: each caller knows its own),
  the nesting depth (:data:`MAX_DEPTH`) and the digits of every number
  (:data:`MAX_NUMBER_CHARS`, far below CPython's 4300-digit ``int`` limit, whose
  ``ValueError`` would otherwise escape);
* refuses an object with a repeated key (two parsers could keep different values) and the
  non-JSON constants ``NaN``, ``Infinity`` and ``-Infinity``;
* raises only :class:`JSONError`, whatever the input, with a message that names the problem
  and where it is (line and column), never the content. Callers turn it into their own error
  type, whose message names the document.

Depth is bounded in two steps: CPython's C scanner stops a document nested about a thousand
levels deep with ``RecursionError`` (turned into :class:`JSONError` here), and a walk of the
result without recursion refuses anything deeper than ``max_depth``.
"""

from __future__ import annotations

import json
from typing import Any

from enclave.errors import NoflylistError

__all__ = ["MAX_DEPTH", "MAX_NUMBER_CHARS", "JSONError", "loads"]

#: Deepest nesting of arrays and objects accepted. Our documents are at most three deep
#: (an envelope's encryption context, a KMS answer); 32 leaves room and stops a stack bomb.
MAX_DEPTH = 32
#: Longest number, in characters (sign, digits, point, exponent). An envelope serial, a
#: Unix time or a byte count fits in 20; a float of 17 significant digits with an exponent
#: in 25. Longer numbers are refused before Python converts them.
MAX_NUMBER_CHARS = 32


class JSONError(NoflylistError):
    """The document is not JSON that this project accepts; the message says why and where."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Refused("an object has a repeated key")
    return result


def _integer(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number has more than {MAX_NUMBER_CHARS} characters")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number has more than {MAX_NUMBER_CHARS} characters")
    return float(text)


def _constant(name: str) -> None:
    raise _Refused(f"{name} is not JSON")


class _Refused(Exception):
    """Raised inside the parser's hooks; carries a fixed message (never input)."""


def loads(data: bytes | bytearray | str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document strictly (module docstring); raise only :class:`JSONError`."""
    try:
        return _loads(data, max_bytes, max_depth)
    except JSONError:
        raise
    except Exception as exc:  # the boundary: nothing else leaves, whatever the bytes
        raise JSONError(f"unreadable JSON ({type(exc).__name__})") from None


def _loads(data: bytes | bytearray | str, max_bytes: int, max_depth: int) -> Any:
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise JSONError(f"the document is {size} bytes, more than the {max_bytes} allowed")
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONError(f"the document is not UTF-8 (at byte {exc.start})") from None
    else:
        text = data
    if text.startswith("\ufeff"):
        raise JSONError("the document starts with a byte-order mark")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_int=_integer,
            parse_float=_float,
            parse_constant=_constant,
        )
    except _Refused as exc:
        raise JSONError(str(exc)) from None
    except json.JSONDecodeError as exc:
        # exc.msg is the scanner's fixed description ("Expecting value"); exc.doc is the
        # input and is left out.
        raise JSONError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JSONError(f"the document is nested more than {max_depth} levels deep") from None
    _check_depth(value, max_depth)
    return value


def _check_depth(value: Any, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth``, walking without recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= max_depth:
            raise JSONError(f"the document is nested more than {max_depth} levels deep")
        stack.extend((child, depth + 1) for child in children)
