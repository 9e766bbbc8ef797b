"""The WebSocket server: handshake, job intake (JSON + binary frames), and replies from the scheduler."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np
from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from protocol import (
    CLIENT_MESSAGES,
    PROTOCOL_VERSION,
    SAMPLERS,
    Accepted,
    Cancel,
    Cancelled,
    Error,
    ErrorCode,
    Hello,
    ImageEncoding,
    ImageFrame,
    JobParams,
    JobRequest,
    ListModels,
    Message,
    ModelList,
    Progress,
    ProtocolError,
    Result,
    Welcome,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
)

from .codec import array_to_payload, frame_to_array
from .config import ServerConfig
from .engine_host import EngineHost, JobInput, JobOutput, describe_failure
from .scheduler import QueueFullError, ScheduledJob, Scheduler

log = logging.getLogger("backend.server")
SERVER_NAME = "krita-live-diffusion-backend"
HELLO_TIMEOUT_S = 30.0
POLICY_VIOLATION = 1008


@dataclass
class PendingJob:
    """A job whose JSON arrived and whose image frames are still coming in."""

    request: JobRequest
    frames: dict[str, ImageFrame] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.frames) == len(self.request.images)


class Connection:
    """One client: reads its messages, owns its pending job, and writes replies in order."""

    def __init__(self, server: Server, socket: ServerConnection, client_id: int) -> None:
        self.server = server
        self.socket = socket
        self.client_id = client_id
        self.pending: PendingJob | None = None
        # Frames still in flight for a job we already answered with an error are dropped without more noise.
        self.refused_job: str | None = None
        self.outbox: asyncio.Queue[list[str | bytes] | None] = asyncio.Queue()
        self.requests: dict[str, JobRequest] = {}
        self.live_cache: tuple[str, JobOutput] | None = None

    # --- sending ----------------------------------------------------------------------------------------

    def send(self, *parts: Message | bytes) -> None:
        """Queue messages that must reach the client back to back (a Result and its frame)."""
        self.outbox.put_nowait([p if isinstance(p, bytes) else encode_message(p) for p in parts])

    def send_error(self, error: ProtocolError) -> None:
        self.send(Error.from_exception(error))

    async def write_forever(self) -> None:
        while (parts := await self.outbox.get()) is not None:
            for part in parts:
                await self.socket.send(part)

    # --- receiving --------------------------------------------------------------------------------------

    async def serve(self) -> None:
        writer = asyncio.create_task(self.write_forever(), name=f"writer-{self.client_id}")
        self.server.scheduler.register(self.client_id, self)
        try:
            await self.read_forever()
        except ConnectionClosed:
            pass
        finally:
            self.server.scheduler.unregister(self.client_id)
            self.outbox.put_nowait(None)
            try:
                await asyncio.wait_for(writer, timeout=5)
            except (TimeoutError, ConnectionClosed):
                writer.cancel()

    async def read_forever(self) -> None:
        try:
            first = await asyncio.wait_for(self.socket.recv(), timeout=HELLO_TIMEOUT_S)
        except TimeoutError:
            await self.refuse(ProtocolError(ErrorCode.BAD_MESSAGE, "No hello received; closing."))
            return
        if not await self.handle_hello(first):
            return
        async for data in self.socket:
            try:
                if isinstance(data, bytes):
                    await self.handle_frame(data)
                else:
                    await self.handle_message(
                        decode_message(data, CLIENT_MESSAGES, self.server.config.limits)
                    )
            except ProtocolError as error:
                if error.job_id is not None and error.job_id not in self.requests:
                    self.refused_job = error.job_id
                self.send_error(error)
            except Exception as error:
                log.exception("unexpected error while handling a message")
                self.send_error(ProtocolError(ErrorCode.INTERNAL, f"Internal error: {error}"))

    async def refuse(self, error: ProtocolError) -> None:
        await self.socket.send(encode_message(Error.from_exception(error)))
        await self.socket.close(POLICY_VIOLATION, error.code.value)

    async def handle_hello(self, data: str | bytes) -> bool:
        try:
            message = decode_message(data, CLIENT_MESSAGES, self.server.config.limits)
        except ProtocolError as error:
            await self.refuse(error)
            return False
        if not isinstance(message, Hello):
            await self.refuse(ProtocolError(ErrorCode.BAD_MESSAGE, "The first message must be a hello."))
            return False
        if message.protocol_version != PROTOCOL_VERSION:
            await self.refuse(
                ProtocolError(
                    ErrorCode.VERSION_MISMATCH,
                    f"The client speaks protocol version {message.protocol_version}, this backend speaks "
                    f"version {PROTOCOL_VERSION}. Update the plugin and the backend to the same release.",
                )
            )
            return False
        if not self.server.token_accepted(self.socket.request, message.token):
            await self.refuse(ProtocolError(ErrorCode.UNAUTHORIZED, "Wrong or missing access token."))
            return False
        self.send(self.server.welcome())
        return True

    async def handle_message(self, message: Message) -> None:
        if isinstance(message, JobRequest):
            await self.accept_job(message)
        elif isinstance(message, Cancel):
            self.cancel(message.job_id)
        elif isinstance(message, ListModels):
            self.send(ModelList(self.server.engine.list_models(), self.server.engine.loaded()))
        elif isinstance(message, Hello):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "Hello was already received on this connection.")

    async def accept_job(self, request: JobRequest) -> None:
        if self.pending is not None:
            abandoned = self.pending.request.job_id
            self.pending = None
            self.send_error(
                ProtocolError(
                    ErrorCode.BAD_FRAME,
                    "Job dropped: a new job arrived before all its images did.",
                    abandoned,
                )
            )
        if request.job_id in self.requests:
            raise ProtocolError(
                ErrorCode.DUPLICATE_JOB, "A job with this id is still running.", request.job_id
            )
        self.server.engine.check_models(request)
        self.pending = PendingJob(request)

    async def handle_frame(self, data: bytes) -> None:
        limits = self.server.config.limits
        pending = self.pending
        try:
            frame = decode_frame(data, limits.max_width, limits.max_height)
        except ProtocolError as error:
            if pending is not None:
                # Frames follow their job's JSON, so this is the pending job's: it can't complete any more.
                self.pending = None
                error.job_id = pending.request.job_id
            raise
        if pending is None and frame.job_id == self.refused_job:
            return
        if pending is None or frame.job_id != pending.request.job_id:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"Image frame {frame.name!r} belongs to no pending job.")
        job_id = frame.job_id
        spec = next((s for s in pending.request.images if s.slot == frame.slot), None)
        if spec is None or frame.slot in pending.frames:
            self.pending = None
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"Unexpected or repeated image slot {frame.slot!r}.", job_id
            )
        if (ImageEncoding.from_label(spec.encoding), spec.width, spec.height) != (
            frame.encoding,
            frame.width,
            frame.height,
        ):
            self.pending = None
            raise ProtocolError(
                ErrorCode.BAD_FRAME,
                f"Image {frame.slot!r} arrived as {frame.encoding.label} {frame.width}x{frame.height}, "
                f"but the job declared {spec.encoding} {spec.width}x{spec.height}.",
                job_id,
            )
        pending.frames[frame.slot] = frame
        if pending.complete:
            self.pending = None
            await self.submit(pending)

    async def submit(self, pending: PendingJob) -> None:
        request = pending.request
        job_id = request.job_id
        try:
            # Decoding and hashing megapixels would stall every other client: both run off the event loop.
            arrays, key = await asyncio.to_thread(
                _decode_job_images, request, pending.frames, self.server.engine.resolved_models
            )
        except ProtocolError as error:
            error.job_id = job_id
            raise
        if key is not None and self.live_cache is not None and self.live_cache[0] == key:
            # An unchanged canvas resent costs no GPU work: answer with the result it already has.
            for old in self.server.scheduler.supersede_live(self.client_id):
                self.requests.pop(old.job_id, None)
                self.send(Cancelled(old.job_id, "superseded"))
            self.requests[job_id] = request
            self.send(Accepted(job_id))
            await self.job_done(ScheduledJob(self.client_id, job_id, True, None), self.live_cache[1])
            return
        job_input = JobInput(
            mode=request.mode,
            params=request.params,
            canvas=arrays["canvas"],
            mask=arrays.get("mask"),
            control_images=arrays,  # every slot: a control may take its image from the canvas or mask
            cache_key=key,
            preview=request.live,
        )
        job = ScheduledJob(self.client_id, job_id, request.live, job_input)
        try:
            superseded = self.server.scheduler.submit(job)
        except QueueFullError as error:
            raise ProtocolError(ErrorCode.BUSY, f"Too many jobs waiting: {error}.", job_id) from None
        except KeyError:
            raise ProtocolError(
                ErrorCode.DUPLICATE_JOB, "A job with this id is still running.", job_id
            ) from None
        self.requests[job_id] = request
        for old in superseded:
            self.requests.pop(old.job_id, None)
            self.send(Cancelled(old.job_id, "superseded"))
        self.send(Accepted(job_id, self.server.scheduler.queue_position(self.client_id, job_id)))

    def cancel(self, job_id: str) -> None:
        if self.pending is not None and self.pending.request.job_id == job_id:
            # Its images are still arriving: it never reaches the queue, and its remaining frames are dropped.
            self.pending = None
            self.refused_job = job_id
            self.send(Cancelled(job_id, "cancelled"))
            return
        job = self.server.scheduler.cancel(self.client_id, job_id)
        if job is None:
            raise ProtocolError(ErrorCode.UNKNOWN_JOB, "No queued or running job has this id.", job_id)
        if job is not self.server.scheduler.running:
            self.requests.pop(job_id, None)
            self.send(Cancelled(job_id, "cancelled"))

    # --- reports from the scheduler (JobReporter) ----------------------------------------------------------

    def job_progress(self, job_id: str, step: int, total: int) -> None:
        if job_id in self.requests:
            self.send(Progress(job_id, step, total))

    async def job_done(self, job: ScheduledJob[Any], result: JobOutput) -> None:
        request = self.requests.pop(job.job_id, None)
        if request is None:
            return
        if request.live and job.payload is not None and job.payload.cache_key is not None:
            self.live_cache = (job.payload.cache_key, result)
        x, y, width, height = result.bounds
        if request.bounds is not None:
            x, y = x + request.bounds.x, y + request.bounds.y
        payload = await asyncio.to_thread(array_to_payload, result.image, request.result_encoding)
        encoding = ImageEncoding.from_label(request.result_encoding)
        message = Result(
            job.job_id, [x, y, width, height], width, height, encoding.label, result.params, result.timings
        )
        frame = encode_frame(ImageFrame(job.job_id, "result", encoding, width, height, payload))
        self.send(message, frame)

    async def job_cancelled(self, job: ScheduledJob[Any], reason: str) -> None:
        if self.requests.pop(job.job_id, None) is not None:
            self.send(Cancelled(job.job_id, reason))

    async def job_failed(self, job: ScheduledJob[Any], error: BaseException) -> None:
        self.requests.pop(job.job_id, None)
        code, message = describe_failure(error)
        if code is ErrorCode.INTERNAL:
            log.error("job %s failed", job.job_id, exc_info=error)
        self.send(Error(code.value, message, job.job_id))


def _decode_job_images(
    request: JobRequest, frames: dict[str, ImageFrame], resolve_models: Callable[[JobParams], str]
) -> tuple[dict[str, np.ndarray], str | None]:
    """The job's images as arrays, and for live jobs a key that is equal exactly when the inputs are."""
    arrays = {slot: frame_to_array(frame) for slot, frame in frames.items()}
    return arrays, _input_key(request, frames, resolve_models(request.params)) if request.live else None


