"""Command line for `python -m backend`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from protocol import DEFAULT_PORT, Limits

from .config import REPO_ROOT, TOKEN_ENV, ServerConfig
from .forwarded import IPNetwork, parse_proxy
from .user_limits import UserLimitSettings

# Seconds a stopping server gives the engine's worker to finish what it is in (a job stops at its next step).
SHUTDOWN_GRACE_S = 5.0
MIB = 1024 * 1024


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def proxy_address(text: str) -> IPNetwork:
    try:
        return parse_proxy(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend",
        description="Krita Live Diffusion backend: live LCM img2img, inpaint and ControlNet over WebSocket.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0 = any)"
    )
    parser.add_argument(
        "--token",
        action="append",
        default=None,
        help=f"access token clients must present (default: ${TOKEN_ENV}); required to listen beyond "
        "loopback. Repeat it to give each person a token of their own: each token then gets its own fair "
        "share of the GPU, even when they all connect from one address",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="access tokens, one per line (blank lines and lines starting with # are skipped): a studio's "
        "painters, each with a token of their own, as if each were given with --token; keep the file private",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow WebSocket connections from this browser Origin (refused by default)",
    )
    parser.add_argument(
        "--models-dir", type=Path, default=REPO_ROOT / "models", help="the model store (default: ./models)"
    )
    parser.add_argument(
        "--extra-models-dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="an existing ComfyUI or A1111 'models' folder to use as well (repeatable)",
    )
    parser.add_argument(
        "--model-config",
        type=Path,
        default=None,
        metavar="DIR",
        help="diffusers config folder for checkpoints that are not SD1.5-shaped: unet/, vae/, text_encoder/ "
        "and scheduler/ configs, and controlnet/config.json for its ControlNets (without it the SD1.5 "
        "ControlNet config is used) (default: the shipped SD1.5 configs)",
    )
    parser.add_argument(
        "--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best available)"
    )
    parser.add_argument(
        "--max-size", type=positive_int, default=4096, help="largest image side accepted (default: 4096)"
    )
    parser.add_argument(
        "--max-message-mb",
        type=positive_int,
        default=80,
        help="largest WebSocket message in MiB (default: 80)",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=32,
        help="open connections in all; more are refused with HTTP 503 (default: 32)",
    )
    parser.add_argument(
        "--max-connections-per-address",
        type=positive_int,
        default=8,
        help="open connections from one client address (all loopback clients share one) (default: 8)",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        type=proxy_address,
        default=[],
        metavar="ADDR",
        help="a proxy (HAProxy with `option forwardfor`) whose X-Forwarded-For is believed: behind it a "
        "client's address, for the caps, the wrong-token throttle and fair turns, is the last hop it "
        "added. An address or network (10.0.0.0/24); repeat for several. Others' X-Forwarded-For is ignored",
    )
    parser.add_argument(
        "--max-queued-mb",
        type=positive_int,
        default=512,
        help="decoded images of one connection's unfinished jobs, in MiB (4 bytes a pixel); jobs beyond "
        "are refused as busy (default: 512)",
    )
    parser.add_argument(
        "--max-total-queued-mb",
        type=positive_int,
        default=1024,
        help="the same for all connections together (default: 1024)",
    )
    parser.add_argument(
        "--max-queued-jobs-per-user",
        type=positive_int,
        default=16,
        metavar="N",
        help="final (Generate, inpaint, upscale) jobs one user may have waiting for the worker, across all "
        "its connections; more are refused as busy with a retry-after hint. A user is a token (with "
        "--token/--token-file), else a client address. Live frames don't count (default: 16)",
    )
    parser.add_argument(
        "--images-per-minute-per-user",
        type=positive_int,
        default=120,
        metavar="N",
        help="result images of final jobs one user may ask for in any minute (a batch of 4 counts 4); "
        "more are refused as busy until enough have aged out. Live frames don't count (default: 120)",
    )
    parser.add_argument(
        "--max-unread-mb",
        type=positive_int,
        default=64,
        help="replies a client may leave unread before its messages wait; a client that stays over it for "
        "--unread-timeout seconds, or over it by two of the largest results, is disconnected (default: 64)",
    )
    parser.add_argument(
        "--unread-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a client may stay over --max-unread-mb (default: 30)",
    )
    parser.add_argument(
        "--accelerate",
        choices=["auto", "off", "compile", "cuda_graphs"],
        default="auto",
        help="live path speed-ups: auto = torch.compile + CUDA graphs on CUDA (an eager path serves while it "
        "compiles), off = plain eager (default: auto)",
    )
    parser.add_argument(
        "--low-vram",
        action="store_true",
        help="for 6-8 GB GPUs: keep the models in system memory and bring each to the GPU only while it runs "
        "(the same images, slower; turns the live speed-ups off)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="on SIGTERM: take no new connections or jobs, let the jobs already taken in finish for up to "
        "this long, then cancel the rest; clients are closed with code 1001 (going away) (default: 20)",
    )
    parser.add_argument("--no-preload", action="store_true", help="load the checkpoint on the first job")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def read_token_file(path: Path) -> list[str]:
    """The tokens in a token file; the file's text is never echoed (a typo'd line must not land in a log)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SystemExit(f"error: cannot read the token file {path}: {type(error).__name__}") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if any(any(c.isspace() for c in token) for token in tokens):
        raise SystemExit(f"error: a line of the token file {path} holds spaces: one token per line")
    if not tokens:
        raise SystemExit(f"error: the token file {path} holds no token")
    return tokens


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    given = args.token if args.token is not None else [os.environ.get(TOKEN_ENV, "")]
    if args.token_file is not None:
        given = [*(args.token or []), *read_token_file(args.token_file)]
    tokens = list(dict.fromkeys(token for token in given if token))  # a token twice is one user
    return ServerConfig(
        host=args.host,
        port=args.port,
        token=tokens[0] if tokens else None,
        more_tokens=tuple(tokens[1:]),
        allowed_origins=tuple(args.allow_origin),
        models_dir=args.models_dir.expanduser().absolute(),
        extra_model_dirs=tuple(p.expanduser().absolute() for p in args.extra_models_dir),
        model_config_dir=args.model_config,
        device=args.device,
        limits=Limits(
            max_width=args.max_size,
            max_height=args.max_size,
            max_message_bytes=args.max_message_mb * MIB,
            max_queued_image_bytes=args.max_queued_mb * MIB,
            max_total_queued_image_bytes=args.max_total_queued_mb * MIB,
            max_unread_bytes=args.max_unread_mb * MIB,
        ),
        max_connections=args.max_connections,
        unread_timeout_s=max(0.1, args.unread_timeout),
        max_connections_per_address=args.max_connections_per_address,
        trusted_proxies=tuple(args.trusted_proxy),
        preload=not args.no_preload,
        accelerate=args.accelerate,
        low_vram=args.low_vram,
        drain_timeout_s=max(0.0, args.drain_timeout),
        user_limits=UserLimitSettings(
            max_queued_jobs=args.max_queued_jobs_per_user, images_per_minute=args.images_per_minute_per_user
        ),
    )


