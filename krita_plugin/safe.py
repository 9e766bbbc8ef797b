"""Keeps exceptions out of Krita's modal "Script error" dialog: every slot and timer callback is guarded.

A caught exception is printed to stderr, shown in the panel (through the sink the docker registers) and,
when the end-to-end tests ask for it (KLD_TEST_CONTROL), appended to errors.log there so the test fails on it.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

TEST_CONTROL_ENV = "KLD_TEST_CONTROL"
ERROR_LOG = "errors.log"

F = TypeVar("F", bound=Callable[..., Any])
_sinks: list[Callable[[str], None]] = []


def add_error_sink(sink: Callable[[str], None]) -> None:
    _sinks.append(sink)


def remove_error_sink(sink: Callable[[str], None]) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def report_exception(where: str) -> None:
    details = traceback.format_exc()
    try:
        print(f"[krita-live-diffusion] error in {where}:\n{details}", file=sys.stderr)
        directory = os.environ.get(TEST_CONTROL_ENV)
        if directory:
            with open(os.path.join(directory, ERROR_LOG), "a", encoding="utf-8") as log:
                log.write(f"--- {where}\n{details}\n")
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
