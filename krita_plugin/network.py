"""The connection to the backend, on its own thread with an asyncio loop, so Krita's UI never waits on it.

The UI thread calls `start`, `send`, `stop`; everything the network learns comes back as event objects passed
to `emit` (the panel puts them on a queue it drains with a QTimer). Disconnects become a status and a retry
with backoff; nothing here raises into the caller.

Behind a balancer (deploy/haproxy.cfg) every handshake carries this Krita's session key, which the balancer
hashes on to keep the painter on one backend; a backend that shuts down closes with "going away" (1001) and
the plugin reconnects at once, landing on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ._compat import connect_websocket, protocol
from .backoff import Backoff
from .painter_words import describe_connection_failure, describe_error
from .settings import SESSION_KEY, ConnectionSettings

log = logging.getLogger(__name__)

CLIENT_NAME = "krita-live-diffusion/0.1"
# The largest message: an upscale's result frame (8192 x 8192 BGRA, 256 MiB) with its header and name.
MAX_INCOMING_BYTES = protocol.MAX_UPSCALE_SIDE**2 * 4 + 1024 * 1024
MAX_IMAGE_SIDE = 65536
OPEN_TIMEOUT = 5.0
WELCOME_TIMEOUT = 10.0
SESSION_HEADER = "X-KLD-Session"  # the balancer hashes on it: one painter's connections go to one backend
WORKER_HEADER = "X-KLD-Worker"  # the balancer names the backend that took the connection in its answer
GOING_AWAY = 1001  # WebSocket close code: the backend is shutting down (draining), go elsewhere
GOING_AWAY_DELAY = 0.2  # seconds before reconnecting after it (jittered, so painters don't arrive at once)
MAX_WORKER_NAME = 64


class Status(str, Enum):
    OFFLINE = "offline"  # not started, or stopped
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"  # lost or refused; a retry is scheduled


@dataclass(frozen=True)
class StatusChanged:
    status: Status
    message: str
    retry_in: float | None = None


@dataclass(frozen=True)
class Connected:
    welcome: protocol.Welcome
    served_by: str = ""  # the backend a balancer chose, when it names it ("" when connected directly)


@dataclass(frozen=True)
class ServerMessage:
    """Accepted, Progress, Cancelled, Error or ModelList, as decoded."""

    message: Any


@dataclass(frozen=True)
class ResultReady:
    """A finished job: `frame` is its (first) image; a batch's others, seeds seed+1, seed+2, ..., are in
    `extra`, in order (all share the result's bounds and size)."""

    result: protocol.Result
    frame: protocol.ImageFrame
    extra: tuple[protocol.ImageFrame, ...] = ()


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _GoingAway(Exception):
    """The backend closed with 1001: it is shutting down, and a balancer has others."""


class _Link:
    """One network thread's state. A start after a stop whose thread had not finished (a slow close) gets a
    fresh link, so the old thread, still winding down, can neither clobber its successor's loop and queue nor
    keep reconnecting beside it."""

    def __init__(self) -> None:
        self.stopping = False
        self.connected = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wake: asyncio.Event | None = None
        self.outbox: asyncio.Queue[tuple[Any, ...]] | None = None
        self.socket: Any = None
        self.main: asyncio.Task[None] | None = None
        # The close in progress, held so it is not garbage-collected (the loop keeps only a weak reference).
        self.closing: asyncio.Future[Any] | None = None

    def call(self, function: Callable[[], Any]) -> bool:
        """Runs `function` on this link's loop (from any thread); False when the loop is gone."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(function)
        except RuntimeError:  # the loop closed in between
            return False
        return True


class NetworkClient:
    def __init__(
        self,
        emit: Callable[[object], None],
        *,
        backoff: Backoff | None = None,
        connect: Callable[..., Any] = connect_websocket,
        client_name: str = CLIENT_NAME,
        session_key: str = SESSION_KEY,
    ) -> None:
        self._emit = emit
        self._backoff = backoff or Backoff()
        self._connect = connect
        self._client_name = client_name
        self._session_key = session_key
        self._settings = ConnectionSettings()
        self._thread: threading.Thread | None = None
        self._link: _Link | None = None
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.connected

    # --- called from the UI thread --------------------------------------------------------------------------

    def start(self, settings: ConnectionSettings) -> None:
        """Connects (or reconnects at once, when the address or token changed)."""
        with self._lock:
            changed = settings != self._settings
            self._settings = settings
            link = self._link
            if link is not None and self._thread is not None and self._thread.is_alive():
                if changed:
                    link.call(lambda: self._restart(link))
                return
            link = self._link = _Link()
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._thread_main, args=(link, ready), name="kld-network", daemon=True
            )
            self._thread.start()
            ready.wait(5.0)

    def reconnect_now(self) -> None:
        link = self._link
        if link is not None:
            link.call(lambda: self._restart(link))

    def send(self, *parts: Any) -> bool:
        """Queues messages and frames to go out together, in order; False (nothing queued) when offline."""
        link = self._link
        if link is None or not link.connected or link.outbox is None:
            return False
        outbox = link.outbox
        return link.call(lambda: outbox.put_nowait(parts))

    def stop(self, timeout: float = 3.0) -> None:
        with self._lock:
            link, thread = self._link, self._thread
            if link is None or thread is None:
                return
            link.stopping = True
            main = link.main
            if main is not None:
                link.call(main.cancel)
            thread.join(timeout)
            # A thread still closing is no longer this client's: a later start makes a new link.
            self._thread = None
            self._link = None
            link.connected = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the network thread ---------------------------------------------------------------------------------

    def _thread_main(self, link: _Link, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        link.loop = loop
        try:
            link.wake = asyncio.Event()
            link.outbox = asyncio.Queue()
            link.main = loop.create_task(self._run(link))
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(link.main)
        except Exception:  # never let the thread die silently
            log.exception("network thread failed")
        finally:
            ready.set()
            link.connected = False
            if self._link is link or self._link is None:  # a newer link reports its own status
                self._emit(StatusChanged(Status.OFFLINE, "Not connected."))
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            link.loop = None

    def _restart(self, link: _Link) -> None:
        """Drops the current connection (if any) and skips the wait before the next attempt."""
        self._backoff.reset()
        if link.wake is not None:
            link.wake.set()
        socket = link.socket
        if socket is not None:
            link.closing = asyncio.ensure_future(socket.close())

    async def _run(self, link: _Link) -> None:
        while not link.stopping:
            settings = self._settings
            url = settings.url
            self._emit(StatusChanged(Status.CONNECTING, f"Connecting to {url}…"))
            delay: float | None = None
            try:
                await self._session(link, settings)
                message = "The backend closed the connection (it may be restarting)."
            except asyncio.CancelledError:
                raise
            except _GoingAway:
                message = "The backend is shutting down; reconnecting…"
                delay = GOING_AWAY_DELAY * (1.0 + self._backoff.rng.uniform(0.0, 1.0))
            except _Refused as refused:
                message = refused.message
            except Exception as error:  # noqa: BLE001 - any failure means: tell the painter, retry
                message = describe_failure(error, url)
            if link.stopping:
                break
            if delay is None:
                delay = self._backoff.next_delay()
            self._emit(StatusChanged(Status.WAITING, message, delay))
            assert link.wake is not None
            link.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(link.wake.wait(), delay)

    async def _session(self, link: _Link, settings: ConnectionSettings) -> None:
        headers = {SESSION_HEADER: self._session_key}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        arguments: list[Any] = [settings.url, headers, MAX_INCOMING_BYTES, OPEN_TIMEOUT]
        if settings.secure:
            arguments.append(tls_context(settings.ca_file))
        async with self._connect(*arguments) as socket:
            hello = protocol.Hello(protocol.PROTOCOL_VERSION, self._client_name, settings.token or None)
            await socket.send(protocol.encode_message(hello))
            first = await asyncio.wait_for(socket.recv(), WELCOME_TIMEOUT)
            reply = protocol.decode_message(first, protocol.SERVER_MESSAGES)
            if isinstance(reply, protocol.Error):
                raise _Refused(describe_error(reply.code, reply.message))
            if not isinstance(reply, protocol.Welcome):
                raise _Refused("The backend did not greet the plugin; it may be a different program.")
            if settings != self._settings or link.stopping:
                return  # the address or token changed while this handshake ran: connect to the new one
            self._backoff.reset()
            assert link.outbox is not None
            while not link.outbox.empty():  # nothing queued for an older connection may leak into this one
                link.outbox.get_nowait()
            link.socket = socket
            link.connected = True
            self._emit(Connected(reply, response_header(socket, WORKER_HEADER)))
            self._emit(StatusChanged(Status.CONNECTED, "Connected."))
            writer = asyncio.ensure_future(self._write_forever(link, socket))
            try:
                await self._read_forever(socket)
            finally:
                link.connected = False
                link.socket = None
                writer.cancel()
                with contextlib.suppress(BaseException):
                    await writer
            if getattr(socket, "close_code", None) == GOING_AWAY:
                raise _GoingAway

    async def _write_forever(self, link: _Link, socket: Any) -> None:
        assert link.outbox is not None
        while True:
            parts = await link.outbox.get()
            for part in parts:
                await socket.send(part if isinstance(part, (bytes, str)) else protocol.encode_message(part))

    async def _read_forever(self, socket: Any) -> None:
        pending: protocol.Result | None = None
        frames: list[protocol.ImageFrame] = []  # the pending result's images so far
        async for data in socket:
            if isinstance(data, (bytes, bytearray, memoryview)):
                try:
                    frame = protocol.decode_frame(data, MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)
                except protocol.ProtocolError as error:
                    self._emit(
                        ServerMessage(
                            protocol.Error(error.code.value, error.message, pending and pending.job_id)
                        )
                    )
                    pending, frames = None, []
                    continue
                if pending is None:
                    continue  # no result is waiting for pixels: nothing to attach this frame to
                expected = protocol.result_slot(len(frames))
                if frame.job_id == pending.job_id and frame.slot == expected:
                    frames.append(frame)
                    if len(frames) == pending.count:
                        self._emit(ResultReady(pending, frames[0], tuple(frames[1:])))
                        pending, frames = None, []
                    continue
                # The result's images can no longer all arrive: end its job rather than leave it waiting.
                self._emit_incomplete(pending, f"{frame.name!r} came where {expected!r} was due")
                pending, frames = None, []
                continue
            try:
                message = protocol.decode_message(data, protocol.SERVER_MESSAGES)
            except protocol.ProtocolError as error:
                log.warning("ignoring a message the plugin does not understand: %s", error.message)
                continue
            if isinstance(message, protocol.Result):
                if pending is not None:
                    self._emit_incomplete(pending, "the next result came first")
                pending, frames = message, []  # its pixels are the next `count` binary frames
            else:
                self._emit(ServerMessage(message))

    def _emit_incomplete(self, result: protocol.Result, why: str) -> None:
        log.warning("result of %s arrived incomplete: %s", result.job_id, why)
        message = f"The backend's result arrived incomplete ({why}); try again."
        self._emit(ServerMessage(protocol.Error(protocol.ErrorCode.BAD_FRAME.value, message, result.job_id)))


def tls_context(ca_file: str) -> Any:
    """The system's certificate authorities, plus the painter's CA file when one is set. Raises _Refused with
    the reason when that file can't be used."""
    import ssl  # here, not at the top: only wss:// needs it

    context = ssl.create_default_context()
    if ca_file:
        path = os.path.expanduser(ca_file)
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as error:
            why = getattr(error, "strerror", None) or str(error)
            message = f"The CA file {ca_file!r} can't be used ({why}). Check the CA file setting."
            raise _Refused(message) from error
    return context


def describe_failure(error: BaseException, url: str) -> str:
    """Why connecting failed, in the painter's words; TLS problems name the setting that fixes them."""
    import ssl

    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"The server at {url} showed a certificate this computer does not trust "
            f"({error.verify_message or error.reason}). If your studio has its own certificate authority, "
            "set its CA file under Backend."
        )
    if isinstance(error, ssl.SSLError):
        return f"The secure connection to {url} failed ({error.reason or error}). Is it a wss:// server?"
    if _http_status(error) == 503:
        # A backend at its connection cap or shutting down, or a balancer with no backend ready yet.
        return f"No backend at {url} can take the connection now (starting, full or shutting down)."
    if url.startswith("wss://") and isinstance(error, ConnectionResetError):
        # A plain ws:// server drops a TLS greeting it can't read.
        return f"The server at {url} cut the secure connection: it may serve plain ws:// on that port."
    return describe_connection_failure(error, url)


def _http_status(error: BaseException) -> int | None:
    """The HTTP status a refused upgrade got, from either websockets API (None for other failures)."""
    response = getattr(error, "response", None)  # websockets >= 13: InvalidStatus
    status = getattr(response, "status_code", None) or getattr(error, "status_code", None)  # legacy API
    return status if isinstance(status, int) else None


def response_header(socket: Any, name: str) -> str:
    """A header of the server's handshake answer ("" without one), from either websockets API, printable and
    short (a balancer's worker name is shown to the painter)."""
    response = getattr(socket, "response", None)  # websockets >= 13
    headers = getattr(response, "headers", None)
    if headers is None:
        headers = getattr(socket, "response_headers", None)  # the legacy API
    try:
        value = headers.get(name) if headers is not None else None
    except Exception:  # noqa: BLE001 - an odd header object: nothing to show
        return ""
    if not isinstance(value, str):
        return ""
    return "".join(c for c in value.strip() if c.isprintable())[:MAX_WORKER_NAME]