async def serve(config: ServerConfig) -> None:
    from .server import Server

    server = Server(config)
    # Ctrl+C (SIGINT) stops now: running jobs are cancelled. SIGTERM (a supervisor, a pool) drains first; a
    # second signal while draining stops at once.
    stop, drain = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:
        (stop if drain.is_set() else drain).set()

    for sig, handler in ((signal.SIGINT, stop.set), (signal.SIGTERM, on_sigterm)):
        try:
            loop.add_signal_handler(sig, handler)
        except NotImplementedError:  # Windows
            pass
    port = await server.start()
    log = logging.getLogger("backend")
    log.info("listening on ws://%s:%d (also GET /healthz and /metrics)", config.host, port)
    if not server.engine.store.list_kind("checkpoints"):
        log.warning(server.engine.status_message())
    await first_of(stop.wait(), drain.wait())
    if drain.is_set() and not stop.is_set():
        await first_of(server.drain(config.drain_timeout_s), stop.wait())
    log.info("shutting down")
    if not await server.close(SHUTDOWN_GRACE_S):
        log.warning("the engine is %s; not waiting for it", server.busy_with)


async def first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until one of `waits` is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    problem = config.binding_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config))
    except OSError as error:
        print(f"error: cannot listen on {config.host}:{config.port}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    _exit_if_threads_linger()
    return 0


def _exit_if_threads_linger() -> None:
    """The interpreter would wait at exit for worker threads still loading a checkpoint or compiling (neither
    can be interrupted, and a compile takes minutes): a painter who pressed Ctrl+C must not wait for that.
    Those threads write nothing of ours; torch writes its compile caches atomically."""
    deadline = time.monotonic() + 0.5
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    busy = [
        t.name
        for t in threading.enumerate()
        if t.is_alive() and not t.daemon and t is not threading.main_thread()
    ]
    if busy:
        logging.getLogger("backend").warning("not waiting for %s", ", ".join(busy))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