def _input_key(request: JobRequest, frames: dict[str, ImageFrame], models: str = "") -> str:
    """`models`: the models the job resolves to, since "null" (the default) can name another file later."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(encode_message(request).replace(f'"job_id":"{request.job_id}"', "").encode())
    digest.update(models.encode())
    for slot in sorted(frames):
        digest.update(slot.encode())
        digest.update(frames[slot].payload)
    return digest.hexdigest()


class Server:
    def __init__(self, config: ServerConfig, engine: EngineHost | None = None) -> None:
        self.config = config
        self.engine = engine or EngineHost(config)
        self.scheduler: Scheduler[JobInput] = Scheduler(self.engine.run)
        self._ids = itertools.count(1)
        self._socket_server: WebSocketServer | None = None

    async def start(self) -> int:
        """Bind and serve; returns the port (useful with port 0). The engine loads in the background."""
        origins: list[str | None] = [None, *self.config.allowed_origins]
        self._socket_server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            origins=origins,  # type: ignore[arg-type]
            process_request=self._check_http_token,
            max_size=self.config.limits.max_message_bytes,
            compression=None,  # raw pixels: deflate would cost more time than the loopback saves
            ping_interval=20,
            ping_timeout=60,
        )
        # Only once bound: a port in use (often: the backend already runs there) must fail before any model
        # is loaded, and before a worker thread that the interpreter would wait for at exit exists.
        self.scheduler.start()
        self.engine.start_loading(self.scheduler)
        sockets = list(self._socket_server.sockets)
        return sockets[0].getsockname()[1] if sockets else self.config.port

    async def serve_forever(self) -> None:
        assert self._socket_server is not None
        await self._socket_server.serve_forever()

    async def close(self, grace: float | None = None) -> bool:
        """Stops serving; True once the engine's worker is idle, False if it is still busy after `grace`
        seconds (a checkpoint load)."""
        if self._socket_server is not None:
            self._socket_server.close()
            await self._socket_server.wait_closed()
        return await self.scheduler.stop(grace)

    async def _handle(self, socket: ServerConnection) -> None:
        client_id = next(self._ids)
        log.info("client %d connected from %s", client_id, socket.remote_address)
        await Connection(self, socket, client_id).serve()
        log.info("client %d disconnected", client_id)

    def _check_http_token(self, connection: ServerConnection, request: Request) -> Response | None:
        header = request.headers.get("Authorization")
        if header is not None and not self._token_matches(header.removeprefix("Bearer ").strip()):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Wrong access token.\n")
        return None

    def _token_matches(self, candidate: str | None) -> bool:
        expected = self.config.token
        if expected is None:
            return True
        return candidate is not None and hmac.compare_digest(candidate.encode(), expected.encode())

    def token_accepted(self, request: Request | None, hello_token: str | None) -> bool:
        if self.config.token is None:
            return True
        header = request.headers.get("Authorization") if request is not None else None
        header_token = header.removeprefix("Bearer ").strip() if header else None
        return self._token_matches(header_token) or self._token_matches(hello_token)

    def welcome(self) -> Welcome:
        engine = self.engine
        return Welcome(
            protocol_version=PROTOCOL_VERSION,
            server=SERVER_NAME,
            device=engine.device_name,
            models=engine.list_models(),
            loaded=engine.loaded(),
            samplers=list(SAMPLERS),
            limits=self.config.limits,
            ready=engine.ready,
            message=engine.status_message(),
        )
