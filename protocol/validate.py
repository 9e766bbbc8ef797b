"""Strict field readers for JSON messages: every bad value becomes a ProtocolError naming the field."""

from __future__ import annotations

import math
import re
from typing import Any, TypeGuard

from .errors import ErrorCode, ProtocolError

_MISSING = object()
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Error messages quote what they refuse; quotes are cut to this, and lists of names to a few.
QUOTE_LENGTH = 60
LISTED_NAMES = 8
QUOTED_DIGITS = 20  # numbers longer than this are quoted as 1.23e+45
SLOT_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_JSON_TYPE_NAMES: dict[type[object], str] = {
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "list",
    dict: "object",
}


def bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_MESSAGE, message)


def require_object(value: Any, where: str) -> dict[str, Any]:
    if not _is_json_object(value):
        raise bad(f"{where} must be a JSON object, got {type_name(value)}.")
    return value


def read_str(obj: dict[str, Any], key: str, default: Any = _MISSING, max_length: int = 10_000) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING or (value is None and default is None):
        return _default_or_missing(key, default)
    if not isinstance(value, str):
        raise bad(f"Field '{key}' must be a string, got {type_name(value)}.")
    if len(value) > max_length:
        raise bad(f"Field '{key}' is {len(value)} characters long; the limit is {max_length}.")
    if "\x00" in value:
        raise bad(f"Field '{key}' contains a NUL character.")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # JSON's \ud800 escapes decode to lone surrogates, which are not text: tokenizers and file systems
            # fail on them far from here.
            raise bad(
                f"Field '{key}' contains an unpaired surrogate (U+D800..U+DFFF): it is not text."
            ) from None
    return value


def read_int(obj: dict[str, Any], key: str, minimum: int, maximum: int, default: Any = _MISSING) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING or (value is None and default is None):
        return _default_or_missing(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"Field '{key}' must be a whole number, got {type_name(value)}.")
    if not minimum <= value <= maximum:
        raise bad(f"Field '{key}' is {number(value)}; it must be between {minimum} and {maximum}.")
    return value


def read_float(obj: dict[str, Any], key: str, minimum: float, maximum: float, default: Any = _MISSING) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING or (value is None and default is None):
        return _default_or_missing(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"Field '{key}' must be a number, got {type_name(value)}.")
    if isinstance(value, int) and not minimum <= value <= maximum:
        # Checked before isfinite: a JSON integer can be too large to convert to a float at all.
        raise bad(f"Field '{key}' is {number(value)}; it must be between {minimum} and {maximum}.")
    if not math.isfinite(value):
        raise bad(f"Field '{key}' must be a finite number.")
    if not minimum <= value <= maximum:
        raise bad(f"Field '{key}' is {value}; it must be between {minimum} and {maximum}.")
    return float(value)


def read_bool(obj: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING:
        return _default_or_missing(key, default)
    if not isinstance(value, bool):
        raise bad(f"Field '{key}' must be true or false, got {type_name(value)}.")
    return value


def read_choice(obj: dict[str, Any], key: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
    value = read_str(obj, key, default)
    if value is not None and value not in choices:
        raise bad(f"Field '{key}' is {quote(value)}; it must be one of: {', '.join(choices)}.")
    return value


def read_list(obj: dict[str, Any], key: str, max_items: int, default: Any = _MISSING) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        return _default_or_missing(key, default)
    if not _is_list(value):
        raise bad(f"Field '{key}' must be a list, got {type_name(value)}.")
    if len(value) > max_items:
        raise bad(f"Field '{key}' has {len(value)} items; the limit is {max_items}.")
    return value


def read_job_id(obj: dict[str, Any], key: str = "job_id") -> str:
    value = read_str(obj, key, max_length=64)
    if not JOB_ID_PATTERN.match(value):
        raise bad(f"Field '{key}' must be 1-64 characters of letters, digits and . _ : -")
    return value


def read_slot(obj: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = read_str(obj, key, default, max_length=64)
    if value is not None and not SLOT_PATTERN.match(value):
        raise bad(f"Field '{key}' must be 1-64 characters of letters, digits and . _ -")
    return value


def reject_unknown(obj: dict[str, Any], known: set[str], where: str) -> None:
    unknown = set(obj) - known
    if unknown:
        raise bad(f"Unknown field(s) in {where}: {name_list(unknown)}.")


def quote(value: str) -> str:
    """A client's string as an error message quotes it: repr'd and cut short (it may be megabytes)."""
    text = repr(value[: QUOTE_LENGTH + 1])
    return text if len(value) <= QUOTE_LENGTH else f"{text[:-2]}...{text[-1]} ({len(value)} characters)"


def number(value: int | float) -> str:
    """A client's number as an error message quotes it: 1e300 read as a whole number has 301 digits."""
    if isinstance(value, float) or abs(value) < 10**QUOTED_DIGITS:
        return str(value)
    digits = str(abs(value))  # not through float: a JSON integer may be beyond any float
    mantissa = f"{digits[0]}.{digits[1:3]}".rstrip("0").rstrip(".")
    return f"{'-' if value < 0 else ''}{mantissa}e+{len(digits) - 1}"


def name_list(names: set[str]) -> str:
    """A few of the names (sorted, each cut short) and how many more there are: a client can send 100k."""
    shown = sorted(names)[:LISTED_NAMES]
    text = ", ".join(name if len(name) <= QUOTE_LENGTH else name[:QUOTE_LENGTH] + "..." for name in shown)
    return text if len(names) <= len(shown) else f"{text} and {len(names) - len(shown)} more"


def type_name(value: object) -> str:
    if value is None:
        return "null"
    kind = type(value)
    return _JSON_TYPE_NAMES.get(kind, kind.__name__)


def _is_list(value: object) -> TypeGuard[list[Any]]:
    return isinstance(value, list)


def _is_json_object(value: object) -> TypeGuard[dict[str, Any]]:
    """A dict, as JSON decodes an object: its keys are strings."""
    return isinstance(value, dict)


def _default_or_missing(key: str, default: Any) -> Any:
    if default is _MISSING:
        raise bad(f"Missing field '{key}'.")
    return default
