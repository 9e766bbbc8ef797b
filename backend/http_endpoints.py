"""Plain HTTP beside the WebSocket, on the same port, for balancers and monitoring: `GET /healthz` and
`GET /metrics` (docs/operations.md).

They are answered in the WebSocket server's `process_request` hook, before the upgrade, the access token
and the connection caps: a balancer's health check carries no token, and a full or draining worker must still
say so. Neither shows images, prompts, tokens or client addresses; /healthz names the loaded models and the
device, with server paths redacted from its message.
"""

from __future__ import annotations

import email.utils
import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import WorkerSnapshot

if TYPE_CHECKING:
    from .server import Server

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
PROBE_PATHS = (HEALTH_PATH, METRICS_PATH)


def worker_state(server: Server) -> str:
    """ready: jobs run; loading: the engine is starting (jobs sent now wait); failed: the engine could not
    start; draining: stopping, takes no new connections or jobs."""
    if server.draining or server.stopping:
        return "draining"
    if server.engine.failed:
        return "failed"
    return "ready" if server.engine.ready else "loading"


STATE_WORDS = {
    "loading": "Loading the engine; jobs sent now start when it is ready.",
    "ready": "Ready.",
    "draining": "Shutting down: no new connections or jobs; the jobs taken in finish first.",
}


def worker_snapshot(server: Server) -> WorkerSnapshot:
    engine = server.engine
    running = server.scheduler.running
    state = worker_state(server)
    # Fixed words but for a failure: the engine's own status walks the model folders, too slow for the event
    # loop at every health check.
    message = STATE_WORDS.get(state) or server.redactor.redact(engine.status_message())
    return WorkerSnapshot(
        state=state,
        device=engine.device_name,
        models={key: value for key, value in engine.loaded().items() if key != "device"},
        message=message,
        clients=len(server.connections),
        queued=server.scheduler.queued_by_kind(),
        running=None if running is None else ("live" if running.live else "final"),
        torch_device=engine.device,
    )


def probe_path(request: Request) -> str | None:
    """The endpoint a request asks for (query ignored), or None for anything else (a WebSocket upgrade)."""
    path = request.path.partition("?")[0]
    return path if path in PROBE_PATHS else None


def answer(server: Server, request: Request) -> Response | None:
    """The response to a health check or scrape; None lets the request go on to the WebSocket handshake."""
    path = probe_path(request)
    if path == HEALTH_PATH:
        now = worker_snapshot(server)
        body = {"state": now.state, "models": now.models, "device": now.device, "message": now.message}
        # Only a ready worker answers 200: a balancer checking for 200 takes loading, failed and draining ones
        # out of its rotation.
        status = HTTPStatus.OK if now.state == "ready" else HTTPStatus.SERVICE_UNAVAILABLE
        return respond(status, json.dumps(body).encode() + b"\n", "application/json")
    if path == METRICS_PATH:
        return respond(HTTPStatus.OK, server.metrics.render(), METRICS_CONTENT_TYPE)
    return None


def respond(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


class QuietProbes(logging.Filter):
    """Keeps websockets' two INFO lines per plain HTTP request out of the log for health checks and scrapes
    (a balancer checks every few seconds); they still show at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        connection = getattr(record, "websocket", None)  # set by websockets on its per-connection records
        if connection is None or record.levelno > logging.INFO:
            return True
        try:
            request = connection.request
        except ReferenceError:  # websockets holds the connection weakly; it is gone
            return True
        if request is None or probe_path(request) is None:
            return True
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_QUIET_PROBES = QuietProbes()


def quiet_probe_logs() -> None:
    """Install the filter once per process (every server's connections log to the same logger)."""
    logger = logging.getLogger("websockets.server")
    if _QUIET_PROBES not in logger.filters:
        logger.addFilter(_QUIET_PROBES)
