"""Strict JSON in and out: one number policy, a depth limit, valid text only.

What enters (:func:`loads`) and what is written (:func:`dumps`) follow RFC 8259 strictly:

* the body is UTF-8 (strictly: surrogates encoded as bytes are refused), and a string holding
  a lone surrogate escape (``"\\ud800"``) is refused: it cannot be written as UTF-8;
* ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON and are refused, and so is a number
  that overflows to infinity (``1e400``);
* integers are at most 64 bits (-2**63 <= n < 2**63, what the warehouse's BIGINT holds); Python's own
  limit (4,300 digits) bounds the time a huge literal can cost;
* nesting is at most :data:`MAX_DEPTH` levels (arrays and objects), so a ``[`` x 100,000 body
  is a clear refusal, not a recursion error.

Each refusal is a :class:`JsonRefused` with a reason code (``malformed_json``, ``too_deep``,
``invalid_number``) and words. Ids are strings (:func:`canonical_id`): integers become their
decimal text, booleans, floats, objects and lists are refused.
"""

from __future__ import annotations

import json
import math
import re
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from typing import Any

MAX_DEPTH = 32
INT_LIMIT = 2**63
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonRefused(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _constant(name: str) -> Any:
    raise JsonRefused("invalid_number", f"{name} is not a JSON number (no NaN or Infinity)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRefused("invalid_number", f"number {text[:40]} overflows a 64-bit float")
    return value


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float)


def _check_tree(value: Any) -> None:
    """Nesting depth and the 64-bit integer range, in one iterative pass over the containers."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise JsonRefused("too_deep", f"JSON nested deeper than {MAX_DEPTH} levels")
        for item in (node.values() if type(node) is dict else node):
            kind = type(item)
            if kind is dict or kind is list:
                stack.append((item, depth + 1))
            elif kind is int and not -INT_LIMIT <= item < INT_LIMIT:
                raise JsonRefused("invalid_number", "integer beyond 64 bits")


def loads(raw: bytes | str) -> Any:
    """Parse one JSON document under the policy above; raises :class:`JsonRefused`."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRefused("malformed_json", f"body is not UTF-8: {exc}") from exc
    else:
        text = raw
    try:
        value = _DECODER.decode(text)
    except JsonRefused:
        raise
    except RecursionError as exc:
        raise JsonRefused("too_deep", f"JSON nested deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's own limit (4,300 digits)
            raise JsonRefused("invalid_number", "integer beyond 64 bits") from exc
        raise JsonRefused("malformed_json", f"body is not JSON: {exc}") from exc
    if type(value) is dict or type(value) is list:
        _check_tree(value)
    # a lone surrogate can only come from a \udXXX escape (the text itself is valid UTF-8)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise JsonRefused("malformed_json", "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is str:
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif kind is dict:
            stack.extend(node.keys())
            stack.extend(node.values())
        elif kind is list:
            stack.extend(node)
    return False


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# CPython's C encoder built once: JSONEncoder.encode builds one per call, which is half the
# cost of a small record (the service encodes every event it lands). No cycle check: the values
# come from parsed JSON.
_C_ENCODE = (c_make_encoder(None, _not_json, c_encode_basestring, None, ":", ",", False, False, False)
             if c_make_encoder is not None and c_encode_basestring is not None else None)


def dumps(value: Any) -> str:
    """Compact JSON text; NaN and Infinity raise ValueError (never written)."""
    if _C_ENCODE is not None and type(value) is dict:
        return "".join(_C_ENCODE(value, 0))
    return _ENCODER.encode(value)


def canonical_id(value: Any, name: str) -> str:
    """An id as text: strings as given, integers as their decimal text; anything else refused
    (ValueError with words)."""
    kind = type(value)
    if kind is str:
        return value
    if kind is int:
        return str(value)
    raise ValueError(f"{name} must be a string (or an integer), not {_kind(value)}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a fraction"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def finite_number(value: Any, name: str) -> float | None:
    """A JSON number or numeric text as a finite float (None stays None); booleans, NaN,
    Infinity and overflowing values refused (ValueError with words)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{name} is not a number: {_kind(value)}")
    if isinstance(value, str) and (len(value) > 40 or not value.strip()):
        raise ValueError(f"{name} is not a number: {value[:40]!r}")
    try:
        number = float(value)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{name} is not a number: {str(value)[:40]!r}") from exc
    if not math.isfinite(number):
        raise ValueError(f"{name} is not a finite number: {str(value)[:40]!r}")
    return number
