"""The panel's status line: one sentence and a colour for the connection, green only when the backend can
paint (connected with a model loaded), naming where it runs: the device and, behind a balancer, the backend
that took the connection. Pure logic, testable without Qt."""

from __future__ import annotations

import math

from ._compat import protocol
from .network import Status, StatusChanged

SLOW_TEXT = "Connected; the backend is slow to answer (busy or loading a model)…"
BUSY_PREFIX = "Server busy"


def status_line(
    status: Status,
    welcome: protocol.Welcome | None,
    slow: bool,
    event: StatusChanged | None,
    served_by: str = "",
) -> tuple[str, str] | None:
    """(text, state) with state one of ok, busy, bad, off; None to leave the line as it is. `served_by` is the
    backend a balancer chose ("" when connected directly)."""
    if status is Status.CONNECTED:
        where = [part for part in (served_by, welcome.device if welcome else "") if part]
        device = f" ({' · '.join(where)})" if where else ""
        if welcome is not None and not welcome.ready:
            return f"Connected{device} — {welcome.message or 'loading…'}", "busy"
        if slow:
            return SLOW_TEXT, "busy"
        return f"Ready{device}", "ok"
    if status is Status.CONNECTING:
        return "Connecting…", "busy"
    if event is None:
        return None
    if status is Status.WAITING:
        if event.retry_in is None:
            retry = ""
        elif event.retry_in < 1.0:  # "Retrying in 0 s." reads as a bug: a quick retry is just that
            retry = " Reconnecting…" if not event.message.endswith("…") else ""
        else:
            retry = f" Retrying in {event.retry_in:.0f} s."
        return event.message + retry, "bad"
    return event.message or "Not connected.", "off"


def busy_line(seconds_left: float) -> tuple[str, str]:
    """The status while a live frame the server refused as busy waits for its `retry_after`."""
    return f"{BUSY_PREFIX} — trying again in {max(1, math.ceil(seconds_left))} s", "busy"
