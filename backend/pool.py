"""`python -m backend.pool`: one backend worker per GPU of this host, for a balancer (deploy/haproxy.cfg).

    python -m backend.pool --gpus 2 --base-port 9101 -- --models-dir /srv/models

starts `python -m backend --device cuda:0 --port 9101 --models-dir /srv/models` and the same with
`cuda:1` on 9102; what follows `--` goes to every worker. Each worker's log lines come out prefixed with its
port and device. SIGTERM (or SIGINT) is passed on to every worker, which drains (finishes what it runs, then
closes its connections with "going away"); the pool waits for them (`--stop-timeout`, then SIGKILL) and
exits. A worker that exits by itself is reported with its exit code and restarted after a delay that grows
while it keeps failing, each restart logged; with `--no-restart` it stays down and the others keep serving.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from .cli import positive_int

log = logging.getLogger("backend.pool")
POLL_S = 0.2
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # after the 1st, 2nd, ... failure in a row
STABLE_AFTER_S = 60.0  # a worker that ran this long before exiting starts its failure count again
# Options the pool sets per worker: giving them after `--` would put every worker on one port or device.
POOL_OPTIONS = ("--port", "--device", "--host")


@dataclass(frozen=True)
class WorkerSpec:
    device: str
    host: str
    port: int

    @property
    def tag(self) -> str:
        return f"{self.port} {self.device}"

    def command(self, passthrough: Sequence[str]) -> list[str]:
        return [
            sys.executable, "-m", "backend", "--host", self.host, "--port", str(self.port),
            "--device", self.device, *passthrough,
        ]  # fmt: skip


def plan_workers(
    gpus: int | None, device: str, devices: Sequence[str], host: str, base_port: int
) -> list[WorkerSpec]:
    """One worker per device: `devices` as given, else `gpus` of the kind `device` (cuda: cuda:0, cuda:1...;
    cpu or mps: that device for each, to try a pool without GPUs)."""
    if devices:
        chosen = list(devices)
    else:
        count = gpus if gpus is not None else cuda_device_count()
        if count < 1:
            raise ValueError("no CUDA device found: give --gpus N (and --device cpu to try it on the CPU)")
        chosen = [f"{device}:{index}" if device == "cuda" else device for index in range(count)]
    return [WorkerSpec(name, host, base_port + index) for index, name in enumerate(chosen)]


def cuda_device_count() -> int:
    """What the workers will see (CUDA_VISIBLE_DEVICES included); 0 without CUDA."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class Worker:
    spec: WorkerSpec
    passthrough: tuple[str, ...]
    output: IO[str]
    output_lock: threading.Lock
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # exits in a row without a stable run
    restart_at: float | None = None  # when a failed worker starts again
    reader: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        command = self.spec.command(self.passthrough)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()
        self.restart_at = None
        self.reader = threading.Thread(target=self._copy_output, args=(self.process,), daemon=True)
        self.reader.start()
        log.info("worker %s started (pid %d)", self.spec.tag, self.process.pid)

    def _copy_output(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self.output_lock:
                self.output.write(f"[{self.spec.tag}] {line}\n")
                self.output.flush()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, number: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(number)

    def reap(self, now: float) -> int | None:
        """The exit code when the worker has just exited (once), else None."""
        process = self.process
        if process is None or process.poll() is None:
            return None
        self.process = None
        if self.reader is not None:
            self.reader.join(1.0)  # its last lines (why it exited) before the pool's own report
        if now - self.started_at >= STABLE_AFTER_S:
            self.failures = 0
        self.failures += 1
        return process.returncode


class Pool:
    def __init__(
        self, specs: Sequence[WorkerSpec], passthrough: Sequence[str], *, restart: bool, output: IO[str]
    ) -> None:
        lock = threading.Lock()
        self.workers = [Worker(spec, tuple(passthrough), output, lock) for spec in specs]
        self.restart = restart
        self.stop_signal: int | None = None  # set by SIGTERM/SIGINT: the pool is stopping
        self._forwarded = 0  # signals passed on so far (a second one tells workers to stop at once)
        self._received = 0

    def request_stop(self, number: int, _frame: FrameType | None = None) -> None:
        self.stop_signal = number
        self._received += 1

    def run(self, stop_timeout: float) -> int:
        for worker in self.workers:
            worker.start()
        while self.stop_signal is None:
            self._tend(time.monotonic())
            if not self.restart and not any(w.running or w.restart_at for w in self.workers):
                log.error("every worker has exited and --no-restart is set: the pool stops")
                return 1
            time.sleep(POLL_S)
        return self._stop(stop_timeout)

    def _tend(self, now: float) -> None:
        for worker in self.workers:
            code = worker.reap(now)
            if code is not None:
                self._report_exit(worker, code, now)
            if worker.restart_at is not None and now >= worker.restart_at:
                log.warning("worker %s: restarting (restart after %d failure(s) in a row)", worker.spec.tag,
                            worker.failures)  # fmt: skip
                worker.start()

    def _report_exit(self, worker: Worker, code: int, now: float) -> None:
        ran = now - worker.started_at
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if not self.restart:
            left = sum(1 for w in self.workers if w.running)
            log.error("worker %s %s after %.1f s; not restarting it (--no-restart): %d of %d workers left",
                      worker.spec.tag, how, ran, left, len(self.workers))  # fmt: skip
            return
        delay = RESTART_DELAYS_S[min(worker.failures, len(RESTART_DELAYS_S)) - 1]
        worker.restart_at = now + delay
        log.error("worker %s %s after %.1f s; restarting it in %g s", worker.spec.tag, how, ran, delay)

    def _stop(self, stop_timeout: float) -> int:
        """Pass the stop on to every worker, wait for them, kill what is left at the deadline."""
        deadline = time.monotonic() + stop_timeout
        log.info("stopping: passing signal %d to %d worker(s)", self.stop_signal or 0,
                 sum(w.running for w in self.workers))  # fmt: skip
        codes: dict[str, int] = {}
        while True:
            while self._forwarded < self._received:  # every signal the pool got, in order
                self._forwarded += 1
                for worker in self.workers:
                    worker.signal(self.stop_signal or signal.SIGTERM)
            for worker in self.workers:
                process = worker.process
                if process is not None and process.poll() is not None:
                    codes[worker.spec.tag] = process.returncode
                    worker.reap(time.monotonic())
            if not any(w.running for w in self.workers):
                break
            if time.monotonic() >= deadline:
                for worker in self.workers:
                    if worker.running:
                        log.error("worker %s did not stop within %g s: killing it", worker.spec.tag,
                                  stop_timeout)  # fmt: skip
                        worker.signal(signal.SIGKILL)
                        assert worker.process is not None
                        worker.process.wait(10)
                        codes[worker.spec.tag] = worker.process.returncode
                        worker.reap(time.monotonic())
                break
            time.sleep(POLL_S)
        for worker in self.workers:
            if worker.reader is not None:
                worker.reader.join(1.0)
        failed = {tag: code for tag, code in codes.items() if code != 0}
        if failed:
            log.warning("stopped; workers that did not exit cleanly: %s", failed)
            return 1
        log.info("stopped")
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend.pool",
        description="Start one backend worker per GPU on consecutive ports, for a balancer "
        "(deploy/haproxy.cfg). Options after `--` go to every worker (python -m backend --help).",
    )
    parser.add_argument(
        "--gpus", type=positive_int, default=None, help="how many workers (default: one per CUDA device)"
    )
    parser.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu", "mps"],
        help="the workers' device kind: cuda = cuda:0, cuda:1, ...; cpu or mps = that for every worker "
        "(default: cuda)",
    )
    parser.add_argument(
        "--devices", default="", metavar="LIST", help="the devices by name instead, e.g. cuda:1,cuda:3"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the workers listen on")
    parser.add_argument(
        "--base-port", type=positive_int, default=9101, help="the first worker's port; the next get +1, +2..."
    )
    parser.add_argument(
        "--no-restart", action="store_true", help="leave a worker that exits down (default: restart it)"
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="on SIGTERM, how long workers get to drain and exit before they are killed (default: 60; "
        "keep it above the workers' --drain-timeout)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The pool's own options, and what follows `--` (for the workers)."""
    items = list(argv)
    if "--" in items:
        at = items.index("--")
        return items[:at], items[at + 1 :]
    return items, []


def main(argv: Sequence[str] | None = None) -> int:
    own, passthrough = split_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)
    clash = [item for item in passthrough if item.split("=", 1)[0] in POOL_OPTIONS]
    if clash:
        parser.error(f"{', '.join(clash)} after `--`: the pool sets each worker's host, port and device")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    devices = [item.strip() for item in args.devices.split(",") if item.strip()]
    try:
        specs = plan_workers(args.gpus, args.device, devices, args.host, args.base_port)
    except ValueError as error:
        parser.error(str(error))
    for index, spec in enumerate(specs):
        log.info("worker %s: ws://%s:%d (haproxy.cfg: server gpu%d %s:%d)", spec.tag, spec.host, spec.port,
                 index, spec.host, spec.port)  # fmt: skip
    pool = Pool(specs, passthrough, restart=not args.no_restart, output=sys.stdout)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, pool.request_stop)
    return pool.run(max(0.0, args.stop_timeout))


if __name__ == "__main__":
    sys.exit(main())
