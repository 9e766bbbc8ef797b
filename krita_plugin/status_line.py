"""The panel's status line: one sentence and a colour for the connection, green only when the backend can
paint (connected with a model loaded). Pure logic, testable without Qt."""

from __future__ import annotations

from ._compat import protocol
from .network import Status, StatusChanged

SLOW_TEXT = "Connected; the backend is slow to answer (busy or loading a model)…"


def status_line(
    status: Status, welcome: protocol.Welcome | None, slow: bool, event: StatusChanged | None
) -> tuple[str, str] | None:
    """(text, state) with state one of ok, busy, bad, off; None to leave the line as it is."""
    if status is Status.CONNECTED:
        device = f" ({welcome.device})" if welcome and welcome.device else ""
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
        retry = f" Retrying in {event.retry_in:.0f} s." if event.retry_in else ""
        return event.message + retry, "bad"
    return event.message or "Not connected.", "off"
