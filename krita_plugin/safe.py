"""Keeps exceptions out of Krita's modal "Script error" dialog: every slot and timer callback is guarded.

A caught exception is printed to stderr, shown in the panel (through the sink the controller registers) and
handed with its traceback to any listener (the end-to-end tests' channel logs them: a test fails on them).
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
_sinks: list[Callable[[str], None]] = []
_listeners: list[Callable[[str, str], None]] = []


def add_error_sink(sink: Callable[[str], None]) -> None:
    _sinks.append(sink)


def remove_error_sink(sink: Callable[[str], None]) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def add_error_listener(listener: Callable[[str, str], None]) -> None:
    """`listener(where, traceback)` for every error caught."""
    _listeners.append(listener)


def remove_error_listener(listener: Callable[[str, str], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def report_exception(where: str) -> None:
    details = traceback.format_exc()
    try:
        print(f"[krita-live-diffusion] error in {where}:\n{details}", file=sys.stderr)
        for listener in list(_listeners):
            listener(where, details)
        for sink in list(_sinks):
            sink(f"Something went wrong in the plugin ({where}). Details are in Krita's log.")
    except Exception:  # noqa: BLE001 - reporting must never raise either
        pass


def guarded(function: F) -> F:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the whole point: nothing reaches Krita's dialog
            report_exception(getattr(function, "__qualname__", repr(function)))
            return None

    return wrapper  # type: ignore[return-value]
