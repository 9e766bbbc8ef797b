"""Sentences a painter can act on, for every failure the panel can show (no tracebacks, no jargon)."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

INSTALL_RECORD = Path(__file__).with_name(".install-record.json")  # written by install.py next to the plugin
GENERIC_START = "python3 install.py --run (in the Krita Live Diffusion folder)"


@functools.lru_cache(maxsize=1)
def start_command(record: Path = INSTALL_RECORD) -> str:
    """The command that starts the backend the way this plugin was installed (the installer records it)."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return GENERIC_START
    command = data.get("start_command") if isinstance(data, dict) else None
    return command if isinstance(command, str) and command.strip() else GENERIC_START


def start_hint() -> str:
    return f"Start it with: {start_command()}"


_ERROR_CODES = {
    "version_mismatch": "The backend and this plugin are from different releases. Update both.",
    "unauthorized": "The backend refused the access token. Check the token field (or the backend's --token).",
    "not_ready": "The backend is still loading its model. Live will start as soon as it is ready.",
    "busy": "The backend is busy with other work. Trying again shortly.",
    "no_model": (
        "The backend has no checkpoint to paint with. Put an SD 1.5 or SDXL checkpoint in its models folder."
    ),
    "model_not_found": "The chosen model is not on the backend any more. Pick another one.",
    "model_error": "The backend could not use the chosen model.",
    "too_large": "The image is too large for the backend. Work on a smaller canvas or crop first.",
    "unsafe_name": "The chosen model name was refused by the backend. Pick a model from the list.",
    "internal": "The backend hit an internal error. Its console has the details.",
}
# Codes whose server message is already written for a painter: show it as is.
_SHOW_SERVER_MESSAGE = {"model_error", "model_not_found", "no_model", "too_large", "version_mismatch"}
# Codes that clear up by themselves: live mode retries the same canvas after a pause.
TRANSIENT_CODES = {"not_ready", "busy"}


def describe_error(code: str, message: str) -> str:
    base = _ERROR_CODES.get(code)
    if base is None:
        return f"The backend refused the job: {message}" if message else "The backend refused the job."
    if code in _SHOW_SERVER_MESSAGE and message:
        return message
    return base


def describe_busy(message: str, retry_after: float | None) -> str:
    """A Generate (or other job the painter started) refused as busy: the server's reason and the wait it
    hinted, if it sent one (older servers don't). Such jobs are not resent by themselves."""
    reason = f" {message}" if message else ""
    if retry_after is None:
        return "The backend is busy with other work." + reason
    return f"Server busy — try again in {max(1, math.ceil(retry_after))} s.{reason}"


def describe_connection_failure(error: BaseException, url: str) -> str:
    """Why connecting failed, from the exception alone (names are checked so any websockets version works)."""
    name = type(error).__name__
    text = str(error)
    if (
        isinstance(error, ConnectionRefusedError)
        or "Connect call failed" in text
        or "refused" in text.lower()
    ):
        return f"No backend is running at {url}. {start_hint()}"
    if isinstance(error, (TimeoutError,)) or name == "TimeoutError":
        return f"The backend at {url} does not answer (it may be busy or starting)."
    if name in {"InvalidStatus", "InvalidStatusCode"}:
        if "401" in text or "403" in text:
            return "The backend refused the access token. Check the token field."
        return f"Something at {url} answered, but it is not the Live Diffusion backend ({text})."
    if name in {"InvalidURI", "InvalidURL"} or isinstance(error, ValueError):
        return f"The backend address {url!r} is not valid. Use host:port, e.g. 127.0.0.1:9631."
    if name.startswith("ConnectionClosed"):
        return "The backend closed the connection (it may be restarting)."
    if isinstance(error, OSError):
        return f"Cannot reach the backend at {url}: {error.strerror or text}"
    if name in {"InvalidHandshake", "InvalidMessage", "ProtocolError"}:
        return f"Something at {url} answered, but it is not the Live Diffusion backend."
    return f"Lost the backend at {url}: {text or name}"
