"""The WebSocket server: handshake, job intake (JSON + binary frames), and replies from the scheduler."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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
    JobRequest,
    Limits,
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
    result_slot,
)

from .admission import Admission, client_address, user_key
from .auth_throttle import AuthThrottle, retry_after
from .codec import array_to_payload, frame_to_array
from .config import ServerConfig
from .drain import drain
from .engine import EngineJob, EngineResult, ModelChoice
from .engine_worker import EngineWorker, ModelListing, describe_failure
from .http_endpoints import answer, quiet_probe_logs, worker_snapshot
from .job_size import JobSizeLimits, fit_limits
from .metrics import ServerMetrics
from .outbox import Outbox
from .redact import PathRedactor
from .result_bounds import document_bounds
from .scheduler import QueueFullError, ScheduledJob, Scheduler
from .user_limits import UserLimits

log = logging.getLogger("backend.server")
SERVER_NAME = "krita-live-diffusion-backend"
HELLO_TIMEOUT_S = 30.0
CLOSE_GRACE_S = 5.0  # a dropped client gets this long to take the close frame before the socket is cut
MIB = 1024 * 1024
MAX_COORDINATE = 2**30  # protocol: result bounds beyond this are rejected by decoders
POLICY_VIOLATION = 1008
SHUTDOWN_FLUSH_S = 2.0  # a stopping server waits this long for clients to take their jobs' `cancelled`
DRAIN_RETRY_AFTER_S = 2  # told to clients refused by a draining worker (through a balancer: another one)


@dataclass
class PendingJob:
    """A job whose JSON arrived and whose image frames are still coming in."""

    request: JobRequest
    models: ModelChoice  # resolved once, on arrival (EngineWorker.resolve_models); the engine runs it
    frames: dict[str, ImageFrame] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.frames) == len(self.request.images)


class Connection:
    """One client: reads its messages, owns its pending job, and writes replies in order."""

    def __init__(self, server: Server, socket: ServerConnection, client_id: int, user: str) -> None:
        self.server = server
        self.socket = socket
        self.client_id = client_id
        self.user = user  # whose fair share of the worker this connection's jobs take
        # The limits this client's welcome states, which it is held to while connected (backend/job_size.py).
        self.limits = server.config.limits
        self.pending: PendingJob | None = None
        # Frames still in flight for a job we already answered with an error are dropped without more noise.
        self.refused_job: str | None = None
        self.outbox = Outbox()
        self.requests: dict[str, JobRequest] = {}
        self.live_cache: tuple[str, EngineResult] | None = None
        self.live_key: tuple[str, str] | None = None  # (job id, input key) of the live job queued last
        self.dropping: asyncio.Task[None] | None = None
        # When each accepted job's input was complete (time.monotonic) and whether it is live: its latency.
        self.arrived: dict[str, tuple[float, bool]] = {}
        self.replies_in_making = 0  # results being encoded: their jobs left `requests` but not yet replied

    # --- sending ----------------------------------------------------------------------------------------

    def send(self, *parts: Message | bytes, results: int = 1) -> None:
        """Queue messages that must reach the client back to back (a Result and its frames). `results`: how
        many results' worth of images the parts carry (a batch's count)."""
        for part in parts:
            if isinstance(part, (Result, Cancelled, Error)) and part.job_id is not None:
                self.server.metrics.job_ended(part, self.arrived.pop(part.job_id, None))
        if self.dropping is not None:
            return
        for_client = self.server.for_client
        self.outbox.put([p if isinstance(p, bytes) else encode_message(for_client(p)) for p in parts])
        # The hard limit leaves room above the soft one for two of the largest results; a batch of N images
        # arrives as N results at once, so it gets that room N times (or asking for 8 large variations
        # would drop a client that reads them all).
        soft_limit = self.server.config.limits.max_unread_bytes
        hard_limit = soft_limit + results * (self.server.config.max_unread_hard_bytes - soft_limit)
        if self.outbox.size > hard_limit:
            self.drop(f"not reading replies: over {hard_limit // MIB} MiB unread")

    @property
    def idle(self) -> bool:
        """No unfinished job: none with images arriving, queued, running or with its result in the making."""
        return self.pending is None and not self.requests and not self.replies_in_making

    def send_error(self, error: ProtocolError) -> None:
        self.send(Error.from_exception(error))

    async def write_forever(self) -> None:
        while (taken := await self.outbox.take()) is not None:
            parts, size = taken
            for part in parts:
                await self.socket.send(part)  # waits while the client's TCP window is full
            self.outbox.sent(size)

    def drop(self, reason: str) -> None:
        """Disconnect a client that doesn't read its replies, and free them now rather than when it goes."""
        if self.dropping is None:
            log.warning("client %d dropped: %s", self.client_id, reason)
            self.outbox.discard()
            self.dropping = asyncio.get_running_loop().create_task(self._close(reason))

    async def _close(self, reason: str) -> None:
        try:
            # The close frame queues behind what the client hasn't read; a client that reads again sees it.
            await asyncio.wait_for(self.socket.close(POLICY_VIOLATION, reason[:120]), CLOSE_GRACE_S)
        except (TimeoutError, ConnectionClosed):
            pass
        finally:
            self.socket.transport.abort()  # a no-op once closed; ends a close the client never answers

    # --- receiving --------------------------------------------------------------------------------------

    async def watch_unread(self) -> None:
        """Disconnect a client whose unread replies stay over the limit, whether or not it sends anything."""
        config = self.server.config
        limit = config.limits.max_unread_bytes
        while True:
            await self.outbox.wait_until_over(limit)
            if not await self.outbox.wait_until_at_most(limit, config.unread_timeout_s):
                self.drop(
                    f"not reading replies: over {limit // MIB} MiB unread for {config.unread_timeout_s:g} s"
                )
                return

    async def serve(self) -> None:
        writer = asyncio.create_task(self.write_forever(), name=f"writer-{self.client_id}")
        watcher = asyncio.create_task(self.watch_unread(), name=f"unread-{self.client_id}")
        try:
            await self.read_forever()
        except ConnectionClosed:
            pass
        finally:
            watcher.cancel()
            self.server.scheduler.unregister(self.client_id)
            self.outbox.close()
            try:
                await asyncio.wait_for(writer, timeout=5)
            except (TimeoutError, ConnectionClosed):
                writer.cancel()
            self.outbox.discard()
            self.live_cache = None
            if self.dropping is not None:
                await self.dropping

    async def read_forever(self) -> None:
        try:
            first = await asyncio.wait_for(self.socket.recv(), timeout=HELLO_TIMEOUT_S)
        except TimeoutError:
            await self.refuse(ProtocolError(ErrorCode.BAD_MESSAGE, "No hello received; closing."))
            return
        if not await self.handle_hello(first):
            return
        while True:
            # Backpressure: while too many replies are unread, the client's messages wait in TCP and its
            # sends slow down (watch_unread disconnects a client that stays so).
            await self.outbox.wait_until_at_most(self.server.config.limits.max_unread_bytes)
            data = await self.socket.recv()  # ConnectionClosed when the client leaves
            try:
                if isinstance(data, bytes):
                    await self.handle_frame(data)
                else:
                    await self.handle_message(decode_message(data, CLIENT_MESSAGES, self.limits))
            except ProtocolError as error:
                if error.job_id is not None and error.job_id not in self.requests:
                    self.refused_job = error.job_id
                self.send_error(error)
            except Exception as error:
                log.exception("unexpected error while handling a message")
                self.send_error(ProtocolError(ErrorCode.INTERNAL, f"Internal error: {error}"))

    async def refuse(self, error: ProtocolError) -> None:
        await self.socket.send(encode_message(self.server.for_client(Error.from_exception(error))))
        await self.socket.close(POLICY_VIOLATION, error.code.value)

    async def handle_hello(self, data: str | bytes) -> bool:
        if isinstance(data, bytes):
            await self.refuse(ProtocolError(ErrorCode.BAD_MESSAGE, "The hello must be a JSON text message."))
            return False
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
            blocked = self.server.token_failed(self.socket)
            later = f" This address may try again in {retry_after(blocked)} s." if blocked else ""
            await self.refuse(ProtocolError(ErrorCode.UNAUTHORIZED, "Wrong or missing access token." + later))
            return False
        self.server.token_succeeded(self.socket)
        # With tokens, the user who gets a fair share is the token's holder, wherever they connect from.
        token = self.server.presented_token(self.socket.request, message.token)
        self.user = user_key(self.socket, token, self.server.config.trusted_proxies)
        self.server.scheduler.register(self.client_id, self, self.user)
        # Until here messages were capped at the small hello limit (set in serve()): no one unauthenticated
        # can make the server hold megabytes. Read per frame by websockets, so it applies from the next one.
        self.socket.protocol.max_message_size = self.server.config.limits.max_message_bytes
        self.limits = self.server.job_size.now()  # what memory holds now; stated in its welcome
        self.send(self.server.welcome(await asyncio.to_thread(self.server.engine.model_listing), self.limits))
        return True

    async def handle_message(self, message: Message) -> None:
        if isinstance(message, JobRequest):
            await self.accept_job(message)
        elif isinstance(message, Cancel):
            self.cancel(message.job_id)
        elif isinstance(message, ListModels):
            listing = await asyncio.to_thread(self.server.engine.model_listing)  # reads file headers
            loaded = self.server.engine.loaded()
            self.send(
                ModelList(
                    listing.models, loaded, listing.unusable, listing.families, listing.default_checkpoint
                )
            )
        elif isinstance(message, Hello):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "Hello was already received on this connection.")

    async def accept_job(self, request: JobRequest) -> None:
        if self.server.stopping:
            raise ProtocolError(ErrorCode.BUSY, "The server is shutting down; send it again once it is back.",
                                request.job_id)  # fmt: skip
        if self.server.draining:
            raise ProtocolError(
                ErrorCode.BUSY,
                "This server is shutting down and takes no new jobs; it closes the connection once the jobs "
                f"it runs have ended. Reconnect and send it again in {DRAIN_RETRY_AFTER_S} s (through a "
                "balancer, you reach another server).",
                request.job_id,
                DRAIN_RETRY_AFTER_S,
            )
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
            self.refuse_duplicate(request.job_id)
        with tied_to(request.job_id):
            check_result_bounds(request)
            self.check_image_budget(request)
            self.check_user_limits(request)
            models = self.server.engine.resolve_models(request)
        self.pending = PendingJob(request, models)

    def check_image_budget(self, request: JobRequest) -> None:
        """Queued jobs hold their decoded images until they run: bounded per connection and in all."""
        limits = self.server.config.limits
        needed = image_bytes(request)
        if needed > limits.max_queued_image_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"This job's images take {needed / MIB:.0f} MiB decoded; the server holds at most "
                f"{limits.max_queued_image_bytes / MIB:.0f} MiB of images per connection.",
                request.job_id,
            )
        mine = self.queued_image_bytes(superseded_by=request)
        if mine + needed > limits.max_queued_image_bytes:
            raise ProtocolError(
                ErrorCode.BUSY,
                f"This connection's unfinished jobs hold {mine / MIB:.0f} MiB of images; this one needs "
                f"{needed / MIB:.0f} MiB more, over the {limits.max_queued_image_bytes / MIB:.0f} MiB "
                "allowed. Wait for a result or cancel a job.",
                request.job_id,
                self.server.queue_wait_hint(),
            )
        everyone = mine + sum(c.queued_image_bytes() for c in self.server.connections if c is not self)
        if everyone + needed > limits.max_total_queued_image_bytes:
            raise ProtocolError(
                ErrorCode.BUSY,
                f"The server is holding {everyone / MIB:.0f} MiB of queued images, its limit is "
                f"{limits.max_total_queued_image_bytes / MIB:.0f} MiB: try again in a moment.",
                request.job_id,
                self.server.queue_wait_hint(),
            )

    def check_user_limits(self, request: JobRequest) -> None:
        """Per user, across all its connections: final jobs queued and images asked for per minute
        (backend/user_limits.py); live frames pass. Checked before the images arrive; charged once queued."""
        server = self.server
        refusal = server.user_limits.check(
            self.user,
            live=request.live,
            images=request.params.batch,
            queued=server.queued_final_jobs(self.user),
            waiting_users=server.waiting_users(),
        )
        if refusal is not None:
            raise ProtocolError(ErrorCode.BUSY, refusal.message, request.job_id, refusal.retry_after)

    def queued_image_bytes(self, superseded_by: JobRequest | None = None) -> int:
        """Decoded image bytes of this connection's unfinished jobs. A new live job replaces the queued live
        job, so that one isn't counted against it (a running one still holds its memory until it stops)."""
        running = self.server.scheduler.running
        running_id = running.job_id if running is not None and running.client_id == self.client_id else None
        live = superseded_by is not None and superseded_by.live
        total = sum(
            image_bytes(queued)
            for job_id, queued in self.requests.items()
            if not (live and queued.live and job_id != running_id)
        )
        if self.pending is not None:
            total += image_bytes(self.pending.request)
        return total

    def refuse_duplicate(self, job_id: str) -> None:
        # Its frames follow: dropped quietly. The error names the id in words but is not tied to it: an error
        # with that job_id would read as the end of the job still running under it.
        self.refused_job = job_id
        raise ProtocolError(
            ErrorCode.DUPLICATE_JOB,
            f"A job with id {job_id!r} is still running; this new job with the same id was refused. "
            "Use a new id for each job.",
        )

    async def handle_frame(self, data: bytes) -> None:
        limits = self.limits
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
        arrived = time.monotonic()
        try:
            # Decoding and hashing megapixels would stall every other client: both run off the event loop.
            with tied_to(job_id):
                arrays, key = await asyncio.to_thread(
                    _decode_job_images, request, pending.frames, repr(pending.models)
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
            self.arrived[job_id] = (arrived, request.live)
            self.send(Accepted(job_id))
            await self.job_done(ScheduledJob(self.client_id, job_id, True, None), self.live_cache[1])
            return
        engine_job = EngineJob(
            mode=request.mode,
            params=request.params,
            canvas=arrays["canvas"],
            mask=arrays.get("mask"),
            control_images=arrays,  # every slot: a control may take its image from the canvas or mask
            live=request.live,
            models=pending.models,
        )
        job = ScheduledJob(self.client_id, job_id, request.live, engine_job)
        try:
            superseded = self.server.scheduler.submit(job)
        except QueueFullError as error:
            raise ProtocolError(
                ErrorCode.BUSY, f"Too many jobs waiting: {error}.", job_id, self.server.queue_wait_hint()
            ) from None
        except KeyError:
            self.refuse_duplicate(job_id)
        self.requests[job_id] = request
        self.arrived[job_id] = (arrived, request.live)
        self.server.user_limits.charge(self.user, request.params.batch, live=request.live)
        if key is not None:
            self.live_key = (job_id, key)
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

    def end_all_jobs(self, reason: str) -> None:
        """The server is stopping: every unfinished job of this client gets its `cancelled` now, before the
        connection closes (a running one stops at its next step; its late report finds nothing to answer)."""
        if self.pending is not None:
            self.refused_job = self.pending.request.job_id
            self.send(Cancelled(self.pending.request.job_id, reason))
            self.pending = None
        for job_id in list(self.requests):
            self.server.scheduler.cancel(self.client_id, job_id, reason)
            del self.requests[job_id]
            self.send(Cancelled(job_id, reason))

    # --- reports from the scheduler (JobReporter) ----------------------------------------------------------

    def job_progress(self, job_id: str, step: int, total: int) -> None:
        # Progress is advisory: not queued behind replies the client hasn't read yet.
        if job_id in self.requests and self.outbox.size <= self.server.config.limits.max_unread_bytes:
            self.send(Progress(job_id, step, total))

    async def job_done(self, job: ScheduledJob[Any], result: EngineResult) -> None:
        request = self.requests.pop(job.job_id, None)
        if request is None:
            return
        if request.live and self.live_key is not None and self.live_key[0] == job.job_id:
            self.live_cache = (self.live_key[1], result)
        if job.payload is not None:  # not an unchanged live canvas answered from the cache
            self.server.user_limits.pace.ran(result.timings.get("total", float("nan")))
        # Bounds in document coordinates; the pixels may be fewer than the bounds (a canvas larger than the
        # working size, or sent scaled down): the client scales them to fit.
        bounds = list(document_bounds(result.bounds, request))
        height, width = result.image.shape[:2]
        images = [result.image, *result.extra]  # a batch: image i has seed `seed + i`
        encoding = ImageEncoding.from_label(request.result_encoding)
        self.replies_in_making += 1  # a draining server must not close the connection meanwhile
        try:
            # Encoding megapixels (up to 8 of them) would stall every other client: off the event loop.
            frames = await asyncio.to_thread(_result_frames, job.job_id, images, encoding)
        finally:
            self.replies_in_making -= 1
        seeds = [request.params.seed + index for index in range(len(images))]
        message = Result(job.job_id, bounds, width, height, encoding.label, result.params, result.timings)
        message.count, message.seeds = len(images), seeds
        # One group: the Result and all its frames reach the client back to back, in slot order.
        self.send(message, *frames, results=len(images))

    async def job_cancelled(self, job: ScheduledJob[Any], reason: str) -> None:
        if self.requests.pop(job.job_id, None) is not None:
            self.send(Cancelled(job.job_id, reason))

    async def job_failed(self, job: ScheduledJob[Any], error: BaseException) -> None:
        self.requests.pop(job.job_id, None)
        code, message = describe_failure(error)
        if code is ErrorCode.INTERNAL:
            log.error("job %s failed", job.job_id, exc_info=error)
        elif code is ErrorCode.MODEL_ERROR:
            # A model file that failed to load: the operator's to fix (the log keeps paths clients don't see).
            log.warning("job %s: %s", job.job_id, message)
        self.send(Error(code.value, message, job.job_id))


@contextmanager
def tied_to(job_id: str) -> Iterator[None]:
    """An unexpected failure while taking in a job still ends that job by its id: a client tracking its jobs
    would wait forever for one whose error has `job_id: null`."""
    try:
        yield
    except ProtocolError:
        raise
    except Exception as error:
        log.exception("unexpected error while taking in job %s", job_id)
        raise ProtocolError(
            ErrorCode.INTERNAL, f"Internal error: {type(error).__name__}: {error}", job_id
        ) from error


def _result_frames(job_id: str, images: list[np.ndarray], encoding: ImageEncoding) -> list[bytes]:
    """A result's images as its binary frames: `<job_id>/result`, `<job_id>/result.1`, ... (all one size)."""
    frames = []
    for index, image in enumerate(images):
        height, width = image.shape[:2]
        payload = array_to_payload(image, encoding.label)
        frames.append(encode_frame(ImageFrame(job_id, result_slot(index), encoding, width, height, payload)))
    return frames


def image_bytes(request: JobRequest) -> int:
    """What a job's images take once decoded: RGBA for colour images (PNG included), one byte for gray8."""
    return sum(spec.width * spec.height * (1 if spec.encoding == "gray8" else 4) for spec in request.images)


def check_result_bounds(request: JobRequest) -> None:
    """Results land inside the job's bounds; past the protocol's coordinate range they could be produced but
    not decoded (by this project's own client either)."""
    bounds = request.bounds
    if bounds is not None and max(bounds.x + bounds.width, bounds.y + bounds.height) > MAX_COORDINATE:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"'bounds' {bounds.to_list()} reach past {MAX_COORDINATE}, the largest document coordinate.",
            request.job_id,
        )


def _decode_job_images(
    request: JobRequest, frames: dict[str, ImageFrame], models: str
) -> tuple[dict[str, np.ndarray], str | None]:
    """The job's images as arrays, and for live jobs a key that is equal exactly when the inputs are (`models`
    names the models the job resolved to)."""
    arrays = {slot: frame_to_array(frame) for slot, frame in frames.items()}
    return arrays, _input_key(request, frames, models) if request.live else None


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
    def __init__(self, config: ServerConfig, engine: EngineWorker | None = None) -> None:
        self.engine = engine or EngineWorker(config)
        # The image sizes this machine's memory holds, rather than the configured ones it might not.
        self.config = replace(config, limits=fit_limits(config.limits, self.engine.default_model_file()))
        self.job_size = JobSizeLimits(config.limits, self.engine.default_model_file())  # at each handshake
        self.scheduler: Scheduler[EngineJob] = Scheduler(self.engine.run)
        self._ids = itertools.count(1)
        self._socket_server: WebSocketServer | None = None
        self.admission = Admission(
            config.max_connections, config.max_connections_per_address, config.trusted_proxies
        )
        self.auth_throttle = AuthThrottle(config.auth_throttle)
        self.redactor = PathRedactor(root.path for root in self.engine.store.roots)
        self.connections: set[Connection] = set()  # past the handshake (the queued-image budget sums them)
        self.stopping = False
        self.draining = False  # SIGTERM: finishing what it has, taking nothing new (backend/drain.py)
        self.metrics = ServerMetrics(lambda: worker_snapshot(self))
        self.busy_with = "still busy"  # what the worker was in when close() stopped waiting for it
        self.user_limits = UserLimits(config.user_limits)  # per user: queued final jobs, images a minute

    async def start(self) -> int:
        """Bind and serve; returns the port (useful with port 0). The engine loads in the background."""
        origins: list[str | None] = [None, *self.config.allowed_origins]
        limits = self.config.limits
        quiet_probe_logs()
        self._socket_server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            origins=origins,  # type: ignore[arg-type]
            process_request=self._process_request,
            # Until the hello is accepted; then raised to max_message_bytes (Connection.handle_hello).
            max_size=min(limits.max_hello_message_bytes, limits.max_message_bytes),
            # Messages websockets reads ahead of the handler, each up to max_size: 2, not its default 16,
            # or a paused connection (backpressure) would still buffer over a gigabyte.
            max_queue=2,
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

    async def drain(self, timeout: float) -> bool:
        """Stop taking connections and jobs, let the jobs taken in finish for up to `timeout` seconds, closing
        each connection with 1001 once its jobs ended; True if none is left. Call close() after it."""
        return await drain(self, timeout)

    async def close(self, grace: float | None = None) -> bool:
        """Stops serving: each client's unfinished jobs are answered `cancelled` (reason "shutdown") before
        its connection closes. True once the engine's worker is idle, False if it is still busy after `grace`
        seconds; `busy_with` then says what it is still doing (a job's step, or loading)."""
        self.stopping = True
        if self._socket_server is not None:
            self._socket_server.server.close()  # no new connections; the open ones still take their replies
            for connection in list(self.connections):
                connection.end_all_jobs("shutdown")
            flushes = [c.outbox.wait_until_at_most(0, SHUTDOWN_FLUSH_S) for c in self.connections]
            await asyncio.gather(*flushes)
            self._socket_server.close()
            await self._socket_server.wait_closed()
        running = self.scheduler.running
        if running is not None:
            self.busy_with = f"still running job {running.job_id} (it stops at its next step, a load can't)"
        elif not self.engine.ready:
            self.busy_with = "still loading its model"
        return await self.scheduler.stop(grace)

    async def _handle(self, socket: ServerConnection) -> None:
        client_id = next(self._ids)
        address = self.client_address(socket)
        log.info("client %d connected from %s (peer %s)", client_id, address, socket.remote_address)
        connection = Connection(self, socket, client_id, user_key(socket, None, self.config.trusted_proxies))
        self.connections.add(connection)
        try:
            await connection.serve()
        finally:
            self.connections.discard(connection)
        log.info("client %d disconnected", client_id)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        # Health checks and scrapes first: no token, no connection cap (backend/http_endpoints.py).
        probe = answer(self, request)
        if probe is not None:
            return probe
        if self.draining:
            response = connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, "This server is shutting down; connect to another one.\n"
            )
            response.headers["Retry-After"] = str(DRAIN_RETRY_AFTER_S)
            return response
        if self.config.tokens:
            # Before anything else: a blocked address's tokens aren't even compared (a guess tells nothing).
            blocked = self.auth_throttle.blocked_for(self.client_address(connection))
            if blocked:
                wait = retry_after(blocked)
                response = connection.respond(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    f"Too many wrong access tokens from this address; try again in {wait} s.\n",
                )
                response.headers["Retry-After"] = wait
                return response
        header = request.headers.get("Authorization")
        if header is not None and not self._token_matches(header.removeprefix("Bearer ").strip()):
            self.token_failed(connection)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Wrong access token.\n")
        refusal = self.admission.admit(connection)
        if refusal is not None:
            log.warning("refused a connection from %s: %s", self.client_address(connection), refusal)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, refusal + "\n")
        return None

    def queued_final_jobs(self, user: str) -> int:
        """Final (non-live) jobs of `user` not yet running, across its connections, those whose images are
        still arriving included (so two connections can't both slip past the per-user cap)."""
        running = self.scheduler.running
        running_job = (running.client_id, running.job_id) if running is not None else None
        count = 0
        for connection in self.connections:
            if connection.user != user:
                continue
            for job_id, request in connection.requests.items():
                count += not request.live and (connection.client_id, job_id) != running_job
            pending = connection.pending
            count += pending is not None and not pending.request.live
        return count

    def waiting_users(self) -> int:
        """Users with unfinished jobs: a queue slot frees about one round of their turns from now."""
        return len({connection.user for connection in self.connections if connection.requests})

    def queue_wait_hint(self) -> float:
        """A full queue's `retry_after`: about one round of turns (backend/user_limits.py)."""
        return self.user_limits.pace.wait_hint(self.waiting_users())

    def client_address(self, connection: ServerConnection) -> str:
        """The address caps and the throttle count a client by (behind a trusted proxy, the painter's)."""
        return client_address(connection, self.config.trusted_proxies)

    def _token_matches(self, candidate: str | None) -> bool:
        return not self.config.tokens or self.token_index(candidate) is not None

    def token_index(self, candidate: str | None) -> int | None:
        """The place of `candidate` among the configured tokens, or None. Compared with every token in
        constant time each, without stopping at a match (the time taken tells nothing about which)."""
        if candidate is None:
            return None
        found = None
        for index, token in enumerate(self.config.tokens):
            if hmac.compare_digest(candidate.encode(), token.encode()) and found is None:
                found = index
        return found

    def token_failed(self, connection: ServerConnection) -> float:
        """Count a wrong or missing token against the client's address; the block it starts (s), or 0."""
        address = self.client_address(connection)
        blocked = self.auth_throttle.failed(address)
        block = f"; blocked for {blocked:g} s" if blocked else ""
        log.warning("wrong or missing access token from %s%s", address, block)
        return blocked

    def token_succeeded(self, connection: ServerConnection) -> None:
        if self.config.tokens:
            self.auth_throttle.succeeded(self.client_address(connection))

    def token_accepted(self, request: Request | None, hello_token: str | None) -> bool:
        return not self.config.tokens or self.presented_token(request, hello_token) is not None

    def presented_token(self, request: Request | None, hello_token: str | None) -> int | None:
        """Which configured token the client presented (the upgrade's Authorization header, else the
        hello's `token`), by its place; None without one."""
        header = request.headers.get("Authorization") if request is not None else None
        header_token = header.removeprefix("Bearer ").strip() if header else None
        found = self.token_index(header_token)
        return found if found is not None else self.token_index(hello_token)

    def for_client(self, message: Message) -> Message:
        """A message as a client reads it: no server paths in its words (backend/redact.py)."""
        redact = self.redactor.redact
        if isinstance(message, (Welcome, ModelList)):
            unusable = {k: {n: redact(why) for n, why in v.items()} for k, v in message.unusable.items()}
            message = replace(message, unusable=unusable)
        if isinstance(message, (Error, Welcome)):
            message = replace(message, message=redact(message.message))
        return message

    def welcome(self, listing: ModelListing, limits: Limits | None = None) -> Welcome:
        engine = self.engine
        return Welcome(
            protocol_version=PROTOCOL_VERSION,
            server=SERVER_NAME,
            device=engine.device_name,
            models=listing.models,
            loaded=engine.loaded(),
            samplers=list(SAMPLERS),
            limits=limits or self.config.limits,
            ready=engine.ready,
            message=engine.status_message(),
            unusable=listing.unusable,
            families=listing.families,
            default_checkpoint=listing.default_checkpoint,
        )
